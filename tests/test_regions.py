"""Decision-region grid against exact brute force (Fractions) on small grids."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmetric_theory.core import kernel as predicates
from lmetric_theory.experiments.regions import (
    BOTH_A,
    BOTH_B,
    ONLY_LINEAR_B,
    ONLY_PRODUCT_B,
    classify,
    compute_regions,
)


def brute_code(pa, ba, pb, bb, lam, p0, b0) -> int:
    """Region code by exact rational arithmetic, ties keep A."""
    f = Fraction
    s_a = (f(pa) + f(p0)) * (f(ba) + f(b0))
    s_b = (f(pb) + f(p0)) * (f(bb) + f(b0))
    c_a = f(pa) + f(lam) * f(ba)
    c_b = f(pb) + f(lam) * f(bb)
    prod_b, lin_b = s_b < s_a, c_b < c_a
    if prod_b and lin_b:
        return BOTH_B
    if prod_b:
        return ONLY_PRODUCT_B
    if lin_b:
        return ONLY_LINEAR_B
    return BOTH_A


def brute_grid(rm) -> np.ndarray:
    out = np.empty(rm.region.shape, dtype=np.int8)
    for i, b in enumerate(rm.B):
        for j, p in enumerate(rm.P):
            out[i, j] = brute_code(rm.P_A, rm.B_A, float(p), float(b), rm.lam, rm.p0, rm.b0)
    return out


small_int = st.integers(min_value=0, max_value=40)


@settings(max_examples=60, deadline=None)
@given(
    pa=small_int,
    ba=st.integers(min_value=0, max_value=10),
    lam=st.integers(min_value=0, max_value=12),
    p0=st.integers(min_value=0, max_value=2),
    b0=st.integers(min_value=0, max_value=2),
)
def test_integer_grid_matches_brute_force_with_ties(pa, ba, lam, p0, b0):
    # Integer-valued grid points: many exact ties of both scores.
    rm = compute_regions(
        pa, ba, lam=lam, p0=p0, b0=b0, p_range=(0, 40), b_range=(0, 10), resolution=(41, 11)
    )
    np.testing.assert_array_equal(rm.region, brute_grid(rm))
    assert rm.disagreement_share == pytest.approx(
        np.isin(rm.region, (ONLY_PRODUCT_B, ONLY_LINEAR_B)).mean(), abs=0
    )
    assert sum(rm.region_shares) == pytest.approx(1.0)


@settings(max_examples=40, deadline=None)
@given(
    pa=st.floats(min_value=0, max_value=5000, allow_nan=False),
    ba=st.floats(min_value=0, max_value=64, allow_nan=False),
    lam=st.floats(min_value=0, max_value=2000, allow_nan=False),
    p0=st.sampled_from([0.0, 1.0, 16.0]),
    b0=st.sampled_from([0.0, 1.0, 0.5]),
    log=st.booleans(),
)
def test_float_grid_matches_brute_force(pa, ba, lam, p0, b0, log):
    rng = ((1.0, 6000.0), (0.25, 80.0)) if log else ((0.0, 6000.0), (0.0, 80.0))
    rm = compute_regions(
        pa, ba, lam=lam, p0=p0, b0=b0, p_range=rng[0], b_range=rng[1],
        log_p=log, log_b=log, resolution=(23, 17),
    )
    np.testing.assert_array_equal(rm.region, brute_grid(rm))


def test_share_is_argmin_difference_of_the_pair():
    rm = compute_regions(700, 6, lam=90, p0=0, b0=1, p_range=(0, 3000), b_range=(0, 20),
                         resolution=(60, 50))
    PB, BB = np.meshgrid(rm.P, rm.B, indexing="xy")  # rows = B, columns = P
    P = np.stack([np.full_like(PB, 700.0), PB], axis=-1)
    B = np.stack([np.full_like(BB, 6.0), BB], axis=-1)
    differ = predicates.argmin_product(P, B, 0, 1) != predicates.argmin_linear(P, B, 90)
    assert rm.disagreement_share == differ.mean()
    # Away from ties the strict predicate agrees too.
    strict = predicates.disagrees(700, 6, PB, BB, 90, 0, 1)
    np.testing.assert_array_equal(strict[~rm.ties], differ[~rm.ties])


def test_known_point_classification():
    # A = (1000 tokens, 4 requests), lam = 100, offsets 0/1: S_A = 5000, C_A = 1400.
    # B = (200, 12): S_B = 2600 < 5000 (product -> B); C_B = 1400 tie (linear keeps A).
    assert classify(1000, 4, 200, 12, 100) == ONLY_PRODUCT_B
    # B = (1100, 0): S_B = 1100 -> B; C_B = 1100 -> B.
    assert classify(1000, 4, 1100, 0, 100) == BOTH_B
    # B = (1300, 0.5): S_B = 1950 -> B ... C_B = 1350 -> B.
    assert classify(1000, 4, 1300, 0.5, 100) == BOTH_B
    # B = (1390, 0): C_B = 1390 < 1400 -> B; S_B = 1390 < 5000 -> B.
    # B = (3000, 0): C_B 3000 > 1400 -> A; S_B = 3000 < 5000 -> product B.
    assert classify(1000, 4, 3000, 0, 100) == ONLY_PRODUCT_B
    # B = (0, 60): S_B = 61 < 5000 -> B; C_B = 6000 -> A.
    assert classify(1000, 4, 0, 60, 100) == ONLY_PRODUCT_B
    # lam large: B = (0, 60), lam = 10: C_B = 600 < 1040 -> B.
    assert classify(1000, 4, 0, 60, 10) == BOTH_B
    # Product tie keeps A: S_B = (1000)(5) with B = (1000, 4); linear tie too.
    assert classify(1000, 4, 1000, 4, 100) == BOTH_A


def test_curves_and_intersections():
    pa, ba, lam, p0, b0 = 1500.0, 6.0, 120.0, 32.0, 1.0
    rm = compute_regions(pa, ba, lam=lam, p0=p0, b0=b0, p_range=(0, 4000), b_range=(0, 40))
    P = rm.P
    np.testing.assert_allclose(
        (P + p0) * (rm.product_curve + b0), (pa + p0) * (ba + b0), rtol=1e-12
    )
    np.testing.assert_allclose(P + lam * rm.linear_curve, pa + lam * ba, rtol=1e-9)
    assert rm.intersections[0] == (pa, ba)
    p2, b2 = rm.intersections[1]
    assert (p2 + p0) * (b2 + b0) == pytest.approx((pa + p0) * (ba + b0), rel=1e-12)
    assert p2 + lam * b2 == pytest.approx(pa + lam * ba, rel=1e-12)
    # lam = 0: the line is vertical in the (P, B) plane and meets the hyperbola only at A.
    assert len(compute_regions(pa, ba, lam=0.0).intersections) == 1
    # Tangent case: lam equals the product's own rate at A -> only A.
    lam_a = (pa + p0) / (ba + b0)
    rm = compute_regions(pa, ba, lam=lam_a, p0=p0, b0=b0)
    assert len(rm.intersections) == 1
    assert rm.lam_eff_at_A == pytest.approx(lam_a)


def test_disagreement_lies_between_the_curves():
    # On a column P (x) away from the intersections, the disagreeing B values form the
    # interval between the hyperbola and the line.
    rm = compute_regions(1024, 8, lam=300, p_range=(0, 4096), b_range=(0, 32),
                         resolution=(200, 400))
    for j in range(0, 200, 7):
        lo, hi = sorted((rm.product_curve[j], rm.linear_curve[j]))
        col = np.isin(rm.region[:, j], (ONLY_PRODUCT_B, ONLY_LINEAR_B))
        inside = (rm.B > lo) & (rm.B < hi)
        np.testing.assert_array_equal(col, inside)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"p_range": (5, 5)}, "p_range"),
        ({"b_range": (3, 1)}, "b_range"),
        ({"p_range": (0, 10), "log_p": True}, "log axis"),
        ({"resolution": (1, 400)}, "resolution[0]"),
        ({"resolution": (400, 5000)}, "resolution[1]"),
        ({"lam": float("nan")}, "lam"),
        ({"p0": float("inf")}, "p0"),
        ({"lam": "1+1"}, "lam"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, needle):
    args = {"lam": 10.0, **kwargs}
    with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        compute_regions(100, 2, **args)
