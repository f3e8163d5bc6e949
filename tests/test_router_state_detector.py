"""Router-state findings (``replica_skew``, ``herding``, ``stale_index``): the streaming
monitor on hand-built decision streams, its mitigations against the theory's exact
statements (results (m)-(o)), the Guard applying them, and bad settings."""

from __future__ import annotations

import numpy as np
import pytest

from lmetric_theory import Detector, Guard, Snapshot
from lmetric_theory.detector import (
    ROUTER_STATE_KINDS,
    Mitigation,
    MitigationKind,
    RouterStateMonitor,
    RouterStateSettings,
    router_state_findings,
)
from lmetric_theory.detector.mitigation import mitigated_choice, mitigated_choices
from lmetric_theory.theory.replicas import expected_spread, flip_error, replica_view_differs

SETTINGS = RouterStateSettings(replicas=4, lag_s=0.05, window=64, min_decisions=8)


def _stream(r: int, steps: int, seed: int, *, herd: bool):
    """Hand-built decisions of ``r`` replicas over 2..4 instances: at each step every
    replica decides once at the same time (``herd``: from the same state, so the same
    instance; else spread round-robin over instances). Per decision: the replica's view
    (its 1/r share of the global counters), the engines' counters, and the replica."""
    rng = np.random.default_rng(seed)
    n = 4
    t, chosen, rep, P, B, TP, TB = [], [], [], [], [], [], []
    for s in range(steps):
        q = rng.integers(0, 800, n) * r  # global queued tokens (a multiple of r)
        b = rng.integers(0, 6, n) * r  # global batch
        u = rng.integers(0, 1500, n)  # the request's own uncached prefill
        view_p, view_b = q // r + u, b // r
        for k in range(r):
            t.append(s * 1.0)
            rep.append(k)
            best = int(np.argmin((view_p + 0) * (view_b + 1)))
            chosen.append(best if herd else (best + k) % n)
            P.append(view_p)
            B.append(view_b)
            TP.append(q + u)
            TB.append(b)
    return (np.array(t), np.array(chosen), np.array(rep), np.array(P), np.array(B),
            np.array(TP), np.array(TB))


def test_one_replica_exact_state_raises_nothing():
    t, c, rep, P, B, TP, TB = _stream(1, 300, 1, herd=True)
    pred = np.full(t.size, 320.0)
    findings, mon = router_state_findings(
        t, c, P, B, replica=rep, true_prefill=TP, true_batch=TB,
        predicted_cached=pred, actual_cached=pred, settings=SETTINGS,
    )
    assert findings == ()
    s = mon.stats
    assert (s.skew_differs, s.herded, s.stale) == (0, 0, 0)
    assert s.skew_checked == s.hits_checked == 300 and s.counter_ratio == 1.0


def test_replica_skew_matches_result_m_and_counter_sync_restores():
    r = 4
    t, c, rep, P, B, TP, TB = _stream(r, 200, 2, herd=True)
    findings, mon = router_state_findings(t, c, P, B, replica=rep, true_prefill=TP,
                                          true_batch=TB, settings=SETTINGS)
    kinds = [f.kind for f in findings]
    assert "replica_skew" in kinds
    f = findings[kinds.index("replica_skew")]
    assert f.mitigation == Mitigation.counter_sync(4)
    assert mon.stats.counter_ratio == pytest.approx(4.0)
    # every decision the monitor counts as differing is one result (m) says differs
    # (checked pairwise on the two instances the two views pick)
    n_theory = 0
    det = Detector(100)
    for d in range(t.size):
        u = (r * P[d] - TP[d]) // (r - 1)  # own prefill: TP = q + u, P = q/r + u
        q = TP[d] - u
        mine = int(np.argmin(P[d] * (B[d] + 1)))
        true = int(np.argmin(TP[d] * (TB[d] + 1)))
        if mine != true:
            i, j = mine, true
            pair = ((q[j], q[i]), (u[j], u[i]), (TB[d][j], TB[d][i]))
            tie = (TP[d][i] * (TB[d][i] + 1) == TP[d][j] * (TB[d][j] + 1)
                   or P[d][i] * (B[d][i] + 1) == P[d][j] * (B[d][j] + 1))
            assert tie or replica_view_differs(*pair, r)
            n_theory += 1
        # counter sync on the replica's view with the request's own prefill known gives
        # the argmin on the engines' counters exactly
        snap = Snapshot.from_arrays(P[d], B[d], uncached_tokens=u)
        assert mitigated_choice(det.settings, snap, f.mitigation) == true
    assert n_theory == mon.stats.skew_differs > 0
    # the vectorised path agrees
    us = (r * P - TP) // (r - 1)
    got = mitigated_choices(det.settings, P, B, f.mitigation, uncached_tokens=us)
    assert got.tolist() == [int(np.argmin(TP[d] * (TB[d] + 1))) for d in range(t.size)]


def test_scale_batch_offset_is_exact_without_own_prefill():
    """Result (m): with u = 0, offsets b0/R, p0/R on the 1/R share rank like the global."""
    rng = np.random.default_rng(5)
    det = Detector(100, prefill_offset=0, batch_offset=1)
    m = Mitigation.scale_batch_offset(4)
    for _ in range(200):
        q = rng.integers(0, 500, 5) * 4
        b = rng.integers(0, 9, 5) * 4
        snap = Snapshot.from_arrays(q // 4, b // 4)
        scores = q * (b + 1)
        if np.sum(scores == scores.min()) > 1:
            continue
        assert mitigated_choice(det.settings, snap, m) == int(np.argmin(scores))


def test_herding_needs_other_replicas():
    for r, herd, want in ((1, True, False), (4, True, True), (4, False, False)):
        t, c, rep, P, B, _, _ = _stream(r, 100, 3, herd=herd)
        findings, mon = router_state_findings(t, c, P, B, replica=rep, settings=SETTINGS)
        assert ("herding" in [f.kind for f in findings]) is want, (r, herd)
        if want:
            # result (n): every step puts all r decisions on one instance; from the third
            # of each step on, a decision sees >= herd_size - 1 = 2 others there
            assert mon.stats.herded == 100 * (r - 2)
            (f,) = [f for f in findings if f.kind == "herding"]
            assert f.mitigation.kind is MitigationKind.RANDOM_NEAR_TIES


def test_herding_window_is_bounded_and_forgets():
    mon = RouterStateMonitor(3, RouterStateSettings(replicas=2, lag_s=0.1, min_decisions=4,
                                                    window=8))
    for d in range(5000):
        mon.observe(d * 1.0, 0, [10, 10, 10], [0, 0, 0], replica=d % 2)
        assert len(mon._lag) == 1  # decisions a second apart never share a 0.1 s window
    assert mon.stats.herded == 0 and mon.findings == ()
    assert mon._herd.n == 8 and len(mon._herd.buf) == 8


def test_random_near_ties_spreads_a_herd_like_result_n():
    """R replicas choosing from the same tied state: the argmin herds all R on instance 0;
    the mitigation's uniform choice among the m tied instances has the expected max-min
    load of result (n)."""
    det = Detector(100)
    snap = Snapshot([100, 100, 100, 100], [2, 2, 2, 2])
    m = Mitigation.random_near_ties(0.01)
    rng = np.random.default_rng(11)
    r, trials = 8, 4000
    spreads = []
    for _ in range(trials):
        picks = [mitigated_choice(det.settings, snap, m, rng=rng) for _ in range(r)]
        loads = np.bincount(picks, minlength=4)
        spreads.append(loads.max() - loads.min())
    sp = np.array(spreads, dtype=float)
    want = float(expected_spread(r, 4))
    assert abs(sp.mean() - want) <= 5 * sp.std(ddof=1) / np.sqrt(trials)
    assert want < r
    with pytest.raises(ValueError, match="random generator"):
        mitigated_choice(det.settings, snap, m)
    # a clear winner stays the winner
    assert mitigated_choice(det.settings, Snapshot([10, 100], [0, 0]), m, rng=rng) == 0


def test_stale_index_over_prediction_and_flip_threshold():
    settings = RouterStateSettings(window=32, min_decisions=8, ttl_s=120.0, block_tokens=16)
    mon = RouterStateMonitor(2, settings)
    P, B = np.array([128, 768]), np.array([3, 1])
    # result (o): the product's choice here flips at err* = 256 tokens
    assert flip_error((128, 768), (3, 1)) == 256
    for d in range(40):
        err = 16 * 20 if d % 2 else 16 * 4  # over-predicted by 20 or 4 blocks
        mon.observe(float(d), 0, P, B, predicted_cached=1000 + err, actual_cached=1000)
    (f,) = mon.findings
    assert f.kind == "stale_index"
    assert f.mitigation == Mitigation.shorter_ttl(60.0)
    s = mon.stats
    assert (s.hits_checked, s.stale, s.over_predicted, s.stale_flipping) == (40, 40, 40, 20)
    # errors below one block are not stale
    mon2 = RouterStateMonitor(2, settings)
    for d in range(40):
        mon2.observe(float(d), 0, P, B, predicted_cached=1010, actual_cached=1000)
    assert mon2.findings == ()
    # under-prediction (the index forgot cached blocks): no shorter TTL
    mon3 = RouterStateMonitor(2, settings)
    for d in range(40):
        mon3.observe(float(d), 0, P, B, predicted_cached=0, actual_cached=640)
    (f3,) = mon3.findings
    assert f3.mitigation.kind is MitigationKind.NONE


def test_guard_applies_router_state_mitigation():
    """Four replicas sharing one router-state log route identical requests from the same
    state at the same moment: herding is found, and the guard's random choice among
    near-ties spreads later herds."""
    det = Detector(100)
    mon = RouterStateMonitor(4, RouterStateSettings(replicas=4, lag_s=0.5, window=32,
                                                    min_decisions=8))
    clock = {"t": 0.0, "replica": 0}
    g = Guard(det, lambda s: int(np.argmin(s.prefill_tokens * (s.batch_size + 1))),
              on_flag="mitigate", router_state=mon,
              state_fn=lambda s: {"time_s": clock["t"], "replica": clock["replica"]},
              rng=np.random.default_rng(1))
    snap = Snapshot([100, 100, 100, 100], [1, 1, 1, 1])
    late = []
    for step in range(60):
        clock["t"] = step * 1.0
        picks = []
        for k in range(4):
            clock["replica"] = k
            picks.append(g(snap))
        if step >= 40:
            late.append(max(np.bincount(picks, minlength=4)))
    assert [f.kind for f in g.router_state_findings] == ["herding"]
    assert mon.first_decision("herding") is not None
    assert g.stats().overridden > 0
    assert np.mean(late) < 4  # the herd of 4 is spread (all four on one: 4)
    with pytest.raises(ValueError, match="state_fn"):
        Guard(det, lambda s: 0, router_state=mon)


@pytest.mark.parametrize("kw,match", [
    ({"replicas": 0}, "replicas"), ({"lag_s": -1.0}, "lag_s"),
    ({"lag_s": float("nan")}, "lag_s"), ({"ttl_s": 0.0}, "ttl_s"),
    ({"skew_share": 0.0}, "skew_share"), ({"window": 1}, "window"),
    ({"herd_size": 1}, "herd_size"), ({"near_tie_tolerance": -0.1}, "near_tie"),
])
def test_bad_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        RouterStateSettings(**kw)


def test_kinds_and_mitigation_values():
    assert ROUTER_STATE_KINDS == ("replica_skew", "herding", "stale_index")
    for bad in (Mitigation.counter_sync, Mitigation.shorter_ttl):
        with pytest.raises(ValueError, match="positive finite"):
            bad(0)
    assert "b0/4" in Mitigation.scale_batch_offset(4).message
    with pytest.raises(ValueError, match="time_s has"):
        router_state_findings([0.0, 1.0], [0], [[1, 2]], [[0, 0]])


def test_detector_methods_pass_the_generator():
    det = Detector(100)
    m = Mitigation.random_near_ties(0.01)
    P = np.array([[100, 100, 900]] * 300)
    B = np.array([[1, 1, 1]] * 300)
    got = det.mitigated_choices(P, B, m, rng=np.random.default_rng(2))
    assert set(got.tolist()) == {0, 1}  # the two tied instances, never the third
    one = det.mitigated_choice(Snapshot(P[0], B[0]), m, rng=np.random.default_rng(2))
    assert one in (0, 1)
