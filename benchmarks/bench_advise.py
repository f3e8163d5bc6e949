"""Advise speed: ``lmetric-theory advise`` on the embedded default workload (goal: <= 60 s wall
on 2 cores), run as a subprocess, with its own stage timings.

Prints wall time, the CPU time of the command and its workers (user + sys of the children),
the load average during the run (a shared machine inflates wall time, not CPU time), the
stage timings of ``runtime_s`` and the goal, side by side::

    python benchmarks/bench_advise.py [--repeat 1] [--workers 2] [-- extra advise flags]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_S = 60.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("extra", nargs="*", help="more advise flags (after --)")
    a = ap.parse_args()
    walls, cpus, loads = [], [], []
    stages: dict[str, list[float]] = {}
    verdict = ""
    for _ in range(a.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "lmetric_theory", "advise", "--workers", str(a.workers),
                   "--out", tmp, *a.extra]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
            walls.append(time.perf_counter() - t)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            loads.append(os.getloadavg()[0])
            if r.returncode != 0:
                print(r.stderr, file=sys.stderr)
                return r.returncode
            cpus.append((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
            doc = json.loads((Path(tmp) / "advice.json").read_text())
            for k, v in doc["runtime_s"].items():
                stages.setdefault(k, []).append(v)
            verdict = r.stdout.splitlines()[0]
    print(f"advise, embedded default, {a.workers} workers, {a.repeat} run(s) (median)")
    print(f"  wall            {statistics.median(walls):7.1f} s   goal <= {GOAL_S:.0f} s   "
          f"ratio {statistics.median(walls) / GOAL_S:.2f}")
    print(f"  CPU (all procs) {statistics.median(cpus):7.1f} s   CPU / (2 cores x goal) "
          f"{statistics.median(cpus) / (2 * GOAL_S):.2f}")
    print(f"  load average    {statistics.median(loads):7.1f}     (on {os.cpu_count()} CPUs)")
    for k, v in stages.items():
        print(f"  stage {k:<15} {statistics.median(v):7.1f} s")
    print(f"  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
