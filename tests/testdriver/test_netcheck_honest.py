"""netcheck never says ok when it checked nothing: a check that could not run warns, with why."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from libvirt_vmotion.preflight.netcheck import checked_something, unchecked_nics
from libvirt_vmotion.preflight.result import Verdict

Vmotion = Callable[..., subprocess.CompletedProcess[str]]
DATA = Path(__file__).parent / "data"
DEAD = "qemu+tcp://127.0.0.1:1/system"


@pytest.mark.parametrize(
    ("driver", "domain", "subjects"),
    [
        ("netguest.xml", "net01", ["52:54:00:aa:bb:01", "52:54:00:aa:bb:02"]),
        ("driver.xml", "web01", [""]),
    ],
)
def test_netcheck_that_checked_nothing_exits_1_and_says_why(
    driver: str, domain: str, subjects: list[str], vmotion: Vmotion
) -> None:
    result = vmotion(
        "netcheck", domain, "--from", f"test://{DATA / driver}", "--to", DEAD, "--json"
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: netcheck checked nothing")
    out = json.loads(result.stdout)
    assert out["checked"] is False
    assert out["verdict"] == "warning"
    assert [r["subject"] for r in out["results"]] == subjects
    assert all(r["verdict"] == "warning" and r["hint"] for r in out["results"])


def test_a_network_nic_without_a_bridge_is_named_with_its_network() -> None:
    xml = (DATA / "netguest.xml").read_text()
    domain_xml = xml[xml.index("<domain") : xml.index("</domain>") + len("</domain>")]
    found = unchecked_nics(domain_xml, host="hosta")
    assert [r.verdict for r in found] == [Verdict.WARNING, Verdict.WARNING]
    assert "libvirt network 'lan'" in found[0].message
    assert "type 'user'" in found[1].message
    assert not checked_something(found)


def test_a_bridged_nic_is_left_to_the_bridge_checks() -> None:
    domain_xml = (
        "<domain><devices><interface type='bridge'><mac address='52:54:00:00:00:01'/>"
        "<source bridge='br0'/></interface></devices></domain>"
    )
    assert unchecked_nics(domain_xml, host="hosta") == ()
