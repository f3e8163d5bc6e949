"""Sweep executors side by side: sequential, local processes, Dask local cluster (same tasks).

Run: ``python benchmarks/bench_sweep.py [TRACE] [--count N]`` (default: synthetic default
workload). Prints the wall time of each executor on the same 8 tasks (4 policies x rate scales
1 and 2, 8 instances), the speed-up over sequential, and whether the rows are identical.
"""

from __future__ import annotations

import argparse
import time

from lmetric_theory.experiments.sweep import DaskExecutor, LocalExecutor, SimTask, run_sweep
from lmetric_theory.sim import SimConfig, load_preset
from lmetric_theory.workload import default_workload, load_trace, scale_rate, select

POLICIES = ("lmetric", "lmetric:P=queued+uncached", "least-loaded", "round-robin")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("trace", nargs="?")
    ap.add_argument("--count", type=int, default=None)
    args = ap.parse_args()
    w = default_workload() if args.trace is None else load_trace(args.trace)
    if args.count:
        w = select(w, count=args.count)
    cfg = SimConfig.from_preset(load_preset("h100-llama3-8b"), 8, record_snapshots=False)
    tasks = [SimTask(scale_rate(w, k), cfg, p, 0, {"rate_scale": k}) for k in (1.0, 2.0) for p in POLICIES]
    out = {}
    t = time.perf_counter()
    ref = run_sweep(tasks, LocalExecutor(1))
    out["sequential"] = time.perf_counter() - t
    t = time.perf_counter()
    loc = run_sweep(tasks, LocalExecutor(2))
    out["local processes (2)"] = time.perf_counter() - t
    same = {"local processes (2)": loc == ref}
    try:
        from dask.distributed import Client, LocalCluster

        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c, \
                Client(c) as client:
            t = time.perf_counter()
            dk = run_sweep(tasks, DaskExecutor(client=client))
            out["dask LocalCluster (2 procs)"] = time.perf_counter() - t
            same["dask LocalCluster (2 procs)"] = dk == ref
    except ImportError:
        print("dask not installed: skipped")
    print(f"{len(tasks)} tasks, {len(w)} requests each, 8 instances")
    for name, s in out.items():
        eq = "" if name == "sequential" else f"  identical rows: {same[name]}"
        print(f"{name:30s} {s:7.2f} s  speed-up x{out['sequential'] / s:.2f}{eq}")
    print("command: python benchmarks/bench_sweep.py " + (args.trace or "") + (f" --count {args.count}" if args.count else ""))


if __name__ == "__main__":
    main()
