"""Measure the migration link: source host -> destination host, one TCP stream.

I/O module. Without a bandwidth cap the forecast needs the speed of the path
the migration stream will take, which is neither the controller's path nor
anything libvirt reports. Two agent operations measure it where it is:

- ``link-sink`` (on the destination): listens on the given port, greets the
  one connection it accepts with ``VMOTION-LINK <token>``, counts what arrives
  until end of stream (or ``max_s``), and answers with the count.
- ``link-probe`` (on the source): connects (retrying while the sink starts),
  checks the greeting before it sends a byte, streams zeros for ``seconds``,
  closes its side and reads the sink's count.

The greeting guards against talking to the wrong listener: a QEMU waiting for
an incoming migration on that port sends nothing first, so the probe gives up
without writing into it. The port is one of libvirt's migration ports
(49152-49215), which firewalls between hypervisors already let through.

``measure_link`` (controller side) runs both through the agents and returns
the receiver's rate.
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Final

from libvirt_vmotion.adapters.agent import AgentOperationFailed, AgentUnavailable, RemoteHost
from libvirt_vmotion.errors import UsageError
from libvirt_vmotion.model import MIB

MIGRATION_PORTS: Final = range(49152, 49216)
"""libvirt's default migration port range (qemu.conf migration_port_min/max)."""
GREETING: Final = b"VMOTION-LINK "
CHUNK: Final = 1 << 20
DEFAULT_SECONDS: Final = 1.0


def _number(args: Mapping[str, object], key: str, default: float) -> float:
    value = args.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        msg = f"{key}={value!r}: must be a positive number"
        raise UsageError(msg, hint="This is an internal call; report it as a bug.")
    return float(value)


def _token(args: Mapping[str, object]) -> bytes:
    token = args.get("token")
    if not isinstance(token, str) or not token.isalnum():
        msg = f"token={token!r}: must be an alphanumeric string"
        raise UsageError(msg, hint="This is an internal call; report it as a bug.")
    return token.encode()


def op_link_sink(args: Mapping[str, object]) -> dict[str, object]:
    """Agent op (destination): receive one probe stream on ``port`` and count it."""
    port = int(_number(args, "port", 0))
    token = _token(args)
    accept_timeout_s = _number(args, "accept_timeout_s", 10.0)
    max_s = _number(args, "max_s", 5.0)
    # Every address of this host, IPv4 and IPv6 alike: the source dials whatever
    # the destination URI names.
    dual = socket.has_dualstack_ipv6()
    try:
        srv = socket.create_server(
            ("", port),
            family=socket.AF_INET6 if dual else socket.AF_INET,
            backlog=1,
            reuse_port=False,
            dualstack_ipv6=dual,
        )
    except OSError as exc:
        msg = f"cannot listen on port {port} for the link probe: {exc.strerror}"
        raise UsageError(msg, hint="Another process uses that port; try again.") from exc
    with srv:
        srv.settimeout(accept_timeout_s)
        try:
            conn, _peer = srv.accept()
        except TimeoutError as exc:
            msg = f"no link probe arrived on port {port} within {accept_timeout_s:g} s"
            raise UsageError(msg, hint="A firewall may block the migration ports.") from exc
    with conn:
        conn.sendall(GREETING + token + b"\n")
        conn.settimeout(max_s)
        received = 0
        first = last = 0.0
        deadline = time.monotonic() + max_s
        try:
            while time.monotonic() < deadline:
                data = conn.recv(CHUNK)
                if not data:
                    break
                last = time.monotonic()
                if not received:
                    first = last
                received += len(data)
        except TimeoutError:
            pass
        seconds = max(last - first, 1e-6)
        reply = {"bytes": received, "seconds": round(seconds, 4)}
        conn.sendall(json.dumps(reply).encode() + b"\n")
    return {**reply, "mib_s": round(received / MIB / seconds, 1)}


def _connect(host: str, port: int, timeout_s: float) -> socket.socket:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return socket.create_connection((host, port), timeout=2)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def op_link_probe(args: Mapping[str, object]) -> dict[str, object]:
    """Agent op (source): stream zeros to the sink at ``host:port`` for ``seconds``."""
    host = str(args.get("host") or "")
    if not host:
        msg = "host: missing"
        raise UsageError(msg, hint="This is an internal call; report it as a bug.")
    port = int(_number(args, "port", 0))
    token = _token(args)
    seconds = _number(args, "seconds", DEFAULT_SECONDS)
    try:
        sock = _connect(host, port, _number(args, "connect_timeout_s", 10.0))
    except OSError as exc:
        msg = f"cannot reach {host}:{port} for the link probe: {exc}"
        raise UsageError(msg, hint="Check that the migration ports are open.") from exc
    with sock:
        sock.settimeout(3)
        greeting = b""
        try:
            while not greeting.endswith(b"\n") and len(greeting) < 64:
                part = sock.recv(64)
                if not part:
                    break
                greeting += part
        except TimeoutError:
            pass  # a silent listener is not ours
        if greeting.strip() != GREETING + token:
            msg = f"{host}:{port} is not our link sink (greeting {greeting[:32]!r}); sent nothing"
            raise UsageError(msg, hint="Another service uses that port; try again.")
        chunk = bytes(CHUNK)
        end = time.monotonic() + seconds
        sent = 0
        while time.monotonic() < end:
            sock.sendall(chunk)
            sent += CHUNK
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(10)
        reply = b""
        while not reply.endswith(b"\n"):
            part = sock.recv(4096)
            if not part:
                break
            reply += part
    got = json.loads(reply or b"{}")
    received, took = int(got.get("bytes", 0)), float(got.get("seconds", 0) or 1e-6)
    return {
        "bytes": received,
        "seconds": took,
        "sent": sent,
        "mib_s": round(received / MIB / took, 1),
    }


@dataclass(frozen=True, slots=True)
class LinkMeasurement:
    """Result of ``measure_link``: the rate, or why there is none."""

    mib_s: float | None
    detail: str


def measure_link(
    source: RemoteHost, dest: RemoteHost, dest_host: str, *, seconds: float = DEFAULT_SECONDS
) -> LinkMeasurement:
    """Stream from the source's agent to a sink on the destination's agent for ``seconds``."""
    port = MIGRATION_PORTS[secrets.randbelow(len(MIGRATION_PORTS))]
    token = secrets.token_hex(8)
    sink_args = {"port": port, "token": token, "accept_timeout_s": 15, "max_s": seconds + 5}
    probe_args = {"host": dest_host, "port": port, "token": token, "seconds": seconds}
    sink: Future[dict[str, object]] = Future()

    def run_sink() -> None:
        try:
            sink.set_result(dest.call("link-sink", sink_args, timeout_s=seconds + 25))
        except (AgentUnavailable, AgentOperationFailed) as exc:
            sink.set_exception(exc)

    # A daemon thread: when the probe fails, we do not wait for the sink's own timeout.
    threading.Thread(target=run_sink, name="link-sink", daemon=True).start()
    try:
        source.call("link-probe", probe_args, timeout_s=seconds + 20)
    except (AgentUnavailable, AgentOperationFailed) as exc:
        if sink.done() and sink.exception() is not None:
            return LinkMeasurement(None, str(getattr(sink.exception(), "message", exc.message)))
        return LinkMeasurement(None, exc.message)
    try:
        got = sink.result(timeout=15)
    except (AgentUnavailable, AgentOperationFailed) as exc:
        return LinkMeasurement(None, exc.message)
    except TimeoutError:
        return LinkMeasurement(None, "the link sink did not answer")
    rate = got.get("mib_s")
    if not isinstance(rate, int | float) or rate <= 0:
        return LinkMeasurement(None, "the link probe received nothing")
    received = got.get("bytes")
    mib = received / MIB if isinstance(received, int) else 0.0
    return LinkMeasurement(
        float(rate),
        f"measured {source.label} -> {dest_host}:{port}, {mib:.0f} MiB in {got.get('seconds')} s",
    )
