"""The two engines on the same replay, side by side: wall time and requests per second.

Replays the first COUNT requests of the shared Mooncake trace on N instances with a fixed
round-robin assignment (both engines see identical routing) and prints, per engine, the wall
time of the replay and simulated requests per second, plus the vLLM import (paid once per
process) and the per-request agreement of the two engines' TTFT. Needs the ``vllm`` extra.

Run from the project root::

    python benchmarks/bench_vllm.py [--trace PATH] [--count 2000] [--instances 4]
        [--processes 2] [--kv-fraction 1.0] [--scheduler vllm-v1]
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRACE = ROOT.parent / "shared" / "traces" / "mooncake_conversation_trace.jsonl"


def _cpu() -> float:
    """CPU seconds (user + system) of this process and its finished children."""
    a = resource.getrusage(resource.RUSAGE_SELF)
    b = resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", default=str(DEFAULT_TRACE))
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--instances", type=int, default=4)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--kv-fraction", type=float, default=1.0,
                    help="KV pool as a fraction of the preset's (default 1)")
    ap.add_argument("--preset", default="h100-llama3-8b")
    ap.add_argument("--scheduler", default="vllm-v1", help="fast engine scheduler (default vllm-v1)")
    args = ap.parse_args()

    t0 = time.perf_counter()
    from lmetric_theory.experiments.differential import compare_results, fitting_requests
    from lmetric_theory.sim import SimConfig, load_preset, simulate, vllm_adapter
    from lmetric_theory.sim.vllm_engine import simulate_vllm
    from lmetric_theory.workload import load_trace
    from lmetric_theory.workload.transform import select

    w = select(load_trace(args.trace), count=args.count)
    p = load_preset(args.preset)
    cap = int(p.kv_capacity_tokens * args.kv_fraction)
    if args.kv_fraction < 1:  # drop the requests an empty instance cannot hold
        w = fitting_requests(w, cap)
    cfg = SimConfig.from_preset(p, args.instances, kv_capacity_tokens=cap,
                                scheduler=args.scheduler)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    vllm_adapter._vllm()
    t_import = time.perf_counter() - t0
    assignment = np.arange(len(w)) % args.instances

    t0 = time.perf_counter()
    fast = simulate(w, cfg, "round-robin")
    t_fast = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), _cpu()
    ref = simulate_vllm(w, cfg, assignment=assignment, processes=args.processes)
    t_vllm, c_vllm = time.perf_counter() - t0, _cpu() - c0
    d = compare_results(fast, ref)

    n = len(w)
    print(f"{n} requests, {args.instances} instances, round-robin, preset {p.name}, "
          f"KV x{args.kv_fraction:g}; trace load {t_load:.1f} s, vLLM import {t_import:.1f} s")
    print(f"{'engine':<8} {'wall s':>8} {'req/s':>9} {'TTFT mean s':>12} {'preempt':>8}")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; vLLM replay CPU "
          f"{c_vllm:.1f} s over {args.processes} processes")
    print(f"{'fast':<8} {t_fast:8.2f} {n / t_fast:9.0f} {d.ttft_mean_a_s:12.4f} {d.preemptions_a:8d}")
    print(f"{'vllm':<8} {t_vllm:8.2f} {n / t_vllm:9.0f} {d.ttft_mean_b_s:12.4f} {d.preemptions_b:8d}"
          f"   ({args.processes} processes)")
    print(f"per-request TTFT rel. error: median {d.ttft_rel_err_median:.2%}, "
          f"p90 {d.ttft_rel_err_p90:.2%}; mean diff {d.ttft_mean_rel_diff:+.2%}; "
          f"cached tokens {d.cached_tokens_a} vs {d.cached_tokens_b} ({d.cached_rel_diff:+.3%}); "
          f"completed {d.completed_a} vs {d.completed_b}")


if __name__ == "__main__":
    main()
