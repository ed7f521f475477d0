"""Every JSON line the CLI prints validates against its schema (src/libvirt_vmotion/schemas).

Progress lines and completed reports come from replays of real lab traces
through the driver (the same fakes as ``test_driver_replay``), printed by the
CLI's own ``ViewPrinter`` and ``json_line``; the other commands' output is
validated in ``tests/testdriver/test_json_output.py``.
"""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest

from libvirt_vmotion.cli.app import ViewPrinter
from libvirt_vmotion.cli.report import REPORT_VERSION, build_failure_report, build_report, json_line
from libvirt_vmotion.converge.loop import HostConnection, migrate
from libvirt_vmotion.model import MIB, MigrationRequest
from libvirt_vmotion.preflight.result import CheckResult, Quantity, Unit, Verdict, bad, ok
from libvirt_vmotion.schemas import SCHEMA_OF_EVENT, load_schema


def _replay_module() -> ModuleType:
    path = Path(__file__).parent / "test_driver_replay.py"
    spec = importlib.util.spec_from_file_location("driver_replay_fakes", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


REPLAY = _replay_module()


def validate_line(line: str) -> dict[str, Any]:
    """Validate one printed line against the schema its ``event`` names; return it."""
    doc: dict[str, Any] = json.loads(line)
    assert "ts" in doc
    assert doc["report_version"] == REPORT_VERSION
    schema = load_schema(doc["event"])
    jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(doc)
    return doc


@pytest.mark.parametrize("name", sorted(set(SCHEMA_OF_EVENT.values())))
def test_every_schema_is_a_valid_draft_2020_12_schema(name: str) -> None:
    event = next(e for e, n in SCHEMA_OF_EVENT.items() if n == name)
    jsonschema.Draft202012Validator.check_schema(load_schema(event))


def _replayed_lines(trace_name: str) -> list[str]:
    trace = REPLAY.Trace(trace_name)
    world = REPLAY.World(trace)
    world.libvirt_version = 11_003_000
    request = trace.request()
    source: HostConnection = REPLAY.TraceHost(world, request.source_uri, "hosta", source=True)
    dest: HostConnection = REPLAY.TraceHost(world, request.dest_uri, "hostb", source=False)
    out = io.StringIO()
    printer = ViewPrinter(io.StringIO(), json_out=out, clock=world.clock)
    outcome, sections = migrate(
        request,
        source=source,
        dest=dest,
        policy=trace.policy(),
        poll_interval_s=0.0005,
        clock=world.clock,
        on_progress=printer,
    )
    report = build_report(request, outcome, sections, preflight_dirty_mib_s=12.5)
    return [*out.getvalue().splitlines(), json_line(report, now_s=1_764_000_000.0)]


@pytest.mark.parametrize("trace", ["light5-bw30-precopy.json", "busy45-bw30-postcopy.json"])
def test_replayed_progress_lines_and_report_validate(trace: str) -> None:
    lines = _replayed_lines(trace)
    docs = [validate_line(line) for line in lines]
    assert {d["event"] for d in docs} == {"progress", "report"}
    report = docs[-1]
    assert report["event"] == "report"
    assert report["result"] == "completed"
    rounds = report["convergence"]["bytes_per_round"]
    assert isinstance(rounds, list)
    assert rounds
    actions = [a for d in report["convergence"]["decisions"] for a in d["actions"]]
    assert actions
    assert all(isinstance(a, dict) and "action" in a for a in actions)


MEMORY_BLOCKER = bad(
    "dest-memory",
    Verdict.BLOCKER,
    "Destination b has 600 MiB available; 'g' needs 768 MiB.",
    observed="600 MiB available",
    required="768 MiB",
    hint="Free memory on b or choose another host.",
    quantity=Quantity(Unit.BYTES, observed=600 * MIB, required=768 * MIB),
)


def test_a_failure_report_validates_and_lists_its_blockers() -> None:
    request = MigrationRequest("g", "qemu+tcp://a/system", "qemu+tcp://b/system")
    blocker = MEMORY_BLOCKER.to_dict()
    report = build_failure_report(
        request, result="failed", error="e", hint="h", exit_code=3, blockers=(blocker,)
    )
    doc = validate_line(json_line(report, now_s=0.0))
    assert doc["blockers"] == [blocker]
    assert doc["blockers"][0]["observed_value"] == 600 * MIB
    assert doc["blockers"][0]["unit"] == "bytes"
    assert doc["ts"] == "1970-01-01T00:00:00.000Z"


def _check_def_validator() -> jsonschema.Draft202012Validator:
    schema = load_schema("check")
    return jsonschema.Draft202012Validator({"$ref": "#/$defs/check", "$defs": schema["$defs"]})


UNKNOWN_HUGEPAGES = bad(
    "dest-hugepages", Verdict.WARNING, "m", hint="h", quantity=Quantity(Unit.BYTES, required=MIB)
)


@pytest.mark.parametrize(
    "result",
    [MEMORY_BLOCKER, ok("guest-running", "running"), UNKNOWN_HUGEPAGES],
    ids=["numbers", "no-quantity", "required-only"],
)
def test_a_check_result_with_or_without_numbers_validates(result: CheckResult) -> None:
    _check_def_validator().validate(result.to_dict())


def test_a_check_result_with_a_text_number_is_refused() -> None:
    doc = {**MEMORY_BLOCKER.to_dict(), "observed_value": "600 MiB"}
    with pytest.raises(jsonschema.ValidationError):
        _check_def_validator().validate(doc)


def test_the_schemas_list_exactly_the_units_results_use() -> None:
    defs = load_schema("check")["$defs"]
    assert isinstance(defs, dict)
    assert set(defs["unit"]["enum"]) == {u.value for u in Unit} | {None}
    report_defs = load_schema("report")["$defs"]
    assert isinstance(report_defs, dict)
    blocker = report_defs["failure"]["properties"]["blockers"]["items"]
    assert set(blocker["properties"]["unit"]["enum"]) == {u.value for u in Unit} | {None}


def test_a_report_missing_its_event_is_refused_by_the_schema() -> None:
    request = MigrationRequest("g", "qemu+tcp://a/system", "qemu+tcp://b/system")
    report = build_failure_report(request, result="failed", error="e", hint="h", exit_code=1)
    report["exit_code"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        validate_line(json_line(report, now_s=0.0))
