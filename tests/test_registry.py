"""The explicit policy registry and the package's import graph.

- ``make_policy`` works for every registered name in a fresh interpreter (nothing needs to
  be imported first to register a policy);
- importing a policy module registers nothing;
- no module of the package reaches itself through imports, counting every import: those at
  module level, inside functions and under ``if TYPE_CHECKING:`` (the graph is built with
  ``ast`` from the source of every module; an import made only for type checking still ties
  the two modules together, so it counts).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lmetric_theory.policies import make_policy, policy_names, register_all
from lmetric_theory.policies.base import _REGISTRY

PACKAGE = Path(__file__).resolve().parents[1] / "lmetric_theory"

#: Every policy ``register_all`` must list (other names may be added).
LISTED = {
    "lmetric", "linear", "tuned-linear", "guarded-lmetric", "round-robin", "random",
    "least-loaded", "cache-affinity", "power-of-two",
}


def _fresh(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_register_all_lists_every_policy() -> None:
    assert LISTED <= set(policy_names())


def _listed() -> list[str]:
    """Names ``register_all`` registers (not those a test added with ``register_policy``)."""
    found: list[str] = []
    register_all(lambda cls: found.append(cls.name))
    return sorted(found)


def test_make_policy_every_name_in_a_fresh_interpreter() -> None:
    names = _listed()
    assert LISTED <= set(names)
    code = (
        "import json\n"
        "from lmetric_theory.policies.registry import make_policy\n"
        f"names = {names!r}\n"
        "print(json.dumps({n: type(make_policy(n)).__name__ for n in names}))\n"
    )
    built = json.loads(_fresh(code))
    assert set(built) == set(names)
    for name in names:
        assert type(make_policy(name)).__name__ == built[name]
        assert make_policy(name).name == name


def test_importing_policy_modules_registers_nothing() -> None:
    code = (
        "import lmetric_theory.policies.builtin, lmetric_theory.policies.guarded\n"
        "import lmetric_theory.policies.tuned, lmetric_theory.experiments.tuning\n"
        "from lmetric_theory.policies.base import _REGISTRY\n"
        "print(len(_REGISTRY))\n"
    )
    assert _fresh(code).strip() == "0"


def test_names_registered_beforehand_are_kept() -> None:
    assert all(cls.name == name for name, cls in _REGISTRY.items())
    with pytest.raises(ValueError, match="valid policies: .*tuned-linear"):
        make_policy("nope")


# ---------------------------------------------------------------------------- import graph


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(dotted: str) -> str | None:
    """The package module ``dotted`` names, or its longest existing prefix."""
    parts = dotted.split(".")
    while parts:
        name = ".".join(parts)
        if name in MODULES:
            return name
        parts.pop()
    return None


def _edges(name: str, path: Path) -> set[str]:
    """Package modules ``name`` imports anywhere in its source: module level, inside
    functions, and under ``if TYPE_CHECKING:``."""
    is_pkg = path.name == "__init__.py"
    pkg = name.split(".") if is_pkg else name.split(".")[:-1]
    out: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # "from pkg import sub" imports the submodule when it exists, else pkg itself
            targets = [f"{module}.{a.name}" for a in node.names]
        for t in targets:
            if t.split(".")[0] != "lmetric_theory":
                continue
            r = _resolve(t)
            if r is not None and r != name:
                out.add(r)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_import_graph_is_built_from_every_module() -> None:
    graph = {n: _edges(n, p) for n, p in MODULES.items()}
    assert "lmetric_theory.policies.registry" in graph
    assert "lmetric_theory.policies.builtin" in graph["lmetric_theory.policies.registry"]
    assert "lmetric_theory.experiments.tasks" in graph["lmetric_theory.experiments.tuning"]


def test_cycle_finder_sees_function_level_and_type_checking_imports(tmp_path) -> None:
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    mod = tmp_path / "m.py"
    mod.write_text("from typing import TYPE_CHECKING\n"
                   "import typing\n"
                   "if TYPE_CHECKING:\n    import lmetric_theory.core.kernel\n"
                   "if typing.TYPE_CHECKING:\n    from lmetric_theory.core import limits\n"
                   "def f():\n    import lmetric_theory.core.signals\n")
    assert _edges("lmetric_theory.m", mod) == {
        "lmetric_theory.core.kernel", "lmetric_theory.core.limits", "lmetric_theory.core.signals",
    }


def test_cycle_finder_sees_a_cycle_made_only_for_type_checking(tmp_path) -> None:
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from lmetric_theory.x import b\n")
    b.write_text("from typing import TYPE_CHECKING\n"
                 "if TYPE_CHECKING:\n    from lmetric_theory.x.a import A\n")
    saved = dict(MODULES)
    MODULES.update({"lmetric_theory.x.a": a, "lmetric_theory.x.b": b})
    try:
        graph = {n: _edges(n, MODULES[n]) for n in ("lmetric_theory.x.a", "lmetric_theory.x.b")}
    finally:
        MODULES.clear()
        MODULES.update(saved)
    assert _cycles(graph) == [["lmetric_theory.x.a", "lmetric_theory.x.b"]]


def test_no_import_cycle_in_the_package() -> None:
    graph = {n: _edges(n, p) for n, p in MODULES.items()}
    cycles = _cycles(graph)
    assert not cycles, "import cycles (function-level and type-checking imports included): " + "; ".join(
        " <-> ".join(c) for c in cycles
    )
