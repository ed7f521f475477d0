"""``vmotion bench --evacuate N``: time to empty a host, ours against a virsh loop.

The same run, same guests, same per-migration bandwidth:

- **ours**: ``vmotion evacuate --from hosta --to hostb --to hostc --parallel 2
  --bandwidth-total 2xBW --tls off`` (two moves at once share twice one link's cap,
  as two links would give two sequential virsh migrations; unencrypted like the
  loop: ``bench --tools ours-tls,ours`` measures what TLS costs). ``--parallel 2``
  is the default; the same command with ``--parallel N`` (every guest at once,
  still sharing 2xBW) is measured too, on fresh guests;
- **virsh loop**: ``virsh migrate --live --p2p --persistent --undefinesource
  --bandwidth BW`` for each guest in turn, alternating hostb and hostc (what an
  operator scripts today): the sum of the ``virsh migrate`` commands' times (the
  job statistics read after each are not counted);
- **physical limit**: the guests' RAM holding data (from the virsh runs' completed
  job statistics) / (2 x BW): no pre-copy evacuation over two links at BW each can
  move them faster.

I/O: the three-host lab, guests, subprocesses. Writes ``evacuation.json`` and a
short ``evacuation.md`` to the results folder.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from libvirt_vmotion.bench.matrix import parse_rawstats, ram_touched_bytes
from libvirt_vmotion.lab import guestctl, topology
from libvirt_vmotion.lab.constants import HOST_A, HOST_B, HOST_C
from libvirt_vmotion.lab.image import ensure_guest_image
from libvirt_vmotion.model import MIB

GUEST_MIB: Final = 128
WSS_MIB: Final = 16
RATE_MIB_S: Final = 2
DESTS: Final = (HOST_B, HOST_C)


@dataclass(frozen=True, slots=True)
class EvacuationRun:
    """One repetition: both tools on the same guests."""

    guests: int
    bandwidth_mib_s: int
    ours_s: float | None
    ours_pauses_ms: tuple[int | None, ...]
    ours_order: tuple[str, ...]
    virsh_loop_s: float | None
    ram_touched_bytes: int | None
    error: str = ""
    ours_all_at_once_s: float | None = None

    @property
    def physical_limit_s(self) -> float | None:
        """RAM holding data over two links at the cap each."""
        if not self.ram_touched_bytes:
            return None
        return self.ram_touched_bytes / MIB / (2 * self.bandwidth_mib_s)


def _names(count: int) -> list[str]:
    return [f"bench-evac-{i}" for i in range(1, count + 1)]


def _start_all(names: Sequence[str]) -> None:
    image = ensure_guest_image()
    for name in names:
        guestctl.start_guest(
            HOST_A, image, memory_mib=GUEST_MIB, wss_mib=WSS_MIB, rate_mib_s=RATE_MIB_S, name=name
        )
    for name in names:
        guestctl.wait_for_workload(name=name)


def _remove_all(names: Sequence[str]) -> None:
    for name in names:
        guestctl.remove_guest(name)


def _ours(
    names: Sequence[str], bandwidth_mib_s: int, *, parallel: int = 2
) -> tuple[float | None, dict[str, object]]:
    argv = [
        "evacuate", "--from", HOST_A.uri, *(a for h in DESTS for a in ("--to", h.uri)),
        *(a for n in names for a in ("--domain", n)), "--parallel", str(parallel),
        "--bandwidth-total", str(2 * bandwidth_mib_s), "--tls", "off", "--json",
    ]  # fmt: skip
    t0 = time.monotonic()
    done = subprocess.run(
        guestctl.client_command(guestctl.self_command(*argv)),
        capture_output=True, text=True, check=False, timeout=1800,
    )  # fmt: skip
    wall = time.monotonic() - t0
    lines = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
    report = lines[-1] if lines else {}
    return (wall if done.returncode == 0 else None), report


def _virsh_loop(names: Sequence[str], bandwidth_mib_s: int) -> tuple[float | None, int | None]:
    spent = 0.0
    touched = 0
    for i, name in enumerate(names):
        dest = DESTS[i % len(DESTS)]
        argv = [
            "virsh", "-q", "-c", HOST_A.uri, "migrate", "--live", "--p2p", "--persistent",
            "--undefinesource", "--bandwidth", str(bandwidth_mib_s), name, dest.uri,
        ]  # fmt: skip
        t0 = time.monotonic()
        done = subprocess.run(
            guestctl.client_command(argv), capture_output=True, text=True, check=False, timeout=900
        )
        spent += time.monotonic() - t0
        if done.returncode != 0:
            return None, None
        stats = subprocess.run(
            guestctl.client_command(["virsh", "-q", "-c", dest.uri, "domjobinfo", name,
                                     "--completed", "--keep-completed", "--rawstats"]),
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        touched += ram_touched_bytes(parse_rawstats(stats.stdout)) or 0
    return spent, touched or None


def run_once(count: int, bandwidth_mib_s: int) -> EvacuationRun:
    """One repetition: ours, then (on fresh guests) the virsh loop."""
    names = _names(count)
    _remove_all(names)
    _start_all(names)
    ours_s, report = _ours(names, bandwidth_mib_s)
    guests = report.get("guests", [])
    entries = guests if isinstance(guests, list) else []
    order = tuple(g["guest"] for g in sorted(entries, key=lambda g: g.get("started_s") or 0))
    pauses = tuple(g.get("downtime_ms") for g in entries)
    _remove_all(names)
    _start_all(names)
    all_at_once_s, _ = _ours(names, bandwidth_mib_s, parallel=count)
    _remove_all(names)
    _start_all(names)
    virsh_s, touched = _virsh_loop(names, bandwidth_mib_s)
    _remove_all(names)
    error = "" if ours_s is not None else f"evacuate failed: {json.dumps(report)[-300:]}"
    return EvacuationRun(
        count, bandwidth_mib_s, ours_s, pauses, order, virsh_s, touched, error, all_at_once_s
    )


def summary(runs: Sequence[EvacuationRun]) -> dict[str, object]:
    """Medians and the two targets (ours <= 0.6x the virsh loop, <= 1.3x the physical limit)."""

    def median(values: Sequence[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return round(statistics.median(known), 2) if known else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a and b else None

    def met(value: float | None, bound: float) -> bool | None:
        return None if value is None else value <= bound

    ours = median([r.ours_s for r in runs])
    at_once = median([r.ours_all_at_once_s for r in runs])
    loop = median([r.virsh_loop_s for r in runs])
    limit = median([r.physical_limit_s for r in runs])
    vs_loop, vs_limit = ratio(ours, loop), ratio(ours, limit)
    at_once_vs_loop, at_once_vs_limit = ratio(at_once, loop), ratio(at_once, limit)
    return {
        "time_to_empty_s": {
            "ours": ours, "ours_all_at_once": at_once, "virsh_loop": loop, "physical_limit": limit,
        },
        "ours_vs_virsh_loop": vs_loop,
        "ours_vs_physical_limit": vs_limit,
        "ours_all_at_once_vs_virsh_loop": at_once_vs_loop,
        "ours_all_at_once_vs_physical_limit": at_once_vs_limit,
        "targets": {
            "ours <= 0.6x virsh loop": met(vs_loop, 0.6),
            "ours <= 1.3x physical limit": met(vs_limit, 1.3),
            "ours, every guest at once, <= 0.6x virsh loop": met(at_once_vs_loop, 0.6),
            "ours, every guest at once, <= 1.3x physical limit": met(at_once_vs_limit, 1.3),
        },
    }  # fmt: skip


def render(runs: Sequence[EvacuationRun], summ: dict[str, object]) -> str:
    """``evacuation.md``: one line per repetition and the targets."""
    lines = [
        "# Evacuation bench: time to empty hosta",
        "",
        (
            "| rep | guests | BW per link | ours s (--parallel 2) | ours s (all at once) "
            "| virsh loop s | physical limit s | order | pauses ms |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(runs, 1):
        limit = r.physical_limit_s
        lines.append(
            f"| {i} | {r.guests} | {r.bandwidth_mib_s} MiB/s | {r.ours_s and round(r.ours_s, 1)} "
            f"| {r.ours_all_at_once_s and round(r.ours_all_at_once_s, 1)} "
            f"| {r.virsh_loop_s and round(r.virsh_loop_s, 1)} | {limit and round(limit, 1)} "
            f"| {', '.join(r.ours_order)} | {', '.join(str(p) for p in r.ours_pauses_ms)} |"
        )
    lines += ["", f"Summary: `{json.dumps(summ)}`", ""]
    return "\n".join(lines)


def cmd_bench_evacuate(*, count: int, bandwidth_mib_s: int, reps: int, out_dir: Path) -> int:
    """Run the evacuation bench; write its results; 0 when every run completed."""
    topology.up(hosts=3)
    runs = [run_once(count, bandwidth_mib_s) for _ in range(reps)]
    summ = summary(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"runs": [asdict(r) | {"physical_limit_s": r.physical_limit_s} for r in runs],
           "summary": summ}  # fmt: skip
    (out_dir / "evacuation.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    (out_dir / "evacuation.md").write_text(render(runs, summ))
    print(render(runs, summ))  # noqa: T201  the command's output
    return 0 if all(r.ours_s is not None and r.virsh_loop_s is not None for r in runs) else 1
