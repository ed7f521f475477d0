"""Network cutover (vMotion step 8): announce the guest from the destination, verify.

I/O: orchestration across hosts; the frame building and the verdicts are pure
(``notify``, ``netcheck``). Two halves:

**On the destination host** (agent operation ``announce``, started *before* the
migration so that nothing is left to start at switchover): wait until the
local libvirtd reports the incoming guest running, then at once point the
local bridge's entry for each NIC's MAC at the guest's tap (it has usually
learned the MAC on its uplink while the guest ran elsewhere, and would drop the
guest's incoming traffic until the guest sends a frame itself), send RARP for
each NIC's MAC, gratuitous ARP for each IPv4 and an unsolicited neighbour
advertisement for each IPv6 address, on the schedule, out of the NIC's bridge;
then wait until that bridge's forwarding database has the MAC on the guest's
tap. Times are measured from the moment the resume was seen (polled every
``poll_ms``; that poll interval bounds the delay).

**On the client** (``NetworkCutover``, the driver's post-switchover hook):
``arm`` reads the guest's NICs and addresses (libvirt's domifaddr sources
agent/lease/arp, then ``--guest-ip``; the report says which) and starts the
destination's announcer; ``finish`` collects its result, removes stale entries
for the guest's MACs from the source host's bridge, and (lab) reads when the
switch learned the MAC at its new port. The result is the report section
``network_cutover``.

Clocks: the destination reports wall-clock times; "resume to switch learned"
compares them with this machine's clock, so it assumes synchronized clocks (one
machine in the lab).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from libvirt_vmotion.adapters import ops
from libvirt_vmotion.adapters.agent import RemoteHost
from libvirt_vmotion.adapters.virt import Guest, Hypervisor
from libvirt_vmotion.cutover.bridge import Claimed, FdbClaims, FdbWatcher, fdb_entries
from libvirt_vmotion.cutover.frames import (
    MAX_ANNOUNCED_PER_NIC,
    AddressSource,
    Announcement,
    AnnounceSchedule,
    GuestAddress,
    NotifyConfig,
    SentFrame,
    announcements_for,
    choose_announced,
)
from libvirt_vmotion.cutover.send import send_announcements
from libvirt_vmotion.errors import DomainNotFound, VmotionError
from libvirt_vmotion.preflight.netcheck import GuestNic, guest_nics_from_xml

log = logging.getLogger(__name__)

SECTION = "network_cutover"


ANNOUNCE_MARGIN_S: Final = 30.0
"""The announcer waits for the resume the migration's budget plus this long."""
ANSWER_GRACE_S: Final = 30.0
"""After the landing, how long the announcer gets to answer (past its verify timeout)."""


class StartedCall(Protocol):
    """An agent operation under way (``agent.AgentCall``)."""

    def result(self) -> dict[str, object]:
        """Wait for its reply (raises VmotionError)."""
        ...

    def cancel(self) -> None:
        """End it on the host and reap it."""


class AgentClient(Protocol):
    """What the cutover needs of a host's agent (``agent.RemoteHost``)."""

    def call(
        self, op: str, args: Mapping[str, object] | None = None, *, timeout_s: float = 30.0
    ) -> dict[str, object]:
        """Run ``op`` on the host."""
        ...

    def start(
        self, op: str, args: Mapping[str, object] | None = None, *, timeout_s: float = 30.0
    ) -> StartedCall:
        """Start ``op`` on the host; it ends there when cancelled or when we die."""
        ...


# ---- destination host: agent operation ------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Resume:
    """What the destination's wait for the resume found."""

    resumed: bool
    why_not: str = ""
    wall_s: float = 0.0
    taps: Mapping[str, str] = field(default_factory=dict)
    """The guest's tap per MAC, read while the incoming guest was still paused."""


def _wait_running(
    uri: str,
    domain: str,
    *,
    timeout_s: float,
    poll_s: float,
    on_taps: Callable[[Mapping[str, str]], None] = lambda _taps: None,
) -> _Resume:
    """Poll the local libvirtd until ``domain`` runs.

    The guest's taps are read from its live XML as soon as the incoming guest
    shows up (libvirt creates them before QEMU starts) and handed to
    ``on_taps`` then, so nothing is left to look up at the resume.
    """
    deadline = time.monotonic() + timeout_s
    seen = False
    taps: dict[str, str] = {}
    with Hypervisor.open(uri) as hv:
        guest: Guest | None = None
        while time.monotonic() < deadline:
            try:
                if guest is None:
                    guest = hv.lookup(domain)
                    seen = True
                if not taps:
                    taps = {n.mac: n.tap for n in guest_nics_from_xml(guest.xml()) if n.tap}
                    if taps:
                        on_taps(taps)
                if guest.state_name() == "running":
                    return _Resume(resumed=True, wall_s=time.time(), taps=taps)
            except DomainNotFound:
                if seen:
                    why = "the guest left this host (the migration failed)"
                    return _Resume(resumed=False, why_not=why)
                guest = None
            time.sleep(poll_s)
    why = f"the guest did not start running here within {timeout_s:g} s"
    return _Resume(resumed=False, why_not=why)


def _prepare_claims(
    claims: FdbClaims, nics: Sequence[Mapping[str, Any]], taps: Mapping[str, str]
) -> list[str]:
    """Prepare pointing each bridge's entry for each guest MAC at the guest's tap."""
    errors: list[str] = []
    for nic in nics:
        bridge, mac = str(nic["bridge"]), str(nic["mac"]).lower()
        tap = taps.get(mac, "")
        if not tap:
            errors.append(f"no tap known for {mac}: {bridge}'s entry for it not set")
            continue
        try:
            claims.prepare(bridge, mac, tap)
        except OSError as exc:
            errors.append(f"cannot point {bridge}'s entry for {mac} at {tap}: {exc}")
    return errors


def _taps_by_mac(uri: str, domain: str) -> dict[str, str]:
    try:
        with Hypervisor.open(uri) as hv:
            return {n.mac: n.tap for n in guest_nics_from_xml(hv.lookup(domain).xml())}
    except VmotionError as exc:
        log.warning("cannot read the guest's taps: %s", exc)
        return {}


def _verify_fdb(
    nics: Sequence[Mapping[str, Any]], taps: Mapping[str, str], *, timeout_s: float, start: float
) -> list[dict[str, object]]:
    """Wait until each bridge has each MAC on the guest's tap; report where and when."""
    pending = {(str(n["bridge"]), str(n["mac"]).lower()) for n in nics}
    found: dict[tuple[str, str], dict[str, object]] = {}
    deadline = start + timeout_s
    while pending:
        for bridge, mac in sorted(pending):
            entries = fdb_entries(bridge, [mac])
            tap = taps.get(mac, "")
            ports = [e.port for e in entries]
            if (tap and tap in ports) or (not tap and ports):
                after_ms = round((time.monotonic() - start) * 1000, 1)
                found[bridge, mac] = {
                    "bridge": bridge, "mac": mac, "port": tap or ports[0], "tap": tap,
                    "verified": True, "after_resume_ms": after_ms,
                }  # fmt: skip
        pending -= found.keys()
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.005)
    for bridge, mac in sorted(pending):
        entries = fdb_entries(bridge, [mac])
        found[bridge, mac] = {
            "bridge": bridge, "mac": mac, "tap": taps.get(mac, ""), "verified": False,
            "ports_seen": [e.port for e in entries],
            "detail": f"{bridge} had not learned {mac} on the guest's tap after "
            f"{timeout_s * 1000:.0f} ms (the guest has not sent a frame yet)",
        }  # fmt: skip
    return list(found.values())


def _announce_all(
    nics: Sequence[Mapping[str, Any]],
    schedule: AnnounceSchedule,
    start: float,
    *,
    send: Callable[[str, Sequence[Announcement], AnnounceSchedule], Sequence[SentFrame]] = (
        send_announcements
    ),
) -> tuple[list[dict[str, object]], list[str]]:
    """Send each NIC's announcements out of its bridge, one thread per bridge.

    A malformed MAC or address, or more addresses than ``MAX_ANNOUNCED_PER_NIC``,
    is reported and left out; the rest still goes out. Nothing a thread meets
    ends it silently: what it could not do is in the errors.
    """
    sent: list[dict[str, object]] = []
    errors: list[str] = []
    by_bridge: dict[str, list[Mapping[str, Any]]] = {}
    for nic in nics:
        by_bridge.setdefault(str(nic["bridge"]), []).append(nic)

    def frames_of(members: Sequence[Mapping[str, Any]]) -> list[Announcement]:
        frames: list[Announcement] = []
        for nic in members:
            mac, ips = str(nic.get("mac", "")), nic.get("ips") or []
            ips = [str(ip) for ip in ips] if isinstance(ips, list) else []
            if len(ips) > MAX_ANNOUNCED_PER_NIC:
                errors.append(
                    f"{len(ips)} addresses for {mac}: only the first {MAX_ANNOUNCED_PER_NIC} "
                    "announced"
                )
            found, problems = announcements_for(mac, ips[:MAX_ANNOUNCED_PER_NIC])
            frames += found
            errors.extend(problems)
        return frames

    def announce(bridge: str, members: Sequence[Mapping[str, Any]]) -> None:
        try:
            frames = frames_of(members)
            lead_ms = (time.monotonic() - start) * 1000
            records = send(bridge, frames, schedule) if frames else ()
        except Exception as exc:  # noqa: BLE001  a dead thread would report nothing at all
            errors.append(f"cannot send on {bridge}: {type(exc).__name__}: {exc}")
            return
        for record in records:
            item = record.as_dict()
            item["bridge"] = bridge
            item["at_ms"] = round(lead_ms + record.at_ms, 1)
            sent.append(item)

    threads = [
        threading.Thread(target=announce, args=(bridge, members), daemon=True)
        for bridge, members in by_bridge.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sent, errors


def op_announce(args: Mapping[str, Any]) -> dict[str, object]:
    """Agent op ``announce``: wait for the guest to resume here, announce it, verify.

    Args (JSON): ``domain``; ``nics`` [{mac, bridge, ips}]; ``count``,
    ``interval_ms`` (schedule); ``libvirt_uri`` (default ``qemu:///system``);
    ``wait_for_resume`` (default true); ``timeout_s``; ``poll_ms``;
    ``verify_timeout_ms``; ``claim_fdb`` (default true: point the local
    bridge's entry for each MAC at the guest's tap first, ``bridge.FdbClaims``).

    Returns:
        ``resumed``, ``resumed_at_wall_s``, ``fdb_claimed`` (bridge, mac, tap, the
        ports the entry pointed at before, at_ms), ``sent`` (kind, mac, ip, round,
        at_ms after resume), ``fdb`` (per bridge and MAC: verified, port,
        after_resume_ms).

    """
    uri = str(args.get("libvirt_uri") or "qemu:///system")
    domain = str(args["domain"])
    nics: list[Mapping[str, Any]] = list(args.get("nics") or [])
    schedule = AnnounceSchedule(
        count=int(args.get("count", 3)), interval_ms=int(args.get("interval_ms", 50))
    )
    poll_s = int(args.get("poll_ms", 5)) / 1000
    errors: list[str] = []
    claims = FdbClaims() if args.get("claim_fdb", True) else None

    def prepare(taps: Mapping[str, str]) -> None:
        if claims is not None:
            errors.extend(_prepare_claims(claims, nics, taps))

    try:
        resume = _await_resume(args, uri, domain, poll_s=poll_s, on_taps=prepare)
        if not resume.resumed:
            return {"resumed": False, "detail": resume.why_not}
        start = time.monotonic()
        # First the local bridge: frames for the guest that reach this host must go
        # to its tap, not back to the uplink where the bridge last saw the guest.
        set_entries, claim_errors = claims.apply() if claims is not None else ([], [])
    finally:
        if claims is not None:
            claims.close()
    errors.extend(claim_errors)
    claimed = [_claimed_row(c, start) for c in set_entries]
    taps = resume.taps
    sent, send_errors = _announce_all(nics, schedule, start)
    errors.extend(send_errors)
    fdb = _verify_fdb(
        nics, taps, timeout_s=int(args.get("verify_timeout_ms", 2000)) / 1000, start=start
    )
    return {
        "resumed": True,
        "resumed_at_wall_s": resume.wall_s,
        "resume_poll_ms": poll_s * 1000,
        "fdb_claimed": claimed,
        "sent": sorted(sent, key=lambda s: (float(str(s["at_ms"])), str(s["kind"]))),
        "fdb": fdb,
        "errors": errors,
    }


def _await_resume(
    args: Mapping[str, Any],
    uri: str,
    domain: str,
    *,
    poll_s: float,
    on_taps: Callable[[Mapping[str, str]], None],
) -> _Resume:
    """Wait for the incoming guest to run here (or, told not to wait, take it as resumed now).

    ``on_taps`` gets the guest's tap per MAC as soon as they are known, so the
    FDB claims are ready before the resume.
    """
    if args.get("wait_for_resume", True):
        timeout_s = float(args.get("timeout_s", 600))
        return _wait_running(uri, domain, timeout_s=timeout_s, poll_s=poll_s, on_taps=on_taps)
    resume = _Resume(resumed=True, wall_s=time.time(), taps=_taps_by_mac(uri, domain))
    on_taps(resume.taps)
    return resume


def _claimed_row(claim: Claimed, start: float) -> dict[str, object]:
    """One ``fdb_claimed`` entry of the reply, its time in ms after the resume."""
    return {
        "bridge": claim.bridge,
        "mac": claim.mac,
        "tap": claim.port,
        "replaced_ports": list(claim.replaced_ports),
        "at_ms": round((claim.at_s - start) * 1000, 1),
    }


# ---- client: the driver's post-switchover hook ----------------------------------------


@dataclass(frozen=True, slots=True)
class SwitchWatch:
    """A Linux bridge standing for the physical switch (the lab's ``sw0``)."""

    netns: str
    bridge: str

    @classmethod
    def parse(cls, text: str) -> SwitchWatch:
        """From ``NETNS/BRIDGE``.

        Raises:
            ValueError: not of that form.

        """
        netns, _, bridge = text.partition("/")
        if not netns or not bridge:
            msg = f"switch {text!r}: write NETNS/BRIDGE (e.g. net-switch/sw0)"
            raise ValueError(msg)
        return cls(netns, bridge)


class AddressReader(Protocol):
    """What address discovery reads of the guest (``virt.Guest`` has it)."""

    def interface_addresses(self, source: str) -> dict[str, tuple[str, ...]]:
        """The guest's addresses by MAC, as libvirt's ``source`` knows them."""
        ...


def discover_addresses(
    guest: AddressReader, nics: Sequence[GuestNic], config: NotifyConfig
) -> tuple[GuestAddress, ...]:
    """Every address found for the guest's NICs, each with its source and the verdict.

    Declared (``--guest-ip``) and nwfilter ``IP`` addresses first, then each of
    libvirt's sources in ``config.address_sources``; ``notify.choose_announced``
    decides which are announced (only the host-vouched ones, capped per NIC).
    """
    found: list[GuestAddress] = []
    for index, nic in enumerate(nics):
        found += [
            GuestAddress(nic.mac, ip, AddressSource.GUEST_IP)
            for ip in config.declared_for(nic.mac, first_nic=index == 0)
        ]
        found += [GuestAddress(nic.mac, ip, AddressSource.NWFILTER) for ip in nic.filter_ips]
    macs = {n.mac for n in nics}
    for name in config.address_sources:
        try:
            source = AddressSource(name)
            by_mac = guest.interface_addresses(name)
        except (ValueError, VmotionError) as exc:
            log.debug("address source %s: %s", name, exc)
            continue
        found += [
            GuestAddress(mac, ip, source)
            for mac, ips in by_mac.items()
            if mac in macs
            for ip in ips
        ]
    return choose_announced(found)


def _sources_summary(addresses: Sequence[GuestAddress]) -> str:
    used = dict.fromkeys(a.source.value for a in addresses if a.announced)
    return "+".join(used) or "none"


@dataclass
class NetworkCutover:
    """The driver's post-switchover step: announce, verify, clean up, report.

    Args:
        domain: the guest.
        source: open connection to the source host.
        source_uri: the source's URI (its agent is reached the same way).
        dest_uri: the destination's URI.
        config: notify settings.
        switch: a bridge to watch for the guest's MAC (lab), optional.
        agent_for: URI -> agent client (tests and the lab replace it).
        timeout_s: how long the destination's announcer waits for the resume: the
            migration's budget (``max_duration_s``) plus ``ANNOUNCE_MARGIN_S``.
        answer_grace_s: after the landing, how long the announcer may take to answer
            beyond its verify timeout before it is cancelled.

    The announcer is cancelled (ended on the destination and reaped) when the
    migration fails, when it does not answer in time, and when this process
    dies (the agent ends its operation when its stdin closes): it never fires
    stale claims and announcements on a later retry.

    """

    domain: str
    source: Hypervisor
    source_uri: str
    dest_uri: str
    config: NotifyConfig = field(default_factory=NotifyConfig)
    switch: SwitchWatch | None = None
    agent_for: Callable[[str], AgentClient] = RemoteHost.for_uri
    timeout_s: float = 300.0 + ANNOUNCE_MARGIN_S
    answer_grace_s: float = ANSWER_GRACE_S
    name: str = SECTION
    _nics: tuple[GuestNic, ...] = ()
    _addresses: tuple[GuestAddress, ...] = ()
    _thread: threading.Thread | None = None
    _call: StartedCall | None = None
    _reply: ops.AnnounceReply | None = None
    _error: str = ""
    _watcher: FdbWatcher | None = None
    _errors: list[str] = field(default_factory=list)

    def arm(self) -> None:
        """Read the guest's NICs and addresses; start the destination's announcer."""
        try:
            guest = self.source.lookup(self.domain)
            self._nics = guest_nics_from_xml(guest.xml())
            self._addresses = discover_addresses(guest, self._nics, self.config)
        except VmotionError as exc:
            self._errors.append(f"cannot read the guest's NICs: {exc.message}")
            return
        notified = [n for n in self._nics if self.config.notify_on(n.bridge)]
        if self.switch is not None and self._nics:
            try:
                self._watcher = FdbWatcher(
                    self.switch.bridge, [n.mac for n in self._nics], netns=self.switch.netns
                )
                self._watcher.start()
            except OSError as exc:
                self._errors.append(f"cannot watch switch {self.switch}: {exc}")
        if not notified:
            return
        request = ops.AnnounceRequest(
            domain=self.domain,
            nics=tuple(
                {"mac": n.mac, "bridge": n.bridge, "ips": self._announced_ips(n.mac)}
                for n in notified
            ),
            count=self.config.schedule.count,
            interval_ms=self.config.schedule.interval_ms,
            verify_timeout_ms=self.config.verify_timeout_ms,
            timeout_s=self.timeout_s,
        )
        try:
            self._call = ops.ANNOUNCE.start(
                self.agent_for(self.dest_uri), request, timeout_s=self.timeout_s + ANNOUNCE_MARGIN_S
            )
        except VmotionError as exc:
            self._error = exc.message + (f" ({exc.hint})" if exc.hint else "")
            return
        self._thread = threading.Thread(
            target=self._announce, args=(self._call,), name="cutover-announce", daemon=True
        )
        self._thread.start()

    def _announced_ips(self, mac: str) -> list[str]:
        return [a.ip for a in self._addresses if a.announced and a.mac == mac]

    def _announce(self, call: StartedCall) -> None:
        try:
            self._reply = ops.ANNOUNCE.parse_reply(call.result(), host=self.dest_uri)
        except VmotionError as exc:
            self._error = exc.message + (f" ({exc.hint})" if exc.hint else "")

    def _cancel(self) -> bool:
        """End the destination's announcer if it still runs; True if it had to be ended."""
        if self._call is None or self._thread is None or not self._thread.is_alive():
            return False
        self._call.cancel()
        self._thread.join()
        return True

    def _await_announcer(self) -> None:
        """Wait for the announcer's answer; past the grace (or on Ctrl-C) end it there."""
        if self._thread is None:
            return
        try:
            self._thread.join(timeout=self.config.verify_timeout_ms / 1000 + self.answer_grace_s)
        finally:
            if self._cancel():
                self._error = "it did not answer in time (ended it there)"

    def finish(self, *, landed: bool) -> Mapping[str, object]:
        """Collect the announcer's result, flush the source's FDB, read the switch.

        Not landed: cancel the announcer (nothing is left waiting on the destination).
        """
        if not landed:
            cancelled = self._cancel()
            if self._watcher is not None:
                self._watcher.stop()
            skipped: dict[str, object] = {"result": "skipped: the migration did not complete"}
            if cancelled:
                skipped["announcer"] = "cancelled on the destination"
            return skipped
        self._await_announcer()
        section: dict[str, object] = {
            "notify": {n.bridge: self.config.notify_on(n.bridge) for n in self._nics},
            "nics": [{"mac": n.mac, "bridge": n.bridge} for n in self._nics],
            "addresses": [a.as_dict() for a in self._addresses],
            "address_source": _sources_summary(self._addresses),
            "schedule": {
                "count": self.config.schedule.count,
                "interval_ms": self.config.schedule.interval_ms,
            },
        }
        reply = self._reply
        if self._error:
            self._errors.append(f"announcer on the destination: {self._error}")
        resumed_wall = reply.resumed_at_wall_s if reply is not None else None
        if reply is not None:
            section.update(_summarize_reply(reply))
        if self.config.flush_source_fdb and self._nics:
            section["source_fdb_removed"] = self._flush_source()
        if self._watcher is not None:
            section["switch"] = _switch_section(self._watcher.stop(), self.switch, resumed_wall)
        section["errors"] = list(self._errors)
        section["result"] = "ok" if not self._errors else "degraded"
        return section

    def _flush_source(self) -> list[object]:
        removed: list[object] = []
        agent = self.agent_for(self.source_uri)
        for bridge in sorted({n.bridge for n in self._nics}):
            macs = [n.mac for n in self._nics if n.bridge == bridge]
            try:
                reply = ops.FDB_FLUSH.call(agent, ops.FdbRequest(bridge=bridge, macs=tuple(macs)))
            except VmotionError as exc:
                self._errors.append(f"stale FDB entries on the source not removed: {exc.message}")
                continue
            removed.extend({"bridge": bridge, **entry} for entry in reply.removed)
        return removed


def _summarize_reply(reply: ops.AnnounceReply) -> dict[str, object]:
    out: dict[str, object] = {"resumed_seen": reply.resumed}
    if not reply.resumed:
        out["detail"] = reply.detail
        return out
    sent_list = [dict(item) for item in reply.sent]
    counts: dict[str, int] = {}
    for item in sent_list:
        if not item.get("error"):
            kind = str(item.get("kind"))
            counts[kind] = counts.get(kind, 0) + 1
    out.update(
        {
            "resumed_at_wall_s": reply.resumed_at_wall_s,
            "resume_poll_ms": reply.resume_poll_ms,
            "announcements_sent": counts,
            "announcements": sent_list,
            "first_announcement_after_resume_ms": next((i.get("at_ms") for i in sent_list), None),
            "dest_fdb": [dict(f) for f in reply.fdb],
            "dest_fdb_claimed": [dict(c) for c in reply.fdb_claimed],
        }
    )
    if reply.errors:
        out["announce_errors"] = list(reply.errors)
    return out


def _switch_section(
    changes: Sequence[tuple[float, str, str]], switch: SwitchWatch | None, resumed_wall: object
) -> dict[str, object]:
    """When the watched switch moved the guest's MAC, relative to the resume."""
    section: dict[str, object] = {"bridge": f"{switch.netns}/{switch.bridge}" if switch else ""}
    if not changes:
        section["learned"] = False
        return section
    first_port = changes[0][2]
    moves = [c for c in changes if c[2] != first_port]
    _, mac, final_port = changes[-1]
    section.update({"mac": mac, "port_before": first_port, "port_after": final_port})
    learned_wall = moves[0][0] if moves else None
    section["learned"] = learned_wall is not None
    if learned_wall is not None and isinstance(resumed_wall, float):
        section["learned_after_resume_ms"] = round((learned_wall - resumed_wall) * 1000, 1)
    return section


# ---- pre-flight: the network checks, gathered ------------------------------------------
