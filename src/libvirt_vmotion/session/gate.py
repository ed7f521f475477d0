"""Pre-flight at the edge: gather the facts, run the checks, measure the forecast.

I/O: libvirt's remote API on both hosts, our agent on both hosts, the history
store. It changes nothing on any host: reserving and pre-creating disks are
``Session`` steps with their own undo. ``HostPreflight`` is the ``Preflight``
port of ``session.core``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Final

from libvirt_vmotion.errors import UsageError, VmotionError
from libvirt_vmotion.model import TlsMode
from libvirt_vmotion.preflight.capacity import dest_room
from libvirt_vmotion.preflight.registry import blockers, check_names, run_checks, unknown_skips
from libvirt_vmotion.preflight.tls import plan_tls
from libvirt_vmotion.session.core import (
    DEFAULT_WINDOW_S,
    Claim,
    DiskToCreate,
    PreflightOutcome,
)
from libvirt_vmotion.storage.plan import CopyMode, StorageFacts, copied_disks, needs_precreate

if TYPE_CHECKING:
    from libvirt_vmotion.adapters.agent import RemoteHost
    from libvirt_vmotion.adapters.history import History
    from libvirt_vmotion.adapters.virt import Hypervisor
    from libvirt_vmotion.preflight.facts import PreflightFacts
    from libvirt_vmotion.preflight.result import CheckResult


LINK_KNOWN_FOR_S: Final = 6 * 3600.0
"""How long a learned rate stands for the link between two hosts (no probe meanwhile)."""


@dataclass(slots=True)
class RateMemo:
    """Dirty rates measured by one command, shared by its pre-flights (thread-safe).

    ``evacuate`` pre-flights every guest toward every destination: the guest's
    dirty rate does not depend on the destination, so it is measured once, not
    once per destination (and two measurements of one guest would collide in
    QEMU). The first pre-flight of a guest measures (``claim``); the others
    gather their own facts meanwhile and wait only for the rate (``wait``).
    """

    max_age_s: float = 60.0
    wait_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _measuring: dict[tuple[str, str], threading.Event] = field(default_factory=dict)
    _rates: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)

    def recent(self, key: tuple[str, str]) -> float | None:
        """The guest's rate measured within ``max_age_s``, else None (key: source URI, guest)."""
        with self._lock:
            at, rate = self._rates.get(key, (float("-inf"), 0.0))
        return rate if self.clock() - at <= self.max_age_s else None

    def claim(self, key: tuple[str, str]) -> bool:
        """True: the caller measures this guest's rate now, then calls ``done``."""
        with self._lock:
            if key in self._measuring:
                return False
            self._measuring[key] = threading.Event()
            return True

    def done(self, key: tuple[str, str], rate_mib_s: float | None) -> None:
        """The claimed measurement ended (None: it failed); wake whoever waits for it."""
        with self._lock:
            if rate_mib_s is not None:
                self._rates[key] = (self.clock(), rate_mib_s)
            event = self._measuring.pop(key, None)
        if event is not None:
            event.set()

    def wait(self, key: tuple[str, str]) -> float | None:
        """The rate another pre-flight is measuring, once it has (None: it failed)."""
        with self._lock:
            event = self._measuring.get(key)
        if event is not None:
            event.wait(self.wait_s)
        return self.recent(key)


@dataclass(frozen=True, slots=True)
class PreflightSettings:
    """The user's pre-flight choices (``--skip-check``, the window, the copy mode ...)."""

    skip: tuple[str, ...] = ()
    window_s: float = DEFAULT_WINDOW_S
    copy: CopyMode = CopyMode.AUTO
    bandwidth_mib_s: int | None = None
    max_downtime_ms: int | None = None
    initial_downtime_ms: int | None = None
    tls: TlsMode = TlsMode.AUTO

    def __post_init__(self) -> None:
        """Refuse an unknown ``--skip-check`` name before any host is asked anything."""
        bad = unknown_skips(self.skip)
        if bad:
            msg = f"unknown check name(s) for --skip-check: {', '.join(bad)}"
            raise UsageError(msg, hint="Known checks: " + ", ".join(check_names()))


@dataclass(slots=True)
class HostPreflight:
    """Pre-flight for one guest between two open hosts (the ``Preflight`` port).

    Attributes:
        source: the source host's libvirt connection.
        dest: the destination host's libvirt connection.
        domain: the guest.
        source_uri: the URI the source was opened with (agent reached by it).
        dest_uri: the destination URI (agent reached by it; the p2p target).
        settings: the user's pre-flight choices.
        source_agent: our agent on the source host.
        dest_agent: our agent on the destination host.
        history: this controller's migration history (learned rates).
        clock: monotonic seconds.
        sleep: waits seconds (the dirty-rate window).
        wall_clock: Unix seconds (certificate validity).

    """

    source: Hypervisor
    dest: Hypervisor
    domain: str
    source_uri: str
    dest_uri: str
    settings: PreflightSettings
    source_agent: RemoteHost
    dest_agent: RemoteHost
    history: History
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = field(default=time.sleep)
    wall_clock: Callable[[], float] = time.time
    rates: RateMemo | None = None
    """Dirty rates shared by this command's pre-flights (``evacuate``); None: measure."""

    def run(self) -> PreflightOutcome:
        """Facts, checks, forecast; nothing changed on any host.

        With ``rates``, only the first of one guest's pre-flights toward several
        destinations measures the dirty rate; the others gather their facts side
        by side with it and wait for its rate.
        """
        rates = self.rates
        if rates is None:
            return self._run(None)
        key = (self.source_uri, self.domain)
        known = rates.recent(key)
        if known is not None:
            return self._run(lambda: known)
        if not rates.claim(key):
            return self._run(lambda: rates.wait(key))
        outcome = None
        try:
            outcome = self._run(None)
        finally:
            fc = outcome.forecast if outcome is not None else None
            rates.done(key, fc.inputs.dirty_rate_mib_s if fc is not None else None)
        return outcome

    def _run(self, known_rate: Callable[[], float | None] | None) -> PreflightOutcome:
        """One pre-flight; ``known_rate``: the rate another pre-flight measures (None: measure)."""
        from libvirt_vmotion.preflight.gather import measure_forecast, start_measuring  # noqa: PLC0415
        from libvirt_vmotion.preflight.linkrate import learned_switchover  # noqa: PLC0415

        started = self.clock()
        s = self.settings
        measuring = start_measuring(
            self.source,
            self.domain,
            window_s=s.window_s,
            dest_uri=self.dest_uri,
            measure_link_too=not s.bandwidth_mib_s and not self._link_known(),
            measure_rate=known_rate is None,
        )
        facts, storage = self._gather()
        results = run_checks(facts, skip=s.skip)
        host_pair = (facts.source.host_uuid, facts.dest.host_uuid)
        use_tls = facts.tls is not None and plan_tls(facts.tls).use_tls
        past = self.history.runs(*host_pair, tls=use_tls)  # TLS costs throughput
        switchover = learned_switchover(past)
        forecast, error = None, "not measured: a check blocks the migration"
        window_s = measuring.window_s if measuring is not None else s.window_s
        if not blockers(results):
            measured = measure_forecast(
                self.source,
                self.domain,
                source_agent=self.source_agent,
                bandwidth_mib_s=s.bandwidth_mib_s,
                max_downtime_ms=s.max_downtime_ms,
                window_s=s.window_s,
                sleep=self.sleep,
                started=measuring,
                past=past,
                switchover_mib_s=switchover,
                initial_downtime_ms=s.initial_downtime_ms,
                known_rate_mib_s=None if known_rate is None else known_rate(),
            )
            forecast, error, window_s = measured.forecast, measured.error, measured.window_s
            switchover = measured.switchover_mib_s  # bounded by this run's link
        return PreflightOutcome(
            results=results,
            forecast=forecast,
            forecast_error=error,
            window_s=window_s,
            host_pair=host_pair,
            copy_disks=tuple(d.target for d in copied_disks(storage)),
            to_create=_to_create(storage),
            claim=_claim(facts),
            switchover_mib_s=switchover,
            elapsed_s=self.clock() - started,
            room=dest_room(facts),
            use_tls=use_tls,
            tls_mode=s.tls,
            oldest_libvirt=min(facts.source.libvirt_version, facts.dest.libvirt_version),
        )

    def _link_known(self) -> bool:
        """Whether this pair's history has a recent learned rate (then the link is not probed).

        The learned rate (what QEMU achieved here) bounds the forecast's bandwidth
        below the link's anyway; the probe costs a second on the first migration of
        a pair and after ``LINK_KNOWN_FOR_S`` without one.
        """
        from libvirt_vmotion.preflight.linkrate import learned_rate  # noqa: PLC0415

        try:
            pair = (self.source.identity().host_uuid, self.dest.identity().host_uuid)
        except VmotionError:
            return False
        since = self.wall_clock() - LINK_KNOWN_FOR_S
        modes = {TlsMode.OFF: (False,), TlsMode.REQUIRE: (True,)}.get(
            self.settings.tls, (True, False)
        )
        return any(
            learned_rate(self.history.runs(*pair, tls=tls, newer_than_s=since)) is not None
            for tls in modes
        )

    def _gather(self) -> tuple[PreflightFacts, StorageFacts]:
        """Gather four independent fact families side by side.

        libvirt connections are thread-safe, so pre-flight costs the slowest family,
        not the sum. The first failure is the host facts' (as before).
        """
        from libvirt_vmotion.preflight.gather import gather, tls_inputs  # noqa: PLC0415
        from libvirt_vmotion.storage import host as storagehost  # noqa: PLC0415

        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="preflight") as pool:
            host_side = pool.submit(
                gather, self.source, self.dest, self.domain, agent=self.dest_agent
            )
            storage_side = pool.submit(
                lambda: storagehost.gather(
                    self.source.lookup(self.domain),
                    source_agent=self.source_agent,
                    dest_agent=self.dest_agent,
                    copy=self.settings.copy,
                )
            )
            network_side = pool.submit(self._bridge_checks)
            tls_side = pool.submit(
                tls_inputs,
                self.settings.tls,
                source_agent=self.source_agent,
                dest_agent=self.dest_agent,
                now_s=self.wall_clock(),
            )
            facts = host_side.result()
            storage = storage_side.result()
            facts = replace(
                facts,
                storage=storage,
                bridge_checks=network_side.result(),
                tls=tls_side.result(),
            )
        return facts, storage

    def _bridge_checks(self) -> tuple[CheckResult, ...]:
        """The network pre-flight on both hosts' bridges.

        A host whose agent cannot be reached gives a ``network-facts`` warning there;
        a guest that cannot be read gives nothing (``guest-running`` says why).
        """
        from libvirt_vmotion.preflight.gather import bridge_checks  # noqa: PLC0415

        try:
            return bridge_checks(
                source=self.source,
                domain=self.domain,
                source_uri=self.source_uri,
                dest_uri=self.dest_uri,
            )
        except VmotionError:
            return ()


def _claim(facts: PreflightFacts) -> Claim | None:
    """What to reserve on the destination (None: no agent there to hold it)."""
    if not facts.agent.available:
        return None
    return Claim(
        domain=facts.guest.name,
        memory_bytes=facts.guest.memory_bytes + facts.qemu_overhead_bytes,
        vcpus=facts.guest.vcpus,
        dest_host=facts.dest.hostname,
    )


def _to_create(storage: StorageFacts) -> tuple[DiskToCreate, ...]:
    return tuple(
        DiskToCreate(path=d.source, format=d.format, capacity_bytes=d.capacity_bytes)
        for d in copied_disks(storage)
        if needs_precreate(d, storage.dest_paths.get(d.source))
    )
