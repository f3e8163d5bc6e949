"""The layer rule of ``docs/architecture.md``, checked over the package's source with ``ast``.

Every ``import`` and ``from ... import`` of every module (function-level imports included)
is resolved to the layer folder it reaches. A module of folder F may import only from F
itself and the folders listed for F in ``ALLOWED``; every listed edge points to a layer no
higher than F's, and the folder graph has no cycle. Third-party imports are limited per
folder too (``THIRD_PARTY``), so the detector stays embeddable with numpy alone.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lmetric_theory"

#: Layer of every folder (1 = bottom). ``presets`` holds data only; the package root
#: (``__init__``/``__main__``) re-exports the detector and starts the CLI.
LAYER: dict[str, int] = {
    "core": 1,
    "presets": 1,
    "theory": 2,
    "detector": 3, "policies": 3, "sim": 3, "workload": 3,
    "experiments": 4, "audit": 4,
    "io": 5, "cli": 5,
    "app": 6,
    "(root)": 7,
}

#: Folder -> the other folders its modules may import (the explicit edges of the layer graph).
ALLOWED: dict[str, frozenset[str]] = {
    "core": frozenset(),
    "presets": frozenset(),
    "theory": frozenset({"core"}),
    "detector": frozenset({"core"}),
    "workload": frozenset({"core"}),
    "policies": frozenset({"core", "detector"}),
    "sim": frozenset({"core", "presets", "policies", "workload"}),
    "experiments": frozenset({"core", "theory", "detector", "policies", "sim", "workload"}),
    "audit": frozenset({"core", "detector", "experiments", "policies", "sim", "workload"}),
    "io": frozenset({"core", "audit", "detector"}),
    "cli": frozenset({"core", "theory", "detector", "policies", "sim", "workload",
                      "experiments", "audit", "io"}),
    "app": frozenset({"core", "theory", "detector", "policies", "sim", "workload",
                      "experiments", "audit", "io"}),
    "(root)": frozenset({"detector", "cli"}),
}

#: Folder -> third-party packages it may import (everything lazily except numpy).
THIRD_PARTY: dict[str, frozenset[str]] = {
    "core": frozenset({"numpy"}),
    "presets": frozenset(),
    "theory": frozenset({"numpy", "sympy"}),
    "detector": frozenset({"numpy", "prometheus_client"}),
    "workload": frozenset({"numpy"}),
    "policies": frozenset({"numpy", "yaml"}),  # yaml lazily: llm-d's config=FILE
    "sim": frozenset({"numpy", "scipy", "pyarrow", "vllm", "torch", "dynamo"}),  # vllm, dynamo extras
    "experiments": frozenset({"numpy", "scipy", "dask"}),
    "audit": frozenset({"numpy"}),
    "io": frozenset({"numpy", "plotly", "matplotlib"}),
    "cli": frozenset({"numpy", "sympy", "rich", "pyarrow"}),
    "app": frozenset({"numpy", "plotly", "streamlit"}),
    "(root)": frozenset(),
}


def _folder(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else "(root)"


def _module(path: Path) -> list[str]:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = ["lmetric_theory", *rel.parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute dotted target) of every import in one file; ``from pkg import name``
    yields ``pkg.name`` so a subpackage imported by name counts as that subpackage."""
    mod = _module(path)
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod if is_pkg else mod[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}"


def _target_folder(dotted: str) -> str | None:
    parts = dotted.split(".")
    if parts[0] != "lmetric_theory":
        return None
    if len(parts) > 1 and (PACKAGE / parts[1]).is_dir():
        return parts[1]
    return "(root)"


FILES = sorted(PACKAGE.rglob("*.py"))


def test_every_folder_has_a_layer():
    folders = {_folder(f) for f in FILES}
    assert folders <= set(LAYER), f"folders without a layer: {sorted(folders - set(LAYER))}"
    assert set(ALLOWED) == set(LAYER) == set(THIRD_PARTY)


def test_allowed_edges_point_down_and_have_no_cycle():
    for src, targets in ALLOWED.items():
        for t in targets:
            assert LAYER[t] <= LAYER[src], f"{src} (layer {LAYER[src]}) -> {t} ({LAYER[t]})"
    # no cycle: repeatedly remove folders that import nothing left
    left = {k: set(v) for k, v in ALLOWED.items()}
    while left:
        leaves = [k for k, v in left.items() if not v & set(left)]
        assert leaves, f"cycle among {sorted(left)}"
        for k in leaves:
            del left[k]


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_imports_follow_the_layers(path: Path):
    src = _folder(path)
    std = sys.stdlib_module_names
    bad = []
    for line, dotted in _imports(path):
        folder = _target_folder(dotted)
        top = dotted.split(".")[0]
        if folder is None:
            if top not in std and top != "__future__" and top not in THIRD_PARTY[src]:
                bad.append(f"line {line}: third-party {top!r} not allowed in {src}/")
        elif folder != src and folder not in ALLOWED[src]:
            bad.append(f"line {line}: {src}/ (layer {LAYER[src]}) imports {dotted} "
                       f"({folder}/, layer {LAYER[folder]})")
    assert not bad, f"{path.relative_to(PACKAGE)}: " + "; ".join(dict.fromkeys(bad))
