"""Linux bridge facts and forwarding database, read and changed on this host.

I/O: pyroute2 netlink only; no policy (verdicts live in ``netcheck``). These run
on a hypervisor host, normally as agent operations (``adapters.ops.REGISTRY``):

- ``bridge_facts``  {"bridges": [names]}                -> {"host", "bridges": [facts]}
- ``fdb_query``     {"bridge", "macs": [..]}            -> {"host", "entries": [..]}
- ``fdb_flush``     {"bridge", "macs": [..], "keep_port"} -> {"host", "removed": [..]}

The functions' ``netns`` keyword reads a bridge in a named network namespace
of this machine, for the namespace lab (its switch is one; ``--watch-switch``).
It opens only a namespace that exists (pyroute2 would create a missing one), and
the agent operations refuse it: a production host's agent never enters or makes
a namespace.
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pyroute2 import IPRoute

from libvirt_vmotion.errors import UsageError
from libvirt_vmotion.preflight.domxml import interface_name_problem
from libvirt_vmotion.preflight.facts import BridgeFacts, PortFacts, StpState

NUD_REACHABLE: Final = 0x02
NUD_PERMANENT: Final = 0x80
NTF_SELF: Final = 0x02
NTF_MASTER: Final = 0x04
_NETNS_DIR: Final = Path("/run/netns")
_NETNS_HINT: Final = (
    "A network namespace is only for the namespace lab (--watch-switch NETNS/BRIDGE names "
    "one of its namespaces); nothing here creates one."
)


def _open(netns: str = "") -> Any:  # noqa: ANN401  pyroute2 is untyped
    """A netlink socket here, or in the existing lab namespace ``netns`` (never made).

    Raises:
        FileNotFoundError: ``netns`` does not exist here (or is not a name).

    """
    if not netns:
        return IPRoute()
    if "/" in netns or netns in {".", ".."} or not (_NETNS_DIR / netns).exists():
        msg = f"network namespace {netns!r} does not exist on this host ({_NETNS_HINT})"
        raise FileNotFoundError(errno.ENOENT, msg)
    # flags=0: pyroute2's default (O_CREAT) would create a missing namespace.
    return IPRoute(netns=netns, flags=0)


@contextmanager
def _ipr(netns: str = "") -> Iterator[Any]:
    ipr = _open(netns)
    try:
        yield ipr
    finally:
        ipr.close()


def _kind(link: Any) -> tuple[str, Any, Any]:  # noqa: ANN401  pyroute2 messages are untyped
    info = link.get_attr("IFLA_LINKINFO")
    if info is None:
        return "", None, None
    return (
        info.get_attr("IFLA_INFO_KIND") or "",
        info.get_attr("IFLA_INFO_DATA"),
        info.get_attr("IFLA_INFO_SLAVE_DATA"),
    )


def _flag(data: Any, attr: str, default: bool) -> bool:  # noqa: ANN401
    if data is None:
        return default
    value = data.get_attr(attr)
    return default if value is None else bool(value)


def read_bridge(name: str, *, host: str = "", netns: str = "") -> BridgeFacts:
    """Facts about bridge ``name`` on this host (``exists=False`` if there is none)."""
    host = host or socket.gethostname()
    with _ipr(netns) as ipr:
        links = list(ipr.get_links())
    by_name = {link.get_attr("IFLA_IFNAME"): link for link in links}
    bridge = by_name.get(name)
    if bridge is None or _kind(bridge)[0] != "bridge":
        return BridgeFacts(host=host, name=name, exists=False)
    _, data, _ = _kind(bridge)
    ports = []
    for link in links:
        if link.get_attr("IFLA_MASTER") != bridge["index"]:
            continue
        kind, _, slave = _kind(link)
        state = slave.get_attr("IFLA_BRPORT_STATE") if slave is not None else None
        ports.append(
            PortFacts(
                name=link.get_attr("IFLA_IFNAME"),
                kind=kind,
                up=link.get_attr("IFLA_OPERSTATE") in {"UP", "UNKNOWN"},
                stp_state=StpState(state if state is not None else StpState.FORWARDING),
                learning=_flag(slave, "IFLA_BRPORT_LEARNING", default=True),
                unicast_flood=_flag(slave, "IFLA_BRPORT_UNICAST_FLOOD", default=True),
                mcast_flood=_flag(slave, "IFLA_BRPORT_MCAST_FLOOD", default=True),
                bcast_flood=_flag(slave, "IFLA_BRPORT_BCAST_FLOOD", default=True),
                mtu=int(link.get_attr("IFLA_MTU") or 0),
            )
        )
    return BridgeFacts(
        host=host,
        name=name,
        exists=True,
        up=bool(bridge["flags"] & 1),  # IFF_UP: a bridge without ports reports operstate DOWN
        mtu=int(bridge.get_attr("IFLA_MTU") or 0),
        stp_enabled=bool(data.get_attr("IFLA_BR_STP_STATE")) if data is not None else False,
        forward_delay_cs=int(data.get_attr("IFLA_BR_FORWARD_DELAY") or 0) if data else 0,
        ageing_time_cs=int(data.get_attr("IFLA_BR_AGEING_TIME") or 0) if data else 30000,
        vlan_filtering=bool(data.get_attr("IFLA_BR_VLAN_FILTERING")) if data else False,
        ports=tuple(ports),
        mac=str(bridge.get_attr("IFLA_ADDRESS") or ""),
        addr_assign_type=None if netns else _addr_assign_type(name),
    )


def _addr_assign_type(ifname: str) -> int | None:
    """``addr_assign_type`` from sysfs (netlink does not carry it); None if unreadable.

    Only for this network namespace: sysfs shows the namespace it was mounted in.
    """
    try:
        return int(Path(f"/sys/class/net/{ifname}/addr_assign_type").read_text().strip())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class FdbEntry:
    """One forwarding-database entry of a bridge."""

    mac: str
    port: str
    vlan: int | None
    permanent: bool

    def as_dict(self) -> dict[str, object]:
        """JSON form."""
        return {"mac": self.mac, "port": self.port, "vlan": self.vlan, "permanent": self.permanent}


def _fdb(ipr: Any, bridge: str, macs: Sequence[str]) -> list[tuple[FdbEntry, int, int]]:  # noqa: ANN401
    found = ipr.link_lookup(ifname=bridge)
    if not found:
        return []
    br_index = found[0]
    names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
    wanted = {m.lower() for m in macs}
    out = []
    for msg in ipr.get_neighbours(family=socket.AF_BRIDGE):
        if msg.get_attr("NDA_MASTER") != br_index or msg["flags"] & NTF_SELF:
            continue
        mac = (msg.get_attr("NDA_LLADDR") or "").lower()
        if mac not in wanted:
            continue
        entry = FdbEntry(
            mac=mac,
            port=names.get(msg["ifindex"], str(msg["ifindex"])),
            vlan=msg.get_attr("NDA_VLAN"),
            permanent=bool(msg["state"] & NUD_PERMANENT),
        )
        out.append((entry, msg["ifindex"], br_index))
    return out


def fdb_entries(bridge: str, macs: Sequence[str], *, netns: str = "") -> tuple[FdbEntry, ...]:
    """Entries of ``bridge``'s FDB for ``macs`` (the bridge's own, not NIC-local ones)."""
    with _ipr(netns) as ipr:
        return tuple(entry for entry, _, _ in _fdb(ipr, bridge, macs))


def fdb_remove(
    bridge: str, macs: Sequence[str], *, keep_port: str = "", netns: str = ""
) -> tuple[FdbEntry, ...]:
    """Remove stale learned entries for ``macs`` from ``bridge``'s FDB.

    Stale means: on a port that is not an uplink. After the guest left this
    host, the right way to its MAC is out of the uplink, so an entry there
    (learned from its announcements) is kept; one on a guest port (an old tap,
    a port another guest now holds) sends its traffic nowhere.

    Args:
        bridge: the bridge.
        macs: the guest's MACs.
        keep_port: also leave entries on this port alone.
        netns: named network namespace, "" for this one.

    Returns:
        The entries removed.

    """
    removed = []
    uplinks = {p.name for p in read_bridge(bridge, netns=netns).uplinks()}
    with _ipr(netns) as ipr:
        for entry, port_index, _ in _fdb(ipr, bridge, macs):
            if entry.permanent or entry.port in uplinks or (keep_port and entry.port == keep_port):
                continue
            args: dict[str, object] = {"ifindex": port_index, "lladdr": entry.mac}
            if entry.vlan is not None:
                args["vlan"] = entry.vlan
            ipr.fdb(
                "del", flags=NTF_MASTER, **args
            )  # the bridge's entry, as `bridge fdb del ... master`
            removed.append(entry)
    return tuple(removed)


@dataclass(frozen=True, slots=True)
class Claimed:
    """One entry :class:`FdbClaims` set."""

    bridge: str
    mac: str
    port: str
    replaced_ports: tuple[str, ...]
    """Where the entry pointed while the guest was incoming (other ports: stale)."""
    at_s: float
    """Monotonic time the entry was set."""


class FdbClaims:
    """Point bridge entries for MACs at the guest's taps, prepared ahead, set at once.

    Why: the destination's bridge has usually learned the guest's MAC on its
    *uplink* while the guest ran elsewhere (from the guest's broadcasts). After
    the move it then drops traffic for the guest arriving on that uplink (a
    bridge never forwards a frame back out of the port it came in on) until the
    guest itself sends a frame through its tap. QEMU's self-announce goes
    through the tap and fixes that; ours is sent out of the bridge and cannot,
    so we set the entry. It is an ordinary dynamic entry (``bridge fdb replace
    MAC dev TAP master dynamic``): it ages and moves with learning like any
    learned one.

    Every lookup (socket, port index, the entries before) happens in
    :meth:`prepare`, while the incoming guest is still paused; :meth:`apply`
    at the resume is one netlink message per entry. Done at the resume with
    dumps instead, on a busy 2-core host, it took ~95 ms, and the guest's
    traffic arriving from the uplink was dropped all that time.
    """

    def __init__(self, *, netns: str = "") -> None:
        """Open the netlink socket (raises OSError if the netns is missing)."""
        self._ipr = _open(netns)
        self._pending: list[tuple[str, str, str, int, tuple[str, ...]]] = []

    def prepare(self, bridge: str, mac: str, port: str) -> None:
        """Look up what :meth:`apply` will need to point ``bridge``'s ``mac`` at ``port``.

        Raises:
            OSError: the port does not exist on this host.

        """
        found = self._ipr.link_lookup(ifname=port)
        if not found:
            msg = f"no port {port} on this host"
            raise OSError(msg)
        before = tuple(e.port for e, _, _ in _fdb(self._ipr, bridge, [mac]) if e.port != port)
        self._pending.append((bridge, mac.lower(), port, found[0], before))

    def apply(self) -> tuple[list[Claimed], list[str]]:
        """Set every prepared entry; returns what was set and what could not be."""
        claimed: list[Claimed] = []
        errors: list[str] = []
        for bridge, mac, port, index, before in self._pending:
            try:
                self._ipr.fdb(
                    "replace", ifindex=index, lladdr=mac, state=NUD_REACHABLE, flags=NTF_MASTER
                )
            except OSError as exc:  # pyroute2's NetlinkError is an OSError
                errors.append(f"cannot point {bridge}'s entry for {mac} at {port}: {exc}")
                continue
            claimed.append(Claimed(bridge, mac, port, before, time.monotonic()))
        return claimed, errors

    def close(self) -> None:
        """Close the netlink socket."""
        self._ipr.close()


class FdbWatcher:
    """Records when a bridge's FDB entries for some MACs appear or change port.

    Polls every ``interval_s`` from one thread over one netlink socket (in
    ``netns`` if given); :meth:`stop` returns ``(wall time, mac, port)`` for the
    first sighting of each MAC and for every later change of port. The time is
    taken when the dump that showed the change has been read: the change
    happened at or before it (on a busy machine a dump can take tens of ms, so
    a time taken before it could precede the change).
    """

    def __init__(
        self, bridge: str, macs: Sequence[str], *, netns: str = "", interval_s: float = 0.002
    ) -> None:
        """Prepare; opens the netlink socket (raises OSError if the netns is missing)."""
        self._bridge = bridge
        self._macs = [m.lower() for m in macs]
        self._interval_s = interval_s
        self._ipr = _open(netns)
        self._stop = threading.Event()
        self._changes: list[tuple[float, str, str]] = []
        self._thread = threading.Thread(target=self._run, name="fdb-watch", daemon=True)

    def start(self) -> None:
        """Start polling."""
        self._thread.start()

    def _run(self) -> None:
        last: dict[str, str] = {}
        while not self._stop.is_set():
            try:
                entries = _fdb(self._ipr, self._bridge, self._macs)
            except OSError:
                entries = []
            now = time.time()
            for entry, _, _ in entries:
                if entry.permanent or last.get(entry.mac) == entry.port:
                    continue
                last[entry.mac] = entry.port
                self._changes.append((now, entry.mac, entry.port))
            self._stop.wait(self._interval_s)

    def stop(self) -> list[tuple[float, str, str]]:
        """Stop and return the changes seen."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        self._ipr.close()
        return list(self._changes)


# ---- agent operations ----------------------------------------------------------------


def _str_list(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def _ifnames(value: object) -> list[str]:
    """Interface names from an agent argument (each checked: they become sysfs paths)."""
    names = _str_list(value)
    for name in names:
        problem = interface_name_problem(name)
        if problem is not None:
            raise UsageError(problem, hint="Name a bridge as 'ip link' shows it.")
    return names


def _no_netns(args: Mapping[str, object]) -> None:
    """The agent reads this host's own bridges only (see the module docstring)."""
    if "netns" in args:
        msg = "the agent does not take 'netns': it reads this host's own bridges"
        raise UsageError(msg, hint=_NETNS_HINT)


def op_bridge_facts(args: Mapping[str, object]) -> dict[str, object]:
    """Agent op ``bridge_facts``: facts for each named bridge."""
    _no_netns(args)
    host = socket.gethostname()
    facts = [read_bridge(name, host=host) for name in _ifnames(args.get("bridges"))]
    return {"host": host, "bridges": [f.as_dict() for f in facts]}


def op_fdb_query(args: Mapping[str, object]) -> dict[str, object]:
    """Agent op ``fdb_query``: FDB entries of a bridge for some MACs."""
    _no_netns(args)
    (bridge,) = _ifnames([args.get("bridge")])
    entries = fdb_entries(bridge, _str_list(args.get("macs")))
    return {"host": socket.gethostname(), "entries": [e.as_dict() for e in entries]}


def op_fdb_flush(args: Mapping[str, object]) -> dict[str, object]:
    """Agent op ``fdb_flush``: remove stale learned entries for some MACs."""
    _no_netns(args)
    (bridge,) = _ifnames([args.get("bridge")])
    removed = fdb_remove(
        bridge,
        _str_list(args.get("macs")),
        keep_port=str(args.get("keep_port") or ""),
    )
    return {"host": socket.gethostname(), "removed": [e.as_dict() for e in removed]}
