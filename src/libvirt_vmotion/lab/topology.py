"""Build, inspect and tear down the two-host libvirt lab on this machine.

I/O: network namespaces, veths and bridges (pyroute2), mount+UTS namespaces
(``unshare``/``nsenter``), daemons, processes. Config text comes from the pure
``hostconf`` module.

Topology (names and addresses from ``constants``)::

    vmo-client  eth0 10.77.0.100 ──┐
    vmo-hosta   br0[uplink0] 10.77.0.1 ──┤ sw0 in vmo-switch (learning, flooding, no STP)
    vmo-hostb   br0[uplink0] 10.77.0.2 ──┘

Each host is a network namespace plus a long-lived *holder* process
(``ip netns exec NS unshare --mount --uts --propagation private -- sh -c SCRIPT``) that
owns the host's private mount and UTS namespaces, starts ``virtlogd`` and
``libvirtd -l`` in them and then sleeps. The holder writes its PID to
``STATE_DIR/<host>/holder.pid``; commands enter a host with
``nsenter -t HOLDER_PID -m -u -n``.

Errors: everything raises ``LabError`` (a ``RuntimeError``) with what failed and what to do.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from pyroute2 import IPRoute, netns

from libvirt_vmotion.lab import command_name, hostconf, owner, pki
from libvirt_vmotion.lab.constants import (
    ALL_HOSTS,
    CLIENT_ADDR,
    CLIENT_NETNS,
    CLIENT_SWITCH_PORT,
    HOST_BRIDGE,
    HOST_UPLINK,
    HOSTS,
    LAB_ID,
    PREFIX_LEN,
    STATE_DIR,
    STORAGE_NETNS,
    SWITCH_BRIDGE,
    SWITCH_BRIDGE_MAC,
    SWITCH_NETNS,
    LabHost,
    lab_hosts,
)
from libvirt_vmotion.reserve import hook as hooks

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

_log = logging.getLogger(__name__)

NETNS_DIR: Final = Path("/run/netns")
BASE_NETNS: Final = (SWITCH_NETNS, *(host.netns for host in HOSTS), CLIENT_NETNS, STORAGE_NETNS)
"""The namespaces every lab has (``up`` creates them)."""
LAB_NETNS: Final = (*BASE_NETNS, *(h.netns for h in ALL_HOSTS if h not in HOSTS))
"""Every network namespace the lab owns (extra hosts included); nothing else is ever touched."""
CLIENT_IFNAME: Final = "eth0"
READY_TIMEOUT_S: Final = 20.0
"""How long ``up`` waits for both libvirtds to answer over TCP from the client."""
STOP_GRACE_S: Final = 3.0
"""SIGTERM -> SIGKILL grace for lab processes in ``down``."""
PROBE_TIMEOUT_S: Final = 5.0
LAB_CMD: Final = f"{command_name()} lab"  # how users invoke us (./run sets VMOTION_PROG)

_LOCK_FILE: Final = STATE_DIR / "lab.lock"
OWNER_FILE: Final = STATE_DIR / "owner"
"""Which checkout's interpreter built or adopted the running lab (``owner``)."""
_NETNS_MARKER: Final = STATE_DIR / "run-netns.created"
"""Records that the lab created ``/run/netns`` (mount and/or directory), so ``down``
can put the machine back as it found it."""
_MNT_DETACH: Final = 2


class LabError(RuntimeError):
    """The lab could not be built, inspected or torn down; the message says what to do."""


@dataclass(frozen=True, slots=True)
class HostStatus:
    """Observed state of one lab host."""

    host: LabHost
    netns_exists: bool
    holder_pid: int | None
    """Holder PID if it is alive inside the host's network namespace, else ``None``."""
    libvirtd_pid: int | None
    """libvirtd PID if alive inside the host's network namespace, else ``None``."""
    virtlogd_pid: int | None
    sshd_pid: int | None
    """sshd (the agent's transport) if alive inside the host's network namespace."""
    reachable: bool
    """libvirtd answered at ``host.uri`` from the client namespace."""
    domains: tuple[str, ...]
    """Running domains (``virsh list --name``); empty when unreachable."""
    problem: str = ""
    """Why the host is not healthy (empty when healthy)."""

    @property
    def healthy(self) -> bool:
        """Namespace, holder, both daemons and TCP access are all there."""
        return (
            self.netns_exists
            and self.holder_pid is not None
            and self.libvirtd_pid is not None
            and self.virtlogd_pid is not None
            and self.sshd_pid is not None
            and self.reachable
        )


@dataclass(frozen=True, slots=True)
class LabStatus:
    """Observed state of the whole lab."""

    switch_exists: bool
    client_exists: bool
    hosts: tuple[HostStatus, ...]
    leftover_netns: tuple[str, ...] = ()
    """Lab network namespaces that exist (all of them when the lab is up)."""
    owner: str | None = None
    """Interpreter of the checkout that built or adopted the lab (``None``: unrecorded)."""

    @property
    def healthy(self) -> bool:
        """Every namespace exists and every host is healthy."""
        return self.switch_exists and self.client_exists and all(h.healthy for h in self.hosts)

    @property
    def anything_exists(self) -> bool:
        """Some part of the lab exists (namespaces or live processes)."""
        return bool(self.leftover_netns) or any(
            h.holder_pid or h.libvirtd_pid or h.virtlogd_pid for h in self.hosts
        )

    def render(self) -> str:
        """Return a human-readable report with URIs and how to run commands in the lab."""
        state = "healthy" if self.healthy else f"NOT healthy (repair: {LAB_CMD} up)"
        if not self.anything_exists:
            state = f"down (start: {LAB_CMD} up)"
        lines = [
            f"lab: {state}",
            f"  switch  {SWITCH_NETNS:<10} bridge {SWITCH_BRIDGE}: "
            + ("present" if self.switch_exists else "missing"),
            f"  client  {CLIENT_NETNS:<10} {CLIENT_ADDR}: "
            + ("present" if self.client_exists else "missing"),
        ]
        if self.owner and self.anything_exists:
            lines.append(f"  checkout: {self.owner} (its hooks run on the hosts)")
        for h in self.hosts:
            pid = f"libvirtd pid {h.libvirtd_pid}" if h.libvirtd_pid else "libvirtd not running"
            reach = "reachable" if h.reachable else "UNREACHABLE"
            doms = ", ".join(h.domains) if h.domains else "-"
            lines.append(
                f"  {h.host.name:<7} {h.host.netns:<10} {h.host.addr:<10} {h.host.uri}  "
                f"{pid}, {reach}, running domains: {doms}"
            )
            if h.problem:
                lines.append(f"          problem: {h.problem}")
        first = self.hosts[0].host if self.hosts else None
        if first is not None:
            lines += [
                "run commands from the client namespace:",
                f"  {LAB_CMD} exec -- virsh -c {first.uri} list",
                f"  over TLS: {first.tls_uri} (migrations are encrypted either way: --tls auto)",
                "logs: "
                + ", ".join(str(hostconf.host_paths(h.host).libvirtd_log) for h in self.hosts),
            ]
        return "\n".join(lines)


# --------------------------------------------------------------------------- helpers


def _require_root() -> None:
    if os.geteuid() != 0:
        msg = (
            "the namespace lab needs root (network namespaces, mounts, libvirtd); "
            f"run as root, e.g. `sudo {LAB_CMD} up`"
        )
        raise LabError(msg)


def _say(log: Callable[[str], None] | None, message: str) -> None:
    _log.info("%s", message)
    if log is not None:
        log(message)


def _ns_ident(path: Path) -> tuple[int, int] | None:
    """Return ``(st_dev, st_ino)`` of a namespace file, or ``None`` if it is gone."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _mount_points() -> set[str]:
    """Mount points of this mount namespace.

    ``os.path.ismount`` misses bind mounts within one file system (``/run/netns`` is a
    bind mount of itself), so read mountinfo (field 5 is the mount point).
    """
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return set()
    return {line.split()[4] for line in text.splitlines() if len(line.split()) > 4}


def _netns_exists(name: str) -> bool:
    # The file alone can be a stale leftover; the nsfs mount on it is the namespace.
    return str(NETNS_DIR / name) in _mount_points()


def _pids_in_netns(name: str) -> list[int]:
    """Return the PIDs whose network namespace is ``name`` (what ``ip netns pids`` does)."""
    ident = _ns_ident(NETNS_DIR / name)
    if ident is None:
        return []
    found = []
    for pid in _all_pids():
        if pid == os.getpid():
            continue
        if _ns_ident(Path(f"/proc/{pid}/ns/net")) == ident:
            found.append(pid)
    return found


def _all_pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _is_running(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (a zombie has left its namespaces)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the parenthesized command name, which may contain spaces.
    return stat[stat.rindex(")") + 2 :][:1] not in {"Z", "X", ""}


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive_in_netns(pid: int | None, name: str) -> int | None:
    """Return ``pid`` if it is a live (non-zombie) process inside netns ``name``.

    Checking the namespace guards against a recycled PID from a stale pid file.
    """
    if pid is None:
        return None
    ident = _ns_ident(NETNS_DIR / name)
    if ident is None or _ns_ident(Path(f"/proc/{pid}/ns/net")) != ident:
        return None
    return pid if _is_running(pid) else None


def _holder_pid(host: LabHost) -> int | None:
    return _alive_in_netns(_read_pid(hostconf.host_paths(host).holder_pid_file), host.netns)


@contextlib.contextmanager
def _lab_lock() -> Iterator[None]:
    """Serialize ``up``/``down`` between processes (two CLIs, a test and a CLI)."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with _LOCK_FILE.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} not readable)"
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------- commands


def client_argv(argv: Sequence[str]) -> list[str]:
    """Return ``argv`` prefixed to run in the client namespace (``ip netns exec vmo-client``)."""
    return ["ip", "netns", "exec", CLIENT_NETNS, *argv]


def host_argv(host: LabHost, argv: Sequence[str]) -> list[str]:
    """Return ``argv`` prefixed to run inside ``host`` (net + mount + UTS namespaces).

    Raises:
        LabError: the host's holder process is not running (lab down or crashed).

    """
    pid = _holder_pid(host)
    if pid is None:
        msg = (
            f"lab host {host.name} is not running (no live holder process in {host.netns}); "
            f"start or repair the lab with `{LAB_CMD} up`"
        )
        raise LabError(msg)
    return ["nsenter", "-t", str(pid), "-m", "-u", "-n", "--", *argv]


def _run(
    full_argv: Sequence[str],
    *,
    where: str,
    check: bool,
    timeout_s: float | None,
    input: str | None,  # noqa: A002  same name as subprocess.run's parameter
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            list(full_argv),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            input=input,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        msg = f"`{' '.join(exc.cmd)}` in {where} did not finish within {timeout_s} s"
        raise LabError(msg) from exc
    except OSError as exc:
        msg = f"cannot run `{full_argv[0]}` for {where}: {exc}"
        raise LabError(msg) from exc
    if check and proc.returncode != 0:
        msg = (
            f"`{' '.join(full_argv)}` in {where} exited with {proc.returncode}: "
            f"{proc.stderr.strip() or proc.stdout.strip()}"
        )
        raise LabError(msg)
    return proc


def run_on_host(
    host: LabHost,
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout_s: float | None = 60,
    input: str | None = None,  # noqa: A002  same name as subprocess.run's parameter
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside ``host``'s network, mount and UTS namespaces.

    There ``virsh`` without ``-c`` talks to that host's libvirtd over its local
    socket and ``hostname`` prints the host's name.

    Args:
        host: the lab host.
        argv: command and arguments.
        check: raise ``LabError`` on a non-zero exit status.
        timeout_s: kill the command after this many seconds (``None``: wait forever).
        input: text fed to the command's stdin.

    Returns:
        The completed process with text stdout/stderr.

    Raises:
        LabError: the host is not running, the command timed out, or (``check``) failed.

    """
    return _run(
        host_argv(host, argv), where=host.name, check=check, timeout_s=timeout_s, input=input
    )


def run_in_client(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout_s: float | None = 60,
    input: str | None = None,  # noqa: A002  same name as subprocess.run's parameter
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in the client network namespace; see ``run_on_host`` for the rest.

    Raises:
        LabError: the client namespace is missing, the command timed out or failed.

    """
    if not _netns_exists(CLIENT_NETNS):
        msg = f"the lab client namespace {CLIENT_NETNS} does not exist; run `{LAB_CMD} up`"
        raise LabError(msg)
    return _run(
        client_argv(argv), where=CLIENT_NETNS, check=check, timeout_s=timeout_s, input=input
    )


# --------------------------------------------------------------------------- status


def _probe_libvirt(host: LabHost) -> tuple[bool, tuple[str, ...], str]:
    """Ask ``host``'s libvirtd over TCP from the client: (reachable, domains, problem)."""
    try:
        proc = _run(
            client_argv(["virsh", "-c", host.uri, "list", "--name"]),
            where=CLIENT_NETNS,
            check=False,
            timeout_s=PROBE_TIMEOUT_S,
            input=None,
        )
    except LabError as exc:
        return False, (), str(exc)
    if proc.returncode != 0:
        return False, (), f"virsh -c {host.uri} failed: {proc.stderr.strip()}"
    return True, tuple(line for line in proc.stdout.split() if line), ""


def _host_status(host: LabHost, *, client_exists: bool) -> HostStatus:
    paths = hostconf.host_paths(host)
    exists = _netns_exists(host.netns)
    holder = _holder_pid(host) if exists else None
    libvirtd = _alive_in_netns(_read_pid(paths.libvirtd_pid_file), host.netns) if exists else None
    virtlogd = _alive_in_netns(_read_pid(paths.virtlogd_pid_file), host.netns) if exists else None
    sshd = _alive_in_netns(_read_pid(paths.sshd_pid_file), host.netns) if exists else None
    reachable, domains, problem = False, tuple[str, ...](), ""
    if not exists:
        problem = f"network namespace {host.netns} missing"
    elif holder is None:
        problem = "holder process not running"
    elif libvirtd is None:
        problem = f"libvirtd not running (see {paths.libvirtd_log})"
    elif virtlogd is None:
        problem = "virtlogd not running"
    elif sshd is None:
        problem = f"sshd not running (see {paths.log / hostconf.SSHD_LOG_NAME})"
    elif not client_exists:
        problem = f"client namespace {CLIENT_NETNS} missing"
    else:
        reachable, domains, problem = _probe_libvirt(host)
    return HostStatus(
        host=host,
        netns_exists=exists,
        holder_pid=holder,
        libvirtd_pid=libvirtd,
        virtlogd_pid=virtlogd,
        sshd_pid=sshd,
        reachable=reachable,
        domains=domains,
        problem=problem,
    )


def status() -> LabStatus:
    """Inspect the lab without changing anything.

    Raises:
        LabError: not running as root.

    """
    _require_root()
    client = _netns_exists(CLIENT_NETNS)
    return LabStatus(
        switch_exists=_netns_exists(SWITCH_NETNS),
        client_exists=client,
        hosts=tuple(_host_status(h, client_exists=client) for h in lab_hosts()),
        leftover_netns=tuple(n for n in LAB_NETNS if (NETNS_DIR / n).exists()),
        owner=_read_owner(),
    )


def _read_owner() -> str | None:
    try:
        return owner.parse_owner_record(OWNER_FILE.read_text())
    except OSError:
        return None


# --------------------------------------------------------------------------- up


def _prepare_state(host: LabHost) -> None:
    """Write a fresh per-host state tree (etc/run/lib), keeping log and cache."""
    paths = hostconf.host_paths(host)
    for d in (paths.etc, paths.run, paths.lib):
        shutil.rmtree(d, ignore_errors=True)
    paths.holder_pid_file.unlink(missing_ok=True)
    shutil.copytree("/etc/libvirt", paths.etc, symlinks=True)
    if not paths.cache.exists():
        # Seeding with the machine's QEMU capability cache saves a probe per host.
        shutil.copytree("/var/cache/libvirt", paths.cache, symlinks=True)
    # The packages ship these directories; libvirt does not create log/qemu itself
    # (a guest with a serial log fails to start without it).
    for d in (
        paths.run,
        paths.lib,
        paths.log,
        paths.log / "qemu",
        paths.lib / "images",
        paths.lib / "qemu",
    ):
        d.mkdir(parents=True, exist_ok=True)
    # No NAT network: the lab network is br0, and dnsmasq/iptables have no place here.
    autostart = paths.etc / "qemu" / "networks" / "autostart"
    if autostart.exists():
        for entry in autostart.iterdir():
            entry.unlink()
    (paths.etc / "libvirtd.conf").write_text(hostconf.build_libvirtd_conf(host))
    (paths.etc / "qemu.conf").write_text(hostconf.build_qemu_conf(host))
    (paths.etc / "virtlogd.conf").write_text(hostconf.build_virtlogd_conf())
    (paths.etc / "qemu-lockd.conf").write_text(hostconf.build_qemu_lockd_conf())
    paths.hosts_file.write_text(hostconf.build_hosts_file(ALL_HOSTS))
    _install_product(paths)
    _write_qemu_wrapper(host, paths)
    paths.ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not paths.ssh_host_key.exists():
        _keygen(paths.ssh_host_key, f"{host.name} lab host key")
    paths.sshd_config.write_text(hostconf.build_sshd_config(host, paths, hostconf.client_ssh()))


def _install_product(paths: hostconf.HostPaths) -> None:
    """Our product on a host: an empty reservation store and config, and our hook.

    The directories are emptied, not replaced: on a running lab (adoption) they are
    the sources of the host's bind mounts.
    """
    for d in (paths.vmotion_lib, paths.vmotion_etc):
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        for entry in d.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    hooks.install(etc=paths.etc, python=sys.executable)


def _write_qemu_wrapper(host: LabHost, paths: hostconf.HostPaths) -> None:
    """Write the host's QEMU wrapper (if it has one) only when its text changes.

    libvirt re-probes QEMU (seconds) whenever the binary's ctime changes, and the
    wrapper is what it sees as the binary.
    """
    text = hostconf.build_qemu_wrapper(host)
    if text is None:
        paths.qemu_wrapper.unlink(missing_ok=True)
        return
    with contextlib.suppress(OSError):
        if paths.qemu_wrapper.read_text() == text:
            return
    tmp = paths.qemu_wrapper.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.chmod(0o755)
    tmp.replace(paths.qemu_wrapper)


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )


def _prepare_client_ssh(hosts: Sequence[LabHost] = HOSTS) -> None:
    """The lab's ssh client side: key, authorized_keys, known_hosts, ssh_config."""
    client = hostconf.client_ssh()
    client.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not client.key.exists():
        _keygen(client.key, "libvirt-vmotion lab")
    client.authorized_keys.write_text(client.key.with_suffix(".pub").read_text())
    client.authorized_keys.chmod(0o600)
    keys = [(h, hostconf.host_paths(h).ssh_host_key.with_suffix(".pub").read_text()) for h in hosts]
    client.known_hosts.write_text(hostconf.build_known_hosts(keys))
    client.config.write_text(hostconf.build_ssh_client_config(hosts, client))


def agent_env() -> dict[str, str]:
    """Settings the lab's controller runs with (empty if the lab has no ssh set up).

    ``lab exec`` and the lab tests run the CLI with these: ``VMOTION_AGENT_*`` so
    ``--to qemu+tcp://10.77.0.2/system`` reaches hostb's agent through hostb's
    sshd and the agent runs this very venv's interpreter (on the shared file
    system), and ``VMOTION_HISTORY`` so each lab learns from its own migrations.
    """
    client = hostconf.client_ssh()
    if not client.config.exists():
        return {}
    return {
        **hostconf.build_agent_env(client, sys.executable),
        "VMOTION_HISTORY": str(STATE_DIR / "history.db"),
    }


def _record_run_netns() -> None:
    """Remember whether ``/run/netns`` exists/is mounted before the lab creates it."""
    if _NETNS_MARKER.exists():
        return
    parts = []
    if not NETNS_DIR.exists():
        parts.append("dir")
    if str(NETNS_DIR) not in _mount_points():
        parts.append("mount")
    if parts:
        _NETNS_MARKER.write_text(" ".join(parts) + "\n")


def _link_index(ipr: IPRoute, ifname: str) -> int:
    found: list[int] = ipr.link_lookup(ifname=ifname)
    if not found:
        msg = f"link {ifname} was not created"
        raise LabError(msg)
    return found[0]


def _add_bridge(ipr: IPRoute, name: str, mac: str) -> int:
    # STP off and forward delay 0: ports forward at once, like an unmanaged switch.
    # A fixed MAC: see LabHost.bridge_mac for what happens without one.
    ipr.link("add", ifname=name, kind="bridge", address=mac, br_stp_state=0, br_forward_delay=0)
    index = _link_index(ipr, name)
    ipr.link("set", index=index, state="up")
    return index


def _build_network() -> None:
    for name in BASE_NETNS:
        netns.create(name)
    with IPRoute(netns=SWITCH_NETNS) as sw:
        sw_index = _add_bridge(sw, SWITCH_BRIDGE, SWITCH_BRIDGE_MAC)
        ports = [(h.switch_port, h.netns, HOST_UPLINK) for h in HOSTS]
        ports.append((CLIENT_SWITCH_PORT, CLIENT_NETNS, CLIENT_IFNAME))
        for port, peer_ns, peer_name in ports:
            # The peer is born in its namespace: no veth ever shows up in the root namespace.
            sw.link(
                "add", ifname=port, kind="veth", peer={"ifname": peer_name, "net_ns_fd": peer_ns}
            )
            sw.link("set", index=_link_index(sw, port), master=sw_index, state="up")
    for host in HOSTS:
        _host_bridge(host)
    with IPRoute(netns=CLIENT_NETNS) as ipr:
        ipr.link("set", index=_link_index(ipr, "lo"), state="up")
        eth = _link_index(ipr, CLIENT_IFNAME)
        ipr.addr("add", index=eth, address=CLIENT_ADDR, prefixlen=PREFIX_LEN)
        ipr.link("set", index=eth, state="up")


def _host_bridge(host: LabHost) -> None:
    """``br0`` with the uplink and the host's address, inside the host's namespace."""
    with IPRoute(netns=host.netns) as ipr:
        ipr.link("set", index=_link_index(ipr, "lo"), state="up")
        br = _add_bridge(ipr, HOST_BRIDGE, host.bridge_mac)
        ipr.link("set", index=_link_index(ipr, HOST_UPLINK), master=br, state="up")
        ipr.addr("add", index=br, address=host.addr, prefixlen=PREFIX_LEN)


def _plug_extra_host(host: LabHost) -> None:
    """An extra host's namespace and its port on the running lab's switch."""
    netns.create(host.netns)
    with IPRoute(netns=SWITCH_NETNS) as sw:
        sw_index = _link_index(sw, SWITCH_BRIDGE)
        sw.link(
            "add",
            ifname=host.switch_port,
            kind="veth",
            peer={"ifname": HOST_UPLINK, "net_ns_fd": host.netns},
        )
        sw.link("set", index=_link_index(sw, host.switch_port), master=sw_index, state="up")
    _host_bridge(host)


def _add_extra_hosts(count: int, log: Callable[[str], None] | None) -> LabStatus:
    """Bring the healthy base lab to ``count`` hosts (adding ``EXTRA_HOSTS`` in order)."""
    wanted = ALL_HOSTS[:count]
    extra = [h for h in wanted if h not in HOSTS]
    missing = [h for h in extra if not _host_status(h, client_exists=True).healthy]
    for host in missing:
        _say(log, f"adding {host.name} ({host.addr}) on the switch")
        if _netns_exists(host.netns):
            _remove_extra_host(host)
        _prepare_state(host)
        _plug_extra_host(host)
        _start_holder(host)
    _prepare_client_ssh(wanted)
    st = _wait_ready(time.monotonic() + READY_TIMEOUT_S)
    if missing:
        _warm_capability_cache(missing)
    return st


def _remove_extra_host(host: LabHost) -> None:
    """Stop an extra host's processes and remove its namespace (the base lab stays)."""
    if _holder_pid(host) is not None:
        _destroy_domains(host)
    pids = sorted(set(_pids_in_netns(host.netns)))
    if pids:
        _stop_processes(pids)
    with contextlib.suppress(OSError):
        netns.remove(host.netns)
    with contextlib.suppress(OSError), IPRoute(netns=SWITCH_NETNS) as sw:
        found = sw.link_lookup(ifname=host.switch_port)
        if found:
            sw.link("del", index=found[0])


def remove_extra_hosts() -> None:
    """Take the extra hosts (``hostc``) out of the lab; the base lab stays as it is."""
    _require_root()
    with _lab_lock():
        for host in ALL_HOSTS[len(HOSTS) :]:
            if _netns_exists(host.netns):
                _remove_extra_host(host)


def _start_holder(host: LabHost) -> None:
    paths = hostconf.host_paths(host)
    script = hostconf.build_holder_script(host, paths)
    argv = [
        # setsid --fork: the holder is reparented to init at once, so it never becomes
        # a zombie of the (possibly long-lived) Python process that started it.
        "setsid",
        "--fork",
        "ip",
        "netns",
        "exec",
        host.netns,
        "unshare",
        "--mount",
        "--uts",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        script,
    ]
    with paths.holder_log.open("a") as out:
        out.write(f"--- starting holder for {host.name} at {time.ctime()}\n")
        out.flush()
        subprocess.run(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, check=True
        )


def _wait_ready(deadline: float) -> LabStatus:
    """Poll until every host is healthy; fail early when a holder dies."""
    while True:
        st = status()
        if st.healthy:
            return st
        for h in st.hosts:
            paths = hostconf.host_paths(h.host)
            holder_file = _read_pid(paths.holder_pid_file)
            if holder_file is not None and h.holder_pid is None:
                msg = (
                    f"the holder process of {h.host.name} exited during start-up; "
                    f"its output ({paths.holder_log}) ends with:\n{_tail(paths.holder_log)}"
                )
                raise LabError(msg)
        if time.monotonic() > deadline:
            bad = next(h for h in st.hosts if not h.healthy) if st.hosts else None
            if bad is None:
                msg = f"lab namespaces incomplete after {READY_TIMEOUT_S:.0f} s"
                raise LabError(msg)
            paths = hostconf.host_paths(bad.host)
            msg = (
                f"libvirtd on {bad.host.name} did not answer at {bad.host.uri} within "
                f"{READY_TIMEOUT_S:.0f} s ({bad.problem}); see {paths.libvirtd_log} "
                f"and {paths.holder_log}"
            )
            raise LabError(msg)
        time.sleep(0.2)


def _has_capability_cache(host: LabHost) -> bool:
    caps = hostconf.host_paths(host).cache / "qemu" / "capabilities"
    return caps.is_dir() and any(caps.iterdir())


def _warm_capability_cache(hosts: Sequence[LabHost]) -> None:
    """Make each libvirtd load or probe QEMU now (about 8 s per host) rather than at first use.

    The cache lives in ``STATE_DIR/<host>/cache`` and survives ``down``, so only the
    first ``up`` on a machine (or after a QEMU/libvirt upgrade) pays for a probe. Both
    hosts probe in parallel.
    """
    procs = [
        (
            host,
            subprocess.Popen(
                host_argv(host, ["virsh", "capabilities"]),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
        for host in hosts
    ]
    for host, proc in procs:
        try:
            _, err = proc.communicate(timeout=READY_TIMEOUT_S * 3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            err = "timed out"
        if proc.returncode != 0:
            _log.warning("probing QEMU capabilities on %s failed: %s", host.name, err.strip())


def _build(log: Callable[[str], None] | None, started: float) -> LabStatus:
    """One attempt at building the lab from nothing; returns its healthy status."""
    _say(log, "writing per-host libvirt state under " + str(STATE_DIR))
    for host in HOSTS:
        _prepare_state(host)
    _prepare_client_ssh()
    _say(log, "making the lab CA and each host's TLS certificates (certtool)")
    pki.prepare(hosts=ALL_HOSTS)  # hostc's too: `up --hosts 3` adds it to this CA later
    _say(log, "creating namespaces, switch, veths and bridges")
    _record_run_netns()
    _build_network()
    _say(log, "starting holders, virtlogd and libvirtd on " + ", ".join(h.name for h in HOSTS))
    for host in HOSTS:
        _start_holder(host)
    st = _wait_ready(started + READY_TIMEOUT_S)
    if not all(_has_capability_cache(h) for h in HOSTS):
        _say(log, "probing QEMU capabilities once (cached under " + str(STATE_DIR) + ")")
    # Always: a cache libvirt finds stale (a new QEMU or libvirt, a rewritten wrapper)
    # is re-probed here rather than in the middle of somebody's first call; a valid
    # one answers in a fraction of a second.
    _warm_capability_cache(HOSTS)
    OWNER_FILE.write_text(owner.build_owner_record(sys.executable))
    return st


def _refresh_hooks() -> list[str]:
    """Re-install the hook on each host where it is not what this code writes.

    The same checkout after a pull or rebase still owns its lab, but the shim an
    older version installed may name a module that moved (seen: "No module named
    libvirt_vmotion.hooks" vetoed every guest start). Returns the hosts refreshed.
    """
    refreshed = []
    for host in lab_hosts():
        etc = hostconf.host_paths(host).etc
        try:
            current = hooks.installed_path(etc).read_text()
        except OSError:
            current = ""
        if current != hooks.build_shim(sys.executable):
            hooks.install(etc=etc, python=sys.executable)
            refreshed.append(host.name)
    return refreshed


def _adopt() -> None:
    """Make a healthy lab this checkout's without restarting anything (``owner``)."""
    for host in lab_hosts():
        _install_product(hostconf.host_paths(host))
    OWNER_FILE.write_text(owner.build_owner_record(sys.executable))


def up(*, log: Callable[[str], None] | None = None, hosts: int = len(HOSTS)) -> LabStatus:
    """Build the lab, or repair it; a healthy lab of this checkout is left untouched.

    A healthy lab another checkout (same ``VMOTION_LAB_ID``) built is adopted when no
    guest runs there, and refused otherwise (``owner.plan_up_of_healthy_lab``).

    A lab that is partly there (crashed daemons, half-removed namespaces) is torn
    down completely and rebuilt, which also discards domain definitions made there.

    Args:
        log: receives one line per step (the CLI prints them).
        hosts: how many hosts (2, or 3 with ``hostc`` for evacuations); more hosts
            are added to a healthy lab, fewer never remove any.

    Returns:
        The healthy lab's status.

    Raises:
        LabError: not root, another checkout's lab is in use, or some step failed (the
            lab is torn down again; logs stay under ``STATE_DIR/<host>/log``).

    """
    _require_root()
    if not len(HOSTS) <= hosts <= len(ALL_HOSTS):
        msg = f"--hosts {hosts}: the lab has {len(HOSTS)} to {len(ALL_HOSTS)} hosts"
        raise LabError(msg)
    with _lab_lock():
        st = _up_base(log)
        if hosts > len(HOSTS):
            st = _add_extra_hosts(hosts, log)
        return st


def _up_base(log: Callable[[str], None] | None) -> LabStatus:
    """``up`` of the hosts every lab has (under the lab lock)."""
    st = status()
    if st.healthy:
        plan = owner.plan_up_of_healthy_lab(
            owner=st.owner,
            python=sys.executable,
            running={h.host.name: h.domains for h in st.hosts},
            lab_id=LAB_ID,
            lab_cmd=LAB_CMD,
        )
        if plan.action is owner.UpAction.REFUSE:
            raise LabError(plan.reason)
        _say(log, plan.reason)
        if plan.action is owner.UpAction.ADOPT:
            _adopt()
            st = status()
        else:
            refreshed = _refresh_hooks()
            if refreshed:
                _say(log, "hook re-installed (an older one) on " + ", ".join(refreshed))
        return st
    if st.anything_exists:
        _say(log, "lab is partly there; tearing down leftovers first")
        _down_locked(log)
    started = time.monotonic()
    # A holder sometimes dies during start-up right after a teardown (SIGTERM seen
    # while virtlogd starts, ~1 in 10 rebuilds on a busy machine; root cause not
    # found). One clean rebuild fixes it; a second failure is reported as is.
    for attempt in (1, 2):
        try:
            st = _build(log, started)
            break
        except (LabError, OSError, subprocess.CalledProcessError) as exc:
            _log.warning("lab up failed (attempt %d), tearing down: %s", attempt, exc)
            with contextlib.suppress(LabError, OSError):
                _down_locked(None)
            if attempt == 1 and isinstance(exc, LabError) and "holder" in str(exc):
                _say(log, "a host failed to start; rebuilding once more")
                time.sleep(1.0)
                started = time.monotonic()
                continue
            if isinstance(exc, LabError):
                raise
            msg = f"building the lab failed: {exc}; retry `{LAB_CMD} up`, or `{LAB_CMD} down` first"
            raise LabError(msg) from exc
    _say(log, f"lab up in {time.monotonic() - started:.1f} s")
    return st


# --------------------------------------------------------------------------- down


def _destroy_domains(host: LabHost) -> None:
    """``virsh destroy`` every running domain on ``host`` (best effort)."""
    try:
        listed = run_on_host(host, ["virsh", "list", "--name"], check=False, timeout_s=10)
    except LabError:
        return
    for name in listed.stdout.split():
        _log.info("destroying domain %s on %s", name, host.name)
        with contextlib.suppress(LabError):
            run_on_host(host, ["virsh", "destroy", name], check=False, timeout_s=20)


def _lab_pids() -> list[int]:
    """PIDs inside any lab network namespace plus recorded lab PIDs still alive."""
    pids: set[int] = set()
    for name in LAB_NETNS:
        pids.update(_pids_in_netns(name))
    for host in ALL_HOSTS:
        paths = hostconf.host_paths(host)
        for pid_file in (
            paths.holder_pid_file,
            paths.libvirtd_pid_file,
            paths.virtlogd_pid_file,
            paths.virtlockd_pid_file,
        ):
            pid = _read_pid(pid_file)
            if pid is not None and _is_lab_process(pid, paths.root):
                pids.add(pid)
    # Strays whose namespace name and pid file are gone (a daemon a dying holder
    # started while a failed `up` was tearing down, seen with virtlockd): they
    # still see the host's /run.
    roots = [hostconf.host_paths(host).root for host in ALL_HOSTS]
    pids.update(pid for pid in _all_pids() if any(_is_lab_process(pid, r) for r in roots))
    pids.discard(os.getpid())
    return sorted(pids)


def _is_lab_process(pid: int, host_root: Path) -> bool:
    """True if ``pid`` lives in the mount namespace of the lab host stored at ``host_root``.

    Once a namespace file is gone, a stray holder or daemon can only be recognized by
    what it sees: its ``/run`` is the per-host copy (mountinfo field 4 is the source
    path, field 5 the mount point).
    """
    try:
        mountinfo = Path(f"/proc/{pid}/mountinfo").read_text()
    except OSError:
        return False
    run = host_root / "run"
    # "//deleted": the per-host /run was removed under a process that still has it bound.
    needles = (f" {run} /run ", f" {run}//deleted /run ")
    return any(n in line for line in mountinfo.splitlines() for n in needles)


def _signal_all(pids: Sequence[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_gone(pids: Sequence[int], timeout_s: float) -> list[int]:
    """Wait until ``pids`` have exited; return those still running at the deadline."""
    deadline = time.monotonic() + timeout_s
    alive = [p for p in pids if _is_running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if _is_running(p)]
    return alive


def _stop_processes(pids: Sequence[int]) -> None:
    for pid in pids:
        _log.info("stopping pid %d (%s)", pid, _comm(pid))
    _signal_all(pids, signal.SIGTERM)
    alive = _wait_gone(pids, STOP_GRACE_S)
    if alive:
        _log.warning("pids %s ignored SIGTERM for %.0f s; killing", alive, STOP_GRACE_S)
        _signal_all(alive, signal.SIGKILL)
        alive = _wait_gone(alive, STOP_GRACE_S)
    if alive:
        msg = (
            "lab processes survived SIGKILL: "
            + ", ".join(str(p) for p in alive)
            + "; check them with `ps -o pid,stat,cmd -p PID` (D state = stuck in the kernel)"
        )
        raise LabError(msg)


def _release_run_netns() -> None:
    """Undo what creating the first namespace did to ``/run/netns``, if the lab did it."""
    if not _NETNS_MARKER.exists():
        return
    with contextlib.suppress(OSError):
        if any(NETNS_DIR.iterdir()):
            return  # somebody else's namespace lives there now; leave it be
    created = _NETNS_MARKER.read_text().split()
    if "mount" in created:
        libc = ctypes.CDLL(None, use_errno=True)
        while str(NETNS_DIR) in _mount_points():
            if libc.umount2(str(NETNS_DIR).encode(), _MNT_DETACH) != 0:
                _log.warning("cannot unmount %s: errno %d", NETNS_DIR, ctypes.get_errno())
                break
    if "dir" in created:
        with contextlib.suppress(OSError):
            NETNS_DIR.rmdir()
    _NETNS_MARKER.unlink(missing_ok=True)


def _down_locked(log: Callable[[str], None] | None) -> None:
    for host in ALL_HOSTS:
        if _holder_pid(host) is not None:
            _destroy_domains(host)
    for host in ALL_HOSTS:
        # virtlockd ignores SIGTERM (it must not drop disk leases on a whim); with the
        # guests gone it holds none, so kill it now rather than after the grace period.
        pid_file = hostconf.host_paths(host).virtlockd_pid_file
        lockd = _alive_in_netns(_read_pid(pid_file), host.netns)
        if lockd is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(lockd, signal.SIGKILL)
    pids = _lab_pids()
    if pids:
        _say(log, f"stopping {len(pids)} lab processes")
        _stop_processes(pids)
    for name in LAB_NETNS:
        path = NETNS_DIR / name
        if path.exists() or str(path) in _mount_points():
            _say(log, f"removing network namespace {name}")
            try:
                netns.remove(name)
            except OSError as exc:
                msg = f"cannot remove network namespace {name}: {exc}; try `ip netns del {name}`"
                raise LabError(msg) from exc
    for host in ALL_HOSTS:
        paths = hostconf.host_paths(host)
        paths.holder_pid_file.unlink(missing_ok=True)
        shutil.rmtree(paths.run, ignore_errors=True)
    OWNER_FILE.unlink(missing_ok=True)
    _release_run_netns()


def down(*, log: Callable[[str], None] | None = None) -> None:
    """Tear the lab down and leave the machine as it was before ``up``.

    Destroys running domains, stops every process inside the lab namespaces (and
    recorded lab daemons), removes the namespaces (their veths, bridges and taps go
    with them) and ``/run/netns`` if the lab created it. Logs stay under
    ``STATE_DIR/<host>/log``. Safe to call when nothing exists.

    Args:
        log: receives one line per step.

    Raises:
        LabError: not root, or a process or namespace could not be removed.

    """
    _require_root()
    with _lab_lock():
        _down_locked(log)


if __name__ == "__main__":  # manual testing: python -m libvirt_vmotion.lab.topology up|down|status
    import sys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    action = sys.argv[1] if len(sys.argv) > 1 else "status"
    t0 = time.monotonic()
    if action == "up":
        print(up(log=print).render())  # noqa: T201  manual entry point
    elif action == "down":
        down(log=print)
    else:
        print(status().render())  # noqa: T201  manual entry point
    print(f"{action}: {time.monotonic() - t0:.2f} s")  # noqa: T201  manual entry point
