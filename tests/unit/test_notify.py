"""Announcement frames against golden bytes, and the sender's schedule."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from libvirt_vmotion.cutover.frames import (
    AnnounceSchedule,
    FrameKind,
    build_announcements,
    build_gratuitous_arp,
    build_rarp,
    build_unsolicited_na,
    internet_checksum,
)
from libvirt_vmotion.cutover.send import send_announcements

MAC = "52:54:00:77:00:50"

# Golden frames: decoded by tcpdump 4.99 -vvv -e as "Reverse Request who-is
# 52:54:00:77:00:50 tell 52:54:00:77:00:50", "Request who-has 10.77.0.50 tell
# 10.77.0.50" and "fd00:77::50 > ff02::1: [icmp6 sum ok] ... neighbor
# advertisement, tgt is fd00:77::50, Flags [override]".
GOLDEN_RARP = bytes.fromhex(
    "ffffffffffff"
    "525400770050"
    "8035"  # broadcast, from the guest, RARP
    "0001"
    "0800"
    "06"
    "04"
    "0003"  # Ethernet/IPv4, op 3 = request reverse
    "525400770050"
    "00000000"
    "525400770050"
    "00000000" + "00" * 18  # padding to 60 bytes
)
GOLDEN_GARP = bytes.fromhex(
    "ffffffffffff"
    "525400770050"
    "0806"
    "0001"
    "0800"
    "06"
    "04"
    "0001"  # op 1 = request
    "525400770050"
    "0a4d0032"
    "000000000000"
    "0a4d0032" + "00" * 18  # sender = target = 10.77.0.50
)
GOLDEN_NA = bytes.fromhex(
    "333300000001"
    "525400770050"
    "86dd"  # all-nodes multicast MAC
    "60000000"
    "0020"
    "3a"
    "ff"  # IPv6, payload 32, ICMPv6, hop limit 255
    "fd000077000000000000000000000050"  # source: the announced address
    "ff020000000000000000000000000001"  # ff02::1
    "88"
    "00"
    "07f5"  # type 136, code 0, checksum
    "20000000"  # flags: override
    "fd000077000000000000000000000050"  # target
    "02"
    "01"
    "525400770050"  # target link-layer address option
)


def test_rarp_matches_golden_frame() -> None:
    assert build_rarp(MAC) == GOLDEN_RARP
    assert len(GOLDEN_RARP) == 60


def test_gratuitous_arp_matches_golden_frame() -> None:
    assert build_gratuitous_arp(MAC, "10.77.0.50") == GOLDEN_GARP


def test_unsolicited_na_matches_golden_frame() -> None:
    assert build_unsolicited_na(MAC, "fd00:77::50") == GOLDEN_NA


@pytest.mark.parametrize("ip", ["fd00:77::50", "fe80::5054:ff:fe77:50", "2001:db8::ffff:1"])
def test_na_checksum_verifies_over_the_pseudo_header(ip: str) -> None:
    frame = build_unsolicited_na(MAC, ip)
    icmp = frame[14 + 40 :]
    src, dst = frame[22:38], frame[38:54]
    assert src == ipaddress.IPv6Address(ip).packed
    assert dst == ipaddress.IPv6Address("ff02::1").packed
    pseudo = src + dst + struct.pack("!I3xB", len(icmp), 58)
    # A correct checksum makes the ones'-complement sum of everything 0xffff.
    assert internet_checksum(pseudo + icmp) == 0


def test_checksum_rfc1071_example() -> None:
    # RFC 1071 section 3 example bytes: sum 0xddf2, checksum its complement.
    assert internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0xFFFF - 0xDDF2
    assert internet_checksum(b"\x01") == 0xFEFF  # odd length pads with a zero byte


@pytest.mark.parametrize("bad", ["52:54:00:77:00", "52-54-00-77-00-50", "zz:54:00:77:00:50", ""])
def test_malformed_mac_is_refused_with_the_expected_form(bad: str) -> None:
    with pytest.raises(ValueError, match="six hex octets"):
        build_rarp(bad)


def test_wrong_address_family_is_refused() -> None:
    with pytest.raises(ValueError, match="IPv4"):
        build_gratuitous_arp(MAC, "fd00::1")
    with pytest.raises(ValueError, match="IPv6"):
        build_unsolicited_na(MAC, "10.0.0.1")


def test_announcements_are_one_rarp_then_one_per_address() -> None:
    found = build_announcements(MAC, ["10.77.0.50", "fd00:77::50"])
    assert [a.kind for a in found] == [FrameKind.RARP, FrameKind.GARP, FrameKind.NA]
    assert [a.ip for a in found] == ["", "10.77.0.50", "fd00:77::50"]
    assert found[1].frame == GOLDEN_GARP


@pytest.mark.parametrize(
    ("count", "interval_ms", "offsets"),
    [(1, 50, (0,)), (3, 50, (0, 50, 100)), (5, 20, (0, 20, 40, 60, 80))],
)
def test_schedule_offsets(count: int, interval_ms: int, offsets: tuple[int, ...]) -> None:
    assert AnnounceSchedule(count=count, interval_ms=interval_ms).offsets_ms() == offsets


@pytest.mark.parametrize(("count", "interval_ms", "field"), [(0, 50, "count"), (3, 0, "interval")])
def test_schedule_bounds_name_the_field(count: int, interval_ms: int, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        AnnounceSchedule(count=count, interval_ms=interval_ms)


class FakeSocket:
    def __init__(self, fail_first: int = 0) -> None:
        self.frames: list[bytes] = []
        self.fail_first = fail_first
        self.closed = False

    def send(self, frame: bytes) -> int:
        if self.fail_first > 0:
            self.fail_first -= 1
            msg = "Network is down"
            raise OSError(msg)
        self.frames.append(frame)
        return len(frame)

    def close(self) -> None:
        self.closed = True


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


def test_sender_sends_every_frame_each_round_on_schedule() -> None:
    fake, t = FakeSocket(), FakeTime()
    opened: list[str] = []

    def open_socket(ifname: str) -> socket.socket:
        opened.append(ifname)
        return fake  # type: ignore[return-value]  # a duck-typed stand-in

    frames = build_announcements(MAC, ["10.77.0.50"])
    sent = send_announcements(
        "br0", frames, AnnounceSchedule(count=3, interval_ms=40),
        clock=t.clock, sleep=t.sleep, open_socket=open_socket,
    )  # fmt: skip
    assert opened == ["br0"]
    assert fake.frames == [GOLDEN_RARP, GOLDEN_GARP] * 3
    assert t.sleeps == [0.04, 0.04]
    assert [(s.kind, s.round, round(s.at_ms)) for s in sent] == [
        (FrameKind.RARP, 0, 0), (FrameKind.GARP, 0, 0),
        (FrameKind.RARP, 1, 40), (FrameKind.GARP, 1, 40),
        (FrameKind.RARP, 2, 80), (FrameKind.GARP, 2, 80),
    ]  # fmt: skip
    assert fake.closed


def test_a_failed_send_is_recorded_and_later_rounds_still_go_out() -> None:
    fake, t = FakeSocket(fail_first=1), FakeTime()
    sent = send_announcements(
        "br0", build_announcements(MAC, []), AnnounceSchedule(count=2, interval_ms=10),
        clock=t.clock, sleep=t.sleep, open_socket=lambda _n: fake,  # type: ignore[arg-type,return-value]
    )  # fmt: skip
    assert [s.error for s in sent] == ["Network is down", ""]
    assert sent[0].as_dict() == {
        "kind": "rarp", "mac": MAC, "round": 0, "at_ms": 0.0, "error": "Network is down",
    }  # fmt: skip
    assert fake.frames == [GOLDEN_RARP]
