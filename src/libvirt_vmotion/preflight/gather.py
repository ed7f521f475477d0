"""Gather pre-flight facts at the edge: libvirt's remote API, then our agent.

I/O: talks to both hosts' libvirtd through ``virt`` (which alone imports
libvirt) and to the destination's agent over ssh through ``agent``. Holds no
policy: it only fills the fact dataclasses of ``checks.facts``.

Everything libvirt's remote API can answer works against a destination
without our package. What only the host knows (bridge port flags, MemAvailable,
hugepages, reservations, whether a disk path exists there) comes from the
agent; when the agent cannot run, ``AgentFacts.available`` is False and carries
the reason, and the checks that needed it say so.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from libvirt_vmotion.adapters import ops
from libvirt_vmotion.adapters.agent import AgentOperationFailed, AgentUnavailable, RemoteHost
from libvirt_vmotion.adapters.linkprobe import LinkMeasurement, measure_link
from libvirt_vmotion.adapters.virt import Guest, Hypervisor
from libvirt_vmotion.errors import Unsupported, VmotionError
from libvirt_vmotion.model import MIB, QEMU_OVERHEAD_BYTES, PastRun, TlsMode
from libvirt_vmotion.policy import DEFAULT_INITIAL_DOWNTIME_MS, DEFAULT_MAX_DOWNTIME_MS
from libvirt_vmotion.preflight import domxml, netcheck
from libvirt_vmotion.preflight.facts import (
    AgentFacts,
    BridgeFacts,
    CpuCompat,
    CpuFacts,
    DiskView,
    DomainCapsFacts,
    GuestFacts,
    HostFacts,
    NetworkFacts,
    PortFacts,
    PreflightFacts,
    ReservationView,
    StpState,
)
from libvirt_vmotion.preflight.forecast import Forecast, ForecastInputs, forecast
from libvirt_vmotion.preflight.linkrate import (
    RateChoice,
    bound_switchover,
    choose_rate,
    final_round_rate,
)
from libvirt_vmotion.preflight.result import CheckResult, Verdict
from libvirt_vmotion.preflight.tls import HostTls, TlsInputs

log = logging.getLogger(__name__)

QEMU_RSS_OVERHEAD_MIB = {"qemu": 170.0, "kvm": 40.0}
"""QEMU's own share of its resident memory, by virt type: the bulk round sends only the
guest's touched pages, RSS minus this. TCG keeps a large translation cache resident
(~170 MiB measured for the 512 MiB lab guest: RSS 282 MiB, bulk round ~113 MiB)."""


def host_facts(hv: Hypervisor, *, arch: str, virt_type: str) -> HostFacts:
    """Identity, versions, CPUs, memory and machine types of one host."""
    ident = hv.identity()
    machines, emulators = domxml.capabilities_machines(
        hv.capabilities_xml(), arch=arch, virt_type=virt_type
    )
    return HostFacts(
        uri=hv.uri,
        hostname=ident.hostname,
        host_uuid=ident.host_uuid,
        libvirt_version=ident.libvirt_version,
        qemu_version=ident.hypervisor_version,
        arch=arch,
        cpus=hv.host_cpus(),
        free_memory_bytes=_free_memory(hv),
        machines=machines,
        emulators=emulators,
    )


def _free_memory(hv: Hypervisor) -> int:
    try:
        return hv.free_memory_bytes()
    except Unsupported:
        log.debug("%s cannot report free memory", hv.uri)
        return 0


def _bridge(dest: Hypervisor, name: str) -> BridgeFacts | None:
    try:
        exists, active, xml = dest.bridge_interface(name)
    except VmotionError as exc:
        log.debug("cannot inspect bridge %s on %s: %s", name, dest.uri, exc.message)
        return None
    if not exists:
        return BridgeFacts(name=name, exists=False)
    root = ET.fromstring(xml)  # noqa: S314  our own libvirtd's XML
    members = [i.get("name", "") for i in root.findall("bridge/interface")]
    mtu = root.find("mtu")
    return BridgeFacts(
        name=name,
        exists=True,
        up=active,
        # Names only: libvirt's XML has no link kinds, so role_of falls back to names.
        ports=tuple(PortFacts(name=m) for m in members if m),
        mtu=int(mtu.get("size", "0")) if mtu is not None else None,
    )


def _cpu(dest: Hypervisor, guest: GuestFacts, xml: str) -> CpuFacts:
    cpu = domxml.cpu_xml(xml)
    if not cpu or guest.cpu_mode in {"host-passthrough", "host-model", "maximum"}:
        detail = f"guest CPU mode {guest.cpu_mode or 'default'} follows the host"
        return CpuFacts(CpuCompat.SUPERSET, detail)
    try:
        result, detail = dest.compare_guest_cpu(
            cpu,
            emulator=guest.emulator or None,
            arch=guest.arch,
            machine=guest.machine or None,
            virt_type=guest.virt_type,
        )
    except VmotionError as exc:
        return CpuFacts(CpuCompat.UNKNOWN, exc.message)
    return CpuFacts(CpuCompat(result), detail)


def _domain_caps(dest: Hypervisor, guest: GuestFacts) -> DomainCapsFacts:
    try:
        xml = dest.domain_capabilities_xml(
            emulator=guest.emulator or None,
            arch=guest.arch,
            machine=guest.machine or None,
            virt_type=guest.virt_type,
        )
    except VmotionError as exc:
        return DomainCapsFacts(available=False, detail=exc.message)
    return domxml.domain_caps(xml)


def _agent_facts(agent: RemoteHost | None, bridges: list[str], paths: list[str]) -> AgentFacts:
    if agent is None:
        return AgentFacts(available=False, error="agent not used (--no-agent)")
    try:
        got = ops.HOST_FACTS.call(
            agent, ops.HostFactsRequest(bridges=tuple(bridges), paths=tuple(paths))
        )
    except (AgentUnavailable, AgentOperationFailed) as exc:
        return AgentFacts(available=False, error=exc.message)
    ports = {br: tuple(_port_facts(p) for p in plist) for br, plist in got.bridge_ports.items()}
    view_raw = got.reservation
    view = None
    if view_raw is not None:
        view = ReservationView(
            reserved_memory_bytes=view_raw.reserved_memory_bytes,
            reserved_vcpus=view_raw.reserved_vcpus,
            inbound_active=view_raw.inbound_active,
            inbound_limit=view_raw.inbound_limit,
            memory_limit_bytes=view_raw.memory_limit_bytes,
            vcpu_limit=view_raw.vcpu_limit,
            **_maintenance_fields(view_raw.maintenance),
        )
    return AgentFacts(
        available=True,
        mem_available_bytes=got.mem_available_bytes,
        hugepages_free_bytes=got.hugepages_free_bytes,
        bridge_ports=ports,
        reservation=view,
        paths_exist=dict(got.paths_exist),
    )


def _port_facts(flags: ops.PortFlagsReply) -> PortFacts:
    """One port of ``host-facts`` in the one bridge model (its link kind is not reported)."""
    # The kernel has only the five states; a state the agent could not name blocks as before.
    state = StpState.__members__.get(flags.state.upper(), StpState.DISABLED)
    return PortFacts(
        name=flags.port, stp_state=state, learning=flags.learning, unicast_flood=flags.flooding
    )


def _disk_views(dest: Hypervisor, guest: GuestFacts, agent: AgentFacts) -> Mapping[str, DiskView]:
    views: dict[str, DiskView] = {}
    for disk in guest.disks:
        if not disk.source or disk.kind not in {"file", "block"}:
            continue
        pool: str | None = None
        why = "no storage pool on the destination holds it"
        try:
            pool = dest.volume_pool_for_path(disk.source)
        except Unsupported as exc:
            why = f"destination has no storage driver ({exc.message})"
        except VmotionError as exc:
            why = exc.message
        if pool is not None:
            views[disk.source] = DiskView(disk.source, visible=True, how=f"storage pool {pool}")
        elif disk.source in agent.paths_exist:
            seen = agent.paths_exist[disk.source]
            how = "the path exists there (agent)" if seen else "no such file there (agent)"
            views[disk.source] = DiskView(disk.source, visible=seen, how=how)
        else:
            views[disk.source] = DiskView(disk.source, visible=None, how=why)
    return views


def guest_facts(guest: Guest) -> tuple[GuestFacts, str]:
    """The guest's facts and its live XML."""
    xml = guest.xml()
    try:
        job = guest.has_job()
    except Unsupported:  # a driver without job info has no jobs either
        job = False
    return domxml.guest_facts(xml, state=guest.state_name(), job_active=job), xml


def gather(
    source: Hypervisor,
    dest: Hypervisor,
    domain: str,
    *,
    agent: RemoteHost | None,
    qemu_overhead_bytes: int = QEMU_OVERHEAD_BYTES,
) -> PreflightFacts:
    """Collect every fact the checks need.

    Raises:
        DomainNotFound: no such guest on the source.
        ConnectionFailed: a host stopped answering.

    """
    guest = source.lookup(domain)
    gfacts, xml = guest_facts(guest)
    src = host_facts(source, arch=gfacts.arch, virt_type=gfacts.virt_type)
    dst = host_facts(dest, arch=gfacts.arch, virt_type=gfacts.virt_type)
    networks: dict[str, NetworkFacts] = {}
    bridge_names: list[str] = []
    for nic in gfacts.nics:
        if nic.kind == "network" and nic.source not in networks:
            try:
                exists, active, bridge = dest.virtual_network(nic.source)
            except VmotionError as exc:
                log.debug("cannot inspect network %s: %s", nic.source, exc.message)
                continue
            networks[nic.source] = NetworkFacts(nic.source, exists, active, bridge)
            if bridge:
                bridge_names.append(bridge)
        elif nic.kind == "bridge":
            bridge_names.append(nic.source)
    bridge_names = sorted(set(bridge_names))
    bridges = {b: facts for b in bridge_names if (facts := _bridge(dest, b)) is not None}
    paths = [d.source for d in gfacts.disks if d.source and d.kind in {"file", "block"}]
    agent_facts = _agent_facts(agent, bridge_names, paths)
    return PreflightFacts(
        source=src,
        dest=dst,
        guest=gfacts,
        cpu=_cpu(dest, gfacts, xml),
        dest_caps=_domain_caps(dest, gfacts),
        bridges=bridges,
        networks=networks,
        disks=_disk_views(dest, gfacts, agent_facts),
        agent=agent_facts,
        qemu_overhead_bytes=qemu_overhead_bytes,
    )


@dataclass(frozen=True, slots=True)
class Measured:
    """The forecast and how its dirty rate was measured."""

    forecast: Forecast | None
    window_s: float
    error: str = ""
    switchover_mib_s: float | None = None
    """The learned switchover rate as bounded by this run's link (``bound_switchover``)."""


def _bulk_bytes(
    guest: Guest, facts: GuestFacts, source_agent: RemoteHost | None
) -> tuple[int, str]:
    """Data of the bulk round: guest RAM resident on the source (agent), else an RSS guess."""
    if source_agent is not None:
        try:
            got = ops.GUEST_MEMORY.call(
                source_agent,
                ops.GuestMemoryRequest(domain=facts.name, memory_bytes=facts.memory_bytes),
            )
            resident = got.resident_bytes
            if resident > 0:
                return min(resident, facts.memory_bytes), "guest RAM resident on the source"
        except (AgentUnavailable, AgentOperationFailed) as exc:
            log.debug("no guest memory detail from the source agent: %s", exc.message)
    resident = guest.resident_bytes()
    if not resident:
        return facts.memory_bytes, "guest RAM size"
    overhead = QEMU_RSS_OVERHEAD_MIB.get(facts.virt_type, 40.0) * MIB
    return int(min(max(resident - overhead, 0), facts.memory_bytes)), "QEMU RSS less its share"


@dataclass(frozen=True, slots=True)
class Measuring:
    """A dirty-rate measurement under way, and what runs beside it.

    Attributes:
        bulk: the bulk-size lookup (source agent).
        link: the link measurement source -> destination (None: not measured, e.g.
            because a cap was given).

    """

    bulk: Future[tuple[int, str]]
    link: Future[LinkMeasurement] | None = None
    window_s: float = 1.0
    """The dirty-rate window in use (QEMU's whole second where it refused a shorter one)."""


def start_measuring(  # noqa: PLR0913  the guest and what to measure beside it, keyword-only
    source: Hypervisor,
    domain: str,
    *,
    window_s: float,
    dest_uri: str = "",
    measure_link_too: bool = False,
    measure_rate: bool = True,
) -> Measuring | None:
    """Start the dirty-rate measurement now, if no job runs (None if it did not start).

    Measuring takes ``window_s`` of waiting, asking the source's agent how much
    guest RAM is resident takes an ssh round trip, and (``measure_link_too``)
    the link source -> ``dest_uri`` is measured for a second by our agents on
    both hosts: all run while the other facts are gathered, so pre-flight
    delays the migration as little as possible.
    """
    try:
        guest = source.lookup(domain)
        if guest.has_job() or not guest.is_running():
            return None
        facts = domxml.guest_facts(guest.xml())
        if measure_rate:  # else the caller knows a recent rate (``session.gate.RateMemo``)
            window_s = guest.start_dirty_rate_calc(seconds=window_s)
    except VmotionError as exc:
        log.debug("dirty-rate measurement not started: %s", exc.message)
        return None
    source_agent = RemoteHost.for_uri(source.uri)
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="measure")
    bulk = pool.submit(_bulk_bytes, guest, facts, source_agent)
    link = None
    dest_host = urlsplit(dest_uri).hostname
    if measure_link_too and dest_host:
        link = pool.submit(measure_link, source_agent, RemoteHost.for_uri(dest_uri), dest_host)
    pool.shutdown(wait=False)
    return Measuring(bulk=bulk, link=link, window_s=window_s)


def measure_forecast(  # noqa: PLR0913  the forecast's inputs, keyword-only
    source: Hypervisor,
    domain: str,
    *,
    source_agent: RemoteHost | None = None,
    bandwidth_mib_s: int | None,
    max_downtime_ms: int | None,
    window_s: float,
    sleep: Callable[[float], None],
    started: Measuring | None = None,
    past: Sequence[PastRun] = (),
    switchover_mib_s: float | None = None,
    initial_downtime_ms: int | None = None,
    known_rate_mib_s: float | None = None,
) -> Measured:
    """Measure the dirty rate (page sampling) and compute the forecast.

    Never measures while a job runs on the guest (it would disturb a migration).
    ``started``: what ``start_measuring`` began (the window overlapped with
    gathering the other facts); only wait for its results. ``past``: what earlier
    migrations between the two hosts achieved (``history``); the rate assumed is
    the slowest of the cap, the measured link and that (``linkrate.choose_rate``).
    ``switchover_mib_s``: the learned rate of the unthrottled final round, if any.
    ``known_rate_mib_s``: a dirty rate this command measured moments ago (not measured again).
    """
    guest = source.lookup(domain)
    window_s = started.window_s if started is not None else window_s
    try:
        sampled = _sample_guest(
            guest,
            started=started,
            window_s=window_s,
            sleep=sleep,
            source_agent=source_agent,
            known_rate_mib_s=known_rate_mib_s,
        )
    except VmotionError as exc:
        return Measured(None, window_s, exc.message, switchover_mib_s)
    if sampled is None:
        return Measured(None, window_s, "a job runs on the guest; not measuring", switchover_mib_s)
    rate, bulk, bulk_source = sampled
    cap_mib_s = float(bandwidth_mib_s) if bandwidth_mib_s else None
    chosen, link_mib_s = _bandwidth(started, cap_mib_s=cap_mib_s, past=past)
    switchover_mib_s = bound_switchover(switchover_mib_s, link_mib_s=link_mib_s)
    inputs = ForecastInputs(
        memory_mib=bulk / MIB,
        memory_source=bulk_source,
        switchover_bandwidth_mib_s=final_round_rate(
            learned_mib_s=switchover_mib_s, cap_mib_s=cap_mib_s, link_mib_s=link_mib_s
        ),
        dirty_rate_mib_s=rate,
        bandwidth_mib_s=chosen.mib_s,
        max_downtime_ms=max_downtime_ms or DEFAULT_MAX_DOWNTIME_MS,  # the controller's budget
        initial_downtime_ms=initial_downtime_ms or DEFAULT_INITIAL_DOWNTIME_MS,  # its first rung
        bandwidth_source=chosen.source,
        bandwidth_origin=chosen.origin,
    )
    return Measured(forecast(inputs), window_s, switchover_mib_s=switchover_mib_s)


def _bandwidth(
    started: Measuring | None, *, cap_mib_s: float | None, past: Sequence[PastRun]
) -> tuple[RateChoice, float | None]:
    """The forecast's bandwidth (saying where it came from) and the link's measured rate."""
    link = _link_result(started)
    link_mib_s = link.mib_s if link else None
    chosen = choose_rate(
        cap_mib_s=cap_mib_s,
        link_mib_s=link_mib_s,
        link_detail=link.detail if link else "",
        history=past,
    )
    if link is not None and link.mib_s is None:
        chosen = replace(chosen, source=f"{chosen.source}; link not measured: {link.detail}")
    return chosen, link_mib_s


def _sample_guest(  # noqa: PLR0913  the guest and how it is measured, keyword-only
    guest: Guest,
    *,
    started: Measuring | None,
    window_s: float,
    sleep: Callable[[float], None],
    source_agent: RemoteHost | None,
    known_rate_mib_s: float | None = None,
) -> tuple[float, int, str] | None:
    """The guest's dirty rate and bulk size: (rate MiB/s, bulk bytes, where the bulk came from).

    Returns None, measuring nothing, when a job runs on the guest (sampling would
    disturb a migration). With ``started``, only waits for what it began.

    Raises:
        VmotionError: the measurement or the bulk lookup failed.

    """
    if started:
        rate = known_rate_mib_s
        if rate is None:
            rate = guest.wait_dirty_rate_mib_s(sleep=sleep)
        bulk, bulk_source = started.bulk.result(timeout=120)
        return rate, bulk, bulk_source
    if guest.has_job():
        return None
    rate = known_rate_mib_s
    if rate is None:
        rate = guest.measure_dirty_rate_mib_s(seconds=window_s, sleep=sleep)
    bulk, bulk_source = _bulk_bytes(guest, domxml.guest_facts(guest.xml()), source_agent)
    return rate, bulk, bulk_source


def _link_result(started: Measuring | None) -> LinkMeasurement | None:
    """The link measurement begun beside the dirty-rate window, if any."""
    if started is None or started.link is None:
        return None
    try:
        return started.link.result(timeout=60)
    except TimeoutError:
        return LinkMeasurement(None, "the link measurement did not finish within 60 s")


def bridge_checks(  # noqa: PLR0913  the hosts, the guest and the seams, keyword-only
    *,
    source: Hypervisor,
    domain: str,
    source_uri: str,
    dest_uri: str,
    notify_off: frozenset[str] = frozenset(),
    agent_for: Callable[[str], ops.AgentPort] = RemoteHost.for_uri,
) -> tuple[CheckResult, ...]:
    """The network pre-flight (``netcheck``) for moving ``domain`` to ``dest_uri``.

    Reads the guest's NICs from its XML, the bridges' facts on both hosts
    through the agent, and judges them (``netcheck.check_networks``). A host
    whose agent cannot be reached yields a ``network-facts`` warning, not an
    exception. ``vmotion netcheck`` prints the results; the gate folds them into
    the check report (``network.check_bridge_setup``).

    Args:
        source: the source host.
        domain: the guest.
        source_uri: the source's URI.
        dest_uri: the destination's URI.
        notify_off: bridges with notify switches off (``"*"``: all).
        agent_for: the agent of a host, by URI.

    Raises:
        VmotionError: the guest cannot be read on the source.

    """
    domain_xml = source.lookup(domain).xml()
    nics = netcheck.guest_nics_from_xml(domain_xml)
    results = list(
        netcheck.unchecked_nics(domain_xml, host=urlsplit(source_uri).hostname or source_uri)
    )
    if not nics:
        return tuple(results)
    bridges = sorted({n.bridge for n in nics})
    facts: dict[str, dict[str, BridgeFacts]] = {}
    dest_host = urlsplit(dest_uri).hostname or "destination"
    for role, uri in (("dest", dest_uri), ("source", source_uri)):
        try:
            found = _read_bridges(agent_for(uri), bridges)
        except VmotionError as exc:
            results.append(_unreadable_bridges(role, uri, exc))
            continue
        facts[role] = {b.name: b for b in found}
        if role == "dest" and found:
            dest_host = found[0].host
    if "dest" not in facts:
        return tuple(results)
    results += netcheck.check_networks(
        nics,
        dest=facts["dest"],
        source=facts.get("source", {}),
        notify_off=notify_off,
        dest_host=dest_host,
    )
    return tuple(results)


def _read_bridges(agent: ops.AgentPort, bridges: list[str]) -> list[BridgeFacts]:
    """The named bridges' facts as the host's agent reads them (netlink)."""
    reply = ops.BRIDGE_FACTS.call(agent, ops.BridgesRequest(bridges=tuple(bridges)))
    return [BridgeFacts.from_dict(b) for b in reply.bridges]


def _unreadable_bridges(role: str, uri: str, exc: VmotionError) -> CheckResult:
    return netcheck.bridge_verdict(
        "network-facts",
        Verdict.WARNING,
        urlsplit(uri).hostname or uri,
        "",
        f"Could not read the {role} host's bridges: {exc.message}",
        exc.hint or "Install libvirt-vmotion there (the agent reads bridge facts).",
    )


def _maintenance_fields(mark: ops.MaintenanceMark | None) -> dict[str, str]:
    """The agent's maintenance mark as ``ReservationView`` fields (none: empty)."""
    if mark is None:
        return {}
    return {"maintenance_since": mark.since_utc or "unknown time", "maintenance_by": mark.by}


def _host_tls(agent: RemoteHost) -> HostTls:
    """One host's migration TLS facts through its agent (unavailable: says why)."""
    try:
        reply = ops.to_json(ops.TLS_FACTS.call(agent, ops.Empty()))
    except (AgentUnavailable, AgentOperationFailed) as exc:
        return HostTls.unavailable(agent.label, exc.message)
    return HostTls.from_agent(reply, host=str(reply.get("hostname") or agent.label))


def tls_inputs(
    mode: TlsMode, *, source_agent: RemoteHost, dest_agent: RemoteHost, now_s: float
) -> TlsInputs:
    """Both hosts' migration TLS facts (asked side by side), with ``--tls``.

    ``--tls off`` asks nothing: the migration will not use them.
    """
    if mode is TlsMode.OFF:
        return TlsInputs(
            mode,
            HostTls.unavailable(source_agent.label, "not asked (--tls off)"),
            HostTls.unavailable(dest_agent.label, "not asked (--tls off)"),
            now_s,
        )
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="tls-facts") as pool:
        source = pool.submit(_host_tls, source_agent)
        dest = pool.submit(_host_tls, dest_agent)
        return TlsInputs(mode, source.result(), dest.result(), now_s)
