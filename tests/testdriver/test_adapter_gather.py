"""The libvirt adapter, fact gathering and a Session's pre-flight, in process, against
libvirt's test driver (real libvirt-python, no mock)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from libvirt_vmotion.adapters.agent import RemoteHost
from libvirt_vmotion.adapters.history import History
from libvirt_vmotion.adapters.virt import Hypervisor
from libvirt_vmotion.errors import (
    ConnectionFailed,
    DomainNotFound,
    PreflightFailed,
    Unsupported,
    UsageError,
)
from libvirt_vmotion.model import MIB, MigrationRequest
from libvirt_vmotion.policy import MigrationPolicy
from libvirt_vmotion.preflight.gather import gather
from libvirt_vmotion.session.core import PreflightOutcome
from libvirt_vmotion.session.gate import HostPreflight, PreflightSettings
from libvirt_vmotion.session.wiring import open_session

URI = f"test://{(Path(__file__).parent / 'data' / 'driver.xml').resolve()}"
NO_AGENT = RemoteHost(label="hostb", prefix=("false",), python="x")


class QuietEvents:
    def __init__(self) -> None:
        self.shown: list[PreflightOutcome] = []
        self.warnings: list[str] = []

    def preflight_done(self, outcome: PreflightOutcome) -> None:
        self.shown.append(outcome)

    def warning(self, text: str) -> None:
        self.warnings.append(text)


@pytest.fixture
def hosts() -> Iterator[tuple[Hypervisor, Hypervisor]]:
    # test:///<file> gives each connection its own copy of the file's state.
    with Hypervisor.open(URI) as source, Hypervisor.open(URI) as dest:
        yield source, dest


def test_an_unreachable_host_is_a_connection_error_with_a_hint() -> None:
    with pytest.raises(ConnectionFailed) as caught:
        Hypervisor.open("qemu+tcp://127.0.0.1:1/system", retry_for_s=0)
    assert caught.value.hint


def test_lookups_and_states_through_the_adapter(hosts: tuple[Hypervisor, Hypervisor]) -> None:
    source, _ = hosts
    guest = source.lookup("web01")
    assert guest.is_running()
    assert guest.state_name() == "running"
    assert "<name>web01</name>" in guest.xml()
    assert not source.lookup("stopped01").is_running()
    assert source.has_guest("web01")
    assert not source.has_guest("nosuch")
    assert source.identity().hostname
    with pytest.raises(DomainNotFound) as caught:
        source.lookup("nosuch")
    assert "nosuch" in caught.value.message
    assert "virsh" in caught.value.hint


def test_a_call_the_driver_lacks_is_translated_not_raw(
    hosts: tuple[Hypervisor, Hypervisor],
) -> None:
    source, _ = hosts
    with pytest.raises(Unsupported) as caught:
        source.lookup("web01").job_sample(now_s=0.0)
    assert "read migration job statistics" in caught.value.message


def test_facts_are_gathered_from_libvirt_and_say_the_agent_is_missing(
    hosts: tuple[Hypervisor, Hypervisor],
) -> None:
    source, dest = hosts
    facts = gather(source, dest, "web01", agent=NO_AGENT)
    assert facts.guest.name == "web01"
    assert facts.guest.memory_bytes == 512 * MIB
    assert facts.guest.vcpus == 1
    assert facts.agent.available is False
    assert "hostb" in facts.agent.error


def test_preflight_changes_nothing_and_names_its_blockers(
    hosts: tuple[Hypervisor, Hypervisor], tmp_path: Path
) -> None:
    source, dest = hosts
    outcome = HostPreflight(
        source=source,
        dest=dest,
        domain="web01",
        source_uri=URI,
        dest_uri=URI,
        settings=PreflightSettings(),
        source_agent=NO_AGENT,
        dest_agent=NO_AGENT,
        history=History(tmp_path / "history.db"),
        sleep=lambda _s: None,
    ).run()
    verdicts = {r.name: r.verdict.value for r in outcome.results}
    assert verdicts["same-host"] == "blocker"  # one driver file is one host
    assert verdicts["dest-agent"] == "warning"
    assert outcome.blocked
    assert outcome.claim is None  # no agent on the destination: nothing to reserve
    assert outcome.forecast is None
    assert outcome.forecast_error == "not measured: a check blocks the migration"
    assert outcome.check_section()["may_proceed"] is False


def test_a_session_refuses_before_reserving_anything() -> None:
    request = MigrationRequest("web01", URI, URI)
    events = QuietEvents()
    with open_session(
        request, policy=MigrationPolicy(), settings=PreflightSettings(), events=events
    ) as session:
        with pytest.raises(PreflightFailed) as caught:
            session.run()
        assert session.reservation_id == ""
    assert "[same-host]" in caught.value.message
    assert events.shown == []  # the error lists the blockers; no table before it


def test_an_unknown_skip_name_is_refused_before_any_host_is_asked() -> None:
    with pytest.raises(UsageError, match="unknown check name"):
        PreflightSettings(skip=("no-such-check",))


def test_tls_facts_come_through_the_agent_and_off_asks_nothing() -> None:
    import sys  # noqa: PLC0415
    import time  # noqa: PLC0415

    from libvirt_vmotion.model import TlsMode  # noqa: PLC0415
    from libvirt_vmotion.preflight.gather import tls_inputs  # noqa: PLC0415
    from libvirt_vmotion.preflight.tls import plan_tls  # noqa: PLC0415

    here = RemoteHost(label="here", prefix=(), python=sys.executable)  # the real agent, locally
    facts = tls_inputs(TlsMode.AUTO, source_agent=here, dest_agent=NO_AGENT, now_s=time.time())
    assert facts.source.available
    assert facts.source.cert_dir.startswith("/")
    assert set(facts.source.files) >= {"ca-cert.pem", "server-cert.pem", "client-key.pem"}
    assert not facts.dest.available
    assert "hostb" in facts.dest.error
    plan = plan_tls(facts)
    assert not plan.use_tls
    assert [r.name for r in plan.results] == ["migrate-tls"]
    off = tls_inputs(TlsMode.OFF, source_agent=NO_AGENT, dest_agent=NO_AGENT, now_s=0.0)
    assert off.source.error == "not asked (--tls off)"
