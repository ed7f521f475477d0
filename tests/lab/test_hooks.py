"""Our libvirt qemu hook on the lab hosts: a plain ``virsh migrate`` meets it too.

The lab installs the hook on both hosts before their libvirtd starts, the way
``python -m libvirt_vmotion hooks install`` does on a real host.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from libvirt_vmotion.lab import guestctl, topology
from libvirt_vmotion.lab.constants import GUEST_NAME, HOST_A, HOST_B, HOSTS
from libvirt_vmotion.lab.hostconf import host_paths
from libvirt_vmotion.lab.image import GuestImage
from libvirt_vmotion.reserve import hook as hook_module
from libvirt_vmotion.reserve.hook import shim_python as hooks_shim_python
from libvirt_vmotion.reserve.store import ReservationStore

pytestmark = pytest.mark.lab

CAPACITY = host_paths(HOST_B).vmotion_etc / "capacity.toml"


def virsh_migrate() -> subprocess.CompletedProcess[str]:
    """Plain libvirt, no vmotion: what an operator or another tool would run."""
    return subprocess.run(
        guestctl.client_command(
            ["virsh", "-c", HOST_A.uri, "migrate", "--live", "--p2p", "--persistent",
             "--undefinesource", GUEST_NAME, HOST_B.uri]
        ),
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip


def hook_log() -> str:
    path = host_paths(HOST_B).log / "vmotion-hook.log"
    return path.read_text() if path.exists() else ""


@pytest.fixture
def hostb_small() -> Iterator[None]:
    CAPACITY.write_text("memory_limit_mib = 600\n")
    yield
    CAPACITY.unlink(missing_ok=True)


@pytest.mark.usefixtures("lab")
def test_hook_is_installed_on_both_hosts() -> None:
    for host in HOSTS:
        out = topology.run_on_host(
            host, [sys.executable, "-m", "libvirt_vmotion", "hooks", "status"]
        ).stdout
        assert out.startswith("installed: /etc/libvirt/hooks/qemu.d/50-libvirt-vmotion"), out
        assert f"-> {Path(sys.executable).parent}/python" in out  # this venv, absolute
        assert "-I (imports libvirt_vmotion.reserve.hook, " in out  # and it has the package


@pytest.mark.usefixtures("guest_on_a", "hostb_small")
def test_plain_virsh_migrate_to_a_destination_without_room_is_vetoed_by_our_hook() -> None:
    result = virsh_migrate()
    print(result.stderr)
    assert result.returncode != 0
    assert "libvirt-vmotion on hostb refused the migration of 'vmo-guest'" in result.stderr
    assert "600 MiB allowed for incoming guests" in result.stderr
    assert "needs 768 MiB" in result.stderr
    assert "Hint: Free memory on hostb" in result.stderr
    assert guestctl.find_guest() == [(HOST_A, "running")]
    assert "veto migrate vmo-guest" in hook_log()


@pytest.mark.usefixtures("guest_on_a")
def test_plain_virsh_migrate_with_room_reserves_and_releases() -> None:
    before = len(hook_log())
    result = virsh_migrate()
    assert result.returncode == 0, result.stderr
    assert guestctl.find_guest() == [(HOST_B, "running")]
    log = hook_log()[before:]
    assert "incoming migrate vmo-guest: reservation hook-" in log
    assert "started vmo-guest: committed and released" in log
    store = ReservationStore(host_paths(HOST_B).vmotion_lib / "reservations.db")
    assert store.list(now_s=time.time()) == []


def test_hooks_command_installs_and_uninstalls(tmp_path: Path) -> None:
    def hooks(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "libvirt_vmotion", "hooks", *args, "--etc", str(tmp_path)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip

    assert hooks("status").returncode == 1
    assert hooks("install").returncode == 0
    shim = tmp_path / "hooks" / "qemu.d" / "50-libvirt-vmotion"
    assert hooks_shim_python(shim.read_text()) == sys.executable
    assert hooks("status").returncode == 0
    assert hooks("uninstall").returncode == 0
    assert not shim.exists()


@pytest.fixture
def hostb_shim_on_a_removable_interpreter(tmp_path: Path) -> Iterator[Path]:
    """hostb's hook shim pointing at an interpreter of its own (a venv that can go away).

    Yields that interpreter's path; hostb's real shim is put back afterwards.
    """
    shim = hook_module.installed_path(host_paths(HOST_B).etc)
    original = shim.read_text()
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    shim.write_text(hook_module.build_shim(str(python)))
    try:
        yield python
    finally:
        guestctl.remove_guest()
        shim.write_text(original)


@pytest.mark.usefixtures("lab")
@pytest.mark.parametrize("how", ["interpreter removed", "package removed"])
def test_a_guest_starts_when_the_hook_lost_its_interpreter(
    hostb_shim_on_a_removable_interpreter: Path, guest_image: GuestImage, how: str
) -> None:
    python = hostb_shim_on_a_removable_interpreter
    status = topology.run_on_host(
        HOST_B, [sys.executable, "-m", "libvirt_vmotion", "hooks", "status"]
    ).stdout
    assert f"-> {python} -I (imports libvirt_vmotion.reserve.hook, " in status
    if how == "interpreter removed":
        python.rename(python.with_name("python.removed"))
    else:  # an interpreter without site-packages: the venv's package is gone
        python.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    before = len(hook_log())
    guestctl.start_guest(HOST_B, guest_image, memory_mib=256, wss_mib=16, rate_mib_s=5)
    assert guestctl.find_guest() == [(HOST_B, "running")]
    skipped = [line for line in hook_log()[before:].splitlines() if "hook skipped" in line]
    assert any("(vmo-guest started begin)" in line for line in skipped), skipped
    assert not any("(vmo-guest prepare begin)" in line for line in skipped), skipped  # no Python
    reason = "is missing" if how == "interpreter removed" else "cannot import"
    assert all(reason in line for line in skipped), skipped
