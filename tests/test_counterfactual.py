"""Counterfactual replays: forks leave the original untouched; the same choice reproduces it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lmetric_theory.experiments.counterfactual import counterfactual
from lmetric_theory.sim import SimConfig, Simulator, load_preset
from lmetric_theory.workload import synthetic


@pytest.fixture(scope="module")
def setup():
    w = synthetic("mixed", n_requests=200, rate_rps=12.0, seed=2)
    cfg = SimConfig.from_preset(load_preset("h100-llama3-8b"), 3)
    return w, cfg


def test_fork_same_choice_reproduces_and_original_untouched(setup):
    w, cfg = setup
    original = Simulator(w, cfg, "lmetric").run()
    d = 120
    base = Simulator(w, cfg, "lmetric")
    base.advance(until_decision=d)
    same = base.fork()
    same.force(d, int(original.instance[d]))
    r_same = same.run()
    np.testing.assert_array_equal(r_same.ttft_s, original.ttft_s)
    np.testing.assert_array_equal(r_same.tpot_s, original.tpot_s)
    other = base.fork()
    other.force(d, (int(original.instance[d]) + 1) % cfg.n_instances)
    r_other = other.run()
    assert r_other.instance[d] != original.instance[d]
    assert not np.array_equal(r_other.ttft_s, original.ttft_s)
    # The forks ran to completion; the base is still right before decision d and finishes as the original.
    assert base.decisions_made == d
    r_base = base.run()
    np.testing.assert_array_equal(r_base.ttft_s, original.ttft_s)
    np.testing.assert_array_equal(r_base.instance, original.instance)


def test_report_deterministic_and_consistent(setup):
    w, cfg = setup
    a = counterfactual(w, cfg, lam=256, n_flagged=5, n_control=5, window_s=2.0, seed=7)
    b = counterfactual(w, cfg, lam=256, n_flagged=5, n_control=5, window_s=2.0, seed=7)
    assert a == b
    assert a.decisions == 200 and a.flagged + a.unflagged == 200
    cf = [c for c in a.cases if c.flagged]
    cu = [c for c in a.cases if not c.flagged]
    assert len(cf) == min(5, a.flagged) and len(cu) == min(5, a.unflagged)
    assert a.precision == sum(c.harmful for c in cf) / len(cf)
    h_f, h_u = a.harm_rate_flagged, a.harm_rate_control
    den = a.flagged * h_f + a.unflagged * h_u
    assert (math.isnan(a.recall) and den == 0) or a.recall == pytest.approx(a.flagged * h_f / den)
    for c in a.cases:
        assert c.product_choice != c.alternative_choice
        assert c.harmful == (c.ttft_delta_s > 0.0)
        assert c.affected >= 1
        # Disagreeing decisions compare with the reference, the rest with the runner-up.
        if not c.flagged:
            assert c.alternative == "runner_up"


def test_case_branch_matches_manual_replay(setup):
    w, cfg = setup
    rep = counterfactual(w, cfg, lam=256, n_flagged=1, n_control=0, window_s=1.0, seed=1)
    (c,) = rep.cases
    sim = Simulator(w, cfg, "lmetric:P=uncached,p0=0,b0=1")
    sim.advance(until_decision=c.decision)
    sim.force(c.decision, c.alternative_choice)
    res = sim.run()
    arr = np.asarray(w.arrival_s)
    idx = np.arange(c.decision, max(int(np.searchsorted(arr, c.time_s + 1.0, side="right")), c.decision + 1))
    assert idx.size == c.affected
    assert float(np.mean(res.ttft_s[idx])) == pytest.approx(c.ttft_alternative_s, rel=1e-12)


def test_disagreement_flag_uses_reference_alternative(setup):
    w, cfg = setup
    rep = counterfactual(w, cfg, lam=64, n_flagged=3, n_control=2, window_s=1.0, flag="disagreement")
    assert rep.flag == "disagreement"
    for c in rep.cases:
        assert (c.alternative == "reference") == c.flagged


def test_bad_arguments(setup):
    w, cfg = setup
    with pytest.raises(ValueError, match="window_s"):
        counterfactual(w, cfg, lam=1, window_s=-1)
    with pytest.raises(ValueError, match="threshold_s"):
        counterfactual(w, cfg, lam=1, threshold_s=math.nan)
    with pytest.raises(ValueError, match="flag"):
        counterfactual(w, cfg, lam=1, flag="some")
