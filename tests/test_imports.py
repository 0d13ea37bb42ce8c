"""No import cycles among circuitlab's modules, counting imports inside functions too.

A module-level cycle works or breaks depending on which module is imported first; a cycle
hidden in a function import (evaluate <-> methods, once) still means two modules hold one
concept between them. So every import statement counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import circuitlab

ROOT = Path(circuitlab.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


def import_graph() -> dict[str, set[str]]:
    """module -> the circuitlab modules it imports anywhere in its text."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                # `from pkg import mod` imports the submodule pkg.mod
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]  # fmt: skip
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_the_imports_it_must() -> None:
    graph = import_graph()
    assert "circuitlab.circuits.methods" in graph["circuitlab.circuits.evaluate"]
    assert "circuitlab.circuits.shared" in graph["circuitlab.circuits.evaluate"]  # from pkg import
    assert "circuitlab.circuits.ranking" in graph["circuitlab.circuits.sae_method"]


def test_find_cycle_reports_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_in_circuitlab() -> None:
    assert find_cycle(import_graph()) is None


def _definitions() -> dict[str, set[str]]:
    """Public top-level name -> the systems (cot, circuits, analog, core) defining it."""
    found: dict[str, set[str]] = {}
    for name, path in _modules().items():
        parts = name.split(".")
        system = parts[1] if len(parts) > 2 else "top"
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                found.setdefault(node.name, set()).add(system)
    return found


@pytest.mark.parametrize("name", ["Task", "load_model", "evaluate_model"])
def test_an_ambiguous_name_means_one_thing_across_the_package(name: str) -> None:
    systems = _definitions().get(name, set())
    assert len(systems) <= 1, f"{name} is defined in {sorted(systems)}"


# being reworked on another branch (trackers); remove once its docstring gives the reason
def test_no_source_file_over_500_lines_without_a_reason_in_its_docstring() -> None:
    unexplained = []
    for path in sorted(ROOT.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) <= 500:
            continue
        if "over 500 lines" not in (ast.get_docstring(ast.parse(text)) or "").lower():
            unexplained.append(str(path.relative_to(ROOT)))
    assert not unexplained, f"over 500 lines with no reason given: {unexplained}"
