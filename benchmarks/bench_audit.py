"""Audit speed: ``lmetric-theory audit`` of the shared Mooncake trace on 8 instances with a
given lam (goal: <= 5 s wall, trace loading included), next to the synthetic default.

Prints the median of several runs of each stage (load, replay + check + report) and the
command that reproduces the figures::

    python benchmarks/bench_audit.py [--repeat 3] [--trace PATH] [--lam 512]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from lmetric_theory.audit import audit_workload
from lmetric_theory.cli import main as cli_main
from lmetric_theory.detector import LinearReference
from lmetric_theory.workload import default_workload, load_trace

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT.parent / "shared" / "traces" / "mooncake_conversation_trace.jsonl"
GOAL_S = 5.0


def _median_time(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--trace", default=str(TRACE))
    ap.add_argument("--lam", type=float, default=512.0)
    ap.add_argument("--instances", type=int, default=8)
    a = ap.parse_args()
    if not Path(a.trace).is_file():
        print(f"trace not found: {a.trace}", file=sys.stderr)
        return 2
    ref = LinearReference.fixed(a.lam)
    w = load_trace(a.trace)
    t_load = _median_time(lambda: load_trace(a.trace), a.repeat)
    t_audit = _median_time(
        lambda: audit_workload(w, instances=a.instances, reference=ref), a.repeat)
    devnull = open(os.devnull, "w")  # noqa: SIM115
    argv = ["audit", os.path.relpath(a.trace), "--instances", str(a.instances), "--lambda", f"{a.lam:g}",
            "--json"]

    def cli() -> None:
        old = sys.stdout
        sys.stdout = devnull
        try:
            assert cli_main(argv) == 0
        finally:
            sys.stdout = old

    t_cli = _median_time(cli, a.repeat)
    shell = [sys.executable, "-m", "lmetric_theory", *argv]
    t_proc = _median_time(
        lambda: subprocess.run(shell, check=True, stdout=subprocess.DEVNULL), a.repeat)
    d = default_workload()
    t_default = _median_time(
        lambda: audit_workload(d, instances=a.instances, reference=ref), a.repeat)
    print(f"median of {a.repeat} runs, {len(w)} requests, {a.instances} instances, lam={a.lam:g}")
    print(f"  load trace                          {t_load:7.3f} s")
    print(f"  audit_workload (replay+check+report) {t_audit:7.3f} s")
    print(f"  CLI audit --json (load+audit+print)  {t_cli:7.3f} s   goal <= {GOAL_S:g} s: "
          f"{'met' if t_cli <= GOAL_S else 'NOT met'} ({t_cli / GOAL_S:.2f}x of the budget)")
    print(f"  new process (imports included)       {t_proc:7.3f} s   goal <= {GOAL_S:g} s: "
          f"{'met' if t_proc <= GOAL_S else 'NOT met'}")
    print(f"  audit_workload, synthetic default ({len(d)} requests) {t_default:7.3f} s")
    print(f"  load average: {os.getloadavg()[0]:.2f}")
    print("reproduce: python benchmarks/bench_audit.py --repeat "
          f"{a.repeat} --lam {a.lam:g} --instances {a.instances}")
    print(f"      i.e.: lmetric-theory {' '.join(argv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
