"""The migration history file (real SQLite in a temporary directory)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from libvirt_vmotion.adapters.history import KEEP_PER_PAIR, Completed, History, default_path
from libvirt_vmotion.model import PastRun


def _run(
    at: float, *, data_mib: int = 200, elapsed_ms: int = 2050, cap: float | None = None
) -> Completed:
    return Completed("src", "dst", at, cap, data_mib << 20, elapsed_ms, 50)


def test_achieved_rate_excludes_the_downtime() -> None:
    assert _run(1).achieved_mib_s == pytest.approx(100.0)


def test_record_and_read_back_per_host_pair(tmp_path: Path) -> None:
    history = History(tmp_path / "sub" / "history.db")
    assert history.runs("src", "dst") == []
    assert history.record(_run(2, cap=50))
    assert history.record(_run(1))
    assert history.runs("src", "dst") == [PastRun(100.0, None), PastRun(100.0, 50.0)]
    assert history.runs("dst", "src") == []


def test_keeps_only_the_last_runs_of_a_pair(tmp_path: Path) -> None:
    history = History(tmp_path / "history.db")
    for at in range(KEEP_PER_PAIR + 5):
        history.record(_run(at, elapsed_ms=1050 + at))
    runs = history.runs("src", "dst")
    assert len(runs) == KEEP_PER_PAIR
    assert runs[0].achieved_mib_s == pytest.approx(200 / ((1050 + 5 - 50) / 1000))


def test_unusable_file_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    (tmp_path / "history.db").write_text("not a database")
    history = History(tmp_path / "history.db")
    assert history.runs("src", "dst") == []
    assert history.record(_run(1)) is False


def test_disabled_and_configured_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VMOTION_HISTORY", "off")
    assert default_path() is None
    assert History(None).record(_run(1)) is False
    monkeypatch.setenv("VMOTION_HISTORY", str(tmp_path / "h.db"))
    assert default_path() == tmp_path / "h.db"


def test_switchover_rate_is_last_dirty_set_over_downtime(tmp_path: Path) -> None:
    run = Completed("src", "dst", 1, 50, 300 << 20, 6050, 50, last_dirty_set_bytes=25 << 20)
    assert run.switchover_mib_s == pytest.approx(500.0)
    assert _run(1).switchover_mib_s is None
    small = Completed("src", "dst", 1, 50, 200 << 20, 5000, 26, last_dirty_set_bytes=311296)
    assert small.switchover_mib_s is None  # the fixed cost dominates a 0.3 MiB round
    history = History(tmp_path / "history.db")
    history.record(run)
    assert history.runs("src", "dst")[0].switchover_mib_s == pytest.approx(500.0)


def test_a_file_of_the_first_schema_gains_the_new_column(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            "CREATE TABLE migrations (source_uuid TEXT, dest_uuid TEXT, finished_s REAL, "
            "cap_mib_s REAL, achieved_mib_s REAL, data_bytes INTEGER, elapsed_ms INTEGER, "
            "downtime_ms INTEGER)"
        )
        conn.execute("INSERT INTO migrations VALUES ('src', 'dst', 1, NULL, 90, 1, 1, 1)")
    history = History(path)
    assert history.runs("src", "dst") == [PastRun(90.0, None, None)]
    assert history.record(_run(2))
    assert len(history.runs("src", "dst")) == 2


def test_a_migrate_report_becomes_a_run_to_learn_from() -> None:
    report: dict[str, object] = {
        "data_transferred_bytes": 300 << 20,
        "qemu_elapsed_ms": 6050,
        "downtime_ms": 50,
        "convergence": {
            "strategy": "pre-copy",
            "bytes_per_round": [
                {"round": 2, "bytes": 40 << 20},
                {"round": 3, "bytes": 25 << 20},
                {"round": 4, "bytes": 0},
            ],
        },
    }
    run = Completed.from_report(report, host_pair=("src", "dst"), cap_mib_s=50.0, finished_s=1.0)
    assert run is not None
    assert run.last_dirty_set_bytes == 25 << 20  # the last round that had data
    assert run.switchover_mib_s == pytest.approx(500.0)
    postcopy = {**report, "convergence": {"strategy": "post-copy"}}
    assert (
        Completed.from_report(postcopy, host_pair=("s", "d"), cap_mib_s=None, finished_s=1) is None
    )
    partial = {**report, "downtime_ms": None}
    assert (
        Completed.from_report(partial, host_pair=("s", "d"), cap_mib_s=None, finished_s=1) is None
    )
    # zstd: 300 MiB on the wire in 6 s under a 50 MiB/s cap is not a sender of 50 MiB/s.
    conv = report["convergence"]
    assert isinstance(conv, dict)
    zstd = {**report, "convergence": {**conv, "measured": {"compressed": True}}}
    assert Completed.from_report(zstd, host_pair=("s", "d"), cap_mib_s=50.0, finished_s=1) is None


def test_the_forecast_learns_from_runs_encrypted_as_the_next_one(tmp_path: Path) -> None:
    history = History(tmp_path / "history.db")
    plain = Completed("src", "dst", 1, None, 200 << 20, 2050, 50)
    encrypted = Completed("src", "dst", 2, None, 100 << 20, 2050, 50, tls=True)
    assert history.record(plain)
    assert history.record(encrypted)
    assert [r.achieved_mib_s for r in history.runs("src", "dst", tls=True)] == [50.0]
    assert [r.achieved_mib_s for r in history.runs("src", "dst", tls=False)] == [100.0]
    assert len(history.runs("src", "dst")) == 2


def test_a_report_says_whether_its_run_was_encrypted() -> None:
    report: dict[str, object] = {
        "data_transferred_bytes": 1 << 30,
        "qemu_elapsed_ms": 3000,
        "downtime_ms": 40,
        "convergence": {"strategy": "pre-copy"},
        "encryption": {"memory": True, "disk": None, "control": "tcp"},
    }
    run = Completed.from_report(report, host_pair=("a", "b"), cap_mib_s=None, finished_s=1.0)
    assert run is not None
    assert run.tls is True
    del report["encryption"]
    older = Completed.from_report(report, host_pair=("a", "b"), cap_mib_s=None, finished_s=1.0)
    assert older is not None
    assert older.tls is False


def test_a_history_file_without_the_tls_column_gains_it(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            "CREATE TABLE migrations (source_uuid TEXT NOT NULL, dest_uuid TEXT NOT NULL, "
            "finished_s REAL NOT NULL, cap_mib_s REAL, achieved_mib_s REAL NOT NULL, "
            "data_bytes INTEGER NOT NULL, elapsed_ms INTEGER NOT NULL, "
            "downtime_ms INTEGER NOT NULL)"
        )
        conn.execute("INSERT INTO migrations VALUES ('src', 'dst', 1, NULL, 80, 1, 1000, 10)")
    path.chmod(0o600)
    history = History(path)
    assert history.runs("src", "dst", tls=False) == [PastRun(80.0, None)]
    assert history.runs("src", "dst", tls=True) == []


def test_only_recent_runs_when_asked(tmp_path: Path) -> None:
    # A recent learned rate spares pre-flight the link probe (session.gate._link_known).
    history = History(tmp_path / "history.db")
    assert history.record(_run(1000))
    assert history.record(_run(5000, data_mib=400))
    assert history.runs("src", "dst", newer_than_s=2000) == [PastRun(200.0, None)]
    assert history.runs("src", "dst", newer_than_s=9000) == []
