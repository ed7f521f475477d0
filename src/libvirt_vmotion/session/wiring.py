"""The real collaborators of a Session: libvirt on both hosts, our agent, the history.

I/O: this is where a Session meets the world. ``open_session`` opens both hosts'
libvirt connections and builds every port ``session.core`` asks for; the CLI
(and ``evacuate``, for many guests at once) only calls it.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from libvirt_vmotion.adapters import ops
from libvirt_vmotion.errors import ReservationError, VmotionError
from libvirt_vmotion.preflight.result import format_bytes
from libvirt_vmotion.reserve.store import Unreleased, lease_ends_by_s
from libvirt_vmotion.session.core import (
    Claim,
    DiskToCreate,
    Events,
    Preflight,
    Session,
    SessionResult,
    Whereabouts,
)
from libvirt_vmotion.session.gate import HostPreflight, PreflightSettings, RateMemo

if TYPE_CHECKING:
    from libvirt_vmotion.adapters.agent import Guard, RemoteHost
    from libvirt_vmotion.adapters.virt import Hypervisor
    from libvirt_vmotion.converge.loop import HostConnection, PostSwitchover
    from libvirt_vmotion.converge.ports import Observer, PrepareRescue
    from libvirt_vmotion.converge.progress import ProgressView
    from libvirt_vmotion.model import MeasuredContext, MigrationOutcome, MigrationRequest
    from libvirt_vmotion.policy import MigrationPolicy


@dataclass(frozen=True, slots=True)
class AgentDestination:
    """The ``Destination`` port over our agent on the destination host."""

    agent: RemoteHost
    warn: Callable[[str], None]

    def reserve(self, reservation_id: str, claim: Claim) -> Mapping[str, object]:
        """Reserve memory + overhead, vCPUs and an inbound slot (raises ReservationError)."""
        from libvirt_vmotion.adapters.agent import (  # noqa: PLC0415
            AgentOperationFailed,
            AgentUnavailable,
        )

        request = ops.ReserveRequest(
            reservation_id=reservation_id,
            domain=claim.domain,
            owner=f"vmotion pid {os.getpid()} on {socket.gethostname()}",
            memory_bytes=claim.memory_bytes,
            vcpus=claim.vcpus,
        )
        try:
            return ops.to_json(ops.RESERVE.call(self.agent, request))
        except AgentOperationFailed as exc:
            raise ReservationError(exc.message, hint=exc.hint) from exc
        except AgentUnavailable as exc:
            msg = (
                f"Could not reserve {format_bytes(claim.memory_bytes)} on {claim.dest_host}: "
                f"{exc.message}"
            )
            raise ReservationError(msg, hint=exc.hint) from exc

    def release(
        self,
        reservation_id: str,
        reply: Mapping[str, object],
        *,
        host: str,
        timeout_s: float | None,
    ) -> Unreleased | None:
        """Release; bounded by ``timeout_s`` after a failure (the lease frees it anyway)."""
        if timeout_s is None:
            try:
                ops.RELEASE.call(self.agent, ops.ReleaseRequest(reservation_id=reservation_id))
            except VmotionError as exc:  # the lease and the hook release it anyway
                self.warn(f"could not release reservation {reservation_id}: {exc.message}")
            return None
        try:
            ops.RELEASE.call(
                self.agent, ops.ReleaseRequest(reservation_id=reservation_id), timeout_s=timeout_s
            )
        except VmotionError as exc:
            timed_out = isinstance(exc, ops.AgentTimedOut)
            return Unreleased(
                reservation_id=reservation_id,
                host=host,
                reason=f"no answer within {timeout_s:g} s" if timed_out else exc.message,
                ends_by_s=lease_ends_by_s(reply, now_s=time.time()),
            )
        return None

    def precreate(self, disks: Sequence[DiskToCreate]) -> tuple[str, ...]:
        """Create the copy's destination images; the paths created."""
        request = ops.DisksRequest(disks=tuple(d.to_dict() for d in disks))
        return ops.DISK_PRECREATE.call(self.agent, request).created

    def remove(self, paths: Sequence[str]) -> None:
        """Remove images this Session created."""
        ops.DISK_REMOVE.call(self.agent, ops.PathsRequest(paths=tuple(paths)))


@dataclass(frozen=True, slots=True)
class SourceGuard:
    """The ``Guard`` port: the guard runs on the source host, through our agent there."""

    agent: RemoteHost
    libvirt_uri: str

    def start(self, domain: str, *, budget_s: float) -> Guard | None:
        """Start it (None, and the Session warns, when it cannot be started)."""
        try:
            return self.agent.start_guard(
                {
                    "domain": domain,
                    "controller": f"pid {os.getpid()} on {socket.gethostname()}",
                    "libvirt_uri": self.libvirt_uri,
                    "budget_s": budget_s,
                }
            )
        except OSError:
            return None


def host_local_uri(uri: str) -> str:
    """The URI a host's own agent opens its libvirt with (the remote part dropped).

    >>> host_local_uri("qemu+tcp://hosta/system")
    'qemu:///system'
    >>> host_local_uri("qemu:///session")
    'qemu:///session'
    >>> host_local_uri("qemu+tls://hosta/system?pkipath=/srv/pki")
    'qemu:///system'
    """
    scheme, _, rest = uri.partition("://")
    path = rest.partition("/")[2].partition("?")[0]
    return f"{scheme.partition('+')[0]}:///{path}"


@dataclass(frozen=True, slots=True)
class HostLocator:
    """The ``Locator`` port over both hosts' libvirt connections."""

    source: HostConnection
    dest: HostConnection

    def where(self, domain: str) -> Whereabouts:
        """Running on the source, a job left there, present on the destination."""
        running: bool | None = None
        job: bool | None = None
        try:
            guest = self.source.lookup(domain)
            running = guest.is_running()
            job = guest.job_sample(now_s=time.monotonic()).is_active
        except VmotionError:
            pass
        try:
            present: bool | None = self.dest.has_guest(domain)
        except VmotionError:
            present = None
        return Whereabouts(running, job, present)


@dataclass(slots=True)
class LoopMover:
    """The ``Mover`` port: ``converge.loop.migrate`` between the two open hosts."""

    source: HostConnection
    dest: HostConnection
    observers: Sequence[Observer]
    cutover: PostSwitchover | None
    on_progress: Callable[[ProgressView], None] | None
    rescue: PrepareRescue | None = None

    def __call__(
        self, request: MigrationRequest, *, policy: MigrationPolicy, measured: MeasuredContext
    ) -> tuple[MigrationOutcome, Mapping[str, Mapping[str, object]]]:
        """Run the controller loop (raises MigrationAborted / CutoverFailed)."""
        from libvirt_vmotion.converge.loop import migrate  # noqa: PLC0415

        return migrate(
            request,
            source=self.source,
            dest=self.dest,
            observers=self.observers,
            cutover=self.cutover,
            policy=policy,
            on_progress=self.on_progress,
            measured=measured,
            rescue=self.rescue,
        )


@dataclass(frozen=True, slots=True)
class HistoryRunLog:
    """The ``RunLog`` port over the SQLite history (``adapters.history``)."""

    cap_mib_s: int | None

    def record(self, result: SessionResult, report: Mapping[str, object]) -> None:
        """Remember a landed pre-copy run (post-copy runs teach nothing about the sender)."""
        from libvirt_vmotion.adapters.history import Completed, History, default_path  # noqa: PLC0415

        run = Completed.from_report(
            report,
            host_pair=result.preflight.host_pair,
            cap_mib_s=float(self.cap_mib_s) if self.cap_mib_s else None,
            finished_s=time.time(),
        )
        if run is not None:
            History(default_path()).record(run)


@dataclass(frozen=True, slots=True)
class Around:
    """What the CLI puts around the migration itself (watchers, the cutover, progress)."""

    observers: Sequence[Observer] = ()
    cutover: Callable[[Hypervisor], PostSwitchover] | None = None
    on_progress: Callable[[ProgressView], None] | None = None


def _host_preflight(  # noqa: PLR0913  both hosts and both agents, keyword-only
    request: MigrationRequest,
    *,
    source: Hypervisor,
    dest: Hypervisor,
    settings: PreflightSettings,
    source_agent: RemoteHost,
    dest_agent: RemoteHost,
    rates: RateMemo | None = None,
) -> HostPreflight:
    """The Session's own pre-flight: facts gathered on both hosts, the history's rates."""
    from libvirt_vmotion.adapters.history import History, default_path  # noqa: PLC0415

    return HostPreflight(
        source=source,
        dest=dest,
        domain=request.domain,
        source_uri=request.source_uri or source.uri,
        dest_uri=request.dest_uri,
        settings=settings,
        source_agent=source_agent,
        dest_agent=dest_agent,
        history=History(default_path()),
        rates=rates,
    )


def _mover(
    source: Hypervisor, dest: Hypervisor, around: Around, dest_agent: RemoteHost
) -> LoopMover:
    """The controller loop between the two open hosts, with what the CLI puts around it."""
    from libvirt_vmotion.converge.prepare import AgentPrepareRescue  # noqa: PLC0415

    return LoopMover(
        source,
        dest,
        around.observers,
        around.cutover(source) if around.cutover else None,
        around.on_progress,
        AgentPrepareRescue(dest_agent),
    )


@contextmanager
def open_session(  # noqa: PLR0913  the Session's inputs and optional ports, keyword-only
    request: MigrationRequest,
    *,
    policy: MigrationPolicy,
    settings: PreflightSettings,
    events: Events,
    around: Around | None = None,
    preflight: Preflight | None = None,
    rates: RateMemo | None = None,
) -> Iterator[Session]:
    """Open both hosts and build a Session over the real ports; close them after.

    ``preflight``: the Session's pre-flight instead of one gathering on both hosts
    (``evacuate``'s planning); ``rates``: dirty rates shared with other pre-flights.

    Raises:
        ConnectionFailed: a host's libvirt does not answer (exit 7).

    """
    from libvirt_vmotion.adapters.agent import RemoteHost  # noqa: PLC0415
    from libvirt_vmotion.adapters.virt import Hypervisor  # noqa: PLC0415

    around = around or Around()
    dest_agent = RemoteHost.for_uri(request.dest_uri)
    dest_agent.warm()  # its ssh and start-up overlap opening libvirt
    with (
        Hypervisor.open(request.source_uri) as source,
        Hypervisor.open(request.dest_uri) as dest,
    ):
        source_agent = RemoteHost.for_uri(request.source_uri or source.uri)
        source_agent.warm()
        if preflight is None:
            preflight = _host_preflight(
                request,
                source=source,
                dest=dest,
                settings=settings,
                source_agent=source_agent,
                dest_agent=dest_agent,
                rates=rates,
            )
        yield Session(
            request=request,
            policy=policy,
            preflight=preflight,
            destination=AgentDestination(dest_agent, warn=events.warning),
            locator=HostLocator(source, dest),
            mover=_mover(source, dest, around, dest_agent),
            runlog=HistoryRunLog(cap_mib_s=request.bandwidth_mib_s),
            clock=time.monotonic,
            new_id=lambda: str(uuid.uuid4()),
            events=events,
            guard=SourceGuard(source_agent, host_local_uri(request.source_uri or source.uri)),
        )
