"""The vLLM engine (vLLM v1's own scheduler per instance) and the differential comparison.

Tests that need vLLM skip with a reason when it is not importable; the CLI test without vLLM
runs only where it is absent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from conftest import vllm_availability

from lmetric_theory.experiments.differential import compare_results
from lmetric_theory.sim import LatencyModel, SimConfig, load_preset, simulate
from lmetric_theory.sim.vllm_adapter import (
    PINNED_VLLM_VERSION,
    VllmUnavailable,
    installed_vllm_version,
    require_vllm,
)
from lmetric_theory.workload.loaders import make_workload

HAVE_VLLM, WHY = vllm_availability()

needs_vllm = pytest.mark.skipif(not HAVE_VLLM, reason=WHY or "vLLM not importable")

LAT = LatencyModel(c0=0.01, c_pf=1e-4, c_dec=1e-3, c_kv=1e-6, c_att=1e-9)


def _workload(arrivals, inputs, outputs, hashes, block_size=16):
    """A small workload; ``hashes[i]`` lists request i's block hashes."""
    lens = [len(h) for h in hashes]
    return make_workload(
        arrival_s=np.asarray(arrivals, dtype=np.float64),
        input_tokens=np.asarray(inputs, dtype=np.int64),
        output_tokens=np.asarray(outputs, dtype=np.int64),
        hash_ids=np.asarray([x for h in hashes for x in h], dtype=np.int64),
        hash_offsets=np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
        block_size=block_size, session_ids=None, meta={},
    )


def _t(chunks, n_dec=0, kv_dec=0):
    """Hand computation of one step: ``chunks`` = [(context, tokens)]."""
    pt = sum(c for _, c in chunks)
    kv = kv_dec + sum(x + c for x, c in chunks)
    att = sum(c * (x + c / 2) for x, c in chunks)
    return LAT.c0 + LAT.c_pf * pt + LAT.c_dec * n_dec + LAT.c_kv * kv + LAT.c_att * att


def test_require_vllm_message_names_install_or_versions():
    v = installed_vllm_version()
    if v is None:
        with pytest.raises(VllmUnavailable, match=r'pip install -e "\.\[vllm\]"'):
            require_vllm()
    elif v.split("+")[0] != PINNED_VLLM_VERSION:
        with pytest.raises(VllmUnavailable, match=PINNED_VLLM_VERSION):
            require_vllm()
    else:
        assert require_vllm() == v


@pytest.mark.skipif(installed_vllm_version() is not None, reason="vLLM is installed here")
def test_cli_engine_vllm_without_extra_one_line_exit_2():
    p = subprocess.run([sys.executable, "-m", "lmetric_theory", "simulate", "--engine", "vllm",
                        "--count", "10"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install" in lines[0] and "[vllm]" in lines[0]


def test_differential_of_identical_results_is_zero():
    w = _workload([0.0, 0.0, 1.0], [40, 40, 70], [3, 1, 2], [[1, 2], [1, 2], [1, 2, 3, 4]])
    cfg = SimConfig(n_instances=2, latency=LAT, kv_capacity_tokens=4096, token_budget=64,
                    max_batch=8)
    r = simulate(w, cfg, "round-robin")
    d = compare_results(r, r)
    assert d.requests == 3 and d.ttft_rel_err_max == 0.0 and d.ttft_mean_rel_diff == 0.0
    assert d.same_assignment and d.cached_rel_diff == 0.0
    slower = replace(r, ttft_s=r.ttft_s * 1.1)
    d2 = compare_results(slower, r)
    assert d2.ttft_rel_err_median == pytest.approx(0.1)
    assert d2.ttft_mean_rel_diff == pytest.approx(0.1)


@needs_vllm
def test_one_request_hand_computed():
    from lmetric_theory.sim.vllm_engine import simulate_vllm

    # 100-token prompt, 3 output tokens, 64-token budget: chunks 64 then 36 (first token),
    # then two decode steps with contexts 101 and 102.
    w = _workload([0.5], [100], [3], [[7] * 7])
    cfg = SimConfig(n_instances=1, latency=LAT, kv_capacity_tokens=16 * 64, token_budget=64,
                    max_batch=4)
    r = simulate_vllm(w, cfg, assignment=np.zeros(1, dtype=int))
    ttft = _t([(0, 64)]) + _t([(64, 36)])
    e2e = ttft + _t([], 1, 101) + _t([], 1, 102)
    assert r.ttft_s[0] == pytest.approx(ttft, rel=1e-12)
    assert r.e2e_s[0] == pytest.approx(e2e, rel=1e-12)
    assert r.cached_tokens[0] == 0
    assert r.config["engine"] == "vllm" and r.config["vllm_version"].startswith(PINNED_VLLM_VERSION)
    assert r.iterations == 4 and int(r.prefill_tokens_computed[0]) == 100


@needs_vllm
def test_prefix_cache_hit_in_whole_blocks_and_last_token_recomputed():
    from lmetric_theory.sim.vllm_engine import simulate_vllm

    # Same 64-token prompt twice (second after the first finished): the hit is capped at
    # prompt - 1 tokens in whole 16-token blocks = 48; a third prompt shares 2 blocks of 16.
    w = _workload([0.0, 10.0, 20.0], [64, 64, 64], [2, 2, 2],
                  [[5, 6, 7, 8], [5, 6, 7, 8], [5, 6, 9, 9]])
    cfg = SimConfig(n_instances=1, latency=LAT, kv_capacity_tokens=16 * 64, token_budget=64,
                    max_batch=4)
    r = simulate_vllm(w, cfg, assignment=np.zeros(3, dtype=int))
    assert r.cached_tokens.tolist() == [0, 48, 32]
    assert r.ttft_s[1] == pytest.approx(_t([(48, 16)]), rel=1e-12)


@needs_vllm
def test_small_pool_preempts_and_still_completes_everything():
    from lmetric_theory.sim.vllm_engine import simulate_vllm

    # 4 requests of 200 + 200 tokens on 40 blocks of 16 (640 tokens): admitted together,
    # their decodes outgrow the pool and vLLM preempts (recompute) the newest.
    n = 4
    w = _workload([0.0] * n, [200] * n, [200] * n, [[100 + i] * 13 for i in range(n)])
    cfg = SimConfig(n_instances=1, latency=LAT, kv_capacity_tokens=16 * 40, token_budget=512,
                    max_batch=8)
    r = simulate_vllm(w, cfg, assignment=np.zeros(n, dtype=int))
    assert r.completed.all()
    assert r.config["preemptions_total"] > 0
    if getattr(r, "preemptions", None) is not None:
        assert int(r.preemptions.sum()) == r.config["preemptions_total"]
        assert int(r.preemptions_per_instance.sum()) == r.config["preemptions_total"]
    assert (r.output_tokens_produced.sum() >= (r.output_tokens).sum())


@needs_vllm
def test_closed_loop_policy_matches_fixed_assignment_for_round_robin():
    from lmetric_theory.sim.vllm_engine import simulate_vllm

    rng = np.random.default_rng(3)
    n = 24
    arr = np.sort(rng.integers(0, 6, n)).astype(float)
    inp = rng.integers(20, 300, n)
    out = rng.integers(1, 30, n)
    hashes = [[int(rng.integers(0, 4))] + [1000 + 50 * i + k for k in range(-(-int(L) // 16) - 1)]
              for i, L in enumerate(inp)]
    w = _workload(arr, inp, out, hashes)
    cfg = SimConfig(n_instances=3, latency=LAT, kv_capacity_tokens=16 * 200, token_budget=128,
                    max_batch=8)
    a = simulate_vllm(w, cfg, "round-robin")
    b = simulate_vllm(w, cfg, assignment=np.arange(n) % 3)
    c = simulate_vllm(w, cfg, assignment=np.arange(n) % 3, processes=2)
    assert a.instance.tolist() == (np.arange(n) % 3).tolist()
    for x in (b, c):
        np.testing.assert_array_equal(a.ttft_s, x.ttft_s)
        np.testing.assert_array_equal(a.e2e_s, x.e2e_s)
        np.testing.assert_array_equal(a.cached_tokens, x.cached_tokens)


@needs_vllm
def test_dynamo_kv_routes_the_same_on_both_engines():
    """``dynamo-kv`` reads only router views, so vLLM's scheduler under it routes as the
    fast engine does (prefix hits, queued prefill and in-flight tokens agree step by step)."""
    from lmetric_theory.sim.vllm_engine import simulate_vllm

    rng = np.random.default_rng(5)
    n = 30
    arr = np.sort(rng.integers(0, 6, n)).astype(float)
    inp = rng.integers(20, 300, n)
    out = rng.integers(1, 30, n)
    hashes = [[int(rng.integers(0, 3))] + [2000 + 50 * i + k for k in range(-(-int(L) // 16) - 1)]
              for i, L in enumerate(inp)]
    w = _workload(arr, inp, out, hashes)
    cfg = SimConfig(n_instances=3, latency=LAT, kv_capacity_tokens=16 * 200, token_budget=128,
                    max_batch=8)
    a = simulate_vllm(w, cfg, "dynamo-kv:tie=lowest")
    b = simulate(w, cfg, "dynamo-kv:tie=lowest")
    assert a.instance.tolist() == b.instance.tolist()
    np.testing.assert_allclose(a.ttft_s, b.ttft_s, rtol=1e-9)


@needs_vllm
@pytest.mark.slow
def test_cli_engine_vllm_json_keys(mooncake_path):
    p = subprocess.run([sys.executable, "-m", "lmetric_theory", "simulate", str(mooncake_path),
                        "--engine", "vllm", "--count", "40", "-n", "2", "--policy", "round-robin",
                        "--json"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["config"]["engine"] == "vllm"
    assert doc["config"]["vllm_version"].startswith(PINNED_VLLM_VERSION)
    assert doc["policies"]["round-robin"]["completed"] == 40


@needs_vllm
@pytest.mark.slow
def test_differential_fast_vs_vllm_round_robin(mooncake_path):
    """Shared trace, first 2,000 requests, 4 instances, round-robin, the preset's KV pool."""
    from lmetric_theory.sim.vllm_engine import simulate_vllm
    from lmetric_theory.workload import load_trace
    from lmetric_theory.workload.transform import select

    w = select(load_trace(str(mooncake_path)), count=2000)
    cfg = SimConfig.from_preset(load_preset("h100-llama3-8b"), 4, scheduler="vllm-v1")
    fast = simulate(w, cfg, "round-robin")
    ref = simulate_vllm(w, cfg, assignment=np.arange(len(w)) % 4, processes=2)
    d = compare_results(fast, ref)
    assert d.same_assignment
    assert d.completed_a == d.completed_b == len(w)
    assert d.ttft_rel_err_median <= 0.01
    assert d.ttft_rel_err_p90 <= 0.03
    assert abs(d.ttft_mean_rel_diff) <= 0.02
    assert abs(d.preemptions_a - d.preemptions_b) <= max(3, 0.1 * d.preemptions_b)
    assert abs(d.cached_rel_diff) <= 0.005


@needs_vllm
@pytest.mark.slow
def test_differential_fast_vs_vllm_small_kv_pool(mooncake_path):
    """A tenth of the preset's KV pool: frequent preemption. Looser bounds (docs/simulator.md):
    one preemption decided a step apart cascades, so single requests may differ more."""
    from lmetric_theory.experiments.differential import fitting_requests
    from lmetric_theory.sim.vllm_engine import simulate_vllm
    from lmetric_theory.workload import load_trace
    from lmetric_theory.workload.transform import select

    preset = load_preset("h100-llama3-8b")
    cap = preset.kv_capacity_tokens // 10
    w = fitting_requests(select(load_trace(str(mooncake_path)), count=2000), cap)
    assert len(w) + len(w.meta["dropped_requests"]) == 2000
    cfg = SimConfig.from_preset(preset, 4, kv_capacity_tokens=cap, scheduler="vllm-v1")
    fast = simulate(w, cfg, "round-robin")
    ref = simulate_vllm(w, cfg, assignment=np.arange(len(w)) % 4, processes=2)
    d = compare_results(fast, ref)
    assert d.completed_a == d.completed_b == len(w)
    assert d.preemptions_b > 0
    assert d.ttft_rel_err_median <= 0.01
    assert d.ttft_rel_err_p90 <= 0.05
    assert abs(d.ttft_mean_rel_diff) <= 0.03
    assert abs(d.preemptions_a - d.preemptions_b) <= max(3, 0.1 * d.preemptions_b)
    assert abs(d.cached_rel_diff) <= 0.01


@needs_vllm
@pytest.mark.slow
def test_closed_loop_ranking_same_under_both_engines(mooncake_path):
    """lmetric and vllm-v1 routing in closed loop: the engines agree on the mean TTFTs, so on
    their ranking."""
    from lmetric_theory.sim.vllm_engine import simulate_vllm
    from lmetric_theory.workload import load_trace
    from lmetric_theory.workload.transform import select

    w = select(load_trace(str(mooncake_path)), count=500)
    cfg = SimConfig.from_preset(load_preset("h100-llama3-8b"), 4, scheduler="vllm-v1")
    means = {}
    for spec in ("lmetric", "vllm-v1"):
        fast = simulate(w, cfg, spec)
        ref = simulate_vllm(w, cfg, spec)
        d = compare_results(fast, ref)
        assert d.completed_a == d.completed_b == len(w)
        assert abs(d.ttft_mean_rel_diff) <= 0.02, spec
        means[spec] = (d.ttft_mean_a_s, d.ttft_mean_b_s)
    fast_order = sorted(means, key=lambda s: means[s][0])
    vllm_order = sorted(means, key=lambda s: means[s][1])
    assert fast_order == vllm_order
