"""The orchestrator's layers import one way: cli -> execute -> report -> plan (and layout).

Most of this code imports inside functions (ray, torch and the heavier layers only where they
are used), so the imports are read from the source with ast.walk over whole modules, not
from what importing a package loads: an import in a function body counts the same as one at
the top. The report check also follows the project's own modules transitively, and keeps a
fresh-interpreter check for what third-party packages pull in at import time. Within a
package, no two modules may import each other, directly or through others (a circle means
one of them holds what both need, which belongs in a module of its own).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAYERS = ("plan", "report", "execute", "cli")   # each may import only those before it
PROJECT = ("orchestrator", "trainers", "norms")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SOURCES = {_module_name(f): f for p in PROJECT for f in (REPO / p).rglob("*.py")}


def imported_names(module: str) -> set[str]:
    """Every name `module` imports anywhere in its source (`from a import b` gives a and a.b;
    relative imports resolved)."""
    path = SOURCES[module]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")
                if path.name != "__init__.py":
                    package = package[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


def reached_from(starts: list[str]) -> dict[str, str | None]:
    """The modules `starts` import, transitively through the project's own modules (a
    package's __init__ counts when a module in it is imported), each with who imported it."""
    parent: dict[str, str | None] = {}
    todo = [(m, None) for m in starts]
    while todo:
        name, by = todo.pop()
        if name in parent:
            continue
        parent[name] = by
        if name not in SOURCES:
            continue
        for imported in imported_names(name):
            parts = imported.split(".")
            for k in range(1, len(parts) + 1):
                prefix = ".".join(parts[:k])
                if k == 1 or prefix in SOURCES:   # a third-party top-level name, or ours
                    todo.append((prefix, name))
    return parent


def chain(parent: dict[str, str | None], name: str) -> str:
    links = [name]
    while parent[links[-1]] is not None:
        links.append(parent[links[-1]])
    return " <- ".join(links)


def layer_modules(layer: str) -> list[str]:
    return sorted(m for m in SOURCES if m == f"orchestrator.{layer}"
                  or m.startswith(f"orchestrator.{layer}."))


def test_imports_inside_functions_are_seen():
    """The parser's own check: execute/runner.py imports ray only inside functions."""
    source = ast.parse(SOURCES["orchestrator.execute.runner"].read_text())
    top_level = {a.name for n in source.body if isinstance(n, ast.Import) for a in n.names}
    assert "ray" not in top_level
    assert "ray" in imported_names("orchestrator.execute.runner")


@pytest.mark.parametrize("layer", LAYERS)
def test_a_layer_imports_no_layer_above_it(layer):
    above = LAYERS[LAYERS.index(layer) + 1:]
    for module in layer_modules(layer):
        for name in imported_names(module):
            for other in above:
                assert not (name == f"orchestrator.{other}"
                            or name.startswith(f"orchestrator.{other}.")), (module, name)


def import_cycle(modules: list[str], imports=imported_names) -> list[str] | None:
    """A chain of imports among `modules` that comes back to where it started, or None."""
    inside = set(modules)
    edges = {m: sorted(n for n in imports(m) if n in inside and n != m) for m in modules}
    state: dict[str, str] = {}   # "open" while its imports are walked, then "done"

    def walk(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for other in edges[module]:
            if state.get(other) == "open":
                return path[path.index(other):] + [module, other]
            if other not in state and (found := walk(other, path + [module])):
                return found
        state[module] = "done"
        return None

    for start in modules:
        if start not in state and (found := walk(start, [])):
            return found
    return None


def test_the_cycle_check_finds_a_circle():
    """Its own check, on the circle between plan/experiments.py and plan/overrides.py that
    the YAML loader's module of its own untied: put back, it is found."""
    def as_before(module: str) -> set[str]:
        back = module == "orchestrator.plan.overrides"
        return imported_names(module) | ({"orchestrator.plan.experiments"} if back else set())

    cycle = import_cycle(layer_modules("plan"), as_before)
    assert cycle is not None and cycle[0] == cycle[-1]
    assert {"orchestrator.plan.experiments", "orchestrator.plan.overrides"} <= set(cycle)


PACKAGES = (*(f"orchestrator.{layer}" for layer in LAYERS), "trainers", "norms")


@pytest.mark.parametrize("package", PACKAGES)
def test_no_two_modules_of_a_package_import_each_other(package):
    modules = sorted(m for m in SOURCES if m.startswith(f"{package}."))
    assert modules
    cycle = import_cycle(modules)
    assert cycle is None, " -> ".join(cycle)


def test_reports_need_neither_ray_nor_torch():
    parent = reached_from(layer_modules("report"))
    for heavy in ("ray", "torch"):
        assert heavy not in parent, chain(parent, heavy)
    execute = [m for m in parent if m.startswith("orchestrator.execute")]
    assert not execute, chain(parent, execute[0])


def test_importing_the_reports_loads_neither_ray_nor_torch():
    """What third-party packages import at import time, which the source walk does not follow:
    every report module imported in a fresh interpreter."""
    code = (
        "import importlib, json, pkgutil, sys\n"
        "pkg = importlib.import_module('orchestrator.report')\n"
        "for info in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + '.'):\n"
        "    importlib.import_module(info.name)\n"
        "print(json.dumps(sorted(sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert "orchestrator.report.table" in loaded and "orchestrator.report.plot" in loaded
    for heavy in ("ray", "torch"):
        assert heavy not in loaded
