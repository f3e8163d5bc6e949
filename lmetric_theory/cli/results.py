"""``lmetric-theory results [TRACE]``: the policy comparison table at several load levels.

Runs ``lmetric``, ``lmetric:P=queued+uncached``, ``guarded-lmetric``, ``tuned-linear``,
``least-loaded``, ``cache-affinity`` and ``round-robin`` on the trace (or the synthetic
default) at each ``--rate-scales`` factor, through the sweep executor. ``tuned-linear`` is
tuned per load level first (log-spaced grid, mean TTFT) and runs as the resulting ``linear``
spec; ``guarded-lmetric`` uses that tuned ``lam`` as its reference, with the mitigation of
``--guard-mitigation`` (default ``prefill_block``, one KV block of the workload; note that ``fallback`` makes it identical to
``linear`` at the same ``lam`` — every flagged decision goes where the reference would send it
and unflagged ones agree with it).
``--markdown`` prints Markdown tables (for the README); ``--json`` prints the rows.

Examples
--------
::

    lmetric-theory results                                       # synthetic default
    lmetric-theory results trace.jsonl --rate-scales 1,2 --instances 8 --markdown
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

POLICIES = ("lmetric", "lmetric:P=queued+uncached", "guarded-lmetric", "tuned-linear", "least-loaded",
            "cache-affinity", "round-robin")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``results`` sub-command."""
    p = subparsers.add_parser(
        "results",
        help="policy comparison table at several load levels",
        description="Replay a trace (or the synthetic default) under the reference policies at each "
        "rate scale and print the comparison table (TTFT, TPOT, prefix-hit rate).",
    )
    p.add_argument("trace", metavar="TRACE", nargs="?", help="trace file (Mooncake/Bailian JSONL, generic JSONL/CSV)")
    p.add_argument("--rate-scales", default="1,2", metavar="K1,K2,...", help="arrival-rate factors (default 1,2)")
    p.add_argument("--instances", "-n", type=int, default=8, help="number of instances (default 8)")
    p.add_argument("--preset", default="h100-llama3-8b", help="hardware preset name (default h100-llama3-8b)")
    p.add_argument("--points", type=int, default=9, help="grid points for tuned-linear (default 9)")
    p.add_argument("--count", type=int, default=None, help="replay only the first COUNT requests")
    p.add_argument("--workers", type=int, default=None, help="local worker processes (default: CPU count)")
    p.add_argument("--executor", choices=("local", "dask"), default="local",
                   help="sweep executor (dask: needs the 'dask' extra and a scheduler via DASK_SCHEDULER_ADDRESS)")
    p.add_argument("--guard-mitigation", default="prefill_block",
                   choices=("fallback", "prefill_block", "batch_offset", "tie_break_load", "load_cap", "auto"),
                   help="mitigation of guarded-lmetric (default prefill_block)")
    p.add_argument("--markdown", action="store_true", help="print Markdown tables")
    p.add_argument("--json", action="store_true", help="print JSON rows")
    p.add_argument("--skip-bad-lines", action="store_true", help="skip (and count) malformed trace lines")
    p.add_argument("--seed", type=int, default=0, help="seed for the synthetic workload and policies")
    p.set_defaults(func=run)


def _err(msg: str) -> int:
    print(f"lmetric-theory results: error: {msg}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Handler: tune, sweep, print."""
    from lmetric_theory.experiments.sweep import SimTask, get_executor, run_sweep
    from lmetric_theory.experiments.tuning import tune_linear
    from lmetric_theory.sim import SimConfig, load_preset
    from lmetric_theory.workload import default_workload, load_trace, scale_rate, select

    try:
        scales = [float(x) for x in args.rate_scales.split(",") if x.strip()]
    except ValueError:
        return _err(f"--rate-scales: expected comma-separated numbers, got {args.rate_scales!r}")
    if not scales or any(not (math.isfinite(k) and k > 0) for k in scales):
        return _err(f"--rate-scales: need finite factors > 0, got {args.rate_scales!r}")
    if args.instances < 1:
        return _err(f"--instances must be >= 1, got {args.instances}")
    if args.points < 2:
        return _err(f"--points must be >= 2, got {args.points}")
    if args.count is not None and args.count < 1:
        return _err(f"--count must be >= 1, got {args.count}")
    t0 = time.perf_counter()
    try:
        cfg = SimConfig.from_preset(load_preset(args.preset), args.instances, record_snapshots=False)
        from lmetric_theory.workload.spec import is_synthetic_spec, synthetic_from_spec

        if args.trace is None:
            w = default_workload(seed=args.seed)
        elif is_synthetic_spec(args.trace):  # synthetic:KIND[:key=value,...]
            w = synthetic_from_spec(args.trace, seed=args.seed)
        else:
            w = load_trace(args.trace, skip_bad_lines=args.skip_bad_lines)
        if args.count is not None:
            w = select(w, count=args.count)
        ex = get_executor(args.executor, workers=args.workers)
    except (OSError, ValueError, ImportError) as exc:
        return _err(str(exc))

    tasks, tuned = [], {}
    for k in scales:
        wk = scale_rate(w, k)
        tr = tune_linear(wk, config=cfg, points=args.points, seed=args.seed, executor=ex)
        tuned[k] = tr
        lam = tr.lam
        for spec in POLICIES:
            run_spec = {
                "tuned-linear": f"linear:lam={lam!r}",
                "guarded-lmetric": (f"guarded-lmetric:mitigation={args.guard_mitigation},lam={lam!r},"
                                    f"block={int(w.block_size)}"),
            }.get(spec, spec)
            tasks.append(SimTask(wk, cfg, run_spec, args.seed, {"rate_scale": k, "name": spec}))
    rows = run_sweep(tasks, ex)
    elapsed = time.perf_counter() - t0
    skipped = int(w.meta.get("skipped_lines", 0))
    source = "synthetic default" if args.trace is None else args.trace
    doc: dict[str, Any] = {
        "trace": {"source": source, "requests": len(w), "skipped_lines": skipped},
        "config": {"instances": args.instances, "preset": args.preset, "seed": args.seed,
                   "guard_mitigation": args.guard_mitigation, "points": args.points},
        "tuned_lam": {str(k): tuned[k].lam for k in scales},
        "rows": [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
                 for r in rows],
        "elapsed_s": elapsed,
    }
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    _print(doc, scales, markdown=args.markdown)
    return 0


def _fmt(x: Any, scale: float = 1.0, fmt: str = "{:.3f}") -> str:
    return "-" if x is None else fmt.format(x * scale)


def _print(doc: dict[str, Any], scales: list[float], *, markdown: bool) -> None:
    tr = doc["trace"]
    cols = ("policy", "done", "TTFT mean (s)", "TTFT p50", "TTFT p99", "TPOT mean (ms)", "TPOT p99", "prefix hit")
    skipped = f", {tr['skipped_lines']} lines skipped" if tr["skipped_lines"] else ""
    for k in scales:
        lam = doc["tuned_lam"][str(k)]
        title = (f"{tr['source']}: {tr['requests']} requests{skipped}, x{k:g} rate, "
                 f"{doc['config']['instances']} instances, {doc['config']['preset']} (tuned lam = {lam:g})")
        body = []
        for r in doc["rows"]:
            if r["rate_scale"] != k:
                continue
            name = r["name"]
            if name == "tuned-linear":
                name = f"tuned-linear (lam={lam:g})"
            elif name == "guarded-lmetric":
                name = f"guarded-lmetric ({doc['config']['guard_mitigation']}, lam={lam:g})"
            body.append((name, str(r["completed"]), _fmt(r["ttft_mean_s"]), _fmt(r["ttft_p50_s"]),
                         _fmt(r["ttft_p99_s"]), _fmt(r["tpot_mean_s"], 1e3, "{:.1f}"),
                         _fmt(r["tpot_p99_s"], 1e3, "{:.1f}"), _fmt(r["prefix_hit_rate"], 100, "{:.1f}%")))
        if markdown:
            print(f"**{title}**\n")
            print("| " + " | ".join(cols) + " |")
            print("|" + "|".join(["---"] + ["---:"] * (len(cols) - 1)) + "|")
            for row in body:
                print("| " + " | ".join(row) + " |")
            print()
        else:
            from rich.console import Console
            from rich.table import Table

            t = Table(title=title)
            for c in cols:
                t.add_column(c, justify="left" if c == "policy" else "right")
            for row in body:
                t.add_row(*row)
            Console(width=None if sys.stdout.isatty() else 132).print(t)
    how = "lmetric-theory results" + ("" if tr["source"] == "synthetic default" else " TRACE")
    print(f"\n({how}: {doc['elapsed_s']:.1f} s wall)")
