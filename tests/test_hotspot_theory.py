"""Hot prefix classes (theory results (j)-(l)): identities proved, formulas against exact
brute force, and the product's spill point against the simulator on a planted workload."""

from __future__ import annotations

from fractions import Fraction as F

import numpy as np
import pytest
import sympy as sp
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lmetric_theory.theory.hotspot import (
    HOTSPOT_SYMBOLS,
    brute_force_spill_batch,
    derive_hotspot,
    spill_batch,
)

S = HOTSPOT_SYMBOLS
P_hit, P_miss, B_h, B_o = S["P_hit"], S["P_miss"], S["B_h"], S["B_o"]
x, xbar, QPS, t, mu, M, Mbar, BS0 = (S[k] for k in ("x", "xbar", "QPS", "t", "mu", "M", "Mbar",
                                                     "BS0"))
p_0, b_0, lam = S["p_0"], S["b_0"], S["lam"]


@pytest.fixture(scope="module")
def h():
    return derive_hotspot()


@pytest.mark.parametrize("name", [i.name for i in derive_hotspot().identities])
def test_identity_holds(h, name):
    (ident,) = [i for i in h.identities if i.name == name]
    assert sp.simplify(ident.lhs - ident.rhs) == 0


def test_results_by_hand(h):
    assert sp.simplify(h.product_tolerance - (P_miss + p_0) / (P_hit + p_0)) == 0
    assert sp.simplify(h.linear_spill_gap - (P_miss - P_hit) / lam) == 0
    assert sp.simplify(h.lam_matching_product - (P_hit + p_0) / (B_o + b_0)) == 0
    assert sp.simplify(h.batch_difference - QPS * t * (x / M - xbar / Mbar)) == 0
    assert sp.simplify(h.limit_ratio - x * Mbar / (xbar * M)) == 0
    # the growth condition is the sign of the batch difference
    vals = {x: F(3, 5), xbar: F(2, 5), M: 1, Mbar: 7, QPS: 16, t: 1, BS0: 0}
    assert bool(h.growth_condition.subs(vals)) and h.batch_difference.subs(vals) > 0
    vals[x], vals[xbar] = F(1, 50), F(49, 50)
    assert not bool(h.growth_condition.subs(vals)) and h.batch_difference.subs(vals) < 0
    assert [r.item for r in h.results] == ["j", "k", "l"]
    assert all(r.statement and r.formulas for r in h.results)


def test_necessary_not_sufficient(h):
    """Growth condition true but tolerance never reached: no spill time > 0."""
    vals = {x: F(3, 5), xbar: F(2, 5), M: 1, Mbar: 7, QPS: 16, BS0: 0, b_0: 1, p_0: 0,
            P_hit: 512, P_miss: 8704, lam: 16, mu: F(1, 2)}
    assert bool(h.growth_condition.subs(vals))
    assert not bool(h.sufficient_condition.subs(vals))
    assert h.spill_time.subs(vals) < 0  # no positive time: never spills (no departures)
    assert h.linear_spill_time.subs(vals) > 0  # linear(lam) does spill
    vals[x], vals[xbar] = F(19, 20), F(1, 20)
    assert bool(h.sufficient_condition.subs(vals)) and h.spill_time.subs(vals) > 0
    # with no cache benefit the condition is sufficient
    vals2 = {**vals, P_miss: 512, x: F(3, 5), xbar: F(2, 5)}
    assert bool(h.sufficient_condition.subs(vals2)) == bool(h.growth_condition.subs(vals2))


@settings(max_examples=200, deadline=None)
@given(
    p_hit=st.integers(0, 5000),
    extra=st.integers(0, 20000),
    b_o=st.integers(0, 60),
    p0=st.sampled_from([F(0), F(1), F(1, 3), F(7)]),
    b0=st.sampled_from([F(1), F(1, 2), F(2), F(0)]),
    ties=st.sampled_from(["cold", "hot"]),
)
def test_spill_batch_matches_brute_force(p_hit, extra, b_o, p0, b0, ties):
    if p_hit + p0 <= 0 or b_o + b0 <= 0:
        return
    # the brute force walks the hot batch one request at a time: keep the spill point (about
    # the tolerated ratio times the cold batch) within its search limit
    assume((p_hit + extra + p0) / (p_hit + p0) * (b_o + b0) < 10**5)
    got = spill_batch(p_hit, p_hit + extra, b_o, p0, b0, ties=ties)
    assert got == brute_force_spill_batch(p_hit, p_hit + extra, b_o, p0, b0, ties=ties)


@settings(max_examples=40, deadline=None)
@given(
    p_hit=st.integers(1, 3000), extra=st.integers(1, 20000), m=st.integers(1, 15),
    mbar=st.integers(1, 15), num=st.integers(1, 99), bs0=st.integers(0, 10),
)
def test_spill_time_matches_stepping(p_hit, extra, m, mbar, num, bs0):
    """Step time in exact arithmetic (one request's worth at a time): the product's tie is
    crossed exactly at spill_time when the sufficient condition holds, never otherwise."""
    h = derive_hotspot()
    xv = sp.Rational(num, 100)
    vals = {P_hit: p_hit, P_miss: p_hit + extra, M: m, Mbar: mbar, x: xv, xbar: 1 - xv,
            QPS: 10, BS0: bs0, p_0: 0, b_0: 1}
    margin = h.stay_margin.subs({B_h: h.hot_batch, B_o: h.cold_batch}).subs(vals)

    def fn(tv):
        return margin.subs(t, tv)

    suff = bool(h.sufficient_condition.subs(vals))
    if not suff:
        assert fn(10**6) < 0  # still on the hot instances much later
        return
    ts = h.spill_time.subs(vals)
    assert ts.is_Rational and ts > 0 and fn(ts) == 0
    assert fn(ts * sp.Rational(99, 100)) < 0 < fn(ts * sp.Rational(101, 100))


def test_product_spill_in_the_simulator():
    """Planted workload: one hot class cached on one instance, the rest short unrelated
    prompts. The first class-c request lmetric sends to a cold instance comes when the hot
    batch reaches the predicted spill batch (within a few requests), never before."""
    from lmetric_theory.sim import SimConfig, Simulator, load_preset
    from lmetric_theory.workload.hotspot import HotspotParams, hotspot

    w = hotspot(HotspotParams(share=0.6, rate=16, count=150, seed=1))
    cfg = SimConfig.from_preset(load_preset("h100-llama3-8b"), 8)
    # P = uncached, B = running (the variant whose signals this check builds by hand)
    log = Simulator(w, cfg, "lmetric:variant=legacy").run().snapshots
    hot_req = w.session_ids == 0
    spill = None
    for d in range(1, len(log.request)):
        if not hot_req[log.request[d]]:
            continue
        unc, run = log.uncached[d].astype(int), log.running[d].astype(int)
        cached = unc < log.input_tokens[d] - w.block_size + 1
        if not cached.any() or cached.all():
            continue
        h = int(np.flatnonzero(cached)[np.argmin((unc * (run + 1))[cached])])
        o = int(log.chosen[d])
        # the best cold instance (lowest index among equal scores, as lmetric breaks ties)
        cold = np.flatnonzero(~cached)
        oc = int(cold[np.argmin(unc[cold] * (run[cold] + 1))])
        pred = spill_batch(int(unc[h]), int(unc[oc]), int(run[oc]),
                           ties="cold" if oc < h else "hot")
        if cached[o]:
            assert run[h] < pred  # stays: below the spill batch
        else:
            spill = (run[h], pred)
            break
    assert spill is not None, "the planted workload never spilled"
    assert 0 <= spill[0] - spill[1] <= 4
