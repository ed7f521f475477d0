"""Send the announcement frames out of a bridge, on their schedule.

I/O: a raw ``AF_PACKET`` socket bound to the bridge the guest's NIC is attached to,
with an injectable clock, sleep and socket so tests replace all three. The frames
and the schedule are built by ``cutover.frames`` (pure).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence

from libvirt_vmotion.cutover.frames import Announcement, AnnounceSchedule, SentFrame


def send_announcements(  # noqa: PLR0913  clock, sleep and socket are injected seams
    ifname: str,
    announcements: Sequence[Announcement],
    schedule: AnnounceSchedule,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    open_socket: Callable[[str], socket.socket] | None = None,
) -> tuple[SentFrame, ...]:
    """Send every announcement once per round, on ``schedule``, out of ``ifname``.

    A frame that fails to send is recorded with its error and the rounds go on:
    later rounds may succeed, and the caller reports what happened.

    Args:
        ifname: the bridge (or other interface) to send on.
        announcements: the frames.
        schedule: rounds and spacing.
        clock: monotonic clock in seconds.
        sleep: sleeps seconds (tests pass a fake).
        open_socket: opens the raw socket bound to ``ifname`` (tests pass a fake).

    Returns:
        One record per frame per round.

    Raises:
        OSError: the raw socket cannot be opened (needs root / CAP_NET_RAW).

    """
    sock = (open_socket or _open_packet_socket)(ifname)
    sent: list[SentFrame] = []
    try:
        start = clock()
        for number, offset_ms in enumerate(schedule.offsets_ms()):
            wait_s = start + offset_ms / 1000 - clock()
            if wait_s > 0:
                sleep(wait_s)
            for item in announcements:
                error = ""
                try:
                    sock.send(item.frame)
                except OSError as exc:
                    error = str(exc)
                at_ms = (clock() - start) * 1000
                sent.append(SentFrame(item.kind, item.mac, item.ip, number, at_ms, error))
    finally:
        sock.close()
    return tuple(sent)


def _open_packet_socket(ifname: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        sock.bind((ifname, 0))
    except OSError:
        sock.close()
        raise
    return sock
