"""The Scheduler protocol (both fast-engine schedulers satisfy it) and RouterCounters (one type,
the same counters under the fast engine's two schedulers and the vLLM engine)."""

from __future__ import annotations

import typing

import numpy as np
import pytest

from lmetric_theory.policies import make_policy
from lmetric_theory.sim import SCHEDULERS, LatencyModel, SimConfig, Simulator
from lmetric_theory.sim.engine import SCHEDULER_TYPES
from lmetric_theory.sim.scheduler import PrefixCache, RouterCounters, Scheduler
from lmetric_theory.sim.vllm_adapter import VllmUnavailable, require_vllm
from lmetric_theory.workload.base import Workload

LAT = LatencyModel(c0=0.01, c_pf=1e-4, c_dec=1e-3, c_kv=1e-6, c_att=1e-8)
COUNTERS = ("router_queued", "router_inflight", "router_all_tokens", "router_inflight_new_tokens")

try:
    require_vllm()
    import vllm  # noqa: F401

    WHY = ""
except (VllmUnavailable, ImportError) as exc:  # pragma: no cover - depends on the install
    WHY = f"vLLM engine unavailable: {exc}"


def workload(reqs: list[tuple[float, int, int, list[int]]], block: int = 64) -> Workload:
    """Workload from (arrival s, input tokens, output tokens, hash ids) tuples."""
    hashes = [h for r in reqs for h in r[3]]
    offs = np.cumsum([0] + [len(r[3]) for r in reqs])
    return Workload(
        arrival_s=np.array([r[0] for r in reqs], dtype=np.float64),
        input_tokens=np.array([r[1] for r in reqs], dtype=np.int64),
        output_tokens=np.array([r[2] for r in reqs], dtype=np.int64),
        hash_ids=np.array(hashes, dtype=np.int64),
        hash_offsets=offs.astype(np.int64),
        block_size=block,
    )


def config(scheduler: str, n: int = 1) -> SimConfig:
    return SimConfig(n_instances=n, latency=LAT, kv_capacity_tokens=100_000, token_budget=4096,
                     max_batch=64, scheduler=scheduler, block_size=16)


class Recorder:
    """Round-robin that keeps the router counters of every view it is shown."""

    def __init__(self) -> None:
        self.inner = make_policy("round-robin:tie=lowest")
        self.name = self.inner.name
        self.spec = self.inner.spec
        self.seen: list[tuple[list[int], ...]] = []

    def choose(self, view) -> int:
        self.seen.append(tuple(np.asarray(getattr(view, c)).tolist() for c in COUNTERS))
        return self.inner.choose(view)


def test_both_schedulers_satisfy_the_protocol() -> None:
    assert set(SCHEDULER_TYPES) == set(SCHEDULERS)
    members = [m for m in dir(Scheduler) if not m.startswith("_")] + list(
        typing.get_type_hints(Scheduler))
    w = workload([(0.0, 100, 3, [1, 2])])
    for name in SCHEDULERS:
        sim = Simulator(w, config(name), "round-robin")
        for ins in sim._inst:
            assert isinstance(ins, Scheduler), name
            assert isinstance(ins.cache, PrefixCache), name
            assert type(ins) is SCHEDULER_TYPES[name]
            for m in members:
                assert hasattr(ins, m), (name, m)
        fork = sim.fork()
        assert all(type(a) is type(b) for a, b in zip(fork._inst, sim._inst, strict=True))
        assert fork._inst[0].rt is not sim._inst[0].rt  # a fork has its own counters


def test_router_counters_by_hand() -> None:
    c = RouterCounters(2)
    c.dispatch(1, 100, 60)  # 100-token prompt, 60 predicted new
    c.dispatch(1, 50, 50)
    assert c.as_dict() == {"queued": [0, 110], "inflight": [0, 2], "all_tokens": [0, 150],
                           "inflight_new": [0, 110]}
    c.admit(1, -20)  # the first request hit 20 more tokens than predicted
    c.prefill(1, 70)
    c.emit(1, 2)
    assert c.queued == [0, 20] and c.all_tokens == [0, 152]
    c.prefill(1, 30)  # never below 0
    assert c.queued == [0, 0]
    c.admit(1, -5)
    assert c.queued == [0, 0]
    c.finish(1, 100 + 3, 60)
    assert c.as_dict() == {"queued": [0, 0], "inflight": [0, 1], "all_tokens": [0, 49],
                           "inflight_new": [0, 50]}
    d = c.clone()
    d.dispatch(0, 1, 1)
    assert c.inflight == [0, 1] and d.inflight == [1, 1]


# A, B (same prefix) and C in a burst at t = 0, D at t = 10 when everything has finished, E
# right after D. The counters each decision sees, by hand: dispatch adds the prompt to
# all_tokens and the predicted new tokens to queued and inflight_new (nothing is cached at
# t = 0, and nothing is computed before the burst is routed); at t = 10 all is back to 0
# but D's dispatch. D's prediction: its 100-token prompt hits the cached 64-token trace block
# and, with 16-token engine blocks, 32 tokens of the partial one (at most 99 tokens: 6 blocks,
# 96 tokens), 4 new tokens; the reserve scheduler's 64-token blocks hit 64, 36 new.
BURST = [(0.0, 100, 3, [1, 2]), (0.0, 100, 3, [1, 2]), (0.0, 50, 2, [7]), (10.0, 100, 2, [1, 2]),
         (10.0, 30, 2, [9])]


def expected(d_new: int) -> list[tuple[list[int], ...]]:
    """(queued, inflight, all_tokens, inflight_new) seen at each of the 5 decisions."""
    return [([0], [0], [0], [0]), ([100], [1], [100], [100]), ([200], [2], [200], [200]),
            ([0], [0], [0], [0]), ([d_new], [1], [100], [d_new])]


@pytest.mark.parametrize(("scheduler", "d_new"), [("vllm-v1", 4), ("reserve", 36)])
def test_router_counters_fast_engine_by_hand(scheduler: str, d_new: int) -> None:
    rec = Recorder()
    sim = Simulator(workload(BURST), config(scheduler), rec)
    r = sim.run()
    assert rec.seen == expected(d_new)
    log = r.snapshots  # the log holds what the policy saw
    assert [tuple(getattr(log, c)[d].tolist() for c in COUNTERS) for d in range(5)] == rec.seen
    assert sim.router_counters() == {"queued": [0], "inflight": [0], "all_tokens": [0],
                                     "inflight_new": [0]}


@pytest.mark.skipif(bool(WHY), reason=WHY or "vLLM available")
def test_router_counters_vllm_engine_by_hand_and_equal_to_fast() -> None:
    from lmetric_theory.sim.vllm_engine import simulate_vllm

    rec = Recorder()
    simulate_vllm(workload(BURST), config("vllm-v1"), rec)
    assert rec.seen == expected(4)
    # and decision by decision on a random workload over two instances
    rng = np.random.default_rng(7)
    reqs = []
    for j, t in enumerate(np.round(np.sort(rng.uniform(0, 3, 30)), 1)):
        inp = int(rng.integers(20, 700))
        k = -(-inp // 64)
        share = int(rng.integers(0, k + 1))
        reqs.append((float(t), inp, int(rng.integers(1, 30)),
                     list(range(share)) + [1000 * (j + 1) + i for i in range(k - share)]))
    w = workload(reqs)
    fast, slow = Recorder(), Recorder()
    Simulator(w, config("vllm-v1", n=2), fast).run()
    simulate_vllm(w, config("vllm-v1", n=2), slow)
    assert fast.seen == slow.seen
