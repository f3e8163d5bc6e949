"""``lmetric-theory counterfactual [TRACE]``: does a detector flag predict harm?

Forks the simulator at sampled flagged and load-matched unflagged decisions, replays every
instance choice, and reports harm rates, the A-A noise floor, AUROC of the detector's
signals, precision/recall and the gain of each mitigation, all with bootstrap 95%
intervals, plus ``guarded-lmetric`` against the policy end to end over several replicates
(see :mod:`lmetric_theory.experiments.counterfactual.study` and ``docs/counterfactual.md``).

TRACE is a trace file, or ``synthetic:KIND[:key=value,...]`` (see
:mod:`lmetric_theory.workload.spec`, e.g. ``synthetic:hotspot:share=0.6``); without it, the
synthetic default workload. A progress bar runs on stderr (with ``--json`` only when
stderr is a terminal); ``--json`` prints the
stable JSON; ``--out DIR`` writes ``counterfactual.json`` and ``decisions.csv`` atomically.

Examples
--------
::

    lmetric-theory counterfactual trace.jsonl --instances 8 --workers 2
    lmetric-theory counterfactual synthetic:hotspot:share=0.6 --flag hotspot --json
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

from lmetric_theory.cli.common import add_router_state_arguments

PROG = "lmetric-theory counterfactual"
REFERENCES = ("lam", "band", "tuned")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``counterfactual`` sub-command."""
    from lmetric_theory.cli.common import add_loop_arguments
    from lmetric_theory.experiments.counterfactual import DEFAULTS, FLAG_DEFINITIONS

    p = subparsers.add_parser(
        "counterfactual",
        help="fork the simulator at flagged and control decisions: does a flag predict harm?",
        description="Fork the simulator at sampled flagged and load-matched unflagged routing "
        "decisions, replay every instance choice, and report harm, AUROC of the detector's "
        "signals, precision/recall and mitigation gains with bootstrap 95% intervals.",
    )
    p.add_argument("trace", metavar="TRACE", nargs="?",
                   help="trace file, or synthetic:KIND[:key=value,...] (e.g. "
                   "synthetic:hotspot:share=0.6); "
                   "default: the synthetic default workload")
    p.add_argument("--instances", "-n", type=int, default=8, help="instances (default 8)")
    p.add_argument("--policy", default=DEFAULTS["policy"], metavar="SPEC",
                   help="policy under study, NAME[:key=value,...] (default lmetric)")
    p.add_argument("--reference", choices=REFERENCES, default="band",
                   help="linear reference: lam (the preset-derived rate, no band), band (that "
                   "rate with its x/2..x2 band, default) or tuned (tuned with the simulator)")
    p.add_argument("--flag", choices=FLAG_DEFINITIONS, default=DEFAULTS["flag"],
                   help="what counts as flagged (default disagreement; herding, replica_skew, "
                   "stale_index: the router-state monitor, with --router-replicas etc., and "
                   "whether the finding precedes the TTFT loss against round-robin)")
    p.add_argument("--samples", type=int, default=DEFAULTS["samples"], metavar="K",
                   help=f"flagged decisions sampled, and as many controls (default {DEFAULTS['samples']})")
    p.add_argument("--horizon", type=float, default=DEFAULTS["horizon_s"], metavar="S",
                   help=f"arrivals within S seconds count as affected (default {DEFAULTS['horizon_s']:g})")
    p.add_argument("--converge-k", type=int, default=DEFAULTS["converge_k"], metavar="K",
                   help="K consecutive identical outcomes in every branch end the affected set "
                   f"(0: off; default {DEFAULTS['converge_k']})")
    p.add_argument("--min-harm", type=float, default=DEFAULTS["min_harm_s"], metavar="S",
                   help="harm below S seconds never counts, on top of the noise floor (default 0)")
    p.add_argument("--e2e-seeds", type=int, default=DEFAULTS["end_to_end_seeds"], metavar="N",
                   help="replicates of guarded-lmetric vs the policy end to end (default 5; 0 skips)")
    p.add_argument("--seed", type=int, default=0, help="seed (sampling, bootstrap, workload)")
    p.add_argument("--workers", type=int, default=None, metavar="W",
                   help="local worker processes (default: CPU count)")
    p.add_argument("--executor", choices=("local", "dask"), default="local",
                   help="where the forks run (default local processes)")
    p.add_argument("--engine", choices=("fast",), default="fast",
                   help="simulator engine (default fast, the built-in discrete-event engine)")
    p.add_argument("--scheduler", choices=("vllm-v1", "reserve"), default="vllm-v1",
                   help="instance scheduler of the fast engine (default vllm-v1)")
    p.add_argument("--preset", default="h100-llama3-8b-calibrated",
                   help="hardware preset name, or a preset JSON file (default h100-llama3-8b-calibrated, as simulate, audit and results)")
    p.add_argument("--count", type=int, default=None, help="use only the first COUNT requests")
    add_loop_arguments(p)
    p.add_argument("--rate-scale", type=float, default=None, metavar="X",
                   help="replay X times as fast (default 1)")
    p.add_argument("--skip-bad-lines", action="store_true", help="skip malformed trace lines")
    p.add_argument("--json", action="store_true", help="print the JSON instead of tables")
    p.add_argument("--out", metavar="DIR", help="write counterfactual.json and decisions.csv here")
    add_router_state_arguments(p)
    p.set_defaults(func=run)


def _err(msg: str) -> int:
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    return 2


def replicate_factory(args: argparse.Namespace) -> Any:
    """``seed -> Workload`` regenerating the workload per end-to-end replicate, or None.

    For the synthetic default and ``synthetic:`` specs without their own ``seed`` key: the
    same workload (same ``--count`` and ``--rate-scale``) with another seed. For trace files
    (and specs that fix the seed) None: the study then uses consecutive slices.
    """
    import copy

    from lmetric_theory.cli.common import workload_from_args
    from lmetric_theory.workload.spec import is_synthetic_spec

    if args.trace is not None and not is_synthetic_spec(args.trace):
        return None
    if args.trace is not None and "seed=" in args.trace.replace(" ", ""):
        return None

    def make(seed: int) -> Any:
        a = copy.copy(args)
        a.seed = int(seed)
        return workload_from_args(a)

    return make


def run(args: argparse.Namespace) -> int:
    """Handler: run the study, print tables or JSON, optionally write files."""
    from lmetric_theory.cli.common import (
        check_loop_arguments,
        check_router_state_arguments,
        preset_from_arg,
        workload_from_args,
    )
    from lmetric_theory.policies import make_policy, parse_spec
    from lmetric_theory.sim import SimConfig

    loop_error = check_loop_arguments(args) or check_router_state_arguments(args)
    if loop_error:
        return _err(loop_error)
    if args.instances < 2:
        return _err(f"--instances must be >= 2 (a decision needs an alternative), got {args.instances}")
    if args.samples < 1:
        return _err(f"--samples must be >= 1, got {args.samples}")
    if not (math.isfinite(args.horizon) and args.horizon > 0):
        return _err(f"--horizon must be finite and > 0 seconds, got {args.horizon}")
    if args.converge_k < 0:
        return _err(f"--converge-k must be >= 0, got {args.converge_k}")
    if not (math.isfinite(args.min_harm) and args.min_harm >= 0):
        return _err(f"--min-harm must be finite and >= 0 seconds, got {args.min_harm}")
    if args.e2e_seeds < 0:
        return _err(f"--e2e-seeds must be >= 0, got {args.e2e_seeds}")
    if args.workers is not None and args.workers < 1:
        return _err(f"--workers must be >= 1, got {args.workers}")
    if args.count is not None and args.count < 1:
        return _err(f"--count must be >= 1, got {args.count}")
    if not (math.isfinite(args.rate_scale) and args.rate_scale > 0):
        return _err(f"--rate-scale must be finite and > 0, got {args.rate_scale}")
    try:
        policy = parse_spec(args.policy)  # read once; the study takes the typed spec
        make_policy(policy, seed=args.seed)  # a check inside the policy fails here, not later
        preset = preset_from_arg(args.preset)
        workload = workload_from_args(args)
        replicate = replicate_factory(args)
        cfg = SimConfig.from_preset(preset, args.instances, scheduler=args.scheduler,
                                    concurrency=args.concurrency, **args.router_state)
        reference = _reference(args, policy, preset, workload, cfg)
    except (OSError, ValueError) as exc:
        return _err(str(exc))

    from lmetric_theory.experiments.counterfactual import counterfactual_study

    bar = None
    progress = None
    if not args.json or sys.stderr.isatty():  # the bar goes to stderr; JSON stays clean
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        bar = Progress(TextColumn("forking decisions"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn(), console=Console(stderr=True), transient=True)
        task = bar.add_task("forks", total=None)
        bar.start()

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

    source = args.trace or "synthetic default"
    executor: Any = args.executor
    if args.executor == "local":
        from lmetric_theory.experiments.sweep import LocalExecutor

        executor = LocalExecutor(args.workers)
    try:
        res = counterfactual_study(
            workload, cfg, reference=reference, policy=policy, flag=args.flag,
            samples=args.samples, horizon_s=args.horizon, converge_k=args.converge_k,
            min_harm_s=args.min_harm, seed=args.seed, end_to_end_seeds=args.e2e_seeds,
            replicate=replicate, executor=executor, progress=progress, source=source)
    except (OSError, ValueError) as exc:
        return _err(str(exc))
    finally:
        if bar is not None:
            bar.stop()
    doc = res.to_dict()
    doc["config"]["engine"] = args.engine
    doc["config"]["scheduler"] = args.scheduler
    doc["config"]["preset"] = preset.name
    doc["config"].update({k: v for k, v in cfg.to_dict().items()
                          if k in ("router_replicas", "replica_assignment", "kv_event_lag_s",
                                   "index")})
    if args.out:
        from lmetric_theory.core.fileio import atomic_write_text

        out = Path(args.out)
        try:
            atomic_write_text(out / "counterfactual.json", json.dumps(doc, indent=2) + "\n")
            atomic_write_text(out / "decisions.csv", _decisions_csv(res))
        except OSError as exc:
            return _err(f"cannot write {args.out}: {exc}")
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    _print(doc)
    if args.out:
        print(f"wrote {Path(args.out) / 'counterfactual.json'} and {Path(args.out) / 'decisions.csv'}")
    return 0


def _reference(args: argparse.Namespace, policy: Any, preset: Any, workload: Any, cfg: Any) -> Any:
    from lmetric_theory import audit as A
    from lmetric_theory.detector import LinearReference

    if args.reference == "tuned":
        # tuned on the policy's own P and B (a variant resolves to its definitions)
        from lmetric_theory.experiments.counterfactual import policy_score

        d, _ = policy_score(policy, args.seed)
        return A.tuned_reference(workload, instances=args.instances, preset=preset, seed=args.seed,
                                 p_definition=d.p_definition.value,
                                 b_definition=d.b_definition.value, config=cfg)
    ref = A.default_reference(preset, workload)
    if args.reference == "lam":
        return LinearReference(ref.lam, source="latency_model",
                               provenance=f"rate of the default band, without the band; {ref.provenance}")
    return ref


def _decisions_csv(res: Any) -> str:
    import csv

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    fl = set(res.flagged_decisions)
    ctl = set(res.control_decisions)
    n = len(res.forks[0].ttft_cost_s) if res.forks else 0
    w.writerow(["decision", "request", "time_s", "group", "chosen", "affected", "converged",
                "harm_s", "aa_diff_s", *[f"ttft_cost_s_{i}" for i in range(n)],
                *[f"tpot_cost_s_{i}" for i in range(n)]])
    for f in res.forks:
        group = "flagged" if f.decision in fl else ("control" if f.decision in ctl else "")
        w.writerow([f.decision, f.request, repr(f.time_s), group, f.chosen, f.affected,
                    int(f.converged), repr(f.harm_s), repr(f.aa_diff_s),
                    *[repr(x) for x in f.ttft_cost_s], *[repr(x) for x in f.tpot_cost_s]])
    return buf.getvalue()


def _ci(v: Any, ci: Any, fmt: str = "{:.3f}") -> str:
    if v is None:
        return "-"
    lo, hi = ci if ci else (None, None)
    band = "" if lo is None or hi is None else f" [{fmt.format(lo)}, {fmt.format(hi)}]"
    return fmt.format(v) + band


def _print(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=None if sys.stdout.isatty() else 132)
    cfg = doc["config"]
    pop = doc["population"]
    t = Table(title=f"Counterfactual study of {cfg['source']} - {cfg['instances']} instances, "
              f"{cfg['policy_resolved']}, flag = {cfg['flag']}",
              caption=f"flag: {cfg['flag_definition']}; 95% bootstrap intervals in brackets")
    t.add_column("")
    for col in ("n", "harm rate", "mean harm (s)", "mean regret vs reference (s)"):
        t.add_column(col, justify="right")
    for g in ("flagged", "control"):
        x = doc[g]
        t.add_row(g, str(x["n"]), _ci(x["harm_rate"], x["harm_rate_ci95"], "{:.1%}"),
                  _ci(x["mean_harm_s"], x["mean_harm_ci95"]),
                  _ci(x["mean_regret_vs_reference_s"], x["mean_regret_vs_reference_ci95"]))
    con.print(t)
    con.print(f"decisions {pop['decisions']:,}, flagged {pop['flagged']:,}; noise floor "
              f"{doc['noise_floor_s']:.4g} s (A-A nonzero in {pop['aa_nonzero']}); harmful = harm > "
              f"{doc['harm_threshold_s']:.4g} s; horizon {cfg['horizon_s']:g} s; "
              f"re-converged early {pop['converged']} of {pop['sampled_flagged'] + pop['sampled_control']}",
              highlight=False)
    sens = doc.get("harm_rate_by_threshold") or {}
    if sens:
        con.print("harm rate flagged / control if small harms did not count: " + "; ".join(
            f"> {row['threshold_s']:g} s: {_ci(row['flagged']['harm_rate'], None, '{:.0%}')} / "
            f"{_ci(row['control']['harm_rate'], None, '{:.0%}')}" for row in sens.values()),
            highlight=False)
    a = Table(title="Does the signal predict harm? AUROC (0.5 = chance)")
    a.add_column("signal")
    a.add_column("AUROC [95%]", justify="right")
    a.add_column("n", justify="right")
    for name, x in doc["auroc"].items():
        a.add_row(name, _ci(x["value"], x["ci95"]), str(x["n"]))
    for name, why in doc.get("auroc_omitted", {}).items():
        a.add_row(name, "omitted", why)
    con.print(a)
    con.print(f"precision {_ci(doc['precision']['value'], doc['precision']['ci95'])}, "
              f"recall {_ci(doc['recall']['value'], doc['recall']['ci95'])}", highlight=False)
    if doc["mitigations"]:
        m = Table(title="Mitigations at sampled flagged decisions (gain > 0: helps)")
        for col in ("mitigation", "n", "changed", "mean gain (s) [95%]"):
            m.add_column(col, justify="left" if col == "mitigation" else "right")
        for name, x in doc["mitigations"].items():
            m.add_row(name, str(x["n"]), str(x["changed"]), _ci(x["mean_gain_s"], x["ci95"]))
        con.print(m)
    pr = doc.get("precedence")
    if pr:
        def _t(x: Any) -> str:
            return "-" if x is None else f"{x:.1f} s"

        con.print(f"precedence vs {pr['baseline']}: mean TTFT {pr['policy_ttft_mean_s']:.3f} s vs "
                  f"{pr['baseline_ttft_mean_s']:.3f} s; cumulative excess "
                  f"{pr['final_excess_s']:.1f} s; loss onset {_t(pr['onset_time_s'])} (10% at "
                  f"{_t(pr['t10_time_s'])}, 50% at {_t(pr['t50_time_s'])}); first flagged "
                  f"decision {_t(pr['first_flag_time_s'])}, finding first active "
                  f"{_t(pr['first_finding_time_s'])}", highlight=False)
    e = doc["end_to_end"]
    if e.get("replicates"):
        con.print(f"end to end ({e['how']}): mean TTFT {e['policy_ttft_mean_s']:.3f} s (policy) vs "
                  f"{e['guarded_ttft_mean_s']:.3f} s (guarded-lmetric); guarded - policy "
                  f"{_ci(e['mean_diff_s'], e['diff_ci95'])} s", highlight=False)
    con.print(f"runtime {doc['runtime_s']['total']:.1f} s", highlight=False)
