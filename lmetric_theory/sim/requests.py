"""The simulator's request table: workload-derived data (shared) and per-request state.

:class:`Requests` serves the ``reserve`` scheduler; :class:`~lmetric_theory.sim.paged.
PagedRequests` extends it with the state of the ``vllm-v1`` scheduler. Both say which block
keys the router looks up (:meth:`Requests.lookup_keys`) and records as sent
(:meth:`Requests.sent_keys`) for a request, so the router view needs no scheduler kind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["RequestData", "Requests"]


@dataclass(frozen=True, slots=True)
class RequestData:
    """A workload as the request tables take it (validated by the engine).

    Attributes
    ----------
    arrival : list of float
        Arrival times, seconds.
    inp, out : list of int
        Prompt and output lengths, tokens.
    hash_ids : np.ndarray, shape (H,), int64
        Every request's block hashes, concatenated.
    offsets : np.ndarray, shape (n + 1,), int64
        Request ``i``'s hashes are ``hash_ids[offsets[i]:offsets[i + 1]]``.
    nfull : list of int
        Full (cacheable) prompt blocks per request.
    maxhit : list of int
        Most blocks a prefix hit may cover (one prompt token is always recomputed).
    block : int
        The workload's hash block size, tokens.
    ctx : list of int or None
        Context tokens (prompt + output) of each request when the workload has output block
        hashes (the hash list of a request is then its prompt's, then its output's); None
        otherwise.
    """

    arrival: list[float]
    inp: list[int]
    out: list[int]
    hash_ids: np.ndarray
    offsets: np.ndarray
    nfull: list[int]
    maxhit: list[int]
    block: int
    ctx: list[int] | None = None

    def lists(self, hash_ids: np.ndarray | None = None) -> tuple[list, ...]:
        """The positional arguments of :class:`Requests` (with other ``hash_ids`` if given)."""
        h = self.hash_ids if hash_ids is None else hash_ids
        return (self.arrival, self.inp, self.out, h.tolist(), self.offsets[:-1].tolist(),
                self.nfull, self.maxhit)


class Requests:
    """Workload-derived request data (shared, never mutated) and per-request state.

    The per-request lists are replaced item by item, never mutated in place, so a fork
    copies them shallowly (:meth:`clone`).
    """

    #: Per-request lists (copied by :meth:`clone`).
    STATE = ("where", "cached", "rem", "ctx", "est", "refs", "new", "priv", "first", "done")

    def __init__(self, arrival: list[float], inp: list[int], out: list[int], hashes: list[int],
                 hoff: list[int], nfull: list[int], maxhit: list[int]) -> None:
        n = len(arrival)
        self.arrival, self.inp, self.out = arrival, inp, out
        self.hashes, self.hoff, self.nfull, self.maxhit = hashes, hoff, nfull, maxhit
        self.where = [-1] * n  # instance routed to
        self.cached = [-1] * n  # prefix-hit tokens at admission (-1: not admitted)
        self.rem = [0] * n  # prompt tokens still to prefill
        self.ctx = [0] * n  # prompt tokens in KV (cached + prefilled)
        self.est = [0] * n  # queued-token estimate at routing
        self.refs: list[list[int] | None] = [None] * n  # pinned block hashes
        self.new: list[list[int] | None] = [None] * n  # blocks this request computes
        self.priv = [0] * n  # private KV reservation, tokens
        self.first = [math.nan] * n  # first-token time, seconds
        self.done = [math.nan] * n  # last-token time, seconds

    def __len__(self) -> int:
        return len(self.arrival)

    def full_blocks(self, rid: int) -> list[int]:
        """Hashes of request ``rid``'s full prompt blocks."""
        h0 = self.hoff[rid]
        return self.hashes[h0 : h0 + self.nfull[rid]]

    def hit_candidates(self, rid: int) -> list[int]:
        """Hashes of the blocks of ``rid`` that may be prefix hits."""
        h0 = self.hoff[rid]
        return self.hashes[h0 : h0 + self.maxhit[rid]]

    def lookup_keys(self, rid: int) -> tuple[list[int], int]:
        """Keys the router looks ``rid`` up by (in order), and the most blocks a hit may
        cover: here the full prompt blocks that may be hits."""
        h0 = self.hoff[rid]
        m = self.maxhit[rid]
        return self.hashes[h0 : h0 + m], m

    def sent_keys(self, rid: int) -> list[int]:
        """Keys the router records as sent with ``rid`` (its approximate view): the full
        prompt blocks."""
        return self.full_blocks(rid)

    def preemption_counts(self) -> np.ndarray:
        """Preemptions of each request, shape (n,), int64 (none: KV is reserved at admission)."""
        return np.zeros(len(self.arrival), dtype=np.int64)

    def clone(self) -> Requests:
        """Copy sharing the workload data and copying the per-request lists."""
        c = type(self).__new__(type(self))
        c.__dict__.update(self.__dict__)
        for k in self.STATE:
            setattr(c, k, getattr(self, k).copy())
        return c


