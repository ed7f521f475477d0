"""The case where the guest's own announcement is not enough, without and with ours.

The lab's switch is made learning-only (``flood off`` on every sw0 port: frames
to a MAC it has not learned are dropped, not flooded), the client holds the
guest's address in its ARP cache (a just-used entry), and QEMU's self-announce is
off: the guest runs with ``-global migration.announce-rounds=0``. That is
QEMU's own switch, read by the *destination* QEMU when it resumes the guest
(``qemu_announce_self`` with the incoming side's ``announce-*`` parameters); 0
rounds sends neither the RARPs nor virtio-net's guest-announce request (the
guest's own gratuitous ARP). Set on the command line it travels with the
domain XML, so the destination's QEMU gets it before switchover without racing
a monitor command against the migration (``migrate-set-parameters`` would have
to land on the destination between its start and the switchover), and unlike a
filter on the destination's tap it cannot drop our announcements too (ours are
sent out of the bridge, not through the tap).

Without our announcement the switch keeps the guest's MAC on the source host's
port: every ping is lost until the guest itself transmits (here: until the
client's ARP entry is gone and the guest answers a broadcast ARP request). With
ours the destination's RARP moves the switch at once, and the client loses only
the pings of the switchover pause.

Without ours the guest is kept quiet on purpose: no TCP stream, its ARP entry
for the client freshly confirmed by a TCP exchange, and no pings *during* the
move (the client pings right before and right after it). A guest that talks
moves the switch itself with its first frame, and one that is answering pings
at the pause usually does: a reply still in its virtio transmit ring is sent by
the destination's QEMU at the resume (seen here in most runs that pinged
through the move).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import socket
import struct
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from labcli import vmotion_in_client
from libvirt_vmotion.adapters.virt import Hypervisor
from libvirt_vmotion.cutover.bridge import FdbWatcher, fdb_entries
from libvirt_vmotion.lab import guestctl
from libvirt_vmotion.lab.constants import (
    CLIENT_NETNS,
    CLIENT_SWITCH_PORT,
    GUEST_ADDR,
    GUEST_MAC,
    GUEST_NAME,
    HOST_A,
    HOST_B,
    SWITCH_BRIDGE,
    SWITCH_NETNS,
    LabHost,
)
from libvirt_vmotion.lab.guestdef import LabGuestSpec, build_domain_xml
from libvirt_vmotion.lab.image import GuestImage, kernel_cmdline
from libvirt_vmotion.observe.ping import build_echo_request, parse_echo_reply
from libvirt_vmotion.observe.workload import query_status

pytestmark = pytest.mark.lab

QUIET_S = 3.0
"""How long the client keeps pinging after a move without our announcement."""
PING_INTERVAL_S = 0.01
ETH_P_ALL = 0x0003
ETH_P_ARP = 0x0806
ETH_P_RARP = 0x8035
PACKET_OUTGOING = 4
SO_TIMESTAMPNS = 35
CLONE_NEWNET = 0x40000000
_LIBC = ctypes.CDLL(None, use_errno=True)
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"


@contextmanager
def thread_in_netns(name: str) -> Iterator[None]:
    """Run the calling thread (only it) in network namespace ``name`` for a while.

    Sockets opened inside stay in that namespace, whichever thread uses them.
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _LIBC.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
        yield
    finally:
        _LIBC.setns(own, CLONE_NEWNET)
        os.close(own)
        os.close(target)


class PingTimeline:
    """Echo requests every 10 ms from the client namespace; each one's send and reply time."""

    def __init__(self, addr: str) -> None:
        self._addr = addr
        with thread_in_netns(CLIENT_NETNS):
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        self._sock.settimeout(0.002)
        self.sent: dict[int, float] = {}
        self.replied: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        ident, seq, next_s = 0x5A5A, 0, time.time()
        while not self._stop.is_set():
            now = time.time()
            if now >= next_s:
                self.sent[seq] = now
                with contextlib.suppress(OSError):  # no neighbour yet: counts as lost
                    self._sock.sendto(build_echo_request(ident=ident, seq=seq), (self._addr, 0))
                seq, next_s = seq + 1, max(next_s + PING_INTERVAL_S, now)
            try:
                packet, (source, _) = self._sock.recvfrom(2048)
            except TimeoutError:
                continue
            parsed = parse_echo_reply(packet)
            if parsed and source == self._addr and parsed[0] == ident:
                self.replied.setdefault(parsed[1], time.time())

    def stop(self) -> None:
        time.sleep(0.3)  # late replies
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()


@dataclass(frozen=True, slots=True)
class Frame:
    at: float
    kind: str
    """``rarp``, ``garp`` (an announcement) or ``own`` (anything else the guest sent)."""
    detail: str


class FrameLog:
    """Frames from the guest's MAC arriving at a switch port (what teaches the switch)."""

    def __init__(self, port: str) -> None:
        with thread_in_netns(SWITCH_NETNS):
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self._sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self._sock.bind((port, 0))
        self._sock.settimeout(0.05)
        self._mac = bytes.fromhex(GUEST_MAC.replace(":", ""))
        self.frames: list[Frame] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, ancillary, _, addr = self._sock.recvmsg(2048, 64)
            except TimeoutError:
                continue
            # The kernel's receive time: this thread may run late on a busy machine.
            at = next(
                (sec + nsec / 1e9 for level, kind, raw in ancillary
                 if (level, kind) == (socket.SOL_SOCKET, SO_TIMESTAMPNS)
                 for sec, nsec in [struct.unpack("qq", raw[:16])]),
                time.time(),
            )  # fmt: skip
            if addr[2] == PACKET_OUTGOING or data[6:12] != self._mac:
                continue
            (ethertype,) = struct.unpack_from("!H", data, 12)
            kind, detail = "own", f"ethertype {ethertype:#06x}"
            if ethertype == ETH_P_RARP:
                kind, detail = "rarp", "rarp"
            elif ethertype == ETH_P_ARP:
                op, sender, target = struct.unpack_from("!H", data, 20)[0], data[28:32], data[38:42]
                who = f"arp op {op} {socket.inet_ntoa(sender)} -> {socket.inet_ntoa(target)}"
                kind, detail = ("garp" if sender == target else "own"), who
            self.frames.append(Frame(at, kind, detail))

    def stop(self) -> list[Frame]:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()
        return list(self.frames)


@dataclass
class Move:
    """One observed migration: the tool's report and what the network saw."""

    report: dict[str, object]
    returned_at: float
    pings: PingTimeline
    frames: list[Frame]
    fdb: list[tuple[float, str, str]]
    last_reply_before: float = 0.0
    first_reply_after: float | None = None
    lost: int = 0
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Find the switchover blackout, anchored on the first frame with the guest's MAC
        at the new port (the switch cannot deliver to the guest before it); without one,
        the stretch without replies that runs to the end.
        """
        self.lost = sum(1 for seq in self.pings.sent if seq not in self.pings.replied)
        replies = sorted(self.pings.replied.values())
        anchor = self.frames[0].at if self.frames else max(self.pings.sent.values())
        before = [r for r in replies if r < anchor]
        self.last_reply_before = before[-1] if before else min(self.pings.sent.values())
        self.first_reply_after = next((r for r in replies if r > self.last_reply_before), None)

    def port_at(self, wall: float) -> str:
        """The switch port of the guest's MAC at wall time ``wall``."""
        ports = [port for at, _, port in self.fdb if at <= wall]
        return ports[-1] if ports else ""

    def moved_to(self, port: str, after: float) -> float | None:
        return next((at for at, _, p in self.fdb if p == port and at > after), None)


def _confirm_guest_neighbour() -> None:
    """One TCP exchange: the guest's ARP entry for the client is freshly confirmed.

    So the guest has no reason to send an ARP probe of its own during the test.
    """
    with thread_in_netns(CLIENT_NETNS):
        query_status(GUEST_ADDR)


def _migrate_observed(
    src: LabHost, dst: LabHost, *extra: str, linger_s: float = 0.5, ping_through: bool = True
) -> Move:
    """Migrate with the switch and the new port watched.

    ``ping_through``: ping during the migration too. Otherwise the client pings just
    before (so its ARP entry is fresh) and again after it: a guest answering pings
    at the moment of the pause usually has a reply in its virtio transmit ring, which
    QEMU sends right at the resume, and that frame alone teaches the switch.
    """
    warm = PingTimeline(GUEST_ADDR)
    time.sleep(0.3)
    warm.stop()
    assert warm.replied, "the guest does not answer pings"
    _confirm_guest_neighbour()
    watcher = FdbWatcher(SWITCH_BRIDGE, [GUEST_MAC], netns=SWITCH_NETNS)
    watcher.start()
    frames = FrameLog(dst.switch_port)
    pings = PingTimeline(GUEST_ADDR) if ping_through else None
    time.sleep(0.3)
    result = vmotion_in_client(
        "migrate", GUEST_NAME, "--from", src.uri, "--to", dst.uri, "--json",
        "--watch-switch", f"{SWITCH_NETNS}/{SWITCH_BRIDGE}", *extra,
        timeout_s=300,
    )  # fmt: skip
    returned_at = time.time()
    pings = pings or PingTimeline(GUEST_ADDR)
    time.sleep(linger_s)
    pings.stop()
    seen = frames.stop()
    changes = watcher.stop()
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return Move(report, returned_at, pings, seen, changes)


def _switch_ports_flood(*, on: bool) -> None:
    for port in (HOST_A.switch_port, HOST_B.switch_port, CLIENT_SWITCH_PORT):
        subprocess.run(
            ["ip", "netns", "exec", SWITCH_NETNS, "bridge", "link", "set", "dev", port,
             "flood", "on" if on else "off"],
            check=True, capture_output=True,
        )  # fmt: skip


def _guest_xml_without_qemu_announce(image: GuestImage) -> str:
    spec = LabGuestSpec(
        kernel=image.kernel,
        initrd=image.initrd,
        cmdline=kernel_cmdline(
            addr_cidr=f"{GUEST_ADDR}/24", wss_mib=64, rate_mib_s=20, mode="paced"
        ),
    )
    ET.register_namespace("qemu", QEMU_NS)
    root = ET.fromstring(build_domain_xml(spec))
    extra = ET.SubElement(root, f"{{{QEMU_NS}}}commandline")
    for value in ("-global", "migration.announce-rounds=0"):
        ET.SubElement(extra, f"{{{QEMU_NS}}}arg", value=value)
    return ET.tostring(root, encoding="unicode")


@pytest.fixture
def learning_only_switch(lab: None, guest_image: GuestImage) -> Iterator[None]:
    """Guest on hosta without QEMU's self-announce; sw0 floods no unknown unicast."""
    guestctl.remove_guest()
    with Hypervisor.open(guestctl.local_uri(HOST_A)) as hv:
        hv.define_and_start(_guest_xml_without_qemu_announce(guest_image))
    try:
        guestctl.wait_for_workload()
        _switch_ports_flood(on=False)
        yield
    finally:
        _switch_ports_flood(on=True)
        guestctl.remove_guest()


def _figures(label: str, move: Move) -> str:
    downtime = move.report.get("downtime_ms")
    blackout = (
        f"{(move.first_reply_after - move.last_reply_before) * 1000:.0f} ms"
        if move.first_reply_after
        else f"> {(max(move.pings.sent.values()) - move.last_reply_before):.1f} s (no reply)"
    )
    return (
        f"{label}: QEMU downtime {downtime} ms, lost {move.lost} pings "
        f"({move.lost * PING_INTERVAL_S * 1000:.0f} ms), longest reply gap {blackout}, "
        f"guest frames at the new port: {[(round((f.at - move.last_reply_before) * 1000), f.kind, f.detail) for f in move.frames[:4]]}"  # noqa: E501
    )


@pytest.mark.usefixtures("learning_only_switch")
def test_learning_only_switch_needs_our_announcement() -> None:
    # Without ours: nothing tells the switch, so it keeps the guest on hosta's port.
    quiet = _migrate_observed(HOST_A, HOST_B, "--no-notify", linger_s=QUIET_S, ping_through=False)
    print(_figures("without our announcement", quiet))
    assert quiet.report["network_cutover"]["notify"] == {"br0": False}  # type: ignore[index]
    assert [f for f in quiet.frames if f.kind != "own"] == []  # QEMU's announce is off
    if not quiet.frames:
        # The guest kept quiet: QUIET_S later the switch still sends its traffic to
        # the source host, and not one ping since the move was answered.
        quiet.notes.append("the guest stayed quiet")
        assert quiet.port_at(time.time()) == HOST_A.switch_port
        assert quiet.pings.replied == {}
        assert len(quiet.pings.sent) >= QUIET_S / PING_INTERVAL_S / 2
    else:
        # It spoke on its own (an ARP probe, IPv6): that frame, not us, moved the switch,
        # and nothing was answered before it.
        spoke = quiet.frames[0].at
        quiet.notes.append(f"the guest spoke {spoke - quiet.returned_at:.3f} s after")
        assert quiet.port_at(spoke) == HOST_A.switch_port
        assert all(r > spoke for r in quiet.pings.replied.values())
    print(quiet.notes)

    # ... until the guest talks: the client's ARP entry goes, it asks by broadcast,
    # the guest answers from hostb, and the switch learns from that answer.
    subprocess.run(guestctl.client_command(["ip", "neigh", "flush", "to", GUEST_ADDR]), check=True)
    ping = subprocess.run(
        guestctl.client_command(["ping", "-c", "3", "-i", "0.2", "-W", "1", GUEST_ADDR]),
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert " 0% packet loss" in ping.stdout, ping.stdout
    assert [e.port for e in fdb_entries(SWITCH_BRIDGE, [GUEST_MAC], netns=SWITCH_NETNS)] == [
        HOST_B.switch_port
    ]

    # With ours: the destination's RARP and gratuitous ARP move the switch at once.
    told = _migrate_observed(HOST_B, HOST_A, "--guest-ip", GUEST_ADDR)
    print(_figures("with our announcement", told))
    cut = told.report["network_cutover"]
    assert isinstance(cut, dict)
    assert cut["result"] == "ok", cut["errors"]
    assert cut["announcements_sent"] == {"rarp": 3, "garp": 3}
    # The first frame with the guest's MAC to reach the switch's new port is ours:
    # the switch learned the move from our announcement, not from the guest.
    assert told.frames[0].kind in {"rarp", "garp"}, told.frames
    moved = told.moved_to(HOST_A.switch_port, told.last_reply_before)
    assert moved is not None, (told.fdb, told.last_reply_before, told.frames)
    assert moved >= told.frames[0].at
    # hosta's own bridge was pointed at the guest's tap before the announcement.
    (claimed,) = cut["dest_fdb_claimed"]
    assert claimed["tap"].startswith("vnet")
    learned_ms = cut["switch"].get("learned_after_resume_ms")
    print(f"claimed {claimed}, switch learned {learned_ms} ms after resume")
    switch = cut["switch"]
    assert (switch["port_before"], switch["port_after"]) == (HOST_B.switch_port, HOST_A.switch_port)
    # What the network is responsible for. The pings lost are those of the pause:
    # QEMU's downtime, or the pause as the destination saw it (libvirt there reports
    # the guest running a little after QEMU's downtime ends; more on a busy machine).
    downtime_ms = told.report["downtime_ms"]
    resumed = cut["resumed_at_wall_s"]
    assert isinstance(downtime_ms, int)
    assert isinstance(resumed, float)
    pause_ms = max(downtime_ms, (resumed - told.last_reply_before) * 1000)
    assert told.lost * PING_INTERVAL_S * 1000 <= pause_ms + 50
    # Every ping sent once the guest ran on hosta (50 ms on) and the switch had moved
    # was answered: late, maybe (a cold TCG guest), but none lost.
    unanswered = [
        seq
        for seq, at in told.pings.sent.items()
        if max(moved, resumed + 0.05) < at < told.returned_at and seq not in told.pings.replied
    ]
    assert unanswered == []
    # For the log: the first ping answered after the move (one sent between the move
    # and the resume may be lost, as asserted above).
    first_seq = min(
        s for s, at in told.pings.sent.items() if at > moved and s in told.pings.replied
    )
    first_rtt_ms = (told.pings.replied[first_seq] - told.pings.sent[first_seq]) * 1000
    print(f"pause {pause_ms:.0f} ms, first reply after the move: RTT {first_rtt_ms:.1f} ms")
