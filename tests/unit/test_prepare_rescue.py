"""Ending a stuck prepare step on the destination: the host side, against real processes."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from libvirt_vmotion.adapters import ops
from libvirt_vmotion.converge import prepare


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(prepare, "QEMU_RUN_DIR", tmp_path)
    return tmp_path


@pytest.fixture
def stuck_child() -> Iterator[subprocess.Popen[bytes]]:
    """A process that is not QEMU and never ends by itself (libvirt's stuck fork, here)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield proc
    proc.kill()
    proc.wait()


def test_a_stuck_process_that_is_not_qemu_is_killed(
    run_dir: Path, stuck_child: subprocess.Popen[bytes]
) -> None:
    (run_dir / "web01.pid").write_text(f"{stuck_child.pid}\n")
    reply = prepare.op_free_stuck_prepare({"domain": "web01", "younger_than_s": 60.0})
    assert reply["killed_pid"] == stuck_child.pid
    assert str(reply["exe"]).startswith("python")
    assert stuck_child.wait(timeout=5) == -9


def test_a_process_older_than_the_migration_is_left(
    run_dir: Path, stuck_child: subprocess.Popen[bytes]
) -> None:
    (run_dir / "web01.pid").write_text(f"{stuck_child.pid}\n")
    time.sleep(0.3)
    reply = prepare.op_free_stuck_prepare({"domain": "web01", "younger_than_s": 0.1})
    assert reply["killed_pid"] == 0
    assert "older than this migration: left" in str(reply["note"])
    assert stuck_child.poll() is None


@pytest.mark.parametrize(
    ("domain", "note"),
    [("web01", "no pidfile"), ("../etc/passwd", "not a guest name"), ("", "not a guest name")],
)
def test_no_pidfile_or_a_bad_name_kills_nothing(run_dir: Path, domain: str, note: str) -> None:
    reply = prepare.op_free_stuck_prepare({"domain": domain, "younger_than_s": 60.0})
    assert reply["killed_pid"] == 0
    assert note in str(reply["note"])


def test_the_reply_crosses_the_wire_as_the_operation_says(run_dir: Path) -> None:
    assert (
        ops.FREE_STUCK_PREPARE.handler == "libvirt_vmotion.converge.prepare:op_free_stuck_prepare"
    )
    reply = prepare.op_free_stuck_prepare({"domain": "web01", "younger_than_s": 1.0})
    assert set(reply) == {"killed_pid", "exe", "note"}
