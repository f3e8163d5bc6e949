"""notebook_support: shared-folder lookup and the exact band check against brute force."""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "notebooks"))
import nbsupport as ns  # noqa: E402


def test_find_shared_walks_up(tmp_path: Path) -> None:
    (tmp_path / "shared" / "traces").mkdir(parents=True)
    deep = tmp_path / "repo" / "notebooks"
    deep.mkdir(parents=True)
    assert ns.find_shared(deep) == (tmp_path / "shared").resolve()
    assert ns.find_shared(tmp_path) == (tmp_path / "shared").resolve()


def test_find_shared_absent(tmp_path: Path) -> None:
    d = tmp_path / "x"
    d.mkdir()
    found = ns.find_shared(d)
    assert found is None or tmp_path.resolve() not in found.parents


def test_trace_or_synthetic_falls_back(tmp_path: Path) -> None:
    w, label = ns.trace_or_synthetic(count=50, start=tmp_path, seed=3)
    if ns.find_shared(tmp_path) is None:
        assert label.startswith("synthetic-chat")
        assert len(w.arrival_s) == 50


def _brute_band(P, B, c, lo, hi):
    """Chosen is an argmin for some lam in [lo, hi]: check every critical rate exactly."""
    cands = {Fraction(lo), Fraction(hi)}
    n = len(P)
    for i in range(n):
        for j in range(n):
            if B[i] != B[j]:
                x = Fraction(-(P[i] - P[j]), B[i] - B[j])
                if lo <= x <= hi:
                    cands.add(x)
    for lam in cands:
        s = [P[k] + lam * B[k] for k in range(n)]
        if s[c] == min(s):
            return False
    return True


@settings(max_examples=300, deadline=None)
@given(
    st.integers(2, 5).flatmap(lambda n: st.tuples(
        st.lists(st.integers(0, 60), min_size=n, max_size=n),
        st.lists(st.integers(0, 6), min_size=n, max_size=n),
        st.integers(0, n - 1),
    )),
    st.integers(0, 30),
    st.integers(0, 30),
)
def test_band_disagreement_matches_brute_force(case, a, b) -> None:
    P, B, c = case
    lo, hi = min(a, b), max(a, b)
    got = ns.band_disagreement(np.array([P]), np.array([B]), np.array([c]), lo, hi)
    assert bool(got[0]) == _brute_band(P, B, c, lo, hi)
