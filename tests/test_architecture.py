"""Imports point one way: CLI -> tasks -> search/evaluators/distill -> spaces/strategies/proxies/models/engine ->
data/config/utils (docs/architecture.md). The package's source is parsed (not imported), so a violating import
fails here even when it sits inside a function or under ``TYPE_CHECKING``; each module is its own test case."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import kdnas

PACKAGE = Path(kdnas.__file__).parent
ENTRY = ("kdnas.tasks", "kdnas.api", "kdnas.cli", "kdnas.callbacks")  # what drives the library, never under it
LIBRARY = ("kdnas.distill", "kdnas.spaces", "kdnas.strategies", "kdnas.evaluators", "kdnas.execution", "kdnas.proxies",
           "kdnas.models", "kdnas.engine", "kdnas.data", "kdnas.search", "kdnas.teachers", "kdnas.report", "kdnas.runs",
           "kdnas.loggers", "kdnas.progress", "kdnas.correlation", "kdnas.benchmarks")
# The CLI's per-run context: library code gets a kdnas.engine.workspace.Workspace and typed settings instead.
TASK_CONTEXT = ("kdnas.context",)
# The search loop, its evaluators and where they run sit above the pieces they drive.
LOOP = ("kdnas.search", "kdnas.evaluators", "kdnas.execution")
BELOW_LOOP = ("kdnas.distill", "kdnas.spaces", "kdnas.strategies", "kdnas.proxies", "kdnas.models", "kdnas.engine",
              "kdnas.data")
# Imported by everything, import only each other (kdnas.registry: the one Registry every feature package fills).
FOUNDATION = ("kdnas.config", "kdnas.errors", "kdnas.registry", "kdnas.utils")


def module_name(path: Path) -> str:
    parts = ["kdnas", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "conf" not in p.relative_to(PACKAGE).parts}


def imported(name: str, source: str, is_package: bool = False) -> set[str]:
    """Every kdnas module that module ``name`` (its ``source``) imports, wherever the import statement sits
    (``from kdnas import api`` counts as ``kdnas.api``; relative imports are resolved)."""
    package = name if is_package else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES)  # from kdnas import api
    return {m for m in out if m == "kdnas" or m.startswith("kdnas.")}


def within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def violations(name: str, source: str, is_package: bool = False) -> list[str]:
    found = imported(name, source, is_package)
    bad = []
    if within(name, LIBRARY):
        bad += [f"{m} (library code never imports the entry points)" for m in found if within(m, ENTRY)]
        bad += [f"{m} (library code takes a Workspace and typed settings, not the tasks' RunContext)"
                for m in found if within(m, TASK_CONTEXT)]
    if within(name, BELOW_LOOP):
        bad += [f"{m} (the search loop and evaluators are above this layer)" for m in found if within(m, LOOP)]
    if within(name, FOUNDATION):
        bad += [f"{m} (the foundation imports only itself)" for m in found
                if m != "kdnas" and not within(m, FOUNDATION) and m.rpartition(".")[0] not in FOUNDATION]
    return sorted(bad)


def test_the_walk_finds_the_package() -> None:
    """The per-module test is not vacuous: every layer has modules, and each kind of import statement is caught."""
    for layer in (*LIBRARY, *FOUNDATION, "kdnas.tasks", "kdnas.search"):
        assert any(within(m, (layer,)) for m in MODULES), layer
    assert violations("kdnas.distill.example", "from kdnas.tasks.distill import run\n")
    assert violations("kdnas.spaces.example", "def f():\n    from ..api import run\n")
    assert violations("kdnas.strategies.cream", "from ... import search\n", is_package=True)
    assert violations("kdnas.data.example", "import kdnas.cli\n")
    assert violations("kdnas.config", "from kdnas.distill.terms import x\n")
    assert not violations("kdnas.distill.example", "from kdnas.models import create_model\n")
    assert not violations("kdnas.config", "from kdnas.errors import ConfigError\n")
    assert violations("kdnas.registry", "from kdnas.spaces import SPACES\n")
    assert violations("kdnas.teachers.load", "from kdnas.context import RunContext\n")
    assert violations("kdnas.search", "if TYPE_CHECKING:\n    from kdnas.context import RunContext\n")
    assert not violations("kdnas.tasks.search", "from kdnas.context import RunContext\n")


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down(name: str) -> None:
    path = MODULES[name]
    assert violations(name, path.read_text(), path.name == "__init__.py") == [], f"{name} imports upward"
