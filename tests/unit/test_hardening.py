"""Trust-boundary findings of issue 12, each reproduced here against the real thing.

Every child Python we start runs isolated from the caller's working directory
and environment; what crosses from a URI, the domain XML, an agent's reply or
a history file is validated before it is used.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from libvirt_vmotion.adapters.agent import RemoteHost
from libvirt_vmotion.lab import guestctl
from libvirt_vmotion.reserve import hook as hooks


@pytest.fixture
def planted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A writable directory holding a fake ``libvirt_vmotion`` package; we run from it.

    The fake package records that it ran (the marker file), as an attacker's
    code would run as root. Returns the marker's path.
    """
    marker = tmp_path / "PLANTED-CODE-RAN"
    fake = tmp_path / "libvirt_vmotion"
    fake.mkdir()
    code = f"open({str(marker)!r}, 'w').write('ran')\n"
    for name in ("__init__.py", "__main__.py", "hooks.py"):
        (fake / name).write_text(code)
    monkeypatch.chdir(tmp_path)
    return marker


def test_local_agent_ignores_a_package_planted_in_the_working_directory(planted: Path) -> None:
    reply = RemoteHost.for_uri("qemu:///system").call("hello")
    assert reply["version"]  # the real agent answered
    assert not planted.exists()


def test_remote_agent_command_line_ignores_the_remote_working_directory(
    planted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An ssh that runs the remote command line here, in the planted directory (a
    # remote login whose home directory someone else can write to).
    fake_ssh = tmp_path / "fake-ssh"
    fake_ssh.write_text('#!/bin/sh\nfor last; do :; done\nexec /bin/sh -c "$last"\n')
    fake_ssh.chmod(0o755)
    monkeypatch.setenv("VMOTION_AGENT_SSH", str(fake_ssh))
    monkeypatch.setenv("VMOTION_AGENT_PYTHON", sys.executable)
    reply = RemoteHost.for_uri("qemu+tcp://kvm2/system").call("hello")
    assert reply["version"]
    assert not planted.exists()


def run_shim(shim: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(shim), *args], input=stdin, capture_output=True, text=True, check=False, timeout=60
    )


def test_hook_shim_ignores_a_package_planted_in_the_working_directory(
    planted: Path, tmp_path: Path
) -> None:
    shim = hooks.install(etc=tmp_path / "etc", python=sys.executable)
    result = run_shim(shim, "web01", "prepare", "begin", "-")
    assert result.returncode == 0, result.stderr
    assert not planted.exists()


def test_lab_and_bench_children_ignore_a_package_planted_in_the_working_directory(
    planted: Path,
) -> None:
    result = subprocess.run(
        guestctl.self_command("--help"), capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "migrate" in result.stdout
    assert not planted.exists()
