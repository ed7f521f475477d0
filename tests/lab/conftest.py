"""Fixtures of the lab tier: the namespace lab and the test guest, for real."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from libvirt_vmotion.lab import guestctl, topology
from libvirt_vmotion.lab.constants import HOST_A, STATE_DIR
from libvirt_vmotion.lab.image import GuestImage, ensure_guest_image


@pytest.fixture(scope="session")
def guest_image() -> GuestImage:
    return ensure_guest_image()


@pytest.fixture(scope="module")
def lab() -> Iterator[None]:
    """The two-host lab; taken down afterwards only if this module brought it up.

    A lab somebody was already using (after ``./run demo``, say) is left as found.
    """
    was_up = topology.status().healthy
    topology.up()
    yield
    if not was_up:
        topology.down()


@pytest.fixture
def guest_on_a(lab: None, guest_image: GuestImage) -> Iterator[None]:
    """A fresh lab guest on hosta with the workload ready (removed afterwards)."""
    guestctl.start_guest(HOST_A, guest_image, memory_mib=512, wss_mib=64, rate_mib_s=20)
    guestctl.wait_for_workload()
    yield
    guestctl.remove_guest()


@pytest.fixture(autouse=True)
def _empty_migration_history() -> None:
    """Every lab test starts with an empty migration history (``history.py``).

    What earlier tests taught the lab (achieved rates, the unthrottled switchover
    rate) changes the forecast and the controller's decisions; a test that wants
    learning migrates within itself (``test_preflight_forecast``).
    """
    (STATE_DIR / "history.db").unlink(missing_ok=True)
