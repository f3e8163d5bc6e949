"""Cost of the router-state layer, side by side with one exact router.

On the shared Mooncake trace (first ``--count`` requests, 8 instances, ``lmetric``), the
simulation alone (trace loading excluded) under:

- **default**: one router with exact state (``RouterView``, today's path);
- **R=8**: eight router replicas (``ReplicatedRouterView``: per-replica counters from
  the replicas' own unfinished requests at each decision);
- **lag 200 ms**: one router whose index is a mirror fed by lagged block events;
- **ttl 30 s**: the approximate index with a TTL.

Each figure is the median of ``--reps`` runs (CPU time of this process, steadier than wall
time on a shared machine); runs alternate, and each ratio is the median of the
per-repetition ratios against the default.

Run from the project root::

    python benchmarks/bench_router_state.py [--trace PATH] [--count N] [--reps R]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRACE = ROOT.parent / "shared" / "traces" / "mooncake_conversation_trace.jsonl"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trace", default=str(DEFAULT_TRACE))
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from lmetric_theory.sim import SimConfig, Simulator, load_preset
    from lmetric_theory.sim.routerstate import IndexSpec
    from lmetric_theory.workload import load_trace, select

    w = select(load_trace(args.trace), count=args.count)
    pre = load_preset("h100-llama3-8b-calibrated")
    cases = {
        "default": {},
        "R=8": {"router_replicas": 8},
        "lag 200 ms": {"kv_event_lag_s": 0.2},
        "ttl 30 s": {"index": IndexSpec("approximate", ttl_s=30.0)},
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.reps):
        for name, kw in cases.items():
            cfg = SimConfig.from_preset(pre, 8, record_snapshots=False, **kw)
            t0 = time.process_time()
            Simulator(w, cfg, "lmetric").run()
            times[name].append(time.process_time() - t0)
    base = times["default"]
    print(f"{len(w)} requests, 8 instances, lmetric, median of {args.reps} (CPU s)")
    for name, ts in times.items():
        ratio = statistics.median(t / b for t, b in zip(ts, base, strict=True))
        print(f"  {name:<12} {statistics.median(ts):7.3f} s   x{ratio:.2f} of default")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
