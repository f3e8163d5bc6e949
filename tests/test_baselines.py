"""Tests of the paper's baseline catalog and of the LMetric variants.

Each policy gets a hand-computed decision where its formula picks a given instance (and one
where the tie rule decides), and a brute-force comparison of its choice with the formula
evaluated directly in exact rational arithmetic.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from math import ceil, floor
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmetric_theory.core.kernel import argmin_product
from lmetric_theory.policies.base import DecisionView
from lmetric_theory.policies.baselines import BASELINE_POLICIES, CATALOG_TIE_RULES
from lmetric_theory.policies.lmetric_variants import (
    LMETRIC_VARIANTS,
    VARIANT_NAMES,
    variant_scores,
    variant_signals,
)
from lmetric_theory.policies.registry import make_policy, policy_names

_VIEW_FIELDS = {f.name for f in dataclasses.fields(DecisionView)}


def rview(hit, *, T=96, s=16, rq=None, bs=None, tok=None, waiting=None, running=None,
          inew=None):
    """A decision view with the router-side fields (a DecisionView when it has them all)."""
    n = len(hit)
    z = [0] * n
    a = lambda x: np.asarray(x if x is not None else z, np.int64)  # noqa: E731
    fields = dict(
        decision=0, time_s=0.0, input_tokens=T,
        uncached=a([max(T - h * s, 0) for h in hit]), queued=a(rq), running=a(running),
        waiting=a(waiting), kv_usage=np.zeros(n, np.float32),
        hit_blocks=a(hit), block_size=s, router_queued=a(rq), router_inflight=a(bs),
        router_all_tokens=a(tok), router_inflight_new_tokens=a(inew),
    )
    if inew is None:
        del fields["router_inflight_new_tokens"]
    if set(fields) <= _VIEW_FIELDS:
        return DecisionView(**fields)
    return SimpleNamespace(**fields)


def pick(spec, v, seed=0):
    return make_policy(spec, seed=seed).choose(v)


# ----------------------------------------------------------------------- registry


def test_every_catalog_policy_is_registered_with_formula_and_source() -> None:
    names = set(policy_names())
    for cls in BASELINE_POLICIES:
        assert cls.name in names
        assert cls.formula and cls.source and cls.signals
        assert dataclasses.fields(cls.Params)[-1].name == "tie"
        assert make_policy(cls.name).params.tie == "rust"


@pytest.mark.parametrize("spec, match", [
    ("vllm-v1:tie=first", "is not one of rust, lowest, highest, random"),
    ("bailian:norm=zscore", "is not one of listing, minmax"),
    ("bailian:alpha=-1", "alpha must be >= 0"),
    ("aibrix:std_factor=-1/2", "std_factor must be >= 0"),
    ("preble:threshold=3/2", "threshold must be in"),
    ("most-hit-load:T=0", "T must be >= 1"),
    ("dynamo:w=-1", "w must be >= 0"),
    ("bounded-most-hit:bound=1.5", "cannot read '1.5' as int"),
])
def test_bad_parameters_are_refused(spec, match) -> None:
    with pytest.raises(ValueError, match=match):
        make_policy(spec)


def test_block_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="block_size must be > 0"):
        pick("least-wait-token", rview([0, 0], s=0))


# ------------------------------------------------------------------- hand cases


def test_vllm_v1_joins_shortest_weighted_queue() -> None:
    # 4*waiting + bs = 4, 3, 9
    assert pick("vllm-v1", rview([0, 0, 0], waiting=[1, 0, 2], bs=[0, 3, 1])) == 1
    tie = rview([0, 0], waiting=[0, 1], bs=[4, 0])  # 4 and 4
    assert pick("vllm-v1", tie) == 0
    assert pick("vllm-v1:tie=highest", tie) == 1


def test_least_wait_token() -> None:
    # new = 96, 64, 16; prefill = 96, 74, 116
    assert pick("least-wait-token", rview([0, 2, 5], rq=[0, 10, 100])) == 1


def test_least_waiting_ties_to_first_minimum() -> None:
    v = rview([0, 0, 0], waiting=[3, 1, 1])
    assert pick("least-waiting", v) == 1
    assert pick("least-waiting:tie=highest", v) == 2


def test_least_bs_least_active_least_token_load() -> None:
    assert pick("least-bs", rview([0, 0, 0], bs=[2, 1, 5])) == 1
    assert pick("least-active", rview([0, 0, 0], tok=[500, 300, 301])) == 1
    # queued + all_tokens = 500, 550, 600
    assert pick("least-token-load", rview([0, 0, 0], rq=[0, 250, 0], tok=[500, 300, 600])) == 0


def test_most_hit_ties_to_last_maximum() -> None:
    v = rview([2, 5, 5])
    assert pick("most-hit", v) == 2  # Rust max_by: the last maximum
    assert pick("most-hit:tie=lowest", v) == 1


def test_bounded_most_hit_and_its_fallback() -> None:
    # instance 0 is over the bound; among 1 and 2 the most hit blocks
    assert pick("bounded-most-hit", rview([6, 2, 1], rq=[3000, 100, 0])) == 1
    # all over the bound: fewest prefill tokens 4+3000, 96+2500, 96+2049
    assert pick("bounded-most-hit", rview([6, 0, 0], rq=[3000, 2500, 2049])) == 2


def test_dynamo_prefill_logit() -> None:
    # T=100: new = 100, 36, 4; prefill = 100, 76, 54; logit = p/16 + floor(p/16)
    # = 12.25, 8.75, 6.375
    assert pick("dynamo", rview([0, 4, 6], T=100, rq=[0, 40, 50])) == 2


def test_dynamo_truncation_creates_a_tie() -> None:
    # prefill = 17 and 16 tokens; w = 1/1000: 1000 * logit = 1001.0625 and 1001
    v = rview([0, 0], T=1, rq=[16, 15])
    assert pick("dynamo:w=1/1000,scale=0", v) == 1
    assert pick("dynamo:w=1/1000", v) == 0  # truncated tie, first minimum


def test_dynamo_po_decode_logit() -> None:
    # T=100: new = 100, 4, 68; new_blocks = 7, 1, 5; decode = 0, 40, 1
    # logit = 13.25, 41.25, 10.25
    assert pick("dynamo-po", rview([0, 6, 2], T=100, tok=[0, 640, 16])) == 2


def test_bailian_weights_listing_and_minmax() -> None:
    v = rview([0, 3, 6], bs=[2, 4, 0], tok=[100, 400, 200])
    # hit% = 0, 1/2, 1; 1 - bs/4 = 1/2, 0, 1; 1 - tok/400 = 3/4, 0, 1/2
    w = make_policy("bailian").weights(v)
    assert w == [Fraction(3, 40) + Fraction(9, 80), Fraction(7, 20), Fraction(7, 10) + Fraction(3, 20)
                 + Fraction(3, 40)]
    # min-max: tokens (400 - tok) / 300 = 1, 0, 2/3
    w = make_policy("bailian:norm=minmax").weights(v)
    assert w == [Fraction(3, 40) + Fraction(3, 20), Fraction(7, 20),
                 Fraction(7, 10) + Fraction(3, 20) + Fraction(1, 10)]


def test_bailian_draws_only_positive_weights() -> None:
    v = rview([0, 0, 3], bs=[4, 4, 0], tok=[10, 10, 0])  # weights 0, 0, 1
    assert {pick("bailian", v, seed=k) for k in range(40)} == {2}
    dead = rview([0, 0], bs=[3, 3], tok=[7, 7])  # every weight 0: the first instance
    assert {pick("bailian", dead, seed=k) for k in range(10)} == {0}


def test_aibrix_imbalance_gate() -> None:
    # gap 10 > 8: only the least-loaded instance is a candidate, whatever its hit
    assert pick("aibrix", rview([0, 6, 6], bs=[0, 10, 3])) == 0


def test_aibrix_threshold_hit_then_batch() -> None:
    # bs = 2, 3, 9: mean 14/3, sample std ~3.79, threshold ~8.45 excludes instance 2
    assert pick("aibrix", rview([1, 4, 6], bs=[2, 3, 9])) == 1
    assert pick("aibrix", rview([4, 4, 6], bs=[2, 3, 9])) == 0  # equal hit: smaller bs
    tie = rview([4, 4, 6], bs=[3, 3, 9])
    assert pick("aibrix", tie) == 0
    assert pick("aibrix:tie=highest", tie) == 1


def test_preble_two_stages() -> None:
    # matched fraction 2/3 on 0, 1/6 on 1, 1/2 (not > 1/2) on 2
    assert pick("preble", rview([4, 1, 3])) == 0
    # nobody above 1/2: new + all_tokens = 64+500, 80+100, 96+150
    assert pick("preble", rview([2, 1, 0], tok=[500, 100, 150])) == 1
    tie = rview([4, 4, 0])
    assert pick("preble", tie) == 1  # last maximum
    assert pick("preble:tie=lowest", tie) == 0


def test_most_hit_load() -> None:
    # n_hit = 0, 1/2, 1; load = 1/2, 1/2, 0 (200 >= T): 0.5, 5.5, 10
    assert pick("most-hit-load", rview([0, 2, 4], waiting=[0, 0, 200])) == 2
    # n_hit = 0, 1, 1: 0.5, 10.5, 10
    assert pick("most-hit-load", rview([0, 4, 4], waiting=[0, 0, 200])) == 1


def test_most_hit_load_truncation_tie() -> None:
    # load-aware: waiting 1 -> 127/256, waiting 2 -> 126/256; scale 100 truncates both to 49
    v = rview([0, 0], waiting=[1, 2])
    assert pick("most-hit-load:scale=0", v) == 0
    assert pick("most-hit-load:scale=100", v) == 1  # tie, last maximum
    assert pick("most-hit-load:scale=100,tie=lowest", v) == 0


def test_most_hit_load_active() -> None:
    # n_hit = 1, 1, 0; load 1/2; n_kv = (500 - tok)/500 = 4/5, 0, 1: 11.3, 10.5, 1.5
    assert pick("most-hit-load-active", rview([4, 4, 0], tok=[100, 500, 0])) == 0


# -------------------------------------------------------------------- LMetric variants


def _variant_view():
    # T=100, s=16: new = 100, 68, 36
    return rview([0, 2, 4], T=100, rq=[50, 0, 200], bs=[1, 5, 2], tok=[300, 900, 100],
                 running=[1, 2, 0], inew=[10, 20, 30])


@pytest.mark.parametrize("name, P, B, choice", [
    ("paper", [150, 68, 236], [1, 5, 2], 0),  # 300, 408, 708
    ("llm-d", [96, 64, 32], [1, 5, 2], 2),  # full blocks only: 192, 384, 96
    ("dynamo", [Fraction(150, 16), Fraction(68, 16), Fraction(236, 16)], [18, 56, 6], 2),
    ("sglang-fork", [110, 88, 66], [1, 5, 2], 2),  # 220, 528, 198
    ("legacy", [100, 68, 36], [1, 2, 0], 2),  # 200, 204, 36
])
def test_variant_signals_by_hand(name, P, B, choice) -> None:
    v = _variant_view()
    assert variant_signals(name, v) == (P, B)
    scores = variant_scores(name, v)
    assert scores == [p * (b + 1) for p, b in zip(P, B, strict=True)]
    assert scores.index(min(scores)) == choice


def test_variant_table_is_complete() -> None:
    assert VARIANT_NAMES == ("paper", "llm-d", "dynamo", "sglang-fork", "legacy")
    for v in LMETRIC_VARIANTS.values():
        assert v.tie in ("lowest", "random") and v.formula and v.source and v.signals
    assert "no implementation" in LMETRIC_VARIANTS["legacy"].formula
    with pytest.raises(ValueError, match="valid variants: paper, llm-d"):
        variant_signals("vllm", _variant_view())


# ------------------------------------------------------------------ brute force


@st.composite
def views(draw, with_inew=False):
    n = draw(st.integers(1, 5))
    s = draw(st.sampled_from([1, 4, 16]))
    T = draw(st.integers(0, 300))
    ints = lambda lo, hi: st.lists(st.integers(lo, hi), min_size=n, max_size=n)  # noqa: E731
    return rview(
        draw(ints(0, T // s + 1)), T=T, s=s, rq=draw(ints(-5, 3000)), bs=draw(ints(0, 12)),
        tok=draw(ints(0, 2000)), waiting=draw(ints(0, 200)), running=draw(ints(0, 12)),
        inew=draw(ints(0, 400)) if with_inew else None,
    )


def _best(keys, cand, maximize):
    """The tied best instances and the direction of the final ``Select``."""
    b = (max if maximize else min)(keys[i] for i in cand)
    return [i for i in cand if keys[i] == b], maximize


def _mm(x, lo, hi, up):
    if hi == lo:
        return Fraction(0)
    return Fraction(x - lo, hi - lo) if up else Fraction(hi - x, hi - lo)


def reference(name: str, v, tie: str) -> int:
    """The instance the formula of ``docs/policies.md`` picks under a deterministic tie rule."""
    tied, maximize = best_set(name, v)
    low = tie == "lowest" or (tie == "rust" and not maximize)
    return tied[0] if low else tied[-1]


def best_set(name: str, v) -> tuple[list[int], bool]:
    """The formula of ``docs/policies.md``, written out with Fractions: the tied best set."""
    n, T, s = len(v.hit_blocks), int(v.input_tokens), int(v.block_size)
    hit = [int(h) for h in v.hit_blocks]
    q = [max(int(x), 0) for x in v.router_queued]
    bs = [int(x) for x in v.router_inflight]
    tok = [int(x) for x in v.router_all_tokens]
    w = [int(x) for x in v.waiting]
    new = [max(T - h * s, 0) for h in hit]
    pre = [a + b for a, b in zip(q, new, strict=True)]
    pct = [Fraction(h * s, T) if T else Fraction(0) for h in hit]
    allc = list(range(n))
    lo_min = lambda keys, c=allc: _best(keys, c, False)  # noqa: E731
    hi_max = lambda keys, c=allc: _best(keys, c, True)  # noqa: E731
    if name == "vllm-v1":
        return lo_min([4 * a + b for a, b in zip(w, bs, strict=True)])
    if name == "least-wait-token":
        return lo_min(pre)
    if name == "least-waiting":
        return lo_min(w)
    if name == "least-bs":
        return lo_min(bs)
    if name == "least-active":
        return lo_min(tok)
    if name == "least-token-load":
        return lo_min([a + b for a, b in zip(q, tok, strict=True)])
    if name == "most-hit":
        return hi_max(hit)
    if name == "bounded-most-hit":
        ok = [i for i in allc if q[i] < 2048]
        return hi_max(hit, ok) if ok else lo_min(pre)
    if name in ("dynamo", "dynamo-deterministic"):
        return lo_min([floor(1000 * (Fraction(p, s) + floor(Fraction(p, s)))) for p in pre])
    if name == "dynamo-po":
        nb = [max(ceil(Fraction(T, s)) - h, 0) for h in hit]
        return lo_min([floor(1000 * (Fraction(new[i], s) + nb[i] + tok[i] // s)) for i in allc])
    if name == "aibrix":
        lo, hi = min(bs), max(bs)
        c = [i for i in allc if bs[i] == lo] if hi - lo > 8 else allc
        mean = Fraction(sum(bs), n)
        var = sum((b - mean) ** 2 for b in bs) / (n - 1) if n > 1 else 0
        ok = [i for i in c if bs[i] <= mean or (bs[i] - mean) ** 2 <= var]
        keys = [(-pct[i], bs[i]) for i in allc]
        return _best(keys, ok, False) if ok else _best(keys, c, True)
    if name == "preble":
        ok = [i for i in allc if Fraction(hit[i] * s, max(T, 1)) > Fraction(1, 2)]
        if ok:
            return hi_max(hit, ok)
        return lo_min([new[i] + tok[i] - (floor(pct[i] * T / 2) if pct[i] > Fraction(1, 2) else 0)
                       for i in allc])
    if name in ("most-hit-load", "most-hit-load-active"):
        keys = []
        for i in allc:
            x = 10 * _mm(hit[i], min(hit), max(hit), True)
            x += Fraction(1, 2) if w[i] == 0 else Fraction(1, 2) * (1 - Fraction(min(w[i], 128), 128))
            if name == "most-hit-load-active":
                x += _mm(tok[i], min(tok), max(tok), False)
            keys.append(floor(1000 * x))
        return hi_max(keys)
    raise AssertionError(name)


DETERMINISTIC = [c.name for c in BASELINE_POLICIES if c.name != "bailian"]


@settings(max_examples=150, deadline=None)
@given(v=views(), tie=st.sampled_from(["rust", "lowest", "highest"]))
def test_catalog_matches_exact_formula(v, tie) -> None:
    for name in DETERMINISTIC:
        assert pick(f"{name}:tie={tie}", v) == reference(name, v, tie), name


@settings(max_examples=100, deadline=None)
@given(v=views(), seed=st.integers(0, 2**16))
def test_random_tie_picks_among_the_best(v, seed) -> None:
    for name in DETERMINISTIC:
        assert pick(f"{name}:tie=random", v, seed=seed) in best_set(name, v)[0], name


def test_random_tie_reaches_every_tied_instance() -> None:
    v = rview([0, 0, 0], waiting=[1, 1, 1])
    assert {pick("least-waiting:tie=random", v, seed=k) for k in range(60)} == {0, 1, 2}


@settings(max_examples=150, deadline=None)
@given(v=views(), norm=st.sampled_from(["listing", "minmax"]), seed=st.integers(0, 2**16))
def test_bailian_matches_exact_weights_and_draw(v, norm, seed) -> None:
    T, s = int(v.input_tokens), int(v.block_size)
    pct = [Fraction(int(h) * s, T) if T else Fraction(0) for h in v.hit_blocks]
    bs = [int(x) for x in v.router_inflight]
    tok = [int(x) for x in v.router_all_tokens]
    if norm == "listing":
        n1 = [1 - (Fraction(b, max(bs)) if max(bs) else 0) for b in bs]
        n2 = [1 - (Fraction(a, max(tok)) if max(tok) else 0) for a in tok]
        n0 = pct
    else:
        n0 = [_mm(x, min(pct), max(pct), True) for x in pct]
        n1 = [_mm(x, min(bs), max(bs), False) for x in bs]
        n2 = [_mm(x, min(tok), max(tok), False) for x in tok]
    want = [max(Fraction(7, 10) * a + Fraction(3, 20) * b + Fraction(3, 20) * c, Fraction(0))
            for a, b, c in zip(n0, n1, n2, strict=True)]
    p = make_policy(f"bailian:norm={norm}", seed=seed)
    assert p.weights(v) == want
    u = np.random.default_rng([seed, 0x5EED]).random()  # the policy's generator, first draw
    got = p.choose(v)
    total = sum(want)
    if total == 0:
        assert got == 0
    else:
        r, expect = Fraction(u) * total, len(want) - 1
        for i, x in enumerate(want):
            if r <= x:
                expect = i
                break
            r -= x
        assert got == expect
        assert want[got] > 0


@settings(max_examples=150, deadline=None)
@given(v=views(with_inew=True), name=st.sampled_from([n for n in VARIANT_NAMES if n != "dynamo"]))
def test_integer_variants_argmin_agrees_with_kernel(v, name) -> None:
    P, B = variant_signals(name, v)
    scores = variant_scores(name, v)
    assert scores == [p * (b + 1) for p, b in zip(P, B, strict=True)]
    assert argmin_product(np.asarray(P, np.int64), np.asarray(B, np.int64)) == \
        scores.index(min(scores))


@settings(max_examples=150, deadline=None)
@given(v=views())
def test_dynamo_variant_is_blocks_and_ranks_like_tokens(v) -> None:
    s = int(v.block_size)
    P, B = variant_signals("dynamo", v)
    T = int(v.input_tokens)
    toks = [max(int(q), 0) + max(T - int(h) * s, 0) for q, h in zip(v.router_queued, v.hit_blocks,
                                                                        strict=True)]
    assert P == [Fraction(t, s) for t in toks]
    assert B == [int(a) // s for a in v.router_all_tokens]
    scores = variant_scores("dynamo", v)
    assert [x * s for x in scores] == [t * (b + 1) for t, b in zip(toks, B, strict=True)]


def test_catalog_tie_rules_are_the_documented_ones() -> None:
    assert CATALOG_TIE_RULES == ("rust", "lowest", "highest", "random")
