"""Destination reservations in the namespace lab: racing migrations, a killed controller.

(A completed migration releasing its reservation: test_preflight_forecast.py.)

hostb's reservation store is the SQLite file its agent and hook use, at
/var/lib/libvirt-vmotion/reservations.db inside hostb (STATE_DIR/hostb/vmotion-lib
from here); its limits come from hostb's /etc/libvirt-vmotion/capacity.toml.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from labcli import client_argv
from libvirt_vmotion.adapters.virt import Hypervisor
from libvirt_vmotion.errors import DomainNotFound
from libvirt_vmotion.lab import guestctl
from libvirt_vmotion.lab.constants import GUEST_NAME, HOST_A, HOST_B
from libvirt_vmotion.lab.guestdef import LabGuestSpec, build_domain_xml
from libvirt_vmotion.lab.hostconf import host_paths
from libvirt_vmotion.lab.image import GuestImage, kernel_cmdline
from libvirt_vmotion.reserve.store import Reservation, ReservationStore, State

pytestmark = pytest.mark.lab

SECOND = "pre-two"
STORE = host_paths(HOST_B).vmotion_lib / "reservations.db"
CAPACITY = host_paths(HOST_B).vmotion_etc / "capacity.toml"


def migrate_argv(domain: str, *extra: str) -> list[str]:
    return client_argv(
        "migrate", domain, "--from", HOST_A.uri, "--to", HOST_B.uri, "--json", *extra
    )


def reservations() -> list[Reservation]:
    """hostb's reservations, read with the store's own code (expired rows go first)."""
    if not STORE.exists():
        return []
    return ReservationStore(STORE, host="hostb").list(now_s=time.time())


def placement() -> list[tuple[object, str]] | None:
    """Where the guest runs; None while libvirt is mid-way undefining it on the source."""
    try:
        return list(guestctl.find_guest())
    except DomainNotFound:
        return None


def hook_log() -> str:
    path = host_paths(HOST_B).log / "vmotion-hook.log"
    return path.read_text() if path.exists() else ""


@pytest.fixture
def capacity() -> Iterator[Path]:
    yield CAPACITY
    CAPACITY.unlink(missing_ok=True)


@pytest.fixture
def second_guest(guest_on_a: None, guest_image: GuestImage) -> Iterator[str]:
    spec = LabGuestSpec(
        kernel=guest_image.kernel,
        initrd=guest_image.initrd,
        cmdline=kernel_cmdline(addr_cidr="10.77.0.53/24", wss_mib=16, rate_mib_s=2, mode="paced"),
        memory_mib=512,
        name=SECOND,
        mac="52:54:00:77:00:53",
    )
    with Hypervisor.open(guestctl.local_uri(HOST_A)) as hv:
        hv.define_and_start(build_domain_xml(spec))
    yield SECOND
    guestctl.remove_guest(SECOND)


def test_two_migrations_racing_for_the_last_capacity_exactly_one_proceeds(
    second_guest: str, capacity: Path
) -> None:
    # Each guest needs 512 MiB + 256 MiB QEMU overhead; hostb offers 1100 MiB.
    capacity.write_text("memory_limit_mib = 1100\n")
    log_before = hook_log()
    procs = {
        name: subprocess.Popen(
            migrate_argv(name, "--bandwidth", "100"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in (GUEST_NAME, second_guest)
    }
    results = {name: (p.wait(timeout=180), *p.communicate()) for name, p in procs.items()}
    codes = sorted(code for code, _, _ in results.values())
    print({name: (code, err[-600:]) for name, (code, _, err) in results.items()})
    assert codes[0] == 0
    assert codes[1] in {3, 4}  # refused at reservation (4), or by pre-flight seeing it (3)
    winner = next(n for n, (code, _, _) in results.items() if code == 0)
    loser = next(n for n in results if n != winner)
    _, _, err = results[loser]
    assert err.startswith("error: ") or "\nerror: " in err
    assert "hostb" in err
    assert "MiB" in err
    assert "hint: " in err
    assert "Traceback" not in err
    placement = {name: guestctl.find_guest(name) for name in results}
    assert placement[winner] == [(HOST_B, "running")]
    assert placement[loser] == [(HOST_A, "running")]  # refused before any transfer
    new_log = hook_log()[len(log_before) :]
    assert f"incoming migrate {winner}" in new_log
    assert f"incoming migrate {loser}" not in new_log  # hostb never saw it begin
    assert reservations() == []


@pytest.mark.usefixtures("guest_on_a")
def test_killed_controller_mid_migration_leaks_no_reservation(capacity: Path) -> None:
    capacity.write_text("commit_grace_s = 3\n")
    guestctl.run_in_client(guestctl.self_command("lab", "guest", "set", "rate", "2"))
    proc = subprocess.Popen(
        migrate_argv(
            GUEST_NAME,
            "--bandwidth", "20", "--initial-downtime", "500", "--max-downtime", "500",
            "--no-throttle", "--no-postcopy",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    seen: list[Reservation] = []
    while time.monotonic() < deadline and not seen:
        seen = [r for r in reservations() if r.state is State.INCOMING]
        time.sleep(0.1)
    assert seen, "hostb's hook never marked the reservation incoming"
    assert seen[0].owner.startswith("vmotion pid")
    os.killpg(proc.pid, signal.SIGKILL)  # the controller dies mid-transfer
    proc.wait(timeout=10)
    # The source host's guard sees its controller gone and aborts the pre-copy job
    # (test_controller_death.py); hostb's incoming QEMU stops and the hook releases
    # the reservation there: no owner is left, and the guest is home.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (reservations() or placement() != [(HOST_A, "running")]):
        time.sleep(0.2)
    assert guestctl.find_guest() == [(HOST_A, "running")]
    assert reservations() == []
    assert f"stopped {GUEST_NAME}: released its reservation" in hook_log()
