"""Per-request state and the iteration planning of one serving instance.

An instance runs continuous batching with chunked prefill: each iteration decodes one
token for every decoding request and spends the rest of the token budget on prefill
chunks, admitted requests first, then waiting ones (first come, first served) while the
batch-size limit and the KV capacity allow. Decode-only stretches are planned in closed
form up to the next completion (see :meth:`Instance.run_time`).
"""

from __future__ import annotations

import heapq
import math
from collections import deque

from lmetric_theory.sim.events import PlanKind
from lmetric_theory.sim.kvcache import KVCache

__all__ = ["Instance", "Requests"]


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

    def clone(self) -> Requests:
        """Copy sharing the workload data and copying the per-request lists."""
        c = Requests.__new__(Requests)
        c.__dict__.update(self.__dict__)
        for k in self.STATE:
            setattr(c, k, getattr(self, k).copy())
        return c


class Instance:
    """Mutable state and scheduling of one serving instance.

    Parameters
    ----------
    idx : int
        Instance index.
    req : Requests
        The simulator's request table (shared by all instances).
    kv : KVCache
        This instance's KV cache.
    coef : tuple of float
        Latency coefficients ``(c0, c_pf, c_dec, c_kv, c_att)``.
    budget, max_batch : int
        Token budget per iteration (tokens) and the running-request limit.
    fast_forward : bool
        Plan decode-only stretches up to the next completion (else one iteration each).
    """

    __slots__ = (
        "idx", "req", "kv", "c", "budget", "max_batch", "ff", "waiting", "prefilling", "n_dec",
        "ctx_sum", "fin", "steps", "queued", "plan", "plan_start", "plan_end", "plan_m",
        "plan_chunks", "version", "pf_total", "dec_total", "iterations",
    )

    def __init__(self, idx: int, req: Requests, kv: KVCache, coef: tuple[float, ...], budget: int,
                 max_batch: int, fast_forward: bool) -> None:
        self.idx = idx
        self.req = req
        self.kv = kv
        self.c = coef
        self.budget = budget
        self.max_batch = max_batch
        self.ff = fast_forward
        self.waiting: deque[int] = deque()
        self.prefilling: list[int] = []
        self.n_dec = 0
        self.ctx_sum = 0  # sum of decoding contexts, tokens
        self.fin: list[tuple[int, int]] = []  # heap of (finish step, rid)
        self.steps = 0  # decode iterations executed
        self.queued = 0  # prefill tokens not yet computed (admitted remaining + waiting estimates)
        self.plan = PlanKind.IDLE
        self.plan_start = 0.0
        self.plan_end = 0.0
        self.plan_m = 0
        self.plan_chunks: list[tuple[int, int]] = []
        self.version = 0
        self.pf_total = 0  # prefill tokens computed, tokens
        self.dec_total = 0  # tokens produced (first tokens + decode iterations), tokens
        self.iterations = 0  # iterations executed

    def clone(self, req: Requests) -> Instance:
        """Independent copy bound to ``req`` (the fork's request table)."""
        c = Instance.__new__(Instance)
        for name in Instance.__slots__:
            v = getattr(self, name)
            if isinstance(v, list | deque):
                v = v.copy()
            setattr(c, name, v)
        c.req = req
        c.kv = self.kv.clone()
        return c

    # ------------------------------------------------------------------ signals

    @property
    def running(self) -> int:
        """Admitted requests (prefilling or decoding)."""
        return len(self.prefilling) + self.n_dec

    def holders(self) -> list[int]:
        """Requests holding KV (prefilling or decoding)."""
        return list(self.prefilling) + [r for _, r in self.fin]

    def check(self) -> None:
        """Assert the KV bookkeeping (see :meth:`KVCache.check`)."""
        holders = self.holders()
        req = self.req
        self.kv.check([req.refs[r] for r in holders], sum(req.priv[r] for r in holders))
        assert self.n_dec == len(self.fin), self.idx

    # ------------------------------------------------------------------ arrivals

    def enqueue(self, rid: int, est: int) -> None:
        """A routed request joins the waiting queue with its queued-token estimate."""
        self.req.est[rid] = est
        self.queued += est
        self.waiting.append(rid)

    def cut(self, t: float) -> bool:
        """Shorten a decode stretch to the iterations started by ``t``; True if it changed."""
        if self.plan is not PlanKind.DECODE or self.plan_m <= 1:
            return False
        k = self.iterations_started(t)
        if k >= self.plan_m:
            return False
        self.plan_m = k
        self.plan_end = self.plan_start + self.run_time(self.n_dec, self.ctx_sum, k)
        return True

    # ------------------------------------------------------------------ timing

    def run_time(self, n: int, ctx: int, m: int) -> float:
        """Time of ``m`` decode-only iterations of ``n`` sequences of total context ``ctx``, s.

        Iteration ``j`` (0-based) takes ``c0 + c_dec n + c_kv (ctx + j n)``.
        """
        c0, _, c_dec, c_kv, _ = self.c
        return m * (c0 + c_dec * n + c_kv * ctx) + c_kv * n * (m * (m - 1) // 2)

    def iterations_started(self, t: float) -> int:
        """Iterations of the current decode stretch that start at or before ``t`` (>= 1)."""
        D = t - self.plan_start
        c0, _, c_dec, c_kv, _ = self.c
        n, K = self.n_dec, self.ctx_sum
        a = c_kv * n / 2.0
        b = c0 + c_dec * n + c_kv * K - a
        # Largest j with T(j) <= D, T(j) = a j^2 + b j.
        if a > 0:
            j = int((-b + math.sqrt(b * b + 4 * a * max(D, 0.0))) / (2 * a))
        else:
            j = int(D / b) if b > 0 else self.plan_m
        j = max(0, min(j, self.plan_m))
        while j + 1 <= self.plan_m and self.run_time(n, K, j + 1) <= D:
            j += 1
        while j > 0 and self.run_time(n, K, j) > D:
            j -= 1
        return min(j + 1, self.plan_m)

    # ------------------------------------------------------------------ planning

    def _admit(self, rid: int) -> bool:
        """Admit ``rid`` (waiting head) if its KV need fits."""
        req = self.req
        inp = req.inp[rid]
        adm = self.kv.admit(req.full_blocks(rid), req.maxhit[rid], inp, req.out[rid])
        if adm is None:
            return False
        hit, refs, new, priv = adm
        bs = self.kv.bs
        req.refs[rid] = refs
        req.new[rid] = new
        req.priv[rid] = priv
        req.cached[rid] = hit * bs
        req.ctx[rid] = hit * bs
        rem = inp - hit * bs
        req.rem[rid] = rem
        self.queued += rem - req.est[rid]
        return True

    def plan_next(self, t: float) -> bool:
        """Plan the iteration starting at ``t``; False when the instance has nothing to do."""
        n_dec = self.n_dec
        budget = self.budget - n_dec
        chunks: list[tuple[int, int]] = []
        rem = self.req.rem
        for rid in self.prefilling:
            if budget <= 0:
                break
            c = rem[rid] if rem[rid] < budget else budget
            chunks.append((rid, c))
            budget -= c
        waiting = self.waiting
        max_batch = self.max_batch
        while budget > 0 and waiting and len(self.prefilling) + n_dec < max_batch:
            rid = waiting[0]
            if not self._admit(rid):
                break
            waiting.popleft()
            self.prefilling.append(rid)
            c = rem[rid] if rem[rid] < budget else budget
            chunks.append((rid, c))
            budget -= c
        self.plan_start = t
        if chunks:
            c0, c_pf, c_dec, c_kv, c_att = self.c
            pt = 0
            kv = self.ctx_sum
            att = 0.0
            ctx = self.req.ctx
            for rid, c in chunks:
                pt += c
                kv += ctx[rid] + c
                att += c * (ctx[rid] + c / 2.0)
            self.plan = PlanKind.MIXED
            self.plan_chunks = chunks
            self.plan_m = 1
            self.plan_end = t + c0 + c_pf * pt + c_dec * n_dec + c_kv * kv + c_att * att
            return True
        if n_dec:
            m = self.fin[0][0] - self.steps if self.ff else 1
            self.plan = PlanKind.DECODE
            self.plan_m = m
            self.plan_end = t + self.run_time(n_dec, self.ctx_sum, m)
            return True
        self.plan = PlanKind.IDLE
        return False

    def finish_plan(self) -> None:
        """Apply the plan that ends at ``plan_end`` (the instance is then idle)."""
        if self.plan is PlanKind.MIXED:
            self._apply_mixed(self.plan_end)
        else:
            self._apply_run(self.plan_end)
        self.plan = PlanKind.IDLE

    def _apply_mixed(self, t: float) -> None:
        req = self.req
        rem, ctx = req.rem, req.ctx
        done_prefill = []
        self.dec_total += self.n_dec
        for rid, c in self.plan_chunks:
            self.pf_total += c
            rem[rid] -= c
            ctx[rid] += c
            self.queued -= c
            if rem[rid] == 0:
                done_prefill.append(rid)
        self.plan_chunks = []
        self.iterations += 1
        self.steps += 1
        self.ctx_sum += self.n_dec
        self._complete(t)
        if done_prefill:
            gone = set(done_prefill)
            self.prefilling = [r for r in self.prefilling if r not in gone]
            ready = self.kv.ready
            for rid in done_prefill:
                ready.update(req.new[rid])
                req.first[rid] = t
                self.dec_total += 1
                out = req.out[rid]
                if out == 1:
                    self._release(rid, t)
                else:
                    self.n_dec += 1
                    self.ctx_sum += req.inp[rid] + 1
                    heapq.heappush(self.fin, (self.steps + out - 1, rid))

    def _apply_run(self, t: float) -> None:
        m = self.plan_m
        self.iterations += m
        self.dec_total += m * self.n_dec
        self.steps += m
        self.ctx_sum += m * self.n_dec
        self._complete(t)

    def _complete(self, t: float) -> None:
        fin = self.fin
        req = self.req
        while fin and fin[0][0] <= self.steps:
            _, rid = heapq.heappop(fin)
            self.n_dec -= 1
            self.ctx_sum -= req.inp[rid] + req.out[rid]
            self._release(rid, t)

    def _release(self, rid: int, t: float) -> None:
        req = self.req
        self.kv.release(req.refs[rid], req.priv[rid])
        req.refs[rid] = None
        req.new[rid] = None
        req.done[rid] = t
