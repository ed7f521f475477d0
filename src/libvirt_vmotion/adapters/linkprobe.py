"""Measure the migration link: source host -> destination host, one TCP stream.

I/O module. Without a bandwidth cap the forecast needs the speed of the path
the migration stream will take, which is neither the controller's path nor
anything libvirt reports. Three agent operations measure it where it is:

- ``link-route`` (on the source): the address the source sends from toward the
  destination (a UDP ``connect`` asks the kernel's routing; nothing is sent).
- ``link-sink`` (on the destination): binds the address the source dials (the
  migration address), on a port of its own choosing outside libvirt's migration
  range (so it can never take a port an incoming QEMU listens on), says so
  (``agent.report_progress``: ``{address, port}``), then accepts only a
  connection from the source's address, greets it with ``VMOTION-LINK <token>``,
  counts what arrives until end of stream (or ``max_s``), and answers with the
  count. Any other peer is closed unanswered and the sink keeps waiting.
- ``link-probe`` (on the source): connects to the address and port the sink
  reported, checks the greeting before it sends a byte, streams zeros for
  ``seconds``, closes its side and reads the sink's count.

``measure_link`` (controller side) starts the probe only once the sink says it
listens, and returns the receiver's rate.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from libvirt_vmotion.adapters import ops
from libvirt_vmotion.adapters.agent import report_progress
from libvirt_vmotion.errors import UsageError, VmotionError
from libvirt_vmotion.model import MIB

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address

MIGRATION_PORTS: Final = range(49152, 49216)
"""libvirt's default migration port range (qemu.conf migration_port_min/max): the
sink never listens there, where an incoming QEMU may be waiting."""
_BIND_TRIES: Final = 20
SINK_READY_TIMEOUT_S: Final = 15.0
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


def _bind_outside_migration_ports(host: str) -> socket.socket:
    """A listening socket on ``host``'s address, on a port outside ``MIGRATION_PORTS``.

    Raises:
        UsageError: ``host`` does not resolve to an address here, or cannot be bound.

    """
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
    except (OSError, IndexError) as exc:
        msg = f"cannot resolve {host!r} to an address of this host for the link probe: {exc}"
        raise UsageError(msg, hint="The destination URI should name this host's address.") from exc
    for _ in range(_BIND_TRIES):
        srv = socket.socket(family, socket.SOCK_STREAM)
        try:
            srv.bind((sockaddr[0], 0))
        except OSError as exc:
            srv.close()
            msg = f"cannot listen on {sockaddr[0]} for the link probe: {exc.strerror}"
            raise UsageError(msg, hint="Is that an address of this host?") from exc
        if srv.getsockname()[1] not in MIGRATION_PORTS:
            srv.listen(4)
            return srv
        srv.close()  # the kernel's pick fell into libvirt's range: pick again
    msg = f"no free port outside {MIGRATION_PORTS.start}-{MIGRATION_PORTS.stop - 1} on {host}"
    raise UsageError(msg, hint="Try again.")


def _allowed_peers(
    args: Mapping[str, object],
) -> frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    raw = args.get("allow_from")
    if not isinstance(raw, list) or not raw:
        msg = "allow_from: the source's address(es) are required"
        raise UsageError(msg, hint="This is an internal call; report it as a bug.")
    try:
        return frozenset(ipaddress.ip_address(str(a)) for a in raw)
    except ValueError as exc:
        msg = f"allow_from={raw!r}: {exc}"
        raise UsageError(msg, hint="This is an internal call; report it as a bug.") from exc


def _peer_address(peer: tuple[object, ...]) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    addr = ipaddress.ip_address(str(peer[0]))
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def link_sink(
    args: Mapping[str, object], *, on_listening: Callable[[Mapping[str, object]], None]
) -> dict[str, object]:
    """Receive one probe stream from an allowed peer and count it (see the module docstring).

    Args:
        args: ``bind_host`` (the destination as the source dials it), ``allow_from``
            (the source's addresses), ``token``, ``accept_timeout_s``, ``max_s``.
        on_listening: told ``{address, port}`` once the socket listens.

    Returns:
        ``bytes``, ``seconds``, ``mib_s``, and ``refused`` (peers closed unanswered).

    Raises:
        UsageError: cannot listen, or no allowed peer came within the timeout.

    """
    host = str(args.get("bind_host") or "")
    if not host:
        msg = "bind_host: missing"
        raise UsageError(msg, hint="This is an internal call; report it as a bug.")
    allowed = _allowed_peers(args)
    token = _token(args)
    accept_timeout_s = _number(args, "accept_timeout_s", 10.0)
    max_s = _number(args, "max_s", 5.0)
    with _bind_outside_migration_ports(host) as srv:
        address, port = srv.getsockname()[:2]
        on_listening({"address": address, "port": port})
        conn, refused = _accept_allowed(srv, allowed, accept_timeout_s=accept_timeout_s)
    with conn:
        received, seconds = _count_stream(conn, token, max_s=max_s)
    mib_s = round(received / MIB / seconds, 1)
    return {**_sink_reply(received, seconds), "mib_s": mib_s, "refused": refused}


def _accept_allowed(
    srv: socket.socket, allowed: frozenset[_Address], *, accept_timeout_s: float
) -> tuple[socket.socket, list[str]]:
    """The first connection from an allowed peer; others are closed unanswered (no token).

    Returns:
        The connection and the addresses refused before it.

    Raises:
        UsageError: no allowed peer came within ``accept_timeout_s``.

    """
    address, port = srv.getsockname()[:2]
    refused: list[str] = []
    deadline = time.monotonic() + accept_timeout_s
    while True:
        srv.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            conn, peer = srv.accept()
        except TimeoutError as exc:
            msg = f"no link probe from {', '.join(map(str, sorted(allowed, key=str)))} "
            msg += f"arrived on {address} port {port} within {accept_timeout_s:g} s"
            if refused:
                msg += f" (refused: {', '.join(refused)})"
            raise UsageError(msg, hint="A firewall may block the port.") from exc
        if _peer_address(peer) in allowed:
            return conn, refused
        refused.append(str(peer[0]))
        conn.close()  # not the source: no token, no count


def _sink_reply(received: int, seconds: float) -> dict[str, object]:
    """What the sink tells the sender (one JSON line) and reports: bytes and seconds."""
    return {"bytes": received, "seconds": round(seconds, 4)}


def _count_stream(conn: socket.socket, token: bytes, *, max_s: float) -> tuple[int, float]:
    """Greet the allowed peer with the token, count what it sends for up to ``max_s``, reply.

    Returns:
        The bytes received and the seconds from the first to the last chunk (at
        least 1 us); both are also sent back to the peer as one JSON line.

    """
    conn.sendall(GREETING + token + b"\n")
    conn.settimeout(max_s)
    received = 0
    first = last = 0.0
    end = time.monotonic() + max_s
    try:
        while time.monotonic() < end:
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
    conn.sendall(json.dumps(_sink_reply(received, seconds)).encode() + b"\n")
    return received, seconds


def op_link_sink(args: Mapping[str, object]) -> dict[str, object]:
    """Agent op (destination): ``link_sink``, telling the client when it listens."""
    return link_sink(args, on_listening=report_progress)


def op_link_route(args: Mapping[str, object]) -> dict[str, object]:
    """Agent op (source): the address this host sends from toward ``host``."""
    host = str(args.get("host") or "")
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(host, 9, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as udp:
            udp.connect(sockaddr)  # routing only: a UDP connect sends nothing
            return {"address": str(udp.getsockname()[0])}
    except (OSError, IndexError) as exc:
        msg = f"no route from here to {host!r}: {exc}"
        raise UsageError(msg, hint="Check the destination's address.") from exc


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


class SinkCall(Protocol):
    """The sink's agent call under way (``agent.AgentCall``)."""

    def next_progress(self, timeout_s: float) -> dict[str, object] | None:
        """What the sink reported, or None."""
        ...

    def result(self) -> dict[str, object]:
        """Its reply."""
        ...

    def cancel(self) -> None:
        """End it there."""


class LinkAgent(Protocol):
    """What the measurement needs of a host's agent (``agent.RemoteHost``)."""

    @property
    def label(self) -> str:
        """The host as users name it."""
        ...

    def call(
        self, op: str, args: Mapping[str, object] | None = None, *, timeout_s: float = 30.0
    ) -> dict[str, object]:
        """Run ``op`` there."""
        ...

    def start(
        self, op: str, args: Mapping[str, object] | None = None, *, timeout_s: float = 30.0
    ) -> SinkCall:
        """Start ``op`` there."""
        ...


def measure_link(
    source: LinkAgent, dest: LinkAgent, dest_host: str, *, seconds: float = DEFAULT_SECONDS
) -> LinkMeasurement:
    """Stream from the source's agent to a sink on the destination's agent for ``seconds``.

    The probe starts only once the sink reported its address and port, and the
    sink answers only the source's address.
    """
    token = secrets.token_hex(8)
    try:
        source_address = ops.LINK_ROUTE.call(source, ops.RouteRequest(host=dest_host)).address
    except VmotionError as exc:
        return LinkMeasurement(None, exc.message)
    sink_request = ops.LinkSinkRequest(
        bind_host=dest_host, allow_from=(source_address,), token=token,
        accept_timeout_s=SINK_READY_TIMEOUT_S, max_s=seconds + 5,
    )  # fmt: skip
    try:
        sink = ops.LINK_SINK.start(
            dest, sink_request, timeout_s=seconds + 25 + SINK_READY_TIMEOUT_S
        )
    except VmotionError as exc:
        return LinkMeasurement(None, exc.message)
    try:
        return _probe_when_listening(source, sink, token=token, seconds=seconds)
    finally:
        sink.cancel()  # done already, or nothing must stay listening


def _probe_when_listening(
    source: LinkAgent, sink: SinkCall, *, token: str, seconds: float
) -> LinkMeasurement:
    ready = sink.next_progress(SINK_READY_TIMEOUT_S)
    if ready is None or not isinstance(ready.get("port"), int):
        try:
            sink.result()  # it ended without listening: its error says why
        except VmotionError as exc:
            return LinkMeasurement(None, exc.message)
        return LinkMeasurement(None, "the link sink did not say where it listens")
    address, port = str(ready.get("address")), int(str(ready["port"]))
    probe = ops.LinkProbeRequest(host=address, port=port, token=token, seconds=seconds)
    try:
        ops.LINK_PROBE.call(source, probe, timeout_s=seconds + 20)
        got = ops.LINK_SINK.parse_reply(sink.result(), host="the destination")
    except VmotionError as exc:
        return LinkMeasurement(None, exc.message)
    rate = got.mib_s
    if rate is None or rate <= 0:
        return LinkMeasurement(None, "the link probe received nothing")
    mib = got.received_bytes / MIB
    return LinkMeasurement(
        rate,
        f"measured {source.label} -> {address}:{port}, {mib:.0f} MiB in {got.seconds} s",
    )
