"""Session traces as arrays: turn chains, delta-convention prompts, row selection.

Everything here works on numpy arrays in CSR form (no Python list per turn), so a trace
of tens of thousands of turns is materialised in milliseconds.

The delta convention
--------------------
A session's context is append-only: the full prompt of turn ``k`` is the full prompt of
turn ``k-1``, then turn ``k-1``'s output, then turn ``k``'s new segment. So every block
*position* of a session has fixed content for the whole session, and gets one id:

- positions covered by turn 0's full blocks keep the trace's ids (they are shared across
  sessions: system prompt, group prefixes);
- turn 0's last, partial block keeps its trace id ``X`` when ``X`` occurs in no other
  session of the trace; otherwise (another session holds ``X`` with a different
  continuation) it gets a fresh id from turn 1 on, so turn 1 recomputes from that block;
- every later position gets a fresh id unique to the session and position, above the
  trace's largest id.

Turn ``k``'s prompt is the session's ids for positions ``[0, ceil(T_k / bs))`` (turn 0: the
trace's own ids) with ``T_k = T_{k-1} + out_{k-1} + seg_k``; its output list is positions
``[ceil(T_k / bs), ceil((T_k + out_k) / bs))``, empty where no later turn can reuse the
output: a session's last turn, and turn 0 of a session whose partial block was replaced
(its output blocks follow the trace id ``X``, the later turns' the fresh id, so sharing
their ids would give one id two prefix chains). The trace's own ids of later segments only
give their lengths.

Every id thus names one prefix chain: wherever it occurs (a prompt or an output list), it
sits at the same position after the same ids, as the engines' prefix caches assume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmetric_theory.workload.base import Sessions

__all__ = [
    "DeltaPrompts",
    "chain_links",
    "materialise_delta",
    "ranges",
    "segment_cumsum",
    "subset_sessions",
    "take_csr",
]


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(starts[i], starts[i] + lengths[i])`` over ``i`` (int64)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offs = np.zeros(lengths.shape[0], dtype=np.int64)
    np.cumsum(lengths[:-1], out=offs[1:])
    return np.repeat(np.asarray(starts, dtype=np.int64) - offs, lengths) + np.arange(
        total, dtype=np.int64
    )


def take_csr(
    flat: np.ndarray, offsets: np.ndarray, idx: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``idx`` (in that order) of a CSR array: ``(flat, offsets)`` of the result."""
    idx = np.asarray(idx, dtype=np.int64)
    lens = offsets[idx + 1] - offsets[idx]
    new_off = np.zeros(idx.shape[0] + 1, dtype=np.int64)
    np.cumsum(lens, out=new_off[1:])
    return flat[ranges(offsets[idx], lens)], new_off


def segment_cumsum(values: np.ndarray, is_start: np.ndarray) -> np.ndarray:
    """Inclusive running sum of ``values`` restarting at every ``is_start`` (same dtype)."""
    c = np.cumsum(values)
    if c.shape[0] == 0:
        return c
    start_idx = np.flatnonzero(is_start)
    base = (c[start_idx] - values[start_idx])
    seg = np.cumsum(is_start.astype(np.int64)) - 1
    return c - base[seg]


def chain_links(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Turn chains of rows grouped by a dense session code, in row order.

    Parameters
    ----------
    codes : np.ndarray, shape (n,), int64
        Session code of each row, ``0 .. S-1`` in order of first appearance.

    Returns
    -------
    prev : np.ndarray, shape (n,), int64
        Previous row of the same session, -1 for a session's first row.
    turn : np.ndarray, shape (n,), int64
        0-based position of the row in its session.
    group : np.ndarray, shape (n,), int64
        The rows sorted by (session, row): the grouped order used by the callers.
    """
    n = codes.shape[0]
    group = np.argsort(codes, kind="stable").astype(np.int64)
    c = codes[group]
    start = np.ones(n, dtype=bool)
    start[1:] = c[1:] != c[:-1]
    prev = np.full(n, -1, dtype=np.int64)
    later = np.flatnonzero(~start)
    prev[group[later]] = group[later - 1]
    turn = np.empty(n, dtype=np.int64)
    turn[group] = segment_cumsum(np.ones(n, dtype=np.int64), start) - 1
    return prev, turn, group


@dataclass(frozen=True, slots=True)
class DeltaPrompts:
    """Full prompts of a delta-convention trace, rows in the input order.

    Attributes
    ----------
    input_tokens : np.ndarray, shape (n,), int64
        Full prompt of each turn, ``T_k``, tokens.
    hash_ids, hash_offsets : np.ndarray
        Prompt block ids, CSR, ``ceil(T_k / bs)`` per row.
    output_hash_ids, output_hash_offsets : np.ndarray
        Output block ids, CSR (empty for each session's last turn, and for turn 0 of a
        session whose partial block was replaced).
    fresh_ids : int
        How many fresh ids were made (``first_fresh_id .. first_fresh_id + fresh_ids - 1``).
    shared_tails : int
        Sessions of more than one turn whose turn-0 partial block id occurs in another
        session and so was replaced from turn 1 on.
    """

    input_tokens: np.ndarray
    hash_ids: np.ndarray
    hash_offsets: np.ndarray
    output_hash_ids: np.ndarray
    output_hash_offsets: np.ndarray
    fresh_ids: int
    shared_tails: int


def materialise_delta(
    codes: np.ndarray,
    seg_tokens: np.ndarray,
    out_tokens: np.ndarray,
    flat: np.ndarray,
    lens: np.ndarray,
    block_size: int,
    first_fresh_id: int,
) -> DeltaPrompts:
    """Full prompts and output block ids of a delta-convention session trace.

    Parameters
    ----------
    codes : np.ndarray, shape (n,), int64
        Dense session code of each row (``0 .. S-1`` by first appearance); rows of a
        session are its turns in row order.
    seg_tokens : np.ndarray, shape (n,), int64
        Tokens each row adds (turn 0: its whole prompt), tokens.
    out_tokens : np.ndarray, shape (n,), int64
        Output tokens of each row.
    flat, lens : np.ndarray
        The trace's block ids (CSR by row lengths), ``ceil(seg / bs)`` per row.
    block_size : int
        Tokens per block.
    first_fresh_id : int
        The first fresh id (above every id of the trace).

    Returns
    -------
    DeltaPrompts
        See the module docstring for the rule.
    """
    bs = int(block_size)
    n = codes.shape[0]
    n_sess = int(codes.max()) + 1 if n else 0
    off = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lens, out=off[1:])
    prev, turn, group = chain_links(codes)
    # full prompt T_k = T_{k-1} + out_{k-1} + seg_k, a running sum within each session
    c = codes[group]
    start = np.ones(n, dtype=bool)
    start[1:] = c[1:] != c[:-1]
    out_prev = np.zeros(n, dtype=np.int64)
    out_prev[1:] = out_tokens[group[:-1]]
    out_prev[start] = 0
    total = np.empty(n, dtype=np.int64)
    total[group] = segment_cumsum(seg_tokens[group] + out_prev, start)
    last = np.ones(n, dtype=bool)
    last[:-1] = c[1:] != c[:-1]
    is_last = np.empty(n, dtype=bool)
    is_last[group] = last

    first_rows = group[start]  # session s's first row, s = 0 .. S-1
    last_rows = group[last]
    l0 = lens[first_rows]
    partial = (seg_tokens[first_rows] % bs) != 0
    tail = flat[off[first_rows] + l0 - 1]
    # ids held by more than one session
    entry_sess = np.repeat(codes, lens)
    pairs = np.unique(np.stack([flat, entry_sess]), axis=1)
    ids, counts = np.unique(pairs[0], return_counts=True)
    shared_ids = ids[counts > 1]
    multi = turn[last_rows] > 0
    replace = partial & np.isin(tail, shared_ids) & multi
    keep = np.where(replace, l0 - 1, l0)  # positions that keep turn 0's trace ids
    ends = np.where(multi, -(-total[last_rows] // bs), l0)  # positions the session uses
    ends = np.maximum(ends, keep)
    fresh = ends - keep
    ctx_off = np.zeros(n_sess + 1, dtype=np.int64)
    np.cumsum(ends, out=ctx_off[1:])
    fresh_off = np.zeros(n_sess + 1, dtype=np.int64)
    np.cumsum(fresh, out=fresh_off[1:])
    pos = np.arange(int(ctx_off[-1]), dtype=np.int64) - np.repeat(ctx_off[:-1], ends)
    keep_r = np.repeat(keep, ends)
    from_trace = pos < keep_r
    ctx = np.empty(int(ctx_off[-1]), dtype=np.int64)
    src = np.repeat(off[first_rows], ends) + pos
    ctx[from_trace] = flat[src[from_trace]]
    ctx[~from_trace] = first_fresh_id + (pos - keep_r + np.repeat(fresh_off[:-1], ends))[
        ~from_trace
    ]

    # prompts: turn 0 from the trace, later turns from the session context
    pool = np.concatenate([flat, ctx])
    blocks = -(-total // bs)
    is_first = turn == 0
    p_start = np.where(is_first, off[:-1], flat.shape[0] + ctx_off[codes])
    p_len = np.where(is_first, lens, blocks)
    p_off = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(p_len, out=p_off[1:])
    # No output list where no later turn can reuse it: a session's last turn, and turn 0
    # of a replaced session (later turns hold a fresh id at its partial block's position).
    no_reuse = is_last | (is_first & replace[codes])
    o_len = np.where(no_reuse, 0, -(-(total + out_tokens) // bs) - blocks)
    o_start = ctx_off[codes] + blocks
    o_off = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(o_len, out=o_off[1:])
    return DeltaPrompts(
        input_tokens=total,
        hash_ids=pool[ranges(p_start, p_len)],
        hash_offsets=p_off,
        output_hash_ids=ctx[ranges(o_start, o_len)],
        output_hash_offsets=o_off,
        fresh_ids=int(fresh.sum()),
        shared_tails=int(replace.sum()),
    )


def _roots(prev: np.ndarray) -> np.ndarray:
    """Index of the first request of each request's chain (pointer jumping)."""
    idx = np.arange(prev.shape[0], dtype=np.int64)
    root = np.where(prev < 0, idx, prev)
    while True:
        nxt = root[root]
        if np.array_equal(nxt, root):
            return root
        root = nxt


def subset_sessions(sessions: Sessions, idx: np.ndarray, arrival_s: np.ndarray) -> Sessions:
    """The session structure of rows ``idx`` of a workload, re-indexed.

    Parameters
    ----------
    sessions : Sessions
        The structure of the source workload.
    idx : np.ndarray, shape (m,), int64
        Source rows in their new order (a permutation or a selection); a kept row's kept
        ``prev`` must come before it.
    arrival_s : np.ndarray, shape (m,), float64
        Arrival of each new row, seconds (a session's new ``start_s`` is the arrival of
        its first request).

    Returns
    -------
    Sessions
        ``prev`` re-indexed; a row whose ``prev`` was not kept becomes the first request
        of a session of its own (``prev`` -1, delay 0). Sessions are numbered by (source
        session, position of their first request), so the admission order is kept;
        ``turn`` counts from the new first request.
    """
    idx = np.asarray(idx, dtype=np.int64)
    m = idx.shape[0]
    inv = np.full(len(sessions), -1, dtype=np.int64)
    inv[idx] = np.arange(m, dtype=np.int64)
    old_prev = sessions.prev[idx]
    prev = np.where(old_prev >= 0, inv[np.maximum(old_prev, 0)], -1)
    if np.any(prev >= np.arange(m)):
        raise ValueError("a kept request would come before the request it waits for")
    delay = np.where(prev >= 0, sessions.delay_s[idx], 0.0)
    root = _roots(prev)
    roots = np.flatnonzero(prev < 0)
    order = np.lexsort((roots, sessions.session[idx][roots]))
    first = roots[order]
    code = np.empty(m, dtype=np.int64)
    code[first] = np.arange(first.shape[0], dtype=np.int64)
    old_turn = sessions.turn[idx]
    return Sessions(
        session=code[root],
        turn=old_turn - old_turn[root],
        prev=prev,
        delay_s=delay.astype(np.float64),
        first=first.astype(np.int64),
        start_s=np.asarray(arrival_s, dtype=np.float64)[first],
        closed_loop=sessions.closed_loop,
    )
