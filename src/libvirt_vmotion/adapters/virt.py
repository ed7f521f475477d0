"""The libvirt adapter: the only module that imports ``libvirt``.

I/O: holds no policy. Every libvirt call runs inside ``translating_errors``,
which maps libvirt error codes to this package's exception tree and keeps the
original as ``__cause__``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, NoReturn, Self
from urllib.parse import parse_qs, urlsplit

import libvirt
import libvirt_qemu
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from libvirt_vmotion.errors import (
    ConnectionFailed,
    DomainNotFound,
    HypervisorError,
    MigrationAborted,
    Unsupported,
    VmotionError,
)
from libvirt_vmotion.events import EventKind, MigrationEvent
from libvirt_vmotion.model import JobSample, JobType

log = logging.getLogger(__name__)

MIN_WINDOW_MS: Final = 100
SHORT_WINDOW_SAMPLE_PAGES: Final = 4096
"""Pages sampled per GiB in a sub-second dirty-rate window (QEMU's default: 512 in 1 s)."""
DIRTY_RATE_POLL_S: Final = 0.05

BINDING_FALLBACKS: Final[dict[str, tuple[object, str]]] = {
    "VIR_MIGRATE_PARAM_BANDWIDTH_AVAIL_SWITCHOVER": (
        "bandwidth.avail.switchover",
        "avail-switchover-bandwidth",
    ),
    # libvirt-domain.h: VIR_MIGRATE_TLS = (1 << 16), libvirt >= 3.2. It encrypts QEMU's
    # migration stream and, with a disk copy, the NBD connection too.
    "VIR_MIGRATE_TLS": (1 << 16, "tls"),
}
"""Constants newer than Debian 12's python3-libvirt (9.0): their value and ``FEATURES`` row.

The bindings only name what the daemon understands: a typed parameter is a
string and a flag a number, so an older binding can still ask a newer daemon
for a feature the version table says both hosts have. Pre-flight's
``feature-*`` checks decide whether it is asked for at all.
"""


def binding_constant(name: str) -> object:
    """``libvirt.NAME``, or its value from ``BINDING_FALLBACKS`` when the binding lacks it."""
    if hasattr(libvirt, name):
        return getattr(libvirt, name)
    return BINDING_FALLBACKS[name][0]


_CONNECTION_CODES: Final = frozenset(
    {
        libvirt.VIR_ERR_NO_CONNECT,
        libvirt.VIR_ERR_INVALID_CONN,
        libvirt.VIR_ERR_RPC,
        libvirt.VIR_ERR_AUTH_FAILED,
        libvirt.VIR_ERR_AUTH_UNAVAILABLE,
        libvirt.VIR_ERR_AUTH_CANCELLED,
    }
)
_UNSUPPORTED_CODES: Final = frozenset(
    {
        libvirt.VIR_ERR_NO_SUPPORT,
        libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED,
        libvirt.VIR_ERR_OPERATION_UNSUPPORTED,
    }
)

_silenced = threading.Lock()
_silenced_done = False


def _silence_default_error_printer() -> None:
    """Stop libvirt from printing every error to stderr; we report them ourselves."""
    global _silenced_done  # noqa: PLW0603  one-time process-wide libvirt setting
    with _silenced:
        if not _silenced_done:
            libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
            _silenced_done = True


_TLS_WORDS: Final = ("certificate", "x509", "gnutls", "tls ", "tls:", "handshake", "issuer")


def tls_failure_hint(detail: str, *, uri: str, migrating: bool) -> str:
    """What to check when a libvirt error is about TLS ("" when it is not).

    A certificate that is not trusted, names another host or has expired fails
    either libvirt's own connection (``qemu+tls://``) or, with VIR_MIGRATE_TLS,
    QEMU's migration stream; each has its files. Pure: text in, text out.

    >>> tls_failure_hint("unable to connect", uri="qemu+tcp://b/system", migrating=False)
    ''
    """
    if not any(word in detail.lower() for word in _TLS_WORDS):
        return ""
    parts = urlsplit(uri)
    host = parts.hostname or "the host"
    if migrating:
        return (
            "QEMU's migration TLS failed: on the destination its qemu.conf's "
            "migrate_tls_x509_cert_dir (default /etc/pki/qemu) needs ca-cert.pem, "
            "server-cert.pem (valid for its migration_host) and server-key.pem; on the "
            "source ca-cert.pem of the same CA, client-cert.pem and client-key.pem. "
            "With --to qemu+tls://, the source's libvirtd also connects to the destination's "
            "with its own /etc/pki/CA/cacert.pem and /etc/pki/libvirt/clientcert.pem. "
            "`vmotion check` names the file (tls-ca, tls-name, tls-expiry), or pass "
            "--tls off to migrate unencrypted."
        )
    pkipath = parse_qs(parts.query).get("pkipath", [""])[0]
    client = (
        f"{pkipath}/cacert.pem, clientcert.pem and clientkey.pem (pkipath)"
        if pkipath
        else "/etc/pki/CA/cacert.pem, /etc/pki/libvirt/clientcert.pem and "
        "/etc/pki/libvirt/private/clientkey.pem"
    )
    return (
        f"The TLS connection to libvirtd on {host} failed: here libvirt uses {client}; "
        f"{host} needs /etc/pki/libvirt/servercert.pem issued by the same CA, valid now "
        f"and for the name {host} (see https://libvirt.org/kbase/tlscerts.html; "
        f"virt-pki-validate checks a host), or use qemu+ssh://{host}/system."
    )


def _raise_translated(exc: libvirt.libvirtError, action: str, *, uri: str, domain: str) -> NoReturn:
    code = exc.get_error_code() or -1
    detail = exc.get_error_message() or str(exc)
    where = f"domain '{domain}' on {uri}" if domain else uri
    tls_hint = tls_failure_hint(detail, uri=uri, migrating=action.startswith(("migrate", "resume")))
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        msg = f"No guest named '{domain}' on {uri}."
        raise DomainNotFound(msg, hint=f"List the guests there: virsh -c {uri} list --all") from exc
    if code in _CONNECTION_CODES or (
        code == libvirt.VIR_ERR_SYSTEM_ERROR
        and exc.get_error_domain() in {libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE}
    ):
        msg = f"Cannot reach libvirt at {uri} while trying to {action}: {detail}"
        raise ConnectionFailed(
            msg,
            hint=tls_hint
            or f"Check that libvirtd runs there and listens (try: virsh -c {uri} version).",
        ) from exc
    if code == libvirt.VIR_ERR_OPERATION_ABORTED:
        msg = f"Migration of {where} was cancelled: {detail}"
        raise MigrationAborted(msg, hint="The guest keeps running on the source.") from exc
    if code in _UNSUPPORTED_CODES:
        msg = f"{uri} does not support the request to {action}: {detail}"
        raise Unsupported(
            msg, hint="Upgrade libvirt/QEMU there, or run without this option.", code=code
        ) from exc
    msg = f"libvirt failed to {action} ({where}): {detail}"
    raise HypervisorError(
        msg, hint=tls_hint or "See the libvirtd log on that host.", code=code
    ) from exc


@contextmanager
def translating_errors(action: str, *, uri: str, domain: str = "") -> Iterator[None]:
    """Translate ``libvirtError`` raised inside the block into our exception tree.

    Args:
        action: what was being attempted, in words (goes into the message).
        uri: the connection the call went to.
        domain: the guest involved, if any.

    Raises:
        VmotionError: a subclass matching libvirt's error code.

    """
    try:
        yield
    except libvirt.libvirtError as exc:
        _raise_translated(exc, action, uri=uri, domain=domain)


class _TransientError(VmotionError):
    """A connect attempt that may succeed if retried."""


def _open_once(uri: str) -> libvirt.virConnect:
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        # A daemon that is just starting refuses connections for a moment.
        if exc.get_error_code() == libvirt.VIR_ERR_SYSTEM_ERROR and "refused" in str(exc):
            raise _TransientError(str(exc)) from exc
        _raise_translated(exc, "connect", uri=uri, domain="")
    if conn is None:  # older bindings return None instead of raising
        msg = f"Cannot open a libvirt connection to {uri}."
        raise ConnectionFailed(msg, hint=f"Try: virsh -c {uri} version")
    return conn


_event_loop_lock = threading.Lock()
_event_loop_started = False


def ensure_event_loop() -> None:
    """Run libvirt's default event loop in a daemon thread (once per process).

    It must be registered before a connection is opened for that connection
    to deliver domain events.
    """
    global _event_loop_started  # noqa: PLW0603  one process-wide libvirt event loop
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


@dataclass(frozen=True, slots=True)
class MigrationOptions:
    """Migration features chosen at start (QEMU capabilities cannot change mid-job).

    Attributes:
        bandwidth_mib_s: bandwidth cap, None for unlimited.
        auto_converge: enable CPU throttling (its cap is then steered at runtime).
        postcopy: allow a later switch to post-copy.
        xbzrle: XBZRLE compression of re-sent pages.
        parallel_connections: multifd streams (0: off).
        postcopy_bandwidth_mib_s: background bandwidth once in post-copy, None
            for QEMU's default (unlimited: ``--bandwidth`` does not apply there).
        copy_disks: disks to mirror to the destination (VIR_MIGRATE_NON_SHARED_DISK).

    """

    bandwidth_mib_s: int | None = None
    auto_converge: bool = False
    postcopy: bool = False
    xbzrle: bool = False
    parallel_connections: int = 0
    zstd: bool = False
    """Compress the multifd streams with zstd (libvirt >= 9.4 with parallel connections)."""
    postcopy_bandwidth_mib_s: int | None = None
    copy_disks: tuple[str, ...] = ()
    """Disk targets (``vda``) to copy to the destination over NBD (non-shared storage)."""
    tls: bool = False
    """Encrypt the migration stream and the disk copy (VIR_MIGRATE_TLS): QEMU uses the
    x509 files of each host's ``migrate_tls_x509_cert_dir`` (``preflight.tls``)."""
    avail_switchover_mib_s: int | None = None
    """QEMU's ``avail-switchover-bandwidth`` (libvirt >= 11.1, QEMU >= 8.2): the rate its
    switchover decision assumes for the final, unthrottled round; None: QEMU's estimate."""


_LIFECYCLE_POSTCOPY: Final = {
    (libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY): (
        EventKind.POSTCOPY_STARTED
    ),
    (libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY_FAILED): (
        EventKind.POSTCOPY_PAUSED
    ),
    (libvirt.VIR_DOMAIN_EVENT_RESUMED, libvirt.VIR_DOMAIN_EVENT_RESUMED_POSTCOPY): (
        EventKind.POSTCOPY_RESUMED
    ),
}


def _stream_flags(options: MigrationOptions, params: dict[str, Any]) -> int:
    """Flags (and their parameters, added to ``params``) for how the data travels.

    Encryption, compression, parallel streams and the disk copy.
    """
    flags = 0
    if options.tls:
        flags |= int(binding_constant("VIR_MIGRATE_TLS"))  # type: ignore[call-overload]
    if options.xbzrle or options.zstd:
        flags |= libvirt.VIR_MIGRATE_COMPRESSED
        params[libvirt.VIR_MIGRATE_PARAM_COMPRESSION] = "zstd" if options.zstd else "xbzrle"
    if options.parallel_connections > 0:
        flags |= libvirt.VIR_MIGRATE_PARALLEL
        params[libvirt.VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS] = options.parallel_connections
    if options.copy_disks:
        # Mirror these disks over NBD while memory moves. Synchronous writes (QEMU's
        # write-blocking mirror): a guest write completes only once it is on the
        # destination too, so disk dirtying can never outrun the link and the mirror
        # always converges (libvirt >= 8.0).
        flags |= libvirt.VIR_MIGRATE_NON_SHARED_DISK
        flags |= libvirt.VIR_MIGRATE_NON_SHARED_SYNCHRONOUS_WRITES
        params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = list(options.copy_disks)
    return flags


@dataclass(frozen=True, slots=True)
class HostIdentity:
    """What makes two libvirt hosts different in libvirt's eyes."""

    hostname: str
    host_uuid: str
    libvirt_version: int
    hypervisor_version: int


class Hypervisor:
    """One open libvirt connection, with intention-revealing methods."""

    def __init__(self, conn: libvirt.virConnect, uri: str) -> None:
        """Wrap an open connection; use :meth:`open` instead."""
        self._conn = conn
        self.uri = uri
        self._identity: HostIdentity | None = None

    @classmethod
    def open(cls, uri: str, *, retry_for_s: float = 3.0) -> Hypervisor:
        """Open a read-write connection to ``uri`` (retrying briefly if refused).

        Raises:
            ConnectionFailed: the host cannot be reached.

        """
        _silence_default_error_printer()
        ensure_event_loop()
        try:
            for attempt in Retrying(
                retry=retry_if_exception_type(_TransientError),
                stop=stop_after_delay(retry_for_s),
                wait=wait_fixed(0.3),
                reraise=True,
            ):
                with attempt:
                    conn = _open_once(uri)
        except _TransientError as exc:
            msg = f"Cannot reach libvirt at {uri}: {exc}"
            raise ConnectionFailed(
                msg,
                hint=f"Check that libvirtd runs there and listens (try: virsh -c {uri} version).",
            ) from exc
        return cls(conn, uri)

    def close(self) -> None:
        """Close the connection; errors on close are ignored (nothing to act on)."""
        try:
            self._conn.close()
        except libvirt.libvirtError:
            log.debug("closing %s failed", self.uri, exc_info=True)

    def __enter__(self) -> Self:
        """Use as a context manager that closes the connection."""
        return self

    def __exit__(self, *_exc: object) -> None:
        """Close the connection."""
        self.close()

    def identity(self) -> HostIdentity:
        """Hostname, host UUID and versions of this host.

        Read once per connection (four calls, the capabilities XML among them):
        none of it changes while the connection lasts, since a restarted
        libvirtd drops it.
        """
        if self._identity is None:
            self._identity = self._read_identity()
        return self._identity

    def _read_identity(self) -> HostIdentity:
        with translating_errors("read host identity", uri=self.uri):
            hostname = self._conn.getHostname()
            caps = ET.fromstring(self._conn.getCapabilities())  # noqa: S314  trusted: our own libvirtd
            lib_version = self._conn.getLibVersion()
            hv_version = self._conn.getVersion()
        return HostIdentity(
            hostname=hostname,
            host_uuid=caps.findtext("host/uuid", default=""),
            libvirt_version=lib_version,
            hypervisor_version=hv_version,
        )

    def lookup(self, name: str) -> Guest:
        """Find a guest by name, UUID or numeric ID.

        Raises:
            DomainNotFound: no such guest on this host.

        """
        with translating_errors("look up the guest", uri=self.uri, domain=name):
            try:
                dom = self._conn.lookupByName(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
                dom = self._lookup_other(name, exc)
        return Guest(dom, self.uri)

    def _lookup_other(self, name: str, first: libvirt.libvirtError) -> libvirt.virDomain:
        if name.isdigit():
            return self._conn.lookupByID(int(name))
        if len(name) == 36 and name.count("-") == 4:  # canonical UUID form
            return self._conn.lookupByUUIDString(name)
        raise first

    def has_guest(self, name: str) -> bool:
        """True if a guest of that name is defined or running here."""
        try:
            self.lookup(name)
        except DomainNotFound:
            return False
        return True

    def running_guests(self) -> tuple[str, ...]:
        """Names of the guests running here (``evacuate``'s default set), sorted."""
        with translating_errors("list the running guests", uri=self.uri):
            doms = self._conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        return tuple(sorted(d.name() for d in doms))

    def define_and_start(self, xml: str) -> Guest:
        """Define a persistent guest from XML and start it."""
        with translating_errors("define and start a guest", uri=self.uri):
            dom = self._conn.defineXML(xml)
            dom.create()
        return Guest(dom, self.uri)

    # ------------------------------------------------------------ pre-flight facts

    def capabilities_xml(self) -> str:
        """The host's capabilities XML (host CPU, machine types, emulators)."""
        with translating_errors("read host capabilities", uri=self.uri):
            return str(self._conn.getCapabilities())

    def domain_capabilities_xml(
        self, *, emulator: str | None, arch: str, machine: str | None, virt_type: str
    ) -> str:
        """Domain capabilities for one emulator/arch/machine/virt type."""
        with translating_errors("read domain capabilities", uri=self.uri):
            return str(self._conn.getDomainCapabilities(emulator, arch, machine, virt_type, 0))

    def compare_guest_cpu(
        self, cpu_xml: str, *, emulator: str | None, arch: str, machine: str | None,
        virt_type: str,
    ) -> tuple[str, str]:  # fmt: skip
        """Compare a guest ``<cpu>`` with what this host's hypervisor can provide.

        Returns:
            ("identical" | "superset" | "incompatible", libvirt's explanation, which
            names the missing features when incompatible).

        """
        with translating_errors("compare the guest CPU", uri=self.uri):
            try:
                result = self._conn.compareHypervisorCPU(
                    emulator, arch, machine, virt_type, cpu_xml,
                    libvirt.VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE,
                )  # fmt: skip
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_CPU_INCOMPATIBLE:
                    raise
                return "incompatible", exc.get_error_message() or str(exc)
        names = {
            libvirt.VIR_CPU_COMPARE_IDENTICAL: "identical",
            libvirt.VIR_CPU_COMPARE_SUPERSET: "superset",
            libvirt.VIR_CPU_COMPARE_INCOMPATIBLE: "incompatible",
        }
        return names.get(result, "incompatible"), ""

    def host_cpus(self) -> int:
        """Number of active host CPUs."""
        with translating_errors("read host CPU count", uri=self.uri):
            return int(self._conn.getInfo()[2])

    def free_memory_bytes(self) -> int:
        """Free + buffers + page cache, as the host's kernel reports (node memory stats)."""
        with translating_errors("read host memory", uri=self.uri):
            stats: Mapping[str, int] = self._conn.getMemoryStats(
                libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0
            )
        kib = sum(int(stats.get(k, 0)) for k in ("free", "buffers", "cached"))
        return kib * 1024

    def bridge_interface(self, name: str) -> tuple[bool, bool, str]:
        """A host interface as libvirt's interface driver sees it.

        Returns:
            (exists, active, interface XML); XML is empty when it does not exist.

        Raises:
            Unsupported: the host's libvirt has no interface driver.

        """
        with translating_errors(f"look up host interface {name}", uri=self.uri):
            try:
                iface = self._conn.interfaceLookupByName(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_INTERFACE:
                    raise
                return False, False, ""
            return True, bool(iface.isActive()), str(iface.XMLDesc(0))

    def virtual_network(self, name: str) -> tuple[bool, bool, str]:
        """A libvirt network: (exists, active, bridge name)."""
        with translating_errors(f"look up network {name}", uri=self.uri):
            try:
                net = self._conn.networkLookupByName(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_NETWORK:
                    raise
                return False, False, ""
            bridge = ""
            with contextlib.suppress(libvirt.libvirtError):
                bridge = str(net.bridgeName())
            return True, bool(net.isActive()), bridge

    def volume_pool_for_path(self, path: str) -> str | None:
        """Name of the storage pool holding a volume at ``path`` here, or None.

        Pools whose target directory contains the path are refreshed first, so a
        file created after the pool was last scanned is found.
        """
        with translating_errors("look up a storage volume", uri=self.uri):
            for pool in self._conn.listAllStoragePools(
                libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE
            ):
                target = ET.fromstring(pool.XMLDesc(0)).findtext("target/path", default="")  # noqa: S314  trusted
                if target and path.startswith(target.rstrip("/") + "/"):
                    with contextlib.suppress(libvirt.libvirtError):
                        pool.refresh(0)
            try:
                vol = self._conn.storageVolLookupByPath(path)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                    raise
                return None
            return str(vol.storagePoolLookupByVolume().name())


class Guest:
    """One libvirt domain, with intention-revealing methods."""

    def __init__(self, dom: libvirt.virDomain, uri: str) -> None:
        """Wrap a libvirt domain; get one from :meth:`Hypervisor.lookup`."""
        self._dom = dom
        self.uri = uri
        self.name: str = dom.name()

    def _errors(self, action: str) -> Any:  # noqa: ANN401  context manager factory
        return translating_errors(action, uri=self.uri, domain=self.name)

    def is_running(self) -> bool:
        """True if the guest is running (or paused: QEMU is alive)."""
        with self._errors("read the guest state"):
            state, _reason = self._dom.state()
        return state in {libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED}

    def state_name(self) -> str:
        """State of the guest as a word (running, shut off ...)."""
        names = {
            libvirt.VIR_DOMAIN_NOSTATE: "no state",
            libvirt.VIR_DOMAIN_RUNNING: "running",
            libvirt.VIR_DOMAIN_BLOCKED: "blocked",
            libvirt.VIR_DOMAIN_PAUSED: "paused",
            libvirt.VIR_DOMAIN_SHUTDOWN: "shutting down",
            libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
            libvirt.VIR_DOMAIN_CRASHED: "crashed",
            libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
        }
        with self._errors("read the guest state"):
            state, _reason = self._dom.state()
        return names.get(state, f"state {state}")

    def xml(self) -> str:
        """The live domain XML."""
        with self._errors("read the domain XML"):
            return str(self._dom.XMLDesc(0))

    def block_size(self, target: str) -> tuple[int, int]:
        """``(capacity, allocation)`` in bytes of the disk ``target`` (``vda``).

        Capacity is what the guest sees; allocation is what the image really uses on
        the host (a sparse raw file or a qcow2 uses less): what a copy transfers.
        """
        with self._errors(f"read the size of disk {target}"):
            capacity, allocation, _physical = self._dom.blockInfo(target, 0)
        return int(capacity), int(allocation)

    def job_sample(self, *, now_s: float) -> JobSample:
        """Statistics of the current job (type ``none`` when there is none)."""
        with self._errors("read migration job statistics"):
            stats: Mapping[str, object] = self._dom.jobStats(0)
        return JobSample.from_job_stats(stats, now_s=now_s)

    def completed_job_sample(self, *, now_s: float) -> JobSample | None:
        """Statistics libvirt kept for the last completed job, if any."""
        with self._errors("read completed job statistics"):
            stats: Mapping[str, object] = self._dom.jobStats(
                libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED
            )
        sample = JobSample.from_job_stats(stats, now_s=now_s)
        return sample if sample.job_type is JobType.COMPLETED else None

    def interface_addresses(self, source: str) -> dict[str, tuple[str, ...]]:
        """The guest's IP addresses by NIC MAC, as libvirt learns them from ``source``.

        Args:
            source: ``agent`` (qemu-guest-agent), ``lease`` (libvirt network DHCP)
                or ``arp`` (the host's ARP/neighbour table).

        Raises:
            HypervisorError: that source cannot tell (no agent, no lease ...).

        """
        sources = {
            "agent": libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT,
            "lease": libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE,
            "arp": libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP,
        }
        with self._errors(f"read the guest's addresses ({source})"):
            found: Mapping[str, Mapping[str, Any]] = (
                self._dom.interfaceAddresses(sources[source], 0) or {}
            )
        out: dict[str, tuple[str, ...]] = {}
        for iface in found.values():
            mac = str(iface.get("hwaddr") or "").lower()
            addrs = tuple(str(a["addr"]) for a in iface.get("addrs") or () if a.get("addr"))
            if mac and addrs:
                out[mac] = out.get(mac, ()) + addrs
        return out

    def set_max_downtime(self, downtime_ms: int) -> None:
        """Set the longest pause QEMU may plan for at switchover."""
        with self._errors("set the maximum downtime"):
            self._dom.migrateSetMaxDowntime(downtime_ms, 0)

    def set_max_bandwidth(self, bandwidth_mib_s: int) -> None:
        """Cap the migration bandwidth (MiB/s)."""
        with self._errors("set the migration bandwidth"):
            self._dom.migrateSetMaxSpeed(bandwidth_mib_s, 0)

    def abort_job(self) -> None:
        """Abort the running job (the migration); the guest stays here."""
        with self._errors("abort the migration job"):
            self._dom.abortJob()

    def is_in_postcopy(self) -> bool:
        """True once this guest's migration has switched to post-copy (here or failed)."""
        postcopy = {
            (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY),
            (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED),
            (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_POSTCOPY),
            (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_POSTCOPY_FAILED),
        }
        with self._errors("read the guest state"):
            state, reason = self._dom.state()
        return (state, reason) in postcopy

    def is_postcopy_failed(self) -> bool:
        """True if a post-copy migration of this guest broke and awaits recovery."""
        with self._errors("read the guest state"):
            state, reason = self._dom.state()
        return (state, reason) in {
            (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED),
            (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_POSTCOPY_FAILED),
        }

    def start_postcopy(self) -> None:
        """Switch the running migration (started with post-copy allowed) to post-copy."""
        with self._errors("switch the migration to post-copy"):
            self._dom.migrateStartPostCopy(0)

    def pause_postcopy(self) -> None:
        """Interrupt a post-copy migration so it can be resumed (the guest waits)."""
        with self._errors("pause the post-copy migration"):
            self._dom.abortJobFlags(libvirt.VIR_DOMAIN_ABORT_JOB_POSTCOPY)

    def set_throttle_cap(self, percent: int) -> None:
        """Cap auto-converge's vCPU throttle at ``percent`` (1..99; 0 holds it at 1%).

        libvirt sets auto-converge's initial/increment only when the job starts
        and has no knob for QEMU's ``max-cpu-throttle``, so this goes to QEMU's
        monitor (libvirt marks the domain tainted "custom-monitor").
        """
        cap = min(99, max(1, percent))
        cmd = {
            "execute": "migrate-set-parameters",
            "arguments": {
                "max-cpu-throttle": cap,
                "cpu-throttle-initial": cap,
                "cpu-throttle-increment": cap,
            },
        }
        with self._errors("set the CPU throttle cap"):
            libvirt_qemu.qemuMonitorCommand(self._dom, json.dumps(cmd), 0)

    def migrate(self, dest_uri: str, options: MigrationOptions, *, resume: bool = False) -> None:
        """Live-migrate peer-to-peer with ``options``; blocks until the migration ends.

        With ``resume``, recover a broken post-copy migration instead
        (VIR_MIGRATE_POSTCOPY_RESUME, libvirt >= 8.5).

        Raises:
            MigrationAborted: the job was cancelled.
            HypervisorError: libvirt refused or the migration failed.

        """
        flags = (
            libvirt.VIR_MIGRATE_LIVE
            | libvirt.VIR_MIGRATE_PEER2PEER
            | libvirt.VIR_MIGRATE_PERSIST_DEST
            | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
            | libvirt.VIR_MIGRATE_ABORT_ON_ERROR
        )
        params: dict[str, Any] = {}
        if options.bandwidth_mib_s is not None:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = options.bandwidth_mib_s
        if options.auto_converge:
            flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
            params[libvirt.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INITIAL] = 1
            params[libvirt.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INCREMENT] = 1
        if options.postcopy or resume:
            flags |= libvirt.VIR_MIGRATE_POSTCOPY
            if options.postcopy_bandwidth_mib_s is not None:
                params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH_POSTCOPY] = (
                    options.postcopy_bandwidth_mib_s
                )
        if resume:
            flags |= libvirt.VIR_MIGRATE_POSTCOPY_RESUME
        if options.avail_switchover_mib_s:
            params[str(binding_constant("VIR_MIGRATE_PARAM_BANDWIDTH_AVAIL_SWITCHOVER"))] = (
                options.avail_switchover_mib_s
            )
        flags |= _stream_flags(options, params)
        action = f"resume post-copy to {dest_uri}" if resume else f"migrate to {dest_uri}"
        with self._errors(action):
            self._dom.migrateToURI3(dest_uri, params, flags)

    def watch_migration(  # noqa: C901  three small libvirt callbacks
        self, sink: Callable[[MigrationEvent], None], clock: Callable[[], float]
    ) -> Callable[[], None]:
        """Deliver this guest's migration events to ``sink`` (from libvirt's event thread).

        Returns:
            A function that stops the delivery.

        """
        conn = self._dom.connect()
        uuid = self._dom.UUIDString()

        def mine(dom: libvirt.virDomain) -> bool:
            return bool(dom.UUIDString() == uuid)

        def on_iteration(_c: object, dom: libvirt.virDomain, iteration: int, _o: object) -> None:
            if mine(dom):
                sink(MigrationEvent(EventKind.ITERATION, now_s=clock(), iteration=iteration))

        def on_job_completed(_c: object, dom: libvirt.virDomain, stats: object, _o: object) -> None:
            if mine(dom):
                sink(
                    MigrationEvent(EventKind.JOB_COMPLETED, now_s=clock(), detail=json.dumps(stats))
                )

        def on_lifecycle(
            _c: object, dom: libvirt.virDomain, event: int, detail: int, _o: object
        ) -> None:
            kind = _LIFECYCLE_POSTCOPY.get((event, detail))
            if kind is not None and mine(dom):
                sink(MigrationEvent(kind, now_s=clock()))

        with self._errors("watch migration events"):
            ids = [
                conn.domainEventRegisterAny(
                    self._dom, libvirt.VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION, on_iteration, None
                ),
                conn.domainEventRegisterAny(
                    self._dom, libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, on_job_completed, None
                ),
                conn.domainEventRegisterAny(
                    self._dom, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, on_lifecycle, None
                ),
            ]

        def stop() -> None:
            for callback_id in ids:
                try:
                    conn.domainEventDeregisterAny(callback_id)
                except libvirt.libvirtError:
                    log.debug("deregistering event %s failed", callback_id, exc_info=True)

        return stop

    def has_job(self) -> bool:
        """True if a job (migration, save, dump ...) runs on the guest."""
        with self._errors("read the guest's job"):
            info = self._dom.jobInfo()
        return bool(int(info[0]) != libvirt.VIR_DOMAIN_JOB_NONE)

    def resident_bytes(self) -> int:
        """Memory the QEMU process has touched (RSS): what a bulk pass must send at most."""
        with self._errors("read the guest's memory statistics"):
            stats: Mapping[str, int] = self._dom.memoryStats()
        return int(stats.get("rss", 0)) * 1024

    def start_dirty_rate_calc(self, *, seconds: float) -> float:
        """Start measuring the dirty rate with page sampling (works under TCG too).

        libvirt measures in whole seconds. A shorter window goes to QEMU's monitor
        (``calc-dirty-rate`` in milliseconds, QEMU >= 8.2; libvirt marks the domain
        tainted "custom-monitor"), sampling ``SHORT_WINDOW_SAMPLE_PAGES`` per GiB so
        that a quarter second sees as many changed pages as libvirt's second; where
        QEMU refuses, libvirt's whole second. Never call this while a migration job
        runs (the measurement disturbs it). Returns the window used, in seconds.

        Raises:
            Unsupported: the hypervisor cannot measure (libvirt < 7.2, QEMU < 5.2).

        """
        if 0 < seconds < 1:
            ms = max(MIN_WINDOW_MS, round(seconds * 1000))
            cmd = {
                "execute": "calc-dirty-rate",
                "arguments": {
                    "calc-time": ms,
                    "calc-time-unit": "millisecond",
                    "sample-pages": SHORT_WINDOW_SAMPLE_PAGES,
                    "mode": "page-sampling",
                },
            }
            try:
                reply = libvirt_qemu.qemuMonitorCommand(self._dom, json.dumps(cmd), 0)
            except libvirt.libvirtError as exc:
                log.debug("no %d ms dirty-rate window (%s): libvirt's 1 s", ms, exc)
            else:
                # libvirt hands QMP's reply back as it is: QEMU < 8.2 answers
                # {"error": ...} (no calc-time-unit) without libvirt raising.
                if '"error"' not in reply:
                    return ms / 1000
                log.debug("no %d ms dirty-rate window (%s): libvirt's 1 s", ms, reply[:200])
        whole = max(1, math.ceil(seconds))
        with self._errors("measure the dirty rate"):
            self._dom.startDirtyRateCalc(whole, libvirt.VIR_DOMAIN_DIRTYRATE_MODE_PAGE_SAMPLING)
        return float(whole)

    def dirty_rate_mib_s(self) -> float | None:
        """The last measurement's result in MiB/s, or None while it is still measuring."""
        with self._errors("read the dirty rate"):
            stats = self._dom.connect().domainListGetStats(
                [self._dom], libvirt.VIR_DOMAIN_STATS_DIRTYRATE
            )
        values: Mapping[str, object] = stats[0][1] if stats else {}
        if values.get("dirtyrate.calc_status") != libvirt.VIR_DOMAIN_DIRTYRATE_MEASURED:
            return None
        mb = values.get("dirtyrate.megabytes_per_second", 0)
        # QEMU computes it from 4 KiB page counts shifted by 20 bits: MiB/s.
        return float(mb) if isinstance(mb, int | float) else 0.0

    def measure_dirty_rate_mib_s(
        self, *, seconds: float, sleep: Callable[[float], None], timeout_s: float = 30.0
    ) -> float:
        """Start a measurement, wait for it and return the rate (see ``start_dirty_rate_calc``).

        Raises:
            Unsupported: the hypervisor cannot measure (libvirt < 7.2, QEMU < 5.2).
            HypervisorError: it did not finish within ``timeout_s``.

        """
        sleep(self.start_dirty_rate_calc(seconds=seconds))
        return self.wait_dirty_rate_mib_s(sleep=sleep, timeout_s=timeout_s)

    def wait_dirty_rate_mib_s(
        self, *, sleep: Callable[[float], None], timeout_s: float = 30.0
    ) -> float:
        """Poll until the running measurement has a result.

        Raises:
            HypervisorError: it did not finish within ``timeout_s``.

        """
        waited = 0.0
        while (rate := self.dirty_rate_mib_s()) is None:
            if waited >= timeout_s:
                msg = f"the dirty-rate measurement of '{self.name}' did not finish"
                raise HypervisorError(msg, hint="See the libvirtd log on the source host.")
            sleep(DIRTY_RATE_POLL_S)
            waited += DIRTY_RATE_POLL_S
        return rate
