"""Helpers shared by the sub-commands: workload and preset arguments (audit, simulate), the
reference-rate flags ``--lam``/``--lam-band`` and negative-looking option values."""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: the CLI starts without the library
    from lmetric_theory.workload import Workload


def workload_from_args(args: argparse.Namespace) -> Workload:
    """The workload a replaying command works on.

    ``args.trace`` (a trace file, or a ``synthetic:KIND[:key=value,...]`` spec; the synthetic
    default when ``None``), loaded with
    ``args.skip_bad_lines``; then the first ``args.count`` requests if given, replayed at
    ``args.rate_scale`` times the arrival rate. Raises ``ValueError`` (a ``TraceError``
    naming file, line and field) or ``OSError`` for unreadable input.
    """
    from lmetric_theory.workload import default_workload, load_trace, scale_rate, select
    from lmetric_theory.workload.spec import is_synthetic_spec, synthetic_from_spec

    if args.trace is None:
        w = default_workload(seed=args.seed)
    elif is_synthetic_spec(args.trace):  # synthetic:KIND[:key=value,...]
        w = synthetic_from_spec(args.trace, seed=args.seed)
    else:
        w = load_trace(args.trace, skip_bad_lines=args.skip_bad_lines,
                       **loader_options(args))
    if args.count is not None:
        w = select(w, count=args.count)
    rate_scale = getattr(args, "rate_scale", 1.0)
    if rate_scale is not None and rate_scale != 1.0:
        w = scale_rate(w, rate_scale)
    return w


def loader_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of the trace loader from ``--trace-format`` and ``--closed-loop``
    (only those given, so a loader call without them reads as before)."""
    kw: dict[str, Any] = {}
    fmt = getattr(args, "trace_format", None)
    if fmt is not None and fmt != "auto":
        kw["trace_format"] = fmt
    if getattr(args, "closed_loop", False):
        kw["closed_loop"] = True
    return kw


#: Conventions of ``--trace-format`` (see docs/workloads.md).
TRACE_FORMATS = ("auto", "mooncake", "mooncake-delta")


def add_loop_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``--trace-format``, ``--closed-loop`` and ``--concurrency`` (session traces)."""
    p.add_argument("--trace-format", choices=TRACE_FORMATS, default="auto",
                   help="Mooncake session convention: mooncake (full prompt per row), "
                   "mooncake-delta (each row adds a segment after the previous turn's output), "
                   "auto (detect when unambiguous; default); ignored for synthetic: specs")
    p.add_argument("--closed-loop", action="store_true",
                   help="replay a Qwen-Bailian trace closed loop: a child request is sent when "
                   "its parent completes")
    p.add_argument("--concurrency", type=int, default=None, metavar="N",
                   help="at most N sessions active; a new one starts when one ends (first-turn "
                   "timestamps are ignored; not with --rate-scale)")


def check_loop_arguments(args: argparse.Namespace, rate_flag: str = "--rate-scale") -> str | None:
    """The one-line usage error of the closed-loop flags, or ``None``.

    ``--concurrency`` must be >= 1, and it cannot be combined with an explicit rate flag
    (``rate_flag``, whose parser default is ``None``): under a cap sessions start when a
    slot frees, so their start timestamps are not used. Leaves ``args.rate_scale`` at 1
    when it was not given.
    """
    n = getattr(args, "concurrency", None)
    dest = rate_flag.lstrip("-").replace("-", "_")
    given = getattr(args, dest, None) is not None
    if dest == "rate_scale" and not given:
        args.rate_scale = 1.0
    if n is None:
        return None
    if n < 1:
        return f"--concurrency must be >= 1, got {n}"
    if given:
        return (f"{rate_flag} cannot be combined with --concurrency: under a cap sessions start "
                "when a slot frees, so start timestamps are not used")
    return None


def preset_from_arg(arg: str) -> Any:
    """The hardware preset named by ``--preset``: a built-in name, or a preset JSON file
    (an argument ending in ``.json`` or holding a directory part).

    Raises ``ValueError`` naming the file, line and field for a bad file, saying a named
    file does not exist, or listing the valid preset names for an unknown one.
    """
    from lmetric_theory.sim import load_preset
    from lmetric_theory.sim.latency import load_preset_file

    path = Path(arg)
    looks_like_file = arg.endswith(".json") or path.parent != Path(".")
    if looks_like_file and path.is_file():
        return load_preset_file(path)  # checks every field's range; names file, line, field
    if looks_like_file:
        raise ValueError(f"--preset {arg}: no such preset file")
    return load_preset(arg)


def parse_lam_band(text: str) -> tuple[float, float, float]:
    """``LO,HI`` of ``--lam-band`` as ``(lam_lo, lam_hi, lam)``, rates in tokens per batch slot.

    The reference rate ``lam`` is the band's geometric centre ``sqrt(LO * HI)``, as for the
    default band (``lam / f .. lam * f``). Raises ``ValueError`` with one line starting
    ``lam band:`` unless ``0 < LO <= HI`` are finite numbers.
    """
    parts = text.split(",")
    if len(parts) != 2:
        raise ValueError(f"lam band: expected LO,HI (two numbers, comma-separated), got {text!r}")
    try:
        lo, hi = float(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError(f"lam band: LO and HI must be numbers, got {text!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"lam band: LO and HI must be finite, got {text!r}")
    if lo <= 0:
        raise ValueError(f"lam band: LO must be > 0 (the band is centred geometrically), got {lo:g}")
    if hi < lo:
        raise ValueError(f"lam band: HI must be >= LO, got {lo:g},{hi:g}")
    return lo, hi, math.sqrt(lo * hi)


def add_lam_arguments(group: argparse._MutuallyExclusiveGroup) -> None:
    """Add ``--lam X`` and ``--lam-band LO,HI`` (old spellings ``--lambda``/``--lambda-band``
    kept as hidden aliases) to a mutually exclusive reference group."""
    group.add_argument("--lam", dest="lam", type=float, metavar="X",
                       help="reference rate lam (λ), prefill tokens per batch slot")
    group.add_argument("--lambda", dest="lam", type=float, help=argparse.SUPPRESS)
    group.add_argument("--lam-band", dest="lam_band", metavar="LO,HI",
                       help="reference band, 0 < LO <= HI; lam is its geometric centre "
                       "sqrt(LO*HI), like the default band")
    group.add_argument("--lambda-band", dest="lam_band", help=argparse.SUPPRESS)


_NEGATIVE_VALUE = re.compile(r"^-[0-9.]")


def join_negative_values(argv: list[str]) -> list[str]:
    """Let ``--opt -1,5`` mean ``--opt=-1,5``.

    argparse takes a token starting with ``-`` for an option unless it is a plain negative
    number, so ``--lam-band -1,5`` would fail with "expected one argument" before the value
    can be checked. A long option without ``=`` followed by a token that starts with ``-``
    and a digit or dot is joined to it, so the command's own check reports the value.
    """
    out: list[str] = []
    for tok in argv:
        if (out and _NEGATIVE_VALUE.match(tok) and out[-1].startswith("--")
                and "=" not in out[-1] and out[-1] != "--"):
            out[-1] = f"{out[-1]}={tok}"
        else:
            out.append(tok)
    return out


#: ``--replica-assignment`` choices (the values of ``sim.routerstate.ReplicaAssignment``).
REPLICA_ASSIGNMENTS = ("round-robin", "random", "session")


def add_router_state_arguments(p: argparse.ArgumentParser, *, signal_delay: bool = True) -> None:
    """Add the router-state options (docs/router_state.md): ``--router-replicas``,
    ``--replica-assignment``, ``--signal-delay`` (unless ``signal_delay=False``),
    ``--kv-event-lag`` and ``--index``. Read them with :func:`check_router_state_arguments`."""
    g = p.add_argument_group("router state (docs/router_state.md)")
    g.add_argument("--router-replicas", type=int, default=1, metavar="R",
                   help="router replicas, each counting only its own dispatches (default 1)")
    g.add_argument("--replica-assignment", choices=REPLICA_ASSIGNMENTS, default="round-robin",
                   help="how requests reach the replicas (default round-robin)")
    if signal_delay:
        g.add_argument("--signal-delay", type=float, default=0.0, metavar="S",
                       help="age of the engine-reported load signals the router polls, seconds "
                       "(default 0)")
    g.add_argument("--kv-event-lag", type=float, default=0.0, metavar="S",
                   help="the router's cache index sees block stored/removed events S seconds "
                   "late (default 0)")
    g.add_argument("--index", default="precise", metavar="KIND",
                   help="cache index: precise (default), approximate (the router's own "
                   "dispatches), approximate:ttl=S (forgotten S seconds after the last send) "
                   "or approximate:lru=N (N blocks per instance)")


def check_router_state_arguments(args: argparse.Namespace) -> str | None:
    """The one-line usage error of the router-state options, or ``None``.

    On success sets ``args.router_state``: the :class:`~lmetric_theory.sim.SimConfig`
    keyword arguments (typed: ``ReplicaAssignment``, ``IndexSpec``). Both the fast and the
    vLLM engine express every setting (docs/router_state.md).
    """
    from lmetric_theory.sim.routerstate import ReplicaAssignment, parse_index

    r = args.router_replicas
    if r < 1:
        return f"--router-replicas must be an integer >= 1, got {r}"
    for flag in ("--signal-delay", "--kv-event-lag"):
        v = getattr(args, flag.lstrip("-").replace("-", "_"), 0.0)
        if not (math.isfinite(v) and v >= 0):
            return f"{flag} must be a finite number of seconds >= 0, got {v}"
    try:
        index = parse_index(args.index)
    except ValueError as exc:
        return f"--{exc}"
    state: dict[str, Any] = {
        "router_replicas": int(r),
        "replica_assignment": ReplicaAssignment(args.replica_assignment),
        "kv_event_lag_s": float(args.kv_event_lag),
        "index": index,
    }
    if hasattr(args, "signal_delay"):
        state["signal_delay_s"] = float(args.signal_delay)
    if getattr(args, "view", "precise") == "approximate" and index.kind != "precise":
        return "--view approximate and --index: give one of them"
    args.router_state = state
    return None
