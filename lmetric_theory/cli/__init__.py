"""Command-line entry point ``lmetric-theory`` (I/O layer; one module per sub-command).

Each sub-command lives in its own module under :mod:`lmetric_theory.cli`
and exposes ``register(subparsers)``, which adds its parser and sets
``func(args) -> int`` as the handler.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Callable
from typing import TextIO

#: Sub-command modules, in the order ``--help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "lmetric_theory.cli.derive",
    "lmetric_theory.cli.simulate",
    "lmetric_theory.cli.calibrate",
    "lmetric_theory.cli.audit",
    "lmetric_theory.cli.counterfactual",
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
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning(f"lmetric-theory {args.command}")
            code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:  # e.g. piped into `head`: the reader has what it wanted
        _silence_stdout()
        return 0
    except SystemExit as exc:
        # rich handles a closed pipe itself (stdout to the null device, then SystemExit(1));
        # the reader has what it wanted, so that is a success too
        if isinstance(exc.__context__, BrokenPipeError):
            return 0
        raise


def _one_line_warning(prog: str) -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints ``PROG: warning: MESSAGE`` on one line (no
    source line, no file name of the code that warned)."""

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        text = " ".join(str(message).split())
        kind = "" if issubclass(category, UserWarning) else f"{category.__name__}: "
        print(f"{prog}: warning: {kind}{text}", file=sys.stderr if file is None else file)

    return show


def _silence_stdout() -> None:
    """Point stdout at the null device so the interpreter's final flush of a closed pipe
    neither fails nor prints (the documented way to end quietly on SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real file descriptor (e.g. captured in tests)
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
