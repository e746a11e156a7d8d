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
    assert len(graph) > 30 and graph["refineseg.models.registry"] >= {
        "refineseg.models.weights",
        "refineseg.models.backbones",
    }
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


#: Which stage may import which: the layer order of docs/design.md. A module of the package on the
#: left may import modules of the packages on the right (and of its own package); nothing else.
#: ``refineseg`` (the top-level ``__init__``: the public API) may import any stage but the CLI.
LOWER = ("refineseg.errors", "refineseg.version")
ALLOWED_IMPORTS = {
    "refineseg.errors": set(),
    "refineseg.version": set(),
    "refineseg.utils": {*LOWER},
    "refineseg.models": {*LOWER, "refineseg.utils"},
    "refineseg.data": {*LOWER, "refineseg.utils", "refineseg.models"},
    "refineseg.report": {*LOWER, "refineseg.utils", "refineseg.models", "refineseg.data"},
    "refineseg.inference": {*LOWER, "refineseg.utils", "refineseg.models", "refineseg.data", "refineseg.report"},
    "refineseg.evaluation": {
        *LOWER,
        "refineseg.utils",
        "refineseg.models",
        "refineseg.data",
        "refineseg.report",
        "refineseg.inference",
    },
    "refineseg.training": {
        *LOWER,
        "refineseg.utils",
        "refineseg.models",
        "refineseg.data",
        "refineseg.report",
        "refineseg.inference",
        "refineseg.evaluation",
    },
    "refineseg.serve": {
        *LOWER,
        "refineseg.utils",
        "refineseg.models",
        "refineseg.data",
        "refineseg.report",
        "refineseg.inference",
        "refineseg.evaluation",
    },
    "refineseg.cli": {
        *LOWER,
        "refineseg.utils",
        "refineseg.models",
        "refineseg.data",
        "refineseg.report",
        "refineseg.inference",
        "refineseg.evaluation",
        "refineseg.training",
        "refineseg.serve",
    },
}
ALLOWED_IMPORTS["refineseg"] = set(ALLOWED_IMPORTS) - {"refineseg.cli"}
ALLOWED_IMPORTS["refineseg.__main__"] = {"refineseg.cli"}


def stage_of(module: str) -> str:
    """The stage a dotted module belongs to: ``refineseg.models.hub`` -> ``refineseg.models``."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """``"a imports b"`` for every import that the table does not allow (own stage always allowed)."""
    bad = []
    for module, imported in sorted(graph.items()):
        stage = stage_of(module)
        allowed = ALLOWED_IMPORTS[stage] | {stage}
        bad += [f"{module} imports {other}" for other in sorted(imported) if stage_of(other) not in allowed]
    return bad


def test_every_stage_is_in_the_import_table():
    stages = {stage_of(m) for m in import_graph()}
    assert stages == set(ALLOWED_IMPORTS), stages ^ set(ALLOWED_IMPORTS)


def test_imports_follow_the_declared_layers():
    assert layer_violations(import_graph()) == []


def test_layer_check_reports_an_upward_import():
    """The checker itself: a model module importing the training stage is a violation, a lower one is not."""
    graph = {"refineseg.models.x": {"refineseg.training.trainer", "refineseg.utils.files"}}
    assert layer_violations(graph) == ["refineseg.models.x imports refineseg.training.trainer"]


def test_top_level_holds_few_modules():
    """At most 6 modules beside ``__init__``/``__main__``: everything else lives in its stage's package."""
    top = [p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")]
    assert len(top) <= 6, top


def test_every_model_name_is_a_literal_row_of_the_registry():
    source = (PACKAGE / "models" / "registry.py").read_text()
    for name in refineseg.list_models():
        assert f'"{name}": ' in source, name
