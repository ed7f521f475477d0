"""The shipped man page and completions are what the parser generates today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from libvirt_vmotion.cli.docs import FILES, generated, shipped


@pytest.mark.parametrize("kind", sorted(FILES))
def test_shipped_file_is_up_to_date(kind: str) -> None:
    regenerate = "run: .venv/bin/python -m libvirt_vmotion.cli.docs src/libvirt_vmotion/share"
    assert shipped(kind) == generated()[FILES[kind]], regenerate


def test_man_page_names_every_command_and_the_exit_codes() -> None:
    page = shipped("man")
    for command in ("migrate", "check", "netcheck", "history", "policy", "agent", "completion"):
        assert f"\\fI\\,{command}\\/" in page or f"vmotion {command}" in page, command
    assert "exit codes" in page
    assert "\\-\\-max\\-downtime" in page


def test_bash_completion_completes_commands_and_options() -> None:
    script = shipped("bash")
    assert "migrate" in script
    assert "--max-downtime" in script
    probe = f"{script}\ndeclare -F _shtab_vmotion && echo loaded"
    result = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "loaded" in result.stdout


def test_completion_command_prints_the_shipped_script() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "libvirt_vmotion", "completion", "zsh"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0
    assert result.stdout == shipped("zsh")


INSTALLED_AT = {
    "man": "/usr/local/share/man/man1/vmotion.1",
    "bash": "/usr/share/bash-completion/completions/vmotion",
    "zsh": "/usr/local/share/zsh/site-functions/_vmotion",
}


@pytest.mark.parametrize("kind", sorted(FILES))
def test_run_installs_every_shipped_file_where_its_tool_looks(kind: str) -> None:
    run = (Path(__file__).parents[2] / "run").read_text()
    line = f"install -Dm644 src/libvirt_vmotion/share/{FILES[kind]} {INSTALLED_AT[kind]}"
    assert any(row.strip() == line for row in run.splitlines()), line
