from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from builders import make_sample
from libvirt_vmotion.cli.report import (
    build_failure_report,
    build_report,
    render_text,
    timeline_section,
)
from libvirt_vmotion.lab.guestdef import LabGuestSpec, VirtType, build_domain_xml
from libvirt_vmotion.model import MIB, JobSample, MigrationOutcome, MigrationRequest, Phase

# A jobStats() dict as libvirt 11.3 returned it mid-migration in the lab.
LIVE_STATS: dict[str, object] = {
    "type": 2,
    "operation": 5,
    "time_elapsed": 1200,
    "setup_time": 12,
    "data_total": 537_000_000,
    "data_processed": 300 * MIB,
    "data_remaining": 40 * MIB,
    "memory_total": 537_000_000,
    "memory_processed": 300 * MIB,
    "memory_remaining": 40 * MIB,
    "memory_bps": 250 * MIB,
    "memory_dirty_rate": 5120,
    "memory_iteration": 3,
    "memory_page_size": 4096,
}


def live_sample(**overrides: object) -> JobSample:
    """The lab's jobStats() dict, with some keys changed."""
    return make_sample(now_s=10.0, stats={**LIVE_STATS, **overrides})


def test_job_sample_normalizes_units() -> None:
    sample = live_sample()
    assert sample.job_type == "unbounded"
    assert sample.is_active
    assert sample.iteration == 3
    assert sample.dirty_rate_mib_s == pytest.approx(20.0)
    assert sample.transfer_rate_mib_s == pytest.approx(250.0)
    assert sample.phase is Phase.CONVERGING


def test_missing_keys_read_as_zero() -> None:
    sample = JobSample.from_job_stats({"type": 0}, now_s=0.0)
    assert sample.job_type == "none"
    assert not sample.is_active
    assert sample.memory_page_size == 4096
    assert sample.phase is Phase.DONE


@pytest.mark.parametrize(
    ("overrides", "phase"),
    [
        ({"memory_total": 0, "data_processed": 0}, Phase.SETUP),
        ({"memory_iteration": 1}, Phase.BULK_COPY),
        ({"memory_iteration": 4}, Phase.CONVERGING),
        ({"type": 3}, Phase.DONE),
    ],
)
def test_phase_inference(overrides: dict[str, object], phase: Phase) -> None:
    assert live_sample(**overrides).phase is phase


def test_report_has_figures_with_units_and_sections() -> None:
    final = live_sample(type=3, downtime=42, time_elapsed=2000, data_processed=400 * MIB)
    request = MigrationRequest("g", "qemu+tcp://a/system", "qemu+tcp://b/system", 100, 50, None)
    outcome = MigrationOutcome(
        domain="g",
        source_host="a",
        dest_host="b",
        wall_time_s=2.5,
        final=final,
        iterations=3,
        samples=(live_sample(), live_sample(memory_dirty_rate=10240)),
    )
    report = build_report(request, outcome, {"network": {"ping_lost": 1}})
    assert report["result"] == "completed"
    assert report["downtime_ms"] == 42
    assert report["avg_transfer_mib_s"] == pytest.approx(200.0)
    assert report["peak_dirty_rate_mib_s"] == pytest.approx(40.0)
    assert report["network"] == {"ping_lost": 1}
    json.dumps(report)  # serializable
    text = render_text(report)
    assert "downtime (QEMU)   42 ms" in text
    assert "ping_lost" in text


def test_guest_xml_is_tcg_by_default_with_named_cpu_and_bridge() -> None:
    spec = LabGuestSpec(kernel=Path("/k"), initrd=Path("/i"), cmdline="console=ttyS0")
    dom = ET.fromstring(build_domain_xml(spec))
    assert dom.get("type") == "qemu"
    assert dom.findtext("cpu/model") == "qemu64"
    assert dom.find("cpu").get("check") == "none"  # type: ignore[union-attr]
    assert dom.find("devices/interface/source").get("bridge") == "br0"  # type: ignore[union-attr]
    assert dom.findtext("os/kernel") == "/k"
    kvm = LabGuestSpec(Path("/k"), Path("/i"), "", virt_type=VirtType.KVM)
    assert ET.fromstring(build_domain_xml(kvm)).get("type") == "kvm"


@pytest.mark.parametrize(("field", "value"), [("memory_mib", 64), ("vcpus", 0)])
def test_guest_spec_rejects_bad_sizes(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=field):
        LabGuestSpec(Path("/k"), Path("/i"), "", **{field: value})  # type: ignore[arg-type]


def _outcome_with_dirty(*rates: int) -> MigrationOutcome:
    return MigrationOutcome(
        domain="g",
        source_host="a",
        dest_host="b",
        wall_time_s=1.5,
        final=live_sample(type=3, memory_dirty_rate=0),
        iterations=2,
        samples=tuple(live_sample(memory_dirty_rate=r) for r in rates),
    )


def test_report_uses_preflight_dirty_rate_when_qemu_reported_none() -> None:
    request = MigrationRequest("g", "qemu+tcp://a/system", "qemu+tcp://b/system")
    report = build_report(request, _outcome_with_dirty(0, 0), {}, preflight_dirty_mib_s=18.04)
    assert report["peak_dirty_rate_mib_s"] == pytest.approx(18.0)
    assert report["peak_dirty_rate_source"] == "pre-flight"
    assert report["preflight_dirty_rate_mib_s"] == pytest.approx(18.0)
    assert "peak dirty rate   18.0 MiB/s (pre-flight measurement" in render_text(report)


def test_report_keeps_qemus_peak_and_the_preflight_figure_apart() -> None:
    request = MigrationRequest("g", "qemu+tcp://a/system", "qemu+tcp://b/system")
    report = build_report(request, _outcome_with_dirty(0, 10240), {}, preflight_dirty_mib_s=18.0)
    assert report["peak_dirty_rate_mib_s"] == pytest.approx(40.0)
    assert report["peak_dirty_rate_source"] == "qemu"
    assert report["preflight_dirty_rate_mib_s"] == pytest.approx(18.0)
    assert "pre-flight" not in render_text(report)


def test_report_without_preflight_says_qemus_zero_as_before() -> None:
    request = MigrationRequest("g", "qemu+tcp://a/system", "qemu+tcp://b/system")
    report = build_report(request, _outcome_with_dirty(0), {})
    assert report["peak_dirty_rate_mib_s"] == 0.0
    assert report["peak_dirty_rate_source"] == "qemu"
    assert report["preflight_dirty_rate_mib_s"] is None


def test_failure_report_names_a_reservation_left_to_its_lease() -> None:
    request = MigrationRequest("g", "qemu+tcp://a/system", "qemu+tcp://b/system")
    plain = build_failure_report(request, result="failed", error="e", hint="h", exit_code=1)
    assert "reservation" not in plain
    left = {"id": "r1", "released": False, "lease_ends_by_utc": "2026-11-25 22:34:10 UTC"}
    report = build_failure_report(
        request, result="failed", error="e", hint="h", exit_code=5, reservation=left
    )
    assert report["reservation"] == left
    json.dumps(report)


def test_timeline_splits_the_command_into_phases_that_add_up() -> None:
    timeline = timeline_section(
        startup_s=0.4,
        gate_done_s=2.6,  # connect 0.3 + pre-flight and reservation 2.3
        gate_s=2.3,
        migrate_done_s=10.9,  # migration 7.6 + cutover and checks 0.7
        migration_s=7.6,
        released_s=11.2,
    )
    assert timeline == {
        "startup_s": 0.4,
        "connect_s": 0.3,
        "preflight_and_reserve_s": 2.3,
        "migration_s": 7.6,
        "cutover_and_checks_s": 0.7,
        "release_s": 0.3,
        "total_s": 11.6,
    }
    parts = sum(v for k, v in timeline.items() if k != "total_s")
    assert parts == pytest.approx(timeline["total_s"])
    text = render_text({"domain": "g", "result": "completed", "timeline_s": timeline})
    assert (
        "time went to      start-up 0.4 s, connect 0.3 s, pre-flight+reserve 2.3 s, "
        "migration 7.6 s, cutover+checks 0.7 s, release 0.3 s (all 11.6 s)"
    ) in text
    assert "time went to" not in render_text({"domain": "g", "result": "completed"})


def test_process_age_counts_from_the_process_start() -> None:
    # A fresh interpreter that sleeps 0.5 s before asking: its age includes the sleep and
    # its start-up, measured to 10 ms (no whole-second boot-time rounding).
    code = (
        "import time; time.sleep(0.5)\n"
        "from libvirt_vmotion.cli.app import _process_age_s\n"
        "print(_process_age_s())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 0.5 <= float(out.stdout) < 5.0


@pytest.mark.parametrize(
    ("tls", "copied", "dest", "section", "line"),
    [
        (
            True, ("vda",), "qemu+tls://b/system",
            {"memory": True, "disk": True, "control": "tls"},
            "encryption        memory TLS, disk copy TLS, control tls",
        ),
        (
            False, (), "qemu+tcp://b/system",
            {"memory": False, "disk": None, "control": "tcp"},
            "encryption        memory UNENCRYPTED, control tcp",
        ),
        (
            True, (), "qemu+ssh://root@b/system",
            {"memory": True, "disk": None, "control": "ssh"},
            "encryption        memory TLS, control ssh",
        ),
    ],
)  # fmt: skip
def test_report_says_what_crossed_the_network_encrypted(
    tls: bool, copied: tuple[str, ...], dest: str, section: dict[str, object], line: str
) -> None:
    request = MigrationRequest("g", "qemu+tcp://a/system", dest, copy_disks=copied, tls=tls)
    outcome = MigrationOutcome("g", "a", "b", 1.0, live_sample(type=3), 2)
    report = build_report(request, outcome, {})
    assert report["encryption"] == section
    assert line in render_text(report)
