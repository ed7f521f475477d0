"""Start, find and remove the lab guest; run lab commands in the client namespace.

I/O. The lab's own tooling reaches each host's libvirtd through that host's
local UNIX socket (its ``/run`` lives under ``STATE_DIR/<host>/run`` on the real
filesystem), so it works from the root namespace; commands that need the lab
network (the guest's address, the hosts' TCP URIs) run in the client namespace.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from libvirt_vmotion.adapters.agent import ISOLATED
from libvirt_vmotion.adapters.virt import Hypervisor
from libvirt_vmotion.errors import DomainNotFound, VmotionError
from libvirt_vmotion.lab import command_name
from libvirt_vmotion.lab.constants import (
    CLIENT_NETNS,
    GUEST_NAME,
    HOST_BRIDGE,
    MAX_NAMED_GUESTS,
    SHARED_DIR,
    STATE_DIR,
    LabHost,
    guest_identity,
    lab_hosts,
)
from libvirt_vmotion.lab.guestdef import (
    CacheMode,
    DiskMode,
    LabDiskSpec,
    LabGuestSpec,
    VirtType,
    build_domain_xml,
)
from libvirt_vmotion.lab.hostconf import host_paths
from libvirt_vmotion.lab.image import GuestImage, kernel_cmdline
from libvirt_vmotion.observe.workload import wait_until_ready

log = logging.getLogger(__name__)


def local_uri(host: LabHost) -> str:
    """URI of the host's libvirtd over its UNIX socket, usable from the root namespace."""
    sock = host_paths(host).run / "libvirt" / "libvirt-sock"
    return f"qemu+unix:///system?socket={sock}"


def in_client_netns() -> bool:
    """True if this process already runs in the lab's client network namespace."""
    try:
        mine = Path("/proc/self/ns/net").stat().st_ino
        client = Path(f"/run/netns/{CLIENT_NETNS}").stat().st_ino
    except OSError:
        return False
    return mine == client


def client_command(argv: Sequence[str]) -> list[str]:
    """``argv`` prefixed to run in the client network namespace.

    With the lab's agent settings (``topology.agent_env``): the CLI there reaches
    each host's agent over that host's sshd, the production path.
    """
    from libvirt_vmotion.lab.topology import agent_env  # noqa: PLC0415  pyroute2 only when used

    env = [f"{key}={value}" for key, value in sorted(agent_env().items())]
    return ["ip", "netns", "exec", CLIENT_NETNS, *(["env", *env] if env else []), *argv]


def self_command(*args: str) -> list[str]:
    """Command line of this package's CLI with ``args``, as a command line for a subprocess.

    Isolated (``agent.ISOLATED``): root runs the lab and the bench from any directory.
    """
    return [sys.executable, *ISOLATED, "-m", "libvirt_vmotion", *args]


def run_in_client(argv: Sequence[str]) -> int:
    """Run ``argv`` in the client namespace, attached to our terminal; return its exit code."""
    if not Path(f"/run/netns/{CLIENT_NETNS}").exists():
        msg = "The lab is not up (no client namespace)."
        raise VmotionError(msg, hint=f"Start it: {command_name()} lab up")
    # Put our venv's bin first so `vmotion` and its python resolve inside too.
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    return subprocess.call(client_command(argv), env=env)


def find_guest(name: str = GUEST_NAME) -> list[tuple[LabHost, str]]:
    """Where the guest is defined: (host, state) for each lab host that has it."""
    found: list[tuple[LabHost, str]] = []
    for host in lab_hosts():
        with Hypervisor.open(local_uri(host)) as hv:
            try:
                # One lookup, then its state: a guest being undefined (the tail of a
                # migration) may vanish between two calls; then it is not there.
                found.append((host, hv.lookup(name).state_name()))
            except DomainNotFound:
                continue
    return found


def remove_guest(name: str = GUEST_NAME) -> None:
    """Destroy and undefine the guest on every lab host (no error if absent)."""
    for host in lab_hosts():
        subprocess.run(
            ["virsh", "-q", "-c", local_uri(host), "destroy", name],
            capture_output=True,
            check=False,
        )
        subprocess.run(
            ["virsh", "-q", "-c", local_uri(host), "undefine", name],
            capture_output=True,
            check=False,
        )


_GUESTS_FILE = STATE_DIR / "guests.json"
"""Which index (address, MAC) each named lab guest has (``lab guest start --name``)."""


def guest_index(name: str) -> int:
    """The index of lab guest ``name``: 0 for the default guest, else its own, kept in a file.

    Raises:
        VmotionError: every index is taken (``lab guest stop --name`` frees one).

    """
    if name == GUEST_NAME:
        return 0
    try:
        known: dict[str, int] = json.loads(_GUESTS_FILE.read_text())
    except (OSError, ValueError):
        known = {}
    if name in known:
        return known[name]
    free = sorted(set(range(1, MAX_NAMED_GUESTS + 1)) - set(known.values()))
    if not free:
        msg = f"All {MAX_NAMED_GUESTS} lab guest addresses are taken."
        raise VmotionError(msg, hint="Stop some: vmotion lab guest stop --name NAME")
    known[name] = free[0]
    _GUESTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    _GUESTS_FILE.write_text(json.dumps(known, sort_keys=True))
    return free[0]


def guest_addr(name: str = GUEST_NAME) -> str:
    """The lab address of guest ``name``."""
    return guest_identity(guest_index(name))[0]


LOCAL_IMAGE_DIR = "/var/lib/libvirt/images"
"""Each lab host's own image directory (per-host ``/var/lib/libvirt``)."""
DEFAULT_DISK_MIB = 256
DEFAULT_DISK_KIB_S = 256


def disk_path(mode: DiskMode, name: str = GUEST_NAME) -> str:
    """Where the lab guest's disk image lives for ``mode`` (same path on both hosts)."""
    base = str(SHARED_DIR / "images") if mode is DiskMode.SHARED else LOCAL_IMAGE_DIR
    return f"{base}/{name}.raw"


def disk_cmdline(*, kib_s: int, device: str = "/dev/vda") -> str:
    """Kernel command-line words that turn the workload's disk log on."""
    if kib_s < 0:
        msg = f"disk rate {kib_s} KiB/s: must be >= 0"
        raise ValueError(msg)
    return f"vmotion.disk={device} vmotion.disk_kib_s={kib_s}"


def create_disk(host: LabHost, mode: DiskMode, *, size_mib: int) -> str:
    """Create a fresh (sparse, zeroed) raw image for the guest; return its path.

    Shared: starts the lab's shared storage if needed and creates the image there,
    from ``host``. Local: creates it in ``host``'s image directory and removes a
    leftover copy at the same path on the other hosts (a copy must start fresh).
    """
    from libvirt_vmotion.lab import storage, topology  # noqa: PLC0415  pyroute2 only when used

    path = disk_path(mode)
    if mode is DiskMode.SHARED:
        storage.up()
    else:
        for other in lab_hosts():
            if other != host:
                topology.run_on_host(other, ["rm", "-f", path], timeout_s=20)
    topology.run_on_host(host, ["rm", "-f", path], timeout_s=20)
    topology.run_on_host(
        host, ["qemu-img", "create", "-q", "-f", "raw", path, f"{size_mib}M"], timeout_s=30
    )
    return path


def start_guest(  # noqa: PLR0913  each a documented guest setting, keyword-only
    host: LabHost,
    image: GuestImage,
    *,
    memory_mib: int = 512,
    wss_mib: int = 64,
    rate_mib_s: int = 20,
    mode: str = "paced",
    virt_type: VirtType = VirtType.QEMU,
    disk: DiskMode | None = None,
    disk_mib: int = DEFAULT_DISK_MIB,
    disk_kib_s: int = DEFAULT_DISK_KIB_S,
    disk_cache: CacheMode = CacheMode.NONE,
    name: str = GUEST_NAME,
    bridge: str = HOST_BRIDGE,
) -> str:
    """Define and start a fresh lab guest on ``host`` (removing any old one first).

    With ``disk``, the guest gets a fresh raw disk of ``disk_mib`` MiB (shared or
    local) and its workload writes a verified log to it at ``disk_kib_s`` KiB/s.

    Returns:
        The domain XML used.

    """
    remove_guest(name)
    addr, mac = guest_identity(guest_index(name))
    cmdline = kernel_cmdline(
        addr_cidr=f"{addr}/24", wss_mib=wss_mib, rate_mib_s=rate_mib_s, mode=mode
    )
    disk_spec = None
    if disk is not None:
        disk_spec = LabDiskSpec(path=create_disk(host, disk, size_mib=disk_mib), cache=disk_cache)
        cmdline = f"{cmdline} {disk_cmdline(kib_s=disk_kib_s)}"
    spec = LabGuestSpec(
        kernel=image.kernel,
        initrd=image.initrd,
        cmdline=cmdline,
        memory_mib=memory_mib,
        virt_type=virt_type,
        disk=disk_spec,
        name=name,
        mac=mac,
        bridge=bridge,
    )
    xml = build_domain_xml(spec)
    with Hypervisor.open(local_uri(host)) as hv:
        hv.define_and_start(xml)
    log.info("started %s on %s", spec.name, host.name)
    return xml


def wait_for_workload(timeout_s: float = 90.0, *, name: str = GUEST_NAME) -> None:
    """Wait until the guest workload answers (checked from the client namespace).

    Raises:
        VmotionError: it did not answer in time.

    """
    addr = guest_addr(name)
    if in_client_netns():
        wait_until_ready(addr, timeout_s=timeout_s)
        return
    cmd = client_command(
        self_command("lab", "guest", "wait", "--timeout", f"{timeout_s:g}", "--name", name)
    )
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        msg = f"The lab guest's workload did not answer at {addr} within {timeout_s:g} s."
        raise VmotionError(
            msg,
            hint="Look at the guest console log under "
            f"{host_paths(lab_hosts()[0]).log}/qemu/{name}-serial.log "
            f"({result.stderr.strip()[-300:]})",
        )
