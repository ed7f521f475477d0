"""The qemu hook's decisions against a real SQLite store in a temp dir (no libvirt)."""

from __future__ import annotations

import contextlib
import io
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from libvirt_vmotion.reserve import hook as hooks
from libvirt_vmotion.reserve.store import (
    HOOK_OWNER,
    Capacity,
    ReservationRequest,
    ReservationStore,
    State,
)

GUEST = """<domain type='qemu'><name>web01</name><memory unit='MiB'>{mib}</memory>
<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>
<devices>{devices}</devices></domain>"""


def xml(mib: int = 256, devices: str = "") -> str:
    return GUEST.format(mib=mib, devices=devices)


@pytest.fixture
def store(tmp_path: Path) -> ReservationStore:
    return ReservationStore(tmp_path / "r.db", host="hostb")


def test_plain_migration_takes_a_reservation_and_started_releases_it(
    store: ReservationStore,
) -> None:
    assert hooks.on_migrate_begin("web01", xml(), store=store, now_s=100) == 0
    (row,) = store.list(now_s=101)
    assert row.owner == HOOK_OWNER
    assert row.state is State.INCOMING
    assert row.memory_bytes == (256 + 256) * 1024 * 1024
    hooks.on_started("web01", store=store, now_s=102)
    assert store.list(now_s=103) == []


def test_guest_that_does_not_fit_is_vetoed_with_a_reason(
    store: ReservationStore, capsys: pytest.CaptureFixture[str]
) -> None:
    assert hooks.on_migrate_begin("web01", xml(mib=10_000_000), store=store, now_s=100) == 1
    err = capsys.readouterr().err
    assert "refused the migration of 'web01'" in err
    assert "needs" in err
    assert "Hint:" in err
    assert store.list(now_s=101) == []


def test_missing_bridge_is_vetoed(
    store: ReservationStore, capsys: pytest.CaptureFixture[str]
) -> None:
    nic = (
        "<interface type='bridge'><mac address='52:54:00:00:00:01'/>"
        "<source bridge='nosuchbr9'/></interface>"
    )
    assert hooks.on_migrate_begin("web01", xml(devices=nic), store=store, now_s=1) == 1
    assert "bridge nosuchbr9" in capsys.readouterr().err


def test_controller_reservation_is_verified_then_committed_not_released(
    store: ReservationStore,
) -> None:
    req = ReservationRequest("ctl-1", "web01", "vmotion pid 1", 512 * 1024 * 1024, 1)
    store.reserve(req, capacity=Capacity(), mem_available_bytes=1 << 34, now_s=1)
    assert hooks.on_migrate_begin("web01", xml(), store=store, now_s=2) == 0
    hooks.on_started("web01", store=store, now_s=3)
    (row,) = store.list(now_s=4)
    assert row.reservation_id == "ctl-1"
    assert row.state is State.COMMITTED
    hooks.on_stopped("web01", store=store, now_s=5)
    assert store.list(now_s=6) == []


def test_other_operations_never_fail_and_print_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert hooks.main(["web01", "prepare", "begin", "-"], io.StringIO(xml())) == 0
    assert hooks.main([], io.StringIO("")) == 0
    assert capsys.readouterr().out == ""


def test_install_status_uninstall(tmp_path: Path) -> None:
    path = hooks.install(etc=tmp_path, python="/opt/venv/bin/python")
    assert path == tmp_path / "hooks" / "qemu.d" / hooks.HOOK_NAME
    assert path.stat().st_mode & 0o111
    assert hooks.shim_python(path.read_text()) == "/opt/venv/bin/python"
    assert hooks.status(etc=tmp_path).line.startswith(f"installed: {path} -> /opt/venv/bin/python")
    assert hooks.uninstall(etc=tmp_path) == path
    assert hooks.uninstall(etc=tmp_path) is None
    assert hooks.status(etc=tmp_path).line.startswith("not installed")


@dataclass
class Locked:
    """A store holding web01's reservation, whose write lock another process holds."""

    path: Path
    holder: sqlite3.Connection

    def unlock(self) -> None:
        if self.holder.in_transaction:
            self.holder.execute("ROLLBACK")


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[Locked]:
    path = tmp_path / "r.db"
    ReservationStore(path, host="hostb").reserve(
        _request("r1", "web01"), capacity=Capacity(), mem_available_bytes=1 << 40, now_s=100
    )
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    found = Locked(path, holder)
    yield found
    found.unlock()
    holder.close()


def test_a_locked_store_vetoes_within_seconds_with_the_reason(
    locked: Locked, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: 30 s per transaction, three transactions at migrate begin, inside
    # libvirt's synchronous hook (a veto after 30.2 s with "database is locked").
    store = hooks.hook_store(locked.path)
    started_s = time.monotonic()
    code = hooks.main(["web01", "migrate", "begin", "-"], io.StringIO(xml()), store=store)
    took_s = time.monotonic() - started_s
    assert code == 1
    assert took_s < 3 * hooks.HOOK_BUSY_TIMEOUT_S  # one transaction, one short wait
    err = capsys.readouterr().err
    assert "refused the migration of 'web01'" in err
    assert f"stayed locked for {hooks.HOOK_BUSY_TIMEOUT_S:g} s" in err
    assert "Hint:" in err


def test_stopped_end_on_a_locked_store_defers_the_release_instead_of_leaking_it(
    locked: Locked, capsys: pytest.CaptureFixture[str]
) -> None:
    store = hooks.hook_store(locked.path)
    code = hooks.main(["web01", "stopped", "end", "-"], io.StringIO(""), store=store)
    assert code == 0
    assert "release of 'web01' is deferred" in capsys.readouterr().err
    locked.unlock()
    # The next use of the store (any process: the agent, the next hook) releases it,
    # instead of the lease an hour later.
    assert store.list(now_s=200) == []
    assert not list(store.pending_dir.glob("*.json"))


def test_a_deferred_release_spares_a_reservation_taken_after_it(tmp_path: Path) -> None:
    store = ReservationStore(tmp_path / "r.db", host="hostb")
    store.defer_release(domain="web01", now_s=150)
    store.reserve(
        _request("new", "web01"), capacity=Capacity(), mem_available_bytes=1 << 40, now_s=160
    )
    assert [r.reservation_id for r in store.list(now_s=170)] == ["new"]


def test_the_store_runs_in_wal_mode(tmp_path: Path) -> None:
    store = ReservationStore(tmp_path / "r.db", host="hostb")
    store.list(now_s=1)
    with contextlib.closing(sqlite3.connect(store.path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def _request(rid: str, domain: str) -> ReservationRequest:
    return ReservationRequest(
        reservation_id=rid, domain=domain, owner="vmotion", memory_bytes=1 << 20, vcpus=1
    )
