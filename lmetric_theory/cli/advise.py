"""``lmetric-theory advise [TRACE]``: should this workload be routed by LMetric?

Finds the workload's saturation point (rate scale for an open-loop trace, session
concurrency for a closed-loop session trace), sweeps load, runs ``lmetric``,
``guarded-lmetric``, ``tuned-linear`` (an oracle) and every ``--current`` policy for every
seed, and prints the verdict: win, tie or lose against each current policy, by how much and
over which load range; the hot-prefix risk; whether harm is detectable (a short
counterfactual study). ``--out DIR`` writes ``advice.json`` and ``advice.html``;
``--json`` prints the document. The logic is
:func:`lmetric_theory.experiments.advise.advise`; the keys are in docs/advise.md.

Defaults are sized for 2 cores: the first ``--count`` requests (default 2,000; 1,000 for
the embedded default workload), loads 0.25, 0.5, 0.75, 1.0 of the saturation point (0.5, 1.0
for the embedded default), 2 seeds, ``tuned-linear`` on a 4-point grid, 8 + 8 sampled
decisions (5 s horizon) in the counterfactual study, and the router-state sensitivity at the
focus load on seed 0 (router replicas 1, 2, 4, 8 and KV-event lags 0, 0.2, 1 s; the sweep
itself runs under the ``--router-replicas``/``--kv-event-lag``/``--index`` set-up).

Examples
--------
::

    lmetric-theory advise                                   # the embedded default workload
    lmetric-theory advise trace.jsonl --current vllm-v1 --slo ttft=2,itl=0.05 --out advice/
    lmetric-theory advise sessions.jsonl --trace-format mooncake-delta --out advice/
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from lmetric_theory.cli.common import (
    add_loop_arguments,
    add_router_state_arguments,
    check_router_state_arguments,
    loader_options,
    preset_from_arg,
)

HELP = "should this workload be routed by LMetric? a verdict with evidence"

#: ``--count`` default for a trace and for the embedded default workload (requests).
COUNT_TRACE = 2000
COUNT_DEFAULT = 1000
#: ``--loads`` default for a trace and for the embedded default workload (fractions).
LOADS_TRACE = "0.25,0.5,0.75,1"
LOADS_DEFAULT = "0.5,1"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``advise`` sub-command."""
    p = subparsers.add_parser(
        "advise", help=HELP,
        description="Sweep load on a workload under lmetric, guarded-lmetric, tuned-linear and "
        "the policies you run now; print whether LMetric wins, ties or loses against each, by "
        "how much and over which loads, with the hot-prefix risk and whether harm is detectable.")
    p.add_argument("trace", metavar="TRACE", nargs="?", default=None,
                   help="trace file (Mooncake/Bailian JSONL, generic JSONL/CSV) or "
                   "synthetic:KIND[:k=v,...]; default: the embedded synthetic workload")
    p.add_argument("--current", action="append", metavar="POLICY", default=None,
                   help="a policy run today (repeatable); default dynamo-kv and "
                   "llm-d:profile=optimized-baseline when registered, else vllm-v1 and round-robin")
    p.add_argument("--instances", "-n", type=int, default=8, help="number of instances (default 8)")
    p.add_argument("--slo", metavar="ttft=S,itl=S,e2e=S", default=None,
                   help="service-level objective, seconds (any subset): goodput and SLO attainment")
    p.add_argument("--seeds", type=int, default=2, help="seeds 0..K-1 (default 2)")
    p.add_argument("--loads", default=None, metavar="F1,F2,...",
                   help=f"fractions of the saturation point (default {LOADS_TRACE}; "
                   f"{LOADS_DEFAULT} for the embedded default)")
    p.add_argument("--focus", type=float, default=None,
                   help="load fraction of the CDFs, per-instance bars, hot-spot check and "
                   "counterfactual study (default: the largest load <= 0.75, else the smallest)")
    p.add_argument("--count", type=int, default=None,
                   help=f"the first COUNT requests (default {COUNT_TRACE}; {COUNT_DEFAULT} for the "
                   "embedded default); 0: all")
    p.add_argument("--engine", choices=("fast", "vllm"), default="fast",
                   help="engine of the sweep (vllm: vLLM's own scheduler, needs the 'vllm' extra)")
    p.add_argument("--confirm-vllm", type=int, default=None, metavar="N",
                   help="re-run the focus-load comparison on vLLM's scheduler over the first N "
                   "requests, beside the fast engine")
    p.add_argument("--workers", type=int, default=None, help="local worker processes (default: CPU count)")
    p.add_argument("--preset", default="h100-llama3-8b-calibrated",
                   help="hardware preset name or JSON file (default h100-llama3-8b-calibrated)")
    p.add_argument("--points", type=int, default=4, help="grid points of tuned-linear (default 4)")
    p.add_argument("--tolerance", type=float, default=1.0, metavar="PCT",
                   help="changes within +-PCT percent are ties (default 1)")
    p.add_argument("--samples", type=int, default=8,
                   help="flagged decisions (and as many controls) of the counterfactual study "
                   "(default 8; 0 skips it)")
    p.add_argument("--horizon", type=float, default=5.0, metavar="S",
                   help="affected-request horizon of the counterfactual study, seconds (default 5)")
    p.add_argument("--sensitivity-replicas", default="1,2,4,8", metavar="R1,R2,...",
                   help="router replica counts of the router-state sensitivity (default 1,2,4,8)")
    p.add_argument("--sensitivity-lags", default="0,0.2,1", metavar="S1,S2,...",
                   help="KV-event lags of the router-state sensitivity, seconds (default 0,0.2,1)")
    p.add_argument("--sensitivity-seeds", type=int, default=1, metavar="K",
                   help="seeds of the router-state sensitivity, at most --seeds (default 1)")
    p.add_argument("--no-router-sensitivity", action="store_true",
                   help="skip the router-state sensitivity at the focus load")
    p.add_argument("--skip-bad-lines", action="store_true", help="skip (and count) malformed trace lines")
    p.add_argument("--json", action="store_true", help="print the advice document as JSON")
    p.add_argument("--out", metavar="DIR", help="write advice.json and advice.html here")
    add_loop_arguments(p)
    add_router_state_arguments(p)
    p.set_defaults(func=run)
    # --concurrency of add_loop_arguments is one cap; advise sweeps a list of them
    for a in p._actions:
        if a.dest == "concurrency":
            a.type = str
            a.metavar = "C1,C2,..."
            a.help = ("session concurrencies to sweep instead of the saturation search (closed "
                      "loop: a new session starts when one ends)")


def _err(msg: str) -> int:
    print(f"lmetric-theory advise: error: {msg}", file=sys.stderr)
    return 2


def _fractions(text: str, flag: str) -> tuple[float, ...]:
    try:
        xs = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"{flag}: expected comma-separated numbers, got {text!r}") from None
    if not xs or any(not (math.isfinite(k) and k > 0) for k in xs):
        raise ValueError(f"{flag}: need finite numbers > 0, got {text!r}")
    return xs


def _concurrencies(text: str, flag: str = "--concurrency") -> tuple[int, ...]:
    try:
        xs = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"{flag}: expected comma-separated integers, got {text!r}") from None
    if not xs or min(xs) < 1:
        raise ValueError(f"{flag}: need integers >= 1, got {text!r}")
    return xs


def _lags(text: str) -> tuple[float, ...]:
    try:
        xs = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"--sensitivity-lags: expected comma-separated seconds, got {text!r}") from None
    if not xs or any(not (math.isfinite(x) and x >= 0) for x in xs):
        raise ValueError(f"--sensitivity-lags: need finite seconds >= 0, got {text!r}")
    return xs


def _trace_replicates(full: Any, count: int, seeds: int, select: Any) -> Any:
    """``seed -> Workload`` of a trace: seed ``k`` replays the ``k``-th window of ``count``
    consecutive requests (rebased to start at 0 s) when the open-loop trace holds ``seeds``
    such windows; otherwise (a closed-loop session trace, ``count`` 0, or too short a trace)
    every seed replays the first ``count`` requests (all when 0) and seeds change only the
    policies' random choices. The choice is in ``make.replicates`` (docs/advise.md)."""
    n = len(full)
    windows = bool(count) and not full.closed_loop and n >= seeds * count and seeds > 1
    first = select(full, count=count) if count else full
    arr = full.arrival_s
    cache: dict[int, Any] = {0: first}

    def make(seed: int) -> Any:
        if seed not in cache:
            if not windows:
                cache[seed] = first
            else:
                lo = float(arr[seed * count])
                hi = float(arr[(seed + 1) * count]) if (seed + 1) * count < n else None
                cache[seed] = select(select(full, start_s=lo, end_s=hi), count=count)
        return cache[seed]

    make.replicates = ("trace windows" if windows else "same requests")  # type: ignore[attr-defined]
    return make


def run(args: argparse.Namespace) -> int:  # noqa: C901 - one validation per flag
    """Handler: validate every flag, run the study, print the verdict, write the report."""
    from lmetric_theory.experiments import advise as A
    from lmetric_theory.policies import make_policy, parse_spec
    from lmetric_theory.sim.metrics import Slo

    default_wl = args.trace is None
    for flag, v, ok in (("--instances", args.instances, args.instances >= 1),
                        ("--seeds", args.seeds, args.seeds >= 1),
                        ("--points", args.points, args.points >= 2),
                        ("--samples", args.samples, args.samples >= 0),
                        ("--horizon", args.horizon, math.isfinite(args.horizon) and args.horizon > 0),
                        ("--tolerance", args.tolerance, math.isfinite(args.tolerance) and args.tolerance >= 0),
                        ("--sensitivity-seeds", args.sensitivity_seeds,
                         1 <= args.sensitivity_seeds <= max(args.seeds, 1)),
                        ("--count", args.count, args.count is None or args.count >= 0),
                        ("--workers", args.workers, args.workers is None or args.workers >= 1),
                        ("--confirm-vllm", args.confirm_vllm,
                         args.confirm_vllm is None or args.confirm_vllm >= 1)):
        if not ok:
            return _err(f"{flag}: out of range, got {v}")
    try:
        slo = None if args.slo is None else Slo.parse(args.slo)
    except ValueError as exc:
        return _err(f"--slo: {exc}")
    try:
        loads = _fractions(args.loads or (LOADS_DEFAULT if default_wl else LOADS_TRACE), "--loads")
        conc = None if args.concurrency is None else _concurrencies(args.concurrency)
    except ValueError as exc:
        return _err(str(exc))
    if args.focus is not None and args.focus not in loads:
        return _err(f"--focus: {args.focus:g} is not one of --loads {','.join(f'{x:g}' for x in loads)}")
    focus = args.focus if args.focus is not None else max(
        [f for f in loads if f <= 0.75] or [min(loads)])
    msg = check_router_state_arguments(args)
    if msg is not None:
        return _err(msg)
    try:
        sens_r = _concurrencies(args.sensitivity_replicas, "--sensitivity-replicas")
        sens_lag = _lags(args.sensitivity_lags)
    except ValueError as exc:
        return _err(str(exc))
    current_text = args.current or list(A.default_current())
    try:
        current = tuple(parse_spec(c) for c in current_text)
        for c in current:
            make_policy(c)  # a check inside the policy fails here, before any run
    except (ValueError, KeyError, TypeError) as exc:
        return _err(f"--current: {exc}")
    if args.engine == "vllm" or args.confirm_vllm is not None:
        from lmetric_theory.sim.vllm_adapter import VllmUnavailable, require_vllm

        try:
            require_vllm()
        except VllmUnavailable as exc:
            return _err(str(exc))

    from lmetric_theory import audit as AU
    from lmetric_theory.sim import SimConfig
    from lmetric_theory.workload import default_workload, load_trace, select
    from lmetric_theory.workload.spec import is_synthetic_spec, synthetic_from_spec

    count = args.count if args.count is not None else (COUNT_DEFAULT if default_wl else COUNT_TRACE)
    try:
        preset = preset_from_arg(args.preset)
        if default_wl or is_synthetic_spec(args.trace):
            spec = args.trace

            def make(seed: int) -> Any:
                w = default_workload(seed=seed) if spec is None else synthetic_from_spec(spec, seed=seed)
                return select(w, count=count) if count else w
            make.replicates = "regenerated"  # type: ignore[attr-defined]
            workload: Any = make
            w0 = make(0)
            source = "synthetic default" if default_wl else args.trace
        else:
            full = load_trace(args.trace, skip_bad_lines=args.skip_bad_lines, **loader_options(args))
            workload, source = _trace_replicates(full, count, args.seeds, select), args.trace
            w0 = workload(0)
        if len(w0) < 2 * args.instances:
            return _err(f"{source}: {len(w0)} requests are too few to find a saturation point on "
                        f"{args.instances} instances (need at least {2 * args.instances})")
        cfg = SimConfig.from_preset(preset, args.instances, record_snapshots=False,
                                    **args.router_state)
        reference = AU.default_reference(preset, w0)
        settings = A.AdviseSettings(
            current=current, reference=reference, loads=loads, focus=focus, seeds=args.seeds,
            slo=slo, engine=args.engine, confirm_vllm=args.confirm_vllm, points=args.points,
            tolerance_pct=args.tolerance, cf_samples=args.samples, cf_horizon_s=args.horizon, concurrency=conc,
            router_sensitivity=not args.no_router_sensitivity and args.engine == "fast",
            router_replicas=sens_r, router_lags_s=sens_lag, router_seeds=args.sensitivity_seeds)
    except (OSError, ValueError) as exc:
        return _err(str(exc))

    bar = None
    progress = None
    if not args.json and sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn(), console=Console(stderr=True), transient=True)
        tid = bar.add_task("saturation search", total=None)
        bar.start()

        def progress(stage: str, done: int, total: int) -> None:
            label = {"sweep": "load sweep"}.get(stage, stage)
            bar.update(tid, description=label, completed=done, total=total if stage == "sweep" else None)

    try:
        doc = A.advise(workload, cfg, settings, source=source, workers=args.workers,
                       progress=progress)
    except A.SaturationNotFound as exc:
        return _err(str(exc))
    except (OSError, ValueError) as exc:
        return _err(str(exc))
    finally:
        if bar is not None:
            bar.stop()
    doc["config"]["preset"] = preset.name
    doc["config"]["count"] = count or None
    doc["workload"]["replicates"] = getattr(workload, "replicates", "same requests")
    if args.out:
        from lmetric_theory.io.advise import write_advice

        try:
            paths = write_advice(doc, args.out)
        except OSError as exc:
            return _err(f"cannot write {args.out}: {exc}")
    if args.json:
        print(json.dumps(doc, indent=2, allow_nan=False))
        return 0
    _print(doc)
    if args.out:
        print(f"wrote {paths[0]} and {paths[1]}")
    return 0


def _fmt(x: Any, scale: float = 1.0, fmt: str = "{:.3f}") -> str:
    return "-" if x is None else fmt.format(x * scale)


def _print(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=None if sys.stdout.isatty() else 132)
    wl, cfg, v = doc["workload"], doc["config"], doc["verdict"]
    sat = doc["saturation"]
    axis = "rate scale" if wl["mode"] == "rate" else "concurrency"
    from lmetric_theory.io.advise import verdict_headline

    con.print(f"[bold]{verdict_headline(doc)}[/bold] on {wl['source']} ({wl['requests']:,} "
              f"requests, {cfg['instances']} instances, {cfg['preset']}, {len(cfg['seeds'])} "
              f"seeds)", highlight=False)
    for a in v["against"]:
        con.print(f"  {a['text']}", highlight=False)
    if sat is not None:
        con.print(f"saturation ({axis}, under {cfg['saturation_policy']}): {sat['scale']:g}; loads "
                  + ", ".join(f"{ld['label']} = {ld['value']:.3g}" for ld in doc["loads"]),
                  highlight=False)
    slo = cfg["slo"] is not None
    t = Table(title=f"Per load: mean over seeds \\[min, max] ({wl['replicates']} per seed); TTFT "
              "in s, TPOT/ITL in ms")
    cols = ["load", "policy", "TTFT mean", "TTFT p99", "TPOT mean", "ITL p99"]
    if slo:
        cols += ["goodput (req/s)", "SLO attain."]
    for c in cols:
        t.add_column(c, justify="left" if c in ("load", "policy") else "right")

    def cell(e: dict[str, Any], scale: float = 1.0, fmt: str = "{:.3f}") -> str:
        lo, hi = e["min"], e["max"]
        band = "" if lo is None or hi is None or lo == hi else f" [{fmt.format(lo * scale)}, {fmt.format(hi * scale)}]"
        return _fmt(e["mean"], scale, fmt) + band

    for r in doc["summary"]:
        row = [r["load"], r["policy"], cell(r["ttft_mean_s"]), cell(r["ttft_p99_s"]),
               cell(r["tpot_mean_s"], 1e3, "{:.1f}"), cell(r["itl_p99_s"], 1e3, "{:.1f}")]
        if slo:
            row += [cell(r["goodput_rps"], 1, "{:.2f}"), cell(r["slo_attainment"], 100, "{:.1f}")]
        t.add_row(*row)
    con.print(t)
    hot, harm = doc["hotspots"], doc["harm"]
    con.print(f"hot-prefix risk at {hot['load']}: {hot['text']}", highlight=False)
    con.print(f"is harm detectable at {harm['load']}? {harm['text']}", highlight=False)
    c = doc["confirm_vllm"]
    if c is not None:
        con.print(f"vLLM confirmation, first {c['requests']} requests at {c['load']}: " + "; ".join(
            f"vs {ch['other']}: fast {_fmt(ch['fast_pct'], 1, '{:+.0f}%')}, vLLM "
            f"{_fmt(ch['vllm_pct'], 1, '{:+.0f}%')}" for ch in c["changes"]), highlight=False)
    rs = doc["router_state"]
    su = rs["setup"]
    con.print(f"router set-up of the sweep: R = {su['router_replicas']} "
              f"({su['replica_assignment']}), KV-event lag {su['kv_event_lag_s']:g} s, signal "
              f"delay {su['signal_delay_s']:g} s, index {su['index']}", highlight=False)
    con.print(f"router replicas / KV-event lag: {rs['text']}", highlight=False)
    if rs["run"]:
        t = Table(title=f"Router-state sensitivity at {rs['load']}, seeds {rs['seeds']}: mean TTFT "
                  "(s) \\[min, max]; lmetric's change against each policy")
        others = [p for p in rs["policies"] if p != "lmetric"]
        for c in ["R", "lag (s)", *rs["policies"], *[f"vs {o}" for o in others]]:
            t.add_column(c, justify="right")
        by = {(e["load"], e["policy"]): e for e in rs["summary"]}
        ch = {(c["load"], c["other"]): c for c in rs["comparisons"] if c["metric"] == "ttft_mean_s"}
        for r, lag in rs["settings"]:
            lab = next(e["load"] for e in rs["summary"] if e["replicas"] == r and e["lag_s"] == lag)
            row = [str(r), f"{lag:g}"] + [cell(by[(lab, p)]["ttft_mean_s"]) for p in rs["policies"]]
            for o in others:
                c = ch.get((lab, o))
                row.append("-" if c is None or c["pct"] is None else
                           f"{c['pct']:+.1f}% {c['outcome']}")
            t.add_row(*row)
        con.print(t)
    con.print(f"runtime {doc['runtime_s']['total']:.1f} s", highlight=False)
