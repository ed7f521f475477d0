"""The migration loop: start the job, watch it, finish or roll back.

I/O: this is the only module that waits, reads the clock or acts on the
hypervisor during a migration. It holds no policy: each tick it feeds the
newest sample and events to ``convergence.step`` and applies the decision.
Every transition is checked against ``convergence.TRANSITIONS``.

The migrate call blocks inside libvirt, so it runs in a worker thread while
this thread samples the job. Ctrl-C and the timeout abort the job explicitly:
killing the client of a peer-to-peer migration does not cancel it (LAB-NOTES).
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Final, NoReturn, Protocol, TypeVar

from libvirt_vmotion.adapters.virt import HostIdentity, MigrationOptions
from libvirt_vmotion.converge.machine import (
    TERMINAL,
    Abort,
    Action,
    FreeStuckPrepare,
    History,
    PausePostCopy,
    ResumePostCopy,
    Rule,
    SetMaxBandwidth,
    SetMaxDowntime,
    StartPostCopy,
    State,
    Throttle,
    advance,
    is_abortable,
    stream_policy,
)
from libvirt_vmotion.converge.ports import Observer, PrepareRescue, SampleSink
from libvirt_vmotion.converge.progress import (
    ProgressView,
    build_controller_section,
    build_view,
    controller_cpu_section,
)
from libvirt_vmotion.errors import (
    CutoverFailed,
    DomainNotFound,
    DomainNotRunning,
    MigrationAborted,
    PreflightFailed,
    VmotionError,
)
from libvirt_vmotion.events import EventKind, MigrationEvent
from libvirt_vmotion.model import (
    MIB,
    Compression,
    JobSample,
    JobType,
    MeasuredContext,
    MigrationOutcome,
    MigrationRequest,
)
from libvirt_vmotion.policy import MigrationPolicy, build_policy
from libvirt_vmotion.preflight.forecast import ZSTD_MULTIFD_LIBVIRT
from libvirt_vmotion.preflight.versions import (
    postcopy_resume_crash_versions,
    postcopy_resume_crashes,
    switchover_hint_mib_s,
)

log = logging.getLogger(__name__)
_T = TypeVar("_T")


class MigratingGuest(Protocol):
    """The guest as the driver sees it: what it reads and what it steers.

    ``virt.Guest`` implements it over libvirt; the unit tests replay recorded lab
    traces through a fake of this interface (not of libvirt).
    """

    name: str
    uri: str

    def is_running(self) -> bool:
        """True if the guest runs (or is paused) here."""
        ...

    def state_name(self) -> str:
        """The guest's state as a word."""
        ...

    def job_sample(self, *, now_s: float) -> JobSample:
        """Statistics of the current job."""
        ...

    def completed_job_sample(self, *, now_s: float) -> JobSample | None:
        """Statistics kept for the last completed job, if any."""
        ...

    def set_max_downtime(self, downtime_ms: int) -> None:
        """Set the longest pause QEMU may plan for at switchover."""

    def set_max_bandwidth(self, bandwidth_mib_s: int) -> None:
        """Cap the migration bandwidth."""

    def set_throttle_cap(self, percent: int) -> None:
        """Cap auto-converge's vCPU throttle."""

    def start_postcopy(self) -> None:
        """Switch the running migration to post-copy."""

    def pause_postcopy(self) -> None:
        """Interrupt a post-copy migration so it can be resumed."""

    def abort_job(self) -> None:
        """Abort the running (pre-copy) migration."""

    def is_postcopy_failed(self) -> bool:
        """True if a post-copy migration of this guest broke and awaits recovery."""
        ...

    def migrate(self, dest_uri: str, options: MigrationOptions, *, resume: bool = False) -> None:
        """Run (or resume) the migration; blocks until it ends."""

    def watch_migration(
        self, sink: Callable[[MigrationEvent], None], clock: Callable[[], float]
    ) -> Callable[[], None]:
        """Deliver migration events to ``sink``; return a function that stops it."""
        ...


class HostConnection(Protocol):
    """One host as the driver sees it (``virt.Hypervisor`` over libvirt)."""

    uri: str

    def identity(self) -> HostIdentity:
        """Hostname and host UUID, to refuse a same-host migration."""
        ...

    def lookup(self, name: str) -> MigratingGuest:
        """The guest of that name (raises DomainNotFound)."""
        ...

    def has_guest(self, name: str) -> bool:
        """True if a guest of that name is defined or running here."""
        ...


class PostSwitchover(Protocol):
    """A step that must act the moment the guest runs on the destination.

    The network cutover (``cutover.NetworkCutover``) is one: it arms before the
    migration starts (its announcer waits on the destination for the resume),
    and ``finish`` collects what it did; the result becomes the report section
    ``name``. ``finish`` must not raise: failures go into its section.
    """

    name: str

    def arm(self) -> None:
        """Get ready before the migration starts (non-blocking)."""

    def finish(self, *, landed: bool) -> Mapping[str, object]:
        """The migration ended (``landed``: the guest runs on the destination)."""
        ...


@dataclass(slots=True)
class _Worker:
    """Runs the blocking migrate call and keeps what it raised."""

    target: Callable[[], None]
    error: BaseException | None = None
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, name="migrate", daemon=True)

    def _run(self) -> None:
        try:
            self.target()
        except BaseException as exc:  # noqa: BLE001  handed to the main thread
            self.error = exc

    def start(self) -> None:
        self.thread.start()

    def alive(self) -> bool:
        return self.thread.is_alive()

    def join(self, timeout_s: float | None = None) -> None:
        self.thread.join(timeout_s)


def check_distinct_hosts(source: HostConnection, dest: HostConnection) -> tuple[str, str]:
    """Refuse a migration whose source and destination are the same host.

    Returns:
        The source and destination hostnames.

    Raises:
        PreflightFailed: same hostname or same libvirt host UUID.

    """
    src, dst = source.identity(), dest.identity()
    if src.hostname == dst.hostname or (src.host_uuid and src.host_uuid == dst.host_uuid):
        msg = (
            f"{source.uri} and {dest.uri} are the same host "
            f"(hostname {src.hostname!r}, host UUID {src.host_uuid})."
        )
        raise PreflightFailed(
            msg,
            hint="Pick another destination; if they really are two hosts, give them "
            "distinct hostnames and host_uuid in libvirtd.conf.",
        )
    return src.hostname, dst.hostname


def _find_running_guest(source: HostConnection, name: str) -> MigratingGuest:
    guest = source.lookup(name)
    if not guest.is_running():
        msg = (
            f"Guest '{guest.name}' on {source.uri} is {guest.state_name()}; "
            "live migration needs it running."
        )
        raise DomainNotRunning(
            msg, hint=f"Start it first (virsh -c {source.uri} start {guest.name})."
        )
    return guest


def _check_dest_free(dest: HostConnection, name: str) -> None:
    if dest.has_guest(name) and dest.lookup(name).is_running():
        msg = f"A guest named '{name}' is already running on {dest.uri}."
        raise PreflightFailed(
            msg, hint="Stop or rename the guest there, or choose another destination."
        )


def _where_is(source: HostConnection, dest: HostConnection, name: str) -> tuple[bool, bool]:
    """Return (running on source, running on destination), best effort."""

    def running(hv: HostConnection) -> bool:
        try:
            return hv.lookup(name).is_running()
        except VmotionError:
            return False

    return running(source), running(dest)


def policy_for(request: MigrationRequest) -> MigrationPolicy:
    """The default policy with the request's limits (bandwidth, downtime, timeout)."""
    overrides: dict[str, object] = {"bandwidth_mib_s": request.bandwidth_mib_s}
    if request.timeout_s is not None:
        overrides["max_duration_s"] = request.timeout_s
    return build_policy(max_downtime_ms=request.max_downtime_ms, overrides=overrides)


def migrate(  # noqa: PLR0913  the migration's collaborators, all keyword-only
    request: MigrationRequest,
    *,
    source: HostConnection,
    dest: HostConnection,
    observers: Sequence[Observer] = (),
    on_sample: SampleSink | None = None,
    poll_interval_s: float = 0.25,
    clock: Callable[[], float] = time.monotonic,
    cutover: PostSwitchover | None = None,
    policy: MigrationPolicy | None = None,
    on_progress: Callable[[ProgressView], None] | None = None,
    measured: MeasuredContext = MeasuredContext(),  # noqa: B008  frozen: one shared default is safe
    rescue: PrepareRescue | None = None,
) -> tuple[MigrationOutcome, Mapping[str, Mapping[str, object]]]:
    """Live-migrate one guest under the convergence controller; return what happened.

    Args:
        request: the guest, the hosts and the user's limits.
        source: open connection to the source host.
        dest: open connection to the destination host.
        observers: outside watchers (ping, workload); their sections come back by name.
        on_sample: called with every job sample.
        on_progress: called with the phase-aware progress view.
        poll_interval_s: how often to read job statistics (events wake earlier).
        clock: monotonic clock, injectable for tests.
        cutover: the network cutover, armed before and finished after; its section joins.
        policy: the user's budget and escalations (default: from the request).
        measured: what was measured or learned (``converge.machine.build_context``).
        rescue: ends a prepare step that hangs on the destination (None: only abort).

    Returns:
        The outcome and the observers' sections.

    Raises:
        PreflightFailed: nothing was started (same host, not running ...).
        MigrationAborted: failed or cancelled; the guest runs on the source.
        CutoverFailed: failed, and the guest is not (only) on the source; the
            message says where it is.

    """
    policy = policy or policy_for(request)
    guest, hosts = _ready_to_move(source, dest, request.domain, policy)
    controller = _build_controller(
        guest, request, policy, measured,
        hosts=(source, dest),
        on_sample=on_sample,
        on_progress=on_progress,
        poll_interval_s=poll_interval_s,
        clock=clock,
    )  # fmt: skip
    controller.rescue = rescue
    wall_s, sections = _run_observed(controller, observers, cutover, clock)
    if controller.state is not State.COMPLETED:
        _fail(controller, cutover, source, dest)
    final = _final_sample(controller, dest)
    sections.update(_finish_landed(cutover, source, dest, guest.name))
    return _landed_outcome(controller, final, hosts=hosts, wall_s=wall_s), sections


def _build_controller(  # noqa: PLR0913  what the controller steers and with what, keyword-only
    guest: MigratingGuest,
    request: MigrationRequest,
    policy: MigrationPolicy,
    measured: MeasuredContext,
    *,
    hosts: tuple[HostConnection, HostConnection],
    on_sample: SampleSink | None,
    on_progress: Callable[[ProgressView], None] | None,
    poll_interval_s: float,
    clock: Callable[[], float],
) -> _Controller:
    """The controller for this move, its transport options decided from the hosts' versions.

    Whether QEMU is told the switchover rate depends on the source's versions
    (``measured.qemu_knows_switchover_rate`` is set here); whether a post-copy
    may be resumed depends on the destination's libvirt.
    """
    source, dest = hosts
    hint_mib_s = _switchover_hint(source, measured)
    measured = replace(measured, qemu_knows_switchover_rate=hint_mib_s is not None)
    measured = _compression_supported(hosts, measured)
    policy = stream_policy(policy, measured)
    options = _options_for(request, policy, avail_switchover_mib_s=hint_mib_s)
    worker = _Worker(lambda: guest.migrate(request.dest_uri, options))
    dest_libvirt = _best_effort_value(lambda: dest.identity().libvirt_version)
    return _Controller(
        resume_crashes_dest=postcopy_resume_crashes(dest_libvirt),
        guest=guest,
        request=request,
        policy=policy,
        measured=measured,
        options=options,
        worker=worker,
        on_sample=on_sample,
        on_progress=on_progress,
        poll_interval_s=poll_interval_s,
        clock=clock,
    )


def _final_sample(controller: _Controller, dest: HostConnection) -> JobSample | None:
    """The completed job's figures: the source's event, the destination's stats, or the last sample.

    The source's JOB_COMPLETED event has the figures after pre-copy and post-copy
    alike; the destination's completed stats are empty after post-copy.
    """
    samples = controller.history.samples
    final = controller.completed_from_event or _completed_stats(
        dest, controller.guest.name, controller.clock
    )
    return final or (samples[-1] if samples else None)


def _landed_outcome(
    controller: _Controller, final: JobSample | None, *, hosts: tuple[str, str], wall_s: float
) -> MigrationOutcome:
    """What happened, for a migration that completed and landed on the destination."""
    samples = controller.history.samples
    return MigrationOutcome(
        domain=controller.guest.name,
        source_host=hosts[0],
        dest_host=hosts[1],
        wall_time_s=wall_s,
        final=final,
        iterations=max([s.iteration for s in samples] + [final.iteration if final else 0]),
        samples=tuple(samples),
        controller=_controller_section(controller, controller.policy, final=final, wall_s=wall_s),
    )


def _fail(
    controller: _Controller,
    cutover: PostSwitchover | None,
    source: HostConnection,
    dest: HostConnection,
) -> NoReturn:
    """End the cutover (the guest did not land) and raise what the failed run means."""
    if cutover is not None:
        cutover.finish(landed=False)
    controller.raise_failure(source, dest)


def _finish_landed(
    cutover: PostSwitchover | None, source: HostConnection, dest: HostConnection, name: str
) -> dict[str, Mapping[str, object]]:
    """Check the guest runs on the destination only, then finish the cutover; its section."""
    with _ends_cutover_on_failure(cutover):
        _verify_landed(source, dest, name)
    return {cutover.name: cutover.finish(landed=True)} if cutover is not None else {}


def _ready_to_move(
    source: HostConnection, dest: HostConnection, domain: str, policy: MigrationPolicy
) -> tuple[MigratingGuest, tuple[str, str]]:
    """The running guest and the two hostnames, once nothing stands in the way of the move.

    Sets the guest's first downtime rung before anything starts.

    Raises:
        PreflightFailed: same host, or a guest of that name runs on the destination.
        DomainNotRunning: the guest is not running on the source.

    """
    guest = _find_running_guest(source, domain)
    hosts = check_distinct_hosts(source, dest)
    _check_dest_free(dest, guest.name)
    guest.set_max_downtime(policy.initial_downtime_ms)
    return guest, hosts


def _compression_supported(
    hosts: tuple[HostConnection, HostConnection], measured: MeasuredContext
) -> MeasuredContext:
    """``measured`` without compression where either host's libvirt cannot do it (< 9.4)."""
    if not measured.compress:
        return measured
    ids = [_best_effort_value(h.identity) for h in hosts]
    if all(i is not None and i.libvirt_version >= ZSTD_MULTIFD_LIBVIRT for i in ids):
        return measured
    return replace(
        measured,
        compress=False,
        compression_reason="off: a host's libvirt is older than 9.4 (zstd over multifd)",
    )


def _switchover_hint(source: HostConnection, measured: MeasuredContext) -> int | None:
    """The switchover rate to tell QEMU, or None where the source's versions cannot take it."""
    source_id = _best_effort_value(source.identity)
    return switchover_hint_mib_s(
        measured.switchover_mib_s,
        libvirt_version=source_id.libvirt_version if source_id else None,
        qemu_version=source_id.hypervisor_version if source_id else None,
    )


def _options_for(
    request: MigrationRequest, policy: MigrationPolicy, *, avail_switchover_mib_s: int | None
) -> MigrationOptions:
    """The transport options libvirt gets: the policy's escalations and the request's disks."""
    return MigrationOptions(
        bandwidth_mib_s=policy.bandwidth_mib_s,
        auto_converge=policy.allows_throttle,
        postcopy=policy.allow_postcopy,
        xbzrle=policy.xbzrle,
        parallel_connections=policy.parallel_connections,
        zstd=policy.compression is Compression.ZSTD,
        postcopy_bandwidth_mib_s=policy.postcopy_bandwidth_mib_s,
        copy_disks=request.copy_disks,
        tls=request.tls,
        avail_switchover_mib_s=avail_switchover_mib_s,
    )


def _run_observed(
    controller: _Controller,
    observers: Sequence[Observer],
    cutover: PostSwitchover | None,
    clock: Callable[[], float],
) -> tuple[float, dict[str, Mapping[str, object]]]:
    """Run the controller with the observers watching and the cutover armed.

    Returns:
        The migration's wall time (from the moment the cutover was armed) and
        the observers' sections, collected even when the run raised.

    """
    sections: dict[str, Mapping[str, object]] = {}
    started: list[Observer] = []
    started_s = clock()
    try:
        for observer in observers:
            observer.start()
            started.append(observer)
        with _ends_cutover_on_failure(cutover):
            if cutover is not None:
                cutover.arm()
            started_s = clock()
            controller.run(started_s)
        wall_s = clock() - started_s
    finally:
        for observer in started:
            try:
                sections[observer.name] = observer.stop()
            except Exception as exc:  # noqa: BLE001  an observer must not hide the outcome
                log.warning("observer %s failed: %s", observer.name, exc)
                sections[observer.name] = {"error": str(exc)}
    return wall_s, sections


def _controller_section(
    controller: _Controller, policy: MigrationPolicy, *, final: JobSample | None, wall_s: float
) -> dict[str, object]:
    """The report's ``controller`` section: the run's decisions and its own CPU time."""
    return {
        **build_controller_section(
            controller.state,
            controller.history,
            policy,
            controller.measured,
            downtime_ms=final.downtime_ms if final else None,
        ),
        **controller_cpu_section(cpu_s=controller.cpu_s, wall_s=wall_s),
    }


@contextlib.contextmanager
def _ends_cutover_on_failure(cutover: PostSwitchover | None) -> Iterator[None]:
    """On any exception inside (Ctrl-C, a bug, a failed landing), end the cutover first.

    ``finish(landed=False)`` cancels the destination's announcer: it must not stay
    behind, waiting, to fire stale claims and announcements on a later retry.
    """
    try:
        yield
    except BaseException:
        if cutover is not None:
            cutover.finish(landed=False)
        raise


_RESUME_RETRY_S: Final = 2.0
_COMPLETED_EVENT_WAIT_S: Final = 1.0
_EVENT_POLL_S: Final = 0.05


@dataclass(slots=True)
class _Controller:
    """The one loop: wait for an event or the poll tick, sample, step, apply."""

    guest: MigratingGuest
    request: MigrationRequest
    policy: MigrationPolicy
    measured: MeasuredContext
    options: MigrationOptions
    worker: _Worker
    on_sample: SampleSink | None
    on_progress: Callable[[ProgressView], None] | None
    poll_interval_s: float
    clock: Callable[[], float]
    state: State = State.SETUP
    history: History = field(default_factory=lambda: History(started_s=0.0))
    events: queue.Queue[MigrationEvent] = field(default_factory=queue.Queue)
    view: ProgressView | None = None
    completed_from_event: JobSample | None = None
    last_resume_s: float = -1e9
    resuming: bool = False
    worker_seen_done: bool = False
    refused_ctrl_c: bool = False
    resume_crashes_dest: bool = False
    resume_refused: bool = False
    cpu_s: float | None = None
    """The controller's own CPU time while ``run`` watched the migration (its thread)."""
    rescue: PrepareRescue | None = None
    rescued: str = ""
    rescue_killed: bool = False
    """What the destination did about a prepare step that hung (``FreeStuckPrepare``)."""

    def run(self, started_s: float) -> None:
        """Run the migration until the controller reaches a final state.

        Also measures the controller's own CPU time meanwhile (``cpu_s``): this
        thread's, which polls, decides and reports progress. The observers a user
        adds (``--ping`` sends 100 echo requests a second) run in threads of their
        own and are not the controller's cost; the migrate call only waits in libvirt.

        Raises:
            MigrationAborted: on Ctrl-C during pre-copy (after aborting the job).

        """
        cpu_before_s = time.thread_time()
        self.history = History(started_s=started_s)
        stop_events = _best_effort_value(
            lambda: self.guest.watch_migration(self.events.put, self.clock)
        )
        try:
            self.worker.start()
            while self.state not in TERMINAL:
                try:
                    self._tick()
                except KeyboardInterrupt:
                    self._interrupted()
            if self.state is State.COMPLETED:
                self._await_completed_event()
        finally:
            if stop_events is not None:
                stop_events()
        self.worker.join()
        self.cpu_s = time.thread_time() - cpu_before_s

    def _await_completed_event(self) -> None:
        """Wait briefly for the source's JOB_COMPLETED event: it carries the figures.

        After post-copy the destination keeps no completed-job statistics (they
        read ``{"type": 0}``), so downtime and totals come from this event.
        """
        for _ in range(round(_COMPLETED_EVENT_WAIT_S / _EVENT_POLL_S)):
            if self.completed_from_event is not None:
                return
            try:
                event = self.events.get(timeout=_EVENT_POLL_S)
            except queue.Empty:
                continue
            if event.kind is EventKind.JOB_COMPLETED and event.detail:
                self.completed_from_event = _sample_from_event(event)

    def _interrupted(self) -> None:
        if is_abortable(self.state):
            log.warning("interrupted: aborting the migration of %s", self.guest.name)
            _best_effort(self.guest.abort_job)
            self.worker.join()
            msg = f"Migration of '{self.guest.name}' cancelled by the user (Ctrl-C)."
            raise MigrationAborted(msg, hint="The guest keeps running on the source.") from None
        if self.refused_ctrl_c:
            msg = (
                f"Stopped watching '{self.guest.name}' during post-copy; libvirt carries on "
                "with the migration."
            )
            raise CutoverFailed(
                msg,
                hint=f"Follow it with: vmotion status {self.guest.name} --from "
                f"{self.request.source_uri}",
            ) from None
        self.refused_ctrl_c = True
        log.warning(
            "cannot abort %s: post-copy has started and part of its memory is only on the "
            "destination; waiting for it to finish (Ctrl-C again to stop watching)",
            self.guest.name,
        )

    def _tick(self) -> None:
        try:
            event = self.events.get(timeout=self.poll_interval_s)
            self._add_event(event)
            while True:
                self._add_event(self.events.get_nowait())
        except queue.Empty:
            pass
        self._check_worker()
        self._sample()
        self.history = self.history.with_time(self.clock())
        decision, self.history = advance(self.state, self.history, self.policy, self.measured)
        if decision.next_state is not self.state:
            log.info("%s -> %s: %s", self.state, decision.next_state, decision.reason)
        elif decision.reason:
            log.info("%s: %s", self.state, decision.reason)
        for action in decision.actions:
            self._apply(action)
        self.state = decision.next_state
        if self.on_progress is not None and self.history.samples:
            self.view = build_view(self.state, self.history, self.policy, self.measured, self.view)
            self.on_progress(self.view)

    def _add_event(self, event: MigrationEvent) -> None:
        log.debug("event %s round %d %s", event.kind, event.iteration, event.detail[:80])
        if event.kind is EventKind.JOB_COMPLETED and event.detail:
            self.completed_from_event = _sample_from_event(event)
            return  # completion is taken from the migrate call's return
        self.history = self.history.with_event(event)

    def _check_worker(self) -> None:
        if self.worker.alive() or self.worker_seen_done:
            if self.state is State.POSTCOPY_PAUSED and self.resuming and self.worker.alive():
                # libvirt sends no RESUMED_POSTCOPY to the source; its state tells.
                resumed = _best_effort_value(lambda: not self.guest.is_postcopy_failed())
                if resumed:
                    self.resuming = False
                    self._add_event(MigrationEvent(EventKind.POSTCOPY_RESUMED, self.clock()))
            return
        self.worker.join()
        self.worker_seen_done = True
        if self.worker.error is None:
            kind, detail = EventKind.JOB_COMPLETED, ""
        else:
            error = self.worker.error
            detail = error.message if isinstance(error, VmotionError) else str(error)
            kind = EventKind.JOB_FAILED
        self.history = self.history.with_event(MigrationEvent(kind, self.clock(), detail=detail))

    def _sample(self) -> None:
        try:
            sample = self.guest.job_sample(now_s=self.clock())
        except DomainNotFound:
            return  # undefined on the source: the migration just finished
        except VmotionError as exc:
            log.debug("job stats unavailable: %s", exc)
            return
        if not sample.is_active:
            return
        log.debug(
            "round %d remaining %.1f MiB dirty %.1f MiB/s transfer %.1f MiB/s",
            sample.iteration,
            sample.data_remaining_bytes / MIB,
            sample.dirty_rate_mib_s,
            sample.transfer_rate_mib_s,
        )
        self.history = self.history.with_sample(sample)
        if self.on_sample is not None:
            self.on_sample(sample)

    def _apply(self, action: Action) -> None:
        guest = self.guest
        match action:
            case SetMaxDowntime(downtime_ms=ms):
                _best_effort(lambda: guest.set_max_downtime(ms))
            case SetMaxBandwidth(bandwidth_mib_s=bw):
                _best_effort(lambda: guest.set_max_bandwidth(bw))
            case Throttle(percent=pct):
                if self.options.auto_converge:
                    _best_effort(lambda: guest.set_throttle_cap(pct))
            case StartPostCopy():
                _best_effort(guest.start_postcopy)
            case PausePostCopy():
                _best_effort(guest.pause_postcopy)
            case ResumePostCopy():
                self._resume()
            case Abort(reason=reason):
                log.warning("aborting migration of %s: %s", guest.name, reason)
                _best_effort(guest.abort_job)
            case FreeStuckPrepare(waited_s=waited_s):
                self._free_stuck_prepare(waited_s)

    def _free_stuck_prepare(self, waited_s: float) -> None:
        rescue = self.rescue
        if rescue is None:
            self.rescued = "nothing done on the destination (no agent there)"
            return
        done = _best_effort_value(
            lambda: rescue.free_stuck_prepare(self.guest.name, waited_s=waited_s)
        )
        self.rescue_killed, self.rescued = done or (False, "its agent did not answer")
        log.warning("prepare step of %s stuck: %s", self.guest.name, self.rescued)

    def _resume(self) -> None:
        now_s = self.clock()
        if self.worker.alive() or now_s - self.last_resume_s < _RESUME_RETRY_S:
            return
        if self.resume_crashes_dest:
            if not self.resume_refused:
                self.resume_refused = True
                log.warning(
                    "not resuming post-copy of %s: the destination's libvirtd (%s) crashes on "
                    "POSTCOPY_RESUME, which would lose the guest",
                    self.guest.name,
                    postcopy_resume_crash_versions(),
                )
            return
        self.last_resume_s = now_s
        self.resuming = True
        log.info("resuming post-copy of %s", self.guest.name)
        guest, dest_uri, options = self.guest, self.request.dest_uri, self.options
        self.worker = _Worker(lambda: guest.migrate(dest_uri, options, resume=True))
        self.worker_seen_done = False
        self.worker.start()

    def raise_failure(self, source: HostConnection, dest: HostConnection) -> NoReturn:
        """Raise the error that tells where the guest is and why it did not move."""
        name = self.guest.name
        reason = next((d.reason for d in reversed(self.history.decisions) if d.reason), "")
        if self.state is State.FAILED:
            msg = (
                f"Migration of '{name}' is stuck in post-copy: {reason}. "
                f"Destination {dest.uri}: the running guest; source {source.uri}: the "
                "memory it has not received yet."
            )
            if self.resume_refused:
                msg += (
                    f" Not resumed: libvirt {postcopy_resume_crash_versions()} on "
                    "the destination crashes on POSTCOPY_RESUME; upgrade it there before "
                    "resuming by hand."
                )
            raise CutoverFailed(
                msg,
                hint=f"Restore the network between the hosts; follow it with: vmotion status "
                f"{name} --from {source.uri}; see both with: virsh -c {dest.uri} domstate "
                f"--reason {name}; virsh -c {source.uri} domstate --reason {name}",
            )
        if self.rescue_killed and _where_is(source, dest, name) == (True, False):
            stuck = next(d.reason for d in self.history.decisions if d.rule is Rule.PREPARE_STUCK)
            msg = f"Migration of '{name}' failed: {stuck}. Destination {self.rescued}."
            raise MigrationAborted(
                msg,
                hint=f"The guest keeps running on the source. See why the destination "
                f"did not start it in its libvirtd log ({dest.uri}); a libvirt child stuck "
                'before it became QEMU is a libvirt bug seen with lock_manager = "lockd" '
                "and guests started at once.",
            ) from self.worker.error
        aborted_for = next(
            (
                a.reason
                for d in reversed(self.history.decisions)
                for a in d.actions
                if isinstance(a, Abort)
            ),
            None,
        )
        if aborted_for is not None and _where_is(source, dest, name) == (True, False):
            msg = f"Migration of '{name}' aborted: {aborted_for}."
            raise MigrationAborted(
                msg,
                hint="The guest keeps running on the source. Allow more time (--timeout), "
                "a longer --max-downtime, throttling or post-copy, raise --bandwidth, or "
                "lower the guest's write load.",
            ) from self.worker.error
        _raise_failure(self.worker.error or RuntimeError(reason), source, dest, name)
        raise AssertionError  # _raise_failure always raises


def _sample_from_event(event: MigrationEvent) -> JobSample | None:
    try:
        stats = json.loads(event.detail)
    except ValueError:
        return None
    if not isinstance(stats, dict):
        return None
    # The event's statistics carry no "type": the event itself says the job completed.
    sample = JobSample.from_job_stats({"type": 3, **stats}, now_s=event.now_s)
    return sample if sample.job_type is JobType.COMPLETED else None


def _best_effort_value(action: Callable[[], _T]) -> _T | None:
    try:
        return action()
    except VmotionError as exc:
        log.warning("best-effort call failed, continuing: %s", exc)
        return None


def _best_effort(action: Callable[[], None]) -> None:
    try:
        action()
    except VmotionError as exc:
        log.warning("tuning call failed, continuing: %s", exc)


def _raise_failure(
    error: BaseException, source: HostConnection, dest: HostConnection, name: str
) -> None:
    on_source, on_dest = _where_is(source, dest, name)
    detail = error.message if isinstance(error, VmotionError) else str(error)
    if on_source and not on_dest:
        msg = f"Migration of '{name}' to {dest.uri} failed: {detail}"
        hint = (
            error.hint
            if isinstance(error, VmotionError) and error.hint
            else "The guest keeps running on the source; see the libvirtd logs on both hosts."
        )
        raise MigrationAborted(msg, hint=hint) from error
    where = (
        "running on BOTH hosts"
        if on_source and on_dest
        else f"running on {dest.uri}"
        if on_dest
        else "running on neither host"
    )
    msg = f"Migration of '{name}' failed after it started ({detail}); the guest is {where}."
    raise CutoverFailed(
        msg,
        hint=f"Check with: virsh -c {source.uri} list --all; virsh -c {dest.uri} list --all",
    ) from error


def _completed_stats(
    dest: HostConnection, name: str, clock: Callable[[], float]
) -> JobSample | None:
    """Completed-job figures (downtime, totals) that libvirt keeps on the destination."""
    try:
        return dest.lookup(name).completed_job_sample(now_s=clock())
    except VmotionError as exc:
        log.warning("no completed job statistics on the destination: %s", exc)
        return None


def _verify_landed(source: HostConnection, dest: HostConnection, name: str) -> None:
    """The guest must run on the destination, persistently, and be gone from the source."""
    on_source, on_dest = _where_is(source, dest, name)
    if not on_dest or on_source:
        where = "both hosts" if on_source and on_dest else "the source" if on_source else "neither"
        msg = f"libvirt reported success, but '{name}' is running on {where}."
        raise CutoverFailed(
            msg,
            hint=f"Check with: virsh -c {dest.uri} list --all; virsh -c {source.uri} list --all",
        )
    if source.has_guest(name):
        log.warning("'%s' is still defined on the source %s", name, source.uri)
