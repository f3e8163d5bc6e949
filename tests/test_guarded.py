"""guarded-lmetric: product choice when unflagged, the mitigation's choice when flagged."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from lmetric_theory.policies import DecisionView, make_policy


def view(unc, run, queued=None, waiting=None):
    n = len(unc)
    z = np.zeros(n, np.int32)
    return DecisionView(0, 0.0, max(unc) + 1, np.array(unc, np.int32),
                        np.array(queued, np.int32) if queued is not None else z,
                        np.array(run, np.int32), np.array(waiting, np.int32) if waiting is not None else z,
                        np.zeros(n, np.float32))


def test_unflagged_follows_product():
    # Product: (100)(1+1)=200, (300)(0+1)=300 -> 0. Linear lam=100: 200 vs 300 -> 0. Agree;
    # lam_eff = 200/1.5 = 133 is within 10x of lam (no extreme-operating-point finding).
    v = view([100, 300], [1, 0])
    for m in ("fallback", "prefill_block", "batch_offset", "load_cap"):
        g = make_policy(f"guarded-lmetric:mitigation={m},lam=100")
        assert g.choose(v) == make_policy("lmetric").choose(v) == 0
        assert g.flagged == 0


def test_flagged_fallback_takes_linear_choice():
    # Product: 100*5=500 vs 400*1=400 -> 1. Linear lam=10: 100+40=140 vs 400 -> 0. Disagree.
    v = view([100, 400], [4, 0])
    assert make_policy("lmetric").choose(v) == 1
    g = make_policy("guarded-lmetric:mitigation=fallback,lam=10")
    assert g.choose(v) == 0 and g.flagged == 1
    assert make_policy("linear:lam=10").choose(v) == 0


def test_flagged_zero_prefill_prefill_block():
    # Instance 0 fully cached (P=0) but loaded: product 0*(9+1)=0 -> 0 (zero-prefill hot-spot).
    # With p0 = 16: 16*10=160 vs (20+16)*1=36 -> 1.
    v = view([0, 20], [9, 0])
    assert make_policy("lmetric").choose(v) == 0
    g = make_policy("guarded-lmetric:mitigation=prefill_block,lam=1,block=16")
    assert g.choose(v) == 1 and g.flagged == 1


def test_flagged_batch_offset_and_load_cap():
    # Product: 100*(4+1)=500 vs 450*(0+1)=450 -> 1; linear lam=1: 104 vs 450 -> 0 (flagged).
    v = view([100, 450], [4, 0])
    # b0 + 1 = 2: 100*6=600 vs 450*2=900 -> 0.
    assert make_policy("guarded-lmetric:mitigation=batch_offset,lam=1,batch_add=1").choose(v) == 0
    # Cap 3: instance 0 (B=4) excluded -> 1; cap 5: no one excluded -> product choice 1.
    assert make_policy("guarded-lmetric:mitigation=load_cap,lam=1,cap=3").choose(v) == 1
    assert make_policy("guarded-lmetric:mitigation=load_cap,lam=1,cap=5").choose(v) == 1


def test_bad_params():
    with pytest.raises(ValueError, match="mitigation"):
        make_policy("guarded-lmetric:mitigation=pray")
    with pytest.raises(ValueError, match="lam_lo"):
        make_policy("guarded-lmetric:lam_lo=10")


def test_fallback_routes_like_linear_in_simulation():
    # Flagged decisions go to the reference's choice, unflagged ones agree with it: same routing.
    from lmetric_theory.sim import SimConfig, Simulator, load_preset
    from lmetric_theory.workload import synthetic

    w = synthetic("mixed", n_requests=200, rate_rps=12.0, seed=4)
    cfg = SimConfig.from_preset(load_preset("h100-llama3-8b"), 3, record_snapshots=False)
    g = Simulator(w, cfg, make_policy("guarded-lmetric:mitigation=fallback,lam=64")).run()
    lin = Simulator(w, cfg, "linear:lam=64").run()
    prod = Simulator(w, cfg, "lmetric").run()
    np.testing.assert_array_equal(g.instance, lin.instance)
    assert not np.array_equal(g.instance, prod.instance)


def test_detector_scores_the_exact_offsets_p0_one_third():
    """p0 = 1/3: (1 + 1/3)(0 + 1) = 4/3 = (0 + 1/3)(3 + 1), an exact tie that the lowest
    index (0) wins. With the float 0.333... instance 1 would score strictly lower, so a
    detector handed float(p0) would name instance 1 as the product's choice."""
    v = view([1, 0], [0, 3])
    spec = "p0=1/3,lam=1000000"
    g = make_policy(f"guarded-lmetric:{spec}")
    assert g.detector.prefill_offset == Fraction(1, 3)
    assert isinstance(g.detector.prefill_offset, Fraction)
    product = make_policy("lmetric:p0=1/3").choose(v)
    assert product == 0
    verdict = g.detector.check(g.snapshot(v))
    assert verdict.product_choice == product
    assert "exact_tie" in verdict.kinds
    # The float offset does score something else (the drift this guards against).
    from lmetric_theory.detector import Detector

    assert Detector(1000000, float(Fraction(1, 3)), 1).check(g.snapshot(v)).product_choice == 1


@pytest.mark.parametrize("alias, kind", [("fallback", "fallback_reference"),
                                         ("fallback_reference", "fallback_reference"),
                                         ("tie_break_cache", "tie_break_cache")])
def test_mitigation_names_are_the_detectors_kinds(alias, kind):
    g = make_policy(f"guarded-lmetric:mitigation={alias}")
    assert g.mitigation is not None and g.mitigation.kind.value == kind


def test_router_state_mitigations_every_decision():
    """counter_sync, scale_batch_offset and random_near_ties apply at every decision:
    with replicas=1 the first two route like lmetric; with R they score the replica's view
    as result (m) says (counters times R; offsets divided by R)."""
    rng = np.random.default_rng(8)
    lm = make_policy("lmetric")
    sync1 = make_policy("guarded-lmetric:mitigation=counter_sync,replicas=1")
    off1 = make_policy("guarded-lmetric:mitigation=scale_batch_offset,replicas=1")
    sync4 = make_policy("guarded-lmetric:mitigation=counter_sync,replicas=4")
    off4 = make_policy("guarded-lmetric:mitigation=scale_batch_offset,replicas=4")
    n_moved = 0
    for _ in range(300):
        v = view(rng.integers(0, 3000, 4).tolist(), rng.integers(0, 8, 4).tolist(),
                 queued=rng.integers(0, 3000, 4).tolist())
        assert sync1.choose(v) == off1.choose(v) == lm.choose(v)
        snap = sync4.snapshot(v)
        P, B, U = (np.asarray(x, dtype=np.int64) for x in
                   (snap.prefill_tokens, snap.batch_size, snap.uncached_tokens))
        synced = ((P - U) * 4 + U) * (B * 4 + 1)
        assert sync4.choose(v) == int(np.argmin(synced))
        scaled = [Fraction(int(p)) * (int(b) + Fraction(1, 4)) for p, b in zip(P, B, strict=True)]
        assert off4.choose(v) == min(range(4), key=lambda k: (scaled[k], k))
        n_moved += sync4.choose(v) != lm.choose(v)
    assert n_moved > 0  # scaling the counters does change some decisions
    assert sync4.flagged == 0


def test_random_near_ties_spreads_ties_and_keeps_clear_winners():
    g = make_policy("guarded-lmetric:mitigation=random_near_ties,near_tie=0.01")
    tied = view([500, 500, 500], [2, 2, 2])
    picks = {g.choose(tied) for _ in range(200)}
    assert picks == {0, 1, 2}
    assert make_policy("lmetric").choose(tied) == 0  # the product herds on instance 0
    clear = view([100, 500, 500], [1, 2, 2])
    assert {g.choose(clear) for _ in range(50)} == {0}


def test_shorter_ttl_is_not_a_routing_mitigation():
    with pytest.raises(ValueError, match="mitigation"):
        make_policy("guarded-lmetric:mitigation=shorter_ttl")
    with pytest.raises(ValueError, match="replicas"):
        make_policy("guarded-lmetric:mitigation=counter_sync,replicas=0")
    with pytest.raises(ValueError, match="near_tie"):
        make_policy("guarded-lmetric:mitigation=random_near_ties,near_tie=0")
