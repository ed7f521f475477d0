"""Replays of real lab traces through the driver loop, against a fake of its ports.

The traces (``tests/data/traces/driver/*.json``, made by ``record_driver_trace.py``)
hold what the driver saw in the lab: job statistics, libvirt events and the end
of the migrate call. ``TraceHost``/``TraceGuest`` implement the driver's own
``HostConnection``/``MigratingGuest`` protocols (not libvirt): they play the
trace back on a virtual clock, record every call the driver makes, and end the
migrate call when the trace says, or at once when the driver aborts.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from libvirt_vmotion.adapters.virt import HostIdentity, MigrationOptions
from libvirt_vmotion.converge.loop import HostConnection, MigratingGuest, migrate
from libvirt_vmotion.errors import CutoverFailed, DomainNotFound, HypervisorError, MigrationAborted
from libvirt_vmotion.events import EventKind, MigrationEvent
from libvirt_vmotion.model import JobSample, MeasuredContext, MigrationRequest
from libvirt_vmotion.policy import MigrationPolicy, build_policy

TRACES = Path(__file__).parent.parent / "data" / "traces" / "driver"
_TICK_S = 0.001  # every clock read moves virtual time on, so no wait can spin forever


class VirtualClock:
    def __init__(self) -> None:
        self.now_s = 0.0
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            self.now_s += _TICK_S
            return self.now_s

    def advance_to(self, t_s: float) -> None:
        with self.lock:
            self.now_s = max(self.now_s, t_s)


class Trace:
    """One recorded migration, played back on the virtual clock."""

    def __init__(self, name: str) -> None:
        data = json.loads((TRACES / name).read_text())
        self.name = name
        self.data: dict[str, Any] = data
        self.samples: list[dict[str, Any]] = list(data["samples"])
        self.events: list[dict[str, Any]] = list(data["events"])
        self.ends_at_s = float(data["migrate_calls"][0]["ended_at_s"])
        self.ends_with: str | None = data["migrate_calls"][0]["error_type"]

    def policy(self) -> MigrationPolicy:
        overrides = dict(self.data["policy_overrides"])
        max_downtime_ms = overrides.pop("max_downtime_ms")
        return build_policy(max_downtime_ms=max_downtime_ms, overrides=overrides)

    def measured(self) -> MeasuredContext:
        """What the recording's ``migrate`` call was given as measured beforehand."""
        return MeasuredContext(**self.data["measured"])

    def request(self) -> MigrationRequest:
        return MigrationRequest(**self.data["request"])


class World:
    """Shared state of the fake source and destination."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.clock = VirtualClock()
        self.calls: list[tuple[float, str, tuple[object, ...]]] = []
        self.ended = threading.Event()
        self.aborted = False
        self.landed = False
        self.sink: Callable[[MigrationEvent], None] | None = None
        self.delivered = 0
        self.lock = threading.Lock()
        self.libvirt_version = 11_003_000

    def deliver_events_until(self, t_s: float) -> None:
        with self.lock:
            while self.delivered < len(self.trace.events):
                raw = self.trace.events[self.delivered]
                if raw["now_s"] > t_s or self.sink is None:
                    break
                self.delivered += 1
                self.sink(
                    MigrationEvent(
                        EventKind(raw["kind"]),
                        now_s=raw["now_s"],
                        iteration=raw["iteration"],
                        detail=raw["detail"],
                    )
                )

    def end_migration(self, *, aborted: bool) -> None:
        self.aborted = aborted
        self.landed = not aborted and self.trace.ends_with is None
        if self.landed:
            self.deliver_events_until(self.trace.ends_at_s + 1.0)
        self.ended.set()


class TraceGuest:
    """The guest on one fake host (implements ``driver.MigratingGuest``)."""

    def __init__(self, world: World, uri: str, *, source: bool) -> None:
        self.world = world
        self.uri = uri
        self.name = "vmo-guest"
        self.source = source
        self._next = 0

    def _record(self, call: str, *args: object) -> None:
        self.world.calls.append((self.world.clock.now_s, call, args))

    def is_running(self) -> bool:
        if self.source:
            return not self.world.landed
        return self.world.landed

    def state_name(self) -> str:
        return "running" if self.is_running() else "shut off"

    def job_sample(self, *, now_s: float) -> JobSample:
        world, trace = self.world, self.world.trace
        if world.landed:
            msg = "undefined on the source after the migration"
            raise DomainNotFound(msg, hint="")
        if self._next < len(trace.samples) and not world.ended.is_set():
            raw = trace.samples[self._next]
            self._next += 1
            world.clock.advance_to(raw["now_s"])
        else:
            world.clock.advance_to(world.clock.now_s + 0.25)
            raw = {"type": 0}
        t_s = world.clock.now_s
        world.deliver_events_until(t_s)
        if t_s >= trace.ends_at_s and not world.ended.is_set():
            world.end_migration(aborted=False)
        return JobSample.from_job_stats(raw, now_s=t_s)

    def completed_job_sample(self, *, now_s: float) -> JobSample | None:
        return None  # as libvirt after post-copy: {"type": 0}

    def set_max_downtime(self, downtime_ms: int) -> None:
        self._record("set_max_downtime", downtime_ms)

    def set_max_bandwidth(self, bandwidth_mib_s: int) -> None:
        self._record("set_max_bandwidth", bandwidth_mib_s)

    def set_throttle_cap(self, percent: int) -> None:
        self._record("set_throttle_cap", percent)

    def start_postcopy(self) -> None:
        self._record("start_postcopy")

    def pause_postcopy(self) -> None:
        self._record("pause_postcopy")

    def abort_job(self) -> None:
        self._record("abort_job")
        self.world.end_migration(aborted=True)

    def is_postcopy_failed(self) -> bool:
        return False

    def migrate(self, dest_uri: str, options: MigrationOptions, *, resume: bool = False) -> None:
        self._record("migrate", dest_uri, options, resume)
        if resume:  # a libvirt whose resume works: post-copy recovers and completes
            self.world.landed = True
            return
        assert self.world.ended.wait(timeout=20), "replay stuck: the driver stopped sampling"
        if self.world.aborted or self.world.trace.ends_with == "MigrationAborted":
            msg = "Migration was cancelled: operation aborted"
            raise MigrationAborted(msg, hint="The guest keeps running on the source.")
        if self.world.trace.ends_with == "HypervisorError":
            msg = "operation failed: job 'migration out' failed in post-copy phase"
            raise HypervisorError(msg, hint="")

    def watch_migration(
        self, sink: Callable[[MigrationEvent], None], clock: Callable[[], float]
    ) -> Callable[[], None]:
        del clock
        self.world.sink = sink

        def stop() -> None:
            self.world.sink = None

        return stop


class TraceHost:
    """One fake host (implements ``driver.HostConnection``)."""

    def __init__(self, world: World, uri: str, hostname: str, *, source: bool) -> None:
        self.uri = uri
        self.guest = TraceGuest(world, uri, source=source)
        version = world.libvirt_version
        self._identity = HostIdentity(hostname, f"uuid-{hostname}", version, 10_000_002)

    def identity(self) -> HostIdentity:
        return self._identity

    def lookup(self, name: str) -> MigratingGuest:
        if not self.has_guest(name):
            msg = f"No guest named '{name}' on {self.uri}."
            raise DomainNotFound(msg, hint="")
        return self.guest

    def has_guest(self, name: str) -> bool:
        return name == self.guest.name and self.guest.is_running()


def with_link_cut(trace: Trace, *, after_s: float, for_s: float) -> Trace:
    """The trace with the migration link cut ``after_s`` into post-copy for ``for_s``.

    While cut, the source's counters stand still (as measured in the lab: no
    bytes move, nothing fails); afterwards everything happens ``for_s`` later.
    """
    started_s = next(e["now_s"] for e in trace.events if e["kind"] == "postcopy-started")
    cut_s = started_s + after_s
    before = [s for s in trace.samples if s["now_s"] <= cut_s]
    frozen = [
        {**before[-1], "now_s": round(cut_s + k * 0.25, 3)} for k in range(1, int(for_s / 0.25))
    ]
    later = [{**s, "now_s": s["now_s"] + for_s} for s in trace.samples if s["now_s"] > cut_s]
    trace.samples = before + frozen + later
    trace.events = [
        e if e["now_s"] <= cut_s else {**e, "now_s": e["now_s"] + for_s} for e in trace.events
    ]
    trace.ends_at_s += for_s
    trace.data["policy_overrides"]["postcopy_stall_s"] = 2.0
    return trace


def with_libvirt_pause(trace: Trace, *, after_s: float) -> Trace:
    """The trace with libvirt failing the post-copy ``after_s`` into it (a long outage).

    The migrate call fails, the source reports post-copy paused, nothing moves.
    """
    started_s = next(e["now_s"] for e in trace.events if e["kind"] == "postcopy-started")
    cut_s = started_s + after_s
    before = [s for s in trace.samples if s["now_s"] <= cut_s]
    trace.samples = before + [
        {**before[-1], "now_s": round(cut_s + k * 0.25, 3)} for k in range(1, 40)
    ]
    trace.events = [e for e in trace.events if e["now_s"] <= cut_s] + [
        {"kind": "postcopy-paused", "now_s": cut_s + 0.05, "iteration": 0, "detail": ""}
    ]
    trace.ends_at_s = cut_s + 0.1
    trace.ends_with = "HypervisorError"
    trace.data["policy_overrides"]["postcopy_resume_wait_s"] = 3.0
    return trace


def replay(
    name: str | Trace, *, libvirt_version: int = 11_003_000
) -> tuple[World, Any, BaseException | None]:
    trace = name if isinstance(name, Trace) else Trace(name)
    world = World(trace)
    world.libvirt_version = libvirt_version
    request = trace.request()
    source: HostConnection = TraceHost(world, request.source_uri, "hosta", source=True)
    dest: HostConnection = TraceHost(world, request.dest_uri, "hostb", source=False)
    try:
        outcome, _ = migrate(
            request,
            source=source,
            dest=dest,
            policy=trace.policy(),
            measured=trace.measured(),
            poll_interval_s=0.0005,
            clock=world.clock,
        )
    except (MigrationAborted, CutoverFailed) as exc:
        return world, None, exc
    return world, outcome, None


def calls(world: World) -> list[str]:
    return [c[1] for c in world.calls]


def args_of(world: World, call: str) -> list[object]:
    """The first argument of every ``call`` the driver made, in order."""
    return [c[2][0] for c in world.calls if c[1] == call]


def assert_within_the_policy(world: World, policy: MigrationPolicy) -> None:
    """What any run must show: limits within the budget, escalation only as allowed."""
    downtimes = args_of(world, "set_max_downtime")
    assert downtimes
    assert all(isinstance(d, int) and 0 < d <= policy.max_downtime_ms for d in downtimes)
    throttles = [int(str(p)) for p in args_of(world, "set_throttle_cap")]
    assert throttles == sorted(throttles)
    assert all(p <= policy.max_throttle_percent for p in throttles)
    if not policy.allows_throttle:
        assert throttles == []
    assert calls(world).count("start_postcopy") <= (1 if policy.allow_postcopy else 0)
    assert calls(world).count("migrate") == 1


def switched_at_the_minimum(section: dict[str, Any]) -> bool:
    """The round QEMU switched over in left the least dirty data of all rounds."""
    rounds = [r["bytes"] for r in section["bytes_per_round"]]
    return bool(rounds) and section["final_dirty_set_bytes"] == min(rounds)


def completed_event_downtime_ms(trace: Trace) -> int:
    raw = next(e for e in trace.events if e["kind"] == "job-completed")
    value = json.loads(raw["detail"])["downtime"]
    assert isinstance(value, int)
    return value


def test_light_load_replay_completes_in_precopy_with_the_events_downtime() -> None:
    world, outcome, error = replay("light5-bw30-precopy.json")
    assert error is None
    assert_within_the_policy(world, world.trace.policy())
    assert "start_postcopy" not in calls(world)
    assert "abort_job" not in calls(world)
    assert [p for p in args_of(world, "set_throttle_cap") if p] == []  # never slowed
    section = outcome.controller
    assert switched_at_the_minimum(section)
    assert section["state"] == "completed"
    assert section["measured"] == world.trace.measured().to_dict()  # as given: nothing measured
    # The loop's own CPU while it watched (the real process: the replay's loop ran here).
    assert isinstance(section["controller_cpu_s"], float)
    assert section["controller_cpu_s"] >= 0
    assert section["strategy"] in {"pre-copy", "pre-copy, downtime raised"}
    assert section["budget"]["met"] is True
    assert outcome.final.downtime_ms == completed_event_downtime_ms(world.trace) == 23


def test_busy_load_replay_escalates_to_postcopy_and_reports_its_downtime() -> None:
    world, outcome, error = replay("busy45-bw30-postcopy.json")
    assert error is None
    policy = world.trace.policy()
    assert_within_the_policy(world, policy)
    assert calls(world).count("start_postcopy") == 1
    assert "abort_job" not in calls(world)
    section = outcome.controller
    assert section["strategy"] == "post-copy"
    assert section["state"] == "completed"
    assert section["budget"]["met"] is True
    (postcopy,) = [d for d in section["decisions"] if d["state"] == "postcopy"]
    assert postcopy["round"] >= 2  # after the bulk pass, never during it
    assert postcopy["at_s"] < policy.max_duration_s
    assert section["postcopy_recoveries"] == []
    # The destination's completed stats are empty after post-copy: the figures
    # come from the source's JOB_COMPLETED event, so the downtime is not 0.
    assert outcome.final.downtime_ms == completed_event_downtime_ms(world.trace) == 10
    assert outcome.final.data_processed_bytes > 0


def test_postcopy_link_cut_replay_waits_and_recovers_on_the_same_connection() -> None:
    trace = with_link_cut(Trace("busy45-bw30-postcopy.json"), after_s=0.1, for_s=6.0)
    world, outcome, error = replay(trace)
    assert error is None
    assert "pause_postcopy" not in calls(world)
    assert calls(world).count("migrate") == 1  # nothing to resume: the connection held
    section = outcome.controller
    assert section["state"] == "completed"
    (recovery,) = section["postcopy_recoveries"]
    assert recovery["how"] == "same-connection"
    assert recovery["recovered_at_s"] > recovery["broken_at_s"]
    assert "stalled" in recovery["reason"]
    assert outcome.final.downtime_ms == 10
    # Cut until the end: completion is the recovery.
    trace = with_link_cut(Trace("busy45-bw30-postcopy.json"), after_s=0.3, for_s=6.0)
    world, outcome, error = replay(trace)
    assert error is None
    (recovery,) = outcome.controller["postcopy_recoveries"]
    assert recovery["how"] == "same-connection"
    assert outcome.controller["state"] == "completed"


def test_postcopy_paused_by_libvirt_is_resumed_where_resume_works() -> None:
    trace = with_libvirt_pause(Trace("busy45-bw30-postcopy.json"), after_s=0.1)
    world, outcome, error = replay(trace, libvirt_version=11_005_000)
    assert error is None
    resumes = [c for c in world.calls if c[1] == "migrate" and c[2][2] is True]
    assert len(resumes) == 1
    (recovery,) = outcome.controller["postcopy_recoveries"]
    assert recovery["how"] == "postcopy-resume"
    assert outcome.controller["state"] == "completed"


def test_postcopy_paused_by_libvirt_11_3_is_not_resumed_and_says_where_the_guest_is() -> None:
    trace = with_libvirt_pause(Trace("busy45-bw30-postcopy.json"), after_s=0.1)
    world, outcome, error = replay(trace, libvirt_version=11_003_000)
    assert outcome is None
    assert isinstance(error, CutoverFailed)
    assert not [c for c in world.calls if c[1] == "migrate" and c[2][2] is True]
    assert "crashes on POSTCOPY_RESUME" in error.message
    assert "Destination qemu+tcp://10.77.0.2/system: the running guest" in error.message
    assert "source qemu+tcp://10.77.0.1/system: the memory it has not received" in error.message
    assert "vmotion status vmo-guest" in error.hint


def test_unmeetable_budget_replay_aborts_naming_the_budget_and_stays_on_source() -> None:
    world, outcome, error = replay("busy45-bw30-abort.json")
    assert outcome is None
    assert isinstance(error, MigrationAborted)
    assert "100 ms downtime budget" in error.message
    assert "forbids throttling and post-copy" in error.message
    assert_within_the_policy(world, world.trace.policy())
    assert calls(world)[-1] == "abort_job"
    assert calls(world).count("abort_job") == 1
    assert "start_postcopy" not in calls(world)
    assert "set_throttle_cap" not in calls(world)  # the policy forbids throttling
    # Given up on the stall, well before the time budget ran out.
    aborted_at_s = next(c[0] for c in world.calls if c[1] == "abort_job")
    assert aborted_at_s < world.trace.policy().max_duration_s
    assert not world.landed


@pytest.mark.parametrize("name", sorted(p.name for p in TRACES.glob("*.json")))
def test_every_driver_trace_is_complete(name: str) -> None:
    trace = Trace(name)
    assert trace.samples
    assert trace.samples == sorted(trace.samples, key=lambda s: s["now_s"])
    assert trace.data["outcome"]["result"] in {"completed", "MigrationAborted"}


class RecordingCutover:
    """A post-switchover step that records how the driver ended it."""

    name = "network_cutover"

    def __init__(self) -> None:
        self.finished: list[bool] = []

    def arm(self) -> None:
        """Nothing to get ready."""

    def finish(self, *, landed: bool) -> dict[str, object]:
        self.finished.append(landed)
        return {}


@pytest.mark.parametrize(
    ("error", "raised"),
    [(KeyboardInterrupt, MigrationAborted), (RuntimeError, RuntimeError)],
    ids=["ctrl-c", "bug"],
)
def test_an_exception_out_of_the_loop_ends_the_cutover_first(
    error: type[BaseException], raised: type[BaseException]
) -> None:
    # Before: the exception went past cutover.finish, and the destination's
    # announcer kept waiting for a resume (an hour), to fire on a later retry.
    trace = Trace("light5-bw30-precopy.json")
    world = World(trace)
    request = trace.request()
    cutover = RecordingCutover()
    seen: list[object] = []

    def progress(view: object) -> None:
        seen.append(view)
        if len(seen) == 3:
            raise error

    with pytest.raises(raised):
        migrate(
            request,
            source=TraceHost(world, request.source_uri, "hosta", source=True),
            dest=TraceHost(world, request.dest_uri, "hostb", source=False),
            policy=trace.policy(),
            poll_interval_s=0.0005,
            clock=world.clock,
            cutover=cutover,
            on_progress=progress,
        )
    assert cutover.finished == [False]
