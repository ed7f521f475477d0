"""The convergence controller against real libvirtd/QEMU in the namespace lab.

Bandwidth is capped low (30 MiB/s) and the working set small (64 MiB) so that
each run takes seconds; the guest's dirty rate is set relative to that cap.
Every test starts with an empty migration history (tests/lab/conftest.py), so the
controller knows no switchover rate unless the test gives one
(``--switchover-bandwidth``).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time

import pytest

from guestcheck import guest_mismatches
from labcli import last_json, vmotion_in_client
from libvirt_vmotion.errors import DomainNotFound
from libvirt_vmotion.lab import guestctl
from libvirt_vmotion.lab.constants import GUEST_ADDR, GUEST_NAME, HOST_A, HOST_B

pytestmark = pytest.mark.lab

BANDWIDTH_MIB_S = 30
BUDGET_S = 60


def set_workload(rate_mib_s: int, mode: str = "paced") -> None:
    for setting, value in (("mode", mode), ("rate", str(rate_mib_s))):
        result = vmotion_in_client("lab", "guest", "set", setting, value)
        assert result.returncode == 0, result.stderr


def our_migrate(*extra: str) -> subprocess.CompletedProcess[str]:
    return vmotion_in_client(
        "migrate", GUEST_NAME, "--from", HOST_A.uri, "--to", HOST_B.uri,
        "--bandwidth", str(BANDWIDTH_MIB_S), "--workload", GUEST_ADDR, "--json", *extra,
    )  # fmt: skip


def assert_unharmed(report: dict[str, object]) -> None:
    # The guest itself, after re-reading its whole working set on the destination.
    assert guest_mismatches() == 0
    workload = report["workload"]
    assert isinstance(workload, dict)
    assert workload["mismatches"] == 0  # and our report agrees
    assert workload["rebooted"] is False


def convergence(report: dict[str, object]) -> dict[str, object]:
    section = report["convergence"]
    assert isinstance(section, dict)
    print({k: v for k, v in section.items() if k not in {"policy", "measured"}})
    return section


def applied(conv: dict[str, object]) -> list[dict[str, object]]:
    """Every action the controller applied, in order (``{"action": ..., fields}``)."""
    decisions = conv["decisions"]
    assert isinstance(decisions, list)
    return [a for d in decisions for a in d["actions"]]


def throttled(conv: dict[str, object]) -> list[object]:
    """Throttle caps above 0 the controller set (``Throttle(0)`` only holds it off)."""
    return [a["percent"] for a in applied(conv) if a["action"] == "throttle" and a["percent"]]


@pytest.mark.usefixtures("guest_on_a")
def test_light_load_completes_in_precopy_without_escalation() -> None:
    set_workload(5)
    result = our_migrate("--timeout", str(BUDGET_S))
    assert result.returncode == 0, result.stderr
    report = last_json(result)
    assert guestctl.find_guest() == [(HOST_B, "running")]
    assert_unharmed(report)
    conv = convergence(report)
    assert conv["strategy"] in {"pre-copy", "pre-copy, downtime raised"}
    budget = conv["budget"]
    assert isinstance(budget, dict)
    assert budget["met"] is True
    assert isinstance(report["downtime_ms"], int)
    assert report["downtime_ms"] <= 500
    # No escalation at all: the guest was never slowed, nor moved by post-copy.
    assert throttled(conv) == []
    assert conv["throttle_percent"] == 0
    assert not any(a["action"] == "start-post-copy" for a in applied(conv))
    # The cap, not the sender, is the limit and pre-copy converges: zstd over multifd.
    measured = conv["measured"]
    assert isinstance(measured, dict)
    assert measured["compressed"] is True, measured["compression_reason"]
    assert "the link is the limit" in str(measured["compression_reason"])
    # Progress streamed as JSON lines before the report; the bulk percentage never fell.
    lines = [ln for ln in result.stdout.splitlines()[:-1] if '"event": "progress"' in ln]
    assert lines
    percents = [json.loads(ln)["bulk_percent"] for ln in lines]
    assert percents == sorted(percents)


@pytest.mark.usefixtures("guest_on_a")
def test_dirty_rate_above_bandwidth_plain_virsh_misses_budget_ours_finishes() -> None:
    set_workload(45)  # 1.5x the 30 MiB/s cap, paced: CPU throttling cannot slow it
    virsh = vmotion_in_client(
        "lab", "exec", "--", "timeout", str(BUDGET_S), "virsh", "-c", HOST_A.uri,
        "migrate", "--live", "--p2p", "--persistent", "--undefinesource",
        "--bandwidth", str(BANDWIDTH_MIB_S), GUEST_NAME, HOST_B.uri,
    )  # fmt: skip
    timed_out = virsh.returncode == 124
    if timed_out:
        # timeout killed only the client: a p2p migration must be aborted explicitly.
        subprocess.run(
            ["virsh", "-c", guestctl.local_uri(HOST_A), "domjobabort", GUEST_NAME],
            capture_output=True, check=False,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if guestctl.find_guest() == [(HOST_A, "running")]:
                    break
            except DomainNotFound:  # listed, then gone: the destination is cleaning up
                pass
            time.sleep(0.5)
    print("plain virsh:", virsh.returncode, virsh.stderr[-300:])
    assert timed_out, "plain virsh finished within the budget; the workload is too light"
    assert guestctl.find_guest() == [(HOST_A, "running")]

    result = our_migrate("--timeout", str(BUDGET_S))
    assert result.returncode == 0, result.stderr
    report = last_json(result)
    assert guestctl.find_guest() == [(HOST_B, "running")]
    assert_unharmed(report)
    conv = convergence(report)
    assert conv["strategy"] == "post-copy"
    budget = conv["budget"]
    assert isinstance(budget, dict)
    assert budget["met"] is True
    # The same clock as plain virsh's: the migration itself (our pre-flight, with
    # its dirty-rate measurement, runs before it and is not part of the budget).
    total_s = report["total_time_s"]
    assert isinstance(total_s, float | int)
    assert total_s < BUDGET_S
    print(f"ours: {report['total_time_s']} s, downtime {report['downtime_ms']} ms")


@pytest.mark.usefixtures("guest_on_a")
def test_known_switchover_rate_finishes_in_precopy_without_slowing_the_guest() -> None:
    """Dirty rate = the cap: by QEMU's capped arithmetic the dirty set needs seconds of
    pause, but its final round runs unthrottled. Knowing that rate (300 MiB/s: below the
    ~440 MiB/s the benchmark measured as a lower bound), the controller tells QEMU (its
    avail-switchover-bandwidth, libvirt >= 11.1) and lets it switch over within the real
    budget instead of throttling the guest's CPUs."""
    set_workload(BANDWIDTH_MIB_S)
    result = our_migrate(
        "--timeout", str(BUDGET_S), "--no-postcopy", "--switchover-bandwidth", "300"
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = last_json(result)
    assert guestctl.find_guest() == [(HOST_B, "running")]
    assert_unharmed(report)
    conv = convergence(report)
    assert str(conv["strategy"]).startswith("pre-copy")
    decisions = conv["decisions"]
    assert isinstance(decisions, list)
    assert throttled(conv) == []
    assert conv["throttle_percent"] == 0
    assert any("unthrottled" in str(d["reason"]) for d in decisions), decisions
    # QEMU was told the rate, so its limit is the real pause (less the overhead), within
    # the budget, and the guest paused within the budget.
    measured = conv["measured"]
    assert isinstance(measured, dict)
    assert measured["qemu_knows_switchover_rate"] is True
    assert measured["switchover_mib_s"] == 300
    assert isinstance(conv["downtime_limit_ms"], int)
    assert conv["downtime_limit_ms"] <= 500
    assert isinstance(report["downtime_ms"], int)
    assert report["downtime_ms"] <= 500
    print(f"ours: {report['total_time_s']} s, downtime {report['downtime_ms']} ms, "
          f"QEMU limit {conv['downtime_limit_ms']} ms")  # fmt: skip


@pytest.mark.usefixtures("guest_on_a")
def test_unmeetable_budget_without_throttle_or_postcopy_aborts_naming_it() -> None:
    set_workload(45)
    result = our_migrate("--max-downtime", "100", "--no-throttle", "--no-postcopy")
    assert result.returncode == 5, result.stderr
    assert "Traceback" not in result.stderr
    report = last_json(result)
    assert report["result"] == "aborted"
    error = report["error"]
    assert isinstance(error, str)
    assert "100 ms downtime budget" in error
    assert "forbids throttling and post-copy" in error
    assert guestctl.find_guest() == [(HOST_A, "running")]
    assert guest_mismatches() == 0


@pytest.mark.usefixtures("guest_on_a")
def test_cancel_command_aborts_and_leaves_destination_clean() -> None:
    set_workload(45)
    proc: dict[str, subprocess.CompletedProcess[str]] = {}

    def run() -> None:
        proc["r"] = our_migrate("--no-postcopy", "--no-throttle", "--timeout", "120")

    thread = threading.Thread(target=run)
    thread.start()
    # Pre-flight (dirty-rate measurement, forecast) runs first: wait for the job.
    deadline_s = time.monotonic() + 60
    while True:
        status = vmotion_in_client("status", GUEST_NAME, "--from", HOST_A.uri, "--json")
        assert status.returncode == 0, status.stderr
        if json.loads(status.stdout)["phase"] != "idle" or time.monotonic() > deadline_s:
            break
        time.sleep(0.5)
    time.sleep(3)  # a few rounds in
    status = vmotion_in_client("status", GUEST_NAME, "--from", HOST_A.uri, "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["phase"] in {"bulk-copy", "converging"}
    cancel = vmotion_in_client("cancel", GUEST_NAME, "--from", HOST_A.uri)
    assert cancel.returncode == 0, cancel.stderr
    thread.join(60)
    result = proc["r"]
    assert result.returncode == 5, result.stderr
    assert last_json(result)["result"] == "aborted"
    assert guestctl.find_guest() == [(HOST_A, "running")]
    # Nothing left on the destination: no definition, no QEMU process.
    listing = subprocess.run(
        ["virsh", "-c", guestctl.local_uri(HOST_B), "list", "--all", "--name"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert GUEST_NAME not in listing.stdout
    assert guest_mismatches() == 0
    nothing = vmotion_in_client("cancel", GUEST_NAME, "--from", HOST_A.uri)
    assert nothing.returncode == 1
    assert "hint:" in nothing.stderr
