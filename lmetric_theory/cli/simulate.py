"""``lmetric-theory simulate [TRACE]``: replay a trace through routing policies on a simulated cluster.

Prints one row per policy (completed requests, mean/p50/p90/p99 TTFT, mean/p99 TPOT, prefix-hit
rate), then a second table of the deployers' metrics (TTFT p95, ITL p99, E2E p50/p99,
throughputs, load spread; SLO attainment and goodput with ``--slo ttft=S,itl=S,e2e=S``,
seconds); ``--json`` prints ``{"policies": {SPEC: {..., "metrics": {...}}}, "trace": {...},
"config": {...}}`` (the ``metrics`` object is :meth:`lmetric_theory.sim.metrics.Metrics.to_json`,
documented in docs/metrics.md). Without TRACE the embedded synthetic default workload is used.
``--out DIR`` writes, per policy, the per-request results (Parquet, with ``session``,
``turn``, ``arrival_s``, ``first_token_s`` and ``finish_s``), the snapshot log (.npz) and
``summary.json``, each atomically.

Examples
--------
::

    lmetric-theory simulate                                    # synthetic default, 8 instances
    lmetric-theory simulate trace.jsonl --instances 8 --policy lmetric --policy round-robin
    lmetric-theory simulate trace.jsonl --policy lmetric:P=queued+uncached,b0=1 --rate-scale 2 --json
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

from lmetric_theory.cli.common import (
    add_loop_arguments,
    add_router_state_arguments,
    check_loop_arguments,
    check_router_state_arguments,
    preset_from_arg,
    workload_from_args,
)
from lmetric_theory.core.fileio import json_safe
from lmetric_theory.core.gcpause import cyclic_gc_paused

DEFAULT_POLICIES = ("lmetric", "round-robin")
PROGRESS_MIN_REQUESTS = 2000


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``simulate`` sub-command."""
    p = subparsers.add_parser(
        "simulate",
        help="replay a trace through routing policies on a simulated cluster",
        description="Replay a request trace (or the synthetic default) on N simulated serving "
        "instances under each routing policy and report TTFT, TPOT and prefix-hit rate.",
    )
    p.add_argument("trace", metavar="TRACE", nargs="?", help="trace file (Mooncake/Bailian JSONL, generic JSONL/CSV)")
    p.add_argument("--instances", "-n", type=int, default=8, help="number of instances (default 8)")
    p.add_argument("--policy", action="append", metavar="NAME[:key=value,...]",
                   help=f"routing policy, repeatable (default: {' and '.join(DEFAULT_POLICIES)})")
    p.add_argument("--rate-scale", type=float, default=None, metavar="X",
                   help="replay X times as fast (default 1; not with --concurrency)")
    add_loop_arguments(p)
    p.add_argument("--replay-arrivals", metavar="PARQUET", default=None,
                   help="replay the workload open loop, each request at the arrival_s of "
                   "this per-request file (written by simulate --out from the same workload, "
                   "e.g. a closed-loop run): the same offered load without its feedback")
    p.add_argument("--preset", default="h100-llama3-8b-calibrated",
                   help="hardware preset name, or a preset JSON file (default "
                   "h100-llama3-8b-calibrated)")
    p.add_argument("--scheduler", choices=("vllm-v1", "reserve"), default="vllm-v1",
                   help="instance scheduler of the fast engine (default vllm-v1)")
    p.add_argument("--view", choices=("precise", "approximate"), default="precise",
                   help="router's cache view (default precise)")
    add_router_state_arguments(p)
    p.add_argument("--count", type=int, default=None, help="replay only the first COUNT requests")
    p.add_argument("--out", metavar="DIR", help="write per-request results and snapshot logs here")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--slo", metavar="ttft=S,itl=S,e2e=S", default=None,
                   help="service-level objective, seconds (any subset): adds SLO attainment "
                   "and goodput (requests meeting every bound, per second)")
    p.add_argument("--skip-bad-lines", action="store_true", help="skip (and count) malformed trace lines")
    p.add_argument("--seed", type=int, default=0, help="seed for random policies and the synthetic workload")
    p.add_argument("--engine", choices=("fast", "vllm", "dynosim"), default="fast",
                   help="fast: this package's engine (sweeps); vllm: vLLM's own scheduler per "
                   "instance, needs the vllm extra (confirming a conclusion); dynosim: Dynamo's "
                   "DynoSim with its own routers (round-robin, dynamo-kv), needs the dynamo extra")
    p.add_argument("--list-policies", action="store_true",
                   help="print every policy and lmetric variant with its formula and source "
                   "(with --json: a list of {name, formula, source, parameters}) and exit")
    p.set_defaults(func=run)


def _err(msg: str) -> int:
    print(f"lmetric-theory simulate: error: {msg}", file=sys.stderr)
    return 2


def _dynosim_check(engine: str, typed: dict[str, Any]) -> str | None:
    """The one-line error of a policy the engine cannot run, or of a missing dynamo extra."""
    if engine == "dynosim":
        from lmetric_theory.sim.dynosim import DYNOSIM_POLICIES, DynoSimUnavailable, require_dynosim

        bad = [s for s, t in typed.items() if t.name not in DYNOSIM_POLICIES]
        if bad:
            return (f"--engine dynosim runs only {', '.join(DYNOSIM_POLICIES)} (DynoSim's own "
                    f"routers), not {bad[0]}")
        try:
            require_dynosim()
        except DynoSimUnavailable as exc:
            return str(exc)
        return None
    for s, t in typed.items():
        if t.name == "dynamo-kv" and t.params.settings().router_queue_threshold is not None:
            return (f"{s}: router_queue_threshold (router-side queueing) runs only with "
                    "--engine dynosim; the fast and vllm engines cannot hold requests at the router")
    return None


def _slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", spec)


def policy_catalog() -> list[dict[str, Any]]:
    """Every registered policy, then every ``lmetric`` variant, as
    ``{name, formula, source, parameters}`` (parameters: name -> default, JSON-ready)."""
    import dataclasses
    from fractions import Fraction

    from lmetric_theory.policies.base import _REGISTRY
    from lmetric_theory.policies.lmetric_variants import LMETRIC_VARIANTS
    from lmetric_theory.policies.registry import policy_names

    def plain(params: Any) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(params):
            v = getattr(params, f.name)
            out[f.name] = str(v) if isinstance(v, Fraction) else v
        return out

    rows = []
    for name in policy_names():
        cls = _REGISTRY[name]
        rows.append({"name": name, "formula": cls.formula, "source": cls.source,
                     "parameters": plain(cls.Params())})
    lmetric = _REGISTRY["lmetric"]
    for name, v in LMETRIC_VARIANTS.items():
        rows.append({"name": f"lmetric:variant={name}", "formula": v.formula, "source": v.source,
                     "parameters": plain(lmetric.Params(variant=name))})
    return rows


def _list_policies(as_json: bool) -> int:
    rows = policy_catalog()
    if as_json:
        print(json.dumps(rows, indent=2))
    elif sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title="routing policies (simulate --policy NAME[:key=value,...])")
        for col in ("name", "formula", "source"):
            table.add_column(col, overflow="fold")
        for r in rows:
            table.add_row(r["name"], r["formula"], r["source"])
        Console().print(table)
    else:
        print("name\tformula\tsource")
        for r in rows:
            print(f"{r['name']}\t{r['formula']}\t{r['source']}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Handler: simulate every policy, print a table or JSON, optionally write results.

    The cyclic garbage collector is paused for the command (imports, the trace's rows, the
    simulators' tables, the metrics: many objects, few cycles); it runs again after.
    """
    with cyclic_gc_paused():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    if args.list_policies:
        return _list_policies(args.json)
    from lmetric_theory.experiments.tuning import resolve_policy
    from lmetric_theory.policies import make_policy, parse_spec
    from lmetric_theory.sim import SimConfig, Simulator

    loop_error = check_loop_arguments(args) or check_router_state_arguments(args)
    if loop_error:
        return _err(loop_error)
    specs = list(args.policy or DEFAULT_POLICIES)
    if len(set(specs)) != len(specs):
        return _err("the same --policy was given twice")
    if args.instances < 1:
        return _err(f"--instances must be >= 1, got {args.instances}")
    if not (math.isfinite(args.rate_scale) and args.rate_scale > 0):
        return _err(f"--rate-scale must be finite and > 0, got {args.rate_scale}")
    if args.count is not None and args.count < 1:
        return _err(f"--count must be >= 1, got {args.count}")
    from lmetric_theory.sim.metrics import Slo, compute_metrics

    try:
        slo = None if args.slo is None else Slo.parse(args.slo)
    except ValueError as exc:
        return _err(f"--slo: {exc}")
    try:
        # each --policy text is read once, here; results stay keyed by the text given
        typed = {s: parse_spec(s) for s in specs}
        for t in typed.values():
            make_policy(t, seed=args.seed)  # a check inside the policy fails before any run
        preset = preset_from_arg(args.preset)
        # the snapshot log is only written out (--out); without it nothing reads it
        cfg = SimConfig.from_preset(preset, args.instances, view=args.view,
                                    scheduler=args.scheduler, concurrency=args.concurrency,
                                    record_snapshots=args.out is not None, **args.router_state)
        workload = workload_from_args(args)
        if args.replay_arrivals is not None:
            from lmetric_theory.workload import open_loop_at

            workload = open_loop_at(workload, read_arrivals(args.replay_arrivals, len(workload)))
    except (OSError, ValueError) as exc:
        return _err(str(exc))

    if args.engine == "dynosim" and (args.view != "precise" or args.signal_delay != 0
                                     or args.scheduler != "vllm-v1"):
        return _err("--engine dynosim runs DynoSim's own vLLM-shaped scheduler and router: "
                    "--scheduler, --view and --signal-delay do not apply")
    dynosim_error = _dynosim_check(args.engine, typed)
    if dynosim_error:
        return _err(dynosim_error)
    vllm_version = None
    if args.engine == "vllm":
        from lmetric_theory.sim.vllm_adapter import VllmUnavailable, require_vllm

        try:
            vllm_version = require_vllm()
        except VllmUnavailable as exc:
            return _err(str(exc))
    results = {}
    progress = None
    show = not args.json and len(workload) * len(specs) >= PROGRESS_MIN_REQUESTS
    if show:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=Console(stderr=True), transient=True)
        progress.start()
    try:
        for spec in specs:
            try:
                # tuned-linear is tuned on this workload first (a linear spec comes back)
                resolved = resolve_policy(typed[spec], workload, cfg, seed=args.seed)
                if args.engine == "dynosim":
                    from lmetric_theory.sim.dynosim import simulate_dynosim

                    results[spec] = simulate_dynosim(workload, cfg, resolved, seed=args.seed)
                    continue
                if args.engine == "vllm":
                    from lmetric_theory.sim.vllm_engine import simulate_vllm

                    results[spec] = simulate_vllm(workload, cfg, resolved, seed=args.seed)
                    continue
                sim = Simulator(workload, cfg, resolved, seed=args.seed)
            except ValueError as exc:
                return _err(str(exc))
            if progress is None:
                results[spec] = sim.run()
                continue
            task = progress.add_task(spec, total=len(workload))
            step = max(1, len(workload) // 50)
            d = 0
            while d < len(workload):
                d = min(d + step, len(workload))
                sim.advance(until_decision=d)
                progress.update(task, completed=d)
            results[spec] = sim.run()
    finally:
        if progress is not None:
            progress.stop()

    meta = dict(workload.meta)
    trace_info = {
        "source": meta.get("source", "synthetic default" if args.trace is None else args.trace),
        "format": meta.get("format", "synthetic"),
        "requests": len(workload),
        "skipped_lines": int(meta.get("skipped_lines", 0)),
        "block_size": int(workload.block_size),
        "rate_scale": float(meta.get("rate_scale", args.rate_scale)),
        "duration_s": float(workload.arrival_s[-1] - workload.arrival_s[0]),
    }
    config_info = {
        "engine": args.engine,
        "vllm_version": vllm_version,
        "instances": args.instances,
        "preset": preset.name,
        "latency": {k: getattr(preset.latency, k) for k in ("c0", "c_pf", "c_dec", "c_kv", "c_att")},
        "latency_fit_error": preset.fit_error,
        "scheduler": cfg.scheduler,
        "block_size": cfg.block_size,
        "kv_capacity_tokens": cfg.kv_capacity_tokens,
        "token_budget": cfg.token_budget,
        "max_batch": cfg.max_batch,
        "view": cfg.view,
        "signal_delay_s": cfg.signal_delay_s,
        **({k: v for k, v in cfg.to_dict().items()
            if k in ("router_replicas", "replica_assignment", "kv_event_lag_s", "index")}),
        "seed": args.seed,
        "policy_specs": {s: r.policy for s, r in results.items()},
        "slo": None if slo is None else slo.to_json(),
    }
    doc = {
        "policies": {s: r.summary() | r.counts()
                     | {"metrics": compute_metrics(r, slo, workload).to_json()}
                     for s, r in results.items()},
        "trace": trace_info,
        "config": config_info,
    }
    doc = json_safe(doc)
    if args.out:
        try:
            _write_out(Path(args.out), results, doc, workload)
        except OSError as exc:
            return _err(f"cannot write {args.out}: {exc}")
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    _print_table(doc)
    return 0


def read_arrivals(path: str, n: int) -> Any:
    """``arrival_s`` of a per-request Parquet file (``simulate --out``) in request order,
    shape (n,), float64 seconds; ``ValueError`` naming the file, row and field otherwise."""
    import numpy as np
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except OSError:
        raise
    except Exception as exc:  # pyarrow raises its own types for a file that is not Parquet
        raise ValueError(f"{path}: not a readable Parquet file ({type(exc).__name__}: "
                         f"{str(exc)[:80]})") from None
    for field in ("request", "arrival_s"):
        if field not in table.column_names:
            raise ValueError(f"{path}: field '{field}': missing (expected the per-request file "
                             "written by simulate --out)")
    req = np.asarray(table.column("request").to_numpy(zero_copy_only=False), dtype=np.int64)
    t = np.asarray(table.column("arrival_s").to_numpy(zero_copy_only=False), dtype=np.float64)
    if req.size != n or not np.array_equal(np.sort(req), np.arange(n)):
        raise ValueError(f"{path}: field 'request': expected requests 0..{n - 1} of this "
                         f"workload, got {req.size} rows")
    bad = np.flatnonzero(~np.isfinite(t) | (t < 0))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{path}: row {i + 1}: field 'arrival_s': expected a finite time >= 0 "
                         f"s, got {t[i]!r}")
    out = np.empty(n, dtype=np.float64)
    out[req] = t
    return out


def request_columns(r: Any, workload: Any = None) -> dict[str, Any]:
    """Session, turn and absolute times of each request of a result, as Parquet columns.

    ``session`` and ``turn`` come from the result, else from the workload's sessions, else
    -1 and 0; ``first_token_s`` and ``finish_s`` (absolute simulated times, seconds, NaN if
    not reached) from the result, else ``arrival_s + ttft_s`` and ``arrival_s + e2e_s``.
    """
    import numpy as np

    n = r.arrival_s.shape[0]
    ses = workload.sessions if workload is not None else None
    session = (r.session if r.session is not None else
               ses.session if ses is not None and len(ses) == n else np.full(n, -1, np.int64))
    turn = (r.turn if r.turn is not None else
            ses.turn if ses is not None and len(ses) == n else np.zeros(n, np.int64))
    return {
        "session": np.asarray(session, dtype=np.int64),
        "turn": np.asarray(turn, dtype=np.int64),
        "arrival_s": np.asarray(r.arrival_s, dtype=np.float64),
        "first_token_s": np.asarray(r.first_token_s if r.first_token_s is not None
                                    else r.arrival_s + r.ttft_s, dtype=np.float64),
        "finish_s": np.asarray(r.finish_s if r.finish_s is not None
                               else r.arrival_s + r.e2e_s, dtype=np.float64),
    }


def _write_out(out: Path, results: dict[str, Any], doc: dict[str, Any], workload: Any = None) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lmetric_theory.core.fileio import atomic_write, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    for spec, r in results.items():
        slug = _slug(spec)
        cols = request_columns(r, workload)
        table = pa.table({
            "request": np.arange(r.arrival_s.shape[0], dtype=np.int64),
            "session": cols["session"],
            "turn": cols["turn"],
            "arrival_s": r.arrival_s,
            "first_token_s": cols["first_token_s"],
            "finish_s": cols["finish_s"],
            "instance": r.instance,
            "input_tokens": r.input_tokens,
            "output_tokens": r.output_tokens,
            "cached_tokens": r.cached_tokens,
            "ttft_s": r.ttft_s,
            "tpot_s": r.tpot_s,
            "e2e_s": r.e2e_s,
            "preemptions": (r.preemptions if r.preemptions is not None
                            else np.zeros(r.arrival_s.shape[0], np.int64)),
            **({"replica": r.replica, "predicted_cached_tokens": r.predicted_cached_tokens}
               if "router_replicas" in r.config and r.replica is not None else {}),
        }).replace_schema_metadata({"policy": r.policy})
        atomic_write(out / f"{slug}.requests.parquet", lambda f, t=table: pq.write_table(t, f))
        if r.snapshots is not None:
            r.snapshots.save_npz(out / f"{slug}.snapshots.npz")
    atomic_write_text(out / "summary.json", json.dumps(doc, indent=2) + "\n")


def _print_table(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    tr = doc["trace"]
    cfg = doc["config"]
    skipped = f", {tr['skipped_lines']} lines skipped" if tr["skipped_lines"] else ""
    title = (f"{tr['source']} - {tr['requests']} requests{skipped}, "
             f"x{tr['rate_scale']:g} rate, {cfg['instances']} instances, {cfg['preset']}, {cfg['view']} view")
    t = Table(title=title, caption="TTFT in seconds, TPOT in milliseconds")
    t.add_column("policy", overflow="fold", min_width=11)
    for col in ("done", "TTFT mean", "p50", "p90", "p99", "TPOT mean", "p99", "prefix hit"):
        t.add_column(col, justify="right", no_wrap=True)

    def f(x: Any, scale: float = 1.0, fmt: str = "{:.3f}") -> str:
        return "-" if x is None else fmt.format(x * scale)

    for spec, s in doc["policies"].items():
        t.add_row(spec, str(s["completed"]), f(s["ttft_mean_s"]), f(s["ttft_p50_s"]), f(s["ttft_p90_s"]),
                  f(s["ttft_p99_s"]), f(s["tpot_mean_s"], 1e3, "{:.1f}"), f(s["tpot_p99_s"], 1e3, "{:.1f}"),
                  f(s["prefix_hit_rate"], 100, "{:.1f}%"))
    # Piped output gets a fixed, wide layout instead of the 80-column default.
    console = Console(width=None if sys.stdout.isatty() else 132)
    console.print(t)
    # The second table stays within 100 columns (long policy names fold).
    Console(width=min(console.width, 100)).print(metrics_table(doc))


def metrics_table(doc: dict[str, Any]) -> Any:
    """The second table: the deployers' metrics of each policy (fits 100 columns)."""
    from rich.table import Table

    slo = doc["config"].get("slo")
    slo_txt = ("" if slo is None else ", SLO " + ",".join(
        f"{k[:-2]}={v:g}" for k, v in slo.items() if v is not None))
    t = Table(title=f"deployers' metrics{slo_txt}",
              caption="TTFT, E2E in s; ITL in ms; tok/s: output tokens; Jain: of computed "
              "prefill tokens per instance")
    t.add_column("policy", overflow="fold", min_width=11)
    cols = ["TTFT\np95", "ITL\np99", "E2E\np50", "E2E\np99", "req/s", "tok/s", "Jain\nprefill"]
    if slo is not None:
        cols += ["SLO\nattain.", "goodput\nreq/s"]
    for col in cols:
        t.add_column(col, justify="right", no_wrap=True)

    def f(x: Any, scale: float = 1.0, fmt: str = "{:.3f}") -> str:
        return "-" if x is None else fmt.format(x * scale)

    for spec, s in doc["policies"].items():
        m = s["metrics"]
        row = [spec, f(m["ttft_s"]["p95"]), f(m["itl_s"]["p99"], 1e3, "{:.1f}"),
               f(m["e2e_s"]["p50"]), f(m["e2e_s"]["p99"]),
               f(m["request_throughput_rps"], 1, "{:.2f}"),
               f(m["output_throughput_tok_s"], 1, "{:.0f}"),
               f(m["load_spread"]["prefill_tokens"]["jain"], 1, "{:.3f}")]
        if slo is not None:
            row += [f(m["slo_attainment"], 100, "{:.1f}%"), f(m["goodput_rps"], 1, "{:.2f}")]
        t.add_row(*row)
    return t
