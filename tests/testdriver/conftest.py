"""The CLI run as a user runs it: a real process, its exit code, stdout and stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest

Vmotion = Callable[..., subprocess.CompletedProcess[str]]


def run_vmotion(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m libvirt_vmotion ARGS`` (``env`` added to this process's environment)."""
    return subprocess.run(
        [sys.executable, "-m", "libvirt_vmotion", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def vmotion() -> Vmotion:
    """The CLI in a subprocess (see ``run_vmotion``)."""
    return run_vmotion
