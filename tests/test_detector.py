"""Detector: verdicts against exact brute force (Fractions), the predicates, hand-made cases."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmetric_theory.core import kernel as pr
from lmetric_theory.detector import (
    FINDING_KINDS,
    Detector,
    LinearReference,
    Mitigation,
    MitigationKind,
    Severity,
    Snapshot,
    Verdict,
)

# --------------------------------------------------------------------- brute force


def _argmin(scores: list[Fraction]) -> int:
    return min(range(len(scores)), key=lambda k: (scores[k], k))


def brute(P, B, lam, lo, hi, p0, b0, factor=10.0):
    """Every verdict field from first principles in exact rational arithmetic."""
    P = [Fraction(x) for x in P]
    B = [Fraction(x) for x in B]
    lam, lo, hi, p0, b0 = (Fraction(x) for x in (lam, lo, hi, p0, b0))
    n = len(P)
    S = [(p + p0) * (b + b0) for p, b in zip(P, B, strict=True)]

    def lin(rate: Fraction) -> int:
        return _argmin([p + rate * b for p, b in zip(P, B, strict=True)])

    i, j = _argmin(S), lin(lam)
    rest = [k for k in range(n) if k != i]
    runner = min(rest, key=lambda k: (S[k], k)) if rest else -1
    tie = bool(rest) and S[runner] == S[i]
    r = j if j != i else runner
    zp = any(p + p0 == 0 and b > 0 for p, b in zip(P, B, strict=True))
    idle = sum(1 for b in B if b + b0 == 0) >= 2
    # fragile: the linear choice is piecewise constant in the rate between break-even
    # points, so the band's ends, its break-even points and midpoints cover every piece
    pts = {lo, hi}
    for a in range(n):
        for c in range(n):
            if B[a] != B[c]:
                x = (P[c] - P[a]) / (B[a] - B[c])
                if lo <= x <= hi:
                    pts.add(x)
    pts_sorted = sorted(pts)
    pts |= {(x + y) / 2 for x, y in zip(pts_sorted, pts_sorted[1:], strict=False)}
    fragile = i == j and any(lin(x) != i for x in pts)
    if r >= 0:
        num, den = P[i] + P[r] + 2 * p0, B[i] + B[r] + 2 * b0
        le = float(num / den) if den else (float("inf") if num else float("nan"))
        ls = float((P[r] - P[i]) / (B[i] - B[r])) if B[i] != B[r] else float("nan")
    else:
        le = ls = float("nan")
    extreme = np.isfinite(le) and (le < float(lo) / factor or le > float(hi) * factor)
    return {
        "product_choice": i,
        "linear_choice": j,
        "disagrees": i != j,
        "rival": r,
        "fragile": fragile,
        "zero_prefill": zp,
        "idle_tie": idle,
        "exact_tie": tie and not (zp or idle),
        "extreme_operating_point": bool(extreme),
        "lambda_eff": le,
        "lambda_star": ls,
        "regret": float((P[i] - P[j]) + lam * (B[i] - B[j])),
    }


def _kinds(b: dict) -> set[str]:
    names = {"disagrees": "disagreement"}
    return {
        names.get(k, k)
        for k in ("disagrees", "fragile", "zero_prefill", "idle_tie", "exact_tie",
                  "extreme_operating_point")
        if b[k]
    }


def _same_float(a: float, b: float) -> bool:
    return (np.isnan(a) and np.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=1e-12)


def _same_verdict(a: Verdict, b: Verdict) -> bool:
    """Field-wise equality with NaN == NaN."""
    for name in Verdict.__slots__:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, float) and isinstance(y, float):
            if not (x == y or (np.isnan(x) and np.isnan(y))):
                return False
        elif x != y:
            return False
    return True


RATES = [0, 1, 2.5, 7, 0.1, 1 / 3, 12.75, 40]
BANDS = [(None, None), (1, 7), (0.1, 40), (2.5, 2.5), (0, 100)]


@st.composite
def decisions(draw, max_n: int = 6, max_p: int = 60, max_b: int = 6):
    n = draw(st.integers(1, max_n))
    P = draw(st.lists(st.integers(0, max_p), min_size=n, max_size=n))
    B = draw(st.lists(st.integers(0, max_b), min_size=n, max_size=n))
    return P, B


@st.composite
def settings_(draw):
    lam = draw(st.sampled_from(RATES))
    lo, hi = draw(st.sampled_from(BANDS))
    if lo is None or not lo <= lam <= hi:
        lo = hi = lam
    p0 = draw(st.sampled_from([0, 1, 16]))
    b0 = draw(st.sampled_from([0, 1]))
    return lam, lo, hi, p0, b0


def _detector(lam, lo, hi, p0, b0) -> Detector:
    return Detector(LinearReference(lam, lo, hi), p0, b0)


def _assert_matches(v: Verdict, b: dict) -> None:
    assert v.product_choice == b["product_choice"]
    assert v.linear_choice == b["linear_choice"]
    assert v.disagrees == b["disagrees"]
    assert v.rival == b["rival"]
    assert v.fragile == b["fragile"]
    assert set(v.kinds) == _kinds(b)
    assert _same_float(v.lambda_eff, b["lambda_eff"])
    assert _same_float(v.lambda_star, b["lambda_star"])
    assert v.regret_tokens == pytest.approx(b["regret"], abs=1e-9)
    assert v.regret_tokens >= 0


@settings(max_examples=400, deadline=None)
@given(decisions(), settings_())
def test_check_matches_brute_force(dec, cfg):
    P, B = dec
    v = _detector(*cfg).check(Snapshot(P, B))
    _assert_matches(v, brute(P, B, *cfg))


@settings(max_examples=150, deadline=None)
@given(st.lists(decisions(max_n=5), min_size=1, max_size=8), settings_(), st.integers(2, 5))
def test_check_many_matches_check_and_brute(decs, cfg, n):
    # pad/cut every decision to n instances so they stack into (D, N)
    P = np.array([(p * n)[:n] for p, _ in decs])
    B = np.array([(b * n)[:n] for _, b in decs])
    det = _detector(*cfg)
    vs = det.check_many(P, B)
    assert len(vs) == len(decs)
    for k in range(len(decs)):
        one = det.check(Snapshot(P[k], B[k]))
        assert _same_verdict(vs[k], one)
        _assert_matches(vs[k], brute(P[k].tolist(), B[k].tolist(), *cfg))


@settings(max_examples=100, deadline=None)
@given(decisions(max_n=5), settings_(), st.integers(1, 7))
def test_float_inputs_go_the_exact_general_path(dec, cfg, scale):
    # non-integral prefill tokens: float arrays, decided exactly by the predicates
    P = [Fraction(p, 8) if scale % 2 else Fraction(p, 3) for p in dec[0]]
    Pf = [float(x) for x in P]
    v = _detector(*cfg).check(Snapshot(Pf, dec[1]))
    b = brute([Fraction(x) for x in Pf], dec[1], *cfg)
    assert (v.product_choice, v.linear_choice, v.rival) == (
        b["product_choice"], b["linear_choice"], b["rival"]
    )
    assert set(v.kinds) == _kinds(b)


@settings(max_examples=200, deadline=None)
@given(decisions(), settings_())
def test_verdict_agrees_with_predicates(dec, cfg):
    P, B = dec
    lam, lo, hi, p0, b0 = cfg
    v = _detector(*cfg).check(Snapshot(P, B))
    Pa, Ba = np.array(P), np.array(B)
    assert v.product_choice == pr.argmin_product([Pa], [Ba], p0, b0)[0]
    assert v.linear_choice == pr.argmin_linear([Pa], [Ba], lam)[0]
    i, j = v.product_choice, v.linear_choice
    S = pr.product_scores(Pa, Ba, p0, b0)
    unique_min = np.count_nonzero(S == S.min()) == 1
    C = [Fraction(p) + Fraction(lam) * b for p, b in zip(P, B, strict=True)]
    unique_lin = C.count(min(C)) == 1
    if unique_min and unique_lin:
        # the theory: argmins differ exactly when the pair (i, j) disagrees
        # (1-element arrays: scalar calls hit a predicates bug on exact zeros, reported)
        assert v.disagrees == bool(pr.disagrees([P[i]], [B[i]], [P[j]], [B[j]], lam, p0, b0)[0])
    if v.rival >= 0:
        r = v.rival
        le = pr.lambda_eff([P[i]], [B[i]], [P[r]], [B[r]], p0, b0)[0]
        assert _same_float(v.lambda_eff, float(le))
        assert _same_float(v.lambda_star, float(pr.lambda_star([P[i]], [B[i]], [P[r]], [B[r]])[0]))
    assert v.regret_tokens == pytest.approx(float(pr.regret_tokens(P[i], B[i], P[j], B[j], lam)))
    if v.disagrees and unique_min and unique_lin and lo < hi:
        assert pr.band_disagrees([P[i]], [B[i]], [P[j]], [B[j]], lo, hi, p0, b0)[0]


def test_large_denominator_rate_resolves_near_ties_exactly():
    # lam = 0.1 (binary 0.1000000000000000055...): P + lam*B ties only in float
    lam = 0.1
    P, B = [1, 0, 0, 2], [0, 10, 10, 0]
    exact = [Fraction(p) + Fraction(lam) * b for p, b in zip(P, B, strict=True)]
    det = Detector(lam)
    v = det.check(Snapshot(P, B))
    assert v.linear_choice == _argmin(exact) == 0
    assert det.check_many([P], [B]).linear_choice[0] == 0


# -------------------------------------------------------------- every finding kind


def test_no_findings_on_a_clean_decision():
    v = Detector(10).check(Snapshot([100, 300, 500], [2, 1, 4]))
    assert v.findings == () and not v.flagged and v.mitigation is None
    assert v.product_choice == v.linear_choice == 0


def test_disagreement_finding():
    # product: (0+100)(0+1)=100 vs (50)(1+1)=100... pick distinct: P=(100, 40), B=(0, 1)
    det = Detector(100)
    v = det.check(Snapshot([100, 40], [0, 1], instance_ids=["a", "b"]))
    # product 100 vs 80 -> b; linear 100 vs 140 -> a
    assert (v.product_choice, v.linear_choice, v.disagrees) == (1, 0, True)
    assert v.regret_tokens == pytest.approx(40 + 100 * 1 - 100)
    (f,) = [f for f in v.findings if f.kind == "disagreement"]
    assert f.severity is Severity.WARNING
    assert "b" in f.message and "a" in f.message and "regret 40" in f.message
    assert f.mitigation.kind is MitigationKind.FALLBACK_REFERENCE
    assert det.mitigated_choice(Snapshot([100, 40], [0, 1])) == 0


def test_fragile_finding():
    # P=(100, 40), B=(0, 1): linear picks 1 for lam < 60, 0 for lam > 60
    det = Detector(LinearReference.band(10, 80, lam=30))
    v = det.check(Snapshot([100, 40], [0, 1]))
    assert not v.disagrees and v.fragile and "fragile" in v.kinds
    assert det.check(Snapshot([100, 40], [0, 1])).fragile
    # same band without the break-even point inside: not fragile
    assert not Detector(LinearReference.band(10, 50, lam=30)).check(
        Snapshot([100, 40], [0, 1])
    ).fragile


def test_zero_prefill_hot_spot():
    det = Detector(50, 0, 1)
    snap = Snapshot([0, 500, 800], [40, 0, 1])  # (0+16)(41)=656 > (516)(1)
    v = det.check(snap)
    assert v.product_choice == 0 and "zero_prefill" in v.kinds
    (f,) = [f for f in v.findings if f.kind == "zero_prefill"]
    assert f.severity is Severity.CRITICAL and f.instances == (0,)
    assert f.mitigation == Mitigation.prefill_block(16)
    assert v.mitigation == Mitigation.prefill_block(16)  # most severe finding wins
    # with one block of prefill offset the loaded instance no longer wins
    assert det.mitigated_choice(snap) == 1
    # p0 = 1 block already: no hot-spot
    assert "zero_prefill" not in Detector(50, 16, 1).check(snap).kinds


def test_idle_tie():
    det = Detector(50, 0, 0)
    snap = Snapshot([900, 10, 500], [0, 3, 0])
    v = det.check(snap)
    assert v.product_choice == 0 and "idle_tie" in v.kinds and "exact_tie" not in v.kinds
    (f,) = [f for f in v.findings if f.kind == "idle_tie"]
    assert f.instances == (0, 2)
    assert f.mitigation == Mitigation.batch_offset(1)
    # b0 = 1: (901)(1) vs (11)(4)=44 vs (501)(1) -> instance 1
    assert det.mitigated_choice(snap, Mitigation.batch_offset(1)) == 1
    assert det.mitigated_choice(snap) == 1


def test_exact_tie_and_tie_breaks():
    # scores: (100)(3)=300, (150)(2)=300, (300)(1)=300
    snap = Snapshot([100, 150, 300], [2, 1, 0], uncached_tokens=[100, 20, 300])
    det = Detector(100, 0, 1)
    v = det.check(snap)
    assert v.product_choice == 0 and "exact_tie" in v.kinds
    (f,) = [f for f in v.findings if f.kind == "exact_tie"]
    assert f.instances == (0, 1, 2) and f.mitigation == Mitigation.tie_break("load")
    assert det.mitigated_choice(snap, Mitigation.tie_break("load")) == 2
    assert det.mitigated_choice(snap, Mitigation.tie_break("cache")) == 1
    assert Detector(100, tie_break="cache").check(snap).findings[-1].mitigation == (
        Mitigation.tie_break("cache")
    )


def test_extreme_operating_point_and_load_cap():
    # lam_eff of (0, 1) = (1+3)/2 / ((40+40)/2 + 1) ~ 0.05, band [100, 200]
    snap = Snapshot([1, 3], [40, 40])
    det = Detector(LinearReference.band(100, 200), load_cap=32)
    v = det.check(snap)
    assert "extreme_operating_point" in v.kinds
    (f,) = [f for f in v.findings if f.kind == "extreme_operating_point"]
    assert "below" in f.message and f.mitigation == Mitigation.load_cap(32)
    snap2 = Snapshot([1, 3, 5000], [40, 40, 2])
    assert det.mitigated_choice(snap2, Mitigation.load_cap(32)) == 2
    # above the band: fallback
    v = Detector(LinearReference.band(0.1, 0.2)).check(Snapshot([1000, 2000], [0, 0]))
    assert "extreme_operating_point" in v.kinds
    assert v.findings[-1].mitigation.kind is MitigationKind.FALLBACK_REFERENCE


def test_single_instance_is_never_flagged_for_pairs():
    v = Detector(10).check(Snapshot([5], [2]))
    assert (v.product_choice, v.linear_choice, v.rival) == (0, 0, -1)
    assert np.isnan(v.lambda_eff) and np.isnan(v.lambda_star) and v.findings == ()


def test_mitigation_override():
    det = Detector(100, mitigation=Mitigation.load_cap(8))
    v = det.check(Snapshot([100, 40], [0, 1]))
    assert all(f.mitigation == Mitigation.load_cap(8) for f in v.findings)
    det = Detector(100, mitigation={"disagreement": Mitigation.batch_offset(2)})
    assert det.check(Snapshot([100, 40], [0, 1])).mitigation == Mitigation.batch_offset(2)
    with pytest.raises(ValueError, match="unknown finding kind 'nope'"):
        Detector(100, mitigation={"nope": Mitigation.fallback()})


# ------------------------------------------------------------------ check_many


def test_check_many_columns_and_counts():
    rng = np.random.default_rng(7)
    P = rng.integers(0, 2000, (500, 8))
    B = rng.integers(0, 20, (500, 8))
    P[:50, 3] = 0  # hot-spots
    det = Detector(LinearReference.band(20, 80, lam=40))
    vs = det.check_many(P, B)
    counts = vs.counts()
    assert set(counts) == set(FINDING_KINDS)
    assert counts["disagreement"] == int(vs.disagrees.sum()) > 0
    assert counts["zero_prefill"] >= 45
    for k in range(0, 500, 25):
        v = det.check(Snapshot(P[k], B[k]))
        assert _same_verdict(vs[k], v)
    assert vs.flagged.sum() == sum(1 for v in vs if v.flagged)
    assert vs.product_choice.tolist() == pr.argmin_product(P, B, 0, 1).tolist()
    assert vs.linear_choice.tolist() == pr.argmin_linear(P, B, 40.0).tolist()


def test_check_many_matches_predicates_on_large_random_block():
    rng = np.random.default_rng(3)
    P = rng.integers(0, 50, (70_000, 6))  # crosses the internal chunk size
    B = rng.integers(0, 5, (70_000, 6))
    vs = Detector(2.5, 0, 0).check_many(P, B)
    assert np.array_equal(vs.product_choice, pr.argmin_product(P, B, 0, 0))
    assert np.array_equal(vs.linear_choice, pr.argmin_linear(P, B, 2.5))


def test_check_many_accepts_float_arrays_with_integral_values():
    P = np.array([[100.0, 40.0]])
    vs = Detector(100).check_many(P, np.array([[0.0, 1.0]]))
    assert vs.prefill_tokens.dtype == np.int64 and bool(vs.disagrees[0])


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("P", "B", "match"),
    [
        ([1.0, float("nan")], [1, 2], r"prefill_tokens: NaN value at index 1"),
        ([1, 2], [1, float("inf")], r"batch_size: infinite value at index 1"),
        ([1, -2], [1, 2], r"prefill_tokens: negative value -2 at index 1"),
        ([1, 2, 3], [1, 2], r"batch_size: length 2 does not match prefill_tokens length 3"),
        ([], [], r"prefill_tokens: empty"),
        ([[1, 2]], [[1, 2]], r"prefill_tokens: expected shape \(N,\)"),
        (["a", "b"], [1, 2], r"prefill_tokens\[0\]: expected a finite number"),
        ([2**40, 1], [1, 2], r"prefill_tokens: value .* too large"),
    ],
)
def test_snapshot_bad_input(P, B, match):
    with pytest.raises(ValueError, match=match):
        Snapshot(P, B)


def test_snapshot_optional_fields_validated():
    with pytest.raises(ValueError, match="instance_ids: length 1 does not match"):
        Snapshot([1, 2], [1, 2], instance_ids=["a"])
    with pytest.raises(ValueError, match="waiting: negative value"):
        Snapshot([1, 2], [1, 2], waiting=[0, -1])
    with pytest.raises(ValueError, match=r"kv_usage: value 1.5 at index 0 is not a fraction"):
        Snapshot([1, 2], [1, 2], kv_usage=[1.5, 0.2])
    with pytest.raises(ValueError, match="uncached_tokens: 5 at index 0 exceeds prefill_tokens 1"):
        Snapshot([1, 2], [1, 2], uncached_tokens=[5, 0])
    with pytest.raises(ValueError, match="time_s: expected a finite number, got NaN"):
        Snapshot([1, 2], [1, 2], time_s=float("nan"))
    with pytest.raises(ValueError, match="bogus: unknown field"):
        Snapshot.from_dict({"prefill_tokens": [1], "batch_size": [1], "bogus": 1})
    with pytest.raises(ValueError, match="batch_size: missing"):
        Snapshot.from_dict({"prefill_tokens": [1]})


def test_snapshot_constructors():
    s = Snapshot.from_split([10, 0], [100, 5], [1, 2], instance_ids=["a", "b"], time_s=3)
    assert s.prefill_tokens.tolist() == [110, 5] and s.time_s == 3.0
    assert Snapshot.from_split([10, 0], [100, 5], [1, 2], prefill_definition="uncached"
                               ).prefill_tokens.tolist() == [10, 0]
    with pytest.raises(ValueError, match="prefill_definition: unknown"):
        Snapshot.from_split([1], [1], [1], prefill_definition="all")
    d = s.to_dict()
    s2 = Snapshot.from_dict(d)
    assert s2.to_dict() == d
    fast = Snapshot.from_arrays(np.array([3, 4]), np.array([0, 1]), validate=False)
    assert _same_verdict(Detector(5).check(fast), Detector(5).check(Snapshot([3, 4], [0, 1])))
    assert Snapshot([1.0, 2.0], [0, 1]).prefill_tokens.dtype == np.int64
    assert Snapshot([1.5, 2.0], [0, 1]).prefill_tokens.dtype == np.float64


def test_check_many_bad_input():
    det = Detector(10)
    with pytest.raises(ValueError, match="batch_size: shape"):
        det.check_many(np.ones((3, 4)), np.ones((3, 5)))
    with pytest.raises(ValueError, match=r"prefill_tokens: NaN value at index \(1, 2\)"):
        P = np.ones((3, 4))
        P[1, 2] = np.nan
        det.check_many(P, np.ones((3, 4)))
    with pytest.raises(ValueError, match="batch_size: negative"):
        det.check_many(np.ones((2, 2)), -np.ones((2, 2)))


def test_reference_and_detector_bad_input():
    with pytest.raises(ValueError, match="lam_lo: band lower end 5.0 exceeds upper end"):
        LinearReference.band(5, 1)
    with pytest.raises(ValueError, match="lam_lo: band lower end"):
        LinearReference(3, 5, 1)
    with pytest.raises(ValueError, match="lam: NaN"):
        LinearReference(float("nan"))
    with pytest.raises(ValueError, match="lam: negative"):
        LinearReference(-1)
    with pytest.raises(ValueError, match="lam_hi: infinite"):
        LinearReference(1, 0, float("inf"))
    with pytest.raises(ValueError, match=r"lam: 9.0 lies outside the band"):
        LinearReference(9, 1, 5)
    with pytest.raises(ValueError, match="prefill_offset: negative"):
        Detector(1, -1)
    with pytest.raises(ValueError, match="batch_offset: NaN"):
        Detector(1, 0, float("nan"))
    with pytest.raises(ValueError, match="extreme_factor"):
        Detector(1, extreme_factor=0.5)
    with pytest.raises(ValueError, match="tie_break: unknown"):
        Detector(1, tie_break="random")
    with pytest.raises(ValueError, match="mitigation: load_cap needs a positive"):
        Mitigation.load_cap(0)
    with pytest.raises(ValueError, match="mitigation: unknown kind"):
        Mitigation("teleport")


# ------------------------------------------------------------------ references


def test_reference_from_latency_model_derivation():
    # c_pf 50 us/token; one more sequence costs 1 ms + 1e-7 s * 2000 tokens per iteration
    ref = LinearReference.from_latency_model(
        c_pf=5e-5, c_dec=1e-3, c_kv=1e-7, context_tokens=2000, iterations=1, band_factor=2
    )
    assert ref.lam == pytest.approx((1e-3 + 1e-7 * 2000) / 5e-5)  # 24 tokens per slot
    assert (ref.lam_lo, ref.lam_hi) == pytest.approx((12.0, 48.0))
    assert ref.source == "latency_model" and "c_pf" in ref.provenance
    ref100 = LinearReference.from_latency_model(c_pf=5e-5, c_dec=1e-3, iterations=100)
    assert ref100.lam == pytest.approx(2000.0) and not ref100.has_band
    with pytest.raises(ValueError, match="c_pf: must be > 0"):
        LinearReference.from_latency_model(c_pf=0, c_dec=1e-3)
    with pytest.raises(ValueError, match="band_factor: must be >= 1"):
        LinearReference.from_latency_model(c_pf=1e-4, c_dec=1e-3, band_factor=0.5)


def test_reference_tuned_records_provenance():
    ref = LinearReference.tuned(37.0, objective="mean_ttft_s", source="sweep on trace X",
                                lam_lo=30, lam_hi=45)
    assert (ref.source, ref.objective, ref.provenance) == ("tuned", "mean_ttft_s",
                                                           "sweep on trace X")
    assert ref.has_band and Detector(ref).reference is ref
    assert LinearReference.band(10, 30).lam == 20.0


@pytest.mark.parametrize(
    "mitigation",
    [
        Mitigation.prefill_block(16),
        Mitigation.batch_offset(1),
        Mitigation.tie_break("load"),
        Mitigation.tie_break("cache"),
        Mitigation.fallback(),
        Mitigation.load_cap(3),
        Mitigation.none(),
    ],
)
@pytest.mark.parametrize("offsets", [(0, 1), (0, 0), (16, 1)])
def test_mitigated_choices_match_per_decision(mitigation, offsets):
    rng = np.random.default_rng(11)
    P = rng.integers(0, 6, (300, 5)) * 10
    B = rng.integers(0, 5, (300, 5))
    U = np.minimum(P, rng.integers(0, 60, (300, 5)))
    det = Detector(12.5, *offsets)
    got = det.mitigated_choices(P, B, mitigation, uncached_tokens=U)
    for k in range(300):
        snap = Snapshot(P[k], B[k], uncached_tokens=U[k])
        assert got[k] == det.mitigated_choice(snap, mitigation), k
    vs = det.check_many(P, B)
    only = det.mitigated_choices(P, B, mitigation, uncached_tokens=U, only=vs.flagged)
    assert np.array_equal(only[~vs.flagged], vs.product_choice[~vs.flagged])


def test_snapshot_int64_fast_validation_still_rejects():
    with pytest.raises(ValueError, match="batch_size: negative value -1 at index 2"):
        Snapshot(np.array([1, 2, 3]), np.array([0, 0, -1]))
    with pytest.raises(ValueError, match="prefill_tokens: value .* too large"):
        Snapshot(np.array([2**33, 2]), np.array([0, 0]))
