"""The text report shows forecast vs outcome, the decisions and the network cutover.

The sample is a lab run's report (bench-results/512-20261126, converted to
report_version 2: actions as objects, addresses as a list), checked against the
report schema first, so the text is tested on the keys a real report has.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import jsonschema
import pytest

from libvirt_vmotion.cli.report import render_text
from libvirt_vmotion.cli.report_text import action_text, cutover_lines, forecast_lines
from libvirt_vmotion.schemas import load_schema

MAC = "52:54:00:77:00:50"

SAMPLE: dict[str, Any] = {
    "event": "report",
    "ts": "2026-11-26T10:20:03.986Z",
    "report_version": 2,
    "result": "completed",
    "encryption": {"memory": False, "disk": None, "control": "tcp"},
    "domain": "vmo-guest",
    "source": {"host": "hosta", "uri": "qemu+tcp://10.77.0.1/system"},
    "destination": {"host": "hostb", "uri": "qemu+tcp://10.77.0.2/system"},
    "settings": {"bandwidth_mib_s": 50, "max_downtime_ms": 500, "timeout_s": 90.0},
    "total_time_s": 7.57,
    "qemu_elapsed_ms": 5481,
    "downtime_ms": 23,
    "setup_time_ms": 2,
    "iterations": 4,
    "data_transferred_bytes": 226419330,
    "memory_total_bytes": 537665536,
    "avg_transfer_mib_s": 39.4,
    "peak_dirty_rate_mib_s": 1.3,
    "peak_dirty_rate_source": "qemu",
    "preflight_dirty_rate_mib_s": 0.0,
    "samples": 24,
    "forecast": {
        "error_pct": {"data_mib": 4.7, "downtime_ms": 117.4, "rounds": -25.0,
                      "total_time_s": -16.6},
        "measured": {"data_mib": 215.93, "downtime_ms": 23, "rounds": 4, "total_time_s": 5.481},
        "prediction": {
            "converges": True, "data_mib": 226.0, "expected_downtime_ms": 50, "rho": 0.0,
            "reason": "dirty rate is 0% of bandwidth; round 2 fits the 500 ms budget",
            "rounds": 3, "strategy": "pre-copy", "total_time_s": 4.57,
            "inputs": {"bandwidth_mib_s": 50.0, "bandwidth_source": "cap", "dirty_rate_mib_s": 0.0,
                       "max_downtime_ms": 500, "memory_mib": 226.0},
        },
    },
    "convergence": {
        "state": "completed", "strategy": "pre-copy, downtime raised", "rounds": 4,
        "bytes_per_round": [{"round": 2, "bytes": 4968448}, {"round": 3, "bytes": 663552}],
        "final_dirty_set_bytes": 0, "downtime_limit_ms": 60, "throttle_percent": 0,
        "budget": {"max_downtime_ms": 500, "max_duration_s": 90.0, "met": True},
        "postcopy_recoveries": [], "policy": {},
        "decisions": [
            {"at_s": 0.25, "round": 0, "state": "setup", "rule": "start",
             "reason": "start with the tightest downtime, 30 ms",
             "actions": [{"action": "set-max-downtime", "downtime_ms": 30},
                         {"action": "throttle", "percent": 0}]},
            {"at_s": 1.24, "round": 1, "state": "bulk-copy", "rule": "enter-phase",
             "reason": "entered bulk-copy (round 1)", "actions": []},
            {"at_s": 5.35, "round": 3, "state": "converging", "rule": "raise-downtime",
             "reason": "rounds stopped shrinking: next rung",
             "actions": [{"action": "set-max-downtime", "downtime_ms": 60}]},
        ],
    },
    "network_cutover": {
        "result": "ok",
        "notify": {"br0": True},
        "nics": [{"bridge": "br0", "mac": MAC}],
        "addresses": [
            {"mac": MAC, "ip": "10.77.0.50", "source": "nwfilter", "announced": True},
            {"mac": MAC, "ip": "10.77.0.1", "source": "agent", "announced": False,
             "why_not": "guest-reported"},
        ],
        "address_source": "nwfilter",
        "schedule": {"count": 3, "interval_ms": 50},
        "resumed_seen": True,
        "announcements_sent": {"rarp": 3, "garp": 3},
        "announcements": [
            {"at_ms": 3.9, "bridge": "br0", "kind": "rarp", "mac": MAC, "round": 0},
            {"at_ms": 4.0, "bridge": "br0", "kind": "garp", "mac": MAC, "round": 0,
             "ip": "10.77.0.50"},
        ],
        "first_announcement_after_resume_ms": 3.9,
        "dest_fdb": [{"after_resume_ms": 118.9, "bridge": "br0", "mac": MAC, "port": "vnet1",
                      "tap": "vnet1", "verified": True}],
        "dest_fdb_claimed": [],
        "source_fdb_removed": [{"bridge": "br0", "mac": MAC, "port": "eth0"}],
        "errors": [],
    },
}  # fmt: skip


def test_the_sample_is_a_valid_report() -> None:
    jsonschema.Draft202012Validator(load_schema("report")).validate(SAMPLE)


def test_forecast_vs_outcome_shows_predicted_measured_and_error() -> None:
    text = render_text(SAMPLE)
    lines = text.splitlines()
    assert any("forecast vs outcome" in line and "predicted" in line for line in lines)
    time_row = next(line for line in lines if line.strip().startswith("time "))
    assert time_row.split()[1:] == ["4.6", "s", "5.5", "s", "-16.6%"]
    rounds_row = next(line for line in lines if line.strip().startswith("rounds "))
    assert rounds_row.split()[1:] == ["3", "4", "-25.0%"]
    pause_row = next(line for line in lines if line.strip().startswith("pause "))
    assert pause_row.split()[1:] == ["50", "ms", "23", "ms", "+117.4%"]


def test_no_forecast_says_why() -> None:
    lines = forecast_lines({"prediction": None, "error": "dirty-rate API unsupported"})
    assert lines == ["  forecast          none (dirty-rate API unsupported)"]
    assert forecast_lines(None) == []


def test_each_decision_is_one_line_with_time_round_rule_reason_and_actions() -> None:
    lines = render_text(SAMPLE).splitlines()
    start = next(line for line in lines if "start with the tightest" in line)
    assert "0.25 s" in start
    assert "round   0" in start
    assert "start:" in start
    assert start.endswith("-> set-max-downtime 30 ms, throttle 0%")
    raise_line = next(line for line in lines if "rounds stopped shrinking" in line)
    assert "raise-downtime:" in raise_line
    assert raise_line.endswith("-> set-max-downtime 60 ms")
    phase = next(line for line in lines if "entered bulk-copy" in line)
    assert "->" not in phase  # no actions, none shown
    assert len([line for line in lines if re.match(r"^ +\d+\.\d\d s  round ", line)]) == 3


@pytest.mark.parametrize(
    ("action", "text"),
    [
        ({"action": "set-max-bandwidth", "bandwidth_mib_s": 100}, "set-max-bandwidth 100 MiB/s"),
        ({"action": "start-post-copy"}, "start-post-copy"),
        ({"action": "abort", "reason": "no progress"}, "abort (no progress)"),
        ("SetMaxDowntime(downtime_ms=30)", "SetMaxDowntime(downtime_ms=30)"),
    ],
)
def test_actions_read_as_words_and_units(action: object, text: str) -> None:
    assert action_text(action) == text


def test_the_cutover_says_what_was_sent_and_where_the_mac_was_seen() -> None:
    text = render_text(SAMPLE)
    assert "network cutover   ok" in text
    assert "sent            3 GARP, 3 RARP out of br0, first 3.9 ms after the resume" in text
    assert "10.77.0.50 (nwfilter)" in text
    assert "10.77.0.1 (agent) on 52:54:00:77:00:50: not announced: guest-reported" in text
    assert f"MAC seen        {MAC} on br0 port vnet1, 118.9 ms after resume" in text
    assert "1 stale entry removed" in text


def test_a_cutover_that_did_not_verify_or_was_skipped_says_so() -> None:
    cutover = copy.deepcopy(SAMPLE["network_cutover"])
    cutover["result"] = "degraded"
    cutover["dest_fdb"] = [{"bridge": "br0", "mac": MAC, "verified": False, "detail": "no frame"}]
    cutover["errors"] = ["stale FDB entries on the source not removed: ssh failed"]
    lines = cutover_lines(cutover)
    assert lines[0] == "  network cutover   degraded"
    assert f"    MAC NOT seen    {MAC} on br0: no frame" in lines
    assert any("problem" in line and "ssh failed" in line for line in lines)
    skipped = cutover_lines({"result": "skipped: the migration did not complete"})
    assert skipped == ["  network cutover   skipped: the migration did not complete"]


def test_announcing_turned_off_is_said() -> None:
    lines = cutover_lines({"result": "ok", "notify": {"br0": False}, "errors": []})
    assert "    sent            nothing (announcing turned off)" in lines


def test_a_report_without_these_sections_renders_as_before() -> None:
    bare = {
        k: v for k, v in SAMPLE.items() if k not in {"forecast", "convergence", "network_cutover"}
    }
    text = render_text(bare)
    assert "forecast" not in text
    assert "decisions" not in text
    assert "network cutover" not in text
