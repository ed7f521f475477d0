"""``vmotion evacuate``'s pure pieces: the exit code chosen from the guests' results."""

from __future__ import annotations

import pytest

from libvirt_vmotion.cli.evacuate import dry_run_exit_code, evacuation_exit_code
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
