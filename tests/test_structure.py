"""The package's structure: imports that run one way, and a registry whose rows name every model."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

import refineseg

PACKAGE = Path(refineseg.__file__).resolve().parent


def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the package (``pkg/__init__.py`` -> ``pkg``)."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules that module ``name`` imports anywhere in its file, functions included.

    ``from .x import y`` counts as importing ``x.y`` when that is a module, else ``x``.
    """
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in modules:  # a name inside a module -> that module
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                found.add(candidate)
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    modules = module_files(package)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 30 and graph["refineseg.models.registry"] >= {"refineseg.models.weights", "refineseg.models.backbones"}
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as e:
        pytest.fail(f"import cycle: {' -> '.join(e.args[1])}")


def test_cycle_detection_finds_a_cycle(tmp_path):
    """The checker itself: a two-module cycle through a function-level import is reported."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import g\n")
    (package / "b.py").write_text("def g():\n    from . import a\n")
    graph = import_graph(package)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg", "pkg.a"}}
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter(graph).prepare()


def test_weights_needs_only_backbones_errors_and_files():
    assert import_graph()["refineseg.models.weights"] <= {"refineseg.models.backbones", "refineseg.errors", "refineseg.utils.files"}
    assert import_graph()["refineseg.utils.files"] <= {"refineseg.errors"}


def test_every_model_name_is_a_literal_row_of_the_registry():
    source = (PACKAGE / "models" / "registry.py").read_text()
    for name in refineseg.list_models():
        assert f'"{name}": ' in source, name
