"""``vmotion evacuate``'s CLI pieces: the exit code, and the printer's progress lines."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import pytest

from libvirt_vmotion.cli.app import _policy as policy_from_args
from libvirt_vmotion.cli.app import build_parser
from libvirt_vmotion.cli.evacuate import (
    EvacuationPrinter,
    dry_run_exit_code,
    evacuation_exit_code,
    overall_line,
    overall_progress,
)
from libvirt_vmotion.errors import ExitCode
from libvirt_vmotion.evacuate.plan import Outcome, Placement
from libvirt_vmotion.evacuate.run import GuestResult

B = "qemu+tcp://hostb/system"


def ended(guest: str, outcome: Outcome, exit_code: int = 0) -> GuestResult:
    return GuestResult(guest, B, outcome, exit_code=exit_code)


MOVED = ended("g1", Outcome.MOVED)
STAYED = ended("g2", Outcome.STAYED, 3)
ABORTED = ended("g3", Outcome.FAILED, 5)
INTERRUPTED = ended("g4", Outcome.NOT_STARTED, 130)


@pytest.mark.parametrize(
    ("results", "code"),
    [
        ([MOVED, ended("g5", Outcome.MOVED)], ExitCode.OK),
        ([], ExitCode.OK),  # nothing was asked to move: the host is empty
        ([MOVED, STAYED], ExitCode.PREFLIGHT),  # the others' one code is the evacuation's
        ([ABORTED, ended("g5", Outcome.FAILED, 5)], ExitCode.ABORTED),
        ([MOVED, STAYED, ABORTED], ExitCode.ERROR),  # different failures: no one code fits
        ([MOVED, INTERRUPTED], 130),
    ],
)
def test_the_exit_code_is_0_only_when_every_guest_moved(
    results: list[GuestResult], code: int
) -> None:
    assert evacuation_exit_code(results) == code


def test_a_guest_not_moved_without_a_code_of_its_own_is_a_general_error() -> None:
    assert evacuation_exit_code([MOVED, ended("g5", Outcome.FAILED)]) == ExitCode.ERROR


def test_a_dry_run_passes_only_when_every_guest_has_a_place() -> None:
    placed = Placement("g1", B, order=1)
    assert dry_run_exit_code([placed]) == ExitCode.OK
    assert dry_run_exit_code([placed, Placement("g2", None)]) == ExitCode.PREFLIGHT


@dataclass(frozen=True)
class View:
    """The part of a ProgressView the printer reads."""

    remaining_mib: float
    eta_s: float | None

    def to_dict(self) -> dict[str, object]:
        return {"remaining_mib": self.remaining_mib}

    def line(self) -> str:
        return f"{self.remaining_mib:.0f} MiB left"


def test_a_progress_event_prints_the_guests_line_then_the_overall_line_once() -> None:
    err = io.StringIO()
    printer = EvacuationPrinter(json_out=None, err=err)
    printer.progress("g1", B, View(remaining_mib=1024.0, eta_s=4.0))
    printer.progress("g1", B, View(remaining_mib=512.0, eta_s=2.0))  # throttled: no lines
    assert err.getvalue().splitlines() == [
        f"[g1 -> {B}] 1024 MiB left",
        "overall: 0/0 guests done, 1.0 GiB left in flight, ETA 4.0 s for the running moves",
    ]


def test_a_progress_event_is_one_guest_line_and_one_overall_line_in_json() -> None:
    out, err = io.StringIO(), io.StringIO()
    printer = EvacuationPrinter(json_out=out, err=err)
    printer.progress("g1", B, View(remaining_mib=1024.0, eta_s=None))
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [d["event"] for d in docs] == ["guest-progress", "evacuation-progress"]
    assert docs[1]["gib_left"] == 1.0
    assert docs[1]["eta_s"] is None
    assert err.getvalue() == ""


def test_the_overall_progress_adds_the_running_moves_and_takes_the_latest_eta() -> None:
    views = [View(remaining_mib=512.0, eta_s=3.0), View(remaining_mib=1536.0, eta_s=7.25), "?"]
    overall = overall_progress(views, done=1, total=4)
    assert overall == {
        "event": "evacuation-progress",
        "guests_done": 1,
        "guests_total": 4,
        "gib_left": 2.0,
        "eta_s": 7.2,
    }
    assert overall_line(overall) == (
        "overall: 1/4 guests done, 2.0 GiB left in flight, ETA 7.2 s for the running moves"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["evacuate", "--to", B],
        ["maintenance", "enter", "qemu+tcp://hosta/system", "--to", B],
    ],
)
def test_parallel_counts_migrations_and_multifd_sets_the_policys_streams(
    argv: list[str],
) -> None:
    args = build_parser().parse_args([*argv, "--parallel", "3", "--multifd", "4"])
    assert args.parallel == 3
    assert policy_from_args(args).parallel_connections == 4


def test_migrate_keeps_parallel_for_the_policys_streams() -> None:
    args = build_parser().parse_args(["migrate", "web01", "--to", B, "--parallel", "4"])
    assert policy_from_args(args).parallel_connections == 4
    with pytest.raises(SystemExit):
        build_parser().parse_args(["migrate", "web01", "--to", B, "--multifd", "4"])
