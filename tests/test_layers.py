"""Imports run down the layers of the data flow, never back up (DESIGN.md, "Layout").

A module may import its own package and the packages of lower layers, with no exemption: what
wires many layers together (a simulation, a deployment's server or client) is built by the
``app`` layer, above everything it wires.
"""

from __future__ import annotations

import ast
from pathlib import Path

import fedloom

# Lowest first; packages on one line are the same layer and do not import each other.
LAYERS: list[set[str]] = [
    {"errors", "fedloom"},
    {"codecs"},
    {"config", "plugins"},
    {"core"},
    {"transforms", "metrics", "models", "optim", "aggregators", "data", "tracking", "secagg"},
    {"transport", "dashboard"},
    {"client"},
    {"privacy"},
    {"engines"},
    {"strategies", "attacks"},
    {"server"},
    {"app"},
    {"simulation"},
    {"recommendation"},
    {"baselines"},
    {"api"},
    {"cli"},
]
ROOT = Path(fedloom.__file__).parent


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "fedloom"


def _layer(package: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if package in layer)


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fedloom"):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("fedloom"))
    return out


def test_no_module_imports_a_higher_layer() -> None:
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        if "proto" in path.parts:
            continue
        module = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        mine = _package(module)
        for target in _imports(path):
            if mine == "fedloom":
                continue  # fedloom/__init__ re-exports the API
            theirs = _package(target)
            if theirs != mine and _layer(theirs) >= _layer(mine):
                upward.append(f"{module} ({mine}) imports {target} ({theirs})")
    assert upward == []


def test_every_package_has_a_layer() -> None:
    packages = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in ROOT.glob("*.py") if p.stem != "__init__"}
    known = set().union(*LAYERS)
    assert (packages | modules) - known == set()
