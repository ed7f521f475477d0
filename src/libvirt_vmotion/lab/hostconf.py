"""Per-host file layout, config-file text and holder script of the namespace lab.

Pure: no I/O, no clock, no logging. ``topology`` writes what these functions build.

Each lab host keeps its libvirt state under ``STATE_DIR/<host>/`` and sees it at the
usual system paths through bind mounts made inside the host's private mount namespace::

    STATE_DIR/hosta/etc    -> /etc/libvirt
    STATE_DIR/hosta/run    -> /run                (all of it: pid files collide otherwise)
    STATE_DIR/hosta/lib    -> /var/lib/libvirt
    STATE_DIR/hosta/log    -> /var/log/libvirt
    STATE_DIR/hosta/cache  -> /var/cache/libvirt
    STATE_DIR/hosta/hosts  -> /etc/hosts
    STATE_DIR/hosta/vmotion-lib -> /var/lib/libvirt-vmotion   (reservation store)
    STATE_DIR/hosta/vmotion-etc -> /etc/libvirt-vmotion       (capacity.toml)
    STATE_DIR/hosta/pki   -> /etc/pki             (TLS: libvirt's and QEMU's, ``lab.pki``)

Each host also runs a real ``sshd`` on its lab address (config and host key under
``STATE_DIR/hosta/ssh``), root login by the lab's own key only: the agent reaches
a lab host exactly as it reaches a real one, over ssh derived from the libvirt URI.
The client side (key, ``known_hosts``, ``ssh_config``) lives in ``STATE_DIR/ssh``.

A host with ``LabHost.tcg_cpu_without`` (hostb: an older CPU without ``pku``) sees a
wrapper at ``/usr/bin/qemu-system-x86_64`` that runs the real QEMU with those features
off in its TCG CPU. libvirt learns the host CPU by probing that binary, so the
difference is there before libvirtd first starts and survives any re-probe; nothing
edits libvirt's capability cache or restarts libvirtd (``build_qemu_wrapper``).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from libvirt_vmotion.lab.constants import STATE_DIR

if TYPE_CHECKING:
    from collections.abc import Iterable

    from libvirt_vmotion.lab.constants import LabHost

LIBVIRTD_TCP_PORT: Final = 16509
"""libvirtd's default TCP port (``tcp_port``), used by ``qemu+tcp://`` URIs."""
LIBVIRTD_TLS_PORT: Final = 16514
"""libvirtd's default TLS port (``tls_port``), used by ``qemu+tls://`` URIs."""
QEMU_TLS_DIR: Final = "/etc/pki/qemu"
"""Where each lab host's QEMU finds its migration certificates (``lab.pki``)."""

LIBVIRTD_LOG_NAME: Final = "libvirtd.log"
VIRTLOGD_LOG_NAME: Final = "virtlogd.log"
HOLDER_LOG_NAME: Final = "holder.log"
SSHD_LOG_NAME: Final = "sshd.log"
SSH_PORT: Final = 22
QEMU_BINARY: Final = Path("/usr/bin/qemu-system-x86_64")
"""The x86_64 emulator libvirt finds on a lab host (and names in a guest's ``<emulator>``)."""
QEMU_REAL_BINARY: Final = Path("/run/vmotion-lab/qemu-system-x86_64")
STALL_INCOMING_MARKER: Final = Path("/run/vmotion-lab/stall-incoming")
"""While this file exists on a host with a QEMU wrapper, an incoming QEMU hangs before it
starts: the prepare step of a migration to that host never returns (tests of
``prepare-timeout``; libvirt's own stuck fork cannot be made on purpose)."""
"""Inside a host with a wrapped QEMU: the real binary, bind-mounted (the per-host /run)."""
QEMU_TCG_CPU_TYPE: Final = "max-x86_64-cpu"
"""QEMU's type of the TCG host CPU (``max``), the one libvirt expands for the host model."""


@dataclass(frozen=True, slots=True)
class HostPaths:
    """Where one lab host's state lives, as seen from the root mount namespace."""

    root: Path
    """``STATE_DIR/<host>``."""

    @property
    def etc(self) -> Path:
        """Per-host ``/etc/libvirt``."""
        return self.root / "etc"

    @property
    def run(self) -> Path:
        """Per-host ``/run``."""
        return self.root / "run"

    @property
    def lib(self) -> Path:
        """Per-host ``/var/lib/libvirt``."""
        return self.root / "lib"

    @property
    def log(self) -> Path:
        """Per-host ``/var/log/libvirt`` (kept across ``down`` for post-mortems)."""
        return self.root / "log"

    @property
    def cache(self) -> Path:
        """Per-host ``/var/cache/libvirt`` (kept across rebuilds: QEMU capability cache)."""
        return self.root / "cache"

    @property
    def hosts_file(self) -> Path:
        """Per-host ``/etc/hosts``."""
        return self.root / "hosts"

    @property
    def holder_pid_file(self) -> Path:
        """PID of the long-lived holder process (written by the holder itself)."""
        return self.root / "holder.pid"

    @property
    def holder_log(self) -> Path:
        """stdout/stderr of the holder script (mount or daemon start failures)."""
        return self.log / HOLDER_LOG_NAME

    @property
    def libvirtd_log(self) -> Path:
        """The ``log_outputs`` file of libvirtd."""
        return self.log / LIBVIRTD_LOG_NAME

    @property
    def libvirtd_pid_file(self) -> Path:
        """``/run/libvirtd.pid`` inside the host."""
        return self.run / "libvirtd.pid"

    @property
    def virtlogd_pid_file(self) -> Path:
        """``/run/virtlogd.pid`` inside the host."""
        return self.run / "virtlogd.pid"

    @property
    def virtlockd_pid_file(self) -> Path:
        """``/run/virtlockd.pid`` inside the host (the lock manager's daemon)."""
        return self.run / "virtlockd.pid"

    @property
    def ssh(self) -> Path:
        """The sshd config, host key and log of this host."""
        return self.root / "ssh"

    @property
    def sshd_config(self) -> Path:
        """The host's ``sshd_config``."""
        return self.ssh / "sshd_config"

    @property
    def ssh_host_key(self) -> Path:
        """The host's ed25519 host key (kept across rebuilds: known_hosts stays valid)."""
        return self.ssh / "ssh_host_ed25519_key"

    @property
    def sshd_pid_file(self) -> Path:
        """``/run/sshd.pid`` inside the host."""
        return self.run / "sshd.pid"

    @property
    def qemu_wrapper(self) -> Path:
        """The QEMU wrapper of a host with ``tcg_cpu_without`` (bound over ``QEMU_BINARY``).

        It lives outside ``run`` and is rewritten only when its text changes: libvirt
        keys its capability cache on the binary's ctime, and a new ctime costs a probe.
        """
        return self.root / "qemu-system-x86_64"

    @property
    def vmotion_lib(self) -> Path:
        """Per-host ``/var/lib/libvirt-vmotion`` (reservation store)."""
        return self.root / "vmotion-lib"

    @property
    def vmotion_etc(self) -> Path:
        """Per-host ``/etc/libvirt-vmotion`` (``capacity.toml``)."""
        return self.root / "vmotion-etc"

    @property
    def pki(self) -> Path:
        """Per-host ``/etc/pki``: libvirt's and QEMU's TLS files (``lab.pki``)."""
        return self.root / "pki"

    def bind_mounts(self) -> tuple[tuple[Path, Path], ...]:
        """Return ``(source, target)`` pairs, in mount order (``/run`` first).

        ``/run`` goes first so that anything a later step writes under ``/run``
        lands in the per-host copy.
        """
        return (
            (self.run, Path("/run")),
            (self.etc, Path("/etc/libvirt")),
            (self.lib, Path("/var/lib/libvirt")),
            (self.log, Path("/var/log/libvirt")),
            (self.cache, Path("/var/cache/libvirt")),
            (self.hosts_file, Path("/etc/hosts")),
            (self.vmotion_lib, Path("/var/lib/libvirt-vmotion")),
            (self.vmotion_etc, Path("/etc/libvirt-vmotion")),
            (self.pki, Path("/etc/pki")),
        )


def host_paths(host: LabHost, state_dir: Path = STATE_DIR) -> HostPaths:
    """Return the state layout of ``host`` under ``state_dir``."""
    return HostPaths(root=state_dir / host.name)


def build_libvirtd_conf(host: LabHost) -> str:
    """Return the full ``libvirtd.conf`` of ``host``.

    TCP without auth on the lab address only (the lab network exists only inside
    namespaces), and TLS beside it (``qemu+tls://``, certificates from ``lab.pki`` at
    libvirt's default paths, the client's certificate checked, no further auth); a
    distinct ``host_uuid`` so libvirt's same-host migration check passes.
    """
    log_path = Path("/var/log/libvirt") / LIBVIRTD_LOG_NAME
    return (
        f"# Generated by libvirt_vmotion.lab for {host.name}; rewritten on every rebuild.\n"
        "listen_tls = 1\n"
        "listen_tcp = 1\n"
        f'listen_addr = "{host.addr}"\n'
        f'tcp_port = "{LIBVIRTD_TCP_PORT}"\n'
        f'tls_port = "{LIBVIRTD_TLS_PORT}"\n'
        'auth_tcp = "none"\n'
        'auth_tls = "none"\n'
        'auth_unix_rw = "none"\n'
        f'host_uuid = "{host.host_uuid}"\n'
        # Info for the migration code paths, warnings for the chatty rest.
        'log_filters = "2:qemu.qemu_migration 2:qemu.qemu_process 3:rpc 3:util 4:object 4:json"\n'
        f'log_outputs = "2:file:{log_path}"\n'
    )


def build_qemu_conf(host: LabHost) -> str:
    """Return the full ``qemu.conf`` of ``host``.

    ``security_driver = "none"`` and ``dynamic_ownership = 0``: both hosts share one
    file system, so relabelling/chowning the shared guest kernel and initrd on one
    host would break the other. Migration streams use the lab address, and TLS
    when asked (``VIR_MIGRATE_TLS``) with the host's certificates from ``lab.pki``:
    the source's QEMU checks the destination's against ``migration_host``.
    """
    return (
        f"# Generated by libvirt_vmotion.lab for {host.name}; rewritten on every rebuild.\n"
        'user = "root"\n'
        'group = "root"\n'
        "dynamic_ownership = 0\n"
        "remember_owner = 0\n"
        'security_driver = "none"\n'
        f'migration_host = "{host.addr}"\n'
        f'migration_address = "{host.addr}"\n'
        f'default_tls_x509_cert_dir = "{QEMU_TLS_DIR}"\n'
        f'migrate_tls_x509_cert_dir = "{QEMU_TLS_DIR}"\n'
        "migrate_tls_x509_verify = 1\n"
        # One writer per disk: virtlockd holds a lock on every disk a guest uses,
        # handed over with the guest at switchover (see build_qemu_lockd_conf).
        'lock_manager = "lockd"\n'
    )


def build_qemu_lockd_conf() -> str:
    """Return ``qemu-lockd.conf``: lock every disk file itself (no lease directory).

    ``auto_disk_leases`` makes virtlockd take an fcntl lock on each disk's own
    path, so the lockspace is wherever the disk lives: on shared storage
    (GlusterFS forwards POSIX locks between its clients) a second start of the
    same disk on another host is refused; a local disk locks only on its host.
    A shared lease directory would also make same-path local disks of two hosts
    collide, which a copied (non-shared) migration has by design.
    """
    return (
        "# Generated by libvirt_vmotion.lab; rewritten on every rebuild.\n"
        "auto_disk_leases = 1\n"
        "require_lease_for_disks = 1\n"
    )


def build_virtlogd_conf() -> str:
    """Return ``virtlogd.conf``: log to a file in the host's log directory."""
    log_path = Path("/var/log/libvirt") / VIRTLOGD_LOG_NAME
    return (
        "# Generated by libvirt_vmotion.lab; rewritten on every rebuild.\n"
        f'log_outputs = "3:file:{log_path}"\n'
    )


def build_qemu_wrapper(host: LabHost) -> str | None:
    """Return the QEMU wrapper script of ``host``, or ``None`` when it runs QEMU as is.

    ``-global max-x86_64-cpu.FEATURE=off`` takes each feature out of the TCG CPU that
    libvirt's probe expands (``query-cpu-model-expansion`` of ``max``), so the host
    model libvirt reports, and ``compareHypervisorCPU`` checks against, lacks it. It
    changes nothing for a guest with a named model (the lab's ``qemu64``): the global
    applies to the ``max`` CPU only.

    Raises:
        ValueError: a feature name that is not a QEMU property name.

    """
    if not host.tcg_cpu_without:
        return None
    for feature in host.tcg_cpu_without:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", feature):
            msg = f"{host.name}: tcg_cpu_without has {feature!r}, not a QEMU CPU property name"
            raise ValueError(msg)
    globals_ = " ".join(f"-global {QEMU_TCG_CPU_TYPE}.{f}=off" for f in host.tcg_cpu_without)
    return (
        f"#!/bin/sh\n# Generated by libvirt_vmotion.lab for {host.name}: a TCG CPU without "
        f"{', '.join(host.tcg_cpu_without)} (an older CPU).\n"
        f"if [ -e {STALL_INCOMING_MARKER} ]; then\n"
        '    case " $* " in *" -incoming "*) exec sleep 600 ;; esac\n'
        "fi\n"
        f'exec {QEMU_REAL_BINARY} {globals_} "$@"\n'
    )


def build_hosts_file(hosts: Iterable[LabHost]) -> str:
    """Return the ``/etc/hosts`` every lab host sees: loopback plus all lab hosts."""
    lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
    lines.extend(f"{host.addr} {host.name}" for host in hosts)
    return "\n".join(lines) + "\n"


def build_holder_script(host: LabHost, paths: HostPaths) -> str:
    """Return the ``sh`` script the holder runs inside its fresh mount+UTS namespace.

    It records its PID, drops its copies of ``/run/netns`` (otherwise this mount
    namespace would pin every network namespace of the machine, other people's too),
    bind-mounts the per-host state (and the QEMU wrapper of a host with
    ``tcg_cpu_without``), sets the hostname, starts ``virtlogd`` and
    ``libvirtd -l`` (no socket activation here, so ``-l`` is what opens TCP) and
    finally becomes ``sleep infinity`` under the same PID, keeping the namespaces alive.
    ``mount -n`` keeps util-linux from creating ``/run/mount/utab`` on the real ``/run``.
    """
    q = shlex.quote
    lines = [
        "set -eu",
        f"echo $$ > {q(str(paths.holder_pid_file))}",
        "umount -n -l /run/netns 2>/dev/null || true",
    ]
    # The product's own state directories may not exist on the machine yet.
    lines.append("mkdir -p /var/lib/libvirt-vmotion /etc/libvirt-vmotion /etc/pki")
    lines.extend(f"mount -n --bind {q(str(src))} {q(str(dst))}" for src, dst in paths.bind_mounts())
    if host.tcg_cpu_without:
        # The real QEMU first (its placeholder lives in the per-host /run just bound),
        # then the wrapper over its usual path; both mounts stay in this namespace.
        real, binary = q(str(QEMU_REAL_BINARY)), q(str(QEMU_BINARY))
        wrapper = q(str(paths.qemu_wrapper))
        lines += [
            f"mkdir -p {q(str(QEMU_REAL_BINARY.parent))}",
            f": > {real}",
            f"mount -n --bind {binary} {real}",
            f"mount -n --bind {wrapper} {binary}",
        ]
    lines += [
        f"hostname {q(host.name)}",
        'virtlogd -d || { echo "virtlogd -d failed with status $?"; exit 1; }',
        # The lock manager's daemon (lock_manager = "lockd"): libvirtd only spawns it
        # itself when unprivileged, so start it before any guest needs a lock. Daemons
        # log to their own files, not here: say which one failed, or a holder that
        # dies under `set -e` leaves an empty holder.log (seen intermittently).
        'virtlockd -d || echo "virtlockd -d failed with status $?"',
        'libvirtd -d -l || { echo "libvirtd -d -l failed with status $?"; exit 1; }',
        # sshd's privilege-separation directory lives in the (per-host) /run.
        "mkdir -p -m 0755 /run/sshd",
        f"/usr/sbin/sshd -f {q(str(paths.sshd_config))} -E {q(str(paths.log / SSHD_LOG_NAME))}",
        f"echo 'holder for {host.name} ready'",
        "exec sleep infinity",
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class ClientSsh:
    """The lab's ssh client side, as seen from the root mount namespace."""

    root: Path
    """``STATE_DIR/ssh``."""

    @property
    def key(self) -> Path:
        """The private key root logs in with on every lab host."""
        return self.root / "id_ed25519"

    @property
    def authorized_keys(self) -> Path:
        """What every lab sshd accepts: the lab key only."""
        return self.root / "authorized_keys"

    @property
    def known_hosts(self) -> Path:
        """Host keys of the lab hosts, by address and name."""
        return self.root / "known_hosts"

    @property
    def config(self) -> Path:
        """``ssh -F`` file used by ``VMOTION_AGENT_SSH``."""
        return self.root / "ssh_config"


def client_ssh(state_dir: Path = STATE_DIR) -> ClientSsh:
    """Return the lab's ssh client layout under ``state_dir``."""
    return ClientSsh(root=state_dir / "ssh")


def build_sshd_config(host: LabHost, paths: HostPaths, client: ClientSsh) -> str:
    """Return the ``sshd_config`` of ``host``: its lab address only, root by the lab key only."""
    return (
        f"# Generated by libvirt_vmotion.lab for {host.name}; rewritten on every rebuild.\n"
        f"ListenAddress {host.addr}:{SSH_PORT}\n"
        f"HostKey {paths.ssh_host_key}\n"
        "PidFile /run/sshd.pid\n"
        f"AuthorizedKeysFile {client.authorized_keys}\n"
        "PermitRootLogin prohibit-password\n"
        "AllowUsers root\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "UseDNS no\n"
        "PrintMotd no\n"
        "X11Forwarding no\n"
        "AllowTcpForwarding no\n"
        "Subsystem sftp internal-sftp\n"
    )


def build_ssh_client_config(hosts: Iterable[LabHost], client: ClientSsh) -> str:
    """Return the ``ssh -F`` config that reaches every lab host by address or name."""
    patterns = " ".join(f"{h.addr} {h.name}" for h in hosts)
    return (
        "# Generated by libvirt_vmotion.lab; used through VMOTION_AGENT_SSH.\n"
        f"Host {patterns}\n"
        "  User root\n"
        f"  IdentityFile {client.key}\n"
        "  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {client.known_hosts}\n"
        "  GlobalKnownHostsFile /dev/null\n"
        "  StrictHostKeyChecking yes\n"
        "  BatchMode yes\n"
        "  ConnectTimeout 5\n"
        "  LogLevel ERROR\n"
        # One connection per host, reused for 60 s: a pre-flight makes several agent
        # calls, each a full ssh handshake otherwise. The master lives in the client
        # namespace, so `lab down` ends it with everything else there.
        "  ControlMaster auto\n"
        f"  ControlPath {client.root}/cm-%C\n"
        "  ControlPersist 60\n"
    )


def build_known_hosts(host_keys: Iterable[tuple[LabHost, str]]) -> str:
    """Return ``known_hosts`` lines: each host's public key under its address and name."""
    return "".join(f"{h.addr},{h.name} {pub.strip()}\n" for h, pub in host_keys)


def build_agent_env(client: ClientSsh, python: str) -> dict[str, str]:
    """Environment that makes ``agent.RemoteHost`` reach lab hosts over the lab's ssh."""
    return {
        "VMOTION_AGENT_SSH": f"ssh -F {client.config}",
        "VMOTION_AGENT_PYTHON": python,
    }
