"""The gate releases the destination reservation: patiently on success, briefly after a failure."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, cast

import pytest

from libvirt_vmotion.adapters.agent import RemoteHost
from libvirt_vmotion.cli.checks import (
    RELEASE_AFTER_FAILURE_TIMEOUT_S,
    Gate,
    GateContext,
    _release_bounded,
)
from libvirt_vmotion.errors import CutoverFailed, MigrationAborted
from libvirt_vmotion.model import MigrationRequest
from libvirt_vmotion.reserve.store import Unreleased

if TYPE_CHECKING:
    from libvirt_vmotion.adapters.virt import Hypervisor

REPLY: dict[str, object] = {"id": "r1", "expires_s": 1000.0, "longest_lease_s": 600.0}


def context_with_release(calls: list[float | None]) -> GateContext:
    """A GateContext past __enter__, whose release is a plain function that records."""

    def release(timeout_s: float | None) -> Unreleased | None:
        calls.append(timeout_s)
        return None if timeout_s is None else Unreleased("r1", "hostb", "test", None)

    request = MigrationRequest("web01", "qemu+tcp://a/system", "qemu+tcp://b/system")
    nowhere = cast("Hypervisor", None)
    ctx = GateContext(argparse.Namespace(), request, nowhere, nowhere)
    ctx.gate = Gate(release=release)
    return ctx


def test_success_releases_without_a_deadline() -> None:
    calls: list[float | None] = []
    ctx = context_with_release(calls)
    ctx.__exit__(None, None, None)
    assert calls == [None]
    assert ctx.gate.unreleased is None
    assert ctx.gate.release is None


@pytest.mark.parametrize(
    "error",
    [CutoverFailed("the guest is paused on b"), MigrationAborted("aborted"), KeyboardInterrupt()],
)
def test_failure_releases_with_a_short_deadline_and_keeps_what_it_left(
    error: BaseException,
) -> None:
    calls: list[float | None] = []
    ctx = context_with_release(calls)
    ctx.__exit__(type(error), error, None)
    assert calls == [RELEASE_AFTER_FAILURE_TIMEOUT_S]
    assert RELEASE_AFTER_FAILURE_TIMEOUT_S < 5  # below the agent's ssh ConnectTimeout
    assert ctx.gate.unreleased == Unreleased("r1", "hostb", "test", None)


def test_an_agent_that_does_not_answer_is_given_up_on_in_time(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Stands for ssh to a destination behind a cut link: no answer, ever.
    silent = RemoteHost(label="hostb", prefix=("sh", "-c", "exec sleep 30", "sh"), python="x")
    started_s = time.monotonic()
    left = _release_bounded(silent, "r1", host="hostb", reserved=REPLY, timeout_s=0.3)
    assert time.monotonic() - started_s < 5
    assert left is not None
    assert left.reason == "no answer within 0.3 s"
    assert left.ends_by_s is not None
    assert left.ends_by_s >= time.time() + 600 - 5  # the destination's longest lease from now
    err = capsys.readouterr().err
    assert err.startswith("warning: Could not release reservation r1 on hostb: no answer")
    assert "at the latest" in err


def test_an_agent_that_cannot_run_is_reported_with_its_error() -> None:
    broken = RemoteHost(label="hostb", prefix=("false",), python="x")
    left = _release_bounded(broken, "r1", host="hostb", reserved={}, timeout_s=2.0)
    assert left is not None
    assert "Could not run libvirt-vmotion on hostb" in left.reason
    assert left.ends_by_s is None  # no lease terms in the reply: no time promised
