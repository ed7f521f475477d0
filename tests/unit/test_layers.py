"""The package's shape is checked, not only drawn: layers, purity, no import cycles."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]


def test_import_linter_contracts_are_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _cycle_from(graph: grimp.ImportGraph, start: str) -> list[str] | None:
    """A shortest import path from ``start`` back to itself, or None."""
    for imported in graph.find_modules_directly_imported_by(start):
        if not imported.startswith("libvirt_vmotion"):
            continue
        path = graph.find_shortest_chain(importer=imported, imported=start)
        if path is not None:
            return [start, *path]
    return None


def test_no_module_imports_itself_back() -> None:
    graph = grimp.build_graph("libvirt_vmotion")
    cycles = [c for m in sorted(graph.modules) if (c := _cycle_from(graph, m))]
    assert cycles == [], "\n".join(" -> ".join(c) for c in cycles)
