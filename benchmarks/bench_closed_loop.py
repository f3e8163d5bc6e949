"""Closed-loop replay speed against an open-loop replay of the same requests, side by side.

On the shared AIPerf agentic trace (delta convention), 8 instances, one policy:

- **closed loop**: ``SimConfig.concurrency = 32``; each later turn is scheduled when its
  previous turn completes, sessions are admitted as slots free;
- **open loop**: the same requests (same prompts and output blocks), each arriving at the
  time it actually arrived in the closed-loop run, replayed as a fixed schedule (no sessions).

Both simulate the same requests and produce nearly the same schedule, so the ratio is the
cost of closed-loop bookkeeping (the goal: at most 1.3x). Each figure is the median of
``--reps`` runs of the simulation alone (workload loading excluded), as wall time and as
this process's CPU time (steadier on a shared machine); runs alternate, so a busy machine
moves both figures of a repetition together, and each ratio is the median of the
per-repetition ratios.

Run from the project root::

    python benchmarks/bench_closed_loop.py [--trace PATH] [--policy SPEC] [--instances N]
                                           [--concurrency C] [--reps R] [--scheduler NAME]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRACE = ROOT.parent / "shared" / "traces" / "aiperf_agentic_code_sessions.jsonl"


def open_loop_twin(w, arrival_s: np.ndarray):
    """The requests of ``w`` as an open-loop workload arriving at ``arrival_s`` (sorted)."""
    from lmetric_theory.workload.loaders import make_workload
    from lmetric_theory.workload.sessions import take_csr

    order = np.argsort(arrival_s, kind="stable")
    flat, off = take_csr(w.hash_ids, w.hash_offsets, order)
    o_flat = o_off = None
    if w.output_hash_ids is not None:
        o_flat, o_off = take_csr(w.output_hash_ids, w.output_hash_offsets, order)
    return make_workload(arrival_s=arrival_s[order], input_tokens=w.input_tokens[order],
                         output_tokens=w.output_tokens[order], hash_ids=flat, hash_offsets=off,
                         block_size=w.block_size, session_ids=None, meta={"source": "open-loop twin"},
                         output_hash_ids=o_flat, output_hash_offsets=o_off)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    ap.add_argument("--policy", default="lmetric")
    ap.add_argument("--instances", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--scheduler", default="vllm-v1", choices=("vllm-v1", "reserve"))
    ap.add_argument("--preset", default="h100-llama3-8b-calibrated")
    args = ap.parse_args()
    if not args.trace.is_file():
        print(f"trace not found: {args.trace} (pass --trace)", file=sys.stderr)
        return 2
    from lmetric_theory.sim import SimConfig, Simulator, load_preset
    from lmetric_theory.workload import load_trace

    w = load_trace(args.trace, trace_format="mooncake-delta")
    pre = load_preset(args.preset)
    closed_cfg = SimConfig.from_preset(pre, args.instances, scheduler=args.scheduler,
                                       concurrency=args.concurrency, record_snapshots=False)
    open_cfg = SimConfig.from_preset(pre, args.instances, scheduler=args.scheduler,
                                     record_snapshots=False)
    first = Simulator(w, closed_cfg, args.policy).run()
    assert bool(first.completed.all())
    twin = open_loop_twin(w, np.asarray(first.arrival_s))
    t_closed, t_open, ratios = [], [], []
    c_closed, c_open, c_ratios = [], [], []
    for _ in range(args.reps):
        t, c = time.perf_counter(), time.process_time()
        rc = Simulator(w, closed_cfg, args.policy).run()
        tc, cc = time.perf_counter() - t, time.process_time() - c
        t, c = time.perf_counter(), time.process_time()
        ro = Simulator(twin, open_cfg, args.policy).run()
        to, co = time.perf_counter() - t, time.process_time() - c
        assert bool(rc.completed.all()) and bool(ro.completed.all())
        t_closed.append(tc)
        t_open.append(to)
        ratios.append(tc / to)
        c_closed.append(cc)
        c_open.append(co)
        c_ratios.append(cc / co)
    print(f"trace: {args.trace.name}, {len(w):,} requests, {w.sessions.n_sessions:,} sessions; "
          f"{args.instances} instances, policy {args.policy}, scheduler {args.scheduler}, "
          f"{args.reps} repetitions")
    med = statistics.median
    print(f"closed loop (concurrency {args.concurrency}): median {med(t_closed):.2f} s wall, "
          f"{med(c_closed):.2f} s CPU")
    print(f"open loop (same requests, closed-loop arrivals): median {med(t_open):.2f} s wall, "
          f"{med(c_open):.2f} s CPU")
    print(f"ratio closed / open: median {med(ratios):.2f}x wall, {med(c_ratios):.2f}x CPU "
          "(goal <= 1.3x)")
    print(f"mean TTFT closed {np.nanmean(rc.ttft_s):.3f} s, open {np.nanmean(ro.ttft_s):.3f} s; "
          f"events closed {rc.events:,}, open {ro.events:,}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
