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
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import requests_workload

from lmetric_theory.policies import parse_spec
from lmetric_theory.sim import LatencyModel, SimConfig, Simulator
from lmetric_theory.theory.replicas import expected_spread, replica_view_differs

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
