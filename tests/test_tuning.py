"""tune_linear: best lam is no worse than any grid point (from the recorded table), deterministic."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from lmetric_theory.experiments.tuning import (
    TunedLinear,
    prepare_tuned,
    resolve_policy,
    tune_linear,
)
from lmetric_theory.policies import DecisionView, make_policy, parse_spec
from lmetric_theory.sim import SimConfig, Simulator, load_preset
from lmetric_theory.workload import synthetic


@pytest.fixture(scope="module")
def setup():
    w = synthetic("mixed", n_requests=200, rate_rps=10.0, seed=1)
    cfg = SimConfig.from_preset(load_preset("h100-llama3-8b"), 3)
    return w, cfg


def test_grid_best_and_table(setup):
    w, cfg = setup
    r = tune_linear(w, config=cfg, points=5, workers=1)
    assert r.grid.size == 5 and r.grid[0] == 1.0 and r.grid[-1] == 65536.0
    assert np.allclose(np.diff(np.log(r.grid)), np.log(65536) / 4, rtol=1e-5)
    assert np.all(r.objective <= r.grid_objective)
    assert r.objective == r.grid_objective.min()
    # Each grid value is the real simulated objective of linear:lam=X.
    i = 2
    spec = f"linear:lam={float(r.grid[i])!r}"
    direct = Simulator(w, cfg, spec).run().summary()["ttft_mean_s"]
    assert direct == r.grid_objective[i]


def test_refined_is_no_worse_and_deterministic(setup):
    w, cfg = setup
    a = tune_linear(w, config=cfg, points=4, refine=True, refine_evals=3, workers=2)
    b = tune_linear(w, config=cfg, points=4, refine=True, refine_evals=3, workers=1)
    assert a.refined and a.lam == b.lam and a.objective == b.objective
    assert a.evaluations == b.evaluations
    assert all(a.objective <= g for g in a.grid_objective)
    assert len(a.evaluations) > a.grid.size
    assert math.isfinite(a.objective)


def test_tuned_linear_policy_prepare_and_resolve(setup):
    w, cfg = setup
    pol = make_policy("tuned-linear:points=3,lam_min=64,lam_max=4096")
    assert isinstance(pol, TunedLinear)
    v = DecisionView(0, 0.0, 10, np.array([5, 1]), np.zeros(2, np.int32), np.array([0, 3]),
                     np.zeros(2, np.int32), np.zeros(2, np.float32))
    with pytest.raises(RuntimeError, match="prepare"):
        pol.choose(v)
    res = prepare_tuned(pol, w, cfg)
    spec = resolve_policy(parse_spec("tuned-linear:points=3,lam_min=64,lam_max=4096"), w, cfg)
    assert spec == pol.linear_spec and spec.name == "linear"
    assert spec.params.lam == Fraction(repr(res.lam))  # the rate reported is the rate run
    assert str(spec).startswith(f"linear:lam={Fraction(repr(res.lam))},")
    # Routing with the prepared policy equals routing with the resolved linear spec.
    a = Simulator(w, cfg, pol).run()
    b = Simulator(w, cfg, spec).run()
    assert np.array_equal(a.instance, b.instance)
    assert str(resolve_policy(parse_spec("lmetric"), w, cfg)) == "lmetric"


def test_bad_arguments(setup):
    w, cfg = setup
    with pytest.raises(ValueError, match="objective"):
        tune_linear(w, config=cfg, objective="nope")
    with pytest.raises(ValueError, match="lam_min"):
        tune_linear(w, config=cfg, lam_min=10, lam_max=5)
    with pytest.raises(ValueError):
        make_policy("tuned-linear:objective=bad")


def test_simulate_command_tunes_and_guards(capsys):
    """`simulate` accepts tuned-linear (tuned on the workload first) and guarded-lmetric."""
    import json

    from lmetric_theory.cli import main

    code = main(["simulate", "--count", "150", "-n", "3", "--policy", "tuned-linear:points=3",
                 "--policy", "guarded-lmetric", "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    for spec in ("tuned-linear:points=3", "guarded-lmetric"):
        assert doc["policies"][spec]["completed"] == 150


def test_dynamo_w_tuned_picks_the_grid_weight_with_the_lowest_mean_ttft(setup):
    from lmetric_theory.experiments.tuning import DYNAMO_W_GRID, resolve_policy, tune_dynamo_w

    w, cfg = setup
    grid = (Fraction(0), Fraction(1), Fraction(8))
    spec, evals = tune_dynamo_w(parse_spec("dynamo:w=tuned,tie=lowest"), w, cfg, grid=grid)
    # brute force: every weight replayed on its own
    brute = {g: float(Simulator(w, cfg, f"dynamo:w={g},tie=lowest").run().summary()["ttft_mean_s"])
             for g in grid}
    assert dict(evals) == pytest.approx(brute)
    best = min(brute, key=lambda g: (brute[g], grid.index(g)))
    assert str(spec) == f"dynamo:w={best},tie=lowest" and spec.params.w == best
    # resolve_policy does the same over the default grid; the result is an ordinary spec
    resolved = resolve_policy(parse_spec("dynamo-po:w=tuned"), w, cfg)
    name, _, rest = str(resolved).partition(":")
    assert name == "dynamo-po" and Fraction(rest.split(",")[0].removeprefix("w=")) in DYNAMO_W_GRID
    assert Simulator(w, cfg, resolved).run(until_decision=20).instance[:20].min() >= 0  # routes
    assert str(resolve_policy(parse_spec("dynamo:w=2"), w, cfg)) == "dynamo:w=2"


def test_dynamo_w_tuned_refuses_to_route_unresolved(setup):
    w, cfg = setup
    pol = make_policy("dynamo:w=tuned")
    assert pol.params.w == "tuned"
    with pytest.raises(RuntimeError, match="w=tuned is not resolved"):
        Simulator(w, cfg, pol).run(until_decision=1)
    with pytest.raises(ValueError, match="cannot read 'tuned'"):
        make_policy("lmetric:p0=tuned")  # only parameters marked tunable accept it
    with pytest.raises(ValueError, match="w must be >= 0"):
        make_policy("dynamo:w=-1")


def test_bailian_weights_share_one_minus_alpha_exactly():
    from lmetric_theory.experiments.tuning import BAILIAN_ALPHA_GRID, bailian_weights

    # The authors' sweep bailian-impl-00 .. bailian-impl-10 and their defaults 0.7/0.15/0.15.
    assert BAILIAN_ALPHA_GRID == tuple(Fraction(k, 10) for k in range(11))
    assert bailian_weights(Fraction(7, 10), Fraction(3, 20), Fraction(3, 20)) == (
        Fraction(7, 10), Fraction(3, 20), Fraction(3, 20))
    assert bailian_weights(Fraction(1, 2), Fraction(1), Fraction(3)) == (
        Fraction(1, 2), Fraction(1, 8), Fraction(3, 8))  # ratio 1:3 kept
    for a in BAILIAN_ALPHA_GRID:
        assert sum(bailian_weights(a, Fraction(3, 20), Fraction(3, 20))) == 1
    with pytest.raises(ValueError, match="beta \\+ gamma > 0"):
        bailian_weights(Fraction(1, 2), Fraction(0), Fraction(0))


def test_bailian_alpha_tuned_picks_the_grid_weight_with_the_lowest_mean_ttft(setup):
    from lmetric_theory.experiments.tuning import tune_bailian_alpha

    w, cfg = setup
    grid = (Fraction(0), Fraction(1, 2), Fraction(9, 10))
    spec, evals = tune_bailian_alpha(parse_spec("bailian:alpha=tuned,norm=minmax"), w, cfg,
                                     grid=grid, seed=3)
    # brute force: each weight set replayed on its own with the same policy seed
    texts = {Fraction(0): "alpha=0,beta=1/2,gamma=1/2", Fraction(1, 2): "alpha=1/2,beta=1/4,gamma=1/4",
             Fraction(9, 10): "alpha=9/10,beta=1/20,gamma=1/20"}
    brute = {a: float(Simulator(w, cfg, make_policy(f"bailian:{t},norm=minmax", seed=3)).run()
                      .summary()["ttft_mean_s"]) for a, t in texts.items()}
    assert dict(evals) == pytest.approx(brute)
    best = min(brute, key=lambda a: (brute[a], grid.index(a)))
    assert (spec.params.alpha, spec.params.beta + spec.params.gamma) == (best, 1 - best)
    assert spec.params.norm == "minmax"
    resolved = resolve_policy(parse_spec("bailian:alpha=tuned"), w, cfg)
    assert resolved.params.alpha != "tuned"
    assert Simulator(w, cfg, resolved).run(until_decision=20).instance[:20].min() >= 0  # routes
    assert str(resolve_policy(parse_spec("bailian:alpha=1/2"), w, cfg)) == "bailian:alpha=1/2"


def test_bailian_alpha_tuned_refuses_to_route_unresolved(setup):
    w, cfg = setup
    pol = make_policy("bailian:alpha=tuned")
    assert pol.params.alpha == "tuned"
    with pytest.raises(RuntimeError, match="alpha=tuned is not resolved"):
        Simulator(w, cfg, pol).run(until_decision=1)
    with pytest.raises(ValueError, match="beta \\+ gamma must be > 0"):
        make_policy("bailian:alpha=tuned,beta=0,gamma=0")
    with pytest.raises(ValueError, match="cannot read 'tuned'"):
        make_policy("bailian:beta=tuned")  # only alpha is tunable
