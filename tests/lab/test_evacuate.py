"""Emptying a host for real: hosta's guests spread over hostb and hostc, two at a time.

Three lab hosts (``lab up --hosts 3``), small guests (128 MiB, 16 MiB working set
at 2 MiB/s) so two cores can run four under TCG. hostb and hostc each allow
800 MiB for incoming guests (``capacity.toml``): a guest claims 384 MiB (RAM +
QEMU's overhead), so each takes two and the four must split.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import jsonschema
import pytest

from labcli import client_argv, vmotion_in_client
from libvirt_vmotion.lab import guestctl, topology
from libvirt_vmotion.lab.constants import HOST_A, HOST_B, HOST_C, LabHost
from libvirt_vmotion.lab.hostconf import host_paths
from libvirt_vmotion.lab.image import GuestImage
from libvirt_vmotion.reserve.store import ReservationStore
from libvirt_vmotion.schemas import load_schema

pytestmark = pytest.mark.lab

cli = partial(vmotion_in_client, timeout_s=600)

GUESTS = ("evac-1", "evac-2", "evac-3", "evac-4")
ROOM_MIB = 800
DESTS = (HOST_B, HOST_C)


def capacity_file(host: LabHost) -> Path:
    return host_paths(host).vmotion_etc / "capacity.toml"


def json_lines(result: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    """Every JSON line printed, each validated against the shipped schema of its event."""
    docs = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    for doc in docs:
        jsonschema.Draft202012Validator(load_schema(str(doc["event"]))).validate(doc)
    return docs


def start(name: str, host: LabHost, image: GuestImage, *, bridge: str = "br0") -> None:
    guestctl.start_guest(
        host, image, memory_mib=128, wss_mib=16, rate_mib_s=2, name=name, bridge=bridge
    )


def where(name: str) -> list[tuple[str, str]]:
    return [(h.name, state) for h, state in guestctl.find_guest(name)]


def mismatches(name: str) -> int:
    """Asked of the guest itself: pages its workload found wrong since it booted."""
    result = cli("lab", "guest", "status", "--name", name)
    assert result.returncode == 0, result.stderr
    value = json.loads(result.stdout[result.stdout.index("{") :])["mismatches"]
    assert isinstance(value, int)
    return value


@pytest.fixture(scope="module")
def three_hosts(guest_image: GuestImage) -> Iterator[GuestImage]:
    was_up = topology.status().healthy
    topology.up(hosts=3)
    for host in DESTS:
        capacity_file(host).write_text(f"memory_limit_mib = {ROOM_MIB}\n")
    yield guest_image
    for name in (*GUESTS, "evac-lonely", "evac-m", "evac-k1", "evac-k2", "evac-r1", "evac-r2"):
        guestctl.remove_guest(name)
    for host in DESTS:
        capacity_file(host).unlink(missing_ok=True)
        ReservationStore(host_paths(host).vmotion_lib / "reservations.db").exit_maintenance(now_s=0)
    topology.remove_extra_hosts()
    if not was_up:
        topology.down()


@pytest.fixture(scope="module")
def four_on_a(three_hosts: GuestImage) -> tuple[str, ...]:
    for name in GUESTS:
        start(name, HOST_A, three_hosts)
    for name in GUESTS:
        guestctl.wait_for_workload(name=name)
    return GUESTS


def test_dry_run_places_two_per_destination_and_moves_nothing(four_on_a: tuple[str, ...]) -> None:
    result = cli(
        "evacuate", "--from", HOST_A.uri, "--to", HOST_B.uri, "--to", HOST_C.uri,
        *(arg for g in four_on_a for arg in ("--domain", g)), "--dry-run", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    plan = next(doc for doc in json_lines(result) if doc["event"] == "evacuation-plan")["plan"]
    assert isinstance(plan, list)
    assert sorted(p["guest"] for p in plan) == sorted(four_on_a)
    assert sorted(p["order"] for p in plan) == [1, 2, 3, 4]
    per_dest = [sum(p["to"] == h.uri for p in plan) for h in DESTS]
    assert per_dest == [2, 2]  # 800 MiB for incoming guests on each: two claims of 384
    assert all(p["predicted_s"] is not None for p in plan)  # each with its forecast
    assert all(where(g) == [("hosta", "running")] for g in four_on_a)


def test_four_guests_leave_two_at_a_time_and_each_runs_intact_on_one_host(
    four_on_a: tuple[str, ...],
) -> None:
    result = cli(
        "evacuate", "--from", HOST_A.uri, "--to", HOST_B.uri, "--to", HOST_C.uri,
        *(arg for g in four_on_a for arg in ("--domain", g)),
        "--parallel", "2", "--bandwidth-total", "100", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    docs = json_lines(result)
    report = docs[-1]
    assert report["event"] == "evacuation-report"
    assert (report["moved"], report["asked"], report["host_empty"]) == (4, 4, True)
    landed = {g: where(g) for g in four_on_a}
    assert all(len(w) == 1 and w[0][1] == "running" for w in landed.values()), landed
    assert sorted(w[0][0] for w in landed.values()) == ["hostb", "hostb", "hostc", "hostc"]
    assert all(mismatches(g) == 0 for g in four_on_a)
    guests = report["guests"]
    assert isinstance(guests, list)
    # Never more than --parallel in flight: no third start before the first end.
    spans = sorted((g["started_s"], g["ended_s"]) for g in guests)
    for i, (begin, _) in enumerate(spans):
        assert sum(1 for b, e in spans[:i] if e > begin) < 2, spans
    assert {g["bandwidth_mib_s"] for g in guests} <= {50, 100}  # its share of the total
    for host in DESTS:
        rows = ReservationStore(host_paths(host).vmotion_lib / "reservations.db").list(
            now_s=time.time()
        )
        assert [r for r in rows if r.domain in four_on_a and r.state.value != "committed"] == []


def test_a_guest_whose_bridge_no_destination_has_stays_named_with_its_blocker(
    three_hosts: GuestImage,
) -> None:
    topology.run_on_host(HOST_A, ["ip", "link", "add", "br9", "type", "bridge"], check=False)
    topology.run_on_host(HOST_A, ["ip", "link", "set", "br9", "up"])
    start("evac-lonely", HOST_A, three_hosts, bridge="br9")
    start("evac-m", HOST_A, three_hosts)
    guestctl.wait_for_workload(name="evac-m")
    result = cli(
        "evacuate", "--from", HOST_A.uri, "--to", HOST_B.uri, "--to", HOST_C.uri,
        "--domain", "evac-lonely", "--domain", "evac-m", "--json",
    )  # fmt: skip
    assert result.returncode != 0
    report = json_lines(result)[-1]
    guests = report["guests"]
    assert isinstance(guests, list)
    entries = {g["guest"]: g for g in guests}
    assert entries["evac-m"]["result"] == "moved"
    lonely = entries["evac-lonely"]
    assert lonely["result"] == "stayed"
    assert set(lonely["kept_out"]) == {HOST_B.uri, HOST_C.uri}
    assert all("network" in why for why in lonely["kept_out"].values())
    assert where("evac-lonely") == [("hosta", "running")]
    assert report["host_empty"] is False


def test_maintenance_refuses_a_plain_virsh_migrate_until_it_ends(three_hosts: GuestImage) -> None:
    guestctl.remove_guest("evac-m")
    start("evac-m", HOST_A, three_hosts)
    guestctl.wait_for_workload(name="evac-m")
    entered = cli("maintenance", "enter", HOST_B.uri)
    assert entered.returncode == 0, entered.stderr
    assert "in maintenance" in entered.stdout
    virsh = ["virsh", "-c", HOST_A.uri, "migrate", "--live", "--p2p", "evac-m", HOST_B.uri]
    refused = subprocess.run(
        guestctl.client_command(virsh), capture_output=True, text=True, check=False, timeout=120
    )
    assert refused.returncode != 0
    assert "is in maintenance" in refused.stderr
    assert where("evac-m") == [("hosta", "running")]
    checked = cli("check", "evac-m", "--from", HOST_A.uri, "--to", HOST_B.uri, "--json")
    assert checked.returncode == 3
    assert "dest-maintenance" in json_lines(checked)[-1]["blockers"]  # type: ignore[operator]
    status = cli("maintenance", "status", HOST_B.uri, "--json")
    assert json_lines(status)[-1]["in_maintenance"] is True
    assert cli("maintenance", "exit", HOST_B.uri).returncode == 0
    moved = subprocess.run(
        guestctl.client_command(virsh), capture_output=True, text=True, check=False, timeout=300
    )
    assert moved.returncode == 0, moved.stderr
    assert ("hostb", "running") in where("evac-m")
    assert mismatches("evac-m") == 0


def store_rows(host: LabHost, names: tuple[str, ...]) -> list[object]:
    path = host_paths(host).vmotion_lib / "reservations.db"
    if not path.exists():
        return []
    return [r for r in ReservationStore(path).list(now_s=time.time()) if r.domain in names]


def placed(name: str) -> list[tuple[str, str]] | None:
    try:
        return where(name)
    except Exception:  # noqa: BLE001  mid-undefine on the source
        return None


def test_killing_evacuate_mid_way_leaves_each_guest_on_one_host_and_no_reservation(
    three_hosts: GuestImage,
) -> None:
    names = ("evac-k1", "evac-k2")
    for host in DESTS:  # short leases: "no reservation left after the lease" within the test
        capacity_file(host).write_text(
            f"memory_limit_mib = {ROOM_MIB}\nlease_s = 10\ncommit_grace_s = 5\n"
        )
    for name in names:
        start(name, HOST_A, three_hosts)
    for name in names:
        guestctl.wait_for_workload(name=name)
        cli("lab", "guest", "set", "rate", "6", "--name", name)
    proc = subprocess.Popen(
        client_argv(
            "evacuate", "--from", HOST_A.uri, "--to", HOST_B.uri, "--to", HOST_C.uri,
            *(a for n in names for a in ("--domain", n)), "--bandwidth-total", "8",
            "--timeout", "60", "--json",
        ),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not any(
        getattr(r, "state", None) is not None and r.state.value == "incoming"  # type: ignore[attr-defined]
        for h in DESTS
        for r in store_rows(h, names)
    ):
        assert proc.poll() is None, "evacuate ended before any move was in flight"
        assert time.monotonic() < deadline, "no move reached the transfer"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 60 + 30  # the budget, and the guard's margin
    settled: dict[str, list[tuple[str, str]] | None] = {}
    while time.monotonic() < deadline:
        settled = {n: placed(n) for n in names}
        if all(p is not None and len(p) == 1 and p[0][1] == "running" for p in settled.values()):
            break
        time.sleep(0.5)
    assert all(p is not None and len(p) == 1 and p[0][1] == "running" for p in settled.values()), (
        settled
    )
    assert all(mismatches(n) == 0 for n in names)
    deadline = time.monotonic() + 30
    while any(store_rows(h, names) for h in DESTS):
        assert time.monotonic() < deadline, [store_rows(h, names) for h in DESTS]
        time.sleep(0.5)
    for host in DESTS:
        capacity_file(host).write_text(f"memory_limit_mib = {ROOM_MIB}\n")


def race(name: str) -> subprocess.Popen[str]:
    argv = client_argv(
        "evacuate", "--from", HOST_A.uri, "--to", HOST_B.uri, "--domain", name,
        "--bandwidth-total", "2", "--json",
    )  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_evacuations_racing_for_the_last_room_never_overbook(three_hosts: GuestImage) -> None:
    names = ("evac-r1", "evac-r2")
    # hostb has room for exactly one of them, one inbound slot; the moves are slow (2 MiB/s).
    capacity_file(HOST_B).write_text("memory_limit_mib = 400\ninbound_slots = 1\n")
    for name in names:
        start(name, HOST_A, three_hosts)
    for name in names:
        guestctl.wait_for_workload(name=name)
    procs = [race(name) for name in names]
    outs = [p.communicate(timeout=600) for p in procs]
    capacity_file(HOST_B).write_text(f"memory_limit_mib = {ROOM_MIB}\n")
    reports = []
    for out, err in outs:
        lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
        assert lines, err
        reports.append(lines[-1]["guests"][0])
    assert sorted(r["result"] for r in reports) == ["moved", "stayed"], reports
    kept = next(r for r in reports if r["result"] == "stayed")
    assert kept["reason"], kept  # the refused reservation, or the blocker that kept it out
    for name in names:
        spots = where(name)
        assert len(spots) == 1, (name, spots)
        assert spots[0][1] == "running", (name, spots)
        assert mismatches(name) == 0
    for name in names:
        guestctl.remove_guest(name)
