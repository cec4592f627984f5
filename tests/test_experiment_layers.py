"""The experiment protocol's layers (docs/architecture.md): no module imports one above it."""

from __future__ import annotations

import ast
from pathlib import Path

import fedforget.experiment

FOLDER = Path(fedforget.experiment.__file__).parent
LAYERS = [
    {"validity", "spec"},
    {"records"},
    {"references"},
    {"phases"},
    {"evaluation"},
    {"centralised"},
    {"protocol"},
    {"results", "tables"},
    {"runner", "commands"},
    {"tune_report"},
    {"report"},
    {"tune"},
]
"""Layer by layer from the bottom, as the architecture page lists them."""


def imported(path: Path) -> set[str]:
    """The ``fedforget.experiment`` modules a file imports (at any depth of its body)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("fedforget.experiment."):
                names.add(node.module.split(".")[2])
            elif node.module == "fedforget.experiment":
                names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            names |= {
                a.name.split(".")[2]
                for a in node.names
                if a.name.startswith("fedforget.experiment.")
            }
    return names


def test_every_module_has_a_layer():
    modules = {p.stem for p in FOLDER.glob("*.py")} - {"__init__"}
    layered = set().union(*LAYERS)
    # a module added to experiment/ must be placed in a layer here
    assert modules <= layered, sorted(modules - layered)


def test_no_module_imports_a_module_of_its_own_layer_or_above():
    rank = {name: index for index, layer in enumerate(LAYERS) for name in layer}
    upward = [
        f"{path.stem} imports {name}"
        for path in FOLDER.glob("*.py")
        if path.stem in rank
        for name in imported(path)
        if name in rank and rank[name] >= rank[path.stem] and name != path.stem
    ]
    assert not upward, upward


def test_the_compatibility_modules_only_re_export():
    """``fedforget.comparison`` and ``fedforget.results`` define nothing but one adapter."""
    root = FOLDER.parent
    for name, allowed in (("comparison.py", {"centralised_cell"}), ("results.py", set())):
        tree = ast.parse((root / name).read_text())
        defined = {
            node.name
            for node in tree.body
            if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef)
        }
        assert defined == allowed, (name, defined)
