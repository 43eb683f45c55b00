"""The layers of cbbench import downward only: no import circles, and the lower layers never reach the upper ones.

The graph is read from the source with ``ast``. An edge A -> B is any ``import`` statement in A naming B,
at module level or inside a function (a lazy import still ties the layers, and a lazy circle is still a
circle); imports under ``if TYPE_CHECKING:`` are not counted (they never run). ``from P import x`` is an edge
to the module ``P.x`` when it is one, else to ``P``. Importing ``P.M`` is an edge to ``P.M`` only, not to the
package ``P`` that Python runs first: otherwise every package whose ``__init__`` imports its submodules
(e.g. cbbench.tasks registering its families) would count as a circle. Dynamic imports (importlib) are not seen.
"""
from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cbbench"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:``."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skipped


@lru_cache(maxsize=None)
def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        skipped = _type_checking_nodes(tree)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from .x import y / from .. import y
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            edges |= {t for t in targets if t in files and t != name}
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _within(module: str, layer: str) -> bool:
    return module == layer or module.startswith(layer + ".")


def reaches(source_layer: str, target_layer: str) -> list[list[str]]:
    """Import chains (direct or through other modules) from a module of ``source_layer`` into ``target_layer``."""
    graph = import_graph()
    chains = []
    for start in sorted(m for m in graph if _within(m, source_layer)):
        seen, frontier = {start: [start]}, [start]
        while frontier:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w not in seen:
                        seen[w] = seen[v] + [w]
                        nxt.append(w)
            frontier = nxt
        chains += [seen[m] for m in sorted(seen) if _within(m, target_layer)]
    return chains


def test_the_graph_sees_the_package():
    graph = import_graph()
    assert {"cbbench.runner", "cbbench.models.build", "cbbench.data.registry", "cbbench.tasks.base"} <= set(graph)
    assert "cbbench.tasks.base" in graph["cbbench.tasks.imagenet"]
    assert "cbbench.train" in graph["cbbench.runner"]


# TODO(issue 16, report layer, in progress elsewhere): report.leaderboard imports report.html lazily (to write the
# HTML page) while report.html imports report.leaderboard; remove this entry once the report work breaks it.
def test_no_import_circles():
    assert _cycles(import_graph()) == []


@pytest.mark.parametrize("lower, upper", [
    ("cbbench.models", "cbbench.train"),
    ("cbbench.models", "cbbench.training"),
    ("cbbench.data", "cbbench.tasks"),
    ("cbbench.data", "cbbench.report"),
    ("cbbench.corruptions", "cbbench.tasks"),
    ("cbbench.corruptions", "cbbench.report"),
    ("cbbench.report", "cbbench.runner"),
])
def test_lower_layers_do_not_import_upper_ones(lower, upper):
    assert reaches(lower, upper) == [], f"{lower} imports {upper}"
