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
import io
import json
import math
import sys
from pathlib import Path

from lmetric_theory.core.fileio import TextFileError, atomic_write_text, read_text
from lmetric_theory.core.limits import BATCH_MAX, ITERATION_MAX_S, TOKENS_MAX

REQUIRED = ("prefill_tokens", "prefill_context", "decode_seqs", "decode_context", "iteration_s_median")

#: Valid range of each column: (low, high, low excluded).
RANGES: dict[str, tuple[float, float, bool]] = {
    "prefill_tokens": (0, TOKENS_MAX, False),
    "prefill_context": (0, TOKENS_MAX, False),
    "decode_seqs": (0, BATCH_MAX, False),
    "decode_context": (0, TOKENS_MAX, False),
    "iteration_s_median": (0, ITERATION_MAX_S, True),
}

COLUMNS_HELP = f"""\
CSV columns (a header row names them; other columns are ignored):
  prefill_tokens      new prompt tokens computed in the iteration, 0..{TOKENS_MAX}
  prefill_context     tokens already cached for the prefilling sequence, 0..{TOKENS_MAX}
  decode_seqs         sequences decoding one token each, 0..{BATCH_MAX}
  decode_context      mean context of a decoding sequence, tokens, 0..{TOKENS_MAX}
  iteration_s_median  measured iteration time, seconds, > 0 and <= {ITERATION_MAX_S:g}

Every coefficient needs rows that exercise it: c_pf (and c_att) rows with
prefill_tokens > 0, c_dec rows with decode_seqs > 0, c_kv rows that read the KV cache.
A coefficient the rows cannot determine is refused (exit 2) unless pinned with
--pin NAME=VALUE. The model:
  t = c0 + c_pf*prefill_tokens + c_dec*decode_seqs + c_kv*kv_tokens_read
      + c_att*prefill_tokens*(prefill_context + prefill_tokens/2)
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``calibrate`` sub-command."""
    p = subparsers.add_parser(
        "calibrate",
        help="fit the simulator's latency model to measured iteration times",
        description="Fit c0, c_pf, c_dec, c_kv (and c_att with --attention) to measured "
        "iteration times by least squares on relative error; optionally write a preset.",
        epilog=COLUMNS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("csv", metavar="CSV",
                   help="measured iterations, one row per iteration shape (columns below)")
    p.add_argument("--out", metavar="FILE", help="write a preset JSON file (atomically)")
    p.add_argument("--attention", action="store_true", help="fit the prefill-attention term c_att")
    p.add_argument("--pin", action="append", default=[], metavar="NAME=VALUE",
                   help="hold a coefficient at VALUE instead of fitting it (repeatable), "
                   "e.g. --pin c_pf=2.1e-5 for decode-only data")
    p.add_argument("--name", default=None, help="preset name (default: the --out file stem)")
    p.add_argument("--base", default="h100-llama3-8b",
                   help="preset whose KV capacity, token budget and batch limit the new preset keeps")
    p.add_argument("--json", action="store_true", help="print the fit as JSON")
    p.set_defaults(func=run)


def read_calibration_csv(path: Path) -> dict[str, list[float]]:
    """Read the required columns; ``ValueError`` naming file, line and field on bad input
    (binary or non-UTF-8 file, missing column, a cell that is not a number in its range)."""
    try:
        text = read_text(path, "a CSV")
    except TextFileError as exc:
        raise ValueError(f"{path}: line {exc.line}: {exc.reason}") from None
    cols: dict[str, list[float]] = {k: [] for k in REQUIRED}
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        fields = reader.fieldnames or []
        missing = [c for c in REQUIRED if c not in fields]
        if missing:
            shown = [f if len(f) <= 30 else f[:27] + "..." for f in fields[:8]]
            raise ValueError(f"{path}: line 1: missing column(s) {', '.join(missing)} "
                             f"(header: {shown}; see 'lmetric-theory calibrate --help')")
        for row in reader:
            line = reader.line_num
            for c in REQUIRED:
                cols[c].append(_cell(path, line, c, row.get(c)))
    except csv.Error as exc:
        raise ValueError(f"{path}: line {reader.line_num}: not readable as CSV ({exc})") from None
    if not cols["iteration_s_median"]:
        raise ValueError(f"{path}: no data rows")
    return cols


def _cell(path: Path, line: int, column: str, raw: str | None) -> float:
    """One cell as a number inside the column's range, or ``ValueError`` naming it."""
    lo, hi, lo_open = RANGES[column]
    want = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:.10g}]"
    where = f"{path}: line {line}: field '{column}'"
    if raw is None:
        raise ValueError(f"{where}: missing (the row has fewer cells than the header)")
    text = raw.strip()
    shown = text if len(text) <= 30 else text[:27] + "..."
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"{where}: expected {want}, got {shown!r}") from None
    if not math.isfinite(v) or v > hi or (v <= lo if lo_open else v < lo):
        raise ValueError(f"{where}: expected {want}, got {shown!r}")
    return v


def _err(msg: str) -> int:
    print(f"lmetric-theory calibrate: error: {msg}", file=sys.stderr)
    return 2


def parse_pins(items: list[str]) -> dict[str, float]:
    """``--pin NAME=VALUE`` arguments as ``{name: value}``; ``ValueError`` naming the bad one."""
    from lmetric_theory.core.limits import COEF_MAX, check_number

    pins: dict[str, float] = {}
    for item in items:
        name, eq, value = item.partition("=")
        name = name.strip()
        if not eq or name not in COEF_MAX:
            raise ValueError(f"--pin: expected NAME=VALUE with NAME one of "
                             f"{', '.join(COEF_MAX)}, got {item!r}")
        if name in pins:
            raise ValueError(f"--pin: {name} given twice")
        try:
            v = float(value)
        except ValueError:
            raise ValueError(f"--pin {name}: expected a number, got {value!r}") from None
        pins[name] = check_number(f"--pin {name}", v, lo=0.0, hi=COEF_MAX[name])
    return pins


def run(args: argparse.Namespace) -> int:
    """Handler: fit, print, optionally write the preset; 2 on bad input."""
    import numpy as np

    from lmetric_theory.sim.latency import COEFFICIENTS, Preset, fit_latency, load_preset

    path = Path(args.csv)
    try:
        pins = parse_pins(args.pin)
        base = load_preset(args.base)
        cols = read_calibration_csv(path)
    except OSError as exc:
        return _err(f"cannot read {exc.filename or path}: {exc.strerror or exc}")
    except ValueError as exc:
        return _err(str(exc))
    if args.out and Path(args.out).is_dir():
        return _err(f"--out {args.out}: is a directory; give a file name such as my-preset.json")
    a = {k: np.asarray(v) for k, v in cols.items()}
    try:
        rep = fit_latency(a["prefill_tokens"], a["prefill_context"], a["decode_seqs"],
                          a["decode_context"], a["iteration_s_median"], attention=args.attention,
                          pin=pins)
    except ValueError as exc:
        return _err(f"{path}: {exc}")
    name = args.name or (Path(args.out).stem if args.out else "calibrated")
    pinned = "".join(f"; {k} pinned at {v:.4g} {COEFFICIENTS[k]}" for k, v in pins.items())
    preset = Preset(
        name=name, latency=rep.model, kv_capacity_tokens=base.kv_capacity_tokens,
        token_budget=base.token_budget, max_batch=base.max_batch,
        description=(f"least-squares fit (relative error) to {rep.rows} measured iterations from "
                     f"{path.name}{' with the prefill-attention term' if args.attention else ''}: "
                     f"mean relative error {rep.mean_rel_error:.1%}, worst {rep.worst_rel_error:.1%}; "
                     f"limits from {base.name}{pinned}"),
    )
    doc = preset.to_dict()
    doc["fit"] = {"rows": rep.rows, "mean_rel_error": rep.mean_rel_error,
                  "worst_rel_error": rep.worst_rel_error, "attention": bool(args.attention)}
    if pins:
        doc["fit"]["pinned"] = pins
    if args.out:
        try:
            atomic_write_text(Path(args.out), json.dumps(doc, indent=2) + "\n")
        except OSError as exc:
            return _err(f"cannot write {args.out}: {exc.strerror or exc}")
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"Latency fit: {path.name} ({rep.rows} rows)")
    t.add_column("coefficient")
    t.add_column("value", justify="right")
    t.add_column("unit")
    for k, unit in COEFFICIENTS.items():
        t.add_row(k + (" (pinned)" if k in pins else ""), f"{getattr(rep.model, k):.4g}", unit)
    console = Console()
    console.print(t)
    console.print(f"mean relative error {rep.mean_rel_error:.2%}, worst {rep.worst_rel_error:.2%}")
    if args.out:
        console.print(f"preset written to {args.out}")
    return 0
