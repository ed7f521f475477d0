"""The cutover's client half: which addresses are announced, and the announcer's lifetime.

Addresses: only the host's word, capped, each failure reported.

The guest controls its agent's answers and the frames the host's ARP cache
learns from; a GARP for an address it picked (the gateway's, a neighbour's)
would pull their traffic to it. These tests run the client half
(``NetworkCutover``) against fakes of our own seams and the destination's sender
loop with a fake send.

Lifetime: the destination's announcer is an agent call; a failed migration, a
late answer or Ctrl-C cancels it (before: it waited up to an hour, then fired
stale FDB claims and GARPs on a later retry), and its wait is the migration's
budget.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import pytest

from libvirt_vmotion.adapters.agent import AgentUnavailable
from libvirt_vmotion.cutover.announce import (
    ANNOUNCE_MARGIN_S,
    NetworkCutover,
    _announce_all,
    discover_addresses,
)
from libvirt_vmotion.cutover.frames import (
    MAX_ANNOUNCED_PER_NIC,
    AddressSource,
    Announcement,
    AnnounceSchedule,
    FrameKind,
    GuestAddress,
    NotifyConfig,
    SentFrame,
    choose_announced,
)
from libvirt_vmotion.errors import HypervisorError
from libvirt_vmotion.preflight.netcheck import GuestNic, guest_nics_from_xml

if TYPE_CHECKING:
    from libvirt_vmotion.adapters.virt import Hypervisor

MAC = "52:54:00:77:00:50"
XML = f"""<domain type='qemu'><name>web01</name><devices>
  <interface type='bridge'><mac address='{MAC}'/><source bridge='br0'/>
    <target dev='vnet0'/>
    <filterref filter='clean-traffic'><parameter name='IP' value='10.77.0.51'/></filterref>
  </interface>
</devices></domain>"""


@dataclass
class FakeGuest:
    """A guest whose libvirt address sources answer from a table (agent: the guest's word)."""

    by_source: Mapping[str, dict[str, tuple[str, ...]]]

    def xml(self) -> str:
        return XML

    def interface_addresses(self, source: str) -> dict[str, tuple[str, ...]]:
        if source not in self.by_source:
            msg = f"no {source} addresses"
            raise HypervisorError(msg)
        return dict(self.by_source[source])


@dataclass
class FakeSource:
    guest: FakeGuest

    def lookup(self, _name: str) -> FakeGuest:
        return self.guest


@dataclass
class FakeAgent:
    """Both hosts' agents: records the announce arguments, answers like a destination."""

    calls: list[tuple[str, Mapping[str, object]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    answers: bool = True
    started: list[FakeCall] = field(default_factory=list)

    def call(
        self, op: str, args: Mapping[str, object] | None = None, *, timeout_s: float = 30.0
    ) -> dict[str, object]:
        del timeout_s
        with self.lock:
            self.calls.append((op, dict(args or {})))
        if op == "announce":
            return dict(ANSWER)
        return {"removed": []}

    def start(
        self, op: str, args: Mapping[str, object] | None = None, *, timeout_s: float = 30.0
    ) -> FakeCall:
        with self.lock:
            self.calls.append((op, dict(args or {})))
            self.started.append(FakeCall(answers=self.answers, timeout_s=timeout_s))
        return self.started[-1]


ANSWER: Mapping[str, object] = {
    "resumed": True, "resumed_at_wall_s": 1.0, "sent": [], "fdb": [], "errors": [],
}  # fmt: skip


@dataclass
class FakeCall:
    """A started announcer: answers at once, or waits until it is cancelled."""

    answers: bool
    timeout_s: float
    cancelled: threading.Event = field(default_factory=threading.Event)

    def result(self) -> dict[str, object]:
        if self.answers:
            return dict(ANSWER)
        self.cancelled.wait()
        msg = "Could not run libvirt-vmotion on hostb: the call was cancelled"
        raise AgentUnavailable(msg)

    def cancel(self) -> None:
        self.cancelled.set()


GATEWAY = "10.77.0.1"
NEIGHBOUR = "10.77.0.9"


def cutover(guest: FakeGuest, agent: FakeAgent, *guest_ips: str) -> NetworkCutover:
    return NetworkCutover(
        domain="web01",
        source=cast("Hypervisor", FakeSource(guest)),
        source_uri="qemu+tcp://a/system",
        dest_uri="qemu+tcp://b/system",
        config=NotifyConfig(guest_ips=guest_ips),
        agent_for=lambda _uri: agent,
    )


def test_guest_reported_addresses_are_never_announced_and_the_report_says_so() -> None:
    guest = FakeGuest(
        {
            "agent": {MAC: (GATEWAY, "10.77.0.50")},  # the guest claims the gateway
            "lease": {MAC: ("10.77.0.52",)},
            "arp": {MAC: (NEIGHBOUR,)},  # learned from the guest's own frames
        }
    )
    agent = FakeAgent()
    cut = cutover(guest, agent, "10.77.0.50")
    cut.arm()
    section = cut.finish(landed=True)
    (announce,) = [args for op, args in agent.calls if op == "announce"]
    nics = announce["nics"]
    assert isinstance(nics, list)
    assert nics[0]["ips"] == ["10.77.0.50", "10.77.0.51", "10.77.0.52"]
    by_ip = {a["ip"]: a for a in cast("list[dict[str, object]]", section["addresses"])}
    assert by_ip["10.77.0.50"] == {
        "mac": MAC, "ip": "10.77.0.50", "source": "guest-ip", "announced": True,
    }  # fmt: skip  # also reported by the agent: counted under the operator's word
    assert by_ip["10.77.0.51"]["source"] == "nwfilter"
    assert by_ip["10.77.0.52"]["source"] == "lease"
    for ip, source in ((GATEWAY, "agent"), (NEIGHBOUR, "arp")):
        assert by_ip[ip] == {
            "mac": MAC, "ip": ip, "source": source, "announced": False,
            "why_not": "guest-reported",
        }  # fmt: skip
    assert section["address_source"] == "guest-ip+nwfilter+lease"


def test_without_a_vouched_address_only_rarp_goes_out() -> None:
    guest = FakeGuest({"agent": {MAC: (GATEWAY,)}})
    nic = GuestNic(MAC, "br0", "vnet0")
    found = discover_addresses(guest, [nic], NotifyConfig())
    assert [a.announced for a in found] == [False]
    sent, errors = _announce_all(
        [{"mac": MAC, "bridge": "br0", "ips": []}], AnnounceSchedule(count=1), 0.0, send=_record
    )
    assert [s["kind"] for s in sent] == ["rarp"]
    assert errors == []


def test_the_nwfilter_ip_parameter_is_read_from_the_xml() -> None:
    (nic,) = guest_nics_from_xml(XML)
    assert nic.filter_ips == ("10.77.0.51",)


def test_announced_addresses_are_capped_per_nic() -> None:
    many = [
        GuestAddress(MAC, f"10.77.1.{i}", AddressSource.LEASE)
        for i in range(MAX_ANNOUNCED_PER_NIC + 3)
    ]
    chosen = choose_announced(many)
    assert sum(a.announced for a in chosen) == MAX_ANNOUNCED_PER_NIC
    assert {a.why_not for a in chosen if not a.announced} == {
        f"over the cap of {MAX_ANNOUNCED_PER_NIC} announced addresses per NIC"
    }


@pytest.mark.parametrize(
    ("ip", "why"),
    [("not-an-ip", "not an IP address"), ("224.0.0.1", "not a unicast address"),
     ("0.0.0.0", "not a unicast address"),  # noqa: S104  an address, not a bind
     ("255.255.255.255", "not a unicast address")],
)  # fmt: skip
def test_a_vouched_but_unusable_address_is_not_announced(ip: str, why: str) -> None:
    (chosen,) = choose_announced([GuestAddress(MAC, ip, AddressSource.GUEST_IP)])
    assert (chosen.announced, chosen.why_not) == (False, why)


def _record(
    _bridge: str, frames: Sequence[Announcement], schedule: AnnounceSchedule
) -> tuple[SentFrame, ...]:
    return tuple(
        SentFrame(f.kind, f.mac, f.ip, number, 0.0)
        for number in range(schedule.count)
        for f in frames
    )


def test_a_malformed_address_is_reported_and_the_rest_still_goes_out() -> None:
    # The destination gets its addresses from the client; one bad item must not
    # end the announcing thread (before: nothing sent, nothing reported).
    nics = [
        {"mac": MAC, "bridge": "br0", "ips": ["10.77.0.50", "10.77.0.300"]},
        {"mac": "52:54:00:77:00:zz", "bridge": "br0", "ips": ["10.77.0.60"]},
    ]
    sent, errors = _announce_all(nics, AnnounceSchedule(count=2), 0.0, send=_record)
    assert sorted((s["kind"], s.get("ip", ""), s["round"]) for s in sent) == [
        (FrameKind.GARP.value, "10.77.0.50", 0), (FrameKind.GARP.value, "10.77.0.50", 1),
        (FrameKind.RARP.value, "", 0), (FrameKind.RARP.value, "", 1),
    ]  # fmt: skip
    assert len(errors) == 2
    assert "'10.77.0.300' for 52:54:00:77:00:50 not announced" in errors[0]
    assert "52:54:00:77:00:zz" in errors[1]


def test_more_addresses_than_the_cap_reaching_the_destination_are_cut_and_reported() -> None:
    ips = [f"10.77.1.{i}" for i in range(MAX_ANNOUNCED_PER_NIC + 5)]
    sent, errors = _announce_all(
        [{"mac": MAC, "bridge": "br0", "ips": ips}], AnnounceSchedule(count=1), 0.0, send=_record
    )
    assert sum(1 for s in sent if s["kind"] == "garp") == MAX_ANNOUNCED_PER_NIC
    assert errors == [
        f"{len(ips)} addresses for {MAC}: only the first {MAX_ANNOUNCED_PER_NIC} announced"
    ]


def test_a_failing_sender_is_reported_not_silent() -> None:
    def broken(
        _bridge: str, _frames: Sequence[Announcement], _schedule: AnnounceSchedule
    ) -> tuple[SentFrame, ...]:
        msg = "no such device"
        raise OSError(msg)

    sent, errors = _announce_all(
        [{"mac": MAC, "bridge": "br0", "ips": []}], AnnounceSchedule(count=1), 0.0, send=broken
    )
    assert sent == []
    assert errors == ["cannot send on br0: OSError: no such device"]


GUEST_ON_BR0 = FakeGuest({"lease": {MAC: ("10.77.0.52",)}})


def test_a_failed_migration_cancels_the_destinations_announcer() -> None:
    agent = FakeAgent(answers=False)  # it waits for a resume that never comes
    cut = cutover(GUEST_ON_BR0, agent)
    cut.arm()
    (call,) = agent.started
    section = cut.finish(landed=False)
    assert call.cancelled.is_set()
    assert section == {
        "result": "skipped: the migration did not complete",
        "announcer": "cancelled on the destination",
    }


def test_an_announcer_that_does_not_answer_after_the_landing_is_ended_not_left() -> None:
    agent = FakeAgent(answers=False)
    cut = cutover(GUEST_ON_BR0, agent)
    cut.answer_grace_s = 0.05
    cut.config = NotifyConfig(verify_timeout_ms=1)
    cut.arm()
    section = cut.finish(landed=True)
    assert agent.started[0].cancelled.is_set()
    assert section["result"] == "degraded"
    assert section["errors"] == [
        "announcer on the destination: it did not answer in time (ended it there)"
    ]


def test_the_announcers_wait_is_the_migrations_budget() -> None:
    agent = FakeAgent()
    cut = cutover(GUEST_ON_BR0, agent)
    cut.timeout_s = 120 + ANNOUNCE_MARGIN_S  # what the CLI gives: max_duration_s + margin
    cut.arm()
    cut.finish(landed=True)
    ((_, args),) = [c for c in agent.calls if c[0] == "announce"]
    assert args["timeout_s"] == 120 + ANNOUNCE_MARGIN_S  # the destination's own wait
    assert agent.started[0].timeout_s == 120 + 2 * ANNOUNCE_MARGIN_S  # the call's deadline
