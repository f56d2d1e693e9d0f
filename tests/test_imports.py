"""The package's import structure: layers point one way, and `import vkq` stays lean.

The static graph holds every `import` statement of every module under vkq/ (function-level
ones included, `if TYPE_CHECKING:` blocks excluded, since they never run), resolved to vkq
modules: `from vkq.ops import common` is an edge to vkq.ops.common, `from vkq.ops.common
import ceil_div` one to vkq.ops.common.
"""
from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "vkq"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """vkq modules imported anywhere in `tree` (outside TYPE_CHECKING blocks)."""
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                pkg = module.split(".")
                pkg = pkg if is_package else pkg[:-1]
                pkg = pkg[:len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.add(sub if sub in MODULES else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in out if m in MODULES and m != module}


def import_graph() -> dict[str, set[str]]:
    return {name: _imports(ast.parse(path.read_text()), name, path.name == "__init__.py")
            for name, path in MODULES.items()}


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        for dep in graph[m]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[set[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in graph:
        if v not in index:
            strongconnect(v)
    return out


def test_the_graph_sees_known_edges():
    # guards the resolver itself: a graph without these edges would pass every check below
    g = import_graph()
    assert "vkq.ops.common" in g["vkq.ops.rms_norm"]          # from vkq.ops.common import ...
    assert "vkq.layouts" in g["vkq.ops.q4gsw_linear"]         # from vkq import layouts
    assert "vkq.ops.q4gsw_linear" in g["vkq.bench.suites.q4gsw_linear"]
    assert "vkq.bench" in reachable(g, "vkq.bench.runner")


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_no_import_cycle_outside_the_runtime():
    bad = [sorted(c) for c in cycles(import_graph())
           if not all(m.startswith("vkq.runtime") for m in c)]
    assert not bad, f"import cycles: {bad}"


def test_ops_never_import_the_bench():
    g = import_graph()
    for name in MODULES:
        if name.startswith("vkq.ops"):
            bench = sorted(m for m in reachable(g, name) if m.startswith("vkq.bench"))
            assert not bench, f"{name} imports {bench}"


def test_import_vkq_does_not_load_the_bench():
    code = ("import sys, vkq; loaded = sorted(m for m in sys.modules if m.startswith('vkq.bench'));"
            " assert not loaded, loaded")
    r = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_imports(name):
    importlib.import_module(name)
