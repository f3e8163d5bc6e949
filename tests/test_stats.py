"""Interval estimators: bootstrap coverage of a known rate, AUROC against brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as st_

from lmetric_theory.experiments.stats import auroc, auroc_ci, bootstrap_ci, t_interval


def test_bootstrap_covers_a_known_bernoulli_rate_about_95_percent() -> None:
    # 300 synthetic samples of 170 Bernoulli(0.3) draws: the 95% percentile-bootstrap
    # interval of the rate should cover 0.3 in about 95% of them.
    rng = np.random.default_rng(20261201)
    p, n, trials = 0.3, 170, 300
    covered = 0
    for k in range(trials):
        x = (rng.random(n) < p).astype(float)
        e = bootstrap_ci(x, n_boot=600, seed=k)
        covered += e.lo <= p <= e.hi
    rate = covered / trials
    # Binomial(300, 0.95) sd is 1.3 points; the percentile bootstrap runs slightly short.
    assert 0.91 <= rate <= 0.98, rate


def test_bootstrap_is_seeded_and_brackets_the_estimate() -> None:
    x = np.arange(50, dtype=float) ** 0.5
    a = bootstrap_ci(x, seed=3)
    b = bootstrap_ci(x, seed=3)
    assert a == b
    assert a.value == pytest.approx(x.mean())
    assert a.lo < a.value < a.hi and a.n == 50
    assert bootstrap_ci(x, seed=4) != a


def test_bootstrap_edge_cases() -> None:
    e = bootstrap_ci([])
    assert e.n == 0 and math.isnan(e.value) and math.isnan(e.lo)
    assert bootstrap_ci([2.0, 2.0, 2.0]).ci95 == (2.0, 2.0)
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([1.0, math.nan])
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([1.0], level=1.0)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci([1.0], n_boot=0)
    med = bootstrap_ci([1.0, 2.0, 10.0], statistic=lambda m: np.median(m, axis=1))
    assert med.value == 2.0


def brute_auroc(s: list[float], y: list[bool]) -> float:
    pos = [a for a, t in zip(s, y, strict=True) if t]
    neg = [a for a, t in zip(s, y, strict=True) if not t]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 3), st.booleans()), min_size=2, max_size=30))
def test_auroc_equals_brute_force_pair_count(rows: list[tuple[int, bool]]) -> None:
    s = [float(a) for a, _ in rows]
    y = [b for _, b in rows]
    got = auroc(s, y)
    if all(y) or not any(y):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(brute_auroc(s, y), abs=1e-12)


def test_auroc_extremes_and_binary_predictor() -> None:
    assert auroc([1, 2, 3, 4], [False, False, True, True]) == 1.0
    assert auroc([4, 3, 2, 1], [False, False, True, True]) == 0.0
    assert auroc([1, 1, 1, 1], [False, True, False, True]) == 0.5
    # A 0/1 predictor: AUROC = (TPR + TNR) / 2.
    s = [1, 1, 0, 0, 1, 0]
    y = [True, True, True, False, False, False]
    tpr, tnr = 2 / 3, 2 / 3
    assert auroc(s, y) == pytest.approx((tpr + tnr) / 2)
    with pytest.raises(ValueError, match="shape"):
        auroc([1, 2], [True])
    with pytest.raises(ValueError, match="NaN"):
        auroc([math.nan, 1.0], [True, False])


def test_auroc_ci_is_seeded_and_contains_the_estimate() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.4
    s = y * 0.5 + rng.normal(size=200)
    a = auroc_ci(s, y, n_boot=500, seed=1)
    assert a == auroc_ci(s, y, n_boot=500, seed=1)
    assert a.lo <= a.value <= a.hi
    assert 0.5 < a.value < 1.0
    none = auroc_ci([1.0, 2.0], [True, True])
    assert math.isnan(none.value) and none.n == 2


def test_t_interval_matches_scipy() -> None:
    x = [1.0, 2.0, 4.0, 3.5, 2.5]
    e = t_interval(x)
    lo, hi = st_.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=st_.sem(x))
    assert (e.lo, e.hi) == pytest.approx((lo, hi))
    one = t_interval([2.0])
    assert one.value == 2.0 and math.isnan(one.lo)
