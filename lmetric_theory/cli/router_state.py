"""``results --router-study``: the policies under router replicas and late KV events
(:mod:`lmetric_theory.experiments.router_state`, docs/router_state.md), and
``results --render-router-study JSON ... [--plot PNG]`` to merge saved studies into one table
and figure."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

#: Policies of the study unless ``--policies`` is given.
#: ``replicas=R`` takes each setting's replica count.
STUDY_POLICIES = ("lmetric", "guarded-lmetric",
                  "guarded-lmetric:mitigation=counter_sync,replicas=R",
                  "guarded-lmetric:mitigation=scale_batch_offset,replicas=R",
                  "guarded-lmetric:mitigation=random_near_ties,near_tie=0.05",
                  "dynamo-kv", "llm-d:profile=optimized-baseline", "tuned-linear", "round-robin")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``--router-study``, ``--replicas``, ``--lags``, ``--full-grid`` and
    ``--render-router-study`` / ``--plot`` to ``results``."""
    g = p.add_argument_group("router-state study (docs/router_state.md)")
    g.add_argument("--router-study", action="store_true",
                   help="run the policies at each router replica count and KV event lag "
                   "(TRACE windows of --count requests, one per seed)")
    g.add_argument("--replicas", default="1,2,4,8", metavar="R1,R2,...",
                   help="router replica counts of the study (default 1,2,4,8)")
    g.add_argument("--lags", default="0,0.05,0.2,1", metavar="S1,S2,...",
                   help="KV event lags of the study, seconds (default 0,0.05,0.2,1)")
    g.add_argument("--full-grid", action="store_true",
                   help="every (replicas, lag) pair (default: each axis at the other's "
                   "smallest value, plus the largest pair)")
    g.add_argument("--render-router-study", nargs="+", metavar="JSON", default=None,
                   help="print the table of saved --router-study --json documents (merged)")
    g.add_argument("--plot", metavar="PNG", default=None,
                   help="with --render-router-study: also draw the figure here (matplotlib)")


def _err(msg: str) -> int:
    print(f"lmetric-theory results: error: {msg}", file=sys.stderr)
    return 2


def _list(text: str, flag: str, kind: type) -> list[Any]:
    try:
        xs = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{flag}: expected comma-separated {kind.__name__}s, got {text!r}") from None
    if not xs:
        raise ValueError(f"{flag}: empty list")
    return xs


def run(args: argparse.Namespace, split_policies: Any) -> int:
    """Handler of ``--router-study`` and ``--render-router-study``."""
    if args.render_router_study is not None:
        return _render(args)
    from lmetric_theory.cli.common import check_loop_arguments, check_router_state_arguments

    err = check_loop_arguments(args, rate_flag="--rate-scales") or check_router_state_arguments(args)
    if err:
        return _err(err)
    if args.engine != "fast":
        return _err("--router-study: runs on the fast engine only (the vLLM engine has one "
                    "router with exact state)")
    if args.count is None or args.count < 1:
        return _err("--router-study needs --count N >= 1 (requests per window; a seed is a window)")
    if args.seeds < 1:
        return _err(f"--seeds: out of range, got {args.seeds}")
    try:
        replicas = _list(args.replicas, "--replicas", int)
        lags = _list(args.lags, "--lags", float)
    except ValueError as exc:
        return _err(str(exc))
    if any(r < 1 for r in replicas):
        return _err(f"--replicas must be integers >= 1, got {args.replicas}")
    if any(not (math.isfinite(x) and x >= 0) for x in lags):
        return _err(f"--lags must be finite numbers of seconds >= 0, got {args.lags}")
    from lmetric_theory.cli.common import loader_options
    from lmetric_theory.experiments.router_state import (
        StudyWorkload,
        resolve_replicas,
        router_state_study,
    )
    from lmetric_theory.policies import make_policy
    from lmetric_theory.sim import SimConfig, load_preset
    from lmetric_theory.sim.metrics import Slo
    from lmetric_theory.workload import default_workload, load_trace

    policies = split_policies(args.policies) if args.policies else list(STUDY_POLICIES)
    try:
        slo = None if args.slo is None else Slo.parse(args.slo)
    except ValueError as exc:
        return _err(f"--slo: {exc}")
    try:
        specs = [f"tuned-linear:points={args.points}" if p == "tuned-linear" else p
                 for p in policies]
        for s in specs:
            make_policy(resolve_replicas(s, 1))
    except (ValueError, KeyError, TypeError) as exc:
        return _err(f"--policies: {exc}")
    try:
        rs = dict(args.router_state)
        rs.pop("router_replicas")
        rs.pop("kv_event_lag_s")
        cfg = SimConfig.from_preset(load_preset(args.preset), args.instances, **rs)
        wls = []
        for src in list(args.trace) or [None]:
            w = (default_workload(seed=0) if src is None else
                 load_trace(src, skip_bad_lines=args.skip_bad_lines, **loader_options(args)))
            name = "synthetic default" if src is None else str(src).rsplit("/", 1)[-1]
            wls.append(StudyWorkload(name, w, int(args.count), args.concurrency))
        focus = specs[0] if "lmetric" not in specs else "lmetric"

        def progress(done: int, total: int) -> None:
            if not args.no_progress and sys.stderr.isatty():
                print(f"\rrouter study: {done}/{total} runs", end="", file=sys.stderr)

        study = router_state_study(wls, cfg, specs, replicas=replicas, lags_s=lags,
                                   seeds=list(range(args.seeds)), full=args.full_grid, slo=slo,
                                   focus=focus, executor=_local(args.workers)
                                   if args.executor == "local" else args.executor,
                                   progress=progress)
    except (OSError, ValueError) as exc:
        return _err(str(exc))
    from lmetric_theory.core.fileio import json_safe

    doc = json_safe(study.to_json())
    doc["config"]["preset"] = args.preset
    doc["config"]["trace_format"] = getattr(args, "trace_format", "auto")
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(markdown_table([doc]))
    return 0


def _local(workers: int) -> Any:
    from lmetric_theory.experiments.tasks import LocalExecutor

    return LocalExecutor(workers)


def _render(args: argparse.Namespace) -> int:
    docs = []
    for path in args.render_router_study:
        try:
            with open(path, encoding="utf-8") as fh:
                d = json.load(fh)
            _ = d["aggregate"], d["changes"], d["settings"], d["policies"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return _err(f"{path}: not a saved 'results --router-study --json' document ({exc})")
        docs.append(d)
    print(markdown_table(docs))
    if args.plot:
        try:
            from lmetric_theory.io.router_state_figure import write_figure
        except ImportError as exc:
            return _err(f"--plot needs matplotlib ({exc})")
        try:
            write_figure(docs, args.plot)
        except OSError as exc:
            return _err(f"cannot write {args.plot}: {exc}")
    return 0


def _fmt(x: Any, nd: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{nd}f}"


def _setting(r: int, lag: float) -> str:
    return f"R={r}, lag {lag * 1000:g} ms"


def markdown_table(docs: list[dict[str, Any]]) -> str:
    """The study's Markdown: per workload, mean TTFT / p99 TTFT / ITL p99 / goodput of every
    policy at every setting (mean over seeds, [min, max]), then the focus policy's change
    against each other policy in mean TTFT (mean [min, max] over seeds)."""
    out: list[str] = []
    for d in docs:
        seeds = d["config"].get("seeds", [])
        agg = {(a["workload"], a["policy"], a["replicas"], a["lag_s"]): a for a in d["aggregate"]}
        wls = list(dict.fromkeys(a["workload"] for a in d["aggregate"]))
        for wl in wls:
            meta = next((w for w in d["config"]["workloads"] if w["name"] == wl), {})
            loop = (f"closed loop, concurrency {meta['concurrency']}" if meta.get("concurrency")
                    else "open loop")
            out.append(f"**{wl}: {meta.get('count')} requests per window, {loop}, "
                       f"{len(seeds)} seeds, mean [min, max] over seeds**\n")
            out.append("| setting | policy | TTFT mean (s) | TTFT p99 (s) | ITL p99 (ms) | "
                       "goodput (req/s) |")
            out.append("|---|---|---:|---:|---:|---:|")
            for r, lag in d["settings"]:
                for pol in d["policies"]:
                    a = agg.get((wl, pol, r, lag))
                    if a is None:
                        continue

                    def cell(m: str, k: float = 1.0, nd: int = 3, a: dict = a) -> str:
                        v = a[m]
                        lo, hi = v["range"]
                        return (f"{_fmt(v['value'] * k if v['value'] is not None else None, nd)} "
                                f"[{_fmt(lo * k if lo is not None else None, nd)}, "
                                f"{_fmt(hi * k if hi is not None else None, nd)}]")
                    out.append(f"| {_setting(r, lag)} | {pol} | {cell('ttft_mean_s')} | "
                               f"{cell('ttft_p99_s', nd=2)} | {cell('itl_p99_s', 1000.0, 1)} | "
                               f"{cell('goodput_rps', nd=2)} |")
            out.append("")
            others = [p for p in d["policies"] if p != d["focus"]]
            out.append(f"**{wl}: {d['focus']} vs each policy, mean TTFT, percent change "
                       "(negative: lower), mean [min, max] over seeds**\n")
            out.append("| setting | " + " | ".join(f"vs {p}" for p in others) + " |")
            out.append("|---|" + "---:|" * len(others))
            ch = {(c["workload"], c["replicas"], c["lag_s"], c["against"]): c
                  for c in d["changes"]["ttft_mean_s"]}
            for r, lag in d["settings"]:
                cells = []
                for p in others:
                    c = ch.get((wl, r, lag, p))
                    if c is None or c["pct"] is None:
                        cells.append("-")
                    else:
                        lo, hi = c["range"]
                        cells.append(f"{c['pct']:+.0f}% [{lo:+.0f}%, {hi:+.0f}%]")
                out.append(f"| {_setting(r, lag)} | " + " | ".join(cells) + " |")
            out.append("")
    return "\n".join(out)
