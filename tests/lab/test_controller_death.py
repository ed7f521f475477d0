"""A controller SIGKILLed mid-migration: the source host's guard makes the end deliberate.

Without the guard a peer-to-peer job runs on unsteered until libvirt's keepalive ends
it 60-75 s later, while hostb holds an incoming QEMU and its memory. With it:
- killed in bulk copy (a guest that needs the controller to converge): the job is
  aborted at once, the guest stays on hosta, hostb's hook releases the reservation;
- killed in post-copy: the guest finishes on hostb, and ``status`` says the job is
  orphaned;
- killed between switchover and the announcement: the guest runs on hostb only.
Every case: the guest runs on exactly one host, nothing is left defined where it does
not run, and the guest itself counts 0 page mismatches.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from labcli import client_argv
from libvirt_vmotion.lab import guestctl
from libvirt_vmotion.lab.constants import GUEST_NAME, HOST_A, HOST_B
from libvirt_vmotion.lab.hostconf import host_paths
from libvirt_vmotion.reserve.store import ReservationStore, State

pytestmark = pytest.mark.lab

STORE = host_paths(HOST_B).vmotion_lib / "reservations.db"
BUDGET_S = 60
POSTCOPY_POLICY = """\
timeout = 40
postcopy-after-fraction = 0.25
postcopy-bandwidth = 5
"""


def set_workload(mode: str, rate_mib_s: int) -> None:
    for setting, value in (("mode", mode), ("rate", str(rate_mib_s))):
        subprocess.run(client_argv("lab", "guest", "set", setting, value), check=True)


def start(*extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        client_argv(
            "migrate", GUEST_NAME, "--from", HOST_A.uri, "--to", HOST_B.uri, "--json", *extra
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )


def kill(proc: subprocess.Popen[str]) -> float:
    os.killpg(proc.pid, signal.SIGKILL)  # the controller and all it runs in its group
    proc.wait(timeout=10)
    return time.monotonic()


def domstate(host: object) -> str:
    done: subprocess.CompletedProcess[str] = subprocess.run(
        ["virsh", "-c", guestctl.local_uri(host), "domstate", "--reason", GUEST_NAME],  # type: ignore[arg-type]
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return str(done.stdout).strip()


def source_job_active() -> bool:
    done = subprocess.run(
        ["virsh", "-c", guestctl.local_uri(HOST_A), "domjobinfo", GUEST_NAME],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return "Unbounded" in done.stdout or "Job type:         Bounded" in done.stdout


def wait_for(predicate: object, timeout_s: float, what: str) -> float:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.2)
    return time.monotonic()


def placement() -> list[tuple[object, str]] | None:
    try:
        return list(guestctl.find_guest())
    except Exception:  # noqa: BLE001  mid-undefine on the source
        return None


def reservations() -> list[object]:
    if not STORE.exists():
        return []
    return list(ReservationStore(STORE, host="hostb").list(now_s=time.time()))


def guest_mismatches() -> object:
    done = subprocess.run(
        client_argv("lab", "guest", "status"), capture_output=True, text=True, check=True
    )
    status = json.loads(done.stdout[done.stdout.index("{") :])
    return status["mismatches"]


def status() -> dict[str, object]:
    done = subprocess.run(
        client_argv("status", GUEST_NAME, "--from", HOST_A.uri, "--json"),
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    value = json.loads(done.stdout.strip().splitlines()[-1])
    assert isinstance(value, dict)
    return value


@pytest.mark.usefixtures("guest_on_a")
def test_killed_in_bulk_copy_the_job_ends_at_once_and_the_guest_stays_home() -> None:
    set_workload("paced", 45)  # 1.5x the cap: only the controller's escalations converge it
    proc = start("--bandwidth", "30", "--timeout", str(BUDGET_S))
    wait_for(
        lambda: any(r.state is State.INCOMING for r in reservations()),  # type: ignore[attr-defined]
        60,
        "the transfer never began (hostb's hook saw no incoming migration)",
    )
    time.sleep(2)  # well into bulk copy
    killed_at = kill(proc)
    ended_at = wait_for(lambda: not source_job_active(), BUDGET_S + 30, "job still running")
    print(f"job ended {ended_at - killed_at:.1f} s after the kill")
    assert ended_at - killed_at < 15  # the guard, not libvirt's 60-75 s keepalive
    assert domstate(HOST_A).startswith("running")
    wait_for(lambda: placement() == [(HOST_A, "running")], 30, "guest not home alone")
    wait_for(lambda: reservations() == [], 30, "hostb kept the reservation")
    said = status()
    assert said["phase"] == "idle"
    assert said["orphaned"] is True
    assert said["guard"] == "orphan-aborted"
    assert guest_mismatches() == 0


@pytest.mark.usefixtures("guest_on_a")
def test_killed_in_postcopy_the_guest_finishes_on_the_destination(tmp_path: Path) -> None:
    set_workload("paced", 45)
    policy = tmp_path / "policy.toml"
    policy.write_text(POSTCOPY_POLICY)
    proc = start("--bandwidth", "30", "--policy", str(policy))
    wait_for(lambda: "post-copy" in domstate(HOST_A), 60, "post-copy never started")
    time.sleep(1)
    killed_at = kill(proc)
    wait_for(lambda: status().get("guard") == "orphan-postcopy", 15, "guard did not say so")
    said = status()
    assert said["orphaned"] is True
    assert said["phase"] in {"postcopy", "idle", "left"}  # idle, left: it has finished
    ended_at = wait_for(
        lambda: placement() == [(HOST_B, "running")], 40 + 30, "guest not on hostb alone"
    )
    print(f"post-copy finished {ended_at - killed_at:.1f} s after the kill")
    assert guest_mismatches() == 0


@pytest.mark.usefixtures("guest_on_a")
def test_killed_between_switchover_and_announcement_the_guest_runs_on_the_destination() -> None:
    set_workload("paced", 2)
    proc = start()
    wait_for(lambda: domstate(HOST_B).startswith("running"), 90, "never switched over")
    killed_at = kill(proc)
    ended_at = wait_for(
        lambda: placement() == [(HOST_B, "running")], BUDGET_S + 30, "guest not on hostb alone"
    )
    print(f"landed {ended_at - killed_at:.1f} s after the kill")
    assert guest_mismatches() == 0
    # Nobody releases a landed guest's reservation now: the commit's lease does
    # (commit_grace_s, 60 s by default), within the budget + 30 s.
    wait_for(lambda: reservations() == [], BUDGET_S + 30, "hostb kept the reservation")
