"""The kernel's vectorised scores, signs and ratios (``core.kernel``) vs exact rational brute

Every hypothesis example draws a seed and builds a *batch* of random states with a
numpy Generator (mixing tiny ranges that force zeros and ties, constructed exact
product ties and exact linear ties at lam = lambda_star, and wide ranges), runs the
vectorised predicate once and compares every entry with brute force in
:class:`fractions.Fraction` arithmetic computed from the score definitions.

State counts (default profile): 3 pair tests x 30 examples x 1000 states plus the band
test's 15 x 1000 = 105,000 pair states, plus 25 examples x 60 rows of N in [2, 64]
instances for the argmin reduction (about 50,000 instances): over 10^5 random states.
"""

from __future__ import annotations

import math
from fractions import Fraction as F

import numpy as np
import pytest
import sympy as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmetric_theory.core import kernel as pr
from lmetric_theory.theory import SYMBOLS, derive

BATCH = 1000
SETTINGS = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

offsets_p = st.sampled_from([0, 1, F(1, 2)])
offsets_b = st.sampled_from([0, 1, F(3, 2)])
rates = st.one_of(
    st.integers(0, 3000),
    st.fractions(min_value=0, max_value=3000, max_denominator=16),
    st.floats(min_value=0, max_value=3000, allow_nan=False, allow_infinity=False),
)
dtypes = st.sampled_from(["int64", "float64"])


# ------------------------------------------------------------------- brute force


def S(P, B, p0, b0) -> F:  # noqa: N802 - notation of the theory
    return (F(P) + F(p0)) * (F(B) + F(b0))


def C(P, B, lam) -> F:  # noqa: N802
    return F(P) + F(lam) * F(B)


def sgn(x: F) -> int:
    return (x > 0) - (x < 0)


def exact(x) -> F:
    """Exact value of a scalar (floats at their binary value)."""
    return F(x) if not isinstance(x, np.generic) else F(x.item())


def states(seed: int, n: int, p0, b0, lam) -> tuple[np.ndarray, ...]:
    """``n`` pair states (P1, B1, P2, B2) as int64, with zeros and ties forced often."""
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 5, size=n)
    P1 = np.where(kind == 0, rng.integers(0, 4, n), rng.integers(0, 20_000, n))
    P2 = np.where(kind == 0, rng.integers(0, 4, n), rng.integers(0, 20_000, n))
    B1 = np.where(kind <= 1, rng.integers(0, 4, n), rng.integers(0, 300, n))
    B2 = np.where(kind <= 1, rng.integers(0, 4, n), rng.integers(0, 300, n))
    # kind 2: equal prefill or equal batch
    eqP = (kind == 2) & (rng.random(n) < 0.5)
    P2 = np.where(eqP, P1, P2)
    B2 = np.where((kind == 2) & ~eqP, B1, B2)
    # kind 3: exact product ties (integer offsets): P+p0 = ab, B+b0 = cd vs ac, bd
    if isinstance(p0, int) and isinstance(b0, int):
        a, b, c, d = (rng.integers(1, 60, n) for _ in range(4))
        tie = kind == 3
        P1 = np.where(tie, a * b - p0, P1)
        B1 = np.where(tie, c * d - b0, B1)
        P2 = np.where(tie, a * c - p0, P2)
        B2 = np.where(tie, b * d - b0, B2)
    # kind 4: exact linear ties at lam: B2 = B1 - den*k, P2 = P1 + num*k
    fl = F(lam)
    if fl.denominator <= 64 and fl.numerator <= 10**6:
        k = rng.integers(-3, 4, n)
        B2t = B1 - fl.denominator * k
        P2t = P1 + fl.numerator * k
        ok = (kind == 4) & (B2t >= 0) & (P2t >= 0)
        B2 = np.where(ok, B2t, B2)
        P2 = np.where(ok, P2t, P2)
    return tuple(np.asarray(x, dtype=np.int64) for x in (P1, B1, P2, B2))


def cast(arrays, dtype):
    return tuple(a.astype(dtype) for a in arrays)


def lambdified(expr: sp.Basic, names: str):
    """A sympy expression as a Python function of exact Fractions."""
    return sp.lambdify([SYMBOLS[n] for n in names.split()], expr, modules=["math"])


# ------------------------------------------------------------------- pair tests


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), p0=offsets_p, b0=offsets_b, lam=rates, dtype=dtypes)
def test_signs_and_disagreement_match_brute_force(seed, p0, b0, lam, dtype):
    P1, B1, P2, B2 = cast(states(seed, BATCH, p0, b0, lam), dtype)
    ps = pr.product_sign(P1, B1, P2, B2, p0, b0)
    ls = pr.linear_sign(P1, B1, P2, B2, lam)
    dis = pr.disagrees(P1, B1, P2, B2, lam, p0, b0)
    con = pr.conflicting(P1, B1, P2, B2)
    assert ps.dtype == np.int8 and ls.dtype == np.int8 and ps.shape == (BATCH,)
    d = derive()
    between = lambdified(d.disagreement_between, "P_1 B_1 P_2 B_2 p_0 b_0 lam")
    star = lambdified(d.lambda_star, "P_1 P_2 B_1 B_2")
    el = exact(lam)
    for i in range(BATCH):
        p1, b1, p2, b2 = (int(x[i]) for x in (P1, B1, P2, B2))
        s = sgn(S(p1, b1, p0, b0) - S(p2, b2, p0, b0))
        c = sgn(C(p1, b1, el) - C(p2, b2, el))
        assert ps[i] == s, (p1, b1, p2, b2, p0, b0)
        assert ls[i] == c, (p1, b1, p2, b2, lam)
        assert bool(dis[i]) == (s * c == -1)
        assert bool(con[i]) == ((p1 - p2) * (b1 - b2) < 0)
        if b1 != b2:
            # (d): strict disagreement iff lambda_star strictly between lam and lambda_eff
            args = (F(p1), F(b1), F(p2), F(b2), F(p0), F(b0), el)
            assert bool(dis[i]) == bool(between(*args))
            # a dominated pair never disagrees (lambda_star <= 0)
            if star(F(p1), F(p2), F(b1), F(b2)) <= 0:
                assert not dis[i]
        else:
            assert not dis[i]  # equal batches: both rank by P


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), p0=offsets_p, b0=offsets_b,
       lo=rates, width=rates, dtype=dtypes)
def test_band_disagrees_matches_hull_rule(seed, p0, b0, lo, width, dtype):
    hi = exact(lo) + exact(width)  # exact upper end (may be a Fraction)
    P1, B1, P2, B2 = cast(states(seed, BATCH, p0, b0, lo), dtype)
    got = pr.band_disagrees(P1, B1, P2, B2, lo, hi, p0, b0)
    d = derive()
    division_free = lambdified(
        d.band_disagrees_condition, "P_1 B_1 P_2 B_2 p_0 b_0 lam_lo lam_hi"
    )
    agrees = lambdified(
        d.band_agrees_strictly_condition, "P_1 B_1 P_2 B_2 p_0 b_0 lam_lo lam_hi"
    )
    hull = lambdified(d.band_hull_condition, "P_1 B_1 P_2 B_2 p_0 b_0 lam_lo lam_hi")
    elo = exact(lo)
    for i in range(BATCH):
        p1, b1, p2, b2 = (F(int(x[i])) for x in (P1, B1, P2, B2))
        args = (p1, b1, p2, b2, F(p0), F(b0), elo, hi)
        # brute force from the definition: C_1 - C_2 is affine in lam, so strict
        # disagreement on [lo, hi], if any, shows at an end (the midpoint is a spare)
        s = sgn(S(p1, b1, p0, b0) - S(p2, b2, p0, b0))
        grid = [elo, (elo + hi) / 2, hi]
        brute = any(s * sgn(C(p1, b1, g) - C(p2, b2, g)) == -1 for g in grid)
        assert bool(got[i]) == brute, (p1, b1, p2, b2, p0, b0, lo, hi)
        assert bool(division_free(*args)) == brute
        # (i) the hull rule with its exact boundary rule
        assert (bool(hull(*args)) if b1 != b2 else False) == brute
        # strict agreement on the whole band = product strict and same strict linear
        strict = s != 0 and all(
            s * sgn(C(p1, b1, g) - C(p2, b2, g)) == 1 for g in (elo, hi)
        )
        assert bool(agrees(*args)) == strict


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), p0=offsets_p, b0=offsets_b, lam=rates, dtype=dtypes)
def test_ratios_and_regret_match_sympy(seed, p0, b0, lam, dtype):
    P1, B1, P2, B2 = cast(states(seed, BATCH, p0, b0, lam), dtype)
    le = pr.lambda_eff(P1, B1, P2, B2, p0, b0)
    ls = pr.lambda_star(P1, B1, P2, B2)
    rg = pr.regret_tokens(P1, B1, P2, B2, lam)
    assert le.dtype == ls.dtype == rg.dtype == np.float64
    d = derive()
    num, den = sp.fraction(sp.cancel(d.lambda_eff))
    f_num = lambdified(num, "P_1 P_2 p_0")
    f_den = lambdified(den, "B_1 B_2 b_0")
    f_star = lambdified(d.lambda_star, "P_1 P_2 B_1 B_2")
    f_regret = lambdified(d.regret, "P_1 P_2 B_1 B_2 lam")
    el = exact(lam)
    for i in range(BATCH):
        p1, b1, p2, b2 = (F(int(x[i])) for x in (P1, B1, P2, B2))
        n_, d_ = f_num(p1, p2, F(p0)), f_den(b1, b2, F(b0))
        if d_ != 0:
            assert le[i] == pytest.approx(float(n_ / d_), rel=1e-12, abs=0)
        elif n_ != 0:
            assert math.isinf(le[i])
        else:
            assert math.isnan(le[i])
        if b1 != b2:
            assert ls[i] == pytest.approx(float(f_star(p1, p2, b1, b2)), rel=1e-12, abs=1e-12)
        else:
            assert math.isnan(ls[i])
        r = f_regret(p1, p2, b1, b2, el)
        assert r == C(p1, b1, el) - C(p2, b2, el)
        assert rg[i] == pytest.approx(float(r), rel=1e-9, abs=1e-6)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), p0=offsets_p, b0=offsets_b, lam=rates)
def test_regret_is_nonnegative_when_choices_differ(seed, p0, b0, lam):
    """(h): product picks 1, linear picks 2 => regret >= 0, <= (lam - lambda_eff)(B1-B2)."""
    P1, B1, P2, B2 = states(seed, BATCH, p0, b0, lam)
    ps = pr.product_sign(P1, B1, P2, B2, p0, b0)
    ls = pr.linear_sign(P1, B1, P2, B2, lam)
    rg = pr.regret_tokens(P1, B1, P2, B2, lam)
    el = exact(lam)
    for i in np.flatnonzero((ps <= 0) & (ls >= 0)):  # product keeps 1, linear keeps 2
        p1, b1, p2, b2 = (F(int(x[i])) for x in (P1, B1, P2, B2))
        r = C(p1, b1, el) - C(p2, b2, el)
        assert r >= 0 and rg[i] >= -1e-9 * max(1.0, abs(float(r)))
        mb = (b1 + b2) / 2 + F(b0)
        if mb > 0:
            lam_eff = ((p1 + p2) / 2 + F(p0)) / mb
            assert r <= (el - lam_eff) * (b1 - b2)


# ------------------------------------------------------------------- N instances


def rows(seed: int, n_rows: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    small = rng.random((n_rows, 1)) < 0.5  # tiny ranges: many ties and zeros
    P = np.where(small, rng.integers(0, 4, (n_rows, n)), rng.integers(0, 5000, (n_rows, n)))
    B = np.where(small, rng.integers(0, 3, (n_rows, n)), rng.integers(0, 64, (n_rows, n)))
    return P.astype(np.int64), B.astype(np.int64)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(2, 64),
    p0=st.sampled_from([0, 1]),
    b0=st.sampled_from([0, 1]),
    lam=st.one_of(st.integers(0, 400), st.fractions(0, 400, max_denominator=8)),
    as_float=st.booleans(),
)
def test_argmins_and_the_pair_reduction(seed, n, p0, b0, lam, as_float):
    """(f): the argmins are exact (lowest index on ties) and differ exactly when the pair
    (product's choice, linear's choice) disagrees, with ties handled as derived."""
    n_rows = 60
    P, B = rows(seed, n_rows, n)
    Pa, Ba = (P.astype(np.float64), B.astype(np.float64)) if as_float else (P, B)
    ip = np.asarray(pr.argmin_product(Pa, Ba, p0, b0))
    jl = np.asarray(pr.argmin_linear(Pa, Ba, lam))
    assert ip.shape == jl.shape == (n_rows,)
    # the same along axis 0
    assert np.array_equal(np.asarray(pr.argmin_product(Pa.T, Ba.T, p0, b0, axis=0)), ip)
    el = exact(lam)
    for r in range(n_rows):
        s = [S(int(P[r, k]), int(B[r, k]), p0, b0) for k in range(n)]
        c = [C(int(P[r, k]), int(B[r, k]), el) for k in range(n)]
        i_star = s.index(min(s))
        j_star = c.index(min(c))
        assert ip[r] == i_star and jl[r] == j_star
        i, j = i_star, j_star
        # 1-element slices: see test_scalar_inputs_with_exact_fallback for 0-d inputs
        pair = (P[r, i : i + 1], B[r, i : i + 1], P[r, j : j + 1], B[r, j : j + 1])
        strict = bool(pr.disagrees(*pair, lam, p0, b0)[0])
        # lowest-index tie-breaking: differ <=> S_i <= S_j, C_j <= C_i, one strict
        assert (i != j) == (s[i] <= s[j] and c[j] <= c[i] and (s[i] < s[j] or c[j] < c[i]))
        if i != j:
            # tie-break disagreement happens exactly when one side ties
            assert strict == (s[i] < s[j] and c[j] < c[i])
            assert float(pr.regret_tokens(*pair, lam)[0]) == pytest.approx(
                float(c[i] - c[j]), rel=1e-9, abs=1e-9
            )
        else:
            assert not strict
        if len(set(s)) == n and len(set(c)) == n:  # distinct scores: the clean statement
            assert (i != j) == strict
        # no instance optimal for both <=> O(N) check; implies a strict pair disagreement
        A = {k for k in range(n) if s[k] == s[i]}
        L = {k for k in range(n) if c[k] == c[j]}
        none_common = not (A & L)
        assert none_common == (not any(s[k] == s[i] and c[k] == c[j] for k in range(n)))
        if none_common:
            assert strict


def test_reduction_counterexample_with_ties():
    """(f) with ties: a strict disagreement of (i*, j*) does not imply 'no instance is
    optimal for both'. P = (0, 2, 0), B = (2, 0, 1), p0 = 0, b0 = 1, lam = 2:
    S = (0, 2, 0), C = (4, 2, 2); instance 2 is optimal for both, yet i* = 0, j* = 1
    strictly disagree."""
    P, B = np.array([0, 2, 0]), np.array([2, 0, 1])
    assert pr.product_scores(P, B, 0, 1).tolist() == [0, 2, 0]
    assert pr.linear_scores(P, B, 2).tolist() == [4, 2, 2]
    i, j = pr.argmin_product(P, B, 0, 1), pr.argmin_linear(P, B, 2)
    assert (i, j) == (0, 1)
    assert bool(pr.disagrees(P[i], B[i], P[j], B[j], 2, 0, 1))


def test_scalar_inputs_with_exact_fallback():
    """0-d inputs on the exact (non-integer) path: a tie must come out as exactly 0."""
    assert int(pr.linear_sign(1721, 11, 1721, 11, F(0))) == 0
    assert int(pr.linear_sign(0, 0, 0, 0, 2.5)) == 0
    assert int(pr.product_sign(0, 5, 1, 1, F(1, 2), 1)) == 0  # (1/2)(6) = (3/2)(2)


def test_one_dimensional_argmin_with_exact_near_tie():
    """1-d inputs on the float path with a tie: lowest index, exactly."""
    assert pr.argmin_linear([0, 0], [0, 0], 2.5) == 0
    assert pr.argmin_product([0.5, 0.5], [1, 1]) == 0
    assert pr.argmin_product(np.array([0, 0]), np.array([0, 0]), 0, F(1, 3)) == 0
    assert pr.argmin_product([1.5, 0.5], [1, 2], F(1, 2), 0) == 0  # 2*1 = 1*2: tie
    assert pr.argmin_product([1.5, 0.5], [2, 1], F(1, 2), 0) == 1  # 2*2 > 1*1
