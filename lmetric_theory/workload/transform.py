"""Replay at a different rate and select part of a workload.

Both functions return a new :class:`Workload` sharing the (read-only) arrays where they can,
with ``meta`` copied and extended: ``meta["transforms"]`` lists every operation applied, in
order, and ``meta["rate_scale"]`` is the cumulative arrival-rate factor.

Session workloads keep their :class:`~lmetric_theory.workload.base.Sessions` and output
block CSR consistent: rows are re-indexed (``prev``, ``first``), and a request whose
``prev`` is not selected becomes the first request of a session of its own (see
:func:`select`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lmetric_theory.core.limits import TIME_MAX_S
from lmetric_theory.workload.base import Workload
from lmetric_theory.workload.loaders import make_workload
from lmetric_theory.workload.sessions import subset_sessions, take_csr

__all__ = ["open_loop_at", "scale_rate", "select"]


def _meta_with(w: Workload, step: dict[str, Any], **updates: Any) -> dict[str, Any]:
    meta = dict(w.meta)
    meta["transforms"] = [*meta.get("transforms", []), step]
    meta.update(updates)
    return meta


def scale_rate(workload: Workload, k: float) -> Workload:
    """Replay ``k`` times as fast: ``arrival_s / k`` (same requests, same order).

    A closed-loop session workload scales only its session start times
    (``sessions.start_s / k``); think times stay, nominal arrivals are recomputed and the
    rows re-sorted by them (stable). An engine replaying at a concurrency cap ignores the
    start times, so there the factor has no effect. A session structure that is not closed
    loop (its ``arrival_s`` is the schedule) is scaled whole, delays included.

    Parameters
    ----------
    workload : Workload
    k : float
        Arrival-rate factor, finite and > 0 (2.0 doubles requests per second), small enough
        that the last arrival stays within the timestamp limit (``1e10`` s, see
        :mod:`lmetric_theory.core.limits`).

    Returns
    -------
    Workload
        ``meta["rate_scale"]`` is multiplied by ``k``; ``{"op": "scale_rate", "k": k}`` is
        appended to ``meta["transforms"]``.
    """
    if isinstance(k, bool) or not isinstance(k, int | float) or not math.isfinite(k) or k <= 0:
        raise ValueError(f"rate factor k must be a finite number > 0, got {k!r}")
    k = float(k)
    w = workload
    last = float(w.arrival_s[-1]) if len(w) else 0.0
    stretched = last / k  # inf when it overflows
    if not stretched <= TIME_MAX_S:
        raise ValueError(
            f"rate factor k={k:g} would move the last arrival from {last:g} s to "
            f"{stretched:g} s, beyond the {TIME_MAX_S:g} s limit on timestamps"
        )
    meta = _meta_with(
        w, {"op": "scale_rate", "k": k}, rate_scale=float(w.meta.get("rate_scale", 1.0)) * k
    )
    ses = w.sessions
    if ses is not None and ses.closed_loop:
        from lmetric_theory.workload.base import Sessions

        moved = Sessions(ses.session, ses.turn, ses.prev, ses.delay_s, ses.first,
                         ses.start_s / k, True)
        nominal = moved.nominal_arrivals()
        order = np.argsort(nominal, kind="stable").astype(np.int64)
        return _take(w, order, nominal[order], moved, meta)
    if ses is not None:
        from lmetric_theory.workload.base import Sessions

        ses = Sessions(ses.session, ses.turn, ses.prev, ses.delay_s / k, ses.first,
                       ses.start_s / k, False)
    return make_workload(
        arrival_s=w.arrival_s / k,
        input_tokens=w.input_tokens,
        output_tokens=w.output_tokens,
        hash_ids=w.hash_ids,
        hash_offsets=w.hash_offsets,
        block_size=w.block_size,
        session_ids=w.session_ids,
        meta=meta,
        sessions=ses,
        output_hash_ids=w.output_hash_ids,
        output_hash_offsets=w.output_hash_offsets,
    )


def open_loop_at(workload: Workload, arrival_s: np.ndarray) -> Workload:
    """The same requests replayed open loop, each at a given arrival time.

    Every request arrives at ``arrival_s[i]`` whatever the cluster does: a turn no longer
    waits for its previous turn. Prompts, outputs and output blocks stay as they are, so a
    later turn still finds its session's context where an earlier turn left it. Replaying a
    closed-loop run's own arrivals (``SimResult.arrival_s``) this way gives the same offered
    load without its feedback: a turn that is served late no longer delays the turns after
    it.

    Parameters
    ----------
    workload : Workload
    arrival_s : np.ndarray, shape (n,), float64
        Arrival time of each request (workload row order), seconds, finite and >= 0.

    Returns
    -------
    Workload
        Rows re-sorted by ``arrival_s`` (stable); sessions kept, re-indexed, with
        ``closed_loop`` False; ``{"op": "open_loop_at"}`` appended to ``meta["transforms"]``.
    """
    t = np.asarray(arrival_s, dtype=np.float64)
    if t.shape != (len(workload),):
        raise ValueError(f"arrival_s: expected {len(workload)} arrival times (one per "
                         f"request), got {t.size}")
    bad = np.flatnonzero(~np.isfinite(t) | (t < 0) | (t > TIME_MAX_S))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"arrival_s: request {i}: expected a finite time in [0, "
                         f"{TIME_MAX_S:g}] s, got {t[i]!r}")
    order = np.argsort(t, kind="stable").astype(np.int64)
    ses = workload.sessions
    if ses is not None:
        from lmetric_theory.workload.base import Sessions

        ses = Sessions(ses.session, ses.turn, ses.prev, ses.delay_s, ses.first, ses.start_s,
                       False)
        prev = ses.prev[order]
        pos = np.empty_like(order)
        pos[order] = np.arange(order.size)
        if np.any((prev >= 0) & (pos[np.maximum(prev, 0)] >= np.arange(order.size))):
            raise ValueError("arrival_s: a turn arrives before the turn it follows")
    meta = _meta_with(workload, {"op": "open_loop_at"})
    return _take(workload, order, t[order], ses, meta)


def _take(w: Workload, idx: np.ndarray, arrival_s: np.ndarray, sessions, meta) -> Workload:
    """Rows ``idx`` of ``w`` in that order, at ``arrival_s``, sessions re-indexed."""
    flat, off = take_csr(w.hash_ids, w.hash_offsets, idx)
    o_flat = o_off = None
    if w.output_hash_ids is not None and w.output_hash_offsets is not None:
        o_flat, o_off = take_csr(w.output_hash_ids, w.output_hash_offsets, idx)
    ses = None if sessions is None else subset_sessions(sessions, idx, arrival_s)
    return make_workload(
        arrival_s=arrival_s,
        input_tokens=w.input_tokens[idx],
        output_tokens=w.output_tokens[idx],
        hash_ids=flat,
        hash_offsets=off,
        block_size=w.block_size,
        session_ids=None if w.session_ids is None else w.session_ids[idx],
        meta=meta,
        sessions=ses,
        output_hash_ids=o_flat,
        output_hash_offsets=o_off,
    )


def select(
    workload: Workload,
    *,
    count: int | None = None,
    start_s: float | None = None,
    end_s: float | None = None,
    rebase: bool = True,
    skip: int = 0,
) -> Workload:
    """Keep the requests arriving in ``[start_s, end_s)``, then at most the first ``count``
    after the first ``skip`` of them.

    Parameters
    ----------
    workload : Workload
    count : int, optional
        Keep at most this many requests (>= 1), the earliest ones of the window.
    start_s, end_s : float, optional
        Time window in seconds on the workload's clock; ``start_s`` inclusive, ``end_s``
        exclusive; either may be omitted.
    skip : int
        Leave out this many requests at the start of the window first (default 0): windows
        by request index when arrivals tie, as closed-loop session traces' do.
    rebase : bool
        If True (default), shift times so that the window start (``start_s``, or 0 when
        omitted) becomes 0 s; idle time between the window start and its first request is
        kept. If False, the original times are kept.

    Sessions: a selection keeps rows, not whole sessions. Selecting from the start
    (``count`` alone) keeps every kept request's ``prev`` (``prev[i] < i``), so sessions
    are only cut short. A window starting later can cut a session's earlier turns off: a
    kept request whose ``prev`` is not kept becomes the first request of a session of its
    own, starting at its (nominal) arrival, with its prompt as it was (its context is
    not shortened). Sessions are renumbered densely in their original order.

    Returns
    -------
    Workload
        ``{"op": "select", "count", "start_s", "end_s", "rebase", "first", "n"}`` is appended
        to ``meta["transforms"]`` (``first`` is the index of the first kept request in the
        input workload, ``n`` how many were kept).

    Raises
    ------
    ValueError
        On invalid arguments or when nothing is selected.
    """
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ValueError(f"count must be an integer >= 1, got {count!r}")
    for name, v in (("start_s", start_s), ("end_s", end_s)):
        if v is not None and (
            isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)
        ):
            raise ValueError(f"{name} must be a finite number of seconds, got {v!r}")
    if start_s is not None and end_s is not None and end_s <= start_s:
        raise ValueError(f"empty window: end_s={end_s} <= start_s={start_s}")
    if isinstance(skip, bool) or not isinstance(skip, int) or skip < 0:
        raise ValueError(f"skip must be an integer >= 0, got {skip!r}")
    w = workload
    t = w.arrival_s
    lo = (0 if start_s is None else int(np.searchsorted(t, start_s, side="left"))) + skip
    hi = len(w) if end_s is None else int(np.searchsorted(t, end_s, side="left"))
    if count is not None:
        hi = min(hi, lo + count)
    if hi <= lo:
        raise ValueError(
            f"selection is empty (count={count}, start_s={start_s}, end_s={end_s}; "
            f"the workload spans {float(t[0]) if len(w) else 0.0:.3f}-"
            f"{float(t[-1]) if len(w) else 0.0:.3f} s)"
        )
    shift = (0.0 if start_s is None else float(start_s)) if rebase else 0.0
    off = w.hash_offsets
    step = {
        "op": "select",
        "count": count,
        "start_s": start_s,
        "end_s": end_s,
        "rebase": rebase,
        **({"skip": skip} if skip else {}),
        "first": lo,
        "n": hi - lo,
    }
    if w.sessions is not None or w.output_hash_ids is not None:
        idx = np.arange(lo, hi, dtype=np.int64)
        return _take(w, idx, t[lo:hi] - shift, w.sessions, _meta_with(w, step))
    return make_workload(
        arrival_s=t[lo:hi] - shift,
        input_tokens=w.input_tokens[lo:hi],
        output_tokens=w.output_tokens[lo:hi],
        hash_ids=w.hash_ids[off[lo] : off[hi]],
        hash_offsets=off[lo : hi + 1] - off[lo],
        block_size=w.block_size,
        session_ids=None if w.session_ids is None else w.session_ids[lo:hi],
        meta=_meta_with(w, step),
    )
