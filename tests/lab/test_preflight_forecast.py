"""Forecast vs measured: migrate the lab guest at three dirty rates and compare.

The budget is fixed (initial = max downtime, no throttling, no post-copy) so
the controller runs plain pre-copy, the migration the forecast models. The
accuracy itself is a figure for the closing note and the benchmark, not a pass
bar: this asserts the behaviour (prediction recorded with its inputs next to
the outcome, reservation released, nothing lost).
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from libvirt_vmotion.lab import guestctl
from libvirt_vmotion.lab.constants import GUEST_ADDR, GUEST_NAME, HOST_A, HOST_B, LabHost
from libvirt_vmotion.lab.hostconf import host_paths
from libvirt_vmotion.reservation import ReservationStore

pytestmark = pytest.mark.lab

BANDWIDTH_MIB_S = 100
DOWNTIME_MS = 300


def migrate(src: LabHost, dst: LabHost) -> dict[str, object]:
    result = subprocess.run(
        guestctl.client_command(guestctl.self_command(
            "migrate", GUEST_NAME, "--from", src.uri, "--to", dst.uri, "--json",
            "--bandwidth", str(BANDWIDTH_MIB_S), "--workload", GUEST_ADDR,
            "--initial-downtime", str(DOWNTIME_MS), "--max-downtime", str(DOWNTIME_MS),
            "--no-throttle", "--no-postcopy",
        )),
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "forecast: converges" in result.stderr  # printed before the transfer
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert isinstance(report, dict)
    return report


@pytest.mark.usefixtures("guest_on_a")
def test_forecast_vs_measured_at_three_dirty_rates() -> None:
    rows = []
    hops = [(5, HOST_A, HOST_B), (25, HOST_B, HOST_A), (50, HOST_A, HOST_B)]
    for rate, src, dst in hops:
        guestctl.run_in_client(guestctl.self_command("lab", "guest", "set", "rate", str(rate)))
        time.sleep(1.5)  # let the writer reach its rate before measuring
        report = migrate(src, dst)
        assert guestctl.find_guest() == [(dst, "running")]
        assert report["workload"]["new_mismatches"] == 0  # type: ignore[index]
        forecast = report["forecast"]
        assert isinstance(forecast, dict)
        prediction, measured = forecast["prediction"], forecast["measured"]
        assert prediction["converges"] is True
        assert prediction["inputs"]["bandwidth_mib_s"] == BANDWIDTH_MIB_S
        assert prediction["inputs"]["bandwidth_source"] == "cap"
        assert prediction["inputs"]["max_downtime_ms"] == DOWNTIME_MS
        assert measured["rounds"] == report["iterations"]
        assert measured["downtime_ms"] == report["downtime_ms"]
        rows.append((rate, prediction, measured, forecast["error_pct"]))
        store = ReservationStore(host_paths(dst).vmotion_lib / "reservations.db")
        assert store.list(now_s=time.time()) == []
    print("\nrate  dirty(meas)  rounds p/m  time s p/m   downtime ms p/m  data MiB p/m   err%")
    for rate, p, m, e in rows:
        print(
            f"{rate:>4}  {p['inputs']['dirty_rate_mib_s']:>10.1f}"
            f"  {p['rounds']:>4}/{m['rounds']:<4}"
            f"  {p['total_time_s']:>5.2f}/{m['total_time_s']:<5.2f}"
            f"  {p['expected_downtime_ms']:>6}/{m['downtime_ms']:<6}"
            f"  {p['data_mib']:>6.1f}/{m['data_mib']:<6.1f}  {json.dumps(e)}"
        )
