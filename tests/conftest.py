"""Test tiers: unit (pure), testdriver (libvirt test driver), lab (root + namespaces).

The lab tier needs root and network namespaces. Outside CI it is skipped with
the reason when they are missing; under CI (``CI`` set) it fails instead, so
CI can never pass without running the lab.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def _lab_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "the lab tier needs root (namespaces, libvirtd)"
    if not Path("/proc/self/ns/net").exists():
        return "this kernel has no network namespaces"
    for tool in ("qemu-system-x86_64", "libvirtd", "virsh", "ip", "nsenter", "unshare", "gcc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (run scripts/install-system.sh)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _lab_unavailable_reason()
    if reason is None:
        return
    for item in items:
        if "lab" in item.keywords:
            if os.environ.get("CI"):
                item.add_marker(pytest.mark.usefixtures("_fail_lab_in_ci"))
            else:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def _fail_lab_in_ci() -> None:
    reason = _lab_unavailable_reason()
    pytest.fail(f"lab tier cannot run in CI: {reason}")


@pytest.fixture(autouse=True)
def _private_history(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep the migration history (``history.py``) of tests out of /var/lib."""
    monkeypatch.setenv("VMOTION_HISTORY", str(tmp_path_factory.mktemp("history") / "history.db"))
