"""Where the fast engine's time goes: a cProfile of one run, own time summed per area.

Runs the shared Mooncake trace (8 instances, one policy, default preset) under cProfile
and prints each function's own time (``tottime``) summed by area: the engine's event loop,
the router's view of each decision, the policy, the scheduler, the KV cache, set-up and
result, and everything else (numpy, the standard library). The profiler inflates Python
calls (a call costs more under it), so the shares are indicative; wall figures come from
``benchmarks/bench_sim.py``.

Run from the project root::

    python benchmarks/profile_sim.py [--trace PATH] [--policy SPEC] [--scheduler NAME] [--top K]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRACE = ROOT.parent / "shared" / "traces" / "mooncake_conversation_trace.jsonl"

#: (area, path fragment, function names or None for every function of the file)
AREAS: tuple[tuple[str, str, tuple[str, ...] | None], ...] = (
    ("set-up and result", "sim/engine.py", ("__init__", "_setup_arrivals", "_result",
                                           "_itl_arrays", "_concat_csr", "simulate")),
    ("event loop", "sim/engine.py", None),
    ("event loop", "sim/events.py", None),
    ("router view", "sim/router.py", None),
    ("router view", "sim/snapshots.py", None),
    ("router view", "policies/base.py", ("__init__", "__post_init__")),
    ("policy", "policies/", None),
    ("policy", "core/", None),
    ("KV cache", "sim/kvcache.py", None),
    ("scheduler", "sim/paged.py", None),
    ("scheduler", "sim/reserve.py", None),
    ("scheduler", "sim/scheduler.py", None),
    ("scheduler", "sim/latency.py", None),
    ("set-up and result", "sim/requests.py", None),
)


def area_of(path: str, func: str) -> str:
    for area, frag, names in AREAS:
        if frag in path and (names is None or func in names):
            return area
    return "other (numpy, builtins, standard library)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    ap.add_argument("--policy", default="lmetric")
    ap.add_argument("--scheduler", default="vllm-v1")
    ap.add_argument("--instances", type=int, default=8)
    ap.add_argument("--top", type=int, default=15, help="functions listed by own time")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from lmetric_theory.sim import SimConfig, load_preset, simulate
    from lmetric_theory.workload import load_trace

    w = load_trace(args.trace)
    cfg = SimConfig.from_preset(load_preset("h100-llama3-8b-calibrated"), args.instances,
                                scheduler=args.scheduler)
    prof = cProfile.Profile()
    prof.enable()
    r = simulate(w, cfg, args.policy)
    prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    areas: dict[str, float] = {}
    rows = []
    for (path, _, func), (_, _, tt, _, _) in stats.items():
        a = area_of(path, func)
        areas[a] = areas.get(a, 0.0) + tt
        rows.append((tt, f"{Path(path).parent.name}/{Path(path).name}:{func}" if "/" in path else func))
    total = sum(areas.values())
    print(f"{len(w)} requests, {r.events} events, {r.iterations} iterations; "
          f"{args.scheduler}, {r.policy}; profiled own time {total:.2f} s")
    for a, tt in sorted(areas.items(), key=lambda x: -x[1]):
        print(f"  {a:44s} {tt:7.2f} s  {100 * tt / total:5.1f}%")
    print(f"top {args.top} functions by own time:")
    for tt, name in sorted(rows, reverse=True)[: args.top]:
        print(f"  {name:60s} {tt:7.3f} s  {100 * tt / total:5.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
