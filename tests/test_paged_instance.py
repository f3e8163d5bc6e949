"""The fast engine's vllm-v1 scheduler: hand-computed schedules, preemption, block accounting,
router-side counters and the closed-form decode against step-by-step iteration."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import requests_workload as workload
from hypothesis import given, settings
from hypothesis import strategies as st

from lmetric_theory.sim import LatencyModel, SimConfig, Simulator, simulate
from lmetric_theory.workload.base import Workload

LAT = LatencyModel(c0=0.01, c_pf=1e-4, c_dec=1e-3, c_kv=1e-6, c_att=1e-8)


def config(n: int = 1, **kw) -> SimConfig:
    base = dict(latency=LAT, kv_capacity_tokens=100_000, token_budget=4096, max_batch=64,
                scheduler="vllm-v1", block_size=16)
    base.update(kw)
    return SimConfig(n_instances=n, **base)


def prefill(chunks: list[tuple[int, int]], decodes: list[int] = ()) -> float:
    """Iteration time of prefill chunks (tokens, context) plus decodes (their kv tokens)."""
    pt = sum(c for c, _ in chunks)
    kv = sum(x + c for c, x in chunks) + sum(decodes)
    att = sum(c * (x + c / 2) for c, x in chunks)
    return LAT.c0 + LAT.c_pf * pt + LAT.c_dec * len(decodes) + LAT.c_kv * kv + LAT.c_att * att


def decode(kv: int, n: int = 1) -> float:
    return LAT.c0 + LAT.c_dec * n + LAT.c_kv * kv


# ---------------------------------------------------------------------- hand-computed cases

@pytest.mark.parametrize("fast", [True, False])
def test_one_request(fast: bool) -> None:
    w = workload([(1.0, 1000, 5, list(range(16)))], block=64)
    r = simulate(w, config(fast_forward=fast), "round-robin")
    ttft = prefill([(1000, 0)])
    assert r.ttft_s[0] == pytest.approx(ttft, rel=1e-12)
    # decode step g computes output token g's position: it reads 1000 + g tokens
    assert r.e2e_s[0] == pytest.approx(ttft + sum(decode(1000 + g) for g in range(1, 5)), rel=1e-12)
    assert r.cached_tokens[0] == 0 and r.preemptions[0] == 0
    assert r.iterations == 5


def test_burst_is_batched_in_one_step() -> None:
    # Two requests arrive at the same instant on an idle instance: vLLM schedules both in the
    # first step (the reserve scheduler would start with the first alone).
    w = workload([(0.0, 300, 1, [1, 2, 3, 4, 5]), (0.0, 200, 1, [6, 7, 8, 9])], block=64)
    r = simulate(w, config(), "round-robin:tie=lowest")
    one = SimConfig(n_instances=1, latency=LAT, kv_capacity_tokens=100_000, token_budget=4096,
                    max_batch=64, scheduler="reserve")
    both = prefill([(300, 0), (200, 0)])
    assert r.ttft_s.tolist() == pytest.approx([both, both], rel=1e-12)
    old = simulate(w, one, "round-robin")
    assert old.ttft_s[0] == pytest.approx(prefill([(300, 0)]), rel=1e-12)
    assert old.ttft_s[1] > both
    # both requests were visible to the router when the second was routed
    assert r.snapshots.waiting[1, 0] == 1 and r.snapshots.router_inflight[1, 0] == 1


def test_running_first_then_budget_chunks_waiting() -> None:
    # Budget 1024: A (1500 tokens) gets 1024, then 476 plus 548 of B, then B's last 452.
    w = workload([(0.0, 1500, 1, list(range(24))), (0.0, 1000, 1, list(range(100, 116)))], block=64)
    r = simulate(w, config(token_budget=1024), "round-robin")
    s1 = prefill([(1024, 0)])
    s2 = prefill([(476, 1024), (548, 0)])
    s3 = prefill([(452, 548)])
    assert r.ttft_s[0] == pytest.approx(s1 + s2, rel=1e-12)
    assert r.ttft_s[1] == pytest.approx(s1 + s2 + s3, rel=1e-12)


def test_preemption_by_hand() -> None:
    # 6 blocks of 16 tokens, one kept aside as vLLM's null block: 5 usable. A and B (32-token
    # prompts, 40 outputs) are both admitted and prefilled in step 1 (4 blocks). In step 2 A
    # takes the last block for its 33rd token; B needs one too and is preempted (newest
    # running request). B cannot come back while A holds blocks (its whole sequence, 33
    # tokens, needs 3 blocks), so it resumes when A finishes: 33 tokens recomputed in one
    # step that also yields its second token, then 38 decode steps.
    w = workload([(0.0, 32, 40, [1, 2]), (0.0, 32, 40, [3, 4])], block=16)
    for fast in (True, False):
        sim = Simulator(w, config(kv_capacity_tokens=96, fast_forward=fast), "round-robin")
        r = sim.run()
        sim.check_invariants()
        step1 = prefill([(32, 0), (32, 0)])
        a_end = step1 + sum(decode(32 + j) for j in range(1, 40))
        b_end = a_end + prefill([(33, 0)]) + sum(decode(32 + g) for g in range(2, 40))
        assert r.ttft_s.tolist() == pytest.approx([step1, step1], rel=1e-12)
        assert r.e2e_s.tolist() == pytest.approx([a_end, b_end], rel=1e-12)
        assert r.preemptions.tolist() == [0, 1]
        assert r.preemptions_per_instance.tolist() == [1]
        assert r.cached_tokens.tolist() == [0, 0]
        assert r.counts() == {"preemptions": 1, "requests_per_instance": [2]}


def test_blocks_cached_when_scheduled_and_block_mapping() -> None:
    # Workload blocks of 64 tokens = 4 engine blocks. B arrives while A is still prefilling
    # (chunks of 512): A's first chunk is cached when scheduled, so B hits 8 full trace
    # blocks = 32 engine blocks = 512 tokens.
    a = list(range(40))
    w = workload([(0.0, 2500, 1, a), (0.001, 600, 1, a[:8] + [900, 901])], block=64)
    r = simulate(w, config(token_budget=512), "round-robin:tie=lowest")
    assert r.ttft_s[0] > 0.001
    assert r.cached_tokens[1] == 512
    # the router saw the hit in engine blocks
    assert r.snapshots.hit_blocks[1, 0] == 32 and r.snapshots.uncached[1, 0] == 88
    assert r.snapshots.meta["block_size"] == 16


def test_full_hit_stops_one_token_short_in_engine_blocks() -> None:
    # Same 200-token prompt twice: 12 full engine blocks (192 tokens) lie inside full trace
    # blocks; the hit is capped at (200 - 1) // 16 = 12 blocks.
    hs = [1, 2, 3, 4]
    w = workload([(0.0, 200, 1, hs), (5.0, 200, 1, hs), (9.0, 192, 1, hs[:3])], block=64)
    r = simulate(w, config(), "round-robin")
    assert r.cached_tokens.tolist() == [0, 192, 176]


def test_block_size_must_divide_the_hash_block() -> None:
    w = workload([(0.0, 100, 1, [1])], block=100)
    with pytest.raises(ValueError, match="does not divide"):
        Simulator(w, config(), "round-robin")
    with pytest.raises(ValueError, match="scheduler"):
        config(scheduler="sglang")


def test_router_counters() -> None:
    # Three requests in a burst to one instance, then a fourth later.
    w = workload([(0.0, 100, 3, [1, 2]), (0.0, 100, 3, [1, 2]), (0.0, 50, 2, [7]),
                  (10.0, 100, 2, [1, 2])], block=64)
    sim = Simulator(w, config(), "round-robin")
    r = sim.run()
    log = r.snapshots
    # in-flight and all tokens grow at dispatch, before any step ran
    assert log.router_inflight[:3, 0].tolist() == [0, 1, 2]
    assert log.router_all_tokens[:3, 0].tolist() == [0, 100, 200]
    # queued prefill tokens: + predicted new tokens (nothing cached yet: the whole prompt)
    assert log.router_queued[:3, 0].tolist() == [0, 100, 200]
    # at t = 10 everything finished: counters back to zero. Cached: the full 64-token trace
    # block (4 engine blocks) and the 2 full engine blocks of the partial one (same hash).
    assert log.router_inflight[3, 0] == 0 and log.router_all_tokens[3, 0] == 0
    assert log.router_queued[3, 0] == 0 and log.hit_blocks[3, 0] == 6
    assert sim.router_counters() == {"queued": [0], "inflight": [0], "all_tokens": [0],
                                     "inflight_new": [0]}


@pytest.mark.parametrize("scheduler", ["vllm-v1", "reserve"])
def test_router_inflight_new_tokens_released_at_finish_not_at_prefill(scheduler: str) -> None:
    # A: 100-token prompt, 40 outputs (prefill ~0.02 s, then ~40 decode steps of ~0.011 s).
    # B (50 tokens, 40 outputs) at 0.1 s sees A prefilled but still decoding; C at 0.15 s
    # also sees B's 50 (prefilled too, still decoding);
    # D at 10 s sees everything finished.
    w = workload([(0.0, 100, 40, [1, 2]), (0.1, 50, 40, [5]), (0.15, 30, 2, [6]),
                  (10.0, 10, 2, [7])], block=64)
    cfg = config(scheduler=scheduler, **({} if scheduler == "vllm-v1" else {"block_size": 64}))
    sim = Simulator(w, cfg, "round-robin")
    log = sim.run().snapshots
    # prefill drained the paper's queued tokens; the fork's counter keeps A's 100 new tokens
    assert log.router_queued[:, 0].tolist() == [0, 0, 0, 0]
    assert log.router_inflight_new_tokens[:, 0].tolist() == [0, 100, 150, 0]
    assert log.router_inflight[:, 0].tolist() == [0, 1, 2, 0]
    assert sim.router_counters()["inflight_new"] == [0]


# ---------------------------------------------------------------------- invariants

def random_workload(seed: int, n: int = 40, block: int = 64, span: float = 5.0) -> Workload:
    rng = np.random.default_rng(seed)
    reqs = []
    t = np.round(np.sort(rng.uniform(0, span, n)), 1)  # bursts: equal arrival times
    nxt = 10_000
    for i in range(n):
        inp = int(rng.integers(1, 2500))
        k = -(-inp // block)
        share = int(rng.integers(0, k + 1))
        pref = int(rng.integers(4))
        hs = [pref * 1000 + j for j in range(share)] + list(range(nxt, nxt + k - share))
        nxt += k
        reqs.append((float(t[i]), inp, int(rng.integers(1, 60)), hs))
    return workload(reqs, block)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 3), cap=st.sampled_from([3000, 6000, 50_000]),
       policy=st.sampled_from(["round-robin", "lmetric", "least-loaded", "random"]),
       view=st.sampled_from(["precise", "approximate"]), delay=st.sampled_from([0.0, 0.3]))
def test_block_conservation_and_completion(seed: int, n: int, cap: int, policy: str, view: str,
                                           delay: float) -> None:
    w = random_workload(seed)
    cfg = config(n, kv_capacity_tokens=cap, token_budget=512, max_batch=8, view=view,
                 signal_delay_s=delay)
    sim = Simulator(w, cfg, policy, seed=seed)
    for d in range(len(w)):
        sim.advance(until_decision=d)
        sim.check_invariants()  # blocks conserved, chains consistent, counters >= 0
        assert min(sim.router_counters()["inflight_new"]) >= 0
    r = sim.run()
    sim.check_invariants()
    assert r.completed.all()
    assert int(r.output_tokens_produced.sum()) == int(r.output_tokens.sum())
    # every prompt token is computed or hit at least once; preemption recomputes more
    assert int(r.prefill_tokens_computed.sum()) >= int((r.input_tokens - r.cached_tokens).sum())
    if not r.preemptions.any():
        assert int(r.prefill_tokens_computed.sum()) == int((r.input_tokens - r.cached_tokens).sum())
    assert np.all(r.peak_kv_tokens <= cap)
    assert np.all(r.ttft_s > 0) and np.all(r.e2e_s >= r.ttft_s)
    assert r.preemptions_per_instance.sum() == r.preemptions.sum()
    for name in ("queued", "inflight", "all_tokens", "inflight_new"):
        assert sim.router_counters()[name] == [0] * n
    assert (r.snapshots.router_inflight_new_tokens >= 0).all()


def test_tiny_pool_preempts_and_everything_completes() -> None:
    w = random_workload(3, n=60, span=1.0)
    sim = Simulator(w, config(1, kv_capacity_tokens=2600, token_budget=512, max_batch=16), "round-robin")
    r = sim.run()
    sim.check_invariants()
    assert r.completed.all()
    assert r.preemptions.sum() > 0
    assert r.counts()["preemptions"] == int(r.preemptions.sum())


@pytest.mark.parametrize("seed", range(6))
def test_closed_form_decode_equals_step_by_step(seed: int) -> None:
    w = random_workload(seed, n=60)
    for policy, extra in (("lmetric", {}), ("round-robin", {"kv_capacity_tokens": 3000}),
                          ("lmetric:B=in-flight", {"view": "approximate", "signal_delay_s": 0.2})):
        kw = dict(token_budget=1024, max_batch=16) | extra
        fast = simulate(w, config(2, **kw), policy)
        slow = simulate(w, config(2, fast_forward=False, **kw), policy)
        np.testing.assert_array_equal(fast.instance, slow.instance)
        np.testing.assert_array_equal(fast.cached_tokens, slow.cached_tokens)
        np.testing.assert_array_equal(fast.preemptions, slow.preemptions)
        np.testing.assert_allclose(fast.ttft_s, slow.ttft_s, rtol=1e-9)
        np.testing.assert_allclose(fast.e2e_s, slow.e2e_s, rtol=1e-9)
        for c in ("hit_blocks", "router_all_tokens", "router_queued", "running", "waiting", "queued",
                  "kv_usage"):
            np.testing.assert_allclose(getattr(fast.snapshots, c), getattr(slow.snapshots, c), rtol=1e-6)
        assert fast.iterations == slow.iterations
        assert fast.events < slow.events


def test_fork_is_independent() -> None:
    w = random_workload(5, n=50)
    cfg = config(3, kv_capacity_tokens=6000, token_budget=512, max_batch=8)
    full = simulate(w, cfg, "lmetric")
    sim = Simulator(w, cfg, "lmetric")
    sim.run(until_decision=20)
    f = sim.fork()
    f.run(until_decision=30)
    ff = f.fork()  # a fork of a fork is independent too
    np.testing.assert_array_equal(ff.run().e2e_s, full.e2e_s)
    np.testing.assert_array_equal(f.run().e2e_s, full.e2e_s)
    np.testing.assert_array_equal(sim.run().e2e_s, full.e2e_s)
    for s in (sim, f, ff):
        s.check_invariants()
