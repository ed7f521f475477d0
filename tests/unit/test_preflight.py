# ruff: noqa: E501, FBT003  the check table reads best as one row per case
"""Pure pre-flight checks, table-driven: facts in, verdicts out."""

from __future__ import annotations

from dataclasses import replace

import pytest

from libvirt_vmotion.model import MIB
from libvirt_vmotion.preflight import registry as pf
from libvirt_vmotion.preflight.registry import (
    AgentFacts,
    BridgeFacts,
    CheckResult,
    CpuCompat,
    CpuFacts,
    DiskFacts,
    DiskView,
    DomainCapsFacts,
    GuestFacts,
    HostFacts,
    NetworkFacts,
    NicFacts,
    PortFacts,
    PreflightFacts,
    ReservationView,
    StpState,
    Verdict,
)
from libvirt_vmotion.storage.plan import DiskSpec, PathInfo, StorageFacts

V10 = pf.version_number("10.0.2")
V11 = pf.version_number("11.3.0")


def make_facts(**changes: object) -> PreflightFacts:
    src = HostFacts("qemu+tcp://a/system", "hosta", "uuid-a", V11, V10, cpus=4,
                    free_memory_bytes=8192 * MIB, machines=("pc-i440fx-10.0",),
                    emulators=("/usr/bin/qemu-system-x86_64",))  # fmt: skip
    dst = replace(src, uri="qemu+tcp://b/system", hostname="hostb", host_uuid="uuid-b")
    guest = GuestFacts(
        name="web01", state="running", job_active=False, memory_bytes=512 * MIB, vcpus=1,
        virt_type="qemu", machine="pc-i440fx-10.0", emulator="/usr/bin/qemu-system-x86_64",
        cpu_model="qemu64", nics=(NicFacts("52:54:00:00:00:01", "bridge", "br0"),),
        disks=(DiskFacts("vda", source="/srv/shared/web01.qcow2", bus="virtio"),),
    )  # fmt: skip
    facts = PreflightFacts(
        source=src,
        dest=dst,
        guest=guest,
        cpu=CpuFacts(CpuCompat.SUPERSET),
        dest_caps=DomainCapsFacts(disk_buses=("virtio", "sata"), video_models=("vga",)),
        bridges={
            "br0": BridgeFacts("br0", exists=True, up=True, ports=(PortFacts("eth0"),), mtu=1500)
        },
        disks={"/srv/shared/web01.qcow2": DiskView("/srv/shared/web01.qcow2", True, "pool shared")},
        agent=AgentFacts(
            available=True,
            mem_available_bytes=4096 * MIB,
            bridge_ports={
                "br0": (
                    PortFacts(
                        "eth0", stp_state=StpState.FORWARDING, learning=True, unicast_flood=True
                    ),
                )
            },
            reservation=ReservationView(),
        ),
    )
    return replace(facts, **changes)  # type: ignore[arg-type]


def by_name(results: tuple[CheckResult, ...], name: str) -> list[CheckResult]:
    return [r for r in results if r.name == name]


def test_a_healthy_pair_has_no_blocker_or_warning() -> None:
    results = pf.run_checks(make_facts())
    bad = [r for r in results if r.verdict is not Verdict.OK]
    assert bad == []
    assert pf.may_proceed(results)


GOOD = make_facts()


def same_path(*, shared: bool | None) -> StorageFacts:
    """The destination has a file at the guest disk's path; the share marker says ``shared``."""
    path = "/srv/shared/web01.qcow2"
    return StorageFacts(
        disks=(DiskSpec("vda", path, format="qcow2"),),
        dest_paths={path: PathInfo(exists=True, shared=shared)},
        dest_known=True,
    )


@pytest.mark.parametrize(
    ("name", "facts", "verdict", "words"),
    [
        ("same-host", replace(GOOD, dest=replace(GOOD.dest, hostname="hosta")), "blocker", "same host"),
        ("same-host", replace(GOOD, dest=replace(GOOD.dest, host_uuid="uuid-a")), "blocker", "host_uuid"),
        ("guest-running", replace(GOOD, guest=replace(GOOD.guest, state="shut off")), "blocker", "start web01"),
        ("no-job-running", replace(GOOD, guest=replace(GOOD.guest, job_active=True)), "blocker", "domjobabort"),
        ("libvirt-version", replace(GOOD, dest=replace(GOOD.dest, libvirt_version=7_000_000)), "blocker", ">= 8.0.0"),
        ("qemu-version", replace(GOOD, dest=replace(GOOD.dest, qemu_version=9_000_000)), "warning", "older QEMU"),
        ("tcg-dirty-tracking", replace(GOOD, dest=replace(GOOD.dest, qemu_version=7_002_000)), "blocker", "loses dirty pages"),
        ("feature-dirty-rate", replace(GOOD, dest=replace(GOOD.dest, libvirt_version=8_000_000, qemu_version=9_200_000)), "ok", "available"),
        ("feature-avail-switchover-bandwidth", replace(GOOD, dest=replace(GOOD.dest, libvirt_version=9_000_000)), "warning", "without it"),
        ("cpu-compat", replace(GOOD, cpu=CpuFacts(CpuCompat.INCOMPATIBLE, "Host CPU does not provide required features: avx512f")), "blocker", "avx512f"),
        ("cpu-compat", replace(GOOD, cpu=CpuFacts(CpuCompat.UNKNOWN, "no support")), "warning", "hypervisor-cpu-compare"),
        ("dest-memory", replace(GOOD, agent=replace(GOOD.agent, mem_available_bytes=600 * MIB)), "blocker", "768 MiB"),
        ("dest-memory", replace(GOOD, agent=replace(GOOD.agent, reservation=ReservationView(memory_limit_bytes=700 * MIB))), "blocker", "configured limit"),
        ("dest-memory", replace(GOOD, agent=replace(GOOD.agent, mem_available_bytes=1000 * MIB, reservation=ReservationView(reserved_memory_bytes=300 * MIB))), "blocker", "reserved by other"),
        ("dest-vcpus", replace(GOOD, guest=replace(GOOD.guest, vcpus=8)), "blocker", "8 vCPUs"),
        ("dest-vcpus", replace(GOOD, agent=replace(GOOD.agent, reservation=ReservationView(vcpu_limit=2, reserved_vcpus=2))), "blocker", "budget"),
        ("dest-hugepages", replace(GOOD, guest=replace(GOOD.guest, hugepages=True), agent=replace(GOOD.agent, hugepages_free_bytes=0)), "blocker", "nr_hugepages"),
        ("inbound-slots", replace(GOOD, agent=replace(GOOD.agent, reservation=ReservationView(inbound_active=2, inbound_limit=2))), "blocker", "2 of 2"),
        ("dest-maintenance", replace(GOOD, agent=replace(GOOD.agent, reservation=ReservationView(maintenance_since="2026-12-06 02:00:00 UTC", maintenance_by="ops"))), "blocker", "vmotion maintenance exit"),
        ("dest-maintenance", GOOD, "ok", "not in maintenance"),
        ("machine-type", replace(GOOD, dest=replace(GOOD.dest, machines=("pc-i440fx-9.2",))), "blocker", "pc-i440fx-10.0"),
        ("emulator", replace(GOOD, dest=replace(GOOD.dest, emulators=("/usr/libexec/qemu-kvm",))), "blocker", "same path"),
        ("device-models", replace(GOOD, dest_caps=DomainCapsFacts(disk_buses=("sata",))), "blocker", "disk bus virtio"),
        ("passthrough-devices", replace(GOOD, guest=replace(GOOD.guest, passthrough=("PCI 0000:3b:00.0",))), "blocker", "detach-device"),
        ("network", replace(GOOD, bridges={"br0": BridgeFacts("br0", exists=False)}), "blocker", "does not exist"),
        ("network", replace(GOOD, bridges={"br0": BridgeFacts("br0", exists=True, up=False)}), "blocker", "is down"),
        ("network", replace(GOOD, bridges={"br0": BridgeFacts("br0", exists=True, up=True)}), "blocker", "no uplink"),
        ("network", replace(GOOD, bridges={"br0": BridgeFacts("br0", True, True, (PortFacts("eth0"),), 1400)}), "blocker", "MTU 1400"),
        ("network", replace(GOOD, guest=replace(GOOD.guest, nics=(NicFacts("m", "network", "default"),))), "blocker", "net-define"),
        ("network", replace(GOOD, guest=replace(GOOD.guest, nics=(NicFacts("m", "network", "default"),)), networks={"default": NetworkFacts("default", True, False, "virbr0")}), "blocker", "net-start default"),
        ("bridge-ports", replace(GOOD, agent=replace(GOOD.agent, bridge_ports={"br0": (PortFacts("eth0", stp_state=StpState.BLOCKING, learning=True, unicast_flood=True),)})), "blocker", "state blocking"),
        ("bridge-ports", replace(GOOD, agent=replace(GOOD.agent, bridge_ports={"br0": (PortFacts("eth0", stp_state=StpState.FORWARDING, learning=False, unicast_flood=True),)})), "warning", "learning off"),
        ("bridge-ports", replace(GOOD, agent=AgentFacts(available=False, error="ssh: connection refused")), "warning", "connection refused"),
        ("storage", replace(GOOD, disks={"/srv/shared/web01.qcow2": DiskView("/srv/shared/web01.qcow2", False, "agent: no such file")}), "blocker", "not reachable"),
        ("storage", replace(GOOD, disks={}), "warning", "Could not tell"),
        ("storage", replace(GOOD, storage=same_path(shared=False)), "blocker", "a different file (it does not see the source's share marker)"),
        ("storage", replace(GOOD, storage=same_path(shared=None)), "blocker", "no share marker could be placed"),
        ("storage", replace(GOOD, storage=same_path(shared=True)), "ok", "shared (pool shared)"),
        ("dest-agent", replace(GOOD, agent=AgentFacts(available=False, error="not installed")), "warning", "were not checked"),
        ("inbound-slots", replace(GOOD, agent=AgentFacts(available=False, error="not installed")), "warning", "not installed"),
    ],
)  # fmt: skip
def test_each_check_names_the_fault_and_says_what_to_do(
    name: str, facts: PreflightFacts, verdict: str, words: str
) -> None:
    results = by_name(pf.run_checks(facts), name)
    assert results, f"no result named {name}"
    worst = max(results, key=lambda r: list(Verdict).index(r.verdict))
    assert worst.verdict == verdict
    assert words in worst.message + worst.hint + worst.observed + worst.required
    if worst.verdict is not Verdict.OK:
        assert worst.hint
        assert f"--skip-check {name}" in worst.hint


def test_skip_check_keeps_the_result_but_it_no_longer_blocks() -> None:
    facts = replace(GOOD, cpu=CpuFacts(CpuCompat.INCOMPATIBLE, "missing avx"))
    assert not pf.may_proceed(pf.run_checks(facts))
    results = pf.run_checks(facts, skip=["cpu-compat"])
    cpu = by_name(results, "cpu-compat")[0]
    assert cpu.skipped
    assert cpu.verdict is Verdict.BLOCKER
    assert pf.may_proceed(results)


def test_every_result_name_is_a_skippable_name_and_kebab_case() -> None:
    names = {r.name for r in pf.run_checks(GOOD)}
    assert names <= set(pf.check_names())
    for name in pf.check_names():
        assert name == name.lower()
        assert " " not in name
        assert "_" not in name


def test_unknown_skip_names_are_reported() -> None:
    assert pf.unknown_skips(["cpu-compat", "cpu"]) == ("cpu",)


def test_feature_table_covers_what_we_use() -> None:
    names = {f.name for f in pf.FEATURES}
    assert {"dirty-rate", "post-copy", "post-copy-resume", "multifd", "tls"} <= names
    assert [f.name for f in pf.FEATURES if f.required] == ["p2p-live"]


@pytest.mark.parametrize(
    ("number", "text"), [(10_000_002, "10.0.2"), (11_003_000, "11.3.0"), (7_002_000, "7.2.0")]
)
def test_versions_round_trip(number: int, text: str) -> None:
    assert pf.format_version(number) == text
    assert pf.version_number(text) == number


def test_to_dict_is_json_ready() -> None:
    result = pf.run_checks(replace(GOOD, guest=replace(GOOD.guest, vcpus=99)))
    d = by_name(result, "dest-vcpus")[0].to_dict()
    assert d["verdict"] == "blocker"
    assert d["observed"] == "4 host CPUs"
    assert d["required"] == "99 vCPUs"
    assert (d["observed_value"], d["required_value"], d["unit"]) == (4, 99, "vcpus")


HUGE = replace(GOOD.guest, hugepages=True)


@pytest.mark.parametrize(
    ("name", "facts", "observed", "required", "unit"),
    [
        ("dest-memory", GOOD, 4096 * MIB, 512 * MIB + 256 * MIB, "bytes"),
        ("dest-memory", replace(GOOD, agent=replace(GOOD.agent, mem_available_bytes=1000 * MIB, reservation=ReservationView(reserved_memory_bytes=300 * MIB))), 700 * MIB, 768 * MIB, "bytes"),
        ("dest-vcpus", replace(GOOD, agent=replace(GOOD.agent, reservation=ReservationView(vcpu_limit=3, reserved_vcpus=1))), 2, 1, "vcpus"),
        ("dest-hugepages", replace(GOOD, guest=HUGE, agent=replace(GOOD.agent, hugepages_free_bytes=256 * MIB)), 256 * MIB, 512 * MIB, "bytes"),
        ("dest-hugepages", replace(GOOD, guest=HUGE, agent=replace(GOOD.agent, hugepages_free_bytes=None)), None, 512 * MIB, "bytes"),
        ("inbound-slots", replace(GOOD, agent=replace(GOOD.agent, reservation=ReservationView(inbound_active=1, inbound_limit=4))), 3, 1, "slots"),
        ("inbound-slots", replace(GOOD, agent=replace(GOOD.agent, reservation=ReservationView(inbound_active=2, inbound_limit=2))), 0, 1, "slots"),
        ("network", replace(GOOD, bridges={"br0": BridgeFacts("br0", True, True, (PortFacts("eth0"),), 1400)}), 1400, 1500, "bytes"),
        ("network", GOOD, 1500, 1500, "bytes"),
        ("libvirt-version", replace(GOOD, dest=replace(GOOD.dest, libvirt_version=7_000_000)), 7_000_000, 8_000_000, "version"),
        ("qemu-version", replace(GOOD, dest=replace(GOOD.dest, qemu_version=9_000_000)), 9_000_000, V10, "version"),
        ("tcg-dirty-tracking", replace(GOOD, dest=replace(GOOD.dest, qemu_version=7_002_000)), 7_002_000, 9_002_000, "version"),
    ],
)  # fmt: skip
def test_checks_that_compare_quantities_give_them_as_numbers_with_a_unit(
    name: str, facts: PreflightFacts, observed: int | None, required: int, unit: str
) -> None:
    results = by_name(pf.run_checks(facts), name)
    worst = max(results, key=lambda r: list(Verdict).index(r.verdict))
    d = worst.to_dict()
    assert (d["observed_value"], d["required_value"], d["unit"]) == (observed, required, unit)
    assert d["observed"] or d["message"]  # the text stays beside the numbers


@pytest.mark.parametrize("name", ["guest-running", "cpu-compat", "machine-type", "storage"])
def test_checks_that_compare_no_quantity_give_nulls(name: str) -> None:
    for r in by_name(pf.run_checks(GOOD), name):
        d = r.to_dict()
        assert (d["observed_value"], d["required_value"], d["unit"]) == (None, None, None)
