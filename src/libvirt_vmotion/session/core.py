"""One migration, the vMotion steps in order, with one undo stack.

``Session.run`` is pre-flight -> reserve -> pre-create disks -> migrate (the
controller loop) -> cutover (inside the loop, at the resume) -> record -> release.
Every step that changes a host pushes its undo onto one ``ExitStack`` the moment
it has changed something; on any failure (Ctrl-C and bugs included) the stack
unwinds in the reverse order the steps happened, and each undo asks the
verified state first whether it may act.

The Session does no I/O of its own: its collaborators are our own Protocols
(``Preflight``, ``Destination``, ``Locator``, ``Mover``, ``RunLog``, ``Events``,
a clock), so the gate, the reservation path and the undo are unit-tested with
plain fakes. ``session.wiring`` builds the real ones (libvirt, our agent over
ssh, the history store). The CLI builds a Session, renders its events and maps
its errors to exit codes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import TracebackType
from typing import Final, Protocol

from libvirt_vmotion.converge.machine import build_context
from libvirt_vmotion.errors import PreflightFailed, VmotionError
from libvirt_vmotion.model import MeasuredContext, MigrationOutcome, MigrationRequest, TlsMode
from libvirt_vmotion.policy import MigrationPolicy
from libvirt_vmotion.preflight.capacity import DestRoom
from libvirt_vmotion.preflight.forecast import (
    Forecast,
    Strategy,
    choose_compression,
    relative_error,
)
from libvirt_vmotion.preflight.registry import CheckResult, Verdict, blockers
from libvirt_vmotion.reserve.store import Unreleased

log = logging.getLogger(__name__)

RELEASE_AFTER_FAILURE_TIMEOUT_S: Final = 3.0
"""Longest wait to release the reservation after a failed migration.

Shorter than the agent's ssh ConnectTimeout (5 s): when the link to the
destination is down, the release gives up here, and the destination's lease
frees the reservation anyway. A successful migration waits as long as it takes.
"""
DEFAULT_WINDOW_S: Final = 0.25
"""The dirty-rate window unless ``--dirty-rate-window`` says otherwise (``virt.Guest``)."""


class Step(StrEnum):
    """The vMotion steps a Session goes through, in order (``Session.step``)."""

    NEW = "new"
    PREFLIGHT = "preflight"
    RESERVE = "reserve"
    PRECREATE = "precreate"
    MIGRATE = "migrate"
    RECORD = "record"
    RELEASE = "release"
    DONE = "done"


# ------------------------------------------------------------------ value objects


@dataclass(frozen=True, slots=True)
class Claim:
    """What the destination must hold for this guest (memory includes QEMU's overhead)."""

    domain: str
    memory_bytes: int
    vcpus: int
    dest_host: str


@dataclass(frozen=True, slots=True)
class DiskToCreate:
    """A destination image the copy writes into (libvirt needs it to exist)."""

    path: str
    format: str
    capacity_bytes: int

    def to_dict(self) -> dict[str, object]:
        """The agent's ``disk-precreate`` request item."""
        return {"path": self.path, "format": self.format, "capacity_bytes": self.capacity_bytes}


@dataclass(frozen=True, slots=True)
class PreflightOutcome:
    """What pre-flight found: checks, forecast, and what the next steps need.

    Attributes:
        results: every check's verdict.
        forecast: the forecast, None when it could not be made (``forecast_error``).
        window_s: the dirty-rate window pre-flight measured over.
        host_pair: source and destination host UUIDs (the history's key).
        copy_disks: disk targets the migration copies (non-shared storage).
        to_create: destination images to pre-create for the copy.
        claim: what to reserve on the destination; None when our agent does not
            answer there (the checks then say so as warnings).
        switchover_mib_s: the final round's rate learned from this host pair's
            history, None when it has none.
        elapsed_s: how long pre-flight took (facts, checks, forecast).
        room: what the destination can still take (``evacuate`` places by it).
        use_tls: encrypt the migration (``preflight.tls.plan_tls``: ``--tls`` and
            both hosts' certificates).
        tls_mode: the ``--tls`` it was decided from.

    """

    results: tuple[CheckResult, ...] = ()
    forecast: Forecast | None = None
    forecast_error: str = ""
    window_s: float = DEFAULT_WINDOW_S
    host_pair: tuple[str, str] = ("", "")
    copy_disks: tuple[str, ...] = ()
    to_create: tuple[DiskToCreate, ...] = ()
    claim: Claim | None = None
    switchover_mib_s: float | None = None
    elapsed_s: float = 0.0
    room: DestRoom | None = None
    use_tls: bool = False
    tls_mode: TlsMode = TlsMode.AUTO
    oldest_libvirt: int | None = None
    """The older of the two hosts' libvirt versions (None: not read)."""

    @property
    def blocked(self) -> bool:
        """True if a check blocks the migration."""
        return bool(blockers(self.results))

    @property
    def measured_dirty_mib_s(self) -> float | None:
        """The guest's dirty rate pre-flight measured (libvirt's dirty-rate API), if it did."""
        return None if self.forecast is None else self.forecast.inputs.dirty_rate_mib_s

    def check_section(self) -> dict[str, object]:
        """JSON: checks and forecast (``vmotion check --json``)."""
        verdicts = {r.verdict for r in self.results}
        worst = next((v for v in (Verdict.BLOCKER, Verdict.WARNING) if v in verdicts), Verdict.OK)
        return {
            "verdict": worst.value,
            "may_proceed": not self.blocked,
            "blockers": [r.name for r in blockers(self.results)],
            "checks": [r.to_dict() for r in self.results],
            "forecast": None if self.forecast is None else self.forecast.to_dict(),
            "forecast_error": self.forecast_error,
            "dirty_rate_window_s": self.window_s,
            "tls": {"mode": self.tls_mode.value, "encrypt": self.use_tls},
        }

    def forecast_section(self, report: Mapping[str, object]) -> dict[str, object]:
        """The migrate report's ``forecast`` section: prediction vs outcome."""
        if self.forecast is None:
            return {"prediction": None, "error": self.forecast_error}
        pred = self.forecast.to_dict()
        elapsed_ms, data = report.get("qemu_elapsed_ms"), report.get("data_transferred_bytes")
        measured = {
            "rounds": report.get("iterations"),
            "total_time_s": elapsed_ms / 1000 if isinstance(elapsed_ms, int | float) else None,
            "downtime_ms": report.get("downtime_ms"),
            "data_mib": data / 1024 / 1024 if isinstance(data, int | float) else None,
        }
        errors: dict[str, float | None] = {}
        for key, pkey in (
            ("rounds", "rounds"),
            ("total_time_s", "total_time_s"),
            ("downtime_ms", "expected_downtime_ms"),
            ("data_mib", "data_mib"),
        ):
            p, m = pred.get(pkey), measured.get(key)
            ok = isinstance(p, int | float) and isinstance(m, int | float) and m
            errors[key] = round(100 * relative_error(float(p), float(m)), 1) if ok else None  # type: ignore[arg-type]
        return {"prediction": pred, "measured": measured, "error_pct": errors}


def blocked_error(outcome: PreflightOutcome) -> PreflightFailed | None:
    """The error naming every blocker and what to do, or None when nothing blocks."""
    bad = blockers(outcome.results)
    if not bad:
        return None
    names = ", ".join(dict.fromkeys(r.name for r in bad))
    msg = f"Pre-flight found {len(bad)} blocker(s) ({names}): " + " ".join(
        f"[{r.name}] {r.message}" for r in bad
    )
    more = (
        " Run `vmotion check` with the same arguments to see every finding." if len(bad) > 1 else ""
    )
    return PreflightFailed(msg, hint=bad[0].hint + more, blockers=tuple(r.to_dict() for r in bad))


@dataclass(frozen=True, slots=True)
class Whereabouts:
    """Where the guest is, as verified after a failure; None where it could not be told."""

    running_on_source: bool | None
    job_on_source: bool | None
    present_on_dest: bool | None


def may_remove_precreated(where: Whereabouts) -> bool:
    """True only when removing our pre-created destination images cannot hurt the guest.

    That is: the guest verifiably runs on the source, no migration job is left
    there, and no guest of that name is on the destination. Anything unknown keeps
    the images (a stray file costs disk space; a removed one can cost the guest).

    >>> may_remove_precreated(Whereabouts(True, False, False))
    True
    >>> may_remove_precreated(Whereabouts(True, False, None))
    False
    """
    return (
        where.running_on_source is True
        and where.job_on_source is False
        and where.present_on_dest is False
    )


def measured_context(policy: MigrationPolicy, pre: PreflightOutcome) -> MeasuredContext:
    """What pre-flight measured and the history learned, beside the user's policy.

    ``converge.machine.build_context`` decides: a rate the user gave
    (``--switchover-bandwidth``) wins over the learned one; the forecast's post-copy
    strategy (rounds cannot shrink at this dirty rate) starts post-copy after the
    first pass.
    """
    chosen = choose_compression(
        policy.compression, pre.forecast, xbzrle=policy.xbzrle, oldest_libvirt=pre.oldest_libvirt
    )
    return build_context(
        policy,
        learned_switchover_mib_s=pre.switchover_mib_s,
        preflight_dirty_mib_s=pre.measured_dirty_mib_s,
        forecast_says_postcopy=pre.forecast is not None
        and pre.forecast.strategy is Strategy.POSTCOPY,
        compression=(chosen.compress, chosen.reason),
    )


@dataclass(frozen=True, slots=True)
class Timeline:
    """Monotonic marks of the steps, seconds since the Session started."""

    preflight_done_s: float
    migrate_done_s: float
    released_s: float


@dataclass(frozen=True, slots=True)
class SessionResult:
    """A migration that landed: what happened, in the order it happened."""

    request: MigrationRequest
    policy: MigrationPolicy
    preflight: PreflightOutcome
    outcome: MigrationOutcome
    sections: Mapping[str, Mapping[str, object]]
    timeline: Timeline


# ------------------------------------------------------------------ ports


class Preflight(Protocol):
    """Gathers the facts, runs the checks and the forecast; changes nothing."""

    def run(self) -> PreflightOutcome:
        """Pre-flight for this Session's guest and hosts."""
        ...


class Destination(Protocol):
    """The destination host's side of the Session, through our agent there."""

    def reserve(self, reservation_id: str, claim: Claim) -> Mapping[str, object]:
        """Reserve ``claim`` (raises ReservationError); returns the host's reply."""
        ...

    def release(
        self,
        reservation_id: str,
        reply: Mapping[str, object],
        *,
        host: str,
        timeout_s: float | None,
    ) -> Unreleased | None:
        """Release it; with ``timeout_s``, give up then and say when the lease frees it."""
        ...

    def precreate(self, disks: Sequence[DiskToCreate]) -> tuple[str, ...]:
        """Create the images; returns the paths created (raises VmotionError)."""
        ...

    def remove(self, paths: Sequence[str]) -> None:
        """Remove images this Session created (raises VmotionError)."""
        ...


class Locator(Protocol):
    """Tells where the guest is (best effort: None where a host cannot tell)."""

    def where(self, domain: str) -> Whereabouts:
        """Verified whereabouts of ``domain``."""
        ...


class Mover(Protocol):
    """The controller loop (``converge.loop.migrate``) bound to the two hosts."""

    def __call__(
        self, request: MigrationRequest, *, policy: MigrationPolicy, measured: MeasuredContext
    ) -> tuple[MigrationOutcome, Mapping[str, Mapping[str, object]]]:
        """Migrate; raise MigrationAborted / CutoverFailed when it did not land."""
        ...


class GuardHandle(Protocol):
    """A running guard on the source host (``converge.guard``)."""

    def close(self, *, ok: bool) -> None:
        """The migration ended (``ok``: as the controller meant); the guard may go."""


class Guard(Protocol):
    """Starts the guard that ends the job at once if this controller dies."""

    def start(self, domain: str, *, budget_s: float) -> GuardHandle | None:
        """Start it; None when it could not be started (the Session goes on)."""
        ...


class RunLog(Protocol):
    """Where a landed migration is remembered (the history the forecast learns from)."""

    def record(self, result: SessionResult, report: Mapping[str, object]) -> None:
        """Remember it (must not raise)."""
        ...


class Events(Protocol):
    """What the Session tells whoever renders it."""

    def preflight_done(self, outcome: PreflightOutcome) -> None:
        """Pre-flight passed (it may still carry warnings)."""

    def warning(self, text: str) -> None:
        """Something degraded but the Session goes on (or an undo could not act)."""


class _QuietEvents:
    def preflight_done(self, outcome: PreflightOutcome) -> None:
        pass

    def warning(self, text: str) -> None:
        log.warning("%s", text)


# ------------------------------------------------------------------ the Session


@dataclass(slots=True)
class Session:
    """One live migration: the steps, the undo stack, and what each step left.

    Attributes:
        request: the guest, the hosts and the user's limits.
        policy: the user's policy (the measurements go beside it: ``measured_context``).
        preflight: the pre-flight port.
        destination: the destination's agent port (reservation, disk images).
        locator: where the guest is, asked before an undo that could hurt it.
        mover: the controller loop.
        runlog: where a landed run is remembered.
        events: what the renderer hears.
        clock: monotonic seconds.
        new_id: makes the reservation id.
        step: the step the Session is in (or ended in).
        unreleased: the reservation a failed run could not release (for the report).
        kept: pre-created images a failure left in place, and why.

    """

    request: MigrationRequest
    policy: MigrationPolicy
    preflight: Preflight
    destination: Destination
    locator: Locator
    mover: Mover
    runlog: RunLog
    clock: Callable[[], float]
    new_id: Callable[[], str]
    events: Events = field(default_factory=_QuietEvents)
    guard: Guard | None = None
    step: Step = Step.NEW
    unreleased: Unreleased | None = None
    kept: tuple[str, ...] = ()
    reservation_id: str = ""

    def check(self) -> PreflightOutcome:
        """Pre-flight only (``vmotion check``): nothing is reserved or changed."""
        self.step = Step.PREFLIGHT
        return self.preflight.run()

    def run(self) -> SessionResult:
        """Move the guest; on any failure undo what the verified state allows, then raise.

        Raises:
            PreflightFailed: a check blocks, or a destination image could not be made.
            ReservationError: the destination refused the reservation.
            MigrationAborted: the guest runs on the source, the job is gone.
            CutoverFailed: the guest may not be (only) on the source; the message says.

        """
        started = self.clock()
        pre = self.check()
        error = blocked_error(pre)
        if error is not None:
            raise error
        self.events.preflight_done(pre)
        preflight_done = self.clock() - started
        with ExitStack() as undo:
            self._reserve(pre, undo)
            self._precreate(pre, undo)
            self._start_guard(undo)
            self.step = Step.MIGRATE
            request = replace(self.request, copy_disks=pre.copy_disks, tls=pre.use_tls)
            measured = measured_context(self.policy, pre)
            outcome, sections = self.mover(request, policy=self.policy, measured=measured)
            migrate_done = self.clock() - started
            self.step = Step.RELEASE
        timeline = Timeline(preflight_done, migrate_done, self.clock() - started)
        self.step = Step.DONE
        return SessionResult(request, self.policy, pre, outcome, sections, timeline)

    def remember(self, result: SessionResult, report: Mapping[str, object]) -> None:
        """Record a landed run so the next forecast between these hosts learns."""
        self.step = Step.RECORD
        self.runlog.record(result, report)
        self.step = Step.DONE

    # -- steps, each pushing its undo the moment it changed something

    def _reserve(self, pre: PreflightOutcome, undo: ExitStack) -> None:
        self.step = Step.RESERVE
        if pre.claim is None:
            return
        claim, rid = pre.claim, self.new_id()
        reply = self.destination.reserve(rid, claim)
        self.reservation_id = rid

        def release(
            typ: type[BaseException] | None, _exc: BaseException | None, _tb: TracebackType | None
        ) -> None:
            # A failure may have cut the link to the destination: do not hold the
            # exit on ssh timeouts; the destination's lease frees the reservation.
            timeout_s = None if typ is None else RELEASE_AFTER_FAILURE_TIMEOUT_S
            self.unreleased = self.destination.release(
                rid, reply, host=claim.dest_host, timeout_s=timeout_s
            )
            if self.unreleased is not None:
                self.events.warning(self.unreleased.message())

        undo.push(release)

    def _precreate(self, pre: PreflightOutcome, undo: ExitStack) -> None:
        self.step = Step.PRECREATE
        if not pre.to_create or pre.claim is None:
            return
        try:
            paths = self.destination.precreate(pre.to_create)
        except VmotionError as exc:
            msg = f"Could not pre-create the destination disk image(s) for the copy: {exc.message}"
            hint = exc.hint or "Check the destination's image directory."
            raise PreflightFailed(msg, hint=hint) from exc
        if not paths:
            return

        def remove(
            typ: type[BaseException] | None, _exc: BaseException | None, _tb: TracebackType | None
        ) -> None:
            if typ is not None:
                self._remove_if_safe(paths)

        undo.push(remove)

    def _start_guard(self, undo: ExitStack) -> None:
        if self.guard is None:
            return
        handle = self.guard.start(self.request.domain, budget_s=self.policy.max_duration_s)
        if handle is None:
            self.events.warning(
                "the source host's guard did not start: if this process dies mid-migration, "
                "libvirt's keepalive ends the job (60-75 s) instead of the guard (at once)"
            )
            return

        def dismiss(
            typ: type[BaseException] | None, _exc: BaseException | None, _tb: TracebackType | None
        ) -> None:
            handle.close(ok=typ is None)

        undo.push(dismiss)

    def _remove_if_safe(self, paths: Sequence[str]) -> None:
        """After a failure: remove our images only where the guest verifiably is not."""
        try:
            where = self.locator.where(self.request.domain)
        except Exception:  # noqa: BLE001  unknown whereabouts keep the images
            where = Whereabouts(None, None, None)
        if not may_remove_precreated(where):
            self.kept = tuple(paths)
            self.events.warning(
                f"Left the pre-created image(s) {', '.join(paths)} on the destination: "
                f"the guest is not verifiably back on the source alone ({where}). "
                "Remove them by hand once the guest's location is clear."
            )
            return
        try:
            self.destination.remove(paths)
        except VmotionError as exc:
            self.events.warning(f"could not remove pre-created {list(paths)}: {exc.message}")
