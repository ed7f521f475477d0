"""The source host's guard: a job whose controller died ends at once (pre-copy) or finishes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self, cast

import pytest

from libvirt_vmotion.converge.guard import (
    GuardState,
    on_controller_lost,
    read_state,
    run_guard,
)

ARGS = json.dumps({"domain": "web01", "controller": "pid 1 on ctl", "budget_s": 5})


@dataclass
class FakeSample:
    is_active: bool


@dataclass
class FakeGuest:
    postcopy: bool
    jobs: list[bool]
    aborted: list[str] = field(default_factory=list)

    def job_sample(self, *, now_s: float) -> FakeSample:
        return FakeSample(self.jobs.pop(0) if len(self.jobs) > 1 else self.jobs[0])

    def is_in_postcopy(self) -> bool:
        return self.postcopy

    def abort_job(self) -> None:
        self.aborted.append("abort")


@dataclass
class FakeHost:
    guest: FakeGuest

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def lookup(self, name: str) -> FakeGuest:
        return self.guest

    def has_guest(self, name: str) -> bool:
        return True


def guard_with(lines: str, guest: FakeGuest, tmp_path: Path) -> dict[str, object]:
    host = FakeHost(guest)
    code = run_guard(
        io.StringIO(lines),
        open_host=lambda _uri: cast("object", host),  # type: ignore[arg-type,return-value]
        state_dir=tmp_path,
        sleep=lambda _s: None,
    )
    assert code == 0
    return read_state("web01", tmp_path)


@pytest.mark.parametrize(
    ("active", "postcopy", "state"),
    [
        (True, False, GuardState.ORPHAN_ABORTED),
        (True, True, GuardState.ORPHAN_POSTCOPY),
        (False, False, GuardState.ORPHAN_NO_JOB),
        (False, True, GuardState.ORPHAN_NO_JOB),
    ],
)
def test_what_an_orphaned_migration_becomes(
    active: bool, postcopy: bool, state: GuardState
) -> None:
    assert on_controller_lost(job_active=active, in_postcopy=postcopy) is state


def test_a_controller_that_says_done_leaves_the_job_alone(tmp_path: Path) -> None:
    guest = FakeGuest(postcopy=False, jobs=[True])
    record = guard_with(ARGS + "\ndone\n", guest, tmp_path)
    assert record["state"] == "done"
    assert guest.aborted == []


def test_a_dead_controller_in_precopy_gets_its_job_aborted(tmp_path: Path) -> None:
    guest = FakeGuest(postcopy=False, jobs=[True])
    record = guard_with(ARGS + "\n", guest, tmp_path)  # then end of input: no "done"
    assert record["state"] == "orphan-aborted"
    assert record["controller"] == "pid 1 on ctl"
    assert guest.aborted == ["abort"]


def test_a_dead_controller_in_postcopy_is_let_finish(tmp_path: Path) -> None:
    guest = FakeGuest(postcopy=True, jobs=[True, True, False])
    record = guard_with(ARGS + "\n", guest, tmp_path)
    assert guest.aborted == []
    assert record["state"] == "orphan-finished"


def test_a_failed_controller_leaves_no_precopy_job(tmp_path: Path) -> None:
    guest = FakeGuest(postcopy=False, jobs=[True])
    record = guard_with(ARGS + "\nfailed\n", guest, tmp_path)
    assert record["state"] == "done"
    assert guest.aborted == ["abort"]


def test_unusable_arguments_are_refused(tmp_path: Path) -> None:
    assert run_guard(io.StringIO("[1]\n"), state_dir=tmp_path) == 2
    assert read_state("web01", tmp_path) == {}


def test_the_guard_process_outlives_a_killed_controller(tmp_path: Path) -> None:
    # A controller process starts the guard and is SIGKILLed: the guard sees its input
    # end and acts (libvirt's test driver: the guest has no job, so nothing to abort).
    driver = Path(__file__).parents[1] / "testdriver" / "data"
    xml = next(driver.glob("*.xml"))
    script = (
        "import sys, time\n"
        "from libvirt_vmotion.adapters.agent import RemoteHost\n"
        f"RemoteHost.for_uri('').start_guard({{'domain': 'x', 'libvirt_uri': 'test://{xml}'}})\n"
        "print('started', flush=True)\n"
        "time.sleep(60)\n"
    )
    env = {**os.environ, "VMOTION_GUARD_DIR": str(tmp_path)}
    ctl = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env
    )
    assert ctl.stdout is not None
    assert ctl.stdout.readline().strip() == "started"
    deadline = time.monotonic() + 20
    while read_state("x", tmp_path).get("state") != "steered" and time.monotonic() < deadline:
        time.sleep(0.05)
    ctl.kill()
    ctl.wait()
    while not str(read_state("x", tmp_path).get("state", "")).startswith("orphan"):
        assert time.monotonic() < deadline, read_state("x", tmp_path)
        time.sleep(0.05)
    assert read_state("x", tmp_path)["state"] == "orphan-no-job"
