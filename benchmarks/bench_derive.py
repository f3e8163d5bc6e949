"""Speed of the symbolic derivation.

Goals (issue 2): a cold ``lmetric-theory derive`` finishes in <= 5 s; a second
``derive()`` in the same process costs <= 1 ms.

Run: ``python benchmarks/bench_derive.py [--repeat N]``. Prints medians and the goals
side by side, and the commands that reproduce them.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time


def cold_cli(repeat: int, fmt: str) -> list[float]:
    """Wall seconds of ``lmetric-theory derive --format fmt`` in a fresh process."""
    exe = shutil.which("lmetric-theory")
    cmd = [exe] if exe else [sys.executable, "-m", "lmetric_theory"]
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run([*cmd, "derive", "--format", fmt], check=True,
                       stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return times


def in_process(repeat: int) -> tuple[float, list[float]]:
    """(first derive() seconds in this process, later derive() seconds)."""
    t = time.perf_counter()
    from lmetric_theory.theory import derive

    derive()
    first = time.perf_counter() - t
    later = []
    for _ in range(repeat):
        t = time.perf_counter()
        derive()
        later.append(time.perf_counter() - t)
    return first, later


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="cold CLI runs per format")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")

    rows = []
    for fmt in ("text", "json"):
        t = cold_cli(args.repeat, fmt)
        rows.append((f"cold `lmetric-theory derive --format {fmt}`", statistics.median(t),
                     5.0, "s"))
    first, later = in_process(10_000)
    rows.append(("first derive() in process (import + derivation)", first, None, "s"))
    rows.append(("cached derive(), second and later call", statistics.median(later) * 1e3,
                 1.0, "ms"))

    print(f"{'measure':<52} {'median':>10} {'goal':>8}  ratio (goal/median)")
    for name, value, goal, unit in rows:
        goal_s = f"{goal:g} {unit}" if goal is not None else "-"
        ratio = f"{goal / value:,.1f}x headroom" if goal and value > 0 else ""
        print(f"{name:<52} {value:>8.4g} {unit:<2} {goal_s:>7}  {ratio}")
    print(f"\ncold runs: {args.repeat} per format; cached: median of 10000 calls")
    print(f"reproduce: {sys.executable} benchmarks/bench_derive.py --repeat {args.repeat}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
