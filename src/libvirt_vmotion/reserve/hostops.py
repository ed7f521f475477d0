"""Agent operations for pre-flight and reservations, run ON a host (see agent.py).

I/O: reads /proc/meminfo, netlink (bridge port flags via pyroute2), the file
system and the host's reservation store. Holds no policy: the checks live in
``preflight`` (``checks/``), the capacity decision in ``reservation.plan``.

Operations (registered in ``adapters.ops.REGISTRY``):

- ``host-facts``   {bridges: [...], paths: [...]} -> memory, hugepages, port flags,
                   which paths exist, the reservation view
- ``reserve``      {id, domain, owner, memory_bytes, vcpus} -> the reservation
- ``release``      {id} or {domain} -> {released: N}
- ``reservations`` {} -> {reservations: [...]} (expired ones are released first)
- ``guest-memory`` {domain, memory_bytes} -> {resident_bytes}: how much of the guest's
                   RAM is resident in its QEMU process (the bulk round's data), from
                   ``/proc/PID/smaps``: the anonymous mapping(s) the size of guest RAM
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from libvirt_vmotion.errors import UsageError
from libvirt_vmotion.preflight.domxml import interface_name_problem
from libvirt_vmotion.reserve.store import (
    ReservationRequest,
    ReservationStore,
    load_capacity,
)

_BRPORT_STATES: Final = {
    0: "disabled",
    1: "listening",
    2: "learning",
    3: "forwarding",
    4: "blocking",
}


def meminfo_bytes(path: Path = Path("/proc/meminfo")) -> dict[str, int]:
    """``/proc/meminfo`` as bytes (hugepage counts stay counts)."""
    values: dict[str, int] = {}
    for line in path.read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if not parts:
            continue
        number = int(parts[0])
        values[key] = number * 1024 if parts[1:] == ["kB"] else number
    return values


def mem_available_bytes() -> int:
    """The kernel's MemAvailable estimate (free + reclaimable)."""
    return meminfo_bytes().get("MemAvailable", 0)


def _bridge_ports(bridges: list[str]) -> dict[str, list[dict[str, object]]]:
    from pyroute2 import IPRoute  # noqa: PLC0415  only this operation needs netlink

    result: dict[str, list[dict[str, object]]] = {b: [] for b in bridges}
    with IPRoute() as ipr:
        index_of = {name: (ipr.link_lookup(ifname=name) or [None])[0] for name in bridges}
        wanted = {idx: name for name, idx in index_of.items() if idx is not None}
        for link in ipr.get_links(family=socket.AF_BRIDGE):
            master = link.get_attr("IFLA_MASTER")
            if master not in wanted:
                continue
            info = link.get_attr("IFLA_PROTINFO")
            if info is None:
                continue
            result[wanted[master]].append(
                {
                    "port": link.get_attr("IFLA_IFNAME"),
                    "state": _BRPORT_STATES.get(info.get_attr("IFLA_BRPORT_STATE"), "unknown"),
                    "learning": bool(info.get_attr("IFLA_BRPORT_LEARNING")),
                    "flooding": bool(info.get_attr("IFLA_BRPORT_UNICAST_FLOOD")),
                }
            )
    return result


def _strings(args: Mapping[str, object], key: str) -> list[str]:
    value = args.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        msg = f"agent argument {key!r} must be a list of strings"
        raise UsageError(msg)
    return [str(v) for v in value]


def _interface_names(args: Mapping[str, object], key: str) -> list[str]:
    names = _strings(args, key)
    for name in names:
        problem = interface_name_problem(name)
        if problem is not None:
            msg = f"agent argument {key!r}: {problem}"
            raise UsageError(msg)
    return names


def _store() -> ReservationStore:
    return ReservationStore(host=socket.gethostname())


def reservation_view() -> dict[str, object]:
    """What the store holds and what the host allows (for the capacity checks)."""
    capacity = load_capacity()
    store = _store()
    now_s = time.time()
    rows = store.list(now_s=now_s)
    mark = store.maintenance(now_s=now_s)
    return {
        "maintenance": None if mark is None else mark.to_dict(),
        "reserved_memory_bytes": sum(r.memory_bytes for r in rows),
        "reserved_vcpus": sum(r.vcpus for r in rows),
        "inbound_active": len(rows),
        "inbound_limit": capacity.inbound_slots,
        "memory_limit_bytes": None
        if capacity.memory_limit_mib is None
        else capacity.memory_limit_mib * 1024 * 1024,
        "vcpu_limit": capacity.vcpu_limit,
        "reservations": [r.to_dict() for r in rows],
    }


def op_host_facts(args: Mapping[str, object]) -> dict[str, object]:
    """Facts only the host itself knows (see the module docstring)."""
    info = meminfo_bytes()
    huge_free = info.get("HugePages_Free", 0) * info.get("Hugepagesize", 0)
    return {
        "hostname": socket.gethostname(),
        "mem_available_bytes": info.get("MemAvailable", 0),
        "hugepages_free_bytes": huge_free,
        "bridge_ports": _bridge_ports(_interface_names(args, "bridges")),
        "paths_exist": {p: os.path.exists(p) for p in _strings(args, "paths")},  # noqa: PTH110  plain existence
        "reservation": reservation_view(),
    }


def _int(args: Mapping[str, object], key: str) -> int:
    value = args.get(key)
    if not isinstance(value, int) or value < 0:
        msg = f"agent argument {key!r} must be a non-negative integer, got {value!r}"
        raise UsageError(msg)
    return value


def op_reserve(args: Mapping[str, object]) -> dict[str, object]:
    """Reserve memory, vCPUs and an inbound slot (raises ReservationError if it does not fit).

    Returns the row and ``longest_lease_s``, this host's longest lease.
    """
    request = ReservationRequest(
        reservation_id=str(args.get("id", "")),
        domain=str(args.get("domain", "")),
        owner=str(args.get("owner", "")),
        memory_bytes=_int(args, "memory_bytes"),
        vcpus=_int(args, "vcpus"),
    )
    if not request.reservation_id or not request.domain:
        msg = "agent reserve needs 'id' and 'domain'"
        raise UsageError(msg)
    capacity = load_capacity()
    row = _store().reserve(
        request,
        capacity=capacity,
        mem_available_bytes=mem_available_bytes(),
        now_s=time.time(),
    )
    # The owner needs it to say when this host frees a reservation it cannot release.
    return {**row.to_dict(), "longest_lease_s": capacity.longest_lease_s}


def op_release(args: Mapping[str, object]) -> dict[str, object]:
    """Release one reservation by id, or all of one domain."""
    count = _store().release(
        now_s=time.time(),
        reservation_id=str(args.get("id", "")),
        domain=str(args.get("domain", "")),
    )
    return {"released": count}


def guest_ram_resident_bytes(smaps: str, *, memory_bytes: int) -> int:
    """Rss of the mappings exactly the size of guest RAM in an smaps text (pure)."""
    want_kib = memory_bytes // 1024
    total_kib = 0
    size_kib = -1
    for line in smaps.splitlines():
        key, _, rest = line.partition(":")
        if key == "Size":
            size_kib = int(rest.split()[0])
        elif key == "Rss" and size_kib == want_kib:
            total_kib += int(rest.split()[0])
    return total_kib * 1024


def op_guest_memory(args: Mapping[str, object]) -> dict[str, object]:
    """Resident guest RAM of a running guest on this host (see the module docstring)."""
    domain = str(args.get("domain", ""))
    memory = _int(args, "memory_bytes")
    pid_file = Path("/run/libvirt/qemu") / f"{domain}.pid"
    try:
        pid = int(pid_file.read_text().strip())
        smaps = Path(f"/proc/{pid}/smaps").read_text()
    except (OSError, ValueError) as exc:
        msg = f"cannot read the QEMU process of '{domain}': {exc}"
        raise UsageError(msg) from exc
    return {"resident_bytes": guest_ram_resident_bytes(smaps, memory_bytes=memory), "pid": pid}


def op_reservations(_args: Mapping[str, object]) -> dict[str, object]:
    """The unexpired reservations (expired ones are deleted on the way)."""
    return reservation_view()


def op_maintenance(args: Mapping[str, object]) -> dict[str, object]:
    """Enter, exit or read this host's maintenance mark (``vmotion maintenance``)."""
    action = str(args.get("action", "status"))
    store = _store()
    now_s = time.time()
    if action == "enter":
        store.enter_maintenance(by=str(args.get("by", "")) or "vmotion", now_s=now_s)
    elif action == "exit":
        store.exit_maintenance(now_s=now_s)
    elif action != "status":
        msg = f"agent maintenance action {action!r}: expected enter, exit or status"
        raise UsageError(msg)
    return {"hostname": socket.gethostname(), **reservation_view()}
