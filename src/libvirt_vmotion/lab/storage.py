"""The lab's shared storage: a GlusterFS volume served from a namespace, mounted by both hosts.

I/O: namespaces and veths (pyroute2), the storage holder process, ``gluster``,
``mount -t glusterfs`` inside each host's mount namespace, fcntl lock probes.

Why GlusterFS and not NFS: the lab machine's kernel has neither the NFS server
(``nfsd``) nor the NFS client (no ``nfs`` file system, no modules to load), so
kernel NFS cannot run here at all. GlusterFS is a real network file system from
Debian packages that needs only FUSE on the clients: its server is userspace
(``glusterd`` + one brick process) and runs in its own network namespace on the
lab switch, at ``STORAGE_ADDR``. Every byte a host reads or writes on the share
crosses the lab network, and POSIX (fcntl) locks are forwarded to the server's
lock translator, so a lock taken by virtlockd on hosta is seen by hostb: the
semantics the lock manager and the migration need, as on NFSv4.

Layout (per lab, under ``STATE_DIR/storage``): ``brick/`` (the data), ``glusterd/``,
``run/``, ``log/`` bind-mounted over ``/var/lib/glusterd``, ``/run``,
``/var/log/glusterfs`` in the storage holder's private mount namespace. Both
hosts mount the volume at ``SHARED_DIR`` (same path) in their own mount
namespaces; in the root namespace that directory stays empty.

Started on demand (``lab storage up``, or ``lab guest start --disk shared``), not
by ``lab up``; ``lab down`` removes it with the rest (its namespace is in
``topology.LAB_NETNS``, and every process of it lives in a lab namespace).
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pyroute2 import IPRoute

from libvirt_vmotion.lab import topology
from libvirt_vmotion.lab.constants import (
    HOSTS,
    PREFIX_LEN,
    SHARED_DIR,
    STATE_DIR,
    STORAGE_ADDR,
    STORAGE_NETNS,
    STORAGE_SWITCH_PORT,
    SWITCH_BRIDGE,
    SWITCH_NETNS,
    LabHost,
)

log = logging.getLogger(__name__)

VOLUME: Final = "vmoshared"
STORAGE_ROOT: Final = STATE_DIR / "storage"
READY_TIMEOUT_S: Final = 30.0
_IFNAME: Final = "eth0"
_GLUSTERD_PORT: Final = 24007


@dataclass(frozen=True, slots=True)
class StoragePaths:
    """Where the storage server keeps its state, seen from the root namespace."""

    root: Path = STORAGE_ROOT

    @property
    def brick(self) -> Path:
        """The brick: the shared files' real home on the server."""
        return self.root / "brick"

    @property
    def glusterd(self) -> Path:
        """``/var/lib/glusterd`` of the server."""
        return self.root / "glusterd"

    @property
    def run(self) -> Path:
        """``/run`` of the server."""
        return self.root / "run"

    @property
    def log(self) -> Path:
        """``/var/log/glusterfs`` of the server (kept across rebuilds)."""
        return self.root / "log"

    @property
    def holder_pid_file(self) -> Path:
        """PID of the storage holder (``sleep infinity`` owning the mount namespace)."""
        return self.root / "holder.pid"

    @property
    def ready_file(self) -> Path:
        """Written by the holder once the volume is started."""
        return self.root / "ready"


def build_server_script(paths: StoragePaths) -> str:
    """Return the ``sh`` script of the storage holder (pure).

    It binds its state over the server's system paths, starts ``glusterd``,
    creates and starts a one-brick volume (``force``: the brick is not on a
    dedicated disk) and becomes ``sleep infinity``, keeping the namespace alive.
    """
    q = shlex.quote
    brick = f"{STORAGE_ADDR}:{paths.brick}"
    return (
        "\n".join(
            [
                "set -eu",
                f"echo $$ > {q(str(paths.holder_pid_file))}",
                "umount -n -l /run/netns 2>/dev/null || true",
                f"mount -n --bind {q(str(paths.run))} /run",
                f"mount -n --bind {q(str(paths.glusterd))} /var/lib/glusterd",
                f"mount -n --bind {q(str(paths.log))} /var/log/glusterfs",
                "glusterd -p /run/glusterd.pid",
                (
                    "n=0; until gluster --mode=script volume list >/dev/null 2>&1; do "
                    'n=$((n+1)); [ "$n" -lt 100 ] || exit 1; sleep 0.1; done'
                ),
                f"gluster --mode=script volume create {VOLUME} {q(brick)} force",
                # Lab tuning: no client-side caches that a real deployment would
                # also turn off for VM images (the "virt" group does the same).
                f"gluster --mode=script volume set {VOLUME} performance.write-behind off",
                f"gluster --mode=script volume set {VOLUME} performance.quick-read off",
                f"gluster --mode=script volume set {VOLUME} performance.read-ahead off",
                f"gluster --mode=script volume set {VOLUME} performance.io-cache off",
                f"gluster --mode=script volume start {VOLUME}",
                f"echo ready > {q(str(paths.ready_file))}",
                "exec sleep infinity",
            ]
        )
        + "\n"
    )


class StorageError(topology.LabError):
    """The shared storage could not be set up or inspected; the message says what to do."""


def _holder_alive(paths: StoragePaths) -> bool:
    pid = topology._read_pid(paths.holder_pid_file)  # noqa: SLF001  the lab's own helpers
    return topology._alive_in_netns(pid, STORAGE_NETNS) is not None  # noqa: SLF001


def _ensure_link() -> None:
    """Plug the storage namespace into the switch (once per lab up)."""
    with IPRoute(netns=STORAGE_NETNS) as ipr:
        if ipr.link_lookup(ifname=_IFNAME):
            return
    with IPRoute(netns=SWITCH_NETNS) as sw:
        sw.link(
            "add",
            ifname=STORAGE_SWITCH_PORT,
            kind="veth",
            peer={"ifname": _IFNAME, "net_ns_fd": STORAGE_NETNS},
        )
        bridge = sw.link_lookup(ifname=SWITCH_BRIDGE)[0]
        port = sw.link_lookup(ifname=STORAGE_SWITCH_PORT)[0]
        sw.link("set", index=port, master=bridge, state="up")
    with IPRoute(netns=STORAGE_NETNS) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        eth = ipr.link_lookup(ifname=_IFNAME)[0]
        ipr.addr("add", index=eth, address=STORAGE_ADDR, prefixlen=PREFIX_LEN)
        ipr.link("set", index=eth, state="up")


def _start_server(paths: StoragePaths) -> None:
    for d in (paths.brick, paths.glusterd, paths.run):
        shutil.rmtree(d, ignore_errors=True)
    for d in (paths.brick, paths.glusterd, paths.run, paths.log):
        d.mkdir(parents=True, exist_ok=True)
    paths.ready_file.unlink(missing_ok=True)
    paths.holder_pid_file.unlink(missing_ok=True)  # a stale one would read as "died"
    # glusterd needs its hooks tree; seed it from the package's copy.
    if Path("/var/lib/glusterd").is_dir():
        shutil.copytree("/var/lib/glusterd", paths.glusterd, dirs_exist_ok=True, symlinks=True)
    argv = [
        "setsid",
        "--fork",
        "ip",
        "netns",
        "exec",
        STORAGE_NETNS,
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        build_server_script(paths),
    ]
    with (paths.log / "holder.log").open("a") as out:
        out.write(f"--- starting storage holder at {time.ctime()}\n")
        out.flush()
        subprocess.run(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, check=True
        )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not paths.ready_file.exists():
        if time.monotonic() > deadline or (
            paths.holder_pid_file.exists() and not _holder_alive(paths)
        ):
            tail = topology._tail(paths.log / "holder.log")  # noqa: SLF001
            msg = (
                f"the GlusterFS server in {STORAGE_NETNS} did not start within "
                f"{READY_TIMEOUT_S:.0f} s; {paths.log / 'holder.log'} ends with:\n{tail}"
            )
            raise StorageError(msg)
        time.sleep(0.1)


def is_mounted(host: LabHost) -> bool:
    """True if ``host`` has the shared volume mounted at ``SHARED_DIR``."""
    proc = topology.run_on_host(host, ["cat", "/proc/self/mountinfo"], timeout_s=10)
    return any(
        len(f := line.split()) > 4 and f[4] == str(SHARED_DIR) for line in proc.stdout.splitlines()
    )


def _mount(host: LabHost) -> None:
    if is_mounted(host):
        return
    SHARED_DIR.mkdir(parents=True, exist_ok=True)
    topology.run_on_host(
        host,
        [
            "mount",
            "-n",
            "-t",
            "glusterfs",
            "-o",
            "log-file=/var/log/libvirt/glusterfs-client.log",
            f"{STORAGE_ADDR}:/{VOLUME}",
            str(SHARED_DIR),
        ],
        timeout_s=30,
    )


def up(paths: StoragePaths | None = None) -> None:
    """Start the storage server and mount it on both hosts (idempotent).

    Raises:
        StorageError: the lab is not up, or the server or a mount failed.

    """
    paths = paths or StoragePaths()
    if not topology._netns_exists(STORAGE_NETNS):  # noqa: SLF001
        msg = (
            f"the lab's storage namespace {STORAGE_NETNS} does not exist; "
            f"run `{topology.LAB_CMD} up` first"
        )
        raise StorageError(msg)
    with topology._lab_lock():  # noqa: SLF001  serialize with up/down
        _ensure_link()
        if not _holder_alive(paths):
            log.info("starting the GlusterFS server in %s", STORAGE_NETNS)
            _start_server(paths)
        for host in HOSTS:
            _mount(host)
        for host in HOSTS:
            topology.run_on_host(host, ["mkdir", "-p", f"{SHARED_DIR}/images"], timeout_s=10)


def is_up(paths: StoragePaths | None = None) -> bool:
    """True if the server runs and both hosts have the volume mounted."""
    paths = paths or StoragePaths()
    if not topology._netns_exists(STORAGE_NETNS) or not _holder_alive(paths):  # noqa: SLF001
        return False
    with contextlib.suppress(topology.LabError):
        return all(is_mounted(h) for h in HOSTS)
    return False


# --------------------------------------------------------------------------- locks

# virtlockd's direct disk lease is an fcntl write lock on byte 0 of the disk file
# (QEMU's own image locks sit at bytes 100 and up, so they do not answer here).
_GETLK_SCRIPT: Final = """
import fcntl, os, struct, sys
try:
    fd = os.open(sys.argv[1], os.O_RDONLY)
except FileNotFoundError:
    print("missing")
    sys.exit(0)
lk = struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 1, 0)
typ, _, start, length, pid = struct.unpack("hhqqi", fcntl.fcntl(fd, fcntl.F_GETLK, lk))
print("unlocked" if typ == fcntl.F_UNLCK else f"locked {pid}")
"""


def lock_holder_pid(host: LabHost, path: str) -> int | None:
    """Ask from ``host`` who holds a write-conflicting fcntl lock on ``path`` (F_GETLK).

    On the shared volume the answer comes from the GlusterFS server, so it sees
    locks taken on the other host too. Returns the holder's PID or None.

    Raises:
        LabError: the probe could not run.

    """
    proc = topology.run_on_host(host, ["python3", "-c", _GETLK_SCRIPT, path], timeout_s=20)
    words = proc.stdout.split()
    return int(words[1]) if words[:1] == ["locked"] else None


def virtlockd_pid(host: LabHost) -> int | None:
    """PID of ``host``'s virtlockd, if running."""
    from libvirt_vmotion.lab import hostconf  # noqa: PLC0415  avoid a cycle at import

    pid = topology._read_pid(hostconf.host_paths(host).virtlockd_pid_file)  # noqa: SLF001
    return topology._alive_in_netns(pid, host.netns)  # noqa: SLF001


def lock_owner(path: str) -> dict[str, object]:
    """Which lab host's virtlockd holds the lock on ``path``, as seen from each host.

    Returns:
        ``{"seen_from": {host: pid or None}, "owners": [host names whose virtlockd
        holds it]}``.

    """
    lockd = {h.name: virtlockd_pid(h) for h in HOSTS}
    seen = {h.name: lock_holder_pid(h, path) for h in HOSTS}
    owners = sorted(
        {name for name, pid in lockd.items() if pid is not None and pid in seen.values()}
    )
    return {"seen_from": seen, "virtlockd": lockd, "owners": owners}
