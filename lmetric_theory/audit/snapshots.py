"""Captured router snapshots in: :func:`load_snapshots` reads a snapshot JSON Lines file
(schema in ``docs/audit.md``) into a :class:`SnapshotBatch`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmetric_theory.core.fileio import TextFileError, read_text
from lmetric_theory.detector import (
    Snapshot,
)

__all__ = ["ROUTER_STATE_FIELDS", "SnapshotBatch", "load_snapshots"]

#: Optional router-state fields of a snapshot line (docs/audit.md): the router replica that
#: decided, the instance it chose, the engines' P and B beside the router's, and the cached
#: tokens its index predicted on the chosen instance against the engine's hit.
ROUTER_STATE_FIELDS: tuple[str, ...] = (
    "replica", "chosen", "true_prefill_tokens", "true_batch_size", "predicted_cached_tokens",
    "cached_tokens",
)
_ROUTER_ARRAYS = ("true_prefill_tokens", "true_batch_size")


@dataclass(frozen=True, slots=True, eq=False)
class SnapshotBatch:
    """Decisions read from a snapshot JSON Lines file (see :func:`load_snapshots`).

    Attributes
    ----------
    prefill_tokens : np.ndarray, shape (D, N)
        ``P`` per decision and instance, tokens (int64 when all integral, else float64).
    batch_size : np.ndarray, shape (D, N)
        ``B`` per decision and instance, requests.
    time_s : np.ndarray, shape (D,), float64
        Decision times, seconds; NaN where a line has no ``time_s``.
    instance_ids : list of tuple of str or None, length D
        Per-decision instance ids (None where a line has none).
    uncached_tokens : np.ndarray or None, shape (D, N)
        The request's uncached tokens, when every kept line has them.
    source : str
        File name.
    lines : list of int, length D
        1-based line number of each decision in the file.
    skipped_lines : int
        Bad lines skipped (only with ``skip_bad_lines=True``).
    skipped_reasons : list of str
        The first few skip messages (file, line, field, reason).
    router_state : dict of str to np.ndarray
        The router-state fields (:data:`ROUTER_STATE_FIELDS`) that every kept line has:
        shape (D,) for ``replica``, ``chosen`` and the cached tokens, (D, N) for the
        engines' ``P`` and ``B``; empty when no field is on every line.
    """

    prefill_tokens: np.ndarray
    batch_size: np.ndarray
    time_s: np.ndarray
    instance_ids: list[tuple[str, ...] | None]
    uncached_tokens: np.ndarray | None
    source: str
    lines: list[int]
    skipped_lines: int = 0
    skipped_reasons: tuple[str, ...] = ()
    router_state: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.prefill_tokens.shape[0])


def load_snapshots(path: str | os.PathLike[str], *, skip_bad_lines: bool = False) -> SnapshotBatch:
    """Read a snapshot JSON Lines file: one JSON object per routing decision.

    Each object has ``prefill_tokens`` and ``batch_size`` (arrays of N numbers) and
    optionally ``instance_ids``, ``time_s``, ``uncached_tokens``,
    ``queued_prefill_tokens``, ``waiting``, ``kv_usage`` (see ``docs/audit.md``). Every
    decision of a file must have the same number of instances N (the first good line sets
    it). Blank lines are ignored.

    Parameters
    ----------
    path : path-like
        The file.
    skip_bad_lines : bool
        Skip bad lines and count them (``skipped_lines``) instead of failing.

    Raises
    ------
    ValueError
        ``"<file>, line <k>: <field>: <reason>"`` for the first bad line (without
        ``skip_bad_lines``), or when the file holds no valid decision.
    OSError
        The file cannot be read.
    """
    p = Path(path)
    name = str(path)
    P_rows: list[Any] = []
    B_rows: list[Any] = []
    U_rows: list[Any] = []
    times: list[float] = []
    ids: list[tuple[str, ...] | None] = []
    lines: list[int] = []
    skipped = 0
    reasons: list[str] = []
    n_inst: int | None = None
    n_line = 0
    all_unc = True
    rs_rows: list[dict[str, Any]] = []
    with contextlib.nullcontext(_decoded_lines(p, name)) as f:
        for k, raw in enumerate(f, start=1):
            n_line = k
            if not raw.strip():
                continue
            try:
                try:
                    obj = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"line: not valid JSON ({exc.msg})") from None
                except RecursionError:
                    raise ValueError("line: not valid JSON (nested too deeply)") from None
                rs: dict[str, Any] = {}
                if type(obj) is dict and not _ROUTER_KEYS.isdisjoint(obj):
                    obj = dict(obj)
                    rs = {k: obj.pop(k) for k in ROUTER_STATE_FIELDS if k in obj}
                fast = _fast_row(obj, n_inst)
                if fast is not None:
                    rs_rows.append(_router_state(rs, n_inst))  # type: ignore[arg-type]
                    P_rows.append(fast[0])
                    B_rows.append(fast[1])
                    all_unc = False
                    times.append(fast[2])
                    ids.append(fast[3])
                    lines.append(k)
                    continue
                snap = Snapshot.from_dict(obj)
                if n_inst is None:
                    n_inst = snap.n_instances
                elif snap.n_instances != n_inst:
                    raise ValueError(
                        f"prefill_tokens: {snap.n_instances} instances, but earlier decisions "
                        f"have {n_inst} (every decision of a file must have the same N)"
                    )
                rs = _router_state(rs, snap.n_instances)
            except ValueError as exc:
                msg = f"{name}, line {k}: {exc}"
                if not skip_bad_lines:
                    raise ValueError(msg) from None
                skipped += 1
                if len(reasons) < 10:
                    reasons.append(msg)
                continue
            rs_rows.append(rs)
            P_rows.append(snap.prefill_tokens)
            B_rows.append(snap.batch_size)
            if snap.uncached_tokens is None:
                all_unc = False
            else:
                U_rows.append(snap.uncached_tokens)
            times.append(math.nan if snap.time_s is None else snap.time_s)
            ids.append(snap.instance_ids)
            lines.append(k)
    if not P_rows:
        extra = f" ({skipped} bad lines skipped)" if skipped else ""
        raise ValueError(f"{name}: no decisions in the file ({n_line} lines){extra}")
    return SnapshotBatch(
        prefill_tokens=_stack(P_rows),
        batch_size=_stack(B_rows),
        time_s=np.asarray(times, dtype=np.float64),
        instance_ids=ids,
        uncached_tokens=_stack(U_rows) if all_unc else None,
        source=name,
        lines=lines,
        skipped_lines=skipped,
        skipped_reasons=tuple(reasons),
        router_state=_stack_router_state(rs_rows),
    )


_ROUTER_KEYS = frozenset(ROUTER_STATE_FIELDS)


def _router_state(rs: dict[str, Any], n: int) -> dict[str, Any]:
    """The line's router-state fields, validated (``ValueError`` naming the field)."""
    out: dict[str, Any] = {}
    for k, v in rs.items():
        if k in ("replica", "chosen"):
            if type(v) is not int or v < 0 or (k == "chosen" and v >= n):
                want = "an integer >= 0" if k == "replica" else f"an instance index 0..{n - 1}"
                raise ValueError(f"{k}: expected {want}, got {v!r}")
            out[k] = v
        elif k in _ROUTER_ARRAYS:
            if (type(v) is not list or len(v) != n
                    or not all(type(x) in (int, float) and math.isfinite(x) and x >= 0
                               for x in v)):
                raise ValueError(f"{k}: expected an array of {n} finite numbers >= 0, got "
                                 f"{json.dumps(v)[:60]}")
            out[k] = v
        else:
            if type(v) not in (int, float) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{k}: expected a finite number of tokens >= 0, got {v!r}")
            out[k] = float(v)
    return out


def _stack_router_state(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Each router-state field that every kept line has, stacked."""
    if not rows:
        return {}
    out: dict[str, np.ndarray] = {}
    for k in ROUTER_STATE_FIELDS:
        if all(k in r for r in rows):
            vals = [r[k] for r in rows]
            out[k] = (_stack(vals) if k in _ROUTER_ARRAYS
                      else np.asarray(vals, dtype=np.int64 if k in ("replica", "chosen")
                                      else np.float64))
    return out


def _decoded_lines(p: Path, name: str) -> list[str]:
    """The lines of a UTF-8 text file; ``ValueError`` naming the file and line for a
    binary file (NUL byte) or invalid UTF-8."""
    try:
        text = read_text(p, "JSON Lines")
    except TextFileError as exc:
        raise ValueError(f"{name}, line {exc.line}: {exc.reason}") from None
    lines = text.split("\n")
    return lines[:-1] if lines and not lines[-1] else lines


_FAST_KEYS = frozenset(("prefill_tokens", "batch_size", "time_s", "instance_ids"))
_INT_LIMIT = 2**31


def _fast_row(obj: Any, n: int | None) -> tuple[list, list, float, tuple | None] | None:
    """The common line (integer P and B of the file's N, optional time and ids) checked in
    plain Python; ``None`` sends the line through :meth:`Snapshot.from_dict` (which
    validates everything else and words the errors)."""
    if n is None or type(obj) is not dict or not _FAST_KEYS.issuperset(obj):
        return None
    P = obj.get("prefill_tokens")
    B = obj.get("batch_size")
    if type(P) is not list or type(B) is not list or len(P) != n or len(B) != n:
        return None
    for row in (P, B):
        for x in row:
            if type(x) is not int:
                return None
        if min(row) < 0 or max(row) >= _INT_LIMIT:
            return None
    t = obj.get("time_s")
    if t is None:
        t = math.nan
    elif type(t) not in (int, float) or not math.isfinite(t):
        return None
    ids = obj.get("instance_ids")
    if ids is not None:
        if type(ids) is not list or len(ids) != n:
            return None
        ids = tuple(str(x) for x in ids)
    return P, B, float(t), ids


def _stack(rows: list[Any]) -> np.ndarray:
    if all(type(r) is list or r.dtype.kind == "i" for r in rows):
        return np.array(rows, dtype=np.int64)
    return np.array([np.asarray(r, dtype=np.float64) for r in rows])
