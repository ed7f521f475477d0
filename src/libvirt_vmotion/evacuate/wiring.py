"""The real ports of an ``Evacuation``: Sessions over libvirt and our agent, the source host.

I/O: opens libvirt connections (through ``session.wiring`` and ``adapters.virt``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from libvirt_vmotion.session.gate import RateMemo
from libvirt_vmotion.session.wiring import Around, open_session

if TYPE_CHECKING:
    from libvirt_vmotion.adapters.virt import Hypervisor
    from libvirt_vmotion.converge.progress import ProgressView
    from libvirt_vmotion.model import MigrationRequest
    from libvirt_vmotion.policy import MigrationPolicy
    from libvirt_vmotion.session.core import Events, Preflight, Session
    from libvirt_vmotion.session.gate import PreflightSettings


@dataclass(frozen=True, slots=True)
class LibvirtSessions:
    """The ``Sessions`` port: one ``open_session`` per guest and destination.

    Attributes:
        policy: the user's policy, for every guest (its bandwidth becomes the
            guest's share of ``--bandwidth-total`` when one is given).
        settings: pre-flight choices, for every guest.
        events: the Session's events (pre-flight warnings, undo warnings).
        around: what the CLI puts around each move (the network cutover).

    """

    policy: MigrationPolicy
    settings: PreflightSettings
    events: Events
    around: Callable[[MigrationRequest], Around]
    rates: RateMemo = field(default_factory=RateMemo)
    """One dirty-rate measurement per guest for all its destinations' pre-flights."""

    def open(
        self,
        request: MigrationRequest,
        *,
        on_progress: Callable[[object], None] | None,
        preflight: Preflight | None = None,
    ) -> AbstractContextManager[Session]:
        """A Session for ``request`` (its bandwidth is this guest's share).

        ``preflight``, when given, replaces the Session's own (see ``open_session``).
        """
        policy = replace(self.policy, bandwidth_mib_s=request.bandwidth_mib_s)
        settings = replace(self.settings, bandwidth_mib_s=request.bandwidth_mib_s)
        around = self.around(request)
        progress: Callable[[ProgressView], None] | None = on_progress
        return open_session(
            request,
            policy=policy,
            settings=settings,
            events=self.events,
            around=replace(around, on_progress=progress),
            preflight=preflight,
            rates=self.rates,
        )


@dataclass(slots=True)
class LibvirtSource:
    """The ``SourceHost`` port over one libvirt connection to the host being emptied."""

    uri: str
    _hv: Hypervisor | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _open(self) -> Hypervisor:
        from libvirt_vmotion.adapters.virt import Hypervisor  # noqa: PLC0415

        with self._lock:
            if self._hv is None:
                self._hv = Hypervisor.open(self.uri)
            return self._hv

    def running_guests(self) -> tuple[str, ...]:
        """Names of the guests running on the source."""
        return self._open().running_guests()

    def set_bandwidth(self, guest: str, mib_s: int) -> None:
        """Change the running migration's cap (libvirt's max-speed call)."""
        self._open().lookup(guest).set_max_bandwidth(mib_s)

    def abort(self, guest: str) -> None:
        """Abort a migration in pre-copy (the guest stays on the source)."""
        self._open().lookup(guest).abort_job()

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            if self._hv is not None:
                self._hv.close()
                self._hv = None


@contextmanager
def source_host(uri: str) -> Iterator[LibvirtSource]:
    """The source host, closed after the block."""
    src = LibvirtSource(uri)
    try:
        yield src
    finally:
        src.close()
