"""The link probe's two agent operations over loopback (real sockets, real agents)."""

from __future__ import annotations

import socket
import threading

import pytest

from libvirt_vmotion.adapters.agent import RemoteHost
from libvirt_vmotion.adapters.linkprobe import measure_link, op_link_probe
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
