"""ICMP echo prober: measures how long the guest stops answering pings (e.g. in a migration).

I/O: a raw ICMP socket (needs root or CAP_NET_RAW) and one thread that both sends
(every ``interval_s``) and receives. The packet building, checksum, reply parsing
and gap arithmetic are pure functions at the top of the module.
"""

from __future__ import annotations

import itertools
import logging
import os
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Self

# One RFC 1071 implementation serves the ICMP probe and the announcement frames.
from libvirt_vmotion.cutover.frames import internet_checksum

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import TracebackType

logger = logging.getLogger(__name__)

ICMP_ECHO_REQUEST: Final = 8
ICMP_ECHO_REPLY: Final = 0
_ICMP_HEADER: Final = struct.Struct("!BBHHH")
_PAYLOAD: Final = b"libvirt-vmotion ping probe\0\0\0\0\0\0"  # 32 bytes


# ---- pure -------------------------------------------------------------------------


def build_echo_request(*, ident: int, seq: int, payload: bytes = _PAYLOAD) -> bytes:
    """Build an ICMP echo request (type 8) with a correct checksum."""
    header = _ICMP_HEADER.pack(ICMP_ECHO_REQUEST, 0, 0, ident & 0xFFFF, seq & 0xFFFF)
    checksum = internet_checksum(header + payload)
    return _ICMP_HEADER.pack(ICMP_ECHO_REQUEST, 0, checksum, ident & 0xFFFF, seq & 0xFFFF) + payload


def parse_echo_reply(packet: bytes) -> tuple[int, int] | None:
    """Return ``(ident, seq)`` of an IPv4 packet holding an ICMP echo reply, else None.

    Raw IPv4 ICMP sockets deliver the IP header too; its length is in the IHL field.
    """
    if len(packet) < 20:
        return None
    ihl = (packet[0] & 0x0F) * 4
    icmp = packet[ihl:]
    if len(icmp) < _ICMP_HEADER.size:
        return None
    icmp_type, _code, _checksum, ident, seq = _ICMP_HEADER.unpack_from(icmp)
    if icmp_type != ICMP_ECHO_REPLY:
        return None
    return ident, seq


def longest_gap_s(timestamps: Sequence[float]) -> float:
    """Return the longest interval between consecutive timestamps (0 for fewer than two)."""
    ordered = sorted(timestamps)
    return max((b - a for a, b in itertools.pairwise(ordered)), default=0.0)


@dataclass(frozen=True, slots=True)
class PingResult:
    """What a :class:`PingProbe` saw."""

    sent: int
    received: int
    lost: int
    longest_gap_ms: float
    """Longest time between two consecutive replies while probing."""
    max_rtt_ms: float


def summarize(*, sent: int, received_at_s: Sequence[float], rtts_s: Sequence[float]) -> PingResult:
    """Fold raw probe observations into a :class:`PingResult`."""
    received = len(received_at_s)
    return PingResult(
        sent=sent,
        received=received,
        lost=max(0, sent - received),
        longest_gap_ms=longest_gap_s(received_at_s) * 1000.0,
        max_rtt_ms=max(rtts_s, default=0.0) * 1000.0,
    )


# ---- I/O --------------------------------------------------------------------------


class PingProbe:
    """Pings ``addr`` every ``interval_s`` from one thread until stopped.

    Replies are matched by ICMP identifier and sequence number; late replies to a
    sequence number that wrapped around are ignored. Use as a context manager or
    call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, addr: str, *, interval_s: float = 0.01, reply_grace_s: float = 0.5) -> None:
        """Prepare a probe of ``addr``; nothing is sent until :meth:`start`.

        Args:
            addr: IPv4 address to ping.
            interval_s: time between echo requests.
            reply_grace_s: how long :meth:`stop` keeps listening for the last replies.

        """
        self._addr = addr
        self._interval_s = interval_s
        self._reply_grace_s = reply_grace_s
        self._ident = (os.getpid() ^ id(self)) & 0xFFFF
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._sent_at: dict[int, float] = {}
        self._sent = 0
        self._received_at: list[float] = []
        self._rtts: list[float] = []
        self._error: str | None = None
        self.result: PingResult | None = None

    def start(self) -> None:
        """Open the raw socket (raises PermissionError without root) and start pinging."""
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        self._sock.setblocking(False)  # noqa: FBT003 - socket API
        self._thread = threading.Thread(target=self._run, name="ping-probe", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._sock is not None  # noqa: S101 - set by start() before the thread runs
        sock = self._sock
        next_send = time.monotonic()
        stop_at: float | None = None
        while True:
            now = time.monotonic()
            if stop_at is None and self._stop.is_set():
                stop_at = now + self._reply_grace_s
                # Pings older than the grace are lost (counted as such): wait only for the
                # last ones, so a switchover's lost pings do not hold stop() the whole grace.
                cutoff = now - self._reply_grace_s
                self._sent_at = {s: t for s, t in self._sent_at.items() if t >= cutoff}
            if stop_at is not None and (now >= stop_at or len(self._sent_at) == 0):
                return
            if stop_at is None and now >= next_send:
                self._send(sock, now)
                next_send += self._interval_s
                if next_send < now:  # fell behind (e.g. a stalled host): do not burst
                    next_send = now + self._interval_s
            deadline = stop_at if stop_at is not None else next_send
            readable, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
            if readable:
                self._drain(sock)

    def _send(self, sock: socket.socket, now: float) -> None:
        seq = self._sent & 0xFFFF
        try:
            sock.sendto(build_echo_request(ident=self._ident, seq=seq), (self._addr, 0))
        except OSError as exc:  # e.g. no route/neighbour yet: counts as a lost ping
            if self._error is None:
                logger.warning("ping probe of %s: send failed: %s", self._addr, exc)
            self._error = str(exc)
        self._sent_at[seq] = now
        self._sent += 1

    def _drain(self, sock: socket.socket) -> None:
        while True:
            try:
                packet, (source, _port) = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            now = time.monotonic()
            parsed = parse_echo_reply(packet)
            if parsed is None or source != self._addr or parsed[0] != self._ident:
                continue
            sent_at = self._sent_at.pop(parsed[1], None)
            if sent_at is None:
                continue  # duplicate or wrapped-around late reply
            self._received_at.append(now)
            self._rtts.append(now - sent_at)

    def stop(self) -> PingResult:
        """Stop sending, wait briefly for outstanding replies, and return the result."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._reply_grace_s + 5.0)
        if self._sock is not None:
            self._sock.close()
        self.result = summarize(sent=self._sent, received_at_s=self._received_at, rtts_s=self._rtts)
        return self.result

    def __enter__(self) -> Self:
        """Start the probe."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the probe; the result is in :attr:`result`."""
        self.stop()
