"""The H200 / Qwen2.5-7B measurements shipped in ``calibration/``, the presets fitted to them,
and the measurement script itself (run on a toy shape on the CPU)."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lmetric_theory.sim.latency import fit_latency, load_preset

ROOT = Path(__file__).resolve().parents[1]
CAL = ROOT / "calibration"
QWEN = CAL / "h200_qwen2.5_7b_iterations.csv"


def _rows(path: Path) -> dict[str, np.ndarray]:
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


def test_shipped_qwen_preset_is_the_fit_of_the_shipped_rows() -> None:
    a = _rows(QWEN)
    rep = fit_latency(a["prefill_tokens"], a["prefill_context"], a["decode_seqs"],
                      a["decode_context"], a["iteration_s_median"], attention=True)
    shipped = load_preset("h200-qwen2.5-7b-calibrated")
    for k in ("c0", "c_pf", "c_dec", "c_kv", "c_att"):
        assert getattr(shipped.latency, k) == pytest.approx(getattr(rep.model, k), rel=1e-3), k
    doc = json.loads((ROOT / "lmetric_theory/presets/h200-qwen2.5-7b-calibrated.json").read_text())
    assert doc["fit"]["rows"] == len(a["prefill_tokens"]) == 56
    assert doc["fit"]["mean_rel_error"] == pytest.approx(rep.mean_rel_error, rel=1e-6)
    assert doc["fit"]["worst_rel_error"] == pytest.approx(rep.worst_rel_error, rel=1e-6)


def test_qwen_presets_limits_follow_the_measured_model_and_gpu() -> None:
    meta = json.loads((CAL / "h200_qwen2.5_7b_iterations.meta.json").read_text())
    # Qwen2.5-7B: 28 layers x 4 KV heads x 128 x 2 (K, V) x 2 bytes per token.
    assert meta["kv_bytes_per_token"] == 28 * 4 * 128 * 2 * 2
    assert 7.6e9 < meta["params"] < 7.7e9
    base, cal = load_preset("h200-qwen2.5-7b"), load_preset("h200-qwen2.5-7b-calibrated")
    weights = meta["params"] * 2
    expect = int((meta["gpu_memory_bytes"] * 0.9 - weights) // meta["kv_bytes_per_token"])
    assert base.kv_capacity_tokens == cal.kv_capacity_tokens == expect
    assert (cal.token_budget, cal.max_batch) == (base.token_budget, base.max_batch) == (8192, 1024)


def test_rows_are_ordered_by_what_they_exercise() -> None:
    a = _rows(QWEN)
    kv = a["prefill_context"] + a["prefill_tokens"] + a["decode_seqs"] * a["decode_context"]
    assert np.array_equal(kv, a["kv_tokens_read"])
    assert np.all(a["iteration_s_p10"] <= a["iteration_s_median"])
    assert np.all(a["iteration_s_median"] <= a["iteration_s_p90"])
    # Measured monotonicity: more prefill tokens after the same context never take less time.
    pre = (a["decode_seqs"] == 0)
    for ctx in (0, 4096, 16384):
        sel = pre & (a["prefill_context"] == ctx)
        order = np.argsort(a["prefill_tokens"][sel])
        assert np.all(np.diff(a["iteration_s_median"][sel][order]) > 0)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                    reason="torch not installed (it comes with the vllm extra)")
def test_measurement_script_runs_on_a_toy_shape(tmp_path: Path) -> None:
    out = tmp_path / "toy.csv"
    proc = subprocess.run(
        [sys.executable, str(CAL / "measure_iterations.py"), "--model", "tiny", "--device", "cpu",
         "--grid", "tiny", "--reps", "2", "--warmup", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["prefill_tokens"]), int(r["decode_seqs"])) for r in rows] == [
        (0, 1), (0, 4), (64, 0), (64, 0), (32, 2)]
    assert all(float(r["iteration_s_median"]) > 0 for r in rows)
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    # Every candidate prefill kernel that ran matched the float32 reference.
    chosen = meta["prefill_attention"]["chosen"]
    assert meta["prefill_attention"]["candidates"][chosen]["ok"]
    # The written CSV is what the calibrator reads.
    from lmetric_theory.cli.calibrate import read_calibration_csv
    assert len(read_calibration_csv(out)["iteration_s_median"]) == 5
