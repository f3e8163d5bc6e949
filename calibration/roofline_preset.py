"""Write the roofline preset of a measured model shape on a GPU (the base of a calibrated one).

The calibrated preset takes its KV capacity, token budget and batch limit from this base
(``lmetric-theory calibrate --base``); its latency coefficients come from the measured rows.

Example
-------
::

    python calibration/roofline_preset.py calibration/h200_qwen2.5_7b_iterations.meta.json \\
        --name h200-qwen2.5-7b --hbm-tb-s 4.8 --peak-tflops 989 \\
        --out lmetric_theory/presets/h200-qwen2.5-7b.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lmetric_theory.sim.latency import roofline_preset


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("meta", type=Path, help="the .meta.json written by measure_iterations.py")
    ap.add_argument("--name", required=True)
    ap.add_argument("--hbm-tb-s", type=float, required=True, help="HBM bandwidth, TB/s")
    ap.add_argument("--peak-tflops", type=float, required=True, help="dense bf16 peak, TFLOP/s")
    ap.add_argument("--token-budget", type=int, default=8192)
    ap.add_argument("--max-batch", type=int, default=1024)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    meta = json.loads(args.meta.read_text())
    m = meta["model"]
    preset = roofline_preset(
        args.name, params=meta["params"], n_layers=m["n_layers"], n_heads=m["n_heads"],
        n_kv_heads=m["n_kv_heads"], head_dim=m["head_dim"],
        hbm_bytes_per_s=args.hbm_tb_s * 1e12, peak_flops=args.peak_tflops * 1e12,
        hbm_capacity_bytes=meta["gpu_memory_bytes"], token_budget=args.token_budget,
        max_batch=args.max_batch)
    args.out.write_text(json.dumps(preset.to_dict(), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
