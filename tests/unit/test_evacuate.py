"""Evacuation: placement and order (pure), and the moves run with plain fakes of our ports."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from libvirt_vmotion.errors import (
    ConnectionFailed,
    MigrationAborted,
    PreflightFailed,
    ReservationError,
    UsageError,
)
from libvirt_vmotion.evacuate.plan import (
    Candidate,
    Outcome,
    Placement,
    Room,
    may_start,
    plan_evacuation,
    share_bandwidth,
    unreachable_error,
)
from libvirt_vmotion.evacuate.run import (
    REUSE_PREFLIGHT_S,
    Evacuation,
    EvacuationRequest,
    GuestResult,
)
from libvirt_vmotion.model import MIB, MigrationRequest
from libvirt_vmotion.preflight.capacity import DestRoom
from libvirt_vmotion.preflight.result import Verdict, bad, ok
from libvirt_vmotion.reserve.store import (
    Capacity,
    ReservationRequest,
    ReservationStore,
    State,
)
from libvirt_vmotion.session.core import Claim, Preflight, PreflightOutcome, Session

B, C = "qemu+tcp://hostb/system", "qemu+tcp://hostc/system"
GUEST_BYTES = 384 * MIB


# ---- plan (pure) ------------------------------------------------------------------


def cand(guest: str, dest: str, predicted_s: float | None = 5.0, *blockers: str) -> Candidate:
    return Candidate(guest, dest, tuple(blockers), GUEST_BYTES, 1, predicted_s, "pre-copy")


def test_guests_predicted_to_finish_soonest_go_first_unknown_last() -> None:
    cands = [
        cand("slow", B, 40.0),
        cand("quick", B, 3.0),
        cand("unknown", B, None),
        cand("middle", B, 9.0),
    ]
    plan = plan_evacuation(cands, [Room(B)])
    assert [p.guest for p in plan] == ["quick", "middle", "slow", "unknown"]
    assert [p.order for p in plan] == [1, 2, 3, 4]


def test_each_guest_goes_where_most_memory_is_left_and_room_forces_the_split() -> None:
    # Room for two guests on each destination: the planner spreads four guests 2+2,
    # each time to the destination with the most headroom after placing it.
    rooms = [Room(B, memory_bytes=2 * GUEST_BYTES), Room(C, memory_bytes=2 * GUEST_BYTES + MIB)]
    cands = [cand(g, d, t) for g, t in (("g1", 1), ("g2", 2), ("g3", 3), ("g4", 4)) for d in (B, C)]
    plan = plan_evacuation(cands, rooms)
    assert [(p.guest, p.dest) for p in plan] == [("g1", C), ("g2", B), ("g3", C), ("g4", B)]
    assert plan[0].alternatives == (B,)


def test_a_guest_that_fits_nowhere_stays_and_names_each_destinations_blocker() -> None:
    cands = [
        cand("g1", B, 2.0, "network: bridge br9 missing on hostb"),
        cand("g1", C, 2.0, "network: bridge br9 missing on hostc"),
        cand("g2", B, 3.0),
        cand("g2", C, 3.0),
    ]
    plan = plan_evacuation(cands, [Room(B), Room(C)])
    stays = [p for p in plan if p.dest is None]
    assert [p.guest for p in stays] == ["g1"]
    assert stays[0].order == 0
    assert stays[0].kept_out == {
        B: "network: bridge br9 missing on hostb",
        C: "network: bridge br9 missing on hostc",
    }
    assert plan[0].guest == "g2"  # the movable ones come first


def test_a_full_destination_is_named_with_the_room_it_has_left() -> None:
    plan = plan_evacuation([cand("g1", B)], [Room(B, memory_bytes=100 * MIB)])
    assert plan[0].dest is None
    assert "100 MiB left" in plan[0].kept_out[B]
    assert "needs 384 MiB" in plan[0].kept_out[B]


def test_concurrency_caps_source_and_destination_slots() -> None:
    p = Placement("g", B, order=1)
    assert may_start(p, in_flight={}, parallel=2, slots={B: 2})
    assert not may_start(p, in_flight={C: 2}, parallel=2, slots={B: 2})  # source full
    assert not may_start(p, in_flight={B: 1}, parallel=4, slots={B: 1})  # destination full
    assert not may_start(Placement("g", None), in_flight={}, parallel=2, slots={})
    assert share_bandwidth(100, 3) == 33
    assert share_bandwidth(100, 0) is None


def unreachable(dest: str) -> ConnectionFailed:
    return ConnectionFailed(f"Cannot connect to {dest}", hint="start libvirtd")


def test_no_destination_answering_at_all_is_the_first_pairs_connection_error() -> None:
    pre = {(g, d): unreachable(d) for g in ("g1", "g2") for d in (B, C)}
    error = unreachable_error(["g1", "g2"], [B, C], pre)
    assert error is pre[("g1", B)]


@pytest.mark.parametrize(
    "answered",
    [
        PreflightOutcome(),  # C answered for g2
        PreflightFailed("blocked", hint="x"),  # C answered, with a blocker
        UsageError("bad", hint="x"),  # some other error: not a connection failure
    ],
)
def test_one_destination_answering_for_one_guest_is_a_plan_not_an_error(answered: object) -> None:
    pre: dict[tuple[str, str], object] = {
        (g, d): unreachable(d) for g in ("g1", "g2") for d in (B, C)
    }
    pre[("g2", C)] = answered
    assert unreachable_error(["g1", "g2"], [B, C], pre) is None


def test_no_guest_to_move_is_no_connection_error() -> None:
    assert unreachable_error([], [B, C], {}) is None


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"dest_uris": ()}, "at least one --to"),
        ({"dest_uris": ("qemu+tcp://a/system",)}, "also given as --to"),
        ({"dest_uris": (B, B)}, "given twice"),
        ({"dest_uris": (B,), "parallel": 0}, "--parallel 0"),
    ],
)
def test_bad_evacuation_requests_are_refused_before_any_host(
    kwargs: dict[str, object], needle: str
) -> None:
    with pytest.raises(UsageError, match=needle):
        EvacuationRequest(source_uri="qemu+tcp://a/system", **kwargs)  # type: ignore[arg-type]


# ---- the moves, with fakes -----------------------------------------------------------


@dataclass
class World:
    """What the fakes share: running guests, who is in flight, what happened."""

    running: list[str]
    fail: set[str] = field(default_factory=set)
    refuse: set[tuple[str, str]] = field(default_factory=set)
    blocked: set[tuple[str, str]] = field(default_factory=set)
    move_s: float = 0.05
    in_flight: list[str] = field(default_factory=list)
    most_in_flight: int = 0
    most_per_dest: dict[str, int] = field(default_factory=dict)
    moved: list[tuple[str, str]] = field(default_factory=list)
    speeds: list[tuple[str, int]] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    checks: int = 0
    unreachable: set[str] = field(default_factory=set)
    slots: int = 1
    prepare_s: float = 0.0
    refuse_s: float = 0.0
    preparing: list[str] = field(default_factory=list)
    most_preparing_per_dest: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class FakeSession:
    world: World
    request: MigrationRequest
    preflight: Preflight | None = None
    on_progress: Callable[[object], None] | None = None

    def check(self) -> PreflightOutcome:
        if self.preflight is not None:  # handed in at construction, as open_session does
            return self.preflight.run()
        with self.world.lock:
            self.world.checks += 1
        pair = (self.request.domain, self.request.dest_uri)
        results = (
            (bad("network", Verdict.BLOCKER, "bridge br9 missing", hint="x"),)
            if pair in self.world.blocked
            else (ok("guest-running", "running"),)
        )
        return PreflightOutcome(
            results=results,
            claim=Claim(self.request.domain, GUEST_BYTES, 1, self.request.dest_uri),
            room=DestRoom(memory_bytes=4 * GUEST_BYTES, vcpus=None, inbound_slots=self.world.slots),
        )

    def run(self) -> object:
        self.check()  # as Session.run: pre-flight first (the reused one when handed in)
        w, g, d = self.world, self.request.domain, self.request.dest_uri
        if (g, d) in w.refuse:
            time.sleep(w.refuse_s)
            msg = f"{d} is full"
            raise ReservationError(msg)
        self._prepare()
        with w.lock:
            w.in_flight.append(d)
            w.most_in_flight = max(w.most_in_flight, len(w.in_flight))
            w.most_per_dest[d] = max(w.most_per_dest.get(d, 0), w.in_flight.count(d))
        time.sleep(w.move_s)
        with w.lock:
            w.in_flight.remove(d)
        if g in w.fail:
            msg = f"{g} did not converge"
            raise MigrationAborted(msg, hint="raise --timeout")
        with w.lock:
            w.moved.append((g, d))
            w.running.remove(g)
        return FakeResult()

    def _prepare(self) -> None:
        """libvirt's prepare step on the destination, then the first progress view."""
        w, d = self.world, self.request.dest_uri
        with w.lock:
            w.preparing.append(d)
            most = w.most_preparing_per_dest.get(d, 0)
            w.most_preparing_per_dest[d] = max(most, w.preparing.count(d))
        time.sleep(w.prepare_s)
        with w.lock:
            w.preparing.remove(d)
        if self.on_progress is not None:
            self.on_progress(SimpleNamespace(phase="bulk-copy"))

    def remember(self, result: object, report: object) -> None:
        pass


@dataclass
class FakeResult:
    outcome: object = None


@dataclass
class FakeSessions:
    world: World

    @contextmanager
    def open(
        self,
        request: MigrationRequest,
        *,
        on_progress: Callable[[object], None] | None,
        preflight: Preflight | None = None,
    ) -> Iterator[Session]:
        if request.dest_uri in self.world.unreachable:
            raise unreachable(request.dest_uri)
        yield cast("Session", FakeSession(self.world, request, preflight, on_progress))


@dataclass
class FakeSource:
    world: World

    def running_guests(self) -> tuple[str, ...]:
        return tuple(self.world.running)

    def set_bandwidth(self, guest: str, mib_s: int) -> None:
        self.world.speeds.append((guest, mib_s))

    def abort(self, guest: str) -> None:
        self.world.aborted.append(guest)


@dataclass
class Heard:
    plans: list[Sequence[Placement]] = field(default_factory=list)
    results: list[GuestResult] = field(default_factory=list)
    shares: list[tuple[str, int]] = field(default_factory=list)

    def planned(self, plan: Sequence[Placement]) -> None:
        self.plans.append(plan)

    def started(self, placement: Placement, dest: str, bandwidth_mib_s: int | None) -> None:
        pass

    def progress(self, guest: str, dest: str, view: object) -> None:
        pass

    def bandwidth(self, guest: str, mib_s: int) -> None:
        self.shares.append((guest, mib_s))

    def finished(self, result: GuestResult) -> None:
        self.results.append(result)

    def warning(self, text: str) -> None:
        pass


def evacuation(
    world: World, clock: Callable[[], float] = time.monotonic, **kwargs: object
) -> tuple[Evacuation, Heard]:
    heard = Heard()
    request = EvacuationRequest("qemu+tcp://a/system", (B, C), **kwargs)  # type: ignore[arg-type]
    evac = Evacuation(request, FakeSessions(world), FakeSource(world), heard, clock)
    return evac, heard


def test_every_guest_moves_at_most_parallel_at_once_and_within_each_destinations_slots() -> None:
    world = World(running=["g1", "g2", "g3", "g4", "g5"])
    evac, heard = evacuation(world, parallel=2)
    results = evac.run(evac.plan())
    assert {r.outcome for r in results} == {Outcome.MOVED}
    assert world.running == []
    assert world.most_in_flight == 2
    assert max(world.most_per_dest.values()) == 1  # each destination has one inbound slot
    assert world.checks == 10  # pre-flight once per guest and destination, reused at start
    assert len(heard.results) == 5


def test_a_second_move_into_a_host_waits_until_the_first_left_libvirts_prepare_step() -> None:
    world = World(running=["g1", "g2", "g3", "g4"], slots=2, prepare_s=0.2, move_s=0.4)
    evac, _ = evacuation(world, parallel=4)
    results = evac.run(evac.plan())
    assert {r.outcome for r in results} == {Outcome.MOVED}
    assert world.most_preparing_per_dest == {B: 1, C: 1}  # never two prepares into one host
    assert world.most_per_dest == {B: 2, C: 2}  # yet both of its slots were in use at once


def test_a_fallback_destination_also_waits_for_another_moves_prepare_step_there() -> None:
    world = World(running=["g1", "g2"], slots=2, prepare_s=0.4, move_s=0.2, refuse_s=0.1)
    evac, _ = evacuation(world, parallel=2)
    plan = evac.plan()
    first = {p.guest: p.dest for p in plan}
    assert first["g1"] != first["g2"]  # one each: the fallback lands where g2 prepares
    world.refuse.add(("g1", cast("str", first["g1"])))  # another evacuation got there first
    results = {r.guest: r for r in evac.run(plan)}
    assert results["g1"].outcome is Outcome.MOVED
    assert results["g1"].dest == first["g2"]
    assert max(world.most_preparing_per_dest.values()) == 1


def test_planning_forecasts_with_each_moves_share_of_the_total_bandwidth() -> None:
    world = World(running=["g1", "g2", "g3"])
    seen: list[int | None] = []
    evac, _ = evacuation(world, parallel=2, bandwidth_total_mib_s=100)
    opened = evac.sessions.open

    def spy(request: MigrationRequest, **kwargs: Any) -> AbstractContextManager[Session]:
        seen.append(request.bandwidth_mib_s)
        return opened(request, **kwargs)

    evac.sessions = cast("Any", SimpleNamespace(open=spy))
    evac.plan()
    assert seen == [50] * 6  # two moves at once share 100 MiB/s, not an uncapped link


def test_a_pre_flight_older_than_the_reuse_window_is_run_again_when_the_move_starts() -> None:
    ticks = itertools.count(step=REUSE_PREFLIGHT_S)  # each reading one window later
    world = World(running=["g1", "g2"])
    evac, _ = evacuation(world, clock=lambda: float(next(ticks)))
    results = evac.run(evac.plan())
    assert {r.outcome for r in results} == {Outcome.MOVED}
    assert world.checks == 4 + 2  # every pair at planning, then each guest again at its start


def test_one_failure_stays_local_and_a_refused_reservation_tries_the_next_destination() -> None:
    world = World(running=["g1", "g2", "g3"], fail={"g2"})
    evac, _ = evacuation(world, parallel=2)
    plan = evac.plan()
    first_of_g3 = next(p.dest for p in plan if p.guest == "g3")
    world.refuse.add(("g3", cast("str", first_of_g3)))  # another evacuation got there first
    results = {r.guest: r for r in evac.run(plan)}
    assert results["g1"].outcome is Outcome.MOVED
    assert results["g2"].outcome is Outcome.FAILED
    assert results["g2"].exit_code == 5
    assert "did not converge" in results["g2"].error
    assert results["g3"].outcome is Outcome.MOVED
    assert results["g3"].dest != first_of_g3
    assert world.running == ["g2"]  # it stays on the source, running


def test_a_guest_blocked_everywhere_stays_with_its_blockers_and_the_rest_move() -> None:
    world = World(running=["g1", "g2"], blocked={("g1", B), ("g1", C)})
    evac, _ = evacuation(world)
    results = {r.guest: r for r in evac.run(evac.plan())}
    assert results["g1"].outcome is Outcome.STAYED
    assert "network: bridge br9 missing" in results["g1"].error
    assert results["g2"].outcome is Outcome.MOVED


def test_the_total_bandwidth_is_shared_and_rebalanced_when_a_move_ends() -> None:
    world = World(running=["g1", "g2", "g3"], move_s=0.3)
    evac, heard = evacuation(world, parallel=2, bandwidth_total_mib_s=100)
    results = evac.run(evac.plan())
    assert all(r.outcome is Outcome.MOVED for r in results)
    assert {r.bandwidth_mib_s for r in results} <= {50, 100}
    assert 50 in {mib for _, mib in heard.shares}  # two at once: half each


def test_planning_stops_at_once_when_no_destination_answers() -> None:
    world = World(running=["g1", "g2"], unreachable={B, C})
    evac, heard = evacuation(world)
    with pytest.raises(ConnectionFailed, match="Cannot connect to qemu"):
        evac.plan()
    assert heard.plans == []


def test_an_unreachable_destination_among_others_only_keeps_the_guests_out_of_it() -> None:
    world = World(running=["g1", "g2"], unreachable={B})
    evac, _ = evacuation(world)
    plan = evac.plan()
    assert {p.dest for p in plan} == {C}
    assert all("Cannot connect to" in p.kept_out[B] for p in plan)


def test_named_guests_must_run_on_the_source() -> None:
    world = World(running=["g1"])
    evac, _ = evacuation(world, domains=("g1", "nope"))
    with pytest.raises(UsageError, match="not running on qemu\\+tcp://a/system: nope"):
        evac.plan()


# ---- maintenance: a mark in the host's reservation store --------------------------


def request(domain: str = "web01") -> ReservationRequest:
    return ReservationRequest("r-" + domain, domain, "vmotion", GUEST_BYTES, 1)


def test_maintenance_refuses_every_incoming_guest_until_it_ends(tmp_path: Path) -> None:
    store = ReservationStore(tmp_path / "r.db", host="hostb")
    cap = Capacity()
    store.reserve(request("early"), capacity=cap, mem_available_bytes=8 << 30, now_s=1.0)
    mark = store.enter_maintenance(by="test", now_s=2.0)
    assert mark.by == "test"
    with pytest.raises(ReservationError, match="hostb is in maintenance") as refused:
        store.reserve(request(), capacity=cap, mem_available_bytes=8 << 30, now_s=3.0)
    assert "vmotion maintenance exit" in refused.value.hint
    # The hook's migrate begin: refused even for a guest reserved before the mark.
    with pytest.raises(ReservationError, match="in maintenance"):
        store.take_incoming(request("early"), capacity=cap, mem_available_bytes=8 << 30,
                            now_s=3.0)  # fmt: skip
    with pytest.raises(ReservationError, match="in maintenance"):
        store.take_incoming(request("plain-virsh"), capacity=cap,
                            mem_available_bytes=8 << 30, now_s=3.0)  # fmt: skip
    # The mark lives in the database: a new process (a new store object) sees it.
    again = ReservationStore(tmp_path / "r.db", host="hostb")
    assert again.maintenance(now_s=4.0) == mark
    assert again.exit_maintenance(now_s=5.0) == mark
    row = again.take_incoming(request(), capacity=cap, mem_available_bytes=8 << 30, now_s=6.0)
    assert row.state is State.INCOMING
    assert again.maintenance(now_s=7.0) is None
