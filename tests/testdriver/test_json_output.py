"""What check, netcheck and migrate print with --json validates against the shipped schemas."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from libvirt_vmotion.schemas import load_schema

Vmotion = Callable[..., subprocess.CompletedProcess[str]]
DATA = Path(__file__).parent / "data"
UP = f"test://{DATA / 'driver.xml'}"
NET = f"test://{DATA / 'netguest.xml'}"
DEAD = "qemu+tcp://127.0.0.1:1/system"


def validated(text: str) -> list[dict[str, Any]]:
    docs = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert docs, "no JSON printed"
    for doc in docs:
        checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
        jsonschema.Draft202012Validator(load_schema(doc["event"]), format_checker=checker).validate(
            doc
        )
    return docs


@pytest.mark.parametrize(
    ("args", "code", "event"),
    [
        (("check", "web01", "--from", UP, "--to", "test:///default", "--json"), 3, "check"),
        (("netcheck", "web01", "--from", UP, "--to", DEAD, "--json"), 1, "netcheck"),
        (("netcheck", "net01", "--from", NET, "--to", DEAD, "--json"), 1, "netcheck"),
        (("migrate", "nosuch", "--from", UP, "--to", "test:///default", "--json"), 8, "report"),
        (("migrate", "web01", "--from", UP, "--to", DEAD, "--json"), 7, "report"),
        (("evacuate", "--from", UP, "--to", "test:///default", "--dry-run", "--json"), 3,
         "evacuation-plan"),
        (("evacuate", "--from", UP, "--to", "test:///default", "--json"), 3, "evacuation-report"),
    ],
)  # fmt: skip
def test_every_json_line_validates(
    args: tuple[str, ...], code: int, event: str, vmotion: Vmotion
) -> None:
    result = vmotion(*args)
    assert result.returncode == code, result.stderr
    docs = validated(result.stdout)
    assert docs[-1]["event"] == event


def test_a_blocked_migration_reports_its_blockers_as_objects(
    tmp_path: Path, vmotion: Vmotion
) -> None:
    report_file = tmp_path / "out" / "report.json"
    result = vmotion(
        "migrate", "stopped01", "--from", UP, "--to", "test:///default", "--json",
        "--report-file", str(report_file),
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    (doc,) = validated(result.stdout)
    assert doc["exit_code"] == 3
    assert {b["name"] for b in doc["blockers"]} >= {"guest-running", "same-host"}
    assert all(b["verdict"] == "blocker" and b["hint"] for b in doc["blockers"])
    (written,) = validated(json.dumps(json.loads(report_file.read_text())))
    assert written["blockers"] == doc["blockers"]


def test_check_says_what_the_policy_permits(tmp_path: Path, vmotion: Vmotion) -> None:
    policy = tmp_path / "cautious.toml"
    policy.write_text("postcopy = false\nmax-throttle = 0\n")
    result = vmotion(
        "check", "web01", "--from", UP, "--to", "test:///default", "--json", "--policy", str(policy)
    )
    (doc,) = validated(result.stdout)
    assert doc["verdict"] == "blocker"
    assert "post-copy: never" in doc["escalations"]
