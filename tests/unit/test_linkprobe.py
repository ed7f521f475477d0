"""The link probe's two agent operations over loopback (real sockets, real agents)."""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from libvirt_vmotion.adapters.agent import AgentOperationFailed, RemoteHost
from libvirt_vmotion.adapters.linkprobe import (
    MIGRATION_PORTS,
    link_sink,
    measure_link,
    op_link_probe,
)
from libvirt_vmotion.errors import UsageError


def test_measures_loopback_through_local_agents() -> None:
    here = RemoteHost.for_uri("qemu:///system")
    got = measure_link(here, here, "127.0.0.1", seconds=0.2)
    assert got.mib_s is not None
    assert got.mib_s > 10
    assert "127.0.0.1" in got.detail


def test_no_sink_gives_a_reason_not_a_rate() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(UsageError, match="cannot reach"):
        op_link_probe({"host": "127.0.0.1", "port": port, "token": "abc", "connect_timeout_s": 0.2})


def _listener(greeting: bytes) -> tuple[socket.socket, list[bytes]]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    received: list[bytes] = []

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            if greeting:
                conn.sendall(greeting)
            conn.settimeout(5)
            try:
                while data := conn.recv(65536):
                    received.append(data)
            except OSError:
                pass

    threading.Thread(target=serve, daemon=True).start()
    return srv, received


@pytest.mark.parametrize("greeting", [b"", b"VMOTION-LINK wrongtoken\n", b"SSH-2.0-OpenSSH\n"])
def test_never_writes_into_a_listener_that_is_not_our_sink(greeting: bytes) -> None:
    """A QEMU waiting for an incoming migration says nothing first: send it nothing."""
    srv, received = _listener(greeting)
    with srv, pytest.raises(UsageError, match="not our link sink"):
        op_link_probe({"host": "127.0.0.1", "port": srv.getsockname()[1], "token": "righttoken"})
    assert received == []


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(UsageError, match="token"):
        op_link_probe({"host": "127.0.0.1", "port": 1, "token": "a b"})
    with pytest.raises(UsageError, match="port"):
        op_link_probe({"host": "127.0.0.1", "port": -1, "token": "ab"})


# ---- the sink: its own port, the migration address, only the source -------------------


def _run_sink(
    args: dict[str, object],
) -> tuple[threading.Thread, list[object], queue.Queue[Mapping[str, object]]]:
    listening: queue.Queue[Mapping[str, object]] = queue.Queue()
    out: list[object] = []

    def run() -> None:
        try:
            out.append(link_sink(args, on_listening=listening.put))
        except UsageError as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out, listening


SINK = {"bind_host": "127.0.0.1", "token": "abc123", "accept_timeout_s": 5, "max_s": 2}


def test_the_sink_says_where_it_listens_outside_libvirts_migration_ports() -> None:
    for _ in range(5):  # several picks: never one an incoming QEMU may hold
        thread, out, listening = _run_sink({**SINK, "allow_from": ["127.0.0.1"]})
        ready = listening.get(timeout=5)
        assert ready["address"] == "127.0.0.1"
        port = ready["port"]
        assert isinstance(port, int)
        assert port not in MIGRATION_PORTS
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            assert conn.recv(64) == b"VMOTION-LINK abc123\n"
            conn.sendall(b"x" * 1000)
            conn.shutdown(socket.SHUT_WR)
            conn.recv(4096)
        thread.join(5)
        assert isinstance(out[0], dict)
        assert out[0]["bytes"] == 1000


def test_a_peer_that_is_not_the_source_gets_no_token_and_the_sink_keeps_waiting() -> None:
    # Before: the sink bound every address and greeted the first peer with its token.
    thread, out, listening = _run_sink({**SINK, "allow_from": ["127.0.0.2"]})
    port = listening.get(timeout=5)["port"]
    assert isinstance(port, int)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as stranger:
        assert stranger.recv(64) == b""  # closed unanswered
    source = socket.create_connection(
        ("127.0.0.1", port), timeout=5, source_address=("127.0.0.2", 0)
    )
    with source:
        assert source.recv(64) == b"VMOTION-LINK abc123\n"
        source.shutdown(socket.SHUT_WR)
        source.recv(4096)
    thread.join(5)
    assert isinstance(out[0], dict)
    assert out[0]["refused"] == ["127.0.0.1"]


def test_the_sink_binds_the_migration_address_not_every_address() -> None:
    thread, out, listening = _run_sink(
        {**SINK, "bind_host": "127.0.0.2", "allow_from": ["127.0.0.1"], "accept_timeout_s": 0.5}
    )
    port = listening.get(timeout=5)["port"]
    assert isinstance(port, int)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    thread.join(5)
    assert isinstance(out[0], UsageError)


@dataclass
class FakeSinkCall:
    """A sink that could not listen (say, its address is not this host's)."""

    cancelled: bool = False

    def next_progress(self, timeout_s: float) -> dict[str, object] | None:
        del timeout_s
        return None

    def result(self) -> dict[str, object]:
        msg = "on hostb: cannot listen on 10.0.0.2 for the link probe: Address not available"
        raise AgentOperationFailed(msg)

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class FakeHost:
    label: str
    sink: FakeSinkCall = field(default_factory=FakeSinkCall)
    ops: list[str] = field(default_factory=list)

    def call(
        self, op: str, args: Mapping[str, object] | None = None, *, timeout_s: float = 30.0
    ) -> dict[str, object]:
        del args, timeout_s
        self.ops.append(op)
        return {"address": "10.0.0.1"} if op == "link-route" else {}

    def start(
        self, op: str, args: Mapping[str, object] | None = None, *, timeout_s: float = 30.0
    ) -> FakeSinkCall:
        del args, timeout_s
        self.ops.append(op)
        return self.sink


def test_the_probe_starts_only_once_the_sink_says_it_listens() -> None:
    # Before: the probe connected to the port anyway; an incoming QEMU holding it
    # lost its single accept to the probe, and the migration with it.
    source, dest = FakeHost("hosta"), FakeHost("hostb")
    got = measure_link(source, dest, "10.0.0.2")
    assert got.mib_s is None
    assert "cannot listen on 10.0.0.2" in got.detail
    assert source.ops == ["link-route"]  # no link-probe
    assert dest.sink.cancelled
