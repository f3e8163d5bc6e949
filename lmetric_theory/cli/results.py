"""``lmetric-theory results [TRACE ...]``: the policy comparison at several loads, seeds and workloads.

Each TRACE is a trace file or a synthetic spec (``synthetic:chat``, ``synthetic:api:count=500``);
none means the synthetic default. Every policy of ``--policies`` (default: the paper's
comparison set, :data:`lmetric_theory.experiments.study.PAPER_POLICIES`) runs at every load for
every seed (``--seeds K``: seeds 0..K-1; they change the policies' random choices and, for
synthetic workloads, the workload). Loads are either ``--rate-scales`` (absolute arrival-rate
factors) or, with ``--saturation``, fractions (``--loads``, default 0.5,0.9) of each workload's
saturation point, found by a sweep of the rate scale under ``--reference`` (default
round-robin): the smallest scale whose mean TTFT exceeds ``--sat-factor`` (default 10) x its
value at ``--sat-start`` (default 0.25), or at which the time the cluster stays busy after the
last arrival grew (over the light load) by more than ``--sat-drain`` (default 0.25) x the
arrival span (see
:func:`lmetric_theory.experiments.study.find_saturation`). ``tuned-linear`` is tuned (grid of
``--points`` values of ``lam``, mean TTFT) on each workload, load and seed it runs on, and so
is Company-X, ``bailian:alpha=tuned`` (11 hit weights, mean TTFT), the paper's production
scheduler.

Output: one table per workload and load (mean over seeds, with the min-max range of mean TTFT)
and its table of the deployers' metrics (TTFT p50/p99, ITL p99, E2E p99, throughput; SLO
attainment and goodput with ``--slo ttft=S,itl=S,e2e=S``, seconds; docs/metrics.md),
the saturation sweep, and the paper's claims as percentage changes computed from the rows
(paired by seed), with the best case over workloads and loads beside them (the paper's figures
are "up to" figures). ``--markdown`` prints Markdown, ``--json`` the rows, aggregates and claims.

``--paper-setup`` runs the paper's cluster shape instead of the default one: 16 instances and
the uncalibrated roofline preset ``h20-qwen3-30b-a3b`` (H20, Qwen3-30B-A3B: the model of the
paper's ChatBot, Coder and ToolAgent runs); ``--preset h20-qwen2.5-7b`` gives its Agent/API
model. Other presets and instance counts are usage errors with it.

Examples
--------
::

    lmetric-theory results                                       # synthetic default, x1 and x2
    lmetric-theory results trace.jsonl synthetic:chat --saturation --seeds 3 --markdown
    lmetric-theory results trace.jsonl --saturation --paper-setup --markdown --compact
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

from lmetric_theory.cli import router_state as router_state_cli
from lmetric_theory.cli.common import (
    add_loop_arguments,
    add_router_state_arguments,
    check_loop_arguments,
    check_router_state_arguments,
    loader_options,
)
from lmetric_theory.core.fileio import json_safe
from lmetric_theory.experiments.study import PAPER_POLICIES

#: Default policy set (kept under this name for callers of the previous version).
POLICIES = PAPER_POLICIES

#: Defaults without ``--paper-setup``: instances, preset.
DEFAULT_SETUP = (8, "h100-llama3-8b-calibrated")

#: The paper's set-up (16 H20 GPUs, one vLLM instance each): instances, the default preset and
#: the presets allowed with it (uncalibrated rooflines; docs/results.md).
PAPER_SETUP = (16, "h20-qwen3-30b-a3b", ("h20-qwen3-30b-a3b", "h20-qwen2.5-7b"))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``results`` sub-command."""
    p = subparsers.add_parser(
        "results",
        help="policy comparison at several loads, seeds and workloads; the paper's claims",
        description="Replay traces (or synthetic workloads) under the comparison policies at each "
        "load and seed; print the tables (TTFT, TPOT, prefix-hit rate, preemptions) and the paper's "
        "claims as percentage changes.",
    )
    p.add_argument("trace", metavar="TRACE", nargs="*",
                   help="trace files (Mooncake/Bailian JSONL, generic JSONL/CSV) or synthetic:KIND[:k=v,...]")
    p.add_argument("--policies", default=None, metavar="SPEC,...",
                   help="policy specs, ';'- or ','-separated names (default: the paper's comparison set)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..K-1 (default 3)")
    p.add_argument("--rate-scales", default=None, metavar="K1,K2,...",
                   help="arrival-rate factors (default 1,2; ignored with --saturation; not with "
                   "--concurrency)")
    p.add_argument("--saturation", action="store_true",
                   help="find each workload's saturation point and run at --loads fractions of it")
    p.add_argument("--loads", default="0.5,0.9", metavar="F1,F2,...",
                   help="fractions of the saturation point (default 0.5,0.9)")
    p.add_argument("--reference", default="round-robin", help="policy of the saturation search (default round-robin)")
    p.add_argument("--sat-start", type=float, default=0.25, help="light-load scale of the search (default 0.25)")
    p.add_argument("--sat-factor", type=float, default=10.0, help="TTFT blow-up factor (default 10)")
    p.add_argument("--sat-drain", type=float, default=0.25, help="lag threshold: drain growth / arrival span (default 0.25)")
    p.add_argument("--instances", "-n", type=int, default=None,
                   help="number of instances (default 8; 16 with --paper-setup)")
    p.add_argument("--paper-setup", action="store_true",
                   help="the paper's cluster: 16 instances, preset h20-qwen3-30b-a3b (or "
                   "--preset h20-qwen2.5-7b); uncalibrated roofline presets")
    p.add_argument("--engine", choices=("fast", "vllm"), default="fast",
                   help="fast: this package's simulator (sweeps); vllm: vLLM's own scheduler per "
                        "instance, to confirm a conclusion on a subset (needs the 'vllm' extra; "
                        "tuned-linear is still tuned on the fast engine)")
    p.add_argument("--preset", default=None,
                   help="hardware preset name (default h100-llama3-8b-calibrated; "
                   "h20-qwen3-30b-a3b with --paper-setup)")
    p.add_argument("--points", type=int, default=9, help="grid points for tuned-linear (default 9)")
    p.add_argument("--count", type=int, default=None, help="replay only the first COUNT requests of each TRACE")
    p.add_argument("--workers", type=int, default=None, help="local worker processes (default: CPU count)")
    p.add_argument("--executor", choices=("local", "dask"), default="local",
                   help="sweep executor (dask: needs the 'dask' extra and a scheduler via DASK_SCHEDULER_ADDRESS)")
    p.add_argument("--slo", metavar="ttft=S,itl=S,e2e=S", default=None,
                   help="service-level objective, seconds (any subset): adds SLO attainment "
                   "and goodput to every row")
    p.add_argument("--markdown", action="store_true", help="print Markdown tables")
    p.add_argument("--json", action="store_true", help="print JSON (rows, aggregates, claims)")
    p.add_argument("--compact", action="store_true",
                   help="print two pivot tables only: mean TTFT per policy and the claims, per workload and load")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--render", metavar="JSON", default=None,
                   help="print the tables of a saved --json document instead of running")
    p.add_argument("--skip-bad-lines", action="store_true", help="skip (and count) malformed trace lines")
    add_router_state_arguments(p)
    add_loop_arguments(p)
    router_state_cli.add_arguments(p)
    p.set_defaults(func=run)


def _err(msg: str) -> int:
    print(f"lmetric-theory results: error: {msg}", file=sys.stderr)
    return 2


def _floats(text: str, flag: str) -> list[float]:
    try:
        xs = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{flag}: expected comma-separated numbers, got {text!r}") from None
    if not xs or any(not (math.isfinite(k) and k > 0) for k in xs):
        raise ValueError(f"{flag}: need finite factors > 0, got {text!r}")
    return xs


def _split_policies(text: str) -> list[str]:
    """``a,b:k=v,c`` -> specs; a comma starts a new spec unless the next item is ``key=value``."""
    if ";" in text:
        return [s.strip() for s in text.split(";") if s.strip()]
    out: list[str] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" in item and ":" not in item and out:
            out[-1] += "," + item
        else:
            out.append(item)
    return out


def run(args: argparse.Namespace) -> int:
    """Handler: validate, (search saturation,) run the grid, print."""
    if args.router_study or args.render_router_study is not None:
        if args.paper_setup:
            return _err("--paper-setup applies to the study grid, not to --router-study")
        args.instances = DEFAULT_SETUP[0] if args.instances is None else args.instances
        args.preset = args.preset or DEFAULT_SETUP[1]
        return router_state_cli.run(args, _split_policies)
    if args.render is not None:
        try:
            with open(args.render, encoding="utf-8") as fh:
                saved = json.load(fh)
            _ = saved["workloads"], saved["summary"], saved["claims"], saved["config"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return _err(f"{args.render}: not a saved 'results --json' document ({exc})")
        (_print_compact if args.compact else _print)(saved, markdown=args.markdown)
        return 0
    loop_error = (check_loop_arguments(args, rate_flag="--rate-scales")
                  or check_router_state_arguments(args))
    if loop_error:
        return _err(loop_error)
    if args.concurrency is not None and args.saturation:
        return _err("--saturation cannot be combined with --concurrency: the search scales the "
                    "arrival rate, which a session cap does not use")
    if args.rate_scales is None:
        args.rate_scales = "1" if args.concurrency is not None else "1,2"
    if args.paper_setup:
        n, preset, allowed = PAPER_SETUP
        if args.instances is not None and args.instances != n:
            return _err(f"--paper-setup runs {n} instances; --instances {args.instances} contradicts it")
        if args.preset is not None and args.preset not in allowed:
            return _err(f"--paper-setup: --preset must be one of {', '.join(allowed)}, got {args.preset!r}")
        args.instances = n
        args.preset = args.preset or preset
    else:
        args.instances = DEFAULT_SETUP[0] if args.instances is None else args.instances
        args.preset = args.preset or DEFAULT_SETUP[1]
    vllm_version = None
    if args.engine == "vllm":
        from lmetric_theory.sim.vllm_adapter import VllmUnavailable, require_vllm

        try:
            vllm_version = require_vllm()
        except VllmUnavailable as exc:
            return _err(str(exc))
    from lmetric_theory.experiments.study import (
        GridSpec,
        aggregate,
        claim_best,
        claim_changes,
        run_grid,
        saturation_job,
    )
    from lmetric_theory.experiments.tasks import get_executor
    from lmetric_theory.policies import make_policy, parse_spec
    from lmetric_theory.sim import SimConfig, load_preset
    from lmetric_theory.sim.metrics import Slo
    from lmetric_theory.workload import default_workload, load_trace, select
    from lmetric_theory.workload.spec import is_synthetic_spec, synthetic_from_spec

    try:
        slo = None if args.slo is None else Slo.parse(args.slo)
    except ValueError as exc:
        return _err(f"--slo: {exc}")
    try:
        scales = _floats(args.rate_scales, "--rate-scales")
        loads = _floats(args.loads, "--loads")
    except ValueError as exc:
        return _err(str(exc))
    for flag, v, ok in (("--instances", args.instances, args.instances >= 1),
                        ("--points", args.points, args.points >= 2),
                        ("--seeds", args.seeds, args.seeds >= 1),
                        ("--count", args.count, args.count is None or args.count >= 1),
                        ("--sat-start", args.sat_start, args.sat_start > 0),
                        ("--sat-factor", args.sat_factor, args.sat_factor > 1),
                        ("--sat-drain", args.sat_drain, args.sat_drain > 0)):
        if not ok:
            return _err(f"{flag}: out of range, got {v}")
    policies = _split_policies(args.policies) if args.policies else list(PAPER_POLICIES)
    if not policies:
        return _err("--policies: no policy given")
    try:
        # every spec text is read once, here; the rows keep the text given as their name
        run_specs = {p: parse_spec(f"tuned-linear:points={args.points}" if p == "tuned-linear"
                                   else p) for p in policies}
        reference = parse_spec(args.reference)
        for spec in [*run_specs.values(), reference]:
            make_policy(spec)  # a check inside the policy fails before any run
    except (ValueError, KeyError, TypeError) as exc:
        return _err(f"--policies: {exc}")
    seeds = list(range(args.seeds))
    sources = list(args.trace) or [None]
    t0 = time.perf_counter()
    try:
        preset = load_preset(args.preset)
        cfg = SimConfig.from_preset(preset, args.instances, record_snapshots=False,
                                    concurrency=args.concurrency, **args.router_state)
        makers = []
        for src in sources:
            if src is None:
                def make(seed: int) -> Any:
                    return default_workload(seed=seed)
                name = "synthetic default"
            elif is_synthetic_spec(src):
                synthetic_from_spec(src, seed=0)  # validate now

                def make(seed: int, _s: str = src) -> Any:
                    return synthetic_from_spec(_s, seed=seed)
                name = src
            else:
                w0 = load_trace(src, skip_bad_lines=args.skip_bad_lines, **loader_options(args))

                def make(seed: int, _w: Any = w0) -> Any:
                    return _w
                name = src
            if args.count is not None:
                def make(seed: int, _m: Any = make) -> Any:
                    return select(_m(seed), count=args.count)
            makers.append((name, make))
        ex = get_executor(args.executor, workers=args.workers)
    except (OSError, ValueError, ImportError) as exc:
        return _err(str(exc))

    show = not args.no_progress and sys.stderr.isatty()
    sat: dict[str, Any] = {}
    if args.saturation:
        kw = {"start": args.sat_start, "factor": args.sat_factor, "drain": args.sat_drain}
        jobs = [(make(0), cfg, reference, 0, kw) for _, make in makers]
        results = list(ex.map(saturation_job, jobs))
        grids = []
        for (name, make), r in zip(makers, results, strict=True):
            sat[name] = r.to_dict()
            if not r.found:
                print(f"lmetric-theory results: warning: {name}: no saturation up to x{r.evaluations[-1][0]:g}; "
                      "using the largest scale tried", file=sys.stderr)
            k_sat = r.scale if r.found else r.evaluations[-1][0]
            grids.append(GridSpec(name, make, [f * k_sat for f in loads], [f"{f:g}x sat" for f in loads]))
    else:
        grids = [GridSpec(name, make, scales, [f"x{k:g}" for k in scales]) for name, make in makers]

    total = sum(len(g.scales) for g in grids) * len(seeds) * len(policies)
    if show:
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task("simulating", total=total)
            rows = run_grid(grids, cfg, policies, seeds, executor=ex, run_specs=run_specs,
                            progress=lambda n: bar.advance(task, n), engine=args.engine,
                            slo=slo)
    else:
        rows = run_grid(grids, cfg, policies, seeds, executor=ex, run_specs=run_specs,
                        engine=args.engine, slo=slo)
    elapsed = time.perf_counter() - t0
    doc: dict[str, Any] = {
        "workloads": [{"source": g.name, "requests": len(g.make(0)), "scales": g.scales, "loads": g.labels}
                      for g in grids],
        "config": {"engine": args.engine, "vllm_version": vllm_version,
                   "instances": args.instances, "preset": args.preset,
                   "preset_description": preset.description, "paper_setup": args.paper_setup,
                   "seeds": seeds, "policies": policies,
                   "points": args.points, "saturation": args.saturation, "reference": args.reference,
                   "count": args.count, "concurrency": args.concurrency,
                   "slo": None if slo is None else slo.to_json(),
                   **{k: v for k, v in cfg.to_dict().items()
                      if k in ("router_replicas", "replica_assignment", "kv_event_lag_s", "index")}},
        "saturation": sat,
        "rows": rows,
        "summary": aggregate(rows),
        "claims": claim_changes(rows),
        "elapsed_s": elapsed,
    }
    doc["claims_best"] = claim_best(doc["claims"])
    doc = json_safe(doc)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    (_print_compact if args.compact else _print)(doc, markdown=args.markdown)
    return 0


def _fmt(x: Any, scale: float = 1.0, fmt: str = "{:.3f}") -> str:
    return "-" if x is None else fmt.format(x * scale)


def _pct(x: Any) -> str:
    return "-" if x is None else f"{x:+.0f}%"


def _table(title: str, cols: tuple[str, ...], body: list[tuple[str, ...]], markdown: bool) -> None:
    if markdown:
        print(f"**{title}**\n")
        print("| " + " | ".join(cols) + " |")
        print("|" + "|".join(["---"] + ["---:"] * (len(cols) - 1)) + "|")
        for row in body:
            print("| " + " | ".join(row) + " |")
        print()
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for c in cols:
        t.add_column(c, justify="left" if c in ("policy", "claim", "workload") else "right")
    for row in body:
        t.add_row(*row)
    Console(width=None if sys.stdout.isatty() else 160).print(t)


def _print(doc: dict[str, Any], *, markdown: bool) -> None:
    cfg = doc["config"]
    nseeds = len(cfg["seeds"])
    for wl in doc["workloads"]:
        if wl["source"] in doc["saturation"]:
            s = doc["saturation"][wl["source"]]
            body = [(f"x{e['scale']:g}", _fmt(e["ttft_mean_s"]), _fmt(e["lag"], 1, "{:.2f}"),
                     "yes" if e["saturated"] else "no") for e in s["evaluations"]]
            _table(f"{wl['source']}: saturation search under {cfg['reference']} (seed 0): x{s['scale']:g}",
                   ("rate scale", "TTFT mean (s)", "lag", "saturated"), body, markdown)
        for load, k in zip(wl["loads"], wl["scales"], strict=True):
            cols = ("policy", "TTFT mean (s)", f"range over {nseeds} seeds", "p50", "p90", "p99",
                    "TPOT mean (ms)", "prefix hit", "preempt.")
            body = []
            for r in doc["summary"]:
                if r["workload"] != wl["source"] or r["load"] != load:
                    continue
                rng = f"{_fmt(r['ttft_mean_s_min'])}-{_fmt(r['ttft_mean_s_max'])}"
                body.append((r["name"], _fmt(r["ttft_mean_s"]), rng, _fmt(r["ttft_p50_s"]), _fmt(r["ttft_p90_s"]),
                             _fmt(r["ttft_p99_s"]), _fmt(r["tpot_mean_s"], 1e3, "{:.1f}"),
                             _fmt(r["prefix_hit_rate"], 100, "{:.1f}%"), _fmt(r["preemptions"], 1, "{:.0f}")))
            title = (f"{wl['source']} ({wl['requests']} requests), {load} = x{k:.3g} rate, "
                     f"{cfg['instances']} instances, {cfg['preset']}, mean of {nseeds} seeds")
            _table(title, cols, body, markdown)
            _print_headline(doc, wl, load, markdown=markdown)
    body = [(c["workload"], c["load"], c["claim"], _paper(c), _pct(c["pct"]),
             f"{_pct(c['pct_min'])} .. {_pct(c['pct_max'])}") for c in doc["claims"]]
    _table("The paper's claims: change of lmetric (paper score) vs the baseline, paired by seed",
           ("workload", "load", "claim", "paper", "here (mean)", "range over seeds"), body, markdown)
    _print_best(doc, markdown=markdown)
    _print_setup_note(doc)
    print(f"\n(lmetric-theory results: {doc['elapsed_s']:.1f} s wall)")


def _paper(c: dict[str, Any]) -> str:
    """The paper's figure of a claim with its version (``-92% (v1)``), ``-`` without one."""
    if c.get("paper_pct") is None:
        return "-"
    src = c.get("source") or ""
    ver = next((w.rsplit("v", 1)[1] for w in src.replace(",", " ").split()
                if w[:1].isdigit() and "v" in w), None)
    return _pct(c["paper_pct"]) + (f" (v{ver})" if ver else "")


def _print_best(doc: dict[str, Any], *, markdown: bool) -> None:
    """The paper's "up to" figures against the best case over every workload and load run."""
    from lmetric_theory.experiments.study import claim_best

    best = claim_best(doc["claims"])
    body = []
    for b in best:
        where = "-" if b["workload"] is None else f"{_short(b['workload'])} {b['load']}"
        body.append((b["claim"], _paper(b), _pct(b["pct"]),
                     "-" if b["pct"] is None else f"[{_pct(b['pct_min'])}, {_pct(b['pct_max'])}]",
                     where, _pct(b["worst_pct"]), str(b["cells"])))
    _table("Best case over workloads and loads (the paper's figures are 'up to' figures)",
           ("claim", "paper", "best here", "its seed range", "where", "worst here", "cells"),
           body, markdown)


def _print_setup_note(doc: dict[str, Any]) -> None:
    """One line when the preset is uncalibrated (e.g. the paper's set-up)."""
    desc = doc["config"].get("preset_description") or ""
    if desc.startswith("UNCALIBRATED"):
        print(f"\nNote: preset {doc['config']['preset']} is uncalibrated (a roofline of public "
              "specifications, no measured iterations): its absolute times are estimates.")


def _print_headline(doc: dict[str, Any], wl: dict[str, Any], load: str, *, markdown: bool) -> None:
    """The deployers' metrics of one workload and load (skipped for documents without them)."""
    rows = [r for r in doc["summary"] if r["workload"] == wl["source"] and r["load"] == load]
    if not rows or "e2e_p99_s" not in rows[0]:
        return
    slo = doc["config"].get("slo")
    cols = ("policy", "TTFT p50 (s)", "p99", "ITL p99 (ms)", "E2E p99 (s)", "req/s", "out tok/s")
    if slo is not None:
        cols += ("SLO attain.", "goodput (req/s)")
    body = []
    for r in rows:
        row = (r["name"], _fmt(r["ttft_p50_s"]), _fmt(r["ttft_p99_s"]),
               _fmt(r["itl_p99_s"], 1e3, "{:.1f}"), _fmt(r["e2e_p99_s"]),
               _fmt(r["request_throughput_rps"], 1, "{:.2f}"),
               _fmt(r["output_throughput_tok_s"], 1, "{:.0f}"))
        if slo is not None:
            row += (_fmt(r["slo_attainment"], 100, "{:.1f}%"), _fmt(r["goodput_rps"], 1, "{:.2f}"))
        body.append(row)
    slo_txt = "" if slo is None else ", SLO " + ",".join(
        f"{k[:-2]}={v:g}" for k, v in slo.items() if v is not None)
    _table(f"{wl['source']}, {load}: deployers' metrics (mean of seeds){slo_txt}", cols, body,
           markdown)


def _short(source: str) -> str:
    """Column label of a workload: the file name, or the synthetic kind."""
    if source.startswith("synthetic:"):
        return source.split(":")[1]
    return source.replace("\\", "/").rsplit("/", 1)[-1].split(".")[0].split("_")[0]


def _print_compact(doc: dict[str, Any], *, markdown: bool) -> None:
    """Mean TTFT (s) per policy and the claims (percent, seed range), one column per workload/load."""
    cells = [(wl["source"], load) for wl in doc["workloads"] for load in wl["loads"]]
    heads = tuple(f"{_short(w)} {load}" for w, load in cells)
    nseeds = len(doc["config"]["seeds"])
    by = {(r["workload"], r["load"], r["name"]): r for r in doc["summary"]}
    names = list(dict.fromkeys(r["name"] for r in doc["summary"]))
    body = [(n, *(_fmt(by[(w, ld, n)]["ttft_mean_s"]) if (w, ld, n) in by else "-" for w, ld in cells))
            for n in names]
    _table(f"Mean TTFT (s), mean of {nseeds} seeds, {doc['config']['instances']} instances, "
           f"{doc['config']['preset']}", ("policy", *heads), body, markdown)
    cl = {(c["workload"], c["load"], c["claim"]): c for c in doc["claims"]}
    labels = list(dict.fromkeys(c["claim"] for c in doc["claims"]))
    paper = {c["claim"]: c for c in doc["claims"]}
    body = []
    for lab in labels:
        row = [lab, _paper(paper[lab])]
        for w, ld in cells:
            c = cl.get((w, ld, lab))
            row.append("-" if c is None or c["pct"] is None else
                       f"{_pct(c['pct'])} [{_pct(c['pct_min'])}, {_pct(c['pct_max'])}]")
        body.append(tuple(row))
    _table("lmetric (paper score) vs baseline: percent change, mean [min, max] over seeds",
           ("claim", "paper", *heads), body, markdown)
    _print_best(doc, markdown=markdown)
    _print_setup_note(doc)
