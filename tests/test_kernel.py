"""The kernel's exact-list paths, tie rules, detector fast paths and band check, each
against exact brute force in :class:`fractions.Fraction` arithmetic.

(The vectorised scores, signs and ratios are tied to the sympy derivation and to brute
force in ``tests/test_kernel_vectorised.py``.)
"""

from __future__ import annotations

import math
from fractions import Fraction as F

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lmetric_theory.core import kernel

loads = st.lists(st.tuples(st.integers(0, 40), st.integers(0, 6)), min_size=1, max_size=8)
rates = st.one_of(st.integers(0, 50), st.fractions(0, 50, max_denominator=7))
offsets = st.sampled_from([0, 1, F(1, 3), F(3, 2)])


def brute_argmin(scores: list) -> int:
    best = min(scores)
    return next(i for i, s in enumerate(scores) if s == best)


@settings(max_examples=200, deadline=None)
@given(loads, offsets, offsets, rates)
def test_exact_lists_and_argmins_agree_with_brute_force(pb, p0, b0, lam):
    P = [p for p, _ in pb]
    B = [b for _, b in pb]
    S = [(F(p) + p0) * (F(b) + b0) for p, b in pb]
    C = [F(p) + F(lam) * b for p, b in pb]
    assert kernel.product_scores_exact(P, B, p0, b0) == S
    assert kernel.linear_scores_exact(P, B, F(lam)) == C
    assert kernel.pick_exact(S, "lowest") == brute_argmin(S)
    assert kernel.argmin_product(np.array(P), np.array(B), p0, b0) == brute_argmin(S)
    nd = F(lam).as_integer_ratio()
    assert kernel.argmin_linear_pairs(pb, nd, float(F(lam))) == brute_argmin(C)
    rows = kernel.argmin_linear_rows(np.array([P]), np.array([B]), nd, float(F(lam)))
    assert int(rows[0]) == brute_argmin(C)
    i = brute_argmin(S)
    assert kernel.tied_product(np.array(P), np.array(B), p0, b0, i) == tuple(
        k for k, s in enumerate(S) if s == S[i]
    )


@settings(max_examples=100, deadline=None)
@given(st.tuples(st.integers(0, 500), st.integers(0, 9), st.integers(0, 500), st.integers(0, 9)),
       st.sampled_from([0, 1]), st.sampled_from([0, 1]), st.integers(0, 300))
def test_pair_scalars_match_the_vectorised_ratios(pair, p0, b0, lam):
    P1, B1, P2, B2 = pair
    le = kernel.lam_eff_pair(P1, B1, P2, B2, p0, b0)
    lv = float(kernel.lam_eff(P1, B1, P2, B2, p0, b0))
    assert (math.isnan(le) and math.isnan(lv)) or le == lv
    ls = kernel.lam_star_pair(P1, B1, P2, B2)
    lsv = float(kernel.lam_star(P1, B1, P2, B2))
    assert (math.isnan(ls) and math.isnan(lsv)) or ls == lsv
    assert kernel.regret_pair(P1, B1, P2, B2, lam) == float(kernel.regret_tokens(P1, B1, P2, B2, lam))
    assert kernel.lambda_eff is kernel.lam_eff and kernel.lambda_star is kernel.lam_star


def test_random_tie_rule_draws_only_on_ties_and_stays_among_the_minima():
    rng = np.random.default_rng(1)
    before = rng.bit_generator.state
    assert kernel.pick_exact([3, 1, 2], "random", rng) == 1
    assert rng.bit_generator.state == before  # no draw without a tie
    picks = {kernel.pick_exact([1, 5, 1, 1], "random", rng) for _ in range(60)}
    assert picks == {0, 2, 3}
    picks = {kernel.pick_min(np.array([2, 0, 0]), "random", rng) for _ in range(40)}
    assert picks == {1, 2}
    assert kernel.pick_min(np.array([2, 0, 0]), "lowest") == 1


def test_large_denominator_rate_takes_the_float_filtered_path_exactly():
    # lam = n/d with d > 2**20: P + lam*B ties exactly between (0, d) and (n, 0).
    d = (1 << 21) + 1
    n = 3 * d + 7
    lam = F(n, d)
    pb = [(n + 1, 0), (n, 0), (0, d)]  # scores n+1, n, n: exact tie between 1 and 2
    assert kernel.argmin_linear_pairs(pb, (n, d), float(lam)) == 1
    P = np.array([[p for p, _ in pb]])
    B = np.array([[b for _, b in pb]])
    assert int(kernel.argmin_linear_rows(P.astype(float), B.astype(float), (n, d), float(lam))[0]) == 1


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 5)), min_size=2, max_size=5),
       st.integers(0, 4), st.integers(0, 20), st.integers(0, 20))
def test_band_violation_matches_a_brute_force_scan(pb, chosen, a, b):
    chosen = chosen % len(pb)
    lo, hi = sorted((a, b))
    P = np.array([[p for p, _ in pb]])
    B = np.array([[q for _, q in pb]])
    # brute force: some lam in [lo, hi] for which `chosen` is a (tied) argmin; the feasible
    # set is an interval whose ends are breakpoints (P_j - P_c)/(B_c - B_j) or the band ends
    cands = {F(lo), F(hi)}
    for p, q in pb:
        pc, qc = pb[chosen]
        if q != qc:
            x = F(p - pc, qc - q)
            if lo <= x <= hi:
                cands.add(x)
    ok = any(
        all(F(pb[chosen][0]) + lam * pb[chosen][1] <= F(p) + lam * q for p, q in pb)
        for lam in cands
    )
    assert bool(kernel.band_violation(P, B, [chosen], lo, hi)[0]) == (not ok)


def test_exact_number():
    assert kernel.exact_number(F(4, 2)) == 2 and isinstance(kernel.exact_number(F(4, 2)), int)
    assert kernel.exact_number(0.5) == F(1, 2)
    assert kernel.exact_number(3) == 3
