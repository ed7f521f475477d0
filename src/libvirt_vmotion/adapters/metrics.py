"""Prometheus metrics in node_exporter's textfile collector format.

I/O module at its edge only: ``render_textfile`` is pure (journal entries in,
text out); ``write_textfile`` replaces the file atomically, as the collector
convention asks (it may read at any moment). The figures come from the
history's journal (``adapters.history``), so counters keep counting across
runs; with the history off they cover the run that wrote them.

Metrics (labels ``source``/``dest`` are host names, ``domain`` the guest)::

    vmotion_migrations_total{source,dest,result}             counter
    vmotion_migration_seconds_total{source,dest}             counter (job time)
    vmotion_migration_downtime_seconds_total{source,dest}    counter
    vmotion_migration_bytes_total{source,dest}               counter
    vmotion_last_migration_timestamp_seconds{domain,source,dest,result}   gauge
    vmotion_last_migration_seconds{domain,source,dest,result}             gauge
    vmotion_last_migration_downtime_seconds{domain,source,dest,result}    gauge
    vmotion_last_migration_bytes{domain,source,dest,result}               gauge
    vmotion_last_migration_success{domain,source,dest,result}             gauge (1/0)
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Final

from libvirt_vmotion.adapters.history import JournalEntry

TEXTFILE_DIR: Final = Path("/var/lib/node_exporter/textfile_collector")
FILE_NAME: Final = "libvirt_vmotion.prom"


def default_path(directory: Path = TEXTFILE_DIR) -> Path | None:
    """node_exporter's textfile collector file, when that directory exists (else None)."""
    return directory / FILE_NAME if directory.is_dir() else None


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def _family(name: str, kind: str, text: str, samples: Iterable[tuple[str, float]]) -> list[str]:
    lines = [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
    lines += [f"{name}{labels} {_number(value)}" for labels, value in samples]
    return lines


def render_textfile(entries: Sequence[JournalEntry]) -> str:
    """The textfile for ``entries`` (oldest first): counters per host pair, the last run per guest.

    Pure. Label values are escaped as the text format requires.
    """
    lines = [*_pair_families(entries), *_last_run_families(entries)]
    return "\n".join(lines) + "\n"


def _pair_families(entries: Sequence[JournalEntry]) -> list[str]:
    """The counters: migrations by result, job time, pause and data, per host pair."""
    counts: dict[tuple[str, str, str], int] = defaultdict(int)
    sums: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for e in entries:
        counts[e.source, e.dest, e.result] += 1
        pair = sums[e.source, e.dest]
        pair[0] += e.total_s or 0.0
        pair[1] += (e.downtime_ms or 0) / 1000
        pair[2] += e.data_bytes or 0
    pairs = sorted(sums)

    def per_pair(i: int) -> list[tuple[str, float]]:
        return [(_labels(source=s, dest=d), sums[s, d][i]) for s, d in pairs]

    return [
        *_family(
            "vmotion_migrations_total", "counter", "Migrations this controller ran, by result.",
            [(_labels(source=s, dest=d, result=r), n) for (s, d, r), n in sorted(counts.items())],
        ),
        *_family("vmotion_migration_seconds_total", "counter", "Migration job time.", per_pair(0)),
        *_family(
            "vmotion_migration_downtime_seconds_total", "counter", "Guest pause (QEMU's downtime).",
            per_pair(1),
        ),
        *_family("vmotion_migration_bytes_total", "counter", "Data sent.", per_pair(2)),
    ]  # fmt: skip


def _last_run_families(entries: Sequence[JournalEntry]) -> list[str]:
    """The gauges: each guest's last migration (when, how long, its pause, data, success)."""
    last: dict[str, JournalEntry] = {}
    for e in entries:
        last[e.domain] = e

    def per_guest(value: Callable[[JournalEntry], float | None]) -> list[tuple[str, float]]:
        out = []
        for name in sorted(last):
            e = last[name]
            v = value(e)
            if v is not None:
                labels = _labels(domain=name, source=e.source, dest=e.dest, result=e.result)
                out.append((labels, v))
        return out

    return [
        *_family(
            "vmotion_last_migration_timestamp_seconds", "gauge", "When the last one ended.",
            per_guest(lambda e: e.finished_s),
        ),
        *_family(
            "vmotion_last_migration_seconds", "gauge", "The last migration's job time.",
            per_guest(lambda e: e.total_s),
        ),
        *_family(
            "vmotion_last_migration_downtime_seconds", "gauge", "The last migration's pause.",
            per_guest(lambda e: None if e.downtime_ms is None else e.downtime_ms / 1000),
        ),
        *_family(
            "vmotion_last_migration_bytes", "gauge", "The last migration's data sent.",
            per_guest(lambda e: e.data_bytes),
        ),
        *_family(
            "vmotion_last_migration_success", "gauge", "1 if the last migration completed.",
            per_guest(lambda e: 1 if e.result == "completed" else 0),
        ),
    ]  # fmt: skip


def write_textfile(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temporary file beside it, then a rename).

    Raises:
        OSError: the directory is missing or not writable.

    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
