"""Command-line entry point ``lmetric-theory`` (I/O layer; one module per sub-command).

Each sub-command lives in its own module under :mod:`lmetric_theory.cli`
and exposes ``register(subparsers)``, which adds its parser and sets
``func(args) -> int`` as the handler. :data:`COMMANDS` lists them with their one-line
help, so that :func:`main` imports only the module of the command it runs (``--help``
imports none): start-up does not pay for the libraries of the other commands.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Callable, Iterable
from typing import TextIO

#: Sub-commands in the order ``--help`` lists them: name -> (module, one-line help). The
#: help must equal the one the module's ``register`` gives (a test compares them).
COMMANDS: dict[str, tuple[str, str]] = {
    "advise": ("lmetric_theory.cli.advise",
               "should this workload be routed by LMetric? a verdict with evidence"),
    "derive": ("lmetric_theory.cli.derive",
               "derive when the product score disagrees with a linear score"),
    "simulate": ("lmetric_theory.cli.simulate",
                 "replay a trace through routing policies on a simulated cluster"),
    "calibrate": ("lmetric_theory.cli.calibrate",
                  "fit the simulator's latency model to measured iteration times"),
    "audit": ("lmetric_theory.cli.audit",
              "check every routing decision of the product score against a linear reference"),
    "counterfactual": ("lmetric_theory.cli.counterfactual",
                       "fork the simulator at flagged and control decisions: does a flag "
                       "predict harm?"),
    "results": ("lmetric_theory.cli.results",
                "policy comparison at several loads, seeds and workloads; the paper's claims"),
    "app": ("lmetric_theory.cli.app",
            "start the Streamlit app (decision regions, snapshot checker, trace audit)"),
}

#: Sub-command modules, in the order ``--help`` lists them.
COMMAND_MODULES: tuple[str, ...] = tuple(module for module, _ in COMMANDS.values())


def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """Build the top-level parser.

    Parameters
    ----------
    commands : iterable of str, optional
        Sub-commands whose full parser is built (their module imported, its ``register``
        called); the others get a placeholder that only lists their one-line help.
        Default: every sub-command.
    """
    parser = argparse.ArgumentParser(
        prog="lmetric-theory",
        description="When can the LMetric routing score be trusted? Theory, audit, simulation.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    full = set(COMMANDS) if commands is None else set(commands)
    for name, (module, text) in COMMANDS.items():
        if name in full:
            importlib.import_module(module).register(subparsers)
        else:
            subparsers.add_parser(name, help=text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (2 for usage errors)."""
    from lmetric_theory.cli.common import join_negative_values
    from lmetric_theory.core.gcpause import cyclic_gc_paused

    tokens = join_negative_values(sys.argv[1:] if argv is None else list(argv))
    # The top-level parser has no options but -h: the first other token names the command.
    command = next((t for t in tokens if not t.startswith("-")), None)
    # the command's imports build long-lived objects only: the collector's passes over them
    # during start-up free nothing
    with cyclic_gc_paused():
        parser = build_parser([command] if command in COMMANDS else [])
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
