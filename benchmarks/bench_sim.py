"""Simulator speed and snapshot memory, figures side by side in one run.

Measures, on the shared Mooncake trace with 8 instances and one policy:

- wall time of a fresh interpreter that imports the package, loads the trace and simulates
  it (start-up included) with the default scheduler, through the ``simulate`` CLI (``--json``,
  output included) and as a library call;
- side by side with each of those runs, plain ``json.loads`` of the trace's lines in this
  process, and the ratio of the two (the goal: the CLI within 15 times ``json.loads``);
  the figures are medians over ``--reps`` runs, the ratio the median of the per-run ratios,
  so a busy machine moves both figures of a run together;
- the simulation alone, in process, under each scheduler (``vllm-v1``, ``reserve``);
- the memory of a snapshot log of 1,000,000 decisions x 16 instances;
- with ``--ref TREE`` (a source tree of another commit, e.g. a ``git worktree``), the CLI
  process of that tree and of this one run alternately, wall and CPU time side by side,
  and the per-run ratio this / reference (a busy machine moves both runs of a pair together).

Run from the project root::

    python benchmarks/bench_sim.py [--trace PATH] [--policy SPEC] [--instances N] [--reps R]
                                   [--preset NAME] [--ref TREE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRACE = ROOT.parent / "shared" / "traces" / "mooncake_conversation_trace.jsonl"

LIB_SNIPPET = """
import sys
from lmetric_theory.sim import SimConfig, load_preset, simulate
from lmetric_theory.workload import load_trace
w = load_trace(sys.argv[1])
r = simulate(w, SimConfig.from_preset(load_preset(sys.argv[4]), int(sys.argv[3])), sys.argv[2])
assert int(r.completed.sum()) == len(w)
"""


def timed(cmd: list[str]) -> float:
    return timed_cpu(cmd)[0]


def timed_cpu(cmd: list[str], tree: Path | None = None) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of a child process (run in ``tree``, with its
    package first on the path, if given: ``-m`` and ``-c`` put the working directory first)."""
    env = None if tree is None else dict(os.environ, PYTHONPATH=str(tree))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env, cwd=tree)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    ap.add_argument("--policy", default="lmetric")
    ap.add_argument("--instances", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--preset", default="h100-llama3-8b-calibrated")
    ap.add_argument("--ref", type=Path, help="source tree to compare the CLI process against")
    args = ap.parse_args()
    if not args.trace.is_file():
        print(f"trace not found: {args.trace} (pass --trace)", file=sys.stderr)
        return 2

    lines = args.trace.read_text().splitlines()
    n = len(lines)

    def parse_once() -> float:
        t = time.perf_counter()
        for line in lines:
            json.loads(line)
        return time.perf_counter() - t

    lib_cmd = [sys.executable, "-c", LIB_SNIPPET, str(args.trace), args.policy, str(args.instances),
               args.preset]
    cli_cmd = [sys.executable, "-m", "lmetric_theory", "simulate", str(args.trace), "--instances",
               str(args.instances), "--policy", args.policy, "--preset", args.preset, "--json"]
    startup_cmd = [sys.executable, "-c", "import lmetric_theory.sim, lmetric_theory.workload"]
    parse: list[float] = []
    clis: list[float] = []
    libs: list[float] = []
    r_cli: list[float] = []
    r_lib: list[float] = []
    for _ in range(args.reps):  # each run: json.loads, then the process, then json.loads
        before = parse_once()
        clis.append(timed(cli_cmd))
        libs.append(timed(lib_cmd))
        after = parse_once()
        parse += [before, after]
        r_cli.append(clis[-1] / ((before + after) / 2))
        r_lib.append(libs[-1] / ((before + after) / 2))
    t_parse = statistics.median(parse)
    t_lib, t_cli = statistics.median(libs), statistics.median(clis)
    ratio_cli, ratio_lib = statistics.median(r_cli), statistics.median(r_lib)
    t_start = statistics.median(timed(startup_cmd) for _ in range(args.reps))

    sys.path.insert(0, str(ROOT))
    from lmetric_theory.sim import SCHEDULERS, SimConfig, SnapshotLog, load_preset, simulate
    from lmetric_theory.workload import load_trace

    w = load_trace(args.trace)
    sim_rows = []
    for sched in SCHEDULERS:
        cfg = SimConfig.from_preset(load_preset(args.preset), args.instances, scheduler=sched)
        sims = []
        for _ in range(args.reps):
            t = time.perf_counter()
            r = simulate(w, cfg, args.policy)
            sims.append(time.perf_counter() - t)
        sim_rows.append((sched, statistics.median(sims), min(sims), r))
    snap = SnapshotLog.empty(1_000_000, 16)
    snap.uncached.fill(1)  # touch every page so the figure is resident memory, not a promise
    snap.queued.fill(1)
    snap.running.fill(1)
    snap.waiting.fill(1)
    snap.kv_usage.fill(1)
    snap.hit_blocks.fill(1)
    snap.router_queued.fill(1)
    snap.router_inflight.fill(1)
    snap.router_all_tokens.fill(1)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"trace: {args.trace.name}, {n} requests; {args.instances} instances; policy {r.policy}; "
          f"preset {args.preset}, default scheduler {SimConfig.__dataclass_fields__['scheduler'].default}; "
          f"median of {args.reps} (fastest in brackets); {os.cpu_count()} CPUs, load average {load:.2f}")
    print(f"{'json.loads of every line (beside each run)':44s} {t_parse:8.3f} s   [{min(parse):.3f} s]")
    print(f"{'interpreter + imports only':44s} {t_start:8.3f} s")
    print(f"{'fresh process: simulate CLI --json':44s} {t_cli:8.3f} s   {n / t_cli:8.0f} req/s   "
          f"{ratio_cli:5.1f}x json.loads   [{min(clis):.3f} s]   goal <= 15x")
    print(f"{'fresh process: load + simulate (library)':44s} {t_lib:8.3f} s   "
          f"{n / t_lib:8.0f} req/s   {ratio_lib:5.1f}x json.loads   [{min(libs):.3f} s]")
    print(f"{'ratio per run, CLI / json.loads':44s} " + " ".join(f"{x:.1f}x" for x in r_cli))
    for sched, t_sim, t_min, r in sim_rows:
        print(f"{'simulation only, ' + sched + ' (in process)':44s} {t_sim:8.3f} s   "
              f"{n / t_sim:8.0f} req/s   [{t_min:.3f} s]   {r.iterations} iterations in "
              f"{r.events} events, {int(r.preemptions.sum())} preemptions")
    print(f"{'snapshot log 1,000,000 x 16 (nbytes)':44s} {snap.nbytes / 2**20:8.1f} MiB   goal <= 1024 MiB")
    if args.ref is not None:
        trees = {"reference": args.ref.resolve(), "this tree": ROOT}
        pairs: dict[str, list[tuple[float, float]]] = {k: [] for k in trees}
        for _ in range(args.reps):
            for k, tree in trees.items():
                pairs[k].append(timed_cpu(cli_cmd, tree))
        for k, runs in pairs.items():
            print(f"{'CLI --json, ' + k:44s} {statistics.median(w for w, _ in runs):8.3f} s wall   "
                  f"{statistics.median(c for _, c in runs):8.3f} s CPU")
        w_ratio = [b[0] / a[0] for a, b in zip(pairs["reference"], pairs["this tree"], strict=True)]
        c_ratio = [b[1] / a[1] for a, b in zip(pairs["reference"], pairs["this tree"], strict=True)]
        print(f"{'this tree / reference, per pair (wall)':44s} " + " ".join(f"{x:.2f}" for x in w_ratio)
              + f"   median {statistics.median(w_ratio):.2f}")
        print(f"{'this tree / reference, per pair (CPU)':44s} " + " ".join(f"{x:.2f}" for x in c_ratio)
              + f"   median {statistics.median(c_ratio):.2f}")
    print("command: python benchmarks/bench_sim.py " + " ".join(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
