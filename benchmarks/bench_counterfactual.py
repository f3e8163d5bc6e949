"""Runtime of the counterfactual study: where the time goes, and workers side by side.

Run: ``python benchmarks/bench_counterfactual.py [TRACE] [--samples K] [--workers 1 2]``
(default: the synthetic default workload; the issue's target is the shared Mooncake trace,
8 instances, default settings, <= 5 minutes on 2 cores). Prints, per worker count, the wall
time of each stage (replay + detector, forks, end-to-end replicates) and the fork cost per
sampled decision; then, in this process, the cost of the pieces of one decision's forks (one
``fork()``, one branch run to the horizon) and the median cost of one decision's forks with
the garbage collector paused (as the study runs them) and running, side by side. Figures
depend on the machine and on what else runs on it; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import numpy as np

from lmetric_theory.audit import default_reference
from lmetric_theory.experiments.counterfactual import counterfactual_study, fork_decision
from lmetric_theory.experiments.counterfactual import forks as forks_mod
from lmetric_theory.experiments.sweep import LocalExecutor
from lmetric_theory.sim import SimConfig, Simulator, load_preset
from lmetric_theory.workload import default_workload, load_trace, select


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("trace", nargs="?")
    ap.add_argument("--count", type=int, default=None)
    ap.add_argument("--instances", type=int, default=8)
    ap.add_argument("--samples", type=int, default=170)
    ap.add_argument("--horizon", type=float, default=30.0)
    ap.add_argument("--workers", type=int, nargs="+", default=[2])
    args = ap.parse_args()
    w = default_workload() if args.trace is None else load_trace(args.trace)
    if args.count:
        w = select(w, count=args.count)
    preset = load_preset("h100-llama3-8b-calibrated")  # the CLI's default
    cfg = SimConfig.from_preset(preset, args.instances)
    ref = default_reference(preset, w)
    print(f"{args.trace or 'synthetic default'}: {len(w)} requests, {args.instances} instances, "
          f"{args.samples} samples per group, horizon {args.horizon:g} s")
    print(f"{'workers':>7} {'replay':>8} {'forks':>8} {'e2e':>8} {'total':>8} {'decisions':>9} "
          f"{'s/decision':>10}")
    for n in args.workers:
        res = counterfactual_study(w, cfg, reference=ref, samples=args.samples,
                                   horizon_s=args.horizon, executor=LocalExecutor(n))
        d = res.to_dict()
        rt = d["runtime_s"]
        k = len(res.forks)
        print(f"{n:>7} {rt['replay']:>8.1f} {rt['forks']:>8.1f} {rt['end_to_end']:>8.1f} "
              f"{rt['total']:>8.1f} {k:>9} {rt['forks'] / max(k, 1):>10.3f}")

    # The pieces of one decision, in this process.
    sim = Simulator(w, cfg, "lmetric")
    base = sim.fork().run()
    d = len(w) // 2
    sim.advance(until_decision=d)
    t = time.perf_counter()
    for _ in range(10):
        sim.fork()
    t_fork = (time.perf_counter() - t) / 10
    arr = np.asarray(w.arrival_s)
    t = time.perf_counter()
    f = sim.fork()
    f.force(d, 0)
    f.advance(until_time=float(arr[d]) + args.horizon)
    t_branch = time.perf_counter() - t
    picks = [len(w) * k // 12 for k in range(3, 11)]
    base_sim = Simulator(w, cfg, "lmetric")
    costs: dict[str, list[float]] = {"paused": [], "running": []}
    fd = None
    for p in picks:
        base_sim.advance(until_decision=p)
        for mode in ("paused", "running"):
            saved = forks_mod._gc_paused
            if mode == "running":
                forks_mod._gc_paused = contextlib.nullcontext  # type: ignore[assignment]
            try:
                t = time.perf_counter()
                fd = fork_decision(base_sim, p, request=p, chosen=int(base.instance[p]),
                                   arrival_s=arr, horizon_s=args.horizon, converge_k=32)
                costs[mode].append(time.perf_counter() - t)
            finally:
                forks_mod._gc_paused = saved
    med = {k: statistics.median(v) for k, v in costs.items()}
    print(f"one fork() {t_fork * 1e3:.1f} ms; one branch to the horizon {t_branch * 1e3:.1f} ms")
    print(f"one decision ({args.instances} branches + A-A, median over {len(picks)} decisions, "
          f"last had {fd.affected if fd else 0} affected requests): collector paused "
          f"{med['paused']:.3f} s, running {med['running']:.3f} s "
          f"(ratio {med['running'] / med['paused']:.2f})")


if __name__ == "__main__":
    main()
