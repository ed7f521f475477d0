"""Observers that watch the guest from outside while it migrates.

I/O: each wraps a probe and turns its result into a report section.

- ``PingObserver``: ICMP echo every 10 ms to the guest's address; reports
  lost replies and the longest gap between replies (what users feel).
- ``WorkloadObserver``: the lab guest's self-verifying workload; reads its
  status before and after and holds its long-lived TCP stream open during the
  migration: new mismatches (lost pages), uptime reset, TCP reset.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from libvirt_vmotion.errors import UsageError
from libvirt_vmotion.observe.ping import PingProbe
from libvirt_vmotion.observe.workload import (
    StreamProbe,
    WorkloadError,
    WorkloadStatus,
    query_status,
)

DISK_VERIFY_WAIT_S: Final = 20.0
"""How long ``--workload`` waits, after a move, for the guest to re-read its whole disk log."""


@dataclass(slots=True)
class PingObserver:
    """Pings ``addr`` for the whole migration."""

    addr: str
    interval_s: float = 0.01
    name: str = "network"
    _probe: PingProbe | None = field(default=None, init=False)

    def start(self) -> None:
        """Start pinging."""
        self._probe = PingProbe(self.addr, interval_s=self.interval_s)
        self._probe.start()

    def stop(self) -> Mapping[str, object]:
        """Stop and report sent/lost/longest gap."""
        if self._probe is None:
            return {}
        result = self._probe.stop()
        return {
            "ping_target": self.addr,
            "ping_interval_ms": round(self.interval_s * 1000, 1),
            "ping_sent": result.sent,
            "ping_lost": result.lost,
            "ping_longest_gap_ms": round(result.longest_gap_ms, 1),
            "ping_max_rtt_ms": round(result.max_rtt_ms, 1),
        }


@dataclass(slots=True)
class WorkloadObserver:
    """Reads the lab workload before/after and keeps its TCP stream open."""

    addr: str
    name: str = "workload"
    _before: WorkloadStatus | None = field(default=None, init=False)
    _stream: StreamProbe | None = field(default=None, init=False)

    def start(self) -> None:
        """Read the status and open the stream.

        Raises:
            UsageError: the workload does not answer at ``addr``.

        """
        try:
            self._before = query_status(self.addr)
        except WorkloadError as exc:
            msg = f"The lab workload does not answer at {self.addr}: {exc}"
            raise UsageError(
                msg,
                hint="Run this from the lab's client namespace (vmotion lab exec -- ...) and "
                "check the guest with 'vmotion lab guest status'; or drop --workload.",
            ) from exc
        self._stream = StreamProbe(self.addr)
        self._stream.start()

    def stop(self) -> Mapping[str, object]:
        """Close the stream, read the status again, compare."""
        section: dict[str, object] = {}
        if self._stream is not None:
            stream = self._stream.stop()
            section.update(
                {
                    "tcp_stream_lines": stream.lines,
                    "tcp_stream_longest_gap_ms": round(stream.longest_gap_ms, 1),
                    "tcp_reset": stream.reset,
                }
            )
        after = query_status(self.addr)
        before = self._before
        section.update(
            {
                "mismatches": after.mismatches,
                "new_mismatches": after.mismatches - (before.mismatches if before else 0),
                "uptime_s": round(after.uptime_s, 1),
                "rebooted": before is not None
                and (after.boot_id != before.boot_id or after.uptime_s < before.uptime_s),
                "pages_verified": after.pages_verified,
                "write_rate_mib_s": round(after.achieved_mib_s, 1),
            }
        )
        if after.disk:
            section.update(self._disk_section(before, after))
        return section

    def _disk_section(
        self, before: WorkloadStatus | None, after: WorkloadStatus
    ) -> dict[str, object]:
        """Summarize the disk log after the move.

        Waits (bounded) for one whole re-read pass that started after switchover,
        so every acknowledged record was checked on the storage the guest now uses.
        """
        deadline = time.monotonic() + DISK_VERIFY_WAIT_S
        passes_at_end = after.disk_verify_passes
        while after.disk_verify_passes < passes_at_end + 2 and time.monotonic() < deadline:
            time.sleep(0.25)
            after = query_status(self.addr)
        return {
            "disk_records": after.disk_records,
            "disk_acked": after.disk_acked,
            "disk_acked_during": after.disk_acked - (before.disk_acked if before else 0),
            "disk_mismatches": after.disk_mismatches,
            "new_disk_mismatches": after.disk_mismatches
            - (before.disk_mismatches if before else 0),
            "disk_io_errors": after.disk_io_errors,
            "disk_verified_after_move": after.disk_verify_passes >= passes_at_end + 2,
            "disk_last_problem": after.disk_last_problem,
        }
