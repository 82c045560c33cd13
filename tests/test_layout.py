"""The package's module layout: no import cycle among onnx_prune's modules.

A cycle makes a module work only when another one happens to be imported first (or forces lazy
imports inside functions to hide it); one place per idea means the shared piece moves into a
module both sides import. Imports are read with ``ast``, so imports inside functions and under
``TYPE_CHECKING`` count too. Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first;
that implicit step is not an edge here, only the modules an import statement names.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "onnx_prune"
PACKAGE = PACKAGE_DIR.name

# (importer, imported) -> why this edge may close a cycle. Keep it empty: fix a cycle instead.
ALLOWED_EDGES: dict[tuple[str, str], str] = {}


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its __init__)."""
    modules = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, package)
            # ``from pkg import sub`` imports the module pkg.sub; ``from pkg import name`` imports pkg
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                         for alias in node.names)
    return {target for target in found if target in modules and target != name}


def _absolute(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    base = parts[: len(parts) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def without_allowed(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    return {module: {t for t in targets if (module, t) not in ALLOWED_EDGES} for module, targets in graph.items()}


def test_the_graph_sees_the_package():
    graph = import_graph()
    assert f"{PACKAGE}.api" in graph and f"{PACKAGE}.sparse_gemm.formats.csr" in graph
    # relative, nested and function-level imports are all read
    assert f"{PACKAGE}.sparse_gemm.contract" in graph[f"{PACKAGE}.sparse_gemm.formats.csr"]
    assert f"{PACKAGE}.measure.bench" in graph[f"{PACKAGE}.cli"]  # imported inside a function


def test_find_cycle_reports_the_path():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"a"}, "a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]


def test_no_import_cycle():
    graph = import_graph()
    stale = [f"{a} -> {b}" for a, b in ALLOWED_EDGES if b not in graph.get(a, ())]
    assert not stale, f"ALLOWED_EDGES lists imports that are gone: {', '.join(stale)}"
    cycle = find_cycle(without_allowed(graph))
    assert cycle is None, ("import cycle among the package's modules: " + " -> ".join(cycle)
                           + " (move the shared piece into a module both import, or list an edge in "
                           "ALLOWED_EDGES with the reason)")
