"""The request form every workload source produces.

A :class:`Workload` is columnar: one numpy array per field, one row per request,
sorted by arrival time. Prompt prefix identity is carried by block hashes in a
flattened (CSR) layout so the simulator can walk them without Python objects.

Closed-loop traffic (agents, chat users) adds a :class:`Sessions` structure: which request
each request waits for and how long after that one completes it arrives. Session traces in
the delta convention also carry the block hashes of each request's *output*
(``output_hash_ids``), so the next turn of the session hits them where this one ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Sessions", "Workload"]


@dataclass(frozen=True, slots=True)
class Sessions:
    """Closed-loop structure of a workload: sessions, turns and what each turn waits for.

    Attributes
    ----------
    session : np.ndarray, shape (n,), int64
        Dense session index ``0 .. S-1`` of each request, numbered in order of the
        session's first appearance in the source. This is the admission order under a
        concurrency cap (sessions are admitted in trace order, as DynoSim and AIPerf do).
    turn : np.ndarray, shape (n,), int64
        0-based turn index of the request within its session (for tree-shaped sessions,
        its depth: the number of ``prev`` links to the session's first request).
    prev : np.ndarray, shape (n,), int64
        Index of the request this one waits for (the previous turn of its session), or -1.
        Always ``prev[i] < i``.
    delay_s : np.ndarray, shape (n,), float64
        Think time, seconds >= 0: request ``i`` arrives ``delay_s[i]`` after request
        ``prev[i]`` has completed (its last token). 0 where ``prev`` is -1.
    first : np.ndarray, shape (S,), int64
        Request index of each session's first request.
    start_s : np.ndarray, shape (S,), float64
        Arrival of each session's first request, seconds on the workload's clock (the
        open-loop start; a concurrency cap ignores it and admits sessions in index order).
    closed_loop : bool
        True when later turns must be scheduled from completions (``prev`` + ``delay_s``);
        False when the workload's ``arrival_s`` is the schedule and the structure is
        informational.
    """

    session: np.ndarray
    turn: np.ndarray
    prev: np.ndarray
    delay_s: np.ndarray
    first: np.ndarray
    start_s: np.ndarray
    closed_loop: bool = True

    def __len__(self) -> int:
        return int(self.session.shape[0])

    @property
    def n_sessions(self) -> int:
        """Number of sessions ``S``."""
        return int(self.first.shape[0])

    def turns_per_session(self) -> np.ndarray:
        """Requests of each session, shape (S,), int64."""
        return np.bincount(self.session, minlength=self.n_sessions).astype(np.int64)

    def children(self) -> tuple[np.ndarray, np.ndarray]:
        """Requests waiting for each request, in CSR form.

        Returns
        -------
        offsets : np.ndarray, shape (n + 1,), int64
        index : np.ndarray, shape (number of requests with ``prev >= 0``,), int64
            The requests ``j`` with ``prev[j] == i`` are ``index[offsets[i]:offsets[i+1]]``,
            in increasing order.
        """
        n = len(self)
        has = np.flatnonzero(self.prev >= 0)
        parent = self.prev[has]
        order = np.argsort(parent, kind="stable")
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(parent, minlength=n), out=offsets[1:])
        return offsets, has[order].astype(np.int64)

    def nominal_arrivals(self) -> np.ndarray:
        """Open-loop arrivals, seconds, shape (n,): a first request at its session's
        ``start_s``, a later one at ``nominal[prev] + delay_s`` (what a server answering
        instantly would give)."""
        n = len(self)
        out = np.empty(n, dtype=np.float64)
        firsts = self.prev < 0
        out[firsts] = self.start_s[self.session[firsts]]
        # prev[i] < i: one pass in index order, vectorised by depth
        depth = self.turn
        for d in range(1, int(depth.max()) + 1 if n else 1):
            at = np.flatnonzero(depth == d)
            out[at] = out[self.prev[at]] + self.delay_s[at]
        return out

    def validate(self, n: int) -> None:
        """Check shapes, dtypes and invariants against a workload of ``n`` requests.

        Raises
        ------
        ValueError
            Naming the first violated invariant.
        """
        for name in ("session", "turn", "prev", "first"):
            a = getattr(self, name)
            if a.dtype != np.int64:
                raise ValueError(f"sessions.{name} must be int64, got {a.dtype}")
        for name in ("session", "turn", "prev", "delay_s"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"sessions.{name} must have shape ({n},), "
                                 f"got {getattr(self, name).shape}")
        s = self.n_sessions
        if self.start_s.shape != (s,):
            raise ValueError(f"sessions.start_s must have shape ({s},)")
        idx = np.arange(n, dtype=np.int64)
        if np.any(self.prev >= idx) or np.any(self.prev < -1):
            raise ValueError("sessions.prev must satisfy -1 <= prev[i] < i")
        if n and (self.session.min() < 0 or self.session.max() >= s):
            raise ValueError("sessions.session must be in [0, n_sessions)")
        if not np.all(np.isfinite(self.delay_s)) or np.any(self.delay_s < 0):
            raise ValueError("sessions.delay_s must be finite and >= 0")
        roots = self.prev < 0
        if np.any(self.delay_s[roots] != 0):
            raise ValueError("sessions.delay_s must be 0 where prev is -1")
        has = ~roots
        if np.any(self.session[has] != self.session[self.prev[has]]):
            raise ValueError("a request and its prev must belong to the same session")
        if np.any(self.turn[has] != self.turn[self.prev[has]] + 1) or np.any(self.turn[roots]):
            raise ValueError("sessions.turn must be 0 at a first request and turn[prev] + 1")
        if s and (np.any(self.first < 0) or np.any(self.first >= n)):
            raise ValueError("sessions.first must index requests")
        if s and (np.any(self.session[self.first] != np.arange(s)) or
                  np.any(self.prev[self.first] != -1)):
            raise ValueError("sessions.first[s] must be a first request of session s")
        if not np.all(np.isfinite(self.start_s)):
            raise ValueError("sessions.start_s must be finite")


@dataclass(frozen=True, slots=True)
class Workload:
    """A sequence of requests, sorted by arrival.

    Attributes
    ----------
    arrival_s : np.ndarray, shape (n,), float64
        Arrival time of each request, seconds since the workload start, non-decreasing.
        For a closed-loop later turn this is its *nominal* arrival, ``arrival_s[prev] +
        delay_s`` (what a server answering instantly would give); an engine replaying
        closed loop schedules it from the completion of ``prev`` instead.
    input_tokens : np.ndarray, shape (n,), int64
        Prompt length, tokens (for a delta-convention session turn: the full prompt).
    output_tokens : np.ndarray, shape (n,), int64
        Number of tokens to generate (>= 1), tokens.
    hash_ids : np.ndarray, shape (total_blocks,), int64
        Block hashes of all prompts, concatenated. Request ``i`` owns
        ``hash_ids[hash_offsets[i]:hash_offsets[i + 1]]``; equal hashes at the same
        position mean an equal prefix up to and including that block.
    hash_offsets : np.ndarray, shape (n + 1,), int64
        CSR offsets into ``hash_ids``.
    block_size : int
        Tokens per hash block. A prompt of ``L`` tokens has ``ceil(L / block_size)``
        blocks; the last one may be partial.
    session_ids : np.ndarray or None, shape (n,), int64
        Optional conversation/session id per request (-1 when unknown).
    meta : dict
        Provenance: source file, format, rate scale, selection, ``skipped_lines``.
    sessions : Sessions or None
        Closed-loop structure (None: an open-loop workload).
    output_hash_ids : np.ndarray or None, shape (total_out_blocks,), int64
        Block hashes of the blocks that *start* inside each request's output: for a prompt
        of ``L`` tokens and ``m`` output tokens, block positions
        ``[ceil(L / bs), ceil((L + m) / bs))`` of the request's context (prompt, then
        output). The block straddling the prompt's end keeps the prompt's last hash and is
        not repeated here. Empty for requests whose output no later request reuses; None
        when the workload has no output hashes at all.
    output_hash_offsets : np.ndarray or None, shape (n + 1,), int64
        CSR offsets into ``output_hash_ids``.
    """

    arrival_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    hash_ids: np.ndarray
    hash_offsets: np.ndarray
    block_size: int
    session_ids: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    sessions: Sessions | None = None
    output_hash_ids: np.ndarray | None = None
    output_hash_offsets: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.arrival_s.shape[0])

    def blocks(self, i: int) -> np.ndarray:
        """Block hashes of request ``i`` (view, shape (k,), int64)."""
        return self.hash_ids[self.hash_offsets[i] : self.hash_offsets[i + 1]]

    def output_blocks(self, i: int) -> np.ndarray:
        """Output block hashes of request ``i`` (view, shape (k,), int64; empty when the
        workload has none)."""
        if self.output_hash_ids is None or self.output_hash_offsets is None:
            return np.zeros(0, dtype=np.int64)
        o = self.output_hash_offsets
        return self.output_hash_ids[o[i] : o[i + 1]]

    @property
    def closed_loop(self) -> bool:
        """True when the workload's later turns are scheduled from completions."""
        return self.sessions is not None and self.sessions.closed_loop
