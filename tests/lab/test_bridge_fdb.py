"""``bridge.FdbClaims`` against a real Linux bridge in a throwaway network namespace.

No lab needed: the namespace, bridge and veth ports are made here and removed after.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from libvirt_vmotion.cutover.bridge import FdbClaims, fdb_entries, read_bridge

pytestmark = pytest.mark.lab

MAC = "52:54:00:aa:bb:cc"


def _ns(netns: str, *argv: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, *argv], check=True, capture_output=True)


@pytest.fixture
def bridge_netns() -> Iterator[str]:
    """br0 with an 'uplink' and a 'tap' port (veth pairs), in a namespace of its own."""
    netns = f"vmo-fdbtest-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        _ns(netns, "ip", "link", "add", "br0", "type", "bridge")
        for port, peer in (("up0", "up1"), ("tap0", "tap1")):
            _ns(netns, "ip", "link", "add", port, "type", "veth", "peer", "name", peer)
            _ns(netns, "ip", "link", "set", port, "master", "br0")
            for ifname in (port, peer):
                _ns(netns, "ip", "link", "set", ifname, "up")
        _ns(netns, "ip", "link", "set", "br0", "up")
        yield netns
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)


def test_a_prepared_claim_moves_the_learned_entry_to_the_tap_at_apply(bridge_netns: str) -> None:
    # The bridge learned the guest's MAC on its uplink while the guest ran elsewhere.
    _ns(bridge_netns, "bridge", "fdb", "replace", MAC, "dev", "up0", "master", "dynamic")
    claims = FdbClaims(netns=bridge_netns)
    try:
        claims.prepare("br0", MAC, "tap0")
        # Preparing changes nothing: the guest may still be running on the source.
        assert [e.port for e in fdb_entries("br0", [MAC], netns=bridge_netns)] == ["up0"]
        claimed, errors = claims.apply()
    finally:
        claims.close()
    assert errors == []
    assert [(c.bridge, c.mac, c.port, c.replaced_ports) for c in claimed] == [
        ("br0", MAC, "tap0", ("up0",))
    ]
    (entry,) = fdb_entries("br0", [MAC], netns=bridge_netns)
    assert (entry.port, entry.permanent) == ("tap0", False)  # dynamic: it ages and moves


def test_preparing_a_claim_for_a_missing_port_says_which(bridge_netns: str) -> None:
    claims = FdbClaims(netns=bridge_netns)
    try:
        with pytest.raises(OSError, match="no port vnet9 on this host"):
            claims.prepare("br0", MAC, "vnet9")
        assert claims.apply() == ([], [])
    finally:
        claims.close()


def test_a_missing_namespace_is_refused_never_created() -> None:
    netns = f"vmo-absent-{os.getpid()}"
    try:
        with pytest.raises(OSError, match="does not exist on this host"):
            read_bridge("br0", netns=netns)
        with pytest.raises(OSError, match="does not exist on this host"):
            FdbClaims(netns=netns)
        assert not (Path("/run/netns") / netns).exists()
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True)
