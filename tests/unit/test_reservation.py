"""Reservation planning (pure) and the SQLite store (a temp file, real locking)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from libvirt_vmotion.errors import ReservationError, UsageError
from libvirt_vmotion.model import MIB
from libvirt_vmotion.reserve.store import (
    Capacity,
    Reservation,
    ReservationRequest,
    ReservationStore,
    State,
    Unreleased,
    lease_ends_by_s,
    load_capacity,
    plan,
)


def req(
    rid: str = "r1", mem_mib: int = 768, vcpus: int = 1, domain: str = ""
) -> ReservationRequest:
    return ReservationRequest(rid, domain or f"dom-{rid}", "test", mem_mib * MIB, vcpus)


def row(rid: str, mem_mib: int, vcpus: int = 1) -> Reservation:
    return Reservation(rid, f"dom-{rid}", "test", mem_mib * MIB, vcpus, State.RESERVED, 0, 100)


@pytest.mark.parametrize(
    ("active", "capacity", "avail_mib", "granted", "words"),
    [
        ([], Capacity(), 4096, True, "1 of 2 inbound slots"),
        ([], Capacity(), 700, False, "needs 768 MiB"),
        ([], Capacity(memory_limit_mib=700), 4096, False, "capacity.toml"),
        ([row("a", 3500)], Capacity(), 4096, False, "3500 MiB of it reserved"),
        ([row("a", 100), row("b", 100)], Capacity(), 4096, False, "2 of 2 inbound"),
        ([row("a", 100)], Capacity(inbound_slots=1), 4096, False, "1 of 1 inbound"),
        ([row("a", 100, vcpus=3)], Capacity(vcpu_limit=4), 4096, True, "reserved"),
        ([row("a", 100, vcpus=4)], Capacity(vcpu_limit=4), 4096, False, "vcpu_limit"),
        ([row("r1", 768)], Capacity(inbound_slots=1), 800, True, "reserved"),
    ],
)  # fmt: skip
def test_plan(
    active: list[Reservation], capacity: Capacity, avail_mib: int, granted: bool, words: str
) -> None:
    grant = plan(req(), active=active, capacity=capacity, mem_available_bytes=avail_mib * MIB,
                 host="hostb")  # fmt: skip
    assert grant.granted is granted
    assert words in grant.reason + grant.hint
    if not granted:
        assert grant.hint


def test_capacity_file(tmp_path: Path) -> None:
    assert load_capacity(tmp_path / "absent.toml") == Capacity()
    good = tmp_path / "capacity.toml"
    good.write_text("memory_limit_mib = 900\ninbound_slots = 1\n")
    assert load_capacity(good) == Capacity(memory_limit_mib=900, inbound_slots=1)
    bad = tmp_path / "bad.toml"
    bad.write_text("memory_limit = 900\n")
    with pytest.raises(UsageError, match="unknown keys"):
        load_capacity(bad)
    bad.write_text("inbound_slots = -1\n")
    with pytest.raises(UsageError, match="inbound_slots=-1"):
        load_capacity(bad)


def test_store_lifecycle_and_lease_expiry(tmp_path: Path) -> None:
    store = ReservationStore(tmp_path / "r.db", host="hostb")
    cap = Capacity(lease_s=10)
    got = store.reserve(req(), capacity=cap, mem_available_bytes=4096 * MIB, now_s=1000)
    assert got.state is State.RESERVED
    # Idempotent: the same id renews instead of double-booking.
    store.reserve(req(), capacity=cap, mem_available_bytes=4096 * MIB, now_s=1005)
    assert len(store.list(now_s=1005)) == 1
    moved = store.set_state("r1", State.INCOMING, lease_s=100, now_s=1006)
    assert moved is not None
    assert moved.state is State.INCOMING
    assert store.for_domain("dom-r1", now_s=1100) is not None
    assert store.list(now_s=1107) == []  # the lease ran out: released


def test_store_refusal_changes_nothing(tmp_path: Path) -> None:
    store = ReservationStore(tmp_path / "r.db", host="hostb")
    store.reserve(req("a"), capacity=Capacity(), mem_available_bytes=1000 * MIB, now_s=1)
    with pytest.raises(ReservationError, match="needs 768 MiB") as info:
        store.reserve(req("b"), capacity=Capacity(), mem_available_bytes=1000 * MIB, now_s=2)
    assert info.value.hint
    assert [r.reservation_id for r in store.list(now_s=3)] == ["a"]
    assert store.release(now_s=4, domain="dom-a") == 1
    assert store.list(now_s=5) == []


def _race(path: str, rid: str, start: object, results: object) -> None:
    start.wait()  # type: ignore[attr-defined]
    store = ReservationStore(Path(path), host="hostb")
    try:
        store.reserve(req(rid), capacity=Capacity(), mem_available_bytes=1000 * MIB, now_s=1)
        results.put((rid, "granted"))  # type: ignore[attr-defined]
    except ReservationError:
        results.put((rid, "refused"))  # type: ignore[attr-defined]


def test_processes_racing_for_the_last_capacity_exactly_one_wins(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    start, results = ctx.Event(), ctx.Queue()
    path = str(tmp_path / "r.db")
    procs = [ctx.Process(target=_race, args=(path, f"r{i}", start, results)) for i in range(6)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(30)
    outcomes = sorted(results.get(timeout=5)[1] for _ in procs)
    assert outcomes == ["granted"] + ["refused"] * 5


def test_longest_lease_is_the_longest_of_any_state() -> None:
    assert Capacity().longest_lease_s == 3600
    assert Capacity(lease_s=7200, incoming_lease_s=60).longest_lease_s == 7200


@pytest.mark.parametrize(
    "steps",
    [
        [],  # failed before the transfer began: the fresh lease
        [("incoming", 1010)],  # the hook at migrate begin
        [("incoming", 1010), ("committed", 1050)],  # the guest started there
        [("committed", 1050)],
    ],
)
def test_lease_end_bound_is_never_before_the_row_expires(
    tmp_path: Path, steps: list[tuple[str, float]]
) -> None:
    """Whatever the hook did to the lease before the owner gave up, the row is gone by then."""
    store = ReservationStore(tmp_path / "r.db", host="hostb")
    cap = Capacity(lease_s=120, incoming_lease_s=600, commit_grace_s=30)
    row = store.reserve(req(), capacity=cap, mem_available_bytes=4096 * MIB, now_s=1000)
    reply = {**row.to_dict(), "longest_lease_s": cap.longest_lease_s}
    for state, at_s in steps:
        lease_s = cap.incoming_lease_s if state == "incoming" else cap.commit_grace_s
        store.set_state("r1", State(state), lease_s=lease_s, now_s=at_s)
    gave_up_s = 1060.0
    ends_by_s = lease_ends_by_s(reply, now_s=gave_up_s)
    assert ends_by_s is not None
    (held,) = store.list(now_s=gave_up_s)
    assert held.expires_s <= ends_by_s
    assert store.list(now_s=ends_by_s) == []


def test_lease_end_bound_needs_the_hosts_lease_terms() -> None:
    assert lease_ends_by_s({"expires_s": 1120.0, "longest_lease_s": 600}, now_s=1060) == 1660
    assert lease_ends_by_s({"expires_s": 5000.0, "longest_lease_s": 600}, now_s=1060) == 5000
    assert lease_ends_by_s({"expires_s": 1120.0}, now_s=1060) is None  # an older agent


def test_unreleased_says_who_frees_it_and_by_when() -> None:
    left = Unreleased("r1", "hostb", "no answer within 3 s", ends_by_s=1_764_106_450.0)
    assert left.message() == (
        "Could not release reservation r1 on hostb: no answer within 3 s. Not waiting for "
        "it: hostb frees it when its lease ends, by 2025-11-25 21:34:10 UTC at the latest "
        "(at once if the guest stops there)."
    )
    assert left.to_dict() == {
        "id": "r1",
        "host": "hostb",
        "released": False,
        "reason": "no answer within 3 s",
        "lease_ends_by_epoch_s": 1_764_106_450,
        "lease_ends_by_utc": "2025-11-25 21:34:10 UTC",
    }
    unknown = Unreleased("r1", "hostb", "exit 255", ends_by_s=None)
    assert "frees it when its lease ends (at once" in unknown.message()
    assert unknown.to_dict()["lease_ends_by_utc"] is None
