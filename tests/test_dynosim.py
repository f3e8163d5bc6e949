"""``--engine dynosim``: DynoSim (the ``dynamo`` extra) against the fast engine.

Every test needing the wheel skips, saying why, without the ``dynamo`` extra. The figures of
the full differential (shared traces, both timing models) are in docs/simulator.md, from
``benchmarks/bench_dynosim.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lmetric_theory.cli import main
from lmetric_theory.policies.registry import parse_spec
from lmetric_theory.sim import SimConfig
from lmetric_theory.sim.latency import load_preset
from lmetric_theory.workload.loaders import make_workload

WHY = "the dynamo extra (ai-dynamo-runtime==1.6.1) is not installed: pip install -e '.[dynamo]'"


def fixed_config(step_s: float, n: int = 1) -> SimConfig:
    from lmetric_theory.experiments.dynosim import fixed_step_config

    return fixed_step_config(SimConfig.from_preset(load_preset("h100-llama3-8b-calibrated"), n),
                             step_s)


def test_other_policies_refused_with_one_line(capsys) -> None:
    assert main(["simulate", "--count", "10", "--engine", "dynosim", "--policy", "lmetric"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "round-robin, dynamo-kv" in err[0]


@pytest.mark.parametrize("flag", [["--view", "approximate"], ["--signal-delay", "0.5"],
                                  ["--scheduler", "reserve"]])
def test_fast_engine_only_flags_refused(flag: list[str], capsys) -> None:
    assert main(["simulate", "--count", "10", "--engine", "dynosim", "--policy", "round-robin",
                 *flag]) == 2
    assert "do not apply" in capsys.readouterr().err


def test_one_long_request_by_hand_on_both_engines() -> None:
    """One 20,000-token prompt, budget 8,192: 3 prefill passes, then 4 decode passes of
    c0 = 10 ms each on both engines (a constant-time pass is the one model they share)."""
    pytest.importorskip("dynamo._core", reason=WHY)
    from lmetric_theory.experiments.dynosim import dynosim_differential

    w = make_workload(arrival_s=np.array([0.0]), input_tokens=np.array([20000]),
                      output_tokens=np.array([5]), hash_ids=np.arange(40, dtype=np.int64),
                      hash_offsets=np.array([0, 40]), block_size=512, session_ids=None,
                      meta={})
    d, ours, theirs = dynosim_differential(w, fixed_config(0.01), parse_spec("round-robin"))
    for r in (ours, theirs):
        assert r.ttft_s[0] == pytest.approx(0.03)
        assert r.e2e_s[0] == pytest.approx(0.07)
    assert d.ttft_median_rel_error == pytest.approx(0.0, abs=1e-9)


def test_round_robin_differential_on_the_shared_trace(mooncake_path: Path) -> None:
    """300 Mooncake requests, round-robin: the same worker for every request and prefix-hit
    rates within 0.5 points (the issue's target; the TTFT targets are not met, see
    docs/simulator.md)."""
    pytest.importorskip("dynamo._core", reason=WHY)
    from lmetric_theory.experiments.dynosim import dynosim_differential
    from lmetric_theory.workload import load_trace, select

    w = select(load_trace(str(mooncake_path)), count=300)
    cfg = SimConfig.from_preset(load_preset("h100-llama3-8b-calibrated"), 8)
    d, _, _ = dynosim_differential(w, cfg, parse_spec("round-robin"))
    assert d.requests == 300
    assert d.same_worker == 1.0
    assert abs(d.hit_rate_ours - d.hit_rate_dynosim) <= 0.005


def test_dynamo_kv_runs_on_dynosim(capsys) -> None:
    pytest.importorskip("dynamo._core", reason=WHY)
    import json

    assert main(["simulate", "--count", "100", "--engine", "dynosim", "--policy", "dynamo-kv",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["policies"]["dynamo-kv"]["completed"] == 100


def _one_token_outputs(w):
    return make_workload(arrival_s=w.arrival_s, input_tokens=w.input_tokens,
                         output_tokens=np.ones(len(w), dtype=np.int64), hash_ids=w.hash_ids,
                         hash_offsets=w.hash_offsets, block_size=w.block_size, session_ids=None,
                         meta={})


def test_engines_agree_without_decode_work(mooncake_path: Path) -> None:
    """With one-token outputs no pass mixes prefill and decode, the one place the shared
    constant-time model differs (DynoSim's ``fixed`` timing charges such a pass twice):
    round-robin TTFTs then agree request by request, and DynoSim's own ``kv_router`` picks one
    of our ``dynamo-kv`` lowest-cost workers at (almost) every decision on its trajectory."""
    pytest.importorskip("dynamo._core", reason=WHY)
    from lmetric_theory.experiments.dynosim import dynosim_differential, router_agreement
    from lmetric_theory.workload import load_trace, select

    w = _one_token_outputs(select(load_trace(str(mooncake_path)), count=400))
    cfg = fixed_config(0.02, n=8)
    d, _, _ = dynosim_differential(w, cfg, parse_spec("round-robin"))
    assert d.ttft_median_rel_error <= 1e-9
    assert abs(d.ttft_mean_rel_diff) <= 1e-9
    spec = parse_spec("dynamo-kv")
    _, _, theirs = dynosim_differential(w, cfg, spec)
    a = router_agreement(w, cfg, spec, theirs)
    assert a.decisions == 400
    assert a.pick_is_argmin >= 0.95
    assert abs(a.ttft_mean_rel_diff) <= 1e-9


def test_without_the_wheel_one_line_names_the_extra(monkeypatch, capsys) -> None:
    """An interpreter where ``dynamo._core`` cannot be imported (as without the extra)."""
    import sys

    monkeypatch.setitem(sys.modules, "dynamo._core", None)  # import now raises ImportError
    assert main(["simulate", "--count", "10", "--engine", "dynosim", "--policy",
                 "round-robin"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install -e ".[dynamo]"' in err[0]


def test_preemptions_and_mean_gap_read_back() -> None:
    """Four requests at t = 0 on one worker of 40 blocks of 16 tokens (each needs 8 prompt +
    13 output blocks): both vLLM-shaped schedulers preempt the last two admitted requests
    once each; DynoSim's ``readmission_count`` is read back as preemptions, and its mean
    inter-token gap equals the TPOT computed from its first and last token."""
    pytest.importorskip("dynamo._core", reason=WHY)
    import dataclasses

    from lmetric_theory.experiments.dynosim import dynosim_differential

    k = 4
    w = make_workload(arrival_s=np.zeros(k), input_tokens=120 + np.arange(k),
                      output_tokens=np.full(k, 200), hash_ids=np.arange(4 * k, dtype=np.int64) + 100,
                      hash_offsets=np.arange(0, 4 * k + 1, 4), block_size=32, session_ids=None,
                      meta={})
    cfg = dataclasses.replace(fixed_config(0.01), kv_capacity_tokens=16 * 41)
    _, ours, theirs = dynosim_differential(w, cfg, parse_spec("round-robin"))
    assert theirs.config["dynosim_engine_args"]["engine"]["num_gpu_blocks"] == 40
    assert ours.preemptions.tolist() == [0, 0, 1, 1]
    assert theirs.preemptions.tolist() == [0, 0, 1, 1]
    assert theirs.preemptions_per_instance.tolist() == [2]
    assert theirs.config["dynosim_itl_vs_tpot_max_abs_s"] <= 1e-12
