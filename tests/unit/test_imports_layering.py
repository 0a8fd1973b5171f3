"""The import graph keeps the architecture: the import-linter contracts in pyproject.toml hold
(``ingest`` never imports ``agent``; nothing below the interfaces imports ``agent.cli`` or
``agent.api``), and no two of the project's modules import each other, directly or in a loop.

Both read the source statically with grimp (import-linter's graph library): function-level imports
count, ``if TYPE_CHECKING:`` imports do not.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("agent", "ingest")


def test_the_import_linter_contracts_hold() -> None:
    # In a child process: lint-imports configures logging with disable_existing_loggers=True, which
    # would silence kb's loggers for every test after this one.
    run = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
         "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True))"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    report = run.stdout + run.stderr
    assert "Contracts:" in report and " 0 broken" in report, report
    assert run.returncode == 0, report


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted, largest first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(start: str) -> None:  # iterative: no recursion limit on a long chain
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            module, edges = work[-1]
            for target in edges:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph.find_modules_directly_imported_by(target)))))
                    break
                if target in on_stack:
                    low[module] = min(low[module], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[module])
                if low[module] == index[module]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == module:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return sorted(found, key=len, reverse=True)


def test_the_cycle_finder_finds_cycles() -> None:
    graph = grimp.ImportGraph()
    for module in ("p", "p.a", "p.b", "p.c", "p.d"):
        graph.add_module(module)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.c")
    graph.add_import(importer="p.c", imported="p.a")
    graph.add_import(importer="p.d", imported="p.a")
    assert _cycles(graph) == [["p.a", "p.b", "p.c"]]


def _describe(graph: grimp.ImportGraph, cycle: list[str]) -> str:
    members = set(cycle)
    lines = []
    for module in cycle:
        for target in sorted(graph.find_modules_directly_imported_by(module) & members):
            where = graph.get_import_details(importer=module, imported=target)
            at = ", ".join(f"line {d['line_number']}" for d in where) or "?"
            lines.append(f"  {module} -> {target} ({at})")
    return "\n".join(lines)


# Cycles that exist today and are being removed (issue 13): each is expected to fail on its own test
# (xfail, not strict: it passes once fixed; then delete its entry). Any other cycle fails at once.
KNOWN_CYCLES: dict[tuple[str, ...], str] = {}


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    old = os.getcwd()
    os.chdir(REPO)  # the checkout's packages, not an installed copy
    try:
        return grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True, cache_dir=None)
    finally:
        os.chdir(old)


def test_no_import_cycles_among_the_project_modules(graph: grimp.ImportGraph) -> None:
    cycles = [c for c in _cycles(graph) if tuple(c) not in KNOWN_CYCLES]
    assert not cycles, "import cycles:\n" + "\n\n".join(_describe(graph, c) for c in cycles)


@pytest.mark.parametrize(
    "cycle",
    [pytest.param(cycle, marks=pytest.mark.xfail(reason=reason, strict=False), id=" <-> ".join(cycle))
     for cycle, reason in KNOWN_CYCLES.items()],
)
def test_known_cycle_is_gone(graph: grimp.ImportGraph, cycle: tuple[str, ...]) -> None:
    members = set(cycle)
    assert not [c for c in _cycles(graph) if members & set(c)], _describe(graph, list(cycle))
