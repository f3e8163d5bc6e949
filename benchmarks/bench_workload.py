"""Workload speed: trace loading vs plain JSON parsing, and the synthetic generator.

Measures in one run, medians over ``--reps`` repetitions:

- ``json.loads`` per line of the trace file (open, read lines, parse each; the baseline);
- :func:`load_trace` on the same file (read, parse, validate every field, build arrays);
- their ratio (load / baseline);
- :func:`default_workload` (the synthetic mixed workload used when no trace is given).

Run from the project root::

    python benchmarks/bench_workload.py [--trace PATH] [--reps R]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from lmetric_theory.workload import default_workload, load_trace

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRACE = ROOT.parent / "shared" / "traces" / "mooncake_conversation_trace.jsonl"


def median_s(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    ap.add_argument("--reps", type=int, default=9)
    args = ap.parse_args()
    if not args.trace.is_file():
        print(f"trace not found: {args.trace} (pass --trace)", file=sys.stderr)
        return 2

    def baseline() -> list:
        with open(args.trace, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh]

    n = len(load_trace(args.trace))  # warm caches and imports
    # interleave the two measurements so machine load affects both alike
    base_t, load_t = [], []
    for _ in range(args.reps):
        base_t.append(median_s(baseline, 1))
        load_t.append(median_s(lambda: load_trace(args.trace), 1))
    base, load = statistics.median(base_t), statistics.median(load_t)
    w = default_workload()
    synth = median_s(default_workload, max(3, args.reps // 3))

    rows = [
        ("json.loads per line (baseline)", base, n),
        ("load_trace (validated Workload)", load, n),
        ("default_workload() synthetic", synth, len(w)),
    ]
    print(f"trace: {args.trace.name}, {n} requests; medians of {args.reps} runs")
    print(f"{'step':<34}{'median ms':>11}{'requests/s':>14}")
    for name, t, k in rows:
        print(f"{name:<34}{t * 1e3:>11.1f}{k / t:>14,.0f}")
    print(f"ratio load_trace / json.loads: {load / base:.2f}")
    print(
        "command: python benchmarks/bench_workload.py"
        + ("" if args.trace == DEFAULT_TRACE else f" --trace {args.trace}")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
