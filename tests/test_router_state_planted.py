"""Results (m)-(o) of ``derive`` (lmetric_theory/theory/replicas.py) checked against the
fast engine on planted workloads, with the simulator's router-state options (as the
hot-spot results were checked against a planted run).

(n) herding: bursts of ``R`` simultaneous requests on idle instances, one per replica
(round-robin assignment). Every replica decides from the same (empty) state: under
lowest-index ties all ``R`` land on one instance (max-min load ``R``), against at most 1
for one router with exact counters; under random ties the mean max-min load over bursts
matches ``expected_spread(R, N)``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import requests_workload

from lmetric_theory.policies import parse_spec
from lmetric_theory.sim import LatencyModel, SimConfig, Simulator
from lmetric_theory.theory.replicas import expected_spread

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
