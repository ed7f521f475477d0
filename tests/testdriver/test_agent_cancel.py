"""A started agent call ends when it is cancelled or its client dies (the real agent).

The destination's announcer is an agent call that waits for the guest to resume
there. Before, it ran as a plain subprocess: a failed migration or a dead
controller left it waiting an hour with a libvirt connection open, to fire stale
FDB claims and GARPs on a later retry. Here the real agent runs ``announce``
against the libvirt test driver for a guest that never comes, as a local
subprocess (the same argv ssh carries to a remote host).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from libvirt_vmotion.adapters.agent import AgentUnavailable, RemoteHost

DRIVER = Path(__file__).parent / "data" / "driver.xml"
WAITING = {
    "domain": "never-arrives", "libvirt_uri": f"test://{DRIVER}", "timeout_s": 600,
    "nics": [], "claim_fdb": False,
}  # fmt: skip
LOCAL = RemoteHost(label="localhost", prefix=(), python=sys.executable)


def gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie nobody reaped counts as exited)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def wait_until_gone(pid: int, within_s: float = 30.0) -> bool:
    end = time.monotonic() + within_s
    while time.monotonic() < end:
        if gone(pid):
            return True
        time.sleep(0.05)
    return gone(pid)


def test_a_cancelled_call_ends_the_agent_and_is_reaped() -> None:
    call = LOCAL.start("announce", WAITING, timeout_s=600)
    time.sleep(1.0)  # let it get into its wait
    assert call.proc.poll() is None
    call.cancel()
    assert call.proc.returncode is not None  # reaped, not left behind
    with pytest.raises(AgentUnavailable, match="cancelled"):
        call.result()


def test_the_agent_ends_by_itself_when_its_client_dies() -> None:
    # A controller that starts the announcer and is then SIGKILLed (no cleanup runs).
    script = (
        "import sys, json, time\n"
        "from libvirt_vmotion.adapters.agent import RemoteHost\n"
        "host = RemoteHost(label='localhost', prefix=(), python=sys.executable)\n"
        f"call = host.start('announce', json.loads({json.dumps(json.dumps(WAITING))}), "
        "timeout_s=600)\n"
        "print(call.proc.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    controller = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert controller.stdout is not None
    agent_pid = int(controller.stdout.readline())
    time.sleep(1.0)
    assert not gone(agent_pid)
    controller.send_signal(signal.SIGKILL)
    controller.wait()
    # Its stdin closed with the controller: it stops waiting (before: 600 s here, 3600 by
    # default).
    assert wait_until_gone(agent_pid)


def test_closing_the_call_reaches_the_far_side_and_a_deaf_one_is_killed(tmp_path: Path) -> None:
    # Stand-ins for ssh: one passes the end of stdin on (as ssh does to the remote
    # command), one ignores it and must be killed with its process group.
    marker = tmp_path / "eof"
    hears = RemoteHost("hosta", ("sh", "-c", f"cat >/dev/null; echo eof > {marker}", "sh"), "x")
    call = hears.start("announce", WAITING, timeout_s=600)
    call.cancel()
    assert marker.read_text() == "eof\n"
    deaf = RemoteHost("hostb", ("sh", "-c", "trap '' INT; exec sleep 600", "sh"), "x")
    call = deaf.start("announce", WAITING, timeout_s=600)
    pid = call.proc.pid
    call.cancel(grace_s=0.5)
    assert gone(pid)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # nothing of its group is left


def test_a_call_past_its_deadline_is_cancelled_not_left_running() -> None:
    call = LOCAL.start("announce", WAITING, timeout_s=1.0)
    with pytest.raises(AgentUnavailable, match="deadline"):
        call.result()
    assert call.proc.returncode is not None


def test_a_started_call_returns_the_reply_like_call() -> None:
    assert LOCAL.start("hello", {}).result()["version"]
