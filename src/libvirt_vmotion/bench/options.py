"""The ``vmotion bench`` command line: options and their translation to parameters.

Pure: argparse wiring and validation only (no I/O); bad input raises
``UsageError`` before anything runs.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from libvirt_vmotion.argtypes import NumberT, parse_number
from libvirt_vmotion.bench.matrix import (
    FULL,
    QUICK,
    BenchParams,
    parse_float_list,
    parse_int_list,
    parse_tools,
)
from libvirt_vmotion.errors import UsageError


def add_bench_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """Register ``bench`` on the CLI's subcommands."""
    bench = sub.add_parser(
        "bench",
        help="benchmark our migrations against plain virsh migrate in the lab (needs root)",
        description="Run a matrix of live migrations in the namespace lab (the lab of "
        "$VMOTION_LAB_ID, built if needed): guest RAM x workload dirty rate (a fraction of "
        "the bandwidth cap) x repetitions x tools, each run with the same bandwidth cap and "
        "time budget. Writes results.json, summary.md and PNG plots to a results folder.",
        epilog=f"Full matrix (default): {' '.join(FULL.to_argv())}. "
        f"--quick: {' '.join(QUICK.to_argv())}. Options given with --quick override it.",
    )
    bench.add_argument("--quick", action="store_true", help="a few-minute smoke preset")
    bench.add_argument("--reps", metavar="N", help="repetitions per cell and tool")
    bench.add_argument("--ram-mib", metavar="LIST", help="guest RAM sizes, e.g. 512,1024")
    bench.add_argument(
        "--fractions", metavar="LIST", help="dirty rate / bandwidth cap, e.g. 0,0.5,1.5"
    )
    bench.add_argument("--bandwidth", metavar="MIB_S", help="bandwidth cap for every tool")
    bench.add_argument("--budget-s", metavar="S", help="time budget per migration")
    bench.add_argument(
        "--tools",
        metavar="LIST",
        help="ours,virsh,virsh-auto-converge,virsh-postcopy (the default), and ours-tls, "
        "virsh-tls: encrypted, compared with their unencrypted twins (ours runs --tls off)",
    )
    bench.add_argument(
        "--out", metavar="DIR", help="results folder (default bench-results/<timestamp>)"
    )
    bench.add_argument(
        "--evacuate", metavar="N", type=int,
        help="instead of the matrix: time to empty hosta of N small guests (128 MiB) onto "
        "hostb and hostc, `vmotion evacuate` at --parallel 2 and at N against a sequential `virsh "
        "migrate` loop and the physical limit, same run (--bandwidth per link, default 50; "
        "--reps, default 1)",
    )  # fmt: skip
    bench.add_argument(
        "--render",
        metavar="DIR",
        type=Path,
        help="run nothing: rewrite summary.md, the plots and the summary in results.json of "
        "an existing results folder (after an upgrade that changed them)",
    )


def _number(text: str, kind: type[NumberT], *, option: str, example: str) -> NumberT:
    try:
        return parse_number(text, kind)
    except ValueError as exc:
        msg = f"{option}: {exc}."
        raise UsageError(msg, hint=f"e.g. {option} {example}") from None


def params_from_args(args: argparse.Namespace) -> BenchParams:
    """The preset (``--quick`` or the full matrix) with the given options applied.

    Raises:
        UsageError: an option does not parse or the result is invalid.

    """
    base = QUICK if args.quick else FULL
    changes: dict[str, object] = {}
    if args.reps is not None:
        changes["reps"] = _number(args.reps, int, option="--reps", example="3")
    if args.ram_mib is not None:
        changes["ram_mib"] = parse_int_list(args.ram_mib, option="--ram-mib")
    if args.fractions is not None:
        changes["fractions"] = parse_float_list(args.fractions, option="--fractions")
    if args.bandwidth is not None:
        changes["bandwidth_mib_s"] = _number(
            args.bandwidth, int, option="--bandwidth", example="30"
        )
    if args.budget_s is not None:
        changes["budget_s"] = _number(args.budget_s, float, option="--budget-s", example="60")
    if args.tools is not None:
        changes["tools"] = parse_tools(args.tools)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]  # values typed above
