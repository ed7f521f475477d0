"""Lab tier: the two-host namespace lab comes up, repairs itself and goes away cleanly.

One module-scoped lab: it is brought down first (so the "before" snapshot is a machine
without the lab), built once, and the tests run in file order against it, ending with
the crash and teardown tests.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from pyroute2 import IPRoute

from libvirt_vmotion.lab import hostconf, owner, storage, topology
from libvirt_vmotion.lab.constants import (
    CLIENT_NETNS,
    HOST_A,
    HOST_B,
    HOSTS,
    STATE_DIR,
    LabHost,
)
from libvirt_vmotion.reserve import hook as hooks

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.lab

NETNS_DIR = Path("/run/netns")
OTHER_PYTHON = "/work/another-checkout/.venv/bin/python"
"""The interpreter of a second checkout with the same VMOTION_LAB_ID (never run)."""
PROBE_DOMAIN = "vmo-lifecycle-probe"
# Smallest domain that gives a real QEMU process and a tap on br0; paused so it burns no CPU.
PROBE_DOMAIN_XML = f"""<domain type='qemu'>
  <name>{PROBE_DOMAIN}</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <cpu mode='custom' match='exact' check='none'><model fallback='allow'>qemu64</model></cpu>
  <devices>
    <interface type='bridge'><source bridge='br0'/><model type='virtio'/></interface>
  </devices>
</domain>
"""


def _ns_inode(path: str) -> int | None:
    try:
        return Path(path).stat().st_ino
    except OSError:
        return None


def _foreign_netns_inodes() -> set[int]:
    """Inodes of named namespaces that are not the lab's (other people's work)."""
    if not NETNS_DIR.is_dir():
        return set()
    found = set()
    for entry in NETNS_DIR.iterdir():
        if entry.name not in topology.LAB_NETNS:
            ino = _ns_inode(str(entry))
            if ino is not None:
                found.add(ino)
    return found


@dataclass(frozen=True, slots=True)
class Snapshot:
    netns: frozenset[str]
    mounts: frozenset[str]
    namespaced_procs: frozenset[tuple[int, int]]
    root_links: frozenset[str]


def _snapshot() -> Snapshot:
    names = {e.name for e in NETNS_DIR.iterdir()} if NETNS_DIR.is_dir() else set()
    foreign_names = names - set(topology.LAB_NETNS)
    mounts = {
        line
        for line in Path("/proc/mounts").read_text().splitlines()
        # Namespaces somebody else creates meanwhile are not ours to compare.
        if not any(f"/run/netns/{n} " in line for n in foreign_names)
    }
    # PID 1 may be unreadable (sandboxed init); kthreadd always lives in the initial netns.
    init_ns = _ns_inode("/proc/2/ns/net") or _ns_inode("/proc/self/ns/net")
    procs = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            ino = _ns_inode(f"/proc/{entry.name}/ns/net")
            if ino is not None and ino != init_ns:
                procs.add((int(entry.name), ino))
    with IPRoute() as ipr:
        links = {link.get("ifname") for link in ipr.link("dump")}
    return Snapshot(
        netns=frozenset(names & set(topology.LAB_NETNS)),
        mounts=frozenset(mounts),
        namespaced_procs=frozenset(procs),
        root_links=frozenset(links),
    )


@dataclass(frozen=True, slots=True)
class Lab:
    before: Snapshot
    status: topology.LabStatus
    up_s: float


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    topology.down()
    before = _snapshot()
    started = time.monotonic()
    status = topology.up()
    up_s = time.monotonic() - started
    print(f"lab up from scratch: {up_s:.2f} s")
    yield Lab(before=before, status=status, up_s=up_s)
    topology.down()


def _host_uuid(host: LabHost) -> str:
    caps = topology.run_on_host(host, ["virsh", "capabilities"]).stdout
    match = re.search(r"<uuid>([0-9a-f-]+)</uuid>", caps)
    assert match, caps[:500]
    return match.group(1)


def _lab_rss_mib() -> float:
    total_kib = 0
    for name in topology.LAB_NETNS:
        for pid in topology._pids_in_netns(name):  # noqa: SLF001  measuring, not driving
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
            total_kib += int(match.group(1)) if match else 0
    return total_kib / 1024


def test_up_from_nothing_is_healthy(lab: Lab) -> None:
    assert lab.status.healthy, lab.status.render()
    assert lab.up_s < 30
    text = lab.status.render()
    for host in HOSTS:
        assert host.uri in text
    assert "lab exec -- virsh -c" in text
    print(f"idle lab RSS (all processes in lab namespaces): {_lab_rss_mib():.0f} MiB")


def test_hosts_have_distinct_hostnames_and_uuids(lab: Lab) -> None:
    assert lab.status.healthy
    names = [topology.run_on_host(h, ["hostname"]).stdout.strip() for h in HOSTS]
    assert names == [h.name for h in HOSTS]
    assert [_host_uuid(h) for h in HOSTS] == [h.host_uuid for h in HOSTS]


def test_client_reaches_both_libvirtds(lab: Lab) -> None:
    assert lab.status.healthy
    for host in HOSTS:
        out = topology.run_in_client(["virsh", "-c", host.uri, "version"]).stdout
        assert "Running hypervisor: QEMU" in out
    argv = topology.client_argv(["virsh", "-c", HOST_B.uri, "hostname"])
    assert argv[:4] == ["ip", "netns", "exec", CLIENT_NETNS]


def test_host_a_libvirtd_reaches_host_b(lab: Lab) -> None:
    assert lab.status.healthy
    out = topology.run_on_host(HOST_A, ["virsh", "-c", HOST_B.uri, "hostname"]).stdout
    assert out.strip() == HOST_B.name


def test_up_when_healthy_changes_nothing(lab: Lab) -> None:
    before = topology.status()
    started = time.monotonic()
    after = topology.up()
    elapsed = time.monotonic() - started
    print(f"lab up when healthy: {elapsed:.2f} s")
    assert after.healthy
    assert [h.libvirtd_pid for h in after.hosts] == [h.libvirtd_pid for h in before.hosts]
    assert [h.holder_pid for h in after.hosts] == [h.holder_pid for h in before.hosts]


def _another_checkout_built_it() -> None:
    """What a second checkout's `lab up` leaves: its hooks, its owner record, its files."""
    for host in HOSTS:
        paths = hostconf.host_paths(host)
        hooks.install(etc=paths.etc, python=OTHER_PYTHON)
        (paths.vmotion_etc / "capacity.toml").write_text("memory_limit_mib = 1\n")
    topology.OWNER_FILE.write_text(owner.build_owner_record(OTHER_PYTHON))


def _hook_shims() -> list[str]:
    return [hooks.installed_path(hostconf.host_paths(h).etc).read_text() for h in HOSTS]


def test_up_adopts_an_idle_lab_another_checkout_built(lab: Lab) -> None:
    assert topology.status().owner == sys.executable
    _another_checkout_built_it()
    before = topology.status()
    assert before.healthy
    assert f"checkout: {OTHER_PYTHON}" in before.render()
    after = topology.up()
    assert after.healthy
    assert after.owner == sys.executable
    # In place: nothing restarted.
    assert [h.libvirtd_pid for h in after.hosts] == [h.libvirtd_pid for h in before.hosts]
    assert [h.holder_pid for h in after.hosts] == [h.holder_pid for h in before.hosts]
    for shim in _hook_shims():
        assert f"PYTHON={shlex.quote(sys.executable)}\n" in shim, shim
        assert OTHER_PYTHON not in shim
    for host in HOSTS:
        assert not (hostconf.host_paths(host).vmotion_etc / "capacity.toml").exists()
        # The hook libvirtd runs is this checkout's, as libvirtd on the host sees it.
        shown = topology.run_on_host(
            host, [sys.executable, "-m", "libvirt_vmotion", "hooks", "status"]
        ).stdout
        assert f"-> {Path(sys.executable).parent}/python" in shown, shown


def test_up_refreshes_this_checkouts_outdated_hook_in_place(lab: Lab) -> None:
    # What an older version of this checkout left: a shim naming a module since moved.
    stale = '#!/bin/sh\nexec python -m libvirt_vmotion.hooks "$@"\n'
    for host in HOSTS:
        hooks.installed_path(hostconf.host_paths(host).etc).write_text(stale)
    before = topology.status()
    after = topology.up()
    assert [h.libvirtd_pid for h in after.hosts] == [h.libvirtd_pid for h in before.hosts]
    assert _hook_shims() == [hooks.build_shim(sys.executable)] * len(HOSTS)


def test_up_refuses_another_checkouts_lab_while_guests_run_there(lab: Lab) -> None:
    topology.run_on_host(
        HOST_B, ["virsh", "create", "--paused", "/dev/stdin"], input=PROBE_DOMAIN_XML
    )
    _another_checkout_built_it()
    try:
        with pytest.raises(topology.LabError) as refused:
            topology.up()
        message = str(refused.value)
        for words in (OTHER_PYTHON, f"hostb: {PROBE_DOMAIN}", "VMOTION_LAB_ID", "lab down"):
            assert words in message, message
        # Left exactly as found: the other checkout's hooks, its guest, its files.
        assert all(OTHER_PYTHON in shim for shim in _hook_shims())
        assert PROBE_DOMAIN in topology.status().hosts[1].domains
        assert (hostconf.host_paths(HOST_B).vmotion_etc / "capacity.toml").exists()
    finally:
        topology.run_on_host(HOST_B, ["virsh", "destroy", PROBE_DOMAIN], check=False)
    assert topology.up().owner == sys.executable  # idle again: adopted


def test_up_recovers_from_crash(lab: Lab) -> None:
    assert lab.status.healthy
    paths = hostconf.host_paths(HOST_A)
    old = [int(p.read_text()) for p in (paths.libvirtd_pid_file, paths.holder_pid_file)]
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while topology.status().hosts[0].libvirtd_pid is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    crashed = topology.status()
    assert not crashed.healthy
    assert crashed.anything_exists
    with pytest.raises(topology.LabError, match="lab up"):
        topology.run_on_host(HOST_A, ["hostname"])
    started = time.monotonic()
    repaired = topology.up()
    print(f"lab up after crash: {time.monotonic() - started:.2f} s")
    assert repaired.healthy, repaired.render()
    assert repaired.hosts[0].libvirtd_pid not in old
    assert topology.run_on_host(HOST_A, ["hostname"]).stdout.strip() == HOST_A.name


def test_down_leaves_machine_as_found(lab: Lab) -> None:
    assert topology.status().healthy
    # A running guest with a tap on br0: down must destroy it and its QEMU.
    topology.run_on_host(
        HOST_B, ["virsh", "create", "--paused", "/dev/stdin"], input=PROBE_DOMAIN_XML
    )
    assert PROBE_DOMAIN in topology.status().hosts[1].domains
    # The shared storage too: a GlusterFS server and a FUSE mount on each host.
    storage.up()
    assert storage.is_up()
    lab_inodes = {_ns_inode(str(NETNS_DIR / n)) for n in topology.LAB_NETNS}
    started = time.monotonic()
    topology.down()
    print(f"lab down: {time.monotonic() - started:.2f} s")
    after = _snapshot()
    assert after.netns == lab.before.netns
    assert after.mounts == lab.before.mounts
    assert not any(ino in lab_inodes for _, ino in after.namespaced_procs)
    foreign = _foreign_netns_inodes()
    new_procs = {
        p for p in after.namespaced_procs - lab.before.namespaced_procs if p[1] not in foreign
    }
    assert not new_procs
    assert after.root_links == lab.before.root_links
    assert not any(
        f" {STATE_DIR}" in line for line in Path("/proc/mounts").read_text().splitlines()
    )
    topology.down()  # twice is fine
    assert _snapshot().netns == lab.before.netns
    final = topology.status()
    assert not final.anything_exists
    assert "down" in final.render()
