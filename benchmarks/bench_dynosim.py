"""The fast engine and DynoSim on the same trace, config and machine: times, ratio, agreement.

Speed: replays TRACE on N instances under round-robin, once in this process per engine and
once as a whole ``lmetric-theory simulate`` process per engine (interpreter start, imports,
trace load, replay, report), REPEAT times each, and prints the medians side by side with the
ratio DynoSim / ours (the goal is >= 5).

With ``--differential`` it prints instead the request-by-request differential of
:mod:`lmetric_theory.experiments.dynosim` (round-robin and ``dynamo-kv``) under both timing
models: the preset (DynoSim on its own ``polynomial`` timing) and the constant-time pass both
engines share (``--step`` seconds), plus the same constant-time replay with one-token
outputs (no decode work), and for ``dynamo-kv`` our port's cost on DynoSim's trajectory.
Needs the ``dynamo`` extra.

Run from the project root::

    python benchmarks/bench_dynosim.py [--trace PATH] [--count N] [--instances 8] [--repeat 3]
    python benchmarks/bench_dynosim.py --differential [--count N] [--step 0.02]
    python benchmarks/bench_dynosim.py --differential --sessions [--concurrency 16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT.parent / "shared" / "traces"
DEFAULT_TRACE = TRACES / "mooncake_conversation_trace.jsonl"
SESSIONS = TRACES / "aiperf_agentic_code_sessions.jsonl"


def _process(trace: str, engine: str, args: argparse.Namespace) -> float:
    cmd = [sys.executable, "-m", "lmetric_theory", "simulate", trace, "--engine", engine,
           "--policy", "round-robin", "--instances", str(args.instances), "--preset",
           args.preset, "--json"]
    if args.count:
        cmd += ["--count", str(args.count)]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def speed(args: argparse.Namespace) -> None:
    from lmetric_theory.policies.registry import parse_spec
    from lmetric_theory.sim import SimConfig, Simulator, load_preset
    from lmetric_theory.sim.dynosim import simulate_dynosim
    from lmetric_theory.workload import load_trace, select

    w = load_trace(args.trace)
    if args.count:
        w = select(w, count=args.count)
    cfg = SimConfig.from_preset(load_preset(args.preset), args.instances)
    spec = parse_spec("round-robin")
    ours, theirs, pours, ptheirs = [], [], [], []
    for _ in range(args.repeat):
        t = time.perf_counter()
        Simulator(w, cfg, spec).run()
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        simulate_dynosim(w, cfg, spec)
        theirs.append(time.perf_counter() - t)
        pours.append(_process(args.trace, "fast", args))
        ptheirs.append(_process(args.trace, "dynosim", args))
    m = statistics.median
    print(f"trace {args.trace} ({len(w)} requests), {args.instances} instances, round-robin, "
          f"preset {args.preset}, median of {args.repeat}")
    print(f"{'':28s}{'ours s':>10s}{'DynoSim s':>12s}{'ratio':>8s}")
    print(f"{'replay in one process':28s}{m(ours):10.2f}{m(theirs):12.2f}{m(theirs) / m(ours):8.2f}")
    print(f"{'whole simulate process':28s}{m(pours):10.2f}{m(ptheirs):12.2f}"
          f"{m(ptheirs) / m(pours):8.2f}")


def _one_token(w):  # the same workload with one-token outputs (no decode work)
    from lmetric_theory.workload.loaders import make_workload

    return make_workload(arrival_s=w.arrival_s, input_tokens=w.input_tokens,
                         output_tokens=np.ones(len(w), dtype=np.int64), hash_ids=w.hash_ids,
                         hash_offsets=w.hash_offsets, block_size=w.block_size, session_ids=None,
                         meta={})


def differential(args: argparse.Namespace) -> None:
    from lmetric_theory.experiments.dynosim import (
        dynosim_differential,
        fixed_step_config,
        router_agreement,
    )
    from lmetric_theory.policies.registry import parse_spec
    from lmetric_theory.sim import SimConfig, load_preset
    from lmetric_theory.workload import load_trace, select

    if args.sessions:
        w = load_trace(str(SESSIONS), trace_format="mooncake-delta")
        base = SimConfig.from_preset(load_preset(args.preset), args.instances,
                                     concurrency=args.concurrency)
        cases = [("preset", w, base), (f"fixed {args.step:g} s", w, fixed_step_config(base, args.step))]
    else:
        w = load_trace(args.trace)
        if args.count:
            w = select(w, count=args.count)
        base = SimConfig.from_preset(load_preset(args.preset), args.instances)
        fixed = fixed_step_config(base, args.step)
        cases = [("preset", w, base), (f"fixed {args.step:g} s", w, fixed),
                 (f"fixed {args.step:g} s, 1-token outputs", _one_token(w), fixed)]
    print(f"{len(w)} requests, {args.instances} instances"
          + (f", concurrency {args.concurrency}" if args.sessions else ""))
    for label, wl, cfg in cases:
        for p in ("round-robin", "dynamo-kv"):
            spec = parse_spec(p)
            d, _ours, theirs = dynosim_differential(wl, cfg, spec)
            row = {"timing": label} | d.to_json()
            if p == "dynamo-kv" and not args.sessions:
                row["on_dynosim_trajectory"] = router_agreement(wl, cfg, spec, theirs).to_json()
            print(json.dumps(row))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", default=str(DEFAULT_TRACE))
    ap.add_argument("--count", type=int, default=None, help="first COUNT requests (default all)")
    ap.add_argument("--instances", type=int, default=8)
    ap.add_argument("--preset", default="h100-llama3-8b-calibrated")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--differential", action="store_true")
    ap.add_argument("--sessions", action="store_true",
                    help="the agentic sessions trace, closed loop (with --differential)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--step", type=float, default=0.02,
                    help="constant pass time of the shared timing model, seconds")
    args = ap.parse_args()
    from lmetric_theory.sim.dynosim import require_dynosim

    require_dynosim()
    (differential if args.differential else speed)(args)


if __name__ == "__main__":
    main()
