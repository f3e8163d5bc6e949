"""``lmetric-theory audit [TRACE]``: check every routing decision of the product score.

With TRACE (or the synthetic default without it) the requests are replayed under
``lmetric`` in the simulator and every decision is checked against a linear reference;
with ``--snapshots FILE`` decisions captured from a live router are checked (JSON Lines
schema in ``docs/audit.md``). Prints rich summary tables (a progress bar on stderr for
long runs); ``--json`` prints the report instead; ``--out DIR`` also writes
``audit.json`` and a self-contained ``audit.html``, atomically.

Reference: ``--lam X``, ``--lam-band LO,HI`` (``lam`` is the band's geometric centre) or
``--tune``; without one, a band derived from the preset's latency model (see
:func:`lmetric_theory.audit.default_reference`), stated in the output. The old spellings
``--lambda`` and ``--lambda-band`` still work.

Examples
--------
::

    lmetric-theory audit                                   # synthetic default, 8 instances
    lmetric-theory audit trace.jsonl --instances 8 --lam 512 --out audit/
    lmetric-theory audit --snapshots decisions.jsonl --lam-band 256,1024 --json
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import TYPE_CHECKING, Any

from lmetric_theory.cli.common import (
    add_lam_arguments,
    add_loop_arguments,
    add_router_state_arguments,
    check_loop_arguments,
    check_router_state_arguments,
    parse_lam_band,
    preset_from_arg,
    workload_from_args,
)
from lmetric_theory.core.definitions import LMETRIC_VARIANTS, BDefinition, PDefinition

if TYPE_CHECKING:
    from lmetric_theory.audit import AuditReport

PROGRESS_MIN_REQUESTS = 2000
PROG = "lmetric-theory audit"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``audit`` sub-command."""
    p = subparsers.add_parser(
        "audit",
        help="check every routing decision of the product score against a linear reference",
        description="Replay a trace (or the synthetic default) under lmetric in the simulator, "
        "or read decisions captured from a live router (--snapshots), and check each against a "
        "linear reference P + lam*B: disagreements, regret, degenerate cases, mitigations.",
    )
    p.add_argument("trace", metavar="TRACE", nargs="?",
                   help="trace file (Mooncake/Bailian JSONL, generic JSONL/CSV); "
                   "default: the synthetic default workload")
    p.add_argument("--instances", "-n", type=int, default=8,
                   help="number of instances for the replay (default 8)")
    ref = p.add_mutually_exclusive_group()
    add_lam_arguments(ref)
    ref.add_argument("--tune", action="store_true",
                     help="tune lam with the simulator (linear over a lam grid, mean TTFT)")
    p.add_argument("--snapshots", metavar="FILE",
                   help="check decisions from a snapshot JSON Lines file instead of replaying")
    p.add_argument("--skip-bad-lines", action="store_true",
                   help="skip (and count) malformed trace / snapshot lines")
    p.add_argument("--out", metavar="DIR", help="write audit.json and audit.html here")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of tables")
    p.add_argument("--rate-scale", type=float, default=None, metavar="X",
                   help="replay X times as fast (default 1; not with --concurrency)")
    add_loop_arguments(p)
    p.add_argument("--preset", default="h100-llama3-8b-calibrated",
                   help="hardware preset name, or a preset JSON file (default "
                   "h100-llama3-8b-calibrated, as simulate)")
    p.add_argument("--engine", choices=("fast", "vllm"), default="fast",
                   help="engine of the replay: fast only (the audit reads the per-decision "
                        "snapshot log, which the vllm engine does not record; confirm a "
                        "conclusion with 'simulate --engine vllm')")
    p.add_argument("--variant", choices=tuple(LMETRIC_VARIANTS), default="paper",
                   help="lmetric variant replayed and audited: its P and B definitions and tie "
                        "rule (default paper: the authors' router)")
    p.add_argument("--p-definition", choices=tuple(m.value for m in PDefinition), default=None,
                   help="override what P counts in the replay (default: the variant's)")
    p.add_argument("--b-definition", choices=tuple(m.value for m in BDefinition), default=None,
                   help="override what B counts in the replay (default: the variant's)")
    p.add_argument("--p0", type=float, default=0.0, help="prefill offset p0, tokens (default 0)")
    p.add_argument("--b0", type=float, default=1.0, help="batch offset b0 (default 1)")
    p.add_argument("--top", type=int, default=10, help="worst decisions to report (default 10)")
    p.add_argument("--count", type=int, default=None, help="replay only the first COUNT requests")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic workload and replay")
    add_router_state_arguments(p)
    p.set_defaults(func=run)


def _err(msg: str) -> int:
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Handler: audit, print tables or JSON, optionally write the report files."""
    from lmetric_theory import audit as A
    from lmetric_theory.detector import LinearReference

    loop_error = check_loop_arguments(args) or check_router_state_arguments(args)
    if loop_error:
        return _err(loop_error)
    if args.instances < 1:
        return _err(f"--instances must be >= 1, got {args.instances}")
    if args.engine != "fast":
        return _err("--engine vllm: the audit judges every decision from the fast engine's "
                    "snapshot log, which the vllm engine does not record; replay with the fast "
                    "engine and confirm with 'lmetric-theory simulate --engine vllm'")
    if not (math.isfinite(args.rate_scale) and args.rate_scale > 0):
        return _err(f"--rate-scale must be finite and > 0, got {args.rate_scale}")
    if args.count is not None and args.count < 1:
        return _err(f"--count must be >= 1, got {args.count}")
    if args.top < 0:
        return _err(f"--top must be >= 0, got {args.top}")
    if args.snapshots and args.trace:
        return _err("give either TRACE or --snapshots, not both")
    if args.out and not _have_plotly():
        return _err("--out writes an HTML report with plotly figures; install the app extra: "
                    "pip install 'lmetric-theory[app]'")
    band = None
    if args.lam_band is not None:
        try:
            band = parse_lam_band(args.lam_band)
        except ValueError as exc:
            return _err(str(exc))
    try:
        preset = preset_from_arg(args.preset)
        workload = None if args.snapshots else workload_from_args(args)
        if args.lam is not None:
            reference = LinearReference.fixed(args.lam)
        elif band is not None:
            reference = LinearReference.band(band[0], band[1], lam=band[2])
        elif args.tune:
            tune_cfg = None
            if args.concurrency is not None:
                from lmetric_theory.sim import SimConfig

                tune_cfg = SimConfig.from_preset(preset, args.instances,
                                                 concurrency=args.concurrency)
            reference = A.tuned_reference(workload, instances=args.instances, preset=preset,
                                          seed=args.seed, config=tune_cfg,
                                          p_definition=args.p_definition
                                          or LMETRIC_VARIANTS[args.variant].p_definition,
                                          b_definition=args.b_definition
                                          or LMETRIC_VARIANTS[args.variant].b_definition)
        else:
            reference = A.default_reference(preset, workload)
        # validate offsets before a long replay
        from lmetric_theory.detector import Detector

        Detector(reference, args.p0, args.b0)
    except (OSError, ValueError) as exc:
        return _err(str(exc))

    show = not args.json and (workload is not None and len(workload) >= PROGRESS_MIN_REQUESTS)
    bar = None
    progress = None
    if show:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(TextColumn("auditing"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                       TimeElapsedColumn(), console=Console(stderr=True), transient=True)
        task = bar.add_task("audit", total=1.0)
        bar.start()

        def progress(x: float) -> None:
            bar.update(task, completed=x)

    try:
        if args.snapshots:
            res = A.audit_snapshot_file(args.snapshots, reference,
                                        skip_bad_lines=args.skip_bad_lines,
                                        prefill_offset=args.p0, batch_offset=args.b0,
                                        top=args.top, progress=progress)
        else:
            source = "synthetic default" if args.trace is None else args.trace
            res = A.audit_workload(workload, instances=args.instances, reference=reference,
                                   prefill_offset=args.p0, batch_offset=args.b0, top=args.top,
                                   progress=progress, preset=preset,
                                   p_definition=args.p_definition,
                                   b_definition=args.b_definition, seed=args.seed,
                                   source=source, variant=args.variant,
                                   concurrency=args.concurrency,
                                   router_state=args.router_state)
    except (OSError, ValueError) as exc:
        return _err(str(exc))
    finally:
        if bar is not None:
            bar.stop()

    if args.out:
        from lmetric_theory.io.report import write_report

        try:
            paths = write_report(res, args.out)
        except OSError as exc:
            return _err(f"cannot write {args.out}: {exc}")
    if args.json:
        from lmetric_theory.io.report import report_json

        sys.stdout.write(report_json(res.report))
        return 0
    _print(res.report)
    if args.out:
        print(f"wrote {paths[0]} and {paths[1]}")
    return 0


def _have_plotly() -> bool:
    import importlib.util

    return importlib.util.find_spec("plotly") is not None


def _f(x: Any, fmt: str = "{:,.4g}") -> str:
    return "-" if x is None else fmt.format(x)


def _print(rep: AuditReport) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    tr, cfg, lr = rep.trace, rep.config, rep.lam_reference
    skipped = f", {rep.skipped_lines} bad lines skipped" if rep.skipped_lines else ""
    what = (f"{cfg['instances']} instances, {cfg['preset']}" if cfg.get("preset")
            else f"{cfg['instances']} instances, captured snapshots")
    unit = "requests" if cfg.get("preset") else "decisions"
    t = Table(title=f"Audit of {tr['source']} - {tr['requests']:,} {unit}{skipped}, {what}",
              show_header=False)
    t.add_column("", style="bold")
    t.add_column("", justify="right")
    t.add_row("decisions", f"{rep.decisions:,}")
    t.add_row("disagreements", f"{rep.disagreements:,} ({rep.disagreement_rate:.2%})")
    t.add_row("fragile (disagree with part of the band)", f"{rep.fragile:,}")
    for k, label in (("zero_prefill", "zero-prefill hot-spots"), ("idle_tie", "idle ties"),
                     ("exact_tie", "exact product ties")):
        t.add_row(label, f"{rep.degenerate[k]:,}")
    t.add_row("extreme operating points", f"{rep.extreme_operating_point:,}")
    r = rep.regret_tokens
    t.add_row("regret mean / p50 / p99 / max (tokens)",
              " / ".join(_f(r[k]) for k in ("mean", "p50", "p99", "max")))
    le = rep.lam_eff
    t.add_row("λ_eff p1 / p50 / p99 (tokens per slot)", " / ".join(_f(le[k]) for k in ("p1", "p50", "p99")))
    t.add_row("reference λ [band]",
              f"{_f(lr['lam'])} [{_f(lr['lam_lo'])}, {_f(lr['lam_hi'])}] ({lr['source']})")
    defs = (f"P={cfg['p_definition']}, B={cfg['b_definition']}" if cfg.get("p_definition")
            else "P, B as captured")
    t.add_row("score", f"{defs}, p0={cfg['prefill_offset']}, b0={cfg['batch_offset']}")
    con.print(t)
    if lr.get("provenance"):
        con.print(f"[dim]reference: {lr['provenance']}[/dim]", highlight=False)
    con.print(
        "[dim]Terms: a decision [bold]disagrees[/bold] when the product's instance differs from "
        "linear(λ) at the reference λ; [bold]fragile[/bold]: it agrees at λ but disagrees "
        "somewhere in the band; [bold]exact product ties[/bold]: two or more instances share "
        "the lowest product score (the tie rule decides, which is not an error); "
        "[bold]extreme operating points[/bold]: λ_eff more than 10x outside the reference "
        "band; [bold]regret[/bold]: how many prefill tokens worse the product's pick "
        "is under linear(λ); [bold]flagged[/bold]: any finding (ties included); "
        "[bold]agree share[/bold]: share of the flagged decisions whose mitigated choice "
        "equals linear(λ)'s. Many disagreements mean the reference λ lies far from the product's "
        "λ_eff (compare the two rows above), not that the product is harmful: "
        "'lmetric-theory counterfactual' measures harm.[/dim]",
        highlight=False,
    )

    m = Table(title="Mitigations, ranked by flagged decisions fixed "
                    f"({rep.flagged:,} flagged)")
    for col in ("#", "mitigation", "fixes", "breaks", "agree share", "regret removed"):
        # Names are never cut with an ellipsis at 80 columns: the mitigation keeps its
        # full width; the kinds it is recommended for are listed below the table.
        left = col == "mitigation"
        m.add_column(col, justify="left" if left else "right", overflow="fold",
                     no_wrap=col == "mitigation",
                     min_width=max(len(x["mitigation"]) for x in rep.mitigations)
                     if col == "mitigation" and rep.mitigations else None)
    for x in rep.mitigations:
        label = x["mitigation"] + (f" ({x['value']:g})" if x["value"] is not None else "")
        m.add_row(str(x["rank"]), label, f"{x['fixes']:,}", f"{x['breaks']:,}",
                  _f(x["agree_share"], "{:.1%}"), _f(x["mean_regret_removed_tokens"]))
    con.print(m)
    for x in rep.mitigations:
        if x["recommended_for"]:
            kinds = ", ".join(f"{k.replace('_', ' ')} ({n:,})"
                              for k, n in x["recommended_for"].items())
            con.print(f"  {x['rank']}. {x['mitigation']} is recommended for: {kinds}",
                      highlight=False)

    if rep.worst:
        w = Table(title="Worst decisions by regret")
        for col in ("decision", "time (s)", "product", "linear", "regret", "λ_eff", "λ*"):
            w.add_column(col, justify="right")
        for x in rep.worst:
            w.add_row(str(x["decision"]), _f(x["time_s"], "{:.2f}"), str(x["product_choice"]),
                      str(x["linear_choice"]), _f(x["regret_tokens"]),
                      _f(x["lam_eff"]), _f(x["lam_star"]))
        con.print(w)

    if rep.hotspots:
        h = Table(title="Hot prefix classes (phase 1: x/xbar > |M|/|Mbar|; phase 2: confirmed)")
        for col in ("class", "share", "cached on", "phase 1", "phase 2", "(l) holds",
                    "mitigation"):
            h.add_column(col, justify="left" if col == "mitigation" else "right",
                         overflow="fold")
        for x in rep.hotspots:
            h.add_row(str(x.class_id), f"{x.share:.2f}",
                      ", ".join(map(str, x.cached_instances)), str(x.phase1_decision),
                      "-" if x.phase2_decision is None else str(x.phase2_decision),
                      "yes" if x.condition_holds else "no", x.mitigation or "-")
        con.print(h)

    if rep.router_state is not None:
        if not rep.router_state:
            con.print("Router state: no replica skew, herding or stale index found.",
                      highlight=False)
        else:
            r = Table(title="Router state (results (m)-(o) of derive)")
            for col in ("finding", "first decision", "mitigation", "what was found"):
                r.add_column(col, justify="right" if col == "first decision" else "left",
                             overflow="fold")
            for e in rep.router_state:
                val = "" if e.mitigation_value is None else f" {e.mitigation_value:g}"
                r.add_row(e.kind, str(e.first_decision), e.mitigation + val, e.message)
            con.print(r)
