"""Empty a host: pre-flight every guest toward every destination, plan, then move.

Each guest's move is one ``Session`` (the same pre-flight, reservation,
convergence policy, cutover and undo as ``vmotion migrate``); this module runs
several at once and decides nothing itself: placement, order, concurrency and
the bandwidth share come from ``evacuate.plan``. Its collaborators are ports
(``Sessions``, ``SourceHost``, ``EvacuationEvents``), so the orchestration is
unit-tested with plain fakes; ``evacuate.wiring`` builds the real ones.

Failure stays local: one guest's error is that guest's result. Ctrl-C
(``KeyboardInterrupt`` in the thread that called ``run``) stops starting new
migrations, aborts those still in pre-copy (their guests stay on the source)
and lets post-copy ones finish.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Final, Protocol

from libvirt_vmotion.errors import (
    MigrationAborted,
    ReservationError,
    UsageError,
    VmotionError,
)
from libvirt_vmotion.evacuate.plan import (
    Candidate,
    Outcome,
    Placement,
    Room,
    may_start,
    plan_evacuation,
    planning_share,
    share_bandwidth,
    unreachable_error,
)
from libvirt_vmotion.model import MigrationRequest
from libvirt_vmotion.preflight.registry import blockers
from libvirt_vmotion.session.core import Preflight, PreflightOutcome, Session, SessionResult

log = logging.getLogger(__name__)

PREFLIGHT_WORKERS: Final = 8
"""Pre-flights run side by side (each waits mostly on libvirt, ssh and the dirty-rate window)."""
REUSE_PREFLIGHT_S: Final = 120.0
"""A pair's pre-flight older than this is run again when its migration starts."""
_WAKE_S: Final = 0.1
"""How often the run loop looks for a move that may start (one waits for a prepare step)."""
_PREPARING: Final = "setup"
"""A move's phase until the first bytes leave (its destination is in libvirt's prepare step)."""
_POSTCOPY_PHASES: Final = frozenset({"postcopy", "postcopy-paused", "postcopy-recovering"})


@dataclass(frozen=True, slots=True)
class EvacuationRequest:
    """What the user asked for.

    Attributes:
        source_uri: the host to empty.
        dest_uris: the candidate destinations.
        domains: the guests to move (empty: every running guest).
        parallel: most migrations in flight out of the source.
        bandwidth_total_mib_s: shared by the running migrations (None: each its own cap).
        bandwidth_mib_s: each migration's own cap (the policy's), when no total is given.

    """

    source_uri: str
    dest_uris: tuple[str, ...]
    domains: tuple[str, ...] = ()
    parallel: int = 2
    bandwidth_total_mib_s: int | None = None
    bandwidth_mib_s: int | None = None

    def __post_init__(self) -> None:
        """Refuse what cannot work before any host is asked anything."""
        if not self.dest_uris:
            msg = "evacuate needs at least one --to URI."
            raise UsageError(msg, hint="Add --to URI.")
        if self.source_uri in self.dest_uris:
            msg = f"--from {self.source_uri} is also given as --to."
            raise UsageError(msg, hint="The host being emptied cannot be a destination.")
        if len(set(self.dest_uris)) != len(self.dest_uris):
            msg = f"a --to URI is given twice: {', '.join(self.dest_uris)}"
            raise UsageError(msg, hint="Name each destination once.")
        if self.parallel < 1:
            msg = f"--parallel {self.parallel}: must be at least 1"
            raise UsageError(msg, hint="Use --parallel 2 (the default) or more.")

    def migration(self, guest: str, dest: str, bandwidth_mib_s: int | None) -> MigrationRequest:
        """The one-guest request of this evacuation's move of ``guest`` to ``dest``."""
        return MigrationRequest(
            domain=guest,
            source_uri=self.source_uri,
            dest_uri=dest,
            bandwidth_mib_s=bandwidth_mib_s,
        )


@dataclass(frozen=True, slots=True)
class GuestResult:
    """How one guest's evacuation ended.

    Attributes:
        guest: the guest.
        dest: where it went, or was headed (None: it had nowhere to go).
        outcome: moved, stayed, failed, not started.
        result: the Session's result when it moved.
        error: what went wrong (failed / stayed), with its hint.
        exit_code: the failed Session's exit code (0 otherwise).
        bandwidth_mib_s: the share it started with (None: uncapped).
        started_s: when its migration started, seconds since the evacuation began.
        ended_s: when it ended, likewise.
        placement: its place in the plan.

    """

    guest: str
    dest: str | None
    outcome: Outcome
    result: SessionResult | None = None
    error: str = ""
    hint: str = ""
    exit_code: int = 0
    bandwidth_mib_s: int | None = None
    started_s: float | None = None
    ended_s: float | None = None
    placement: Placement | None = None


class Sessions(Protocol):
    """Opens a Session for one guest and destination (``session.wiring.open_session``)."""

    def open(
        self,
        request: MigrationRequest,
        *,
        on_progress: Callable[[object], None] | None,
        preflight: Preflight | None = None,
    ) -> AbstractContextManager[Session]:
        """A Session over both hosts, closed when the block ends.

        ``preflight``, when given, is the Session's pre-flight port (a fresh
        enough outcome of the planning phase); None: the Session runs its own.
        """
        ...


class SourceHost(Protocol):
    """The host being emptied."""

    def running_guests(self) -> tuple[str, ...]:
        """Names of its running guests."""
        ...

    def set_bandwidth(self, guest: str, mib_s: int) -> None:
        """Change a running migration's bandwidth cap (best effort)."""
        ...

    def abort(self, guest: str) -> None:
        """Abort a migration still in pre-copy (the guest stays)."""
        ...


class EvacuationEvents(Protocol):
    """What the evacuation tells whoever renders it (every call tagged with its guest)."""

    def planned(self, plan: Sequence[Placement]) -> None:
        """The placement and order (before anything moves)."""

    def started(self, placement: Placement, dest: str, bandwidth_mib_s: int | None) -> None:
        """A guest's migration started toward ``dest``."""

    def progress(self, guest: str, dest: str, view: object) -> None:
        """A running migration's progress view."""

    def bandwidth(self, guest: str, mib_s: int) -> None:
        """A running migration's share of ``--bandwidth-total`` changed."""

    def finished(self, result: GuestResult) -> None:
        """A guest's evacuation ended (moved, failed or stayed)."""

    def warning(self, text: str) -> None:
        """Something degraded (the evacuation goes on)."""


@dataclass(slots=True)
class _Running:
    placement: Placement
    dest: str
    started_s: float
    bandwidth_mib_s: int | None
    phase: str = _PREPARING


@dataclass(slots=True)
class Evacuation:
    """One host's evacuation: plan, then run the moves (see the module docstring).

    Attributes:
        request: what the user asked for.
        sessions: opens one guest's Session.
        source: the host being emptied.
        events: the renderer.
        clock: monotonic seconds.
        slots: each destination's inbound slots (from its pre-flight).

    """

    request: EvacuationRequest
    sessions: Sessions
    source: SourceHost
    events: EvacuationEvents
    clock: Callable[[], float]
    slots: dict[str, int] = field(default_factory=dict)
    _preflights: dict[tuple[str, str], tuple[float, PreflightOutcome]] = field(default_factory=dict)
    _running: dict[str, _Running] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: bool = False

    # ------------------------------------------------------------------ plan

    def guests(self) -> tuple[str, ...]:
        """The guests to move: the named ones, else every running guest."""
        running = self.source.running_guests()
        if not self.request.domains:
            return running
        missing = [d for d in self.request.domains if d not in running]
        if missing:
            msg = f"not running on {self.request.source_uri}: {', '.join(missing)}"
            raise UsageError(msg, hint=f"Running there: {', '.join(running) or 'none'}.")
        return self.request.domains

    def plan(self) -> tuple[Placement, ...]:
        """Pre-flight every guest toward every destination, then place and order them."""
        guests = self.guests()
        # Destination-major: the first pre-flights side by side are of different guests
        # (one guest's share one dirty-rate measurement, see ``RateMemo``).
        pairs = [(g, d) for d in self.request.dest_uris for g in guests]
        share = self._planning_share(len(guests))
        with ThreadPoolExecutor(PREFLIGHT_WORKERS, thread_name_prefix="evac-preflight") as pool:
            outcomes = pool.map(lambda p: self._preflight(p[0], p[1], share), pairs)
            done = dict(zip(pairs, outcomes, strict=True))
        unreachable = unreachable_error(guests, self.request.dest_uris, done)
        if unreachable is not None:
            raise unreachable
        candidates = [_candidate(g, d, done[(g, d)]) for g, d in pairs]
        rooms = [self._room(d, [done[(g, d)] for g in guests]) for d in self.request.dest_uris]
        placements = plan_evacuation(candidates, rooms)
        self.events.planned(placements)
        return placements

    def _preflight(
        self, guest: str, dest: str, share: int | None
    ) -> PreflightOutcome | VmotionError:
        request = self.request.migration(guest, dest, share)
        try:
            with self.sessions.open(request, on_progress=None) as session:
                outcome = session.check()
        except VmotionError as exc:
            return exc
        with self._lock:
            self._preflights[(guest, dest)] = (self.clock(), outcome)
        return outcome

    def _planning_share(self, guests: int) -> int | None:
        """The bandwidth the planning pre-flights forecast with (a move's share in full flight)."""
        total = self.request.bandwidth_total_mib_s
        if total is None:
            return self.request.bandwidth_mib_s
        return planning_share(total, guests=guests, parallel=self.request.parallel)

    def _room(self, dest: str, outcomes: Sequence[PreflightOutcome | VmotionError]) -> Room:
        rooms = [o.room for o in outcomes if isinstance(o, PreflightOutcome) and o.room]
        if not rooms:
            self.slots[dest] = 2
            return Room(dest)
        room = rooms[0]
        self.slots[dest] = room.inbound_slots
        return Room(dest, room.memory_bytes, room.vcpus, room.inbound_slots)

    # ------------------------------------------------------------------ run

    def run(self, placements: Sequence[Placement]) -> tuple[GuestResult, ...]:
        """Move the placed guests, at most ``parallel`` at once; every guest gets a result.

        A KeyboardInterrupt stops new starts, aborts pre-copy moves and lets
        post-copy ones finish; then it is raised again once all have ended.
        """
        started0 = self.clock()
        results: dict[str, GuestResult] = {
            p.guest: GuestResult(p.guest, None, Outcome.STAYED, placement=p,
                                 error=_kept_out_text(p.kept_out), exit_code=3)
            for p in placements if p.dest is None
        }  # fmt: skip
        pending = [p for p in placements if p.dest is not None]
        futures: dict[Future[GuestResult], str] = {}
        interrupted = False
        with ThreadPoolExecutor(self.request.parallel, thread_name_prefix="evac") as pool:
            while pending or futures:
                try:
                    if not self._stopping:
                        self._start_due(pool, pending, futures, started0)
                    if not futures:
                        break
                    done, _ = wait(futures, timeout=_WAKE_S, return_when=FIRST_COMPLETED)
                    for fut in done:
                        guest = futures.pop(fut)
                        results[guest] = fut.result()
                        self.events.finished(results[guest])
                    if done:
                        self._rebalance()
                except KeyboardInterrupt:
                    interrupted = True
                    self._stop()
        for p in pending:
            results[p.guest] = GuestResult(
                p.guest, p.dest, Outcome.NOT_STARTED, placement=p,
                error="not started: the evacuation was interrupted", exit_code=130,
            )  # fmt: skip
        ordered = tuple(results[p.guest] for p in placements if p.guest in results)
        if interrupted:
            raise KeyboardInterrupt
        return ordered

    def _start_due(
        self,
        pool: ThreadPoolExecutor,
        pending: list[Placement],
        futures: dict[Future[GuestResult], str],
        started0: float,
    ) -> None:
        for p in list(pending):
            with self._lock:
                in_flight = _count_by_dest(self._running.values())
                preparing = self._preparing_locked()
            if not may_start(
                p,
                in_flight=in_flight,
                parallel=self.request.parallel,
                slots=self.slots,
                preparing=preparing,
            ):
                continue
            pending.remove(p)
            assert p.dest is not None  # noqa: S101  may_start refuses an unplaced guest
            share = self._share(extra=1)
            run = _Running(p, p.dest, self.clock() - started0, share)
            with self._lock:
                self._running[p.guest] = run
            futures[pool.submit(self._move, run, started0)] = p.guest
            self._rebalance()

    def _share(self, *, extra: int = 0) -> int | None:
        total = self.request.bandwidth_total_mib_s
        if total is None:
            return self.request.bandwidth_mib_s
        with self._lock:
            count = len(self._running) + extra
        return share_bandwidth(total, count)

    def _rebalance(self) -> None:
        """Give each running migration its share of ``--bandwidth-total`` (live)."""
        if self.request.bandwidth_total_mib_s is None:
            return
        share = self._share()
        if share is None:
            return
        with self._lock:
            changed = [r for r in self._running.values() if r.bandwidth_mib_s != share]
            for r in changed:
                r.bandwidth_mib_s = share
        for r in changed:
            try:
                self.source.set_bandwidth(r.placement.guest, share)
            except VmotionError as exc:  # not started yet: it starts with its share anyway
                log.debug("bandwidth of %s not set: %s", r.placement.guest, exc.message)
            self.events.bandwidth(r.placement.guest, share)

    def _stop(self) -> None:
        """Ctrl-C: no new starts; abort pre-copy moves; post-copy ones finish."""
        self._stopping = True
        with self._lock:
            running = list(self._running.values())
        for r in running:
            if r.phase in _POSTCOPY_PHASES:
                self.events.warning(
                    f"{r.placement.guest}: in post-copy to {r.dest}, letting it finish "
                    "(its memory is partly there already)"
                )
                continue
            self.events.warning(f"{r.placement.guest}: aborting; it stays on the source")
            try:
                self.source.abort(r.placement.guest)
            except VmotionError as exc:
                self.events.warning(f"{r.placement.guest}: abort failed: {exc.message}")

    def _move(self, run: _Running, started0: float) -> GuestResult:
        """One guest's Session toward its destination, then its alternatives."""
        p = run.placement
        tried: list[str] = []
        for i, dest in enumerate((run.dest, *p.alternatives)):
            if i:  # a fallback: its host may be in another move's prepare step
                run.dest = ""
                self._await_prepare_step(p.guest, dest)
            run.dest = dest
            if self._stopping:
                break
            try:
                result = self._session(p.guest, dest, run)
            except ReservationError as exc:
                tried.append(f"{dest}: {exc.message}")
                continue  # the store said no (another evacuation got there first)
            except VmotionError as exc:
                return self._ended(run, started0, Outcome.FAILED, error=exc)
            return self._ended(run, started0, Outcome.MOVED, result=result)
        error = VmotionError(
            "no destination's reservation store would take it: " + "; ".join(tried)
            if tried
            else "not started: the evacuation was interrupted",
            hint="Free room on a destination or add one with --to, then run evacuate again.",
        )
        return self._ended(run, started0, Outcome.STAYED, error=error)

    def _await_prepare_step(self, guest: str, dest: str) -> None:
        """Wait until no other move into ``dest`` is in libvirt's prepare step (``may_start``)."""
        while not self._stopping:
            with self._lock:
                busy = dest in self._preparing_locked(but=guest)
            if not busy:
                return
            time.sleep(_WAKE_S)

    def _preparing_locked(self, *, but: str = "") -> set[str]:
        """Destinations a running move (other than ``but``'s) is in libvirt's prepare step for."""
        return {r.dest for g, r in self._running.items() if g != but and r.phase == _PREPARING}

    def _session(self, guest: str, dest: str, run: _Running) -> SessionResult:
        request = self.request.migration(guest, dest, run.bandwidth_mib_s)

        def on_progress(view: object) -> None:
            run.phase = str(getattr(view, "phase", run.phase))
            self.events.progress(guest, dest, view)

        self.events.started(run.placement, dest, run.bandwidth_mib_s)
        reused = self._reusable_preflight(guest, dest)
        with self.sessions.open(request, on_progress=on_progress, preflight=reused) as session:
            result = session.run()
            self._remember(session, result)
            return result

    def _reusable_preflight(self, guest: str, dest: str) -> Preflight | None:
        """The planning phase's pre-flight of this pair, if younger than ``REUSE_PREFLIGHT_S``."""
        with self._lock:
            cached = self._preflights.get((guest, dest))
        if cached is None or self.clock() - cached[0] >= REUSE_PREFLIGHT_S:
            return None
        return _Reused(cached[1])

    def _remember(self, session: Session, result: SessionResult) -> None:
        try:
            session.remember(result, {})
        except Exception:
            log.debug("history not recorded", exc_info=True)

    def _ended(
        self,
        run: _Running,
        started0: float,
        outcome: Outcome,
        *,
        result: SessionResult | None = None,
        error: VmotionError | None = None,
    ) -> GuestResult:
        with self._lock:
            self._running.pop(run.placement.guest, None)
        aborted = isinstance(error, MigrationAborted)
        return GuestResult(
            guest=run.placement.guest,
            dest=run.dest,
            outcome=outcome,
            result=result,
            error="" if error is None else error.message,
            hint="" if error is None else error.hint,
            exit_code=0 if error is None else int(error.exit_code) if not aborted else 5,
            bandwidth_mib_s=run.bandwidth_mib_s,
            started_s=run.started_s,
            ended_s=self.clock() - started0,
            placement=run.placement,
        )


@dataclass(frozen=True, slots=True)
class _Reused:
    """A Preflight port that hands back a fresh enough outcome of the planning phase."""

    outcome: PreflightOutcome

    def run(self) -> PreflightOutcome:
        return replace(self.outcome, elapsed_s=0.0)


def _candidate(guest: str, dest: str, pre: PreflightOutcome | VmotionError) -> Candidate:
    if isinstance(pre, VmotionError):
        return Candidate(guest, dest, blockers=(f"pre-flight: {pre.message}",))
    claim = pre.claim
    fc = pre.forecast
    return Candidate(
        guest=guest,
        dest=dest,
        blockers=tuple(f"{r.name}: {r.message}" for r in blockers(pre.results)),
        claim_bytes=claim.memory_bytes if claim else 0,
        vcpus=claim.vcpus if claim else 1,
        predicted_s=None if fc is None else fc.total_time_s,
        strategy="" if fc is None else fc.strategy.value,
    )


def _kept_out_text(kept_out: Mapping[str, str]) -> str:
    return "fits on no destination: " + "; ".join(f"{d}: {w}" for d, w in kept_out.items())


def _count_by_dest(running: Iterable[_Running]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in running:
        counts[r.dest] = counts.get(r.dest, 0) + 1
    return counts
