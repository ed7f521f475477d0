"""vmotion history lists what migrate ran (whatever the result); the metrics file follows it."""

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
UP = f"test://{Path(__file__).parent / 'data' / 'driver.xml'}"


def test_history_lists_failed_runs_and_the_metrics_count_them(
    tmp_path: Path, vmotion: Vmotion
) -> None:
    db, prom = tmp_path / "history.db", tmp_path / "vmotion.prom"
    assert vmotion("history", env={"VMOTION_HISTORY": str(db)}).stdout.startswith(
        "no migrations recorded"
    )
    for guest, code in (("nosuch", 8), ("stopped01", 3)):
        result = vmotion(
            "migrate", guest, "--from", UP, "--to", "test:///default",
            "--metrics-file", str(prom), env={"VMOTION_HISTORY": str(db)},
        )  # fmt: skip
        assert result.returncode == code, result.stderr
    listed = vmotion("history", "--json", env={"VMOTION_HISTORY": str(db)})
    assert listed.returncode == 0, listed.stderr
    docs = validated_history(listed.stdout)["migrations"]
    assert [(d["domain"], d["result"], d["exit_code"]) for d in docs] == [
        ("nosuch", "failed", 8),
        ("stopped01", "failed", 3),
    ]
    only = vmotion(
        "history", "--domain", "stopped01", "--since", "1h", env={"VMOTION_HISTORY": str(db)}
    )
    assert "stopped01" in only.stdout
    assert "nosuch" not in only.stdout
    text = prom.read_text()
    assert 'result="failed"} 2' in text
    assert 'vmotion_last_migration_success{domain="stopped01"' in text


def validated_history(stdout: str) -> dict[str, Any]:
    """The one document ``history --json`` prints, validated against its schema."""
    (line,) = stdout.splitlines()
    doc: dict[str, Any] = json.loads(line)
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    jsonschema.Draft202012Validator(load_schema("history"), format_checker=checker).validate(doc)
    return doc


@pytest.mark.parametrize("where", ["missing", "off"])
def test_an_empty_history_is_an_empty_list_not_no_output(
    where: str, tmp_path: Path, vmotion: Vmotion
) -> None:
    setting = str(tmp_path / "none" / "history.db") if where == "missing" else "off"
    result = vmotion("history", "--json", env={"VMOTION_HISTORY": setting})
    assert result.returncode == 0, result.stderr
    doc = validated_history(result.stdout)
    assert doc["migrations"] == []
    assert doc["history_file"] == (None if where == "off" else setting)
    assert not (tmp_path / "none").exists()  # listing creates nothing


def test_a_bad_since_is_a_usage_error(tmp_path: Path, vmotion: Vmotion) -> None:
    result = vmotion(
        "history", "--since", "yesterday", env={"VMOTION_HISTORY": str(tmp_path / "h.db")}
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: argument --since: expected a time ago like 90m")
