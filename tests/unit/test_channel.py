"""One agent process per host for a whole command (adapters.channel), against real processes.

The local agent is this package run as a subprocess; the "remote" ones are shell
scripts standing in for ssh to a host whose far end is not ours.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from libvirt_vmotion.adapters import channel
from libvirt_vmotion.adapters.agent import AgentUnavailable, RemoteHost


@pytest.fixture(autouse=True)
def fresh_pool() -> Iterator[None]:
    channel.POOL.close_all()
    channel.POOL.refused.clear()
    yield
    channel.POOL.close_all()
    channel.POOL.refused.clear()


def far_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> RemoteHost:
    path = tmp_path / "far-end"
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)
    monkeypatch.setenv("VMOTION_AGENT_SSH", str(path))
    return RemoteHost.for_uri("qemu+tcp://kvm2/system")


def test_calls_share_one_agent_process_and_run_side_by_side() -> None:
    host = RemoteHost.for_uri("qemu:///system")
    assert host.call("hello")["version"]
    first = next(iter(channel.POOL.channels.values())).proc.pid
    replies: list[dict[str, object]] = []
    threads = [
        threading.Thread(target=lambda: replies.append(host.call("hello"))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(replies) == 8
    assert [c.proc.pid for c in channel.POOL.channels.values()] == [first]
    assert next(iter(channel.POOL.channels.values())).answered == 10  # and the handshake


def test_an_operation_failure_comes_back_as_before_and_the_channel_stays() -> None:
    host = RemoteHost.for_uri("qemu:///system")
    with pytest.raises(Exception, match="unknown agent operation 'nosuch'"):
        host.call("nosuch")
    assert host.call("hello")["version"]
    assert len(channel.POOL.channels) == 1


def test_closing_the_channel_ends_the_agent() -> None:
    host = RemoteHost.for_uri("qemu:///system")
    host.call("hello")
    chan = next(iter(channel.POOL.channels.values()))
    channel.POOL.close_all()
    assert chan.proc.returncode is not None


def test_an_agent_without_channels_is_asked_one_process_per_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An older agent: answers any operation once, "serve" included, as a one-shot reply.
    host = far_end(
        tmp_path, monkeypatch, """read line; echo '{"ok": true, "result": {"hostname": "old"}}'"""
    )
    assert host.call("hello") == {"hostname": "old"}
    assert host.call("hello") == {"hostname": "old"}
    assert len(channel.POOL.refused) == 1  # not tried again


def test_a_channel_that_dies_with_a_request_in_flight_does_not_run_it_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs"
    # Answers the handshake and the first request as a channel should, then dies.
    host = far_end(
        tmp_path,
        monkeypatch,
        f"""read line; echo '{{"id": 0, "ok": true, "result": {{}}}}'
read line; echo '{{"id": 1, "ok": true, "result": {{}}}}'
read line; echo run >> {runs}; exit 1""",
    )
    assert host.call("hello") == {}
    with pytest.raises(AgentUnavailable, match="it ended"):
        host.call("release")
    assert runs.read_text() == "run\n"  # once: the one-shot fallback did not run it again


def test_an_agent_from_before_channels_is_not_waited_on_past_the_handshake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As the agent before channels: it reads its stdin to the end, then answers once.
    host = far_end(
        tmp_path,
        monkeypatch,
        """cat > /dev/null
case "$*" in
  *"agent serve"*) echo '{"ok": false, "error": "unknown agent operation serve"}' ;;
  *) echo '{"ok": true, "result": {"hostname": "old"}}' ;;
esac""",
    )
    started = time.monotonic()
    assert host.call("hello", timeout_s=1.0) == {"hostname": "old"}
    assert time.monotonic() - started < 5
    assert len(channel.POOL.refused) == 1


@pytest.mark.parametrize(
    "reply", ['{"id": true, "ok": 1}', "[" * 100_000 + "]" * 100_000, '{"id": "0", "ok": true}']
)
def test_a_reply_that_is_not_ours_breaks_the_channel_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reply: str
) -> None:
    lines = tmp_path / "reply"
    lines.write_text(reply + "\n")
    host = far_end(
        tmp_path,
        monkeypatch,
        f"""read line; cat {lines}; case "$*" in *"agent serve"*) sleep 30 ;; esac""",
    )
    started = time.monotonic()
    with contextlib.suppress(AgentUnavailable):  # the one-shot fallback judges it as before
        host.call("hello", timeout_s=20.0)
    assert time.monotonic() - started < 5  # not the call's 20 s: the reader said so at once
