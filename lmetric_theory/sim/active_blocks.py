"""Dynamo's active-sequence load: unique in-flight prompt blocks and unfinished prefills.

An optional layer of :class:`~lmetric_theory.sim.scheduler.RouterCounters` (its ``blocks``
slot, ``None`` unless a policy reads ``router_active_prompt_blocks``), maintained the way
Dynamo 1.6.1's router maintains its per-worker ``ActiveSequences``
(ai-dynamo/dynamo ``lib/kv-router/src/sequences/single.rs``, reference only):

- at dispatch the request's *complete* prompt blocks are added to the worker's refcounted
  set (a block shared by several in-flight requests counts once; a partial tail block is
  not tracked; output blocks are not tracked, ``router_track_output_blocks = false``), and
  its predicted new prompt tokens join the worker's active prefill tokens;
- at its first token (``mark_prefill_completed``) the prefill tokens are released;
- at finish (``free``) the blocks are released.

Block identity: a request's prompt is a list of trace keys (prefix-chained hashes), each
covering ``ratio`` blocks of the router's block size; the ``j``-th block under a key is the
same block in every request holding that key. Complete blocks past the last key have no
identity and count as the request's own. Per worker and key, the unique blocks are the most
any in-flight request holds under it (requests sharing a key share its leading blocks).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["ActivePromptBlocks", "block_runs"]


def block_runs(keys: Sequence[int], ratio: int, nblocks: int) -> tuple[list[tuple[int, int]], int]:
    """A prompt's complete blocks as ``(key, blocks under it)`` runs plus keyless blocks.

    Parameters
    ----------
    keys : sequence of int
        The prompt's trace keys in order.
    ratio : int
        Router blocks per trace key (>= 1).
    nblocks : int
        Complete prompt blocks, ``input_tokens // block_size``.

    Returns
    -------
    (list of (int, int), int)
        Runs ``(key, n)`` with ``1 <= n <= ratio`` and the blocks past the last key.
    """
    runs: list[tuple[int, int]] = []
    left = nblocks
    for k in keys:
        if left <= 0:
            break
        n = ratio if left >= ratio else left
        runs.append((int(k), n))
        left -= n
    return runs, max(left, 0)


class ActivePromptBlocks:
    """Per-worker unique active prompt blocks and active prefill tokens (see the module).

    Parameters
    ----------
    n : int
        Number of workers.

    Attributes
    ----------
    unique : list of int
        Unique active complete prompt blocks per worker, blocks.
    """

    __slots__ = ("unique", "held", "req", "prefill")

    def __init__(self, n: int) -> None:
        self.unique = [0] * n
        # per worker: key -> {blocks held under the key: in-flight requests holding that many}
        self.held: list[dict[int, dict[int, int]]] = [{} for _ in range(n)]
        # request -> (worker, runs, keyless blocks)
        self.req: dict[int, tuple[int, list[tuple[int, int]], int]] = {}
        # per worker: request -> prefill tokens not yet released (no first token yet)
        self.prefill: list[dict[int, int]] = [{} for _ in range(n)]

    def add(self, i: int, rid: int, keys: Sequence[int], ratio: int, nblocks: int,
            new_tokens: int) -> None:
        """Request ``rid`` (``nblocks`` complete blocks under ``keys``, ``new_tokens``
        predicted new prompt tokens) is dispatched to worker ``i``."""
        runs, own = block_runs(keys, ratio, nblocks)
        held = self.held[i]
        gain = own
        for k, n in runs:
            d = held.get(k)
            if d is None:
                held[k] = {n: 1}
                gain += n
                continue
            m = max(d)
            d[n] = d.get(n, 0) + 1
            if n > m:
                gain += n - m
        self.unique[i] += gain
        self.req[rid] = (i, runs, own)
        if new_tokens > 0:
            self.prefill[i][rid] = new_tokens

    def first_token(self, rid: int) -> None:
        """``rid`` produced its first token: its prefill tokens are released."""
        entry = self.req.get(rid)
        if entry is not None:
            self.prefill[entry[0]].pop(rid, None)

    def remove(self, rid: int) -> None:
        """``rid`` finished: its blocks (and any unreleased prefill tokens) are released."""
        entry = self.req.pop(rid, None)
        if entry is None:
            return
        i, runs, own = entry
        self.prefill[i].pop(rid, None)
        held = self.held[i]
        loss = own
        for k, n in runs:
            d = held[k]
            m = max(d)
            c = d[n] - 1
            if c:
                d[n] = c
            else:
                del d[n]
            if not d:
                del held[k]
                loss += m
            elif n == m and c == 0:
                loss += m - max(d)
        self.unique[i] -= loss

    def release_started(self, first: Sequence[float], t: float) -> None:
        """Release the prefill tokens of every request whose first token is at or before
        ``t`` (``first``: first-token times by request, NaN before it)."""
        for pf in self.prefill:
            done = [r for r in pf if first[r] <= t]
            for r in done:
                del pf[r]

    def prefill_tokens(self) -> list[int]:
        """Active prefill tokens per worker (released at first token), tokens."""
        return [sum(pf.values()) for pf in self.prefill]

    def new_blocks(self, keys: Sequence[int], ratio: int, nblocks: int) -> list[int]:
        """Per worker, the request's complete blocks not already active there (Dynamo's
        ``additional_active_blocks``), blocks."""
        runs, own = block_runs(keys, ratio, nblocks)
        out = []
        for held in self.held:
            extra = own
            for k, n in runs:
                d = held.get(k)
                if d is None:
                    extra += n
                else:
                    m = max(d)
                    if n > m:
                        extra += n - m
            out.append(extra)
        return out

    def check(self) -> None:
        """Assert ``unique`` equals a recount from the held sets (``AssertionError``)."""
        for i, held in enumerate(self.held):
            own = sum(o for (w, _, o) in self.req.values() if w == i)
            total = own + sum(max(d) for d in held.values())
            assert total == self.unique[i], (i, total, self.unique[i])

    def clone(self) -> ActivePromptBlocks:
        """Independent copy."""
        c = ActivePromptBlocks.__new__(ActivePromptBlocks)
        c.unique = self.unique.copy()
        c.held = [{k: dict(d) for k, d in h.items()} for h in self.held]
        c.req = dict(self.req)
        c.prefill = [dict(p) for p in self.prefill]
        return c

    def __getstate__(self) -> tuple:
        return (self.unique, self.held, self.req, self.prefill)

    def __setstate__(self, state: tuple) -> None:
        self.unique, self.held, self.req, self.prefill = state

