"""vagrant/Vagrantfile as Vagrant and vagrant-libvirt read it (`vagrant validate`, offline).

Runs on a copy of the Vagrantfile in a scratch directory, so the lab keys it makes
and Vagrant's state stay out of the checkout. Needs no box, no libvirtd and no VM.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from needs import needs_tool

VAGRANTFILE = Path(__file__).resolve().parents[2] / "vagrant" / "Vagrantfile"

pytestmark = needs_tool("vagrant", installed_by="scripts/install-vagrant.sh; ./run test runs it")


def _validate(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    lab = tmp_path / "repo" / "vagrant"
    lab.mkdir(parents=True, exist_ok=True)
    shutil.copy(VAGRANTFILE, lab / "Vagrantfile")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("VMOTION_", "VAGRANT_"))}
    full_env |= {"VAGRANT_CWD": str(lab), "VAGRANT_HOME": str(tmp_path / "vagrant.d")} | env
    return subprocess.run(
        ["vagrant", "validate"], env=full_env, capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize("driver", ["qemu", "kvm"])
def test_validates_with_the_lab_settings(tmp_path: Path, driver: str) -> None:
    (tmp_path / "guest").mkdir()  # the guest image directory must exist: it is synced
    done = _validate(
        tmp_path,
        VMOTION_VAGRANT_BOX="vmotion-bookworm-000000000000",
        VMOTION_VAGRANT_DRIVER=driver,
        VMOTION_VAGRANT_SOCKET=str(tmp_path / "libvirt-sock"),
        VMOTION_VAGRANT_CONSOLE_DIR=str(tmp_path / "console"),
        VMOTION_GUEST_IMAGE_DIR=str(tmp_path / "guest"),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "validated successfully" in done.stdout
    keys = tmp_path / "repo" / "vagrant" / ".lab-ssh"
    assert sorted(p.name for p in keys.iterdir()) == [
        "host-kvm1", "host-kvm1.pub", "host-kvm2", "host-kvm2.pub", "root", "root.pub",
    ]  # fmt: skip


def test_without_a_box_says_how_to_get_one(tmp_path: Path) -> None:
    done = _validate(tmp_path)
    assert done.returncode != 0
    assert "error: VMOTION_VAGRANT_BOX is not set" in done.stderr
    assert "hint: use ./run vagrant up" in done.stderr


def test_rejects_an_unknown_driver(tmp_path: Path) -> None:
    done = _validate(tmp_path, VMOTION_VAGRANT_BOX="b", VMOTION_VAGRANT_DRIVER="xen")
    assert done.returncode != 0
    assert "error: VMOTION_VAGRANT_DRIVER=xen is neither kvm nor qemu" in done.stderr
