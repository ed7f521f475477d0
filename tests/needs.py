"""Marks for tests that need a system tool: skipped with the reason outside CI, run in CI.

``./run test`` installs every tool these tests use (qemu-utils, vagrant), so under CI a
missing one is a broken set-up: the test runs and fails loudly, it never passes by
being skipped (as for the lab tier, ``tests/conftest.py``).
"""

from __future__ import annotations

import os
import shutil

import pytest


def needs_tool(tool: str, *, installed_by: str) -> pytest.MarkDecorator:
    """Skip outside CI when ``tool`` is not on PATH; under CI never skip."""
    missing = shutil.which(tool) is None and not os.environ.get("CI")
    return pytest.mark.skipif(missing, reason=f"{tool} is not installed ({installed_by})")
