"""Bit-identity check of the fast engine against a reference source tree.

Runs a matrix of workloads x policies x schedulers x configurations (open loop, closed
loop, a concurrency cap, KV pressure with preemptions, the approximate cache view, a
signal delay) once with the package of this tree and once, in a subprocess, with the
package of a reference tree (for example a ``git worktree`` of an earlier commit), and
compares every array of every :class:`~lmetric_theory.sim.config.SimResult` (snapshot log
columns included) byte for byte, together with the scalar counters (iterations, events,
end time). Speed work on the engine must leave every one of them unchanged.

Run from the project root::

    python benchmarks/sim_equivalence.py --ref PATH_TO_REFERENCE_TREE [--trace PATH] [--count N]

It prints the number of runs and arrays compared and every difference; exit status 1 if any.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRACE = ROOT.parent / "shared" / "traces" / "mooncake_conversation_trace.jsonl"


def matrix(trace: Path, count: int) -> list[tuple[str, str, dict[str, Any]]]:
    """``(workload, scheduler, config overrides)`` cases (each run under every policy)."""
    moon = f"trace:{trace}:{count}"
    agent = f"synthetic:agent:count={count // 2},rate=6,seed=3"
    chat = f"synthetic:chat:count={count // 2},rate=12,seed=5"
    cases: list[tuple[str, str, dict[str, Any]]] = []
    for sched in ("vllm-v1", "reserve"):
        cases += [
            (moon, sched, {}),
            (moon, sched, {"n_instances": 4, "kv_capacity_tokens": 130_000}),  # preemptions
            (agent, sched, {}),  # closed loop
            (agent, sched, {"n_instances": 2, "kv_capacity_tokens": 64_000}),  # preemptions
            (agent, sched, {"n_instances": 2, "kv_capacity_tokens": 64_000, "concurrency": 6}),
            (chat, sched, {"concurrency": 16}),  # one-turn sessions under a cap
            (moon, sched, {"view": "approximate", "signal_delay_s": 0.05}),
        ]
    return cases


def policies() -> list[str]:
    """Every registered policy and every ``lmetric`` variant (``simulate --list-policies``)."""
    from lmetric_theory.policies.lmetric_variants import LMETRIC_VARIANTS
    from lmetric_theory.policies.registry import policy_names

    return policy_names() + [f"lmetric:variant={v}" for v in LMETRIC_VARIANTS]


def _workload(name: str) -> Any:
    from lmetric_theory.workload import load_trace, select
    from lmetric_theory.workload.spec import synthetic_from_spec

    if name.startswith("trace:"):
        _, path, n = name.rsplit(":", 2)
        return select(load_trace(path), count=int(n))
    return synthetic_from_spec(name)


def _digest(a: np.ndarray) -> tuple[str, tuple[int, ...], str]:
    """dtype, shape and SHA-256 of the bytes: equal exactly when the arrays are bit-identical."""
    return str(a.dtype), a.shape, hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _arrays(r: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in type(r).__dataclass_fields__:
        v = getattr(r, name)
        if isinstance(v, np.ndarray):
            out[name] = _digest(v)
        elif name == "snapshots" and v is not None:
            for col in v._columns():
                a = getattr(v, col)
                out[f"snapshots.{col}"] = _digest(a)
        elif name in ("iterations", "events", "end_time_s", "policy"):
            out[name] = repr(v)
    return out


def dump(trace: Path, count: int, path: Path) -> None:
    """Run the matrix with the package on ``sys.path`` and pickle every result's arrays."""
    from lmetric_theory.experiments.tuning import resolve_policy
    from lmetric_theory.policies import parse_spec
    from lmetric_theory.sim import SimConfig, Simulator, load_preset

    preset = load_preset("h100-llama3-8b-calibrated")
    results: dict[str, dict[str, Any]] = {}
    cache: dict[str, Any] = {}
    for wname, sched, over in matrix(trace, count):
        if wname not in cache:
            cache[wname] = _workload(wname)
        w = cache[wname]
        over = dict(over)
        cfg = SimConfig.from_preset(preset, over.pop("n_instances", 8), scheduler=sched, **over)
        for spec in policies():
            key = f"{wname} | {sched} | {over} | {spec}"
            try:
                pol = resolve_policy(parse_spec(spec), w, cfg, seed=1)
                r = Simulator(w, cfg, pol, seed=1).run()
                results[key] = _arrays(r)
            except ValueError as exc:  # the same refusal must come from both trees
                results[key] = {"error": str(exc)}
            else:
                results[key]["_preempted"] = repr(int(r.preemptions.sum()))
    path.write_bytes(pickle.dumps(results))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", type=Path, help="reference source tree (its package is compared)")
    ap.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    ap.add_argument("--count", type=int, default=800, help="requests of the trace replayed")
    ap.add_argument("--ref-dump", type=Path,
                    help="keep the reference run's digests in this file and reuse them if it exists")
    ap.add_argument("--dump", type=Path, help=argparse.SUPPRESS)  # internal: one side's run
    args = ap.parse_args()
    if args.dump is not None:
        dump(args.trace, args.count, args.dump)
        return 0
    if args.ref is None or not (args.ref / "lmetric_theory").is_dir():
        print("--ref must name a source tree holding lmetric_theory/", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        sides = {}
        for label, tree in (("reference", args.ref.resolve()), ("this tree", ROOT)):
            out = Path(tmp) / f"{label}.pkl"
            if label == "reference" and args.ref_dump is not None:
                out = args.ref_dump
                if out.is_file():
                    sides[label] = pickle.loads(out.read_bytes())
                    continue
            env = dict(os.environ, PYTHONPATH=str(tree))
            subprocess.run([sys.executable, __file__, "--dump", str(out), "--trace", str(args.trace),
                            "--count", str(args.count)], check=True, env=env, cwd=tree)
            sides[label] = pickle.loads(out.read_bytes())
    ref, new = sides["reference"], sides["this tree"]
    bad = 0
    arrays = 0
    if set(ref) != set(new):
        print(f"different runs: only reference {sorted(set(ref) - set(new))}, "
              f"only this tree {sorted(set(new) - set(ref))}")
        bad += 1
    for key in sorted(set(ref) & set(new)):
        a, b = ref[key], new[key]
        for field in sorted(set(a) | set(b)):
            arrays += 1
            if a.get(field) != b.get(field):
                bad += 1
                print(f"DIFFERENT {key}: {field}")
    errors = sum("error" in v for v in ref.values())
    pre = sum(int(v.get("_preempted", "0")) > 0 for v in ref.values())
    print(f"{len(ref)} runs ({errors} refused by both trees, {pre} with preemptions), "
          f"{arrays} arrays/scalars compared, {bad} different")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
