"""vagrant/box.py's pure part: the recipe, its hash and what the box is made of."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BOX_PY = Path(__file__).resolve().parents[2] / "vagrant" / "box.py"
KEY = "ssh-rsa AAAAB3NzaC1yc2EAAAABIwAAAQEA6NF8iallvQVp22WDkTkyrtvp9eWW vagrant insecure public key"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vagrant_box", BOX_PY)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["vagrant_box"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


box = _load()


def test_hash_is_stable_and_short() -> None:
    recipe = box.default_recipe(KEY)
    assert box.recipe_hash(recipe) == box.recipe_hash(box.default_recipe(KEY + "\n"))
    assert len(box.recipe_hash(recipe)) == box.HASH_LEN
    assert box.box_name(box.recipe_hash(recipe)).startswith("vmotion-bookworm-")


@pytest.mark.parametrize(
    "change",
    [
        {"packages": ("systemd-sysv",)},
        {"backports": ("qemu-system-x86",)},
        {"trixie": ()},
        {"insecure_key": "ssh-ed25519 AAAA other"},
        {"disk_gib": 9},
        {"suite": "trixie"},
    ],
)
def test_hash_changes_with_every_ingredient(change: dict[str, object]) -> None:
    recipe = box.default_recipe(KEY)
    assert box.recipe_hash(dataclasses.replace(recipe, **change)) != box.recipe_hash(recipe)


def test_box_has_what_offline_provisioning_needs() -> None:
    recipe = box.default_recipe(KEY)
    # QEMU >= 10 and libvirt 11.3 from backports, seabios 1.16.3 from trixie (LAB-NOTES).
    assert {"qemu-system-x86", "libvirt-daemon-system"} <= set(recipe.backports)
    assert recipe.trixie == ("seabios",)
    assert {"openssh-server", "sudo", "rsync", "python3-venv", "systemd-sysv"} <= set(
        recipe.packages
    )
    assert any(p.startswith("linux-image-") for p in recipe.packages)
    script = box.customize_script(recipe)
    assert "-t bookworm-backports qemu-system-x86" in script
    assert "seabios/trixie" in script


def test_pins_keep_trixie_to_the_named_packages() -> None:
    prefs = box.apt_preferences(box.default_recipe(KEY))
    blocks = [b.splitlines() for b in prefs.strip().split("\n\n")]
    assert blocks == [
        ["Package: *", "Pin: release n=trixie", "Pin-Priority: 100"],
        ["Package: seabios", "Pin: release n=trixie", "Pin-Priority: 990"],
    ]
    assert f"deb {box.MIRROR} trixie main" in box.sources(box.default_recipe(KEY))


def test_files_first_login_and_boot() -> None:
    recipe = box.default_recipe(KEY)
    files = box.box_files(recipe)
    mode, keys = files["/home/vagrant/.ssh/authorized_keys"]
    assert (mode, keys) == (0o600, KEY + "\n")
    assert files["/etc/sudoers.d/vagrant"][0] == 0o440
    assert "NOPASSWD: ALL" in files["/etc/sudoers.d/vagrant"][1]
    assert files["/etc/fstab"][1].split()[:2] == ["/dev/vda", "/"]
    assert "root=/dev/vda" in box.KERNEL_CMDLINE.split()
    assert "DHCP=ipv4" in files["/etc/systemd/network/90-vagrant-dhcp.network"][1]


def test_files_script_writes_every_file_and_the_marker() -> None:
    recipe = box.default_recipe(KEY)
    script = box.files_script(recipe)
    for path in [*box.box_files(recipe), box.MARKER]:
        assert f'cat > "$root{path}"' in script
    assert f"recipe={box.recipe_hash(recipe)}" in script
    done = subprocess.run(["sh", "-n"], input=script, text=True, check=False)
    assert done.returncode == 0
    done = subprocess.run(["sh", "-n"], input=box.customize_script(recipe), text=True, check=False)
    assert done.returncode == 0


def test_files_script_writes_exact_content(tmp_path: Path) -> None:
    recipe = box.default_recipe(KEY)
    script = box.files_script(recipe).replace('chroot "$root" chown', "true")
    subprocess.run(["sh", "-c", script, "sh", str(tmp_path)], check=True)
    for path, (mode, content) in box.box_files(recipe).items():
        written = tmp_path / path.lstrip("/")
        assert written.read_text() == content
        assert written.stat().st_mode & 0o777 == mode


def test_metadata_and_box_vagrantfile() -> None:
    recipe = box.default_recipe(KEY)
    meta = json.loads(json.dumps(box.box_metadata(recipe)))
    assert meta == {"provider": "libvirt", "format": "qcow2", "virtual_size": recipe.disk_gib}
    text = box.box_vagrantfile()
    assert 'File.expand_path("vmlinuz", __dir__)' in text
    assert 'File.expand_path("initrd.img", __dir__)' in text
    assert box.KERNEL_CMDLINE in text
