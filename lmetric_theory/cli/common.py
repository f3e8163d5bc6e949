"""Helpers shared by the sub-commands that replay a workload (audit, simulate)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lmetric_theory.workload import Workload


def workload_from_args(args: argparse.Namespace) -> Workload:
    """The workload a replaying command works on.

    ``args.trace`` (a trace file; the synthetic default when ``None``), loaded with
    ``args.skip_bad_lines``; then the first ``args.count`` requests if given, replayed at
    ``args.rate_scale`` times the arrival rate. Raises ``ValueError`` (a ``TraceError``
    naming file, line and field) or ``OSError`` for unreadable input.
    """
    from lmetric_theory.workload import default_workload, load_trace, scale_rate, select

    if args.trace is None:
        w = default_workload(seed=args.seed)
    else:
        w = load_trace(args.trace, skip_bad_lines=args.skip_bad_lines)
    if args.count is not None:
        w = select(w, count=args.count)
    if args.rate_scale != 1.0:
        w = scale_rate(w, args.rate_scale)
    return w


def preset_from_arg(arg: str) -> Any:
    """The hardware preset named by ``--preset``: a built-in name, or a preset JSON file.

    Raises ``ValueError`` naming the file and line for invalid JSON, or listing the valid
    preset names for an unknown one.
    """
    from lmetric_theory.sim import load_preset, preset_from_dict

    path = Path(arg)
    if arg.endswith(".json") and path.is_file():
        try:
            return preset_from_dict(json.loads(path.read_text()), name=path.stem)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
    return load_preset(arg)
