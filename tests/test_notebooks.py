"""The notebooks: committed without outputs, generated from their jupytext percent sources
(``notebooks/NN_*.py``, the source of truth), and run clean.

Each notebook is executed with nbclient in small mode (``LMETRIC_NOTEBOOK_FULL`` unset)
with ``notebooks/`` as working directory, on the ``python3`` kernel of this interpreter.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook tests need nbclient (the test extra)")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ("01_theory.ipynb", "02_audit_mooncake.ipynb", "03_policy_comparison.ipynb",
         "04_hotspot.ipynb")
SLOW = {"03_policy_comparison.ipynb"}


def test_every_notebook_has_a_percent_source() -> None:
    sources = sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.py"))
    notebooks = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    assert sources == notebooks == sorted(n.removesuffix(".ipynb") for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_committed_without_outputs(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "a notebook without code"
    for c in code:
        assert c.outputs == [], f"{name}: cell {c.get('id')} has outputs"
        assert c.execution_count is None, f"{name}: cell {c.get('id')} has an execution count"
    first = code[0].source
    assert 'FULL = os.environ.get("LMETRIC_NOTEBOOK_FULL") == "1"' in first
    assert "SEED" in first


@pytest.mark.parametrize("name", NAMES)
def test_matches_percent_source(name: str) -> None:
    """The .ipynb holds exactly the cells of its percent source (jupytext reads it)."""
    import jupytext

    source = NOTEBOOKS / name.replace(".ipynb", ".py")
    built = jupytext.read(source)
    stored = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert [(c.cell_type, c.source) for c in stored.cells] == [
        (c.cell_type, c.source) for c in built.cells
    ], (f"{name} differs from {source.name}; regenerate it: "
        f"jupytext --update --to ipynb notebooks/{source.name}")


def test_python3_kernel_is_this_interpreter() -> None:
    """nbclient's ``python3`` kernel runs the interpreter (venv) the tests run in."""
    from nbclient import NotebookClient
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell("import sys; print(sys.executable)")])
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    out = nb.cells[0].outputs[0].text.strip()
    assert Path(out).resolve() == Path(sys.executable).resolve()


def _run(name: str) -> None:
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    env_before = os.environ.pop("LMETRIC_NOTEBOOK_FULL", None)
    try:
        NotebookClient(
            nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
        ).execute()
    finally:
        if env_before is not None:
            os.environ["LMETRIC_NOTEBOOK_FULL"] = env_before
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in NAMES]
)
def test_notebook_runs(name: str) -> None:
    _run(name)
