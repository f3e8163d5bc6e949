"""``lmetric-theory calibrate CSV``: fit the iteration-latency coefficients to measured times.

The CSV has the columns ``prefill_tokens, prefill_context, decode_seqs, decode_context`` and
``iteration_s_median`` (extra columns such as ``kv_tokens_read`` or percentiles are ignored).
The fit minimises squared relative error with ``scipy.optimize.least_squares`` (coefficients
>= 0) and prints each coefficient with the mean and worst relative error; ``--out`` writes a
preset JSON (limits taken from ``--base``) atomically.

Examples
--------
::

    lmetric-theory calibrate iterations.csv --attention
    lmetric-theory calibrate iterations.csv --attention --out my-h100.json --json
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import tempfile
from pathlib import Path

REQUIRED = ("prefill_tokens", "prefill_context", "decode_seqs", "decode_context", "iteration_s_median")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``calibrate`` sub-command."""
    p = subparsers.add_parser(
        "calibrate",
        help="fit the simulator's latency model to measured iteration times",
        description="Fit c0, c_pf, c_dec, c_kv (and c_att with --attention) to measured "
        "iteration times by least squares on relative error; optionally write a preset.",
    )
    p.add_argument("csv", metavar="CSV", help="measured iterations (see module docs for columns)")
    p.add_argument("--out", metavar="FILE", help="write a preset JSON file (atomically)")
    p.add_argument("--attention", action="store_true", help="fit the prefill-attention term c_att")
    p.add_argument("--name", default=None, help="preset name (default: the --out file stem)")
    p.add_argument("--base", default="h100-llama3-8b",
                   help="preset whose KV capacity, token budget and batch limit the new preset keeps")
    p.add_argument("--json", action="store_true", help="print the fit as JSON")
    p.set_defaults(func=run)


def read_calibration_csv(path: Path) -> dict[str, list[float]]:
    """Read the required columns; ``ValueError`` naming file, line and field on bad input."""
    cols: dict[str, list[float]] = {k: [] for k in REQUIRED}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: line 1: missing column(s) {', '.join(missing)}")
        for row in reader:
            line = reader.line_num
            for c in REQUIRED:
                raw = row.get(c)
                try:
                    v = float(raw)  # type: ignore[arg-type]
                except (TypeError, ValueError):
                    raise ValueError(f"{path}: line {line}: field '{c}': not a number: {raw!r}") from None
                if not math.isfinite(v) or v < 0 or (c == "iteration_s_median" and v <= 0):
                    raise ValueError(f"{path}: line {line}: field '{c}': must be finite and "
                                     f"{'> 0' if c == 'iteration_s_median' else '>= 0'}, got {raw!r}")
                cols[c].append(v)
    if not cols["iteration_s_median"]:
        raise ValueError(f"{path}: no data rows")
    return cols


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run(args: argparse.Namespace) -> int:
    """Handler: fit, print, optionally write the preset; 2 on bad input."""
    import numpy as np

    from lmetric_theory.sim.latency import Preset, fit_latency, load_preset

    path = Path(args.csv)
    try:
        base = load_preset(args.base)
        cols = read_calibration_csv(path)
    except (OSError, ValueError) as exc:
        print(f"lmetric-theory calibrate: error: {exc}", file=sys.stderr)
        return 2
    a = {k: np.asarray(v) for k, v in cols.items()}
    rep = fit_latency(a["prefill_tokens"], a["prefill_context"], a["decode_seqs"], a["decode_context"],
                      a["iteration_s_median"], attention=args.attention)
    name = args.name or (Path(args.out).stem if args.out else "calibrated")
    preset = Preset(
        name=name, latency=rep.model, kv_capacity_tokens=base.kv_capacity_tokens,
        token_budget=base.token_budget, max_batch=base.max_batch,
        description=(f"least-squares fit (relative error) to {rep.rows} measured iterations from "
                     f"{path.name}{' with the prefill-attention term' if args.attention else ''}: "
                     f"mean relative error {rep.mean_rel_error:.1%}, worst {rep.worst_rel_error:.1%}; "
                     f"limits from {base.name}"),
    )
    doc = preset.to_dict()
    doc["fit"] = {"rows": rep.rows, "mean_rel_error": rep.mean_rel_error,
                  "worst_rel_error": rep.worst_rel_error, "attention": bool(args.attention)}
    if args.out:
        write_atomic(Path(args.out), json.dumps(doc, indent=2) + "\n")
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"Latency fit: {path.name} ({rep.rows} rows)")
    t.add_column("coefficient")
    t.add_column("value", justify="right")
    t.add_column("unit")
    units = {"c0": "s", "c_pf": "s/token", "c_dec": "s/sequence", "c_kv": "s/token read",
             "c_att": "s/token^2"}
    for k, unit in units.items():
        t.add_row(k, f"{getattr(rep.model, k):.4g}", unit)
    console = Console()
    console.print(t)
    console.print(f"mean relative error {rep.mean_rel_error:.2%}, worst {rep.worst_rel_error:.2%}")
    if args.out:
        console.print(f"preset written to {args.out}")
    return 0
