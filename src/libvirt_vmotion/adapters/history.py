"""What earlier migrations achieved: the forecast learns from it, ``vmotion history`` shows it.

I/O module: a SQLite file on the controller (the machine that runs
``vmotion migrate``). Table ``migrations``: one row per completed pre-copy
migration, keyed by the two hosts' libvirt host UUIDs (what the forecast
learns from; ``linkrate`` decides what the rows mean). Table ``journal``:
one row per ``migrate`` that got past its arguments, whatever its result
(``vmotion history``, the metrics textfile).

Where: ``$VMOTION_HISTORY`` if set (``off`` disables it), else
``/var/lib/libvirt-vmotion/history.db`` for root, else
``$XDG_STATE_HOME/libvirt-vmotion/history.db`` (``~/.local/state/...``).
History is a hint, never a requirement: when the file cannot be read or
written the forecast goes on without it and says so in its inputs.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Mapping
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from libvirt_vmotion.model import PastRun

log = logging.getLogger(__name__)

ENV: Final = "VMOTION_HISTORY"
KEEP_PER_PAIR: Final = 50
MIN_SWITCHOVER_SAMPLE_BYTES: Final = 4 << 20
"""A final round smaller than this does not tell the switchover rate (see Completed)."""
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS migrations (
    source_uuid TEXT NOT NULL,
    dest_uuid TEXT NOT NULL,
    finished_s REAL NOT NULL,
    cap_mib_s REAL,
    achieved_mib_s REAL NOT NULL,
    data_bytes INTEGER NOT NULL,
    elapsed_ms INTEGER NOT NULL,
    downtime_ms INTEGER NOT NULL,
    switchover_mib_s REAL,
    tls INTEGER
)
"""
_JOURNAL_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS journal (
    finished_s REAL NOT NULL,
    domain TEXT NOT NULL,
    source TEXT NOT NULL,
    dest TEXT NOT NULL,
    result TEXT NOT NULL,
    exit_code INTEGER NOT NULL,
    total_s REAL,
    downtime_ms INTEGER,
    data_bytes INTEGER,
    strategy TEXT NOT NULL
)
"""
KEEP_JOURNAL: Final = 10_000
_COLUMNS_ADDED: Final = (("switchover_mib_s", "REAL"), ("tls", "INTEGER"))
"""Columns newer than the first schema, added to an older file when it is opened."""


def default_path() -> Path | None:
    """The history file for this user (None: disabled)."""
    configured = os.environ.get(ENV, "")
    if configured == "off":
        return None
    if configured:
        return Path(configured)
    if os.geteuid() == 0:
        return Path("/var/lib/libvirt-vmotion/history.db")
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "libvirt-vmotion" / "history.db"


@dataclass(frozen=True, slots=True)
class Completed:
    """One completed pre-copy migration, as recorded."""

    source_uuid: str
    dest_uuid: str
    finished_s: float
    cap_mib_s: float | None
    data_bytes: int
    elapsed_ms: int
    downtime_ms: int
    last_dirty_set_bytes: int = 0
    """Dirty set of the last pre-copy round: about what the switchover sent."""
    tls: bool = False
    """The memory stream was encrypted (the report's ``encryption.memory``): TLS costs
    throughput, so the forecast learns from runs encrypted as the next one will be."""

    @classmethod
    def from_report(
        cls,
        report: Mapping[str, object],
        *,
        host_pair: tuple[str, str],
        cap_mib_s: float | None,
        finished_s: float,
    ) -> Completed | None:
        """The run a ``migrate`` report describes, or None when it is not one to learn from.

        Post-copy runs are left out (their rate is set by page faults, not the
        sender), so are compressed ones (their rate counts compressed bytes: under a
        cap it read as a sender slower than the cap, which turned compression off and
        misled the forecast, bench 2026-12-06), and reports missing a figure.
        """
        convergence = report.get("convergence")
        conv = convergence if isinstance(convergence, Mapping) else {}
        measured = conv.get("measured")
        if isinstance(measured, Mapping) and measured.get("compressed") is True:
            return None
        data = report.get("data_transferred_bytes")
        elapsed = report.get("qemu_elapsed_ms")
        downtime = report.get("downtime_ms")
        if "post-copy" in str(conv.get("strategy", "")) or not (
            isinstance(data, int) and isinstance(elapsed, int) and isinstance(downtime, int)
        ):
            return None
        rounds = conv.get("bytes_per_round")
        nonzero = [
            (r["round"], r["bytes"])
            for r in (rounds if isinstance(rounds, list) else [])
            if isinstance(r, Mapping)
            and isinstance(r.get("round"), int)
            and isinstance(r.get("bytes"), int)
            and r["bytes"] > 0
        ]
        encryption = report.get("encryption")
        return cls(
            source_uuid=host_pair[0],
            dest_uuid=host_pair[1],
            finished_s=finished_s,
            cap_mib_s=cap_mib_s,
            data_bytes=data,
            elapsed_ms=elapsed,
            downtime_ms=downtime,
            last_dirty_set_bytes=max(nonzero)[1] if nonzero else 0,
            tls=isinstance(encryption, Mapping) and encryption.get("memory") is True,
        )

    @property
    def achieved_mib_s(self) -> float:
        """Memory data over the time spent sending it (the guest ran meanwhile)."""
        sending_ms = self.elapsed_ms - self.downtime_ms
        return self.data_bytes / (1 << 20) / (sending_ms / 1000) if sending_ms > 0 else 0.0

    @property
    def switchover_mib_s(self) -> float | None:
        """Last dirty set / downtime: a lower bound of the unthrottled final round's rate.

        (The downtime also holds the fixed switchover cost, so the true rate is higher.)
        None when the last set was too small for its transfer to dominate the pause:
        0.3 MiB in 26 ms says nothing about the link, only about the fixed cost.
        """
        if self.last_dirty_set_bytes < MIN_SWITCHOVER_SAMPLE_BYTES or self.downtime_ms <= 0:
            return None
        return self.last_dirty_set_bytes / (1 << 20) / (self.downtime_ms / 1000)


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One ``migrate`` as ``vmotion history`` lists it.

    Attributes:
        finished_s: when it ended (Unix seconds).
        domain: the guest.
        source: the source host's name (its URI when the host was never reached).
        dest: the destination host's name (likewise).
        result: ``completed``, ``aborted`` (the guest stays on the source) or ``failed``.
        exit_code: the command's exit code.
        total_s: the migration job's time (None: it never ran).
        downtime_ms: the guest's pause as QEMU measured it (None: unknown).
        data_bytes: what was sent (None: unknown).
        strategy: pre-copy, throttle, post-copy ... ("" when it never ran).

    """

    finished_s: float
    domain: str
    source: str
    dest: str
    result: str
    exit_code: int
    total_s: float | None = None
    downtime_ms: int | None = None
    data_bytes: int | None = None
    strategy: str = ""

    @classmethod
    def from_report(
        cls, report: Mapping[str, object], *, finished_s: float, exit_code: int
    ) -> JournalEntry:
        """The entry of a migrate report (completed, or a failure report)."""

        def where(key: str) -> str:
            side = report.get(key)
            if not isinstance(side, Mapping):
                return ""
            return str(side.get("host") or side.get("uri") or "")

        conv = report.get("convergence")
        total, downtime, data = (
            report.get("total_time_s"),
            report.get("downtime_ms"),
            report.get("data_transferred_bytes"),
        )
        return cls(
            finished_s=finished_s,
            domain=str(report.get("domain", "")),
            source=where("source"),
            dest=where("destination"),
            result=str(report.get("result", "")),
            exit_code=exit_code,
            total_s=float(total) if isinstance(total, int | float) else None,
            downtime_ms=downtime if isinstance(downtime, int) else None,
            data_bytes=data if isinstance(data, int) else None,
            strategy=str(conv.get("strategy", "")) if isinstance(conv, Mapping) else "",
        )

    def to_dict(self) -> dict[str, object]:
        """JSON form (``vmotion history --json``)."""
        return {
            "finished_s": round(self.finished_s, 3),
            "domain": self.domain,
            "source": self.source,
            "dest": self.dest,
            "result": self.result,
            "exit_code": self.exit_code,
            "total_s": self.total_s,
            "downtime_ms": self.downtime_ms,
            "data_bytes": self.data_bytes,
            "strategy": self.strategy,
        }


class History:
    """The history file; every method swallows storage errors (history is a hint)."""

    def __init__(self, path: Path | None) -> None:
        """Use ``path`` (None: a history that remembers nothing)."""
        self.path = path

    def _connect(self) -> sqlite3.Connection:
        assert self.path is not None  # noqa: S101  callers check
        # Private to whoever runs migrations: it steers the controller's pause arithmetic.
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600))
        conn = sqlite3.connect(self.path, timeout=5.0)
        conn.execute(_SCHEMA)
        conn.execute(_JOURNAL_SCHEMA)
        have = {row[1] for row in conn.execute("PRAGMA table_info(migrations)")}
        for name, kind in _COLUMNS_ADDED:
            if name not in have:
                conn.execute(f"ALTER TABLE migrations ADD COLUMN {name} {kind}")
        return conn

    def _untrusted(self) -> str:
        """Why the file must not steer this controller ("" when it may).

        Its rates set how long the controller lets QEMU pause a guest: a file
        (or directory) another user owns or may write is not read, as ssh treats
        its configuration.
        """
        assert self.path is not None  # noqa: S101  callers check
        for where in (self.path, self.path.parent):
            try:
                st = where.stat()
            except FileNotFoundError:
                continue
            except OSError as exc:
                return str(exc)
            if st.st_uid not in {0, os.geteuid()}:
                return f"{where} belongs to uid {st.st_uid}"
            if st.st_mode & 0o022 and not (where.is_dir() and st.st_mode & 0o1000):
                return f"others can write it ({where} is {st.st_mode & 0o777:o})"
        return ""

    def runs(
        self,
        source_uuid: str,
        dest_uuid: str,
        *,
        tls: bool | None = None,
        newer_than_s: float | None = None,
    ) -> list[PastRun]:
        """Past runs from ``source_uuid`` to ``dest_uuid``, oldest first.

        ``tls``: only runs encrypted (True) or not (False) as the next one will be;
        rows from before the column existed were unencrypted. None: all.
        ``newer_than_s``: only runs that ended after this Unix time.
        """
        if self.path is None or not source_uuid or not dest_uuid:
            return []
        untrusted = self._untrusted()
        if untrusted:
            log.warning("migration history %s not read: %s", self.path, untrusted)
            return []
        try:
            with closing(self._connect()) as conn:
                query = (
                    "SELECT achieved_mib_s, cap_mib_s, switchover_mib_s FROM migrations "
                    "WHERE source_uuid = ? AND dest_uuid = ?"
                )
                params: list[object] = [source_uuid, dest_uuid]
                if tls is not None:
                    query += " AND coalesce(tls, 0) = ?"
                    params.append(int(tls))
                if newer_than_s is not None:
                    query += " AND finished_s >= ?"
                    params.append(newer_than_s)
                rows = conn.execute(query + " ORDER BY finished_s", params).fetchall()
        except (OSError, sqlite3.Error) as exc:
            log.warning("migration history %s not read: %s", self.path, exc)
            return []
        return [
            PastRun(float(a), None if c is None else float(c), None if w is None else float(w))
            for a, c, w in rows
        ]

    def record(self, run: Completed) -> bool:
        """Remember ``run`` (keeping the last ``KEEP_PER_PAIR`` per host pair)."""
        if self.path is None or run.achieved_mib_s <= 0:
            return False
        try:
            with closing(self._connect()) as conn, conn:
                conn.execute(
                    "INSERT INTO migrations (source_uuid, dest_uuid, finished_s, cap_mib_s, "
                    "achieved_mib_s, data_bytes, elapsed_ms, downtime_ms, switchover_mib_s, tls) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        run.source_uuid,
                        run.dest_uuid,
                        run.finished_s,
                        run.cap_mib_s,
                        run.achieved_mib_s,
                        run.data_bytes,
                        run.elapsed_ms,
                        run.downtime_ms,
                        run.switchover_mib_s,
                        int(run.tls),
                    ),
                )
                conn.execute(
                    "DELETE FROM migrations WHERE source_uuid = ? AND dest_uuid = ? AND "
                    "finished_s NOT IN (SELECT finished_s FROM migrations WHERE source_uuid = ? "
                    "AND dest_uuid = ? ORDER BY finished_s DESC LIMIT ?)",
                    (run.source_uuid, run.dest_uuid, run.source_uuid, run.dest_uuid, KEEP_PER_PAIR),
                )
        except (OSError, sqlite3.Error) as exc:
            log.warning("migration history %s not written: %s", self.path, exc)
            return False
        return True

    def journal(self, entry: JournalEntry) -> bool:
        """Append ``entry`` to the journal (keeping the last ``KEEP_JOURNAL``)."""
        if self.path is None:
            return False
        try:
            with closing(self._connect()) as conn, conn:
                conn.execute(
                    "INSERT INTO journal (finished_s, domain, source, dest, result, exit_code, "
                    "total_s, downtime_ms, data_bytes, strategy) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        entry.finished_s, entry.domain, entry.source, entry.dest, entry.result,
                        entry.exit_code, entry.total_s, entry.downtime_ms, entry.data_bytes,
                        entry.strategy,
                    ),
                )  # fmt: skip
                conn.execute(
                    "DELETE FROM journal WHERE rowid NOT IN "
                    "(SELECT rowid FROM journal ORDER BY finished_s DESC LIMIT ?)",
                    (KEEP_JOURNAL,),
                )
        except (OSError, sqlite3.Error) as exc:
            log.warning("migration history %s not written: %s", self.path, exc)
            return False
        return True

    def entries(
        self, *, domain: str | None = None, since_s: float | None = None
    ) -> list[JournalEntry]:
        """Journal entries, oldest first, of ``domain`` (None: all), ended at or after ``since_s``.

        Raises:
            OSError: the file exists but cannot be read (``vmotion history`` says so).
            sqlite3.Error: likewise.

        """
        if self.path is None or not self.path.exists():
            return []
        query = "SELECT * FROM journal WHERE 1 = 1"
        params: list[object] = []
        if domain is not None:
            query += " AND domain = ?"
            params.append(domain)
        if since_s is not None:
            query += " AND finished_s >= ?"
            params.append(since_s)
        with closing(self._connect()) as conn:
            rows = conn.execute(query + " ORDER BY finished_s", params).fetchall()
        return [JournalEntry(*row) for row in rows]
