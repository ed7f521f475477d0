"""The test guest on its own: plain QEMU (no libvirt), TCG, a tap on a bridge in a
throwaway network namespace ``vmo-gtest``. Proves the guest boots, the workload
writes at the requested rate and verifies, the stream and ping answer, and the
checker really catches a stale page (``corrupt``).
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from libvirt_vmotion.lab.constants import GUEST_ADDR, GUEST_MAC, LAB_ID, PREFIX_LEN
from libvirt_vmotion.lab.image import GuestImage, ensure_guest_image, kernel_cmdline
from libvirt_vmotion.observe.ping import PingProbe
from libvirt_vmotion.observe.workload import (
    StreamProbe,
    WorkloadStatus,
    query_status,
    send_command,
    wait_until_ready,
)

pytestmark = pytest.mark.lab

NETNS = f"{LAB_ID}-gtest"
BRIDGE = "br0"
TAP = "gtap0"
TEST_HOST_ADDR = "10.77.0.254"  # the test's own address, inside NETNS only
CLONE_NEWNET = 0x40000000
BOOT_TIMEOUT_S = 45.0


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


def _netns_exists() -> bool:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return any(line.split()[0] == NETNS for line in out.stdout.splitlines() if line.strip())


def _setns(path: str) -> None:
    """Move the calling thread into the network namespace at ``path``.

    Threads started afterwards (the probes) inherit it, so their sockets live there.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        _setns_fd(fd)
    finally:
        os.close(fd)


def _setns_fd(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


@dataclass(frozen=True, slots=True)
class BootedGuest:
    addr: str
    qemu_pid: int
    console_log: Path
    boot_to_ready_s: float
    first_status: WorkloadStatus

    def console_tail(self, lines: int = 30) -> str:
        text = self.console_log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


@pytest.fixture(scope="module")
def image() -> GuestImage:
    # Missing tools are the lab tier's concern (tests/conftest.py): skipped with the
    # reason outside CI, a failure under CI.
    return ensure_guest_image()


@pytest.fixture(scope="module")
def guest(image: GuestImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootedGuest]:
    console_log = tmp_path_factory.mktemp("gtest") / "console.log"
    own_netns = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    qemu: subprocess.Popen[bytes] | None = None
    entered = False
    if _netns_exists():  # left over by a killed run
        _run("ip", "netns", "del", NETNS)
    try:
        _run("ip", "netns", "add", NETNS)
        ns: Callable[..., None] = lambda *argv: _run("ip", "-n", NETNS, *argv)  # noqa: E731
        ns("link", "set", "lo", "up")
        ns("link", "add", BRIDGE, "type", "bridge")
        ns("tuntap", "add", "dev", TAP, "mode", "tap")
        ns("link", "set", TAP, "master", BRIDGE)
        ns("addr", "add", f"{TEST_HOST_ADDR}/{PREFIX_LEN}", "dev", BRIDGE)
        ns("link", "set", TAP, "up")
        ns("link", "set", BRIDGE, "up")
        cmdline = kernel_cmdline(
            addr_cidr=f"{GUEST_ADDR}/{PREFIX_LEN}", wss_mib=64, rate_mib_s=20, mode="paced"
        )
        argv = [
            "ip", "netns", "exec", NETNS,  # execs qemu: the PID is qemu's
            "qemu-system-x86_64", "-accel", "tcg", "-m", "512", "-cpu", "qemu64",
            "-nographic", "-no-reboot",
            "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", cmdline,
            "-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n0,mac={GUEST_MAC}",
        ]  # fmt: skip
        started = time.monotonic()
        with console_log.open("wb") as log:
            qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        _setns(f"/run/netns/{NETNS}")
        entered = True
        try:
            status = wait_until_ready(GUEST_ADDR, timeout_s=BOOT_TIMEOUT_S)
        except Exception:
            print(console_log.read_text(errors="replace")[-3000:])
            raise
        ready_s = time.monotonic() - started
        print(f"guest {image.recipe_hash}: boot to workload-ready {ready_s:.1f} s")
        yield BootedGuest(GUEST_ADDR, qemu.pid, console_log, ready_s, status)
    finally:
        if entered:
            _setns_fd(own_netns)
        os.close(own_netns)
        if qemu is not None:
            qemu.terminate()
            try:
                qemu.wait(timeout=10)
            except subprocess.TimeoutExpired:
                qemu.kill()
                qemu.wait(timeout=10)
        if _netns_exists():
            _run("ip", "netns", "del", NETNS)


def _wait_for(
    predicate: Callable[[WorkloadStatus], bool], addr: str, *, timeout_s: float
) -> WorkloadStatus:
    deadline = time.monotonic() + timeout_s
    status = query_status(addr)
    while not predicate(status) and time.monotonic() < deadline:
        time.sleep(0.25)
        status = query_status(addr)
    return status


def test_status_is_sane_and_verification_runs(guest: BootedGuest) -> None:
    first = guest.first_status
    assert (first.wss_mib, first.rate_mib_s, first.mode) == (64, 20, "paced")
    assert len(first.boot_id) == 36
    status = _wait_for(lambda s: s.verify_passes >= 2, guest.addr, timeout_s=10)
    later = _wait_for(
        lambda s: s.pages_verified > status.pages_verified + 4096, guest.addr, timeout_s=5
    )
    print(
        f"achieved {later.achieved_mib_s:.1f} MiB/s (set 20), "
        f"verify pass {later.last_verify_pass_s:.2f} s at 64 MiB, "
        f"verified {later.pages_verified} pages in {later.verify_passes} passes"
    )
    assert later.mismatches == 0, guest.console_tail()
    assert later.boot_id == first.boot_id
    assert later.pages_verified > status.pages_verified
    assert later.pages_written > first.pages_written
    assert 0.5 <= later.last_verify_pass_s <= 3.0
    assert later.achieved_mib_s == pytest.approx(20, rel=0.25)
    assert later.uptime_s > later.workload_uptime_s > 0


def test_set_rate_at_runtime(guest: BootedGuest) -> None:
    reply = send_command(guest.addr, "set rate 40")
    assert reply["rate_mib_s"] == 40
    time.sleep(1.5)  # the achieved rate is measured over the last ~1 s
    fast = query_status(guest.addr)
    busy = WorkloadStatus.from_json(send_command(guest.addr, "set mode busy"))
    assert busy.mode == "busy"
    time.sleep(1.5)
    busy = query_status(guest.addr)
    send_command(guest.addr, "set mode paced")
    back = WorkloadStatus.from_json(send_command(guest.addr, "set rate 20"))
    print(f"achieved at 40 MiB/s paced: {fast.achieved_mib_s:.1f}, busy: {busy.achieved_mib_s:.1f}")
    assert fast.achieved_mib_s == pytest.approx(40, rel=0.25)
    assert busy.achieved_mib_s == pytest.approx(40, rel=0.25)
    assert (back.rate_mib_s, back.mode) == (20, "paced")
    assert back.mismatches == 0, guest.console_tail()
    with pytest.raises(RuntimeError, match="rate must be"):
        send_command(guest.addr, "set rate fast")


def test_stream_delivers_lines(guest: BootedGuest) -> None:
    with StreamProbe(guest.addr) as probe:
        time.sleep(1.0)
    result = probe.result
    assert result is not None
    print(f"stream: {result.lines} lines in 1 s, longest gap {result.longest_gap_ms:.0f} ms")
    assert not result.reset, result.error
    assert result.lines >= 50  # nominally 100 (one per 10 ms)
    assert result.longest_gap_ms < 500


def test_ping_answers(guest: BootedGuest) -> None:
    with PingProbe(guest.addr, interval_s=0.01) as probe:
        time.sleep(1.0)
    result = probe.result
    assert result is not None
    print(f"ping: {result}")
    assert result.sent >= 50
    assert result.lost <= 2
    assert result.max_rtt_ms < 500


def test_corrupt_is_caught_exactly_once(guest: BootedGuest) -> None:
    before = query_status(guest.addr)
    assert before.mismatches == 0, guest.console_tail()
    reply = send_command(guest.addr, "corrupt")
    page = reply["corrupted_page"]
    assert isinstance(page, int)
    assert 0 <= page < 64 * 256
    after = _wait_for(lambda s: s.mismatches > 0, guest.addr, timeout_s=6)
    assert after.mismatches == 1, guest.console_tail()
    # Counted once and repaired: a further whole verification pass finds nothing new.
    passes = after.verify_passes
    settled = _wait_for(lambda s: s.verify_passes >= passes + 2, guest.addr, timeout_s=8)
    assert settled.verify_passes >= passes + 2
    assert settled.mismatches == 1, guest.console_tail()
    assert f"MISMATCH (verifier) page {page}:" in guest.console_log.read_text(errors="replace")
