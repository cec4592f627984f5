"""The package's import graph: no cycles, counting the imports inside functions too.

An import inside a function hides a cycle from Python (the module is complete
when the function runs) but not from the design: config -> methods -> state ->
config was such a cycle. The graph is read statically from the source (``ast``):
each ``import`` / ``from ... import`` of a fedforget module, wherever it
stands, except under ``if TYPE_CHECKING:`` (annotations only, never run).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fedforget"


def module_files() -> dict[str, tuple[Path, bool]]:
    """Each fedforget module's dotted name, file, and whether it is a package."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_nodes(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement in ``body``, at any depth, outside ``if TYPE_CHECKING:``."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        if isinstance(node, ast.If) and type_checking(node):
            yield from import_nodes(node.orelse)
            continue
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            children = getattr(node, field, None)
            if isinstance(children, list):
                yield from import_nodes(
                    [c for c in children if isinstance(c, ast.stmt | ast.excepthandler)]  # type: ignore[misc]
                )


def imported(
    name: str, is_package: bool, node: ast.Import | ast.ImportFrom, modules: set[str]
) -> list[str]:
    """The modules one import statement of module ``name`` names (``from a import b``: a, a.b)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from the package of ``name``
        package = name.split(".") if is_package else name.split(".")[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join([*package, base] if base else package)
    submodules = [f"{base}.{alias.name}" for alias in node.names]
    return [base, *(m for m in submodules if m in modules)]


def import_graph() -> nx.DiGraph:
    modules = module_files()
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, (path, is_package) in modules.items():
        for node in import_nodes(ast.parse(path.read_text()).body):
            for target in imported(name, is_package, node, set(modules)):
                if target in modules and target != name:
                    graph.add_edge(name, target)
    return graph


def test_the_graph_is_read_from_the_source():
    """The reader sees what is there: top-level, in-function and TYPE_CHECKING-only imports."""
    graph = import_graph()
    assert graph.number_of_nodes() > 100
    assert graph.has_edge("fedforget.config", "fedforget.constants")  # top level
    assert graph.has_edge("fedforget.config", "fedforget.methods")  # inside a function
    assert graph.has_edge("fedforget.metrics.registry", "fedforget.metrics.accuracy")
    assert not graph.has_edge("fedforget.api.app", "fedforget.federated.records")  # annotations


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    cycles = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


def test_the_constants_import_nothing_and_the_api_no_federation():
    """The configuration's vocabulary is a leaf; the API serves the federation, it imports none
    of it (the federation starts the API: the other direction)."""
    graph = import_graph()
    constants = ast.parse((PACKAGE / "constants.py").read_text())
    assert not list(import_nodes(constants.body))
    api = [m for m in graph if m.startswith("fedforget.api")]
    assert not [
        (m, t) for m in api for t in graph.successors(m) if t.startswith("fedforget.federated")
    ]
