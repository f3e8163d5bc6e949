"""Helpers shared by the sub-commands that replay a workload (audit, simulate)."""

from __future__ import annotations

import argparse

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
