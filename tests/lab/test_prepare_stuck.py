"""A destination whose prepare step never returns: ended, and the guest stays home.

Seen in the lab: libvirtd's fork for an incoming QEMU deadlocked before it became
QEMU (libvirt 11.3, lock_manager = "lockd", two incoming guests at once). The
source's abort and the destination's destroy both waited on it, and so did
``vmotion``, for ever. Here hostb's QEMU wrapper hangs every incoming QEMU
before it starts (``hostconf.STALL_INCOMING_MARKER``): the same prepare step that
never returns, on purpose.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from labcli import client_argv
from libvirt_vmotion.errors import ExitCode
from libvirt_vmotion.lab import guestctl
from libvirt_vmotion.lab.constants import GUEST_NAME, HOST_A, HOST_B
from libvirt_vmotion.lab.hostconf import STALL_INCOMING_MARKER, host_paths
from libvirt_vmotion.reserve.store import ReservationStore

pytestmark = pytest.mark.lab

PREPARE_TIMEOUT_S = 5


@pytest.fixture
def hostb_stalls_incoming_qemu() -> Iterator[Path]:
    marker = host_paths(HOST_B).run / STALL_INCOMING_MARKER.relative_to("/run")
    marker.write_text("")
    try:
        yield marker
    finally:
        marker.unlink(missing_ok=True)


def reservations() -> list[object]:
    store = host_paths(HOST_B).vmotion_lib / "reservations.db"
    if not store.exists():
        return []
    return list(ReservationStore(store, host="hostb").list(now_s=time.time()))


@pytest.mark.usefixtures("guest_on_a", "hostb_stalls_incoming_qemu")
def test_a_prepare_step_that_never_returns_is_ended_and_the_guest_stays_home(
    tmp_path: Path,
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(f"prepare-timeout = {PREPARE_TIMEOUT_S}\n")
    t0 = time.monotonic()
    done = subprocess.run(
        client_argv(
            "migrate", GUEST_NAME, "--from", HOST_A.uri, "--to", HOST_B.uri,
            "--policy", str(policy),
        ),
        capture_output=True, text=True, check=False, timeout=180,
    )  # fmt: skip
    took_s = time.monotonic() - t0
    print(done.stderr)
    assert done.returncode == ExitCode.ABORTED, done.stderr
    assert "has not started the incoming guest after" in done.stderr
    killed = re.search(r"killed process (\d+) \(sleep\)", done.stderr)
    assert killed, done.stderr
    assert not Path(f"/proc/{killed.group(1)}").exists()
    assert took_s < 60  # libvirt alone would wait for the stuck QEMU for ever
    assert guestctl.find_guest() == [(HOST_A, "running")]
    deadline = time.monotonic() + 30
    while reservations():
        assert time.monotonic() < deadline, "hostb kept the reservation"
        time.sleep(0.5)
