"""The Prometheus textfile: counters per host pair, the last run per guest; the journal."""

from __future__ import annotations

import re
from pathlib import Path

from libvirt_vmotion.adapters.history import History, JournalEntry
from libvirt_vmotion.adapters.metrics import default_path, render_textfile, write_textfile

SAMPLE = re.compile(r'^[a-z_]+\{([a-z_]+="(?:[^"\\]|\\.)*",?)*\} -?[0-9.e+]+$')


def entry(n: int, *, domain: str = "web01", result: str = "completed") -> JournalEntry:
    return JournalEntry(
        finished_s=1_000.0 + n, domain=domain, source="kvm1", dest="kvm2", result=result,
        exit_code=0 if result == "completed" else 5, total_s=4.0, downtime_ms=50,
        data_bytes=100 << 20, strategy="pre-copy",
    )  # fmt: skip


def test_every_line_is_help_type_or_a_sample() -> None:
    text = render_textfile([entry(1), entry(2, result="aborted"), entry(3, domain='we"b\\02')])
    assert text.endswith("\n")
    for line in text.splitlines():
        assert line.startswith(("# HELP ", "# TYPE ")) or SAMPLE.match(line), line


def test_counters_add_up_per_host_pair_and_the_last_run_per_guest_is_shown() -> None:
    text = render_textfile([entry(1), entry(2, result="aborted"), entry(3)])
    assert 'vmotion_migrations_total{source="kvm1",dest="kvm2",result="completed"} 2' in text
    assert 'vmotion_migrations_total{source="kvm1",dest="kvm2",result="aborted"} 1' in text
    assert 'vmotion_migration_seconds_total{source="kvm1",dest="kvm2"} 12.0' in text
    assert 'vmotion_migration_downtime_seconds_total{source="kvm1",dest="kvm2"} 0.15' in text
    last = 'vmotion_last_migration_success{domain="web01",source="kvm1",dest="kvm2",'
    assert f'{last}result="completed"}} 1' in text
    assert "vmotion_last_migration_timestamp_seconds" in text
    assert 'domain="web01"' in text


def test_label_values_are_escaped() -> None:
    text = render_textfile([entry(1, domain='a"b\\c')])
    assert 'domain="a\\"b\\\\c"' in text


def test_the_file_is_replaced_whole_and_the_default_needs_the_collector_dir(tmp_path: Path) -> None:
    target = tmp_path / "vmotion.prom"
    write_textfile(target, "a 1\n")
    write_textfile(target, "b 2\n")
    assert target.read_text() == "b 2\n"
    assert list(tmp_path.iterdir()) == [target]
    assert default_path(tmp_path / "missing") is None
    assert default_path(tmp_path) == tmp_path / "libvirt_vmotion.prom"


def test_the_journal_keeps_every_result_and_filters_by_guest_and_time(tmp_path: Path) -> None:
    history = History(tmp_path / "h.db")
    for n, e in enumerate([entry(1), entry(2, domain="db01", result="failed"), entry(3)]):
        assert history.journal(e), n
    assert [e.domain for e in history.entries()] == ["web01", "db01", "web01"]
    assert [e.finished_s for e in history.entries(domain="web01")] == [1001.0, 1003.0]
    assert [e.domain for e in history.entries(since_s=1002.0)] == ["db01", "web01"]
    assert History(None).entries() == []
    assert not History(None).journal(entry(4))


def test_a_failure_report_becomes_a_journal_entry() -> None:
    report = {
        "result": "aborted",
        "domain": "web01",
        "source": {"uri": "qemu+tcp://kvm1/system"},
        "destination": {"uri": "qemu+tcp://kvm2/system"},
    }
    e = JournalEntry.from_report(report, finished_s=5.0, exit_code=5)
    assert (e.source, e.dest, e.result, e.exit_code, e.total_s) == (
        "qemu+tcp://kvm1/system", "qemu+tcp://kvm2/system", "aborted", 5, None,
    )  # fmt: skip
