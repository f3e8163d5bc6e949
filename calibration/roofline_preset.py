"""Write the roofline preset of a model shape on a GPU (the base of a calibrated one).

The calibrated preset takes its KV capacity, token budget and batch limit from this base
(``lmetric-theory calibrate --base``); its latency coefficients come from the measured rows.
A preset built from public specifications alone (no measured rows) is marked with
``--uncalibrated``: its description then starts with "UNCALIBRATED".

The model file is the ``.meta.json`` written by ``measure_iterations.py`` or a
``*.model.json`` with the same ``model`` and ``params`` keys; ``active_params`` (a mixture of
experts: the parameters one token passes through) sets the FLOPs per token, ``params`` the
weight bytes; ``gpu_memory_bytes`` may be given with ``--gpu-memory-gb`` instead.

Examples
--------
::

    python calibration/roofline_preset.py calibration/h200_qwen2.5_7b_iterations.meta.json \\
        --name h200-qwen2.5-7b --hbm-tb-s 4.8 --peak-tflops 989 \\
        --out lmetric_theory/presets/h200-qwen2.5-7b.json
    # the paper's set-up (H20: 148 TFLOP/s dense BF16, 4.0 TB/s HBM3, 96 GB; vLLM flags of the
    # authors' launch config: --max-num-seqs 256, --gpu-memory-utilization 0.85, 4,096-token chunks)
    python calibration/roofline_preset.py calibration/qwen3_30b_a3b.model.json \\
        --name h20-qwen3-30b-a3b --hbm-tb-s 4.0 --peak-tflops 148 --gpu-memory-gb 96 \\
        --memory-utilization 0.85 --token-budget 4096 --max-batch 256 --uncalibrated \\
        --out lmetric_theory/presets/h20-qwen3-30b-a3b.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from lmetric_theory.sim.latency import roofline_preset


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("meta", type=Path, help="a .meta.json (measure_iterations.py) or *.model.json")
    ap.add_argument("--name", required=True)
    ap.add_argument("--hbm-tb-s", type=float, required=True, help="HBM bandwidth, TB/s")
    ap.add_argument("--peak-tflops", type=float, required=True, help="dense bf16 peak, TFLOP/s")
    ap.add_argument("--gpu-memory-gb", type=float, default=None,
                    help="GPU memory, GB (1e9 bytes; default: the file's gpu_memory_bytes)")
    ap.add_argument("--memory-utilization", type=float, default=0.9,
                    help="fraction of GPU memory for weights + KV (vLLM's --gpu-memory-utilization)")
    ap.add_argument("--token-budget", type=int, default=8192)
    ap.add_argument("--max-batch", type=int, default=1024)
    ap.add_argument("--uncalibrated", action="store_true",
                    help="public specifications only: the description starts with UNCALIBRATED")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    meta = json.loads(args.meta.read_text())
    m = meta["model"]
    memory = args.gpu_memory_gb * 1e9 if args.gpu_memory_gb is not None else meta["gpu_memory_bytes"]
    preset = roofline_preset(
        args.name, params=meta["params"], active_params=meta.get("active_params"),
        n_layers=m["n_layers"], n_heads=m["n_heads"],
        n_kv_heads=m["n_kv_heads"], head_dim=m["head_dim"],
        hbm_bytes_per_s=args.hbm_tb_s * 1e12, peak_flops=args.peak_tflops * 1e12,
        hbm_capacity_bytes=memory, memory_utilization=args.memory_utilization,
        token_budget=args.token_budget, max_batch=args.max_batch)
    if args.uncalibrated:
        preset = dataclasses.replace(
            preset, description=f"UNCALIBRATED (public specifications, no measured rows); "
            f"{preset.description}")
    args.out.write_text(json.dumps(preset.to_dict(), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
