import struct
import time

import pytest

from libvirt_vmotion.cutover.frames import internet_checksum
from libvirt_vmotion.observe.ping import (
    ICMP_ECHO_REQUEST,
    PingProbe,
    build_echo_request,
    longest_gap_s,
    parse_echo_reply,
    summarize,
)


def test_checksum_rfc1071_example() -> None:
    # RFC 1071 section 3 worked example: sum 0x2ddf0 -> folded 0xddf2 -> complement 0x220d.
    assert internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D


def test_checksum_odd_length_pads_with_zero() -> None:
    assert internet_checksum(b"\x01") == internet_checksum(b"\x01\x00")


def test_echo_request_matches_known_packet() -> None:
    # 08 00 cksum 1234 0001, empty payload: ~(0x0800 + 0x1234 + 0x0001) = 0xe5ca.
    assert build_echo_request(ident=0x1234, seq=1, payload=b"") == bytes.fromhex("0800e5ca12340001")


def test_echo_request_checksums_to_zero() -> None:
    packet = build_echo_request(ident=0xBEEF, seq=65535)
    assert packet[0] == ICMP_ECHO_REQUEST
    assert internet_checksum(packet) == 0
    assert struct.unpack_from("!HH", packet, 4) == (0xBEEF, 65535)


def test_sequence_wraps_to_16_bits() -> None:
    assert struct.unpack_from("!H", build_echo_request(ident=1, seq=65536 + 7), 6) == (7,)


def _ip_wrap(icmp: bytes, ihl_words: int = 5) -> bytes:
    header = bytes([0x40 | ihl_words]) + bytes(ihl_words * 4 - 1)
    return header + icmp


def test_parse_echo_reply_skips_ip_header_including_options() -> None:
    reply = b"\x00" + build_echo_request(ident=0x4242, seq=9)[1:]
    assert parse_echo_reply(_ip_wrap(reply)) == (0x4242, 9)
    assert parse_echo_reply(_ip_wrap(reply, ihl_words=6)) == (0x4242, 9)


def test_parse_echo_reply_ignores_requests_and_runts() -> None:
    assert parse_echo_reply(_ip_wrap(build_echo_request(ident=1, seq=1))) is None
    assert parse_echo_reply(b"\x45" + bytes(10)) is None
    assert parse_echo_reply(_ip_wrap(b"\x00\x00")) is None


@pytest.mark.parametrize(
    ("stamps", "gap"),
    [
        ([], 0.0),
        ([1.0], 0.0),
        ([0.0, 0.01, 0.02, 0.5, 0.51], 0.48),
        ([0.5, 0.0, 0.1], 0.4),  # order does not matter
    ],
)
def test_longest_gap(stamps: list[float], gap: float) -> None:
    assert longest_gap_s(stamps) == pytest.approx(gap)


def test_summarize() -> None:
    result = summarize(sent=10, received_at_s=[0.0, 0.01, 0.3], rtts_s=[0.001, 0.004, 0.002])
    assert result.sent == 10
    assert result.received == 3
    assert result.lost == 7
    assert result.longest_gap_ms == pytest.approx(290.0)
    assert result.max_rtt_ms == pytest.approx(4.0)


def test_summarize_nothing_received() -> None:
    result = summarize(sent=5, received_at_s=[], rtts_s=[])
    assert (result.received, result.lost, result.longest_gap_ms, result.max_rtt_ms) == (0, 5, 0, 0)


def test_stop_waits_for_the_last_pings_not_for_long_lost_ones() -> None:
    # Loopback (the kernel answers); one ping of long ago stands for those a
    # switchover lost: stop() used to wait the whole reply grace for it.
    probe = PingProbe("127.0.0.1", interval_s=0.01, reply_grace_s=2.0)
    probe.start()
    time.sleep(0.1)
    probe._sent_at[60000] = time.monotonic() - 10  # noqa: SLF001  a lost ping
    started = time.monotonic()
    result = probe.stop()
    assert time.monotonic() - started < 1.0
    assert result.sent >= 5
    assert result.lost <= 1
