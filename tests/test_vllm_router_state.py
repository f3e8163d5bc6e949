"""Router state as deployed on the vLLM engine (docs/router_state.md): router replicas, the
approximate index, a KV event lag fed by vLLM's own KV cache events.

The fast engine and the vLLM engine agree request for request on small workloads where they
already agree with exact state (tests/test_vllm_engine.py); a hand-computable case checks the
replicas' own counters; R = 1 with exact state keeps the engine's own path. Tests that need
vLLM skip with a reason when it is not importable.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import vllm_availability

from lmetric_theory.sim import LatencyModel, SimConfig, simulate
from lmetric_theory.sim.routerstate import IndexSpec, ReplicaAssignment, parse_index
from lmetric_theory.workload.base import Sessions
from lmetric_theory.workload.loaders import make_workload

HAVE_VLLM, WHY = vllm_availability()

pytestmark = pytest.mark.skipif(not HAVE_VLLM, reason=WHY or "vLLM not importable")

LAT = LatencyModel(c0=0.01, c_pf=1e-4, c_dec=1e-3, c_kv=1e-6, c_att=1e-9)
RR, RANDOM, SESSION = (ReplicaAssignment.ROUND_ROBIN, ReplicaAssignment.RANDOM,
                       ReplicaAssignment.SESSION)


def _workload(arrivals, inputs, outputs, hashes, sessions=None):
    """A small workload (block size 16); ``hashes[i]`` lists request i's block hashes;
    ``sessions``: an open-loop session id per request."""
    lens = [len(h) for h in hashes]
    w = make_workload(
        arrival_s=np.asarray(arrivals, dtype=np.float64),
        input_tokens=np.asarray(inputs, dtype=np.int64),
        output_tokens=np.asarray(outputs, dtype=np.int64),
        hash_ids=np.asarray([x for h in hashes for x in h], dtype=np.int64),
        hash_offsets=np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
        block_size=16, session_ids=None, meta={},
    )
    if sessions is None:
        return w
    s = np.asarray(sessions, dtype=np.int64)
    turn = np.zeros(len(s), dtype=np.int64)
    seen: dict[int, int] = {}
    for i, k in enumerate(s.tolist()):
        turn[i] = seen.get(k, 0)
        seen[k] = turn[i] + 1
    ids = sorted(seen)
    first = np.asarray([int(np.flatnonzero(s == k)[0]) for k in ids], dtype=np.int64)
    ses = Sessions(session=s, turn=turn, prev=np.full(len(s), -1), delay_s=np.zeros(len(s)),
                   first=first, start_s=np.asarray(arrivals, dtype=np.float64)[first],
                   closed_loop=False)
    return dataclasses.replace(w, sessions=ses)


def _families(seed: int, n: int, spread: float, sessions: int | None = None, families: int = 3):
    """``n`` requests over ``spread`` seconds, each a 4-16 block prefix of one of
    ``families`` shared 16-block families and a private tail (the workloads of tests/test_vllm_engine.py,
    with longer shared prefixes so indexes and counters matter)."""
    rng = np.random.default_rng(seed)
    arr = np.sort(rng.uniform(0, spread, n))
    fam = rng.integers(0, families, n)
    share = rng.integers(4, 17, n)
    tail = rng.integers(1, 6, n)
    inp = (share + tail) * 16 - rng.integers(0, 10, n)
    out = rng.integers(1, 40, n)
    hashes = [[1000 * int(f) + k for k in range(int(s))] + [10**6 + 50 * i + k for k in range(int(t))]
              for i, (f, s, t) in enumerate(zip(fam, share, tail, strict=True))]
    ses = None if sessions is None else (np.arange(n) % sessions).tolist()
    return _workload(arr, inp, out, hashes, ses)


CFG = SimConfig(n_instances=3, latency=LAT, kv_capacity_tokens=16 * 400, token_budget=128,
                max_batch=8)


def _agree(w, cfg, policy="lmetric", seed=3):
    """Run both engines; assert they agree request for request; return the fast result."""
    from lmetric_theory.sim.vllm_engine import simulate_vllm

    a = simulate_vllm(w, cfg, policy, seed=seed)
    b = simulate(w, cfg, policy, seed=seed)
    assert a.instance.tolist() == b.instance.tolist()
    assert a.replica.tolist() == b.replica.tolist()
    np.testing.assert_allclose(a.ttft_s, b.ttft_s, rtol=1e-9)
    np.testing.assert_array_equal(a.cached_tokens, b.cached_tokens)
    np.testing.assert_array_equal(a.predicted_cached_tokens, b.predicted_cached_tokens)
    assert a.config.get("router_replicas", 1) == cfg.router_replicas
    return b


def _moved(w, cfg, ref_cfg=CFG, policy="lmetric", seed=3) -> int:
    """Requests the option sends elsewhere than one exact router (fast engine)."""
    a = simulate(w, cfg, policy, seed=seed)
    b = simulate(w, ref_cfg, policy, seed=seed)
    return int((a.instance != b.instance).sum())


# ---------------------------------------------------------------------------- agreement


@pytest.mark.parametrize("replicas", [2, 4])
@pytest.mark.parametrize("assignment", [RR, RANDOM, SESSION])
def test_replicas_route_the_same_on_both_engines(replicas, assignment):
    w = _families(11, 36, 3.0, sessions=7)
    cfg = dataclasses.replace(CFG, router_replicas=replicas, replica_assignment=assignment)
    b = _agree(w, cfg)
    assert _moved(w, cfg) > 0  # the replicas' own counters change the routing here
    if assignment is SESSION:
        assert b.replica.tolist() == ((np.arange(36) % 7) % replicas).tolist()
    assert sorted(set(b.replica.tolist())) == list(range(replicas))


@pytest.mark.parametrize("index", ["approximate", "approximate:ttl=0.5", "approximate:lru=12"])
@pytest.mark.parametrize("replicas", [1, 2])
def test_approximate_index_routes_the_same_on_both_engines(index, replicas):
    w = _families(12, 36, 3.0)
    cfg = dataclasses.replace(CFG, router_replicas=replicas, index=parse_index(index))
    b = _agree(w, cfg)
    if replicas > 1 or index != "approximate":  # (no eviction here: one router's record is right)
        assert (b.predicted_cached_tokens != b.cached_tokens).any()  # the index is wrong at times
        assert _moved(w, cfg) > 0


def test_view_approximate_is_the_unbounded_approximate_index_on_both_engines():
    w = _families(12, 36, 3.0)
    b = _agree(w, dataclasses.replace(CFG, view="approximate"))
    c = simulate(w, dataclasses.replace(CFG, index=IndexSpec("approximate")), "lmetric", seed=3)
    assert b.instance.tolist() == c.instance.tolist()


@pytest.mark.parametrize("replicas", [1, 2])
def test_kv_event_lag_routes_the_same_on_both_engines(replicas):
    w = _families(13, 40, 2.0)
    cfg = dataclasses.replace(CFG, router_replicas=replicas, kv_event_lag_s=0.25)
    b = _agree(w, cfg)
    assert (b.predicted_cached_tokens < b.cached_tokens).any()  # blocks not yet heard of
    assert _moved(w, cfg, dataclasses.replace(CFG, router_replicas=replicas)) > 0


def test_a_policy_reading_tokens_in_flight_routes_the_same_on_both_engines():
    """``dynamo-deterministic`` reads ``router_all_tokens`` (prompts plus outputs reported):
    the replicas' token counts agree too, with and without fast-forwarded decode stretches."""
    w = _families(11, 36, 3.0)
    for ff in (True, False):
        cfg = dataclasses.replace(CFG, router_replicas=2, fast_forward=ff)
        _agree(w, cfg, "dynamo-deterministic")
        assert _moved(w, cfg, dataclasses.replace(CFG, fast_forward=ff),
                      "dynamo-deterministic") > 0


@pytest.mark.parametrize("kv_pool_blocks", [30, 40])
def test_kv_event_lag_under_preemption_routes_the_same_on_both_engines(kv_pool_blocks):
    """A lagged index on a pool small enough to preempt: the fast engine's mirror (evictions
    of a decode stretch stamped at their iterations) and vLLM's own KV events agree."""
    w = _families(13, 40, 2.0)
    cfg = dataclasses.replace(CFG, kv_capacity_tokens=16 * kv_pool_blocks, router_replicas=2,
                              kv_event_lag_s=0.25)
    b = _agree(w, cfg)
    assert int(b.preemptions.sum()) > 0


@pytest.mark.parametrize("replicas", [2, 4])
def test_dynamo_kv_replicas_route_the_same_on_both_engines(replicas):
    """``dynamo-kv`` reads Dynamo's active sequences; under R replicas each replica keeps
    those of its own requests (no replica sync), the same on both engines."""
    w = _families(11, 36, 3.0, sessions=7)
    cfg = dataclasses.replace(CFG, router_replicas=replicas)
    _agree(w, cfg, "dynamo-kv")
    assert _moved(w, cfg, policy="dynamo-kv") > 0


# ---------------------------------------------------------------------------- exactness


def _arrays(r) -> dict[str, np.ndarray]:
    return {f.name: getattr(r, f.name) for f in dataclasses.fields(r)
            if isinstance(getattr(r, f.name), np.ndarray)}


def _same(a, b, skip=()) -> None:
    xa, xb = _arrays(a), _arrays(b)
    assert xa.keys() == xb.keys()
    for k in xa:
        if k not in skip:
            assert np.array_equal(xa[k], xb[k], equal_nan=True), k
    assert (a.iterations, a.events, a.end_time_s) == (b.iterations, b.events, b.end_time_s)


@pytest.mark.parametrize("kv_pool_blocks", [400, 30])
def test_vanishing_lag_is_the_precise_index(kv_pool_blocks):
    """The mirror fed by vLLM's block stored / removed events, 1 ns late, is the KV cache
    manager's own index at every decision: every array of the run equals the precise run
    (with 30-block pools and 8 families blocks are evicted, so removals are exercised too)."""
    from lmetric_theory.sim.vllm_engine import router_state, simulate_vllm

    w = _families(14, 40, 2.0, families=8)
    cfg = dataclasses.replace(CFG, kv_capacity_tokens=16 * kv_pool_blocks)
    assert router_state(w, cfg, 16, 0) is None  # one exact router: the engine's own path
    ref = simulate_vllm(w, cfg, "lmetric")
    lag = dataclasses.replace(cfg, kv_event_lag_s=1e-9)
    assert router_state(w, lag, 16, 0).events
    _same(simulate_vllm(w, lag, "lmetric"), ref)
    if kv_pool_blocks == 30:  # the pool is small enough to evict what later requests want
        big = simulate_vllm(w, dataclasses.replace(CFG, kv_capacity_tokens=16 * 4000), "lmetric")
        assert ref.cached_tokens.sum() < big.cached_tokens.sum()


def test_one_router_with_exact_state_is_unchanged():
    """R = 1, lag 0, the precise index: the engine's own path whatever the assignment, every
    array as with the default config; the replica column is all 0."""
    from lmetric_theory.sim.vllm_engine import simulate_vllm

    w = _families(15, 30, 3.0)
    ref = simulate_vllm(w, CFG, "lmetric")
    alt = simulate_vllm(w, dataclasses.replace(CFG, replica_assignment=RANDOM), "lmetric")
    _same(alt, ref)
    assert ref.replica.tolist() == [0] * 30
    np.testing.assert_array_equal(ref.predicted_cached_tokens, ref.cached_tokens)


# ---------------------------------------------------------------------------- hand case


class _Recorder:
    """A routing policy for the test: sends request ``k`` to ``targets[k]`` and keeps the
    router counters each decision was shown."""

    spec = "recorder"

    def __init__(self, targets):
        self.targets = targets
        self.seen = []

    def choose(self, view):
        self.seen.append({k: getattr(view, k).tolist() for k in (
            "router_inflight", "router_queued", "router_all_tokens",
            "router_inflight_new_tokens", "uncached")})
        return self.targets[view.decision]


def test_per_replica_counters_by_hand():
    """2 instances, R = 2 round-robin, approximate index. t = 0: A (160 tokens = 10 blocks
    of family 7, 2 output tokens) by replica 0 and B (96 fresh tokens, 2 outputs) by replica
    1, both to instance 0. Both finish long before t = 5. t = 5: C (the family's 10 blocks
    + 1 block, 176 tokens) by replica 0 and D (the same prompt) by replica 1, both to
    instance 0; then E (fresh, 32 tokens) by replica 0 at the same instant.

    - At C, replica 0 knows it sent the 10 blocks: uncached 176 - 160 = 16 on instance 0.
    - At D, replica 1 never sent them: uncached 176 on both; it counts none of C.
    - At E, replica 0 counts C only: 1 in flight, queued 16, tokens 176, new 16 on
      instance 0; replica 1's D (queued 176 predicted) is not there.
    """
    from lmetric_theory.sim.vllm_engine import simulate_vllm

    fam = [7000 + k for k in range(10)]
    w = _workload([0.0, 0.0, 5.0, 5.0, 5.0], [160, 96, 176, 176, 32], [2, 2, 2, 2, 2],
                  [fam, [1, 2, 3, 4, 5, 6], fam + [9], fam + [9], [20, 21]])
    cfg = SimConfig(n_instances=2, latency=LAT, kv_capacity_tokens=16 * 400, token_budget=512,
                    max_batch=8, router_replicas=2, index=IndexSpec("approximate"))
    runs = {}
    for engine in ("vllm", "fast"):
        pol = _Recorder([0, 0, 0, 0, 0])
        r = (simulate_vllm(w, cfg, pol) if engine == "vllm" else simulate(w, cfg, pol))
        runs[engine] = (r, pol.seen)
        assert r.replica.tolist() == [0, 1, 0, 1, 0]
        assert np.all(r.finish_s[:2] < 5.0)
        a, b, c, d, e = pol.seen
        zero = [0, 0]
        for v in (a, b):
            assert v["router_inflight"] == v["router_queued"] == v["router_all_tokens"] == zero
        assert b["uncached"] == [96, 96]
        assert c["uncached"] == [16, 176]
        assert c["router_inflight"] == zero and c["router_all_tokens"] == zero
        assert d["uncached"] == [176, 176]
        assert d["router_inflight"] == zero and d["router_queued"] == zero
        assert e["router_inflight"] == [1, 0]
        assert e["router_queued"] == [16, 0]
        assert e["router_all_tokens"] == [176, 0]
        assert e["router_inflight_new_tokens"] == [16, 0]
        assert e["uncached"] == [32, 32]
        # C's real hit on instance 0 is the 10 blocks A left there; D's too (C's step is
        # scheduled after D is routed, so D hits the family's blocks, not C's new one)
        assert r.predicted_cached_tokens.tolist() == [0, 0, 160, 0, 0]
        assert r.cached_tokens[2] == 160 and r.cached_tokens[3] == 160
    assert runs["vllm"][1] == runs["fast"][1]


class _Engine(_Recorder):
    """Keeps the engine-reported signals each decision was shown."""

    def choose(self, view):
        self.seen.append([getattr(view, k).tolist() for k in ("queued", "running", "waiting",
                                                               "kv_usage")])
        return self.targets[view.decision]


def test_signal_delay_ages_the_engine_signals():
    """A delay longer than the run shows every decision the signals of before the first
    record (all zero); without a delay later decisions see the busy instances. The router's
    own counters are never delayed."""
    from lmetric_theory.sim.vllm_engine import simulate_vllm

    w = _families(16, 20, 1.0)
    seen = {}
    for delay in (0.0, 1e6):
        pol = _Engine([i % 3 for i in range(20)])
        r = simulate_vllm(w, dataclasses.replace(CFG, signal_delay_s=delay), pol)
        assert r.instance.tolist() == [i % 3 for i in range(20)]
        seen[delay] = pol.seen
    assert all(v == [[0, 0, 0], [0, 0, 0], [0, 0, 0], [0.0, 0.0, 0.0]] for v in seen[1e6])
    assert any(sum(v[1]) + sum(v[2]) > 0 for v in seen[0.0])


# ---------------------------------------------------------------------------- CLI


@pytest.mark.slow
def test_cli_simulate_engine_vllm_router_replicas(mooncake_path):
    p = subprocess.run([sys.executable, "-m", "lmetric_theory", "simulate", str(mooncake_path),
                        "--engine", "vllm", "--count", "40", "-n", "2", "--policy", "lmetric",
                        "--router-replicas", "4", "--kv-event-lag", "0.05", "--json"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["config"]["engine"] == "vllm"
    assert doc["policies"]["lmetric"]["completed"] == 40


def test_cli_engine_vllm_bad_router_state_one_line_exit_2():
    for extra in (["--router-replicas", "0"], ["--index", "approximate:ttl=-1"],
                  ["--kv-event-lag", "-1"]):
        p = subprocess.run([sys.executable, "-m", "lmetric_theory", "simulate", "--engine",
                            "vllm", "--count", "5", "--policy", "lmetric", *extra],
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 2, (extra, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr

