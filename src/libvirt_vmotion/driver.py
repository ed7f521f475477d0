"""The migration loop: start the job, watch it, finish or roll back.

I/O: this is the only module that waits, reads the clock or acts on the
hypervisor during a migration. It holds no policy beyond the request's limits.

The migrate call blocks inside libvirt, so it runs in a worker thread while
this thread samples the job. Ctrl-C and the timeout abort the job explicitly:
killing the client of a peer-to-peer migration does not cancel it (LAB-NOTES).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from libvirt_vmotion.errors import (
    CutoverFailed,
    DomainNotFound,
    DomainNotRunning,
    MigrationAborted,
    PreflightFailed,
    VmotionError,
)
from libvirt_vmotion.model import JobSample, MigrationOutcome, MigrationRequest
from libvirt_vmotion.ports import Observer, SampleSink
from libvirt_vmotion.virt import Guest, Hypervisor

log = logging.getLogger(__name__)


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


def check_distinct_hosts(source: Hypervisor, dest: Hypervisor) -> tuple[str, str]:
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


def _find_running_guest(source: Hypervisor, name: str) -> Guest:
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


def _check_dest_free(dest: Hypervisor, name: str) -> None:
    if dest.has_guest(name) and dest.lookup(name).is_running():
        msg = f"A guest named '{name}' is already running on {dest.uri}."
        raise PreflightFailed(
            msg, hint="Stop or rename the guest there, or choose another destination."
        )


def _where_is(source: Hypervisor, dest: Hypervisor, name: str) -> tuple[bool, bool]:
    """Return (running on source, running on destination), best effort."""

    def running(hv: Hypervisor) -> bool:
        try:
            return hv.lookup(name).is_running()
        except VmotionError:
            return False

    return running(source), running(dest)


def migrate(  # noqa: PLR0913  the migration's collaborators, all keyword-only
    request: MigrationRequest,
    *,
    source: Hypervisor,
    dest: Hypervisor,
    observers: Sequence[Observer] = (),
    on_sample: SampleSink | None = None,
    poll_interval_s: float = 0.2,
    clock: Callable[[], float] = time.monotonic,
    cutover: PostSwitchover | None = None,
) -> tuple[MigrationOutcome, Mapping[str, Mapping[str, object]]]:
    """Live-migrate one guest and return what happened.

    Args:
        request: the guest, the hosts and the user's limits.
        source: open connection to the source host.
        dest: open connection to the destination host.
        observers: outside watchers (ping, workload); their results come back
            by name.
        on_sample: called with every job sample (progress display).
        poll_interval_s: how often to read job statistics.
        clock: monotonic clock, injectable for tests.
        cutover: post-switchover step (network cutover); armed before the
            migration starts, finished after it; its section joins the report.

    Returns:
        The outcome and the observers' sections.

    Raises:
        PreflightFailed: nothing was started (same host, not running ...).
        MigrationAborted: the migration failed or was cancelled; the guest runs
            on the source.
        CutoverFailed: the migration failed and the guest is not (only) on the
            source; the message says where it is.

    """
    guest = _find_running_guest(source, request.domain)
    source_host, dest_host = check_distinct_hosts(source, dest)
    _check_dest_free(dest, guest.name)
    if request.max_downtime_ms is not None:
        guest.set_max_downtime(request.max_downtime_ms)

    samples: list[JobSample] = []
    worker = _Worker(
        lambda: guest.migrate_live_p2p(request.dest_uri, bandwidth_mib_s=request.bandwidth_mib_s)
    )
    sections: dict[str, Mapping[str, object]] = {}
    started: list[Observer] = []
    started_s = clock()
    try:
        for observer in observers:
            observer.start()
            started.append(observer)
        if cutover is not None:
            cutover.arm()
        started_s = clock()
        worker.start()
        _Watch(worker, guest, request, on_sample, poll_interval_s, clock, started_s, samples).run()
        wall_s = clock() - started_s
    finally:
        for observer in started:
            try:
                sections[observer.name] = observer.stop()
            except Exception as exc:  # noqa: BLE001  an observer must not hide the outcome
                log.warning("observer %s failed: %s", observer.name, exc)
                sections[observer.name] = {"error": str(exc)}

    if worker.error is not None:
        if cutover is not None:
            cutover.finish(landed=False)
        _raise_failure(worker.error, source, dest, guest.name)

    final = _completed_stats(dest, guest.name, clock) or (samples[-1] if samples else None)
    _verify_landed(source, dest, guest.name)
    if cutover is not None:
        sections[cutover.name] = cutover.finish(landed=True)
    outcome = MigrationOutcome(
        domain=guest.name,
        source_host=source_host,
        dest_host=dest_host,
        wall_time_s=wall_s,
        final=final,
        iterations=max([s.iteration for s in samples] + [final.iteration if final else 0]),
        samples=tuple(samples),
    )
    return outcome, sections


@dataclass(slots=True)
class _Watch:
    """Samples the job until the worker returns; aborts on timeout or Ctrl-C."""

    worker: _Worker
    guest: Guest
    request: MigrationRequest
    on_sample: SampleSink | None
    poll_interval_s: float
    clock: Callable[[], float]
    started_s: float
    samples: list[JobSample] = field(default_factory=list)
    aborted_for: str | None = None
    downtime_reapplied: bool = False

    def run(self) -> None:
        """Watch until the migrate call returns.

        Raises:
            MigrationAborted: on Ctrl-C or timeout (after aborting the job).

        """
        try:
            while self.worker.alive():
                self.worker.join(self.poll_interval_s)
                if not self.worker.alive() or not self._poll():
                    break
        except KeyboardInterrupt:
            log.warning("interrupted: aborting the migration of %s", self.guest.name)
            _best_effort(self.guest.abort_job)
            self.worker.join()
            msg = f"Migration of '{self.guest.name}' cancelled by the user (Ctrl-C)."
            raise MigrationAborted(msg, hint="The guest keeps running on the source.") from None
        self.worker.join()
        if self.aborted_for is not None and self.worker.error is not None:
            msg = f"Migration of '{self.guest.name}' aborted: {self.aborted_for}."
            raise MigrationAborted(
                msg,
                hint="The guest keeps running on the source. Allow more time (--timeout), "
                "raise --bandwidth or --max-downtime, or lower the guest's write load.",
            ) from self.worker.error

    def _poll(self) -> bool:
        """Take one sample; False once the job is gone from the source."""
        try:
            sample = self.guest.job_sample(now_s=self.clock())
        except DomainNotFound:
            return False  # undefined on the source: the migration just finished
        except VmotionError as exc:
            log.debug("job stats unavailable: %s", exc)
            return True
        if sample.is_active:
            self._take(sample)
        return True

    def _take(self, sample: JobSample) -> None:
        request = self.request
        if not self.downtime_reapplied and request.max_downtime_ms is not None:
            # Set once before the job and again inside it: some libvirt
            # versions reset migration parameters when the job begins.
            downtime_ms = request.max_downtime_ms
            _best_effort(lambda: self.guest.set_max_downtime(downtime_ms))
            self.downtime_reapplied = True
        self.samples.append(sample)
        if self.on_sample is not None:
            self.on_sample(sample)
        if (
            self.aborted_for is None
            and request.timeout_s is not None
            and self.clock() - self.started_s > request.timeout_s
        ):
            self.aborted_for = f"it did not finish within {request.timeout_s:g} s"
            log.warning("aborting migration of %s: %s", self.guest.name, self.aborted_for)
            _best_effort(self.guest.abort_job)


def _best_effort(action: Callable[[], None]) -> None:
    try:
        action()
    except VmotionError as exc:
        log.warning("tuning call failed, continuing: %s", exc)


def _raise_failure(error: BaseException, source: Hypervisor, dest: Hypervisor, name: str) -> None:
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


def _completed_stats(dest: Hypervisor, name: str, clock: Callable[[], float]) -> JobSample | None:
    """Completed-job figures (downtime, totals) that libvirt keeps on the destination."""
    try:
        return dest.lookup(name).completed_job_sample(now_s=clock())
    except VmotionError as exc:
        log.warning("no completed job statistics on the destination: %s", exc)
        return None


def _verify_landed(source: Hypervisor, dest: Hypervisor, name: str) -> None:
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
