"""Record a driver trace from the namespace lab (run as root, VMOTION_LAB_ID set).

    VMOTION_LAB_ID=conv2 .venv/bin/python tests/data/traces/record_driver_trace.py \\
        NAME --rate 5 [--bandwidth 30] [--policy-json '{"allow_postcopy": false}'] \\
        [--max-downtime 100]

Runs one real migration through ``driver.migrate`` with the hosts wrapped in a
recorder of the driver's own ports (``HostConnection``/``MigratingGuest``) and
writes what the driver saw (job statistics, events, the end of the migrate call)
and did (calls) to ``tests/data/traces/driver/NAME.json``. The unit tests replay
it through a fake of the same ports.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from libvirt_vmotion.adapters.virt import HostIdentity, Hypervisor, MigrationOptions
from libvirt_vmotion.converge.loop import HostConnection, MigratingGuest, migrate
from libvirt_vmotion.events import MigrationEvent
from libvirt_vmotion.lab import guestctl
from libvirt_vmotion.lab.constants import GUEST_NAME, HOST_A, HOST_B
from libvirt_vmotion.model import JobSample, MeasuredContext, MigrationRequest
from libvirt_vmotion.policy import build_policy

OUT = Path(__file__).parent / "driver"
_TYPES = {"none": 0, "bounded": 1, "unbounded": 2, "completed": 3, "failed": 4, "cancelled": 5}


def to_job_stats(sample: JobSample, t0: float) -> dict[str, Any]:
    """The libvirt keys JobSample.from_job_stats reads, plus now_s (relative)."""
    return {
        "type": _TYPES.get(sample.job_type, 0),
        "time_elapsed": sample.elapsed_ms,
        "data_total": sample.data_total_bytes,
        "data_processed": sample.data_processed_bytes,
        "data_remaining": sample.data_remaining_bytes,
        "memory_total": sample.memory_total_bytes,
        "memory_remaining": sample.memory_remaining_bytes,
        "memory_bps": sample.memory_bps,
        "memory_dirty_rate": sample.memory_dirty_rate_pages_s,
        "memory_page_size": sample.memory_page_size,
        "memory_iteration": sample.iteration,
        "setup_time": sample.setup_time_ms,
        "downtime": sample.downtime_ms,
        "downtime_net": sample.downtime_net_ms,
        "memory_postcopy_requests": sample.postcopy_requests,
        "now_s": round(sample.now_s - t0, 3),
    }


class Recorder:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.t0 = clock()
        self.lock = threading.Lock()
        self.samples: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.calls: list[dict[str, Any]] = []
        self.migrate_calls: list[dict[str, Any]] = []

    def rel(self) -> float:
        return round(self.clock() - self.t0, 3)


class RecordingGuest:
    def __init__(self, inner: MigratingGuest, rec: Recorder, *, source: bool) -> None:
        self._inner = inner
        self._rec = rec
        self._source = source
        self.name = inner.name
        self.uri = inner.uri

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._inner, attr)

    def _call(self, call: str, *args: object) -> None:
        with self._rec.lock:
            self._rec.calls.append({"at_s": self._rec.rel(), "call": call, "args": list(args)})

    def job_sample(self, *, now_s: float) -> JobSample:
        sample = self._inner.job_sample(now_s=now_s)
        if self._source:
            with self._rec.lock:
                self._rec.samples.append(to_job_stats(sample, self._rec.t0))
        return sample

    def set_max_downtime(self, downtime_ms: int) -> None:
        self._call("set_max_downtime", downtime_ms)
        self._inner.set_max_downtime(downtime_ms)

    def set_throttle_cap(self, percent: int) -> None:
        self._call("set_throttle_cap", percent)
        self._inner.set_throttle_cap(percent)

    def start_postcopy(self) -> None:
        self._call("start_postcopy")
        self._inner.start_postcopy()

    def abort_job(self) -> None:
        self._call("abort_job")
        self._inner.abort_job()

    def migrate(self, dest_uri: str, options: MigrationOptions, *, resume: bool = False) -> None:
        entry: dict[str, Any] = {"started_at_s": self._rec.rel(), "resume": resume}
        self._call("migrate", asdict(options), resume)
        try:
            self._inner.migrate(dest_uri, options, resume=resume)
        except Exception as exc:
            entry.update(
                ended_at_s=self._rec.rel(),
                error_type=type(exc).__name__,
                error=getattr(exc, "message", str(exc)),
            )
            raise
        else:
            entry.update(ended_at_s=self._rec.rel(), error_type=None, error=None)
        finally:
            with self._rec.lock:
                self._rec.migrate_calls.append(entry)

    def watch_migration(
        self, sink: Callable[[MigrationEvent], None], clock: Callable[[], float]
    ) -> Callable[[], None]:
        def recording_sink(event: MigrationEvent) -> None:
            with self._rec.lock:
                self._rec.events.append(
                    {
                        "kind": event.kind.value,
                        "now_s": round(event.now_s - self._rec.t0, 3),
                        "iteration": event.iteration,
                        "detail": event.detail,
                    }
                )
            sink(event)

        return self._inner.watch_migration(recording_sink, clock)


class RecordingHost:
    def __init__(self, inner: Hypervisor, rec: Recorder, *, source: bool) -> None:
        self._inner = inner
        self._rec = rec
        self._source = source
        self.uri = inner.uri

    def identity(self) -> HostIdentity:
        return self._inner.identity()

    def lookup(self, name: str) -> MigratingGuest:
        return RecordingGuest(self._inner.lookup(name), self._rec, source=self._source)

    def has_guest(self, name: str) -> bool:
        return self._inner.has_guest(name)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("--rate", type=int, required=True)
    parser.add_argument("--bandwidth", type=int, default=30)
    parser.add_argument("--max-downtime", type=int)
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--policy-json", default="{}")
    args = parser.parse_args()
    if not guestctl.in_client_netns():
        cmd = [sys.executable, *sys.argv]
        return subprocess.run(guestctl.client_command(cmd), check=False).returncode

    overrides = json.loads(args.policy_json)
    if not guestctl.find_guest():
        print("no lab guest running: start one with 'vmotion lab guest start'", file=sys.stderr)
        return 1
    for setting, value in (("mode", "paced"), ("rate", str(args.rate))):
        subprocess.run([*guestctl.self_command("lab", "guest", "set", setting, value)], check=True)
    request = MigrationRequest(
        domain=GUEST_NAME,
        source_uri=HOST_A.uri,
        dest_uri=HOST_B.uri,
        bandwidth_mib_s=args.bandwidth,
        max_downtime_ms=args.max_downtime,
        timeout_s=args.timeout,
    )
    policy = build_policy(
        max_downtime_ms=args.max_downtime,
        overrides={"bandwidth_mib_s": args.bandwidth, "max_duration_s": args.timeout, **overrides},
    )
    measured = MeasuredContext()  # no pre-flight, no history: nothing measured beforehand
    rec = Recorder(time.monotonic)
    outcome: dict[str, Any] = {}
    with Hypervisor.open(HOST_A.uri) as src, Hypervisor.open(HOST_B.uri) as dst:
        source: HostConnection = RecordingHost(src, rec, source=True)
        dest: HostConnection = RecordingHost(dst, rec, source=False)
        try:
            result, _sections = migrate(
                request, source=source, dest=dest, policy=policy, measured=measured
            )
            outcome = {
                "result": "completed",
                "downtime_ms": result.final.downtime_ms if result.final else None,
                "controller_state": (result.controller or {}).get("state"),
            }
        except Exception as exc:  # noqa: BLE001  recorded as the outcome
            outcome = {"result": type(exc).__name__, "error": getattr(exc, "message", str(exc))}
    trace = {
        "name": args.name,
        "recorded": "namespace lab, QEMU 10.0.2, libvirt 11.3.0, TCG, 512 MiB guest, 64 MiB WSS",
        "workload": {"rate_mib_s": args.rate, "mode": "paced"},
        "request": asdict(request),
        "policy_overrides": {
            "bandwidth_mib_s": args.bandwidth,
            "max_duration_s": args.timeout,
            "max_downtime_ms": args.max_downtime,
            **overrides,
        },
        "measured": measured.to_dict(),
        "samples": rec.samples,
        "events": rec.events,
        "calls": rec.calls,
        "migrate_calls": rec.migrate_calls,
        "outcome": outcome,
    }
    OUT.mkdir(exist_ok=True)
    path = OUT / f"{args.name}.json"
    path.write_text(json.dumps(trace, indent=1) + "\n")
    print(f"wrote {path}: {len(rec.samples)} samples, {len(rec.events)} events; {outcome}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
