"""notebook_support: shared-folder lookup, exact band check against brute force, sweeps."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lmetric_theory import notebook_support as ns
from lmetric_theory.detector import LinearReference, Mitigation
from lmetric_theory.workload import synthetic


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


def test_sweep_lam_and_audit_run_small() -> None:
    w = synthetic("chat", n_requests=200, rate_rps=20.0, seed=1)
    sw = ns.sweep_lam(w, lams=[64, 1024, 16], n_instances=2)
    assert list(sw.lams) == [16, 64, 1024]
    assert sw.objective[list(sw.lams).index(sw.best)] == sw.objective.min()
    assert sw.reference.lam_lo <= sw.best <= sw.reference.lam_hi
    run = ns.audit_run(w, reference=sw.reference, n_instances=2)
    v = run.verdicts
    assert len(v) == 200
    # the product's choice in the verdicts is where lmetric actually routed
    assert np.array_equal(v.product_choice, run.result.snapshots.chosen)
    rows = ns.mitigation_table(run, [Mitigation.fallback()])
    assert rows[0]["resolved"] == rows[0]["disagreements"] == int(v.disagrees.sum())
    assert rows[0]["mean_regret_tokens_on_disagreements"] == 0.0


def test_counterfactual_same_instance_is_no_change() -> None:
    w = synthetic("chat", n_requests=120, rate_rps=30.0, seed=2)
    run = ns.audit_run(w, reference=LinearReference.fixed(1024), n_instances=3)
    d = [10, 50]
    own, mean = ns.counterfactual_ttft(w, decisions=d, alternatives=run.verdicts.product_choice[d],
                                       n_instances=3)
    assert np.all(own == 0) and np.all(mean == 0)
