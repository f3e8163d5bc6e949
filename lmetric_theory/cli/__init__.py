"""Command-line entry point ``lmetric-theory`` (I/O layer; one module per sub-command).

Each sub-command lives in its own module under :mod:`lmetric_theory.cli`
and exposes ``register(subparsers)``, which adds its parser and sets
``func(args) -> int`` as the handler.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: Sub-command modules, in the order ``--help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "lmetric_theory.cli.derive",
    "lmetric_theory.cli.simulate",
    "lmetric_theory.cli.calibrate",
    "lmetric_theory.cli.audit",
    "lmetric_theory.cli.results",
    "lmetric_theory.cli.app",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every registered sub-command."""
    parser = argparse.ArgumentParser(
        prog="lmetric-theory",
        description="When can the LMetric routing score be trusted? Theory, audit, simulation.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (2 for usage errors)."""
    from lmetric_theory.cli.common import join_negative_values

    parser = build_parser()
    tokens = join_negative_values(sys.argv[1:] if argv is None else list(argv))
    args, extra = parser.parse_known_args(tokens)
    if getattr(args, "passes_unknown_args", False):  # `app`: the rest goes to Streamlit
        args.extra_args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # e.g. piped into `head`
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
