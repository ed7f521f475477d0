"""Names and addresses of the namespace lab.

Pure apart from one environment read: ``VMOTION_LAB_ID`` (default ``vmo``)
names the lab, so several labs can exist side by side (one per developer or
test run). Namespace names and the state directory derive from it; addresses
do not need to, because each lab's network lives only inside its own
namespaces. Every address here lives only inside namespaces the lab creates;
nothing in the lab ever targets an address outside them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final


@dataclass(frozen=True, slots=True)
class LabHost:
    """One emulated hypervisor host of the lab."""

    name: str
    """Hostname inside the host's UTS namespace (also the libvirt hostname)."""
    netns: str
    """Network namespace name (``ip netns``)."""
    addr: str
    """The host's address on the lab network (on its ``br0``)."""
    host_uuid: str
    """libvirtd ``host_uuid``; distinct per host so libvirt sees two hosts."""
    switch_port: str
    """Name of this host's port (veth end) on the switch bridge."""
    bridge_mac: str
    """Fixed MAC of the host's ``br0``. A bridge without one takes the lowest MAC of
    its ports, and libvirt gives every guest tap ``fe:54:...``: when a tap joins
    with a MAC below the uplink's random one, ``br0`` becomes ``fe:54:00:77:00:50``
    on one host while the same address is the running guest's tap on the other;
    each host then drops the other's frames as its own and the migration link dies
    (seen: p2p keepalive timeout, "received packet on uplink0 with own address as
    source address")."""
    tcg_cpu_without: tuple[str, ...] = ()
    """CPU features this host's QEMU leaves out of its TCG CPU (``max``): such a host
    plays an older destination CPU. libvirt probes QEMU for the TCG host CPU, so
    ``compareHypervisorCPU`` there names the missing features for a guest that needs
    them, as on real hosts of two CPU generations (``hostconf.build_qemu_wrapper``)."""

    @property
    def uri(self) -> str:
        """URI that reaches this host's libvirtd over TCP from the lab network."""
        return f"qemu+tcp://{self.addr}/system"

    @property
    def tls_uri(self) -> str:
        """URI that reaches this host's libvirtd over TLS, with the lab's client files.

        ``pkipath`` names the controller's CA, certificate and key (``lab.pki``), so
        nothing of the lab goes into the machine's own /etc/pki.
        """
        return f"qemu+tls://{self.addr}/system?pkipath={STATE_DIR / 'pki' / 'client'}"


def _lab_id() -> str:
    value = os.environ.get("VMOTION_LAB_ID", "vmo")
    if not re.fullmatch(r"[a-z][a-z0-9]{0,7}", value):
        msg = f"VMOTION_LAB_ID={value!r}: use 1-8 lowercase letters/digits, starting with a letter"
        raise ValueError(msg)
    return value


LAB_ID: Final = _lab_id()
PREFIX_LEN: Final = 24
SWITCH_NETNS: Final = f"{LAB_ID}-switch"
SWITCH_BRIDGE: Final = "sw0"
SWITCH_BRIDGE_MAC: Final = "02:77:00:00:00:fe"
CLIENT_NETNS: Final = f"{LAB_ID}-client"
CLIENT_ADDR: Final = "10.77.0.100"
CLIENT_SWITCH_PORT: Final = "port-client"
HOST_BRIDGE: Final = "br0"
HOST_UPLINK: Final = "uplink0"

HOST_A: Final = LabHost(
    name="hosta",
    netns=f"{LAB_ID}-hosta",
    addr="10.77.0.1",
    host_uuid="7a6f0000-0000-4000-8000-00000000000a",
    switch_port="port-hosta",
    bridge_mac="02:77:00:00:00:0a",
)
HOST_B: Final = LabHost(
    name="hostb",
    netns=f"{LAB_ID}-hostb",
    addr="10.77.0.2",
    host_uuid="7a6f0000-0000-4000-8000-00000000000b",
    switch_port="port-hostb",
    bridge_mac="02:77:00:00:00:0b",
    # The older CPU: a guest with a Skylake-Server CPU runs on hosta but not here.
    tcg_cpu_without=("pku",),
)
HOST_C: Final = LabHost(
    name="hostc",
    netns=f"{LAB_ID}-hostc",
    addr="10.77.0.3",
    host_uuid="7a6f0000-0000-4000-8000-00000000000c",
    switch_port="port-hostc",
    bridge_mac="02:77:00:00:00:0c",
)
HOSTS: Final = (HOST_A, HOST_B)
"""The hosts every lab has (the demo and most tests use these two)."""
EXTRA_HOSTS: Final = (HOST_C,)
"""Hosts ``lab up --hosts 3`` adds on the same switch (evacuation spreads guests over them)."""
ALL_HOSTS: Final = (*HOSTS, *EXTRA_HOSTS)

GUEST_NAME: Final = "vmo-guest"
GUEST_ADDR: Final = "10.77.0.50"
GUEST_MAC: Final = "52:54:00:77:00:50"
MAX_NAMED_GUESTS: Final = 40
"""More lab guests (``lab guest start --name``) take 10.77.0.51.. and 52:54:00:77:00:33.."""

STATE_DIR: Final = Path("/var/lib/vmotion-lab" + ("" if LAB_ID == "vmo" else f"-{LAB_ID}"))
"""Per-host libvirt state (etc, run, lib, log, cache) and lab bookkeeping."""
IMAGE_CACHE_DIR: Final = Path("/var/cache/libvirt-vmotion/guest")
"""Built guest images, one directory per recipe hash."""

STORAGE_NETNS: Final = f"{LAB_ID}-storage"
"""Namespace of the lab's shared-storage server (GlusterFS), on the switch."""
STORAGE_ADDR: Final = "10.77.0.10"
STORAGE_SWITCH_PORT: Final = "port-storage"
SHARED_DIR: Final = STATE_DIR / "shared"
"""Where both lab hosts mount the shared storage: the same path on each. In the
root mount namespace this stays an empty directory: only the hosts see the
shared file system there."""


def lab_hosts() -> tuple[LabHost, ...]:
    """The hosts this lab has now: the two every lab has, and the extra ones that are up."""
    extra = tuple(h for h in EXTRA_HOSTS if Path(f"/run/netns/{h.netns}").exists())
    return (*HOSTS, *extra)


def guest_identity(index: int) -> tuple[str, str]:
    """Address and MAC of the lab guest with ``index`` (0: the default guest).

    >>> guest_identity(0)
    ('10.77.0.50', '52:54:00:77:00:50')
    >>> guest_identity(3)
    ('10.77.0.53', '52:54:00:77:00:53')
    """
    if not 0 <= index <= MAX_NAMED_GUESTS:
        msg = f"lab guest index {index}: expected 0..{MAX_NAMED_GUESTS}"
        raise ValueError(msg)
    return f"10.77.0.{50 + index}", f"52:54:00:77:00:{50 + index:02d}"


def host_by_name(name: str) -> LabHost:
    """Return the lab host called ``name`` (``hosta``/``hostb``/``hostc``, also ``a``...).

    Raises:
        KeyError: no such lab host.

    """
    for host in ALL_HOSTS:
        if name in (host.name, host.name.removeprefix("host")):
            return host
    raise KeyError(name)
