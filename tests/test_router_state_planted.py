"""Results (m)-(o) of ``derive`` (lmetric_theory/theory/replicas.py) checked against the
fast engine on planted workloads, with the simulator's router-state options (as the
hot-spot results were checked against a planted run).

(n) herding: bursts of ``R`` simultaneous requests on idle instances, one per replica
(round-robin assignment). Every replica decides from the same (empty) state: under
lowest-index ties all ``R`` land on one instance (max-min load ``R``), against at most 1
for one router with exact counters; under random ties the mean max-min load over bursts
matches ``expected_spread(R, N)``.

(m) replica view: bursts of ``R`` copies of one request on 3 instances with shared
prefixes and long decodes; at each burst's first decision the replica's counters are
exactly ``1/R`` of the engine's, its pick is the argmin of ``(Q + R u + R p0)(B + R b0)`` on
the engine's counters, and it differs from one exact router's pick exactly where
``replica_view_differs`` says.

(o) index error: a KV event lag that hides exactly ``k`` of an instance's cached prefix
blocks from the index; the first ``k`` at which the choice leaves the exact-index one is
``flip_blocks`` (27 for the product, 21 for ``linear(2000)``, none below 40 for
``linear(16)`` in the planted state).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import requests_workload

from lmetric_theory.policies import parse_spec
from lmetric_theory.sim import LatencyModel, SimConfig, Simulator
from lmetric_theory.theory.replicas import expected_spread, flip_blocks, replica_view_differs

LAT = LatencyModel(c0=0.01, c_pf=1e-4, c_dec=1e-3, c_kv=1e-6, c_att=1e-8)
BS = 100
N = 8


def _bursts(r: int, bursts: int):
    reqs, h = [], 0
    for k in range(bursts):
        for _ in range(r):
            reqs.append((5.0 * k, 5 * BS, 4, list(range(h, h + 5))))
            h += 5
    return requests_workload(reqs, BS)


def _spreads(r: int, replicas: int, tie: str, bursts: int, seed: int = 0) -> np.ndarray:
    cfg = SimConfig(n_instances=N, latency=LAT, kv_capacity_tokens=100_000, scheduler="reserve",
                    router_replicas=replicas)
    res = Simulator(_bursts(r, bursts), cfg, parse_spec(f"lmetric:tie={tie}"), seed=seed).run()
    inst = np.asarray(res.instance).reshape(bursts, r)
    rep = np.asarray(res.replica).reshape(bursts, r)
    if replicas > 1:  # one request per replica per burst
        assert all(sorted(row) == list(range(replicas)) for row in rep.tolist())
    counts = np.stack([np.bincount(row, minlength=N) for row in inst])
    return counts.max(axis=1) - counts.min(axis=1)


@pytest.mark.parametrize("r", [2, 4, 8])
def test_lockstep_replicas_herd_all_on_one_instance(r):
    assert (_spreads(r, r, "lowest", 20) == r).all()
    # one router with exact counters spreads the same bursts: ceil(R/N) - floor(R/N) <= 1
    assert (_spreads(r, 1, "lowest", 20) == math.ceil(r / N) - r // N).all()


@pytest.mark.parametrize("r", [2, 4])
def test_random_ties_spread_matches_expected_spread(r):
    s = _spreads(r, r, "random", 400, seed=3).astype(np.float64)
    want = float(expected_spread(r, N))
    se = s.std(ddof=1) / math.sqrt(s.size)
    assert abs(s.mean() - want) <= 5 * se


# (m) replica view, through the engine: bursts of R copies of one request (one per
# replica, round-robin), prompts sharing prefixes of three families so that the uncached
# prefill differs between instances, long decodes so that batches build up. Every replica
# routes every burst alike, so at the first decision of a burst each replica's counters are
# exactly 1/R of the engine-side ones (logged as true_*), and result (m) predicts its pick.
N_M = 3


def _replica_workload(r: int, steps: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    fams = [list(range(f * 100, f * 100 + 8)) for f in range(3)]
    reqs, h = [], 10_000
    for k in range(steps):
        f, nb = int(rng.integers(0, 4)), int(rng.integers(2, 9))
        if f < 3:
            hs = fams[f][:nb] + list(range(h, h + 2))
            h += 2
        else:
            hs = list(range(h, h + nb))
            h += nb
        out = int(rng.integers(50, 400))
        reqs.extend((0.5 * k, len(hs) * BS, out, hs) for _ in range(r))
    return requests_workload(reqs, BS)


def _argmin(scores: list[int]) -> int:
    return min(range(len(scores)), key=lambda i: (scores[i], i))  # lowest-index ties


@pytest.mark.parametrize("r", [1, 2, 4, 8])
def test_replica_pick_is_result_m_on_engine_counters(r):
    cfg = SimConfig(n_instances=N_M, latency=LAT, kv_capacity_tokens=1_000_000,
                    scheduler="reserve", router_replicas=r)
    log = Simulator(_replica_workload(r, 120), cfg, parse_spec("lmetric:tie=lowest"), seed=0).run().snapshots
    chosen = np.asarray(log.chosen).reshape(-1, r)
    assert (chosen == chosen[:, :1]).all()  # herding: the whole burst on one instance
    first = np.arange(0, len(log), r)
    Q, B = log.true_queued_tokens[first], log.true_batch[first]
    assert (log.router_queued[first] * r == Q).all() and (log.router_inflight[first] * r == B).all()
    assert int(B.max()) > 2 * r  # batches build up: b0 weighs against B/R
    differs = 0
    for d, t in enumerate(first):
        q, b = [int(x) for x in Q[d]], [int(x) for x in B[d]]
        u = [int(x) for x in log.uncached[t]]
        c = int(log.chosen[t])
        # the closed form (Q + R u + R p0)(B + R b0), p0 = 0, b0 = 1, on the engine's counters
        assert c == _argmin([(q[i] + r * u[i]) * (b[i] + r) for i in range(N_M)])
        g = _argmin([(q[i] + u[i]) * (b[i] + 1) for i in range(N_M)])  # one exact router
        pair = ((q[c], q[g]), (u[c], u[g]), (b[c], b[g]))
        assert (c != g) == replica_view_differs(*pair, r)
        differs += c != g
    if r == 1:
        assert differs == 0
    elif r in (2, 8):
        assert differs > 0  # the replica's ordering flips, where (m) says, in this workload


# (o) index error, through the engine: on 2 instances, A (the first 40 - k blocks of a
# 40-block prefix) and C (the whole prefix) go to instance 0, D (unique) to instance 1, all
# decoding long; the probe (the prefix + 2 blocks) comes 1 s after C. With a 5 s KV event
# lag the index has heard A's stored blocks but not C's: it under-predicts instance 0's hit
# by exactly k blocks. The probe's choice leaves the exact-index choice first at
# flip_blocks(k) of result (o), for the product and for linear at its own threshold.
PRE, TAIL = 40, 2


def _index_error_workload(k: int):
    p = list(range(PRE))
    m = PRE - k
    return requests_workload([
        (0.0, (m + 1) * BS, 3000, [*p[:m], 1000]),
        (0.001, 3 * BS, 3000, [2000, 2001, 2002]),
        (6.0, PRE * BS, 3000, p),
        (7.0, (PRE + TAIL) * BS, 10, [*p, 3000, 3001]),
    ], BS)


def _probe(spec: str, k: int, lag: float):
    cfg = SimConfig(n_instances=2, latency=LAT, kv_capacity_tokens=1_000_000, scheduler="reserve",
                    kv_event_lag_s=lag)
    log = Simulator(_index_error_workload(k), cfg, parse_spec(spec), seed=0).run().snapshots
    return log, 3  # the probe is the fourth decision


@pytest.mark.parametrize(("spec", "lam"), [("lmetric:tie=lowest", None),
                                           ("linear:lam=2000,tie=lowest", 2000),
                                           ("linear:lam=16,tie=lowest", 16)])
def test_index_error_flips_at_result_o_threshold(spec, lam):
    first_flip, states = None, set()
    for k in range(PRE):
        ex, t = _probe(spec, k, 0.0)
        lg, _ = _probe(spec, k, 5.0)
        assert ex.chosen[:3].tolist() == lg.chosen[:3].tolist() == [0, 1, 0]
        # the lagged index misses exactly k of instance 0's cached blocks, nothing else
        assert (lg.uncached[t] - ex.uncached[t]).tolist() == [k * BS, 0]
        for name in ("router_queued", "router_inflight"):
            assert getattr(lg, name)[t].tolist() == getattr(ex, name)[t].tolist()
        P = [int(ex.router_queued[t, i] + ex.uncached[t, i]) for i in range(2)]
        B = [int(b) for b in ex.router_inflight[t]]
        states.add((tuple(P), tuple(B)))
        assert int(ex.chosen[t]) == 0  # instance 0 wins on the engine's true hits
        if first_flip is None and int(lg.chosen[t]) != 0:
            first_flip = k
        assert int(lg.chosen[t]) == (0 if first_flip is None else 1)  # stays flipped
    assert len(states) == 1  # the same true state for every k
    (P, B), = states
    assert P == (TAIL * BS, (PRE + TAIL) * BS) and B == (2, 1)
    want = flip_blocks(P, B, BS, lam=lam, tie_to=1)  # ties go to instance 0 (lowest index)
    assert first_flip == (want if want < PRE else None)
    if lam is None:
        assert want == 27  # (P_2)(B_2 + 1)/(B_1 + 1) - P_1 = 2600 tokens: a tie at 26 blocks
    elif lam == 2000:
        assert want == 21  # P_2 - P_1 + lam (B_2 - B_1) = 2000 tokens: a tie at 20 blocks
    else:
        assert want == 40  # 3984 tokens: beyond the 40-block prefix, linear(16) never flips


def test_lagged_index_survives_preemption():
    """A lagged KV index under the paged scheduler with preemptions (the engine registers a
    preempted request's blocks; the logged pool must take the same arguments)."""
    reqs = [(0.01 * j, 8 * 64, 400, list(range(10 * j, 10 * j + 8))) for j in range(40)]
    w = requests_workload(reqs, 64)  # the paged engine's 16-token blocks divide 64
    cfg = SimConfig(n_instances=2, latency=LAT, kv_capacity_tokens=4_000, scheduler="vllm-v1",
                    kv_event_lag_s=0.5)
    res = Simulator(w, cfg, parse_spec("round-robin"), seed=0).run()
    assert int(np.asarray(res.preemptions).sum()) > 0
    assert np.isfinite(res.ttft_s).all()
