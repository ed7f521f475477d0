"""Pre-flight blockers in the namespace lab: each is named, says what to do, starts nothing.

One "bad" guest on hosta carries every fault at once: its NIC is on a bridge
only hosta has (br1), its disk lives in hosta's private /var/lib/libvirt, and
its CPU model needs a feature that hostb lacks: the lab builds hostb as an older
CPU, its QEMU's TCG CPU without ``pku`` (``LabHost.tcg_cpu_without``), from before
its libvirtd first starts; nothing restarts libvirtd here. Each test skips the other
checks to show one blocker alone. The CLI runs in the client namespace and reaches hostb's agent
over hostb's sshd, as in production.
"""

from __future__ import annotations

import json
import re
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from labcli import vmotion_in_client
from libvirt_vmotion.adapters.virt import Hypervisor
from libvirt_vmotion.lab import guestctl, topology
from libvirt_vmotion.lab.constants import HOST_A, HOST_B, LabHost
from libvirt_vmotion.lab.guestdef import LabGuestSpec, build_domain_xml
from libvirt_vmotion.lab.hostconf import host_paths
from libvirt_vmotion.lab.image import GuestImage, kernel_cmdline
from libvirt_vmotion.preflight import domxml

pytestmark = pytest.mark.lab

vmotion = partial(vmotion_in_client, timeout_s=120)

BAD = "pre-bad"
DISK = "/var/lib/libvirt/images/pre-bad.img"
ALL_BLOCKERS = ("network", "storage", "cpu-compat", "dest-memory")


def check(*extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return vmotion("check", BAD, "--from", HOST_A.uri, "--to", HOST_B.uri, *extra, env=env)


def skip_all_but(name: str) -> list[str]:
    return [a for other in ALL_BLOCKERS if other != name for a in ("--skip-check", other)]


def dest_domains() -> list[str]:
    out = topology.run_on_host(HOST_B, ["virsh", "list", "--all", "--name"]).stdout
    return [line for line in out.split() if line]


def hook_log(host: LabHost) -> str:
    path = host_paths(host).log / "vmotion-hook.log"
    return path.read_text() if path.exists() else ""


@pytest.fixture(scope="module")
def bad_guest(lab: None, guest_image: GuestImage) -> Iterator[str]:
    topology.run_on_host(
        HOST_A,
        [
            "sh",
            "-c",
            f"ip link add br1 type bridge && ip link set br1 up && truncate -s 16M {DISK}",
        ],
    )
    spec = LabGuestSpec(
        kernel=guest_image.kernel,
        initrd=guest_image.initrd,
        cmdline=kernel_cmdline(addr_cidr="10.77.0.52/24", wss_mib=8, rate_mib_s=1, mode="paced"),
        memory_mib=256,
        cpu_model="Skylake-Server",
        name=BAD,
        mac="52:54:00:77:00:52",
        bridge="br1",
    )
    dom = ET.fromstring(build_domain_xml(spec))
    devices = dom.find("devices")
    assert devices is not None
    disk = ET.SubElement(devices, "disk", type="file", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type="raw")
    ET.SubElement(disk, "source", file=DISK)
    ET.SubElement(disk, "target", dev="vda", bus="virtio")
    with Hypervisor.open(guestctl.local_uri(HOST_A)) as hv:
        hv.define_and_start(ET.tostring(dom, encoding="unicode"))
    yield BAD
    guestctl.remove_guest(BAD)
    topology.run_on_host(HOST_A, ["sh", "-c", f"ip link del br1; rm -f {DISK}"], check=False)


def compare_guest_cpu_on(host: LabHost, guest: str) -> tuple[str, str]:
    """``compareHypervisorCPU`` of ``guest``'s live CPU (on hosta) against ``host``'s QEMU."""
    with Hypervisor.open(guestctl.local_uri(HOST_A)) as source:
        xml = source.lookup(guest).xml()
    facts = domxml.guest_facts(xml)
    with Hypervisor.open(guestctl.local_uri(host)) as hv:
        return hv.compare_guest_cpu(
            domxml.cpu_xml(xml),
            emulator=facts.emulator or None,
            arch=facts.arch,
            machine=facts.machine or None,
            virt_type=facts.virt_type,
        )


@pytest.fixture
def hostb_small(lab: None) -> Iterator[Path]:
    """hostb offers only 400 MiB to incoming guests (its /etc/libvirt-vmotion/capacity.toml)."""
    path = host_paths(HOST_B).vmotion_etc / "capacity.toml"
    path.write_text("memory_limit_mib = 400\n")
    yield path
    path.unlink(missing_ok=True)


def assert_blocked_by(result: subprocess.CompletedProcess[str], name: str, *words: str) -> None:
    assert result.returncode == 3, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["may_proceed"] is False
    assert data["blockers"] == [name], data["blockers"]
    (finding,) = [c for c in data["checks"] if c["verdict"] == "blocker" and not c["skipped"]]
    text = finding["message"] + finding["hint"] + finding["observed"] + finding["required"]
    for word in words:
        assert word in text, text
    assert f"--skip-check {name}" in finding["hint"]
    assert BAD not in dest_domains()


def test_all_four_blockers_are_named_and_nothing_starts_on_the_destination(
    bad_guest: str,
) -> None:
    result = check("--no-copy-storage")  # a disk the destination lacks is copied otherwise
    assert result.returncode == 3
    for name in ("network", "storage"):
        assert re.search(rf"BLOCKER\s+{name}\b", result.stdout), result.stdout
    assert "verdict: BLOCKED by" in result.stdout
    assert "hint:" in result.stdout
    migrate = vmotion("migrate", BAD, "--from", HOST_A.uri, "--to", HOST_B.uri)
    assert migrate.returncode == 3, migrate.stderr
    assert migrate.stderr.startswith("error: Pre-flight found")
    assert "hint:" in migrate.stderr
    assert BAD not in dest_domains()
    assert BAD not in hook_log(HOST_B)  # the destination never saw an incoming migration
    assert guestctl.find_guest(BAD) == [(HOST_A, "running")]


def test_destination_lacks_the_bridge(bad_guest: str) -> None:
    result = check("--json", *skip_all_but("network"))
    assert_blocked_by(result, "network", "br1", "does not exist", "Create the bridge")


def test_disk_not_reachable_on_the_destination(bad_guest: str) -> None:
    # Copying is automatic for a disk the destination lacks; with it off, this blocks.
    result = check("--json", "--no-copy-storage", *skip_all_but("storage"))
    assert_blocked_by(result, "storage", DISK, "not reachable", "shared")


def test_incompatible_cpu_names_the_missing_feature(bad_guest: str) -> None:
    result = check("--json", *skip_all_but("cpu-compat"))
    assert_blocked_by(result, "cpu-compat", "pku", "hypervisor-cpu-baseline")


def test_the_guest_cpu_fits_its_source_and_only_hostb_lacks_pku(bad_guest: str) -> None:
    # The blocker above is the destination's older CPU, not a CPU no host could run.
    assert compare_guest_cpu_on(HOST_A, bad_guest)[0] in {"identical", "superset"}
    result, detail = compare_guest_cpu_on(HOST_B, bad_guest)
    assert result == "incompatible"
    assert detail.endswith("required features: pku"), detail


@pytest.mark.usefixtures("hostb_small")
def test_destination_memory_limited_below_need(bad_guest: str) -> None:
    result = check("--json", *skip_all_but("dest-memory"))
    assert_blocked_by(result, "dest-memory", "400 MiB", "512 MiB", "Free memory on hostb")


def test_skipping_every_blocker_lets_it_proceed_with_a_forecast(bad_guest: str) -> None:
    result = check("--json", *[a for n in ALL_BLOCKERS for a in ("--skip-check", n)])
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["may_proceed"] is True
    assert {c["name"] for c in data["checks"] if c["skipped"]} >= {"network", "storage"}
    forecast = data["forecast"]
    assert forecast is not None, data["forecast_error"]
    assert forecast["inputs"]["dirty_rate_mib_s"] >= 0
    assert forecast["strategy"] in {"pre-copy", "pre-copy+throttle", "post-copy"}


def test_without_our_agent_the_checks_it_serves_are_warnings_that_say_why(
    bad_guest: str,
) -> None:
    result = check("--json", env={"VMOTION_AGENT_PYTHON": "/nonexistent/python3"})
    data = json.loads(result.stdout.strip().splitlines()[-1])
    by_name = {c["name"]: c for c in data["checks"]}
    agent = by_name["dest-agent"]
    assert agent["verdict"] == "warning"
    assert "were not checked" in agent["message"]
    assert "/nonexistent/python3" in agent["message"]
    assert by_name["inbound-slots"]["verdict"] == "warning"
    # What libvirt's remote API answers still works without the agent.
    assert by_name["network"]["verdict"] == "blocker"
    assert by_name["cpu-compat"]["verdict"] in {"ok", "blocker"}


def test_unknown_skip_name_is_a_usage_error(lab: None) -> None:
    result = vmotion("check", "x", "--from", HOST_A.uri, "--to", HOST_B.uri, "--skip-check", "cpu")
    assert result.returncode == 2
    assert "unknown pre-flight check 'cpu'" in result.stderr
    assert "cpu-compat" in result.stderr
    assert "Traceback" not in result.stderr
