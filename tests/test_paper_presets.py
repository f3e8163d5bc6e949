"""The paper's set-up presets (``h20-qwen2.5-7b``, ``h20-qwen3-30b-a3b``): roofline numbers of
public H20 specifications and the models' configs, uncalibrated, reproducible from the script."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from lmetric_theory.sim import SimConfig, load_preset, roofline_preset

ROOT = Path(__file__).resolve().parents[1]
CAL = ROOT / "calibration"
H20 = {"hbm": 4.0e12, "peak": 148e12, "memory": 96e9, "util": 0.85}
MODELS = {"h20-qwen2.5-7b": "qwen2.5_7b.model.json", "h20-qwen3-30b-a3b": "qwen3_30b_a3b.model.json"}


def _script():
    spec = importlib.util.spec_from_file_location("roofline_preset", CAL / "roofline_preset.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", sorted(MODELS))
def test_shipped_preset_is_the_script_output(name: str, tmp_path: Path) -> None:
    out = tmp_path / f"{name}.json"
    rc = _script().main([str(CAL / MODELS[name]), "--name", name, "--hbm-tb-s", "4.0",
                         "--peak-tflops", "148", "--gpu-memory-gb", "96",
                         "--memory-utilization", "0.85", "--token-budget", "4096",
                         "--max-batch", "256", "--uncalibrated", "--out", str(out)])
    assert rc == 0
    shipped = json.loads((ROOT / "lmetric_theory/presets" / f"{name}.json").read_text())
    assert json.loads(out.read_text()) == shipped


@pytest.mark.parametrize("name", sorted(MODELS))
def test_hand_computed_roofline(name: str) -> None:
    meta = json.loads((CAL / MODELS[name]).read_text())
    m, p = meta["model"], load_preset(name)
    params = meta["params"]
    active = meta.get("active_params", params)
    kv = 2 * m["n_layers"] * m["n_kv_heads"] * m["head_dim"] * 2
    assert kv == meta["kv_bytes_per_token"]
    bw, fl = H20["hbm"] * 0.7, H20["peak"] * 0.5
    assert p.latency.c0 == pytest.approx(2 * params / bw, rel=1e-12)
    assert p.latency.c_pf == pytest.approx(2 * active / fl, rel=1e-12)
    assert p.latency.c_kv == pytest.approx(kv / bw, rel=1e-12)
    assert p.latency.c_att == pytest.approx(4 * m["n_layers"] * m["n_heads"] * m["head_dim"] / fl, rel=1e-12)
    assert p.kv_capacity_tokens == int((H20["memory"] * H20["util"] - 2 * params) // kv)
    assert (p.token_budget, p.max_batch) == (4096, 256)
    assert p.description.startswith("UNCALIBRATED")


def test_shapes_and_hand_computed_step_times() -> None:
    dense, moe = load_preset("h20-qwen2.5-7b"), load_preset("h20-qwen3-30b-a3b")
    # Qwen2.5-7B: 15.23 GB of weights at 2.8 TB/s = 5.44 ms per iteration.
    assert dense.latency.c0 == pytest.approx(7_615_616_512 * 2 / 2.8e12, rel=1e-12)
    assert dense.latency.c0 == pytest.approx(5.43973e-3, rel=1e-5)
    # MoE: all 30.5B weights read (4x the dense model's c0), 3.35B active FLOPs per token
    # (fewer than the dense 7.6B), a larger KV entry (48 layers) and so a smaller pool.
    assert moe.latency.c0 > 3.9 * dense.latency.c0
    assert moe.latency.c_pf < 0.5 * dense.latency.c_pf
    assert moe.latency.c_kv > dense.latency.c_kv
    assert moe.kv_capacity_tokens < dense.kv_capacity_tokens
    # (96e9 x 0.85 - 2 x 30,532,122,624) // 98,304 = 208,900 tokens per instance.
    assert moe.kv_capacity_tokens == 208_900
    # One 4,096-token prefill chunk with no context, no decode, on the dense preset:
    # c0 + 4096 c_pf + 4096 c_kv + c_att 4096 x 2048, by hand.
    c = dense.latency
    by_hand = (5.43973e-3 + 4096 * 2 * 7_615_616_512 / 74e12 + 4096 * 57_344 / 2.8e12
               + 4096 * 2048 * 4 * 28 * 28 * 128 / 74e12)
    assert c.iteration_time(4096, 0, 0, 0) == pytest.approx(by_hand, rel=1e-5)
    # A decode step of 64 sequences with 2,048 tokens of context each.
    assert c.iteration_time(0, 0, 64, 64 * 2048) == pytest.approx(
        5.43973e-3 + 64 * 1e-5 + 64 * 2048 * 57_344 / 2.8e12, rel=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_step_time_monotone(name: str) -> None:
    c = load_preset(name).latency
    base = c.iteration_time(512, 1024, 8, 8 * 1024)
    assert c.iteration_time(1024, 1024, 8, 8 * 1024) > base   # more prefill tokens
    assert c.iteration_time(512, 4096, 8, 8 * 1024) > base    # more prefill context
    assert c.iteration_time(512, 1024, 16, 8 * 1024) > base   # more decode sequences
    assert c.iteration_time(512, 1024, 8, 16 * 1024) > base   # more decode context


def test_presets_build_a_cluster_and_active_params_is_checked() -> None:
    cfg = SimConfig.from_preset(load_preset("h20-qwen3-30b-a3b"), 16)
    assert (cfg.n_instances, cfg.kv_capacity_tokens, cfg.token_budget, cfg.max_batch) == (16, 208_900, 4096, 256)
    with pytest.raises(ValueError, match="active_params"):
        roofline_preset("x", params=1e9, active_params=2e9, n_layers=1, n_heads=1, n_kv_heads=1,
                        head_dim=1, hbm_bytes_per_s=1e12, peak_flops=1e12, hbm_capacity_bytes=1e10)
