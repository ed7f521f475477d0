"""The package's shape is checked, not only drawn: layers, purity, no import cycles."""

from __future__ import annotations

import ast
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


MAX_FUNCTION_LINES = 60
"""Issue 11: no product function over 60 lines, counted from ``def`` to its last line."""
PRODUCT = ROOT / "src" / "libvirt_vmotion"
NOT_PRODUCT = ("lab", "bench")


def function_lengths(source: str) -> list[tuple[str, int, int]]:
    """(qualified name, first line, length in lines) of every function in ``source``."""
    found: list[tuple[str, int, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                end = child.end_lineno or child.lineno
                found.append((name, child.lineno, end - child.lineno + 1))
                name += "."
            elif isinstance(child, ast.ClassDef):
                name = f"{prefix}{child.name}."
            visit(child, name)

    visit(ast.parse(source), "")
    return found


def test_the_length_count_runs_from_def_to_the_last_line_nested_functions_included() -> None:
    source = (
        "class C:\n"
        "    def m(self):\n"
        "        def inner():\n"
        "            return 1\n"
        "\n"
        "        return inner\n"
    )
    assert function_lengths(source) == [("C.m", 2, 5), ("C.m.inner", 3, 2)]


def test_no_product_function_is_over_60_lines() -> None:
    too_long = [
        f"{path.relative_to(PRODUCT)}:{line} {name} ({length} lines)"
        for path in sorted(PRODUCT.rglob("*.py"))
        if path.relative_to(PRODUCT).parts[0] not in NOT_PRODUCT
        for name, line, length in function_lengths(path.read_text())
        if length > MAX_FUNCTION_LINES
    ]
    assert too_long == [], "split by what each part decides:\n" + "\n".join(too_long)
