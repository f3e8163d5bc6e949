"""``lmetric-theory app``: start the Streamlit app from the installed package.

Runs ``streamlit run`` on the package's entry script (``lmetric_theory/app/main.py``);
arguments after the sub-command are passed to Streamlit unchanged (for example
``--server.port 8502 --server.headless true``). Needs the ``app`` extra
(``pip install "lmetric-theory[app]"``); without Streamlit it exits with code 2 and says so.

Examples
--------
::

    lmetric-theory app
    lmetric-theory app --server.port 8600 --server.headless true
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

PROG = "lmetric-theory app"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``app`` sub-command."""
    p = subparsers.add_parser(
        "app",
        help="start the Streamlit app (decision regions, snapshot checker, trace audit)",
        description="Start the Streamlit app from the installed package. Further options "
        "(e.g. --server.port 8502 --server.headless true) are passed to `streamlit run`. "
        "Needs the app extra: pip install 'lmetric-theory[app]'.",
    )
    p.set_defaults(func=run, passes_unknown_args=True, extra_args=[])


def entry_script() -> Path:
    """Path of the app's entry script inside the installed package."""
    spec = importlib.util.find_spec("lmetric_theory.app")
    if spec is None or not spec.submodule_search_locations:  # pragma: no cover
        raise FileNotFoundError("lmetric_theory.app is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "main.py"


def run(args: argparse.Namespace) -> int:
    """Handler: run ``streamlit run`` in a child process; returns its exit code."""
    missing = [m for m in ("streamlit", "plotly") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"{PROG}: error: {' and '.join(missing)} not installed; install the app extra: "
              "pip install 'lmetric-theory[app]'", file=sys.stderr)
        return 2
    cmd = [sys.executable, "-m", "streamlit", "run", str(entry_script()),
           *args.extra_args]
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:  # Ctrl-C stops Streamlit too
        return 0
