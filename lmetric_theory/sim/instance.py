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
from collections import Counter, deque
from typing import Any

from lmetric_theory.sim.events import PlanKind
from lmetric_theory.sim.kvcache import BlockPool, KVCache, _Group

__all__ = ["DECODE", "Instance", "PagedInstance", "PagedRequests", "PREFILL", "Requests", "WAITING"]


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
        c = type(self).__new__(type(self))
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
        "plan_chunks", "version", "pf_total", "dec_total", "iterations", "preemptions",
        "rt_queued", "rt_inflight", "rt_all", "rt_new",
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
        self.preemptions = 0  # never: KV is reserved at admission
        # Router-side counters (kept by the router: dispatch adds, engine events correct).
        self.rt_queued = 0
        self.rt_inflight = 0
        self.rt_all = 0
        self.rt_new = 0  # predicted new tokens of in-flight requests (released at finish)

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

    def kv_used_fraction(self) -> float:
        """Share of the KV capacity held by running requests (cached-but-free excluded)."""
        return self.kv.in_use_tokens() / self.kv.cap

    def sync(self, t: float) -> None:
        """Nothing to bring up to date (signals change only at plan boundaries)."""

    def holders(self) -> list[int]:
        """Requests holding KV (prefilling or decoding)."""
        return list(self.prefilling) + [r for _, r in self.fin]

    def check(self) -> None:
        """Assert the KV bookkeeping (see :meth:`KVCache.check`)."""
        holders = self.holders()
        req = self.req
        self.kv.check([req.refs[r] for r in holders], sum(req.priv[r] for r in holders))
        assert self.n_dec == len(self.fin), self.idx
        assert self.rt_new >= 0, self.idx

    # ------------------------------------------------------------------ arrivals

    def enqueue(self, rid: int, est: int) -> None:
        """A routed request joins the waiting queue with its queued-token estimate."""
        self.req.est[rid] = est
        self.queued += est
        self.waiting.append(rid)
        self.rt_queued += est
        self.rt_inflight += 1
        self.rt_all += self.req.inp[rid]
        self.rt_new += est

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
        q = self.rt_queued + rem - req.est[rid]
        self.rt_queued = q if q > 0 else 0
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
        self.rt_all += self.n_dec
        for rid, c in self.plan_chunks:
            self.pf_total += c
            rem[rid] -= c
            ctx[rid] += c
            self.queued -= c
            q = self.rt_queued - c
            self.rt_queued = q if q > 0 else 0
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
                self.rt_all += 1
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
        self.rt_all += m * self.n_dec
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
        self.rt_inflight -= 1
        self.rt_all -= req.inp[rid] + req.out[rid]
        self.rt_new -= req.est[rid]
        req.refs[rid] = None
        req.new[rid] = None
        req.done[rid] = t


#: Request states in the paged (vLLM v1) engine.
WAITING, PREFILL, DECODE, DONE = 0, 1, 2, 3


class PagedRequests(Requests):
    """:class:`Requests` plus the per-request state of the paged (vLLM v1) engine.

    Token counts follow vLLM: ``ntok`` = prompt + outputs so far, ``comp`` = tokens whose
    KV is computed (for a decoding request ``dbase + S`` of its instance's decode clock).
    """

    STATE = Requests.STATE + ("ntok", "comp", "dbase", "fkey", "state", "nblk", "ext", "ncached",
                              "held", "pre", "qest", "privc", "pending")

    def __init__(self, *args: Any, nhash: list[int], ratio: int, block: int) -> None:
        super().__init__(*args)
        n = len(self.arrival)
        self.ratio = ratio  # engine blocks per trace block
        self.block = block  # engine block size, tokens
        self.nhash = nhash  # trace hashes per request (the last one may name a partial block)
        # Engine blocks inside hashed trace blocks (keyed by the trace hash, position within).
        self.tfull = [min(i // block, k * ratio) for i, k in zip(self.inp, nhash, strict=True)]
        self.ntok = list(self.inp)
        self.comp = [0] * n
        self.dbase = [0] * n  # decoding: comp - S
        self.fkey = [-1] * n  # decoding: decode clock at which the request finishes
        self.state = [WAITING] * n
        self.nblk = [0] * n  # blocks held (not decoding)
        self.ext = [0] * n  # blocks held as cached chain positions
        self.ncached = [0] * n  # blocks examined for caching (vLLM num_cached_block)
        # What each request holds, in block order: a chain key (registered in the pool), or
        # (key, pos, count): cached blocks of a chain nobody else will look up, kept out of
        # the pool's index until the request is preempted (then registered) or finishes
        # (then freed as one anonymous run): the same blocks, much less bookkeeping.
        self.held: list[list[Any]] = [[] for _ in range(n)]
        self.privc = [0] * n  # blocks held in such private segments
        # Unfinished requests whose hash list holds each key (occurrences).
        self.pending: dict[int, int] = dict(Counter(self.hashes))
        self.pre = [0] * n  # preemptions
        self.qest = [0] * n  # engine's queued-token estimate while waiting

    def clone(self) -> PagedRequests:
        c = super().clone()
        c.held = [list(h) for h in self.held]
        return c  # type: ignore[return-value]


class PagedInstance:
    """One instance scheduled like vLLM v1 (synchronous scheduling, no speculative decoding).

    Each iteration: the running requests in admission order get their tokens (one for a
    decoding request, ``min(remaining, budget)`` for a prefill chunk); blocks are allocated
    as tokens are scheduled, and when the pool cannot supply them the most recently
    admitted running request is preempted (its blocks freed, its computed tokens reset, put
    back at the head of the waiting queue) until it can. Then, if nothing was preempted,
    waiting requests are admitted first come first served while the token budget and
    ``max_num_seqs`` allow and their whole sequence fits in the free blocks (the prefix hit
    counted, vLLM's ``scheduler_reserve_full_isl``). Full blocks enter the prefix cache when
    they are scheduled. A request whose computed tokens reach its length samples a token.

    Decoding requests advance with the instance's decode clock ``S`` (one tick per
    iteration in which they are scheduled), so decode-only stretches are planned in closed
    form: up to the next completion, and no further than the free blocks last (a block per
    request every ``block`` tokens, counted through a histogram of block phases).
    """

    __slots__ = (
        "idx", "req", "pool", "c", "budget", "max_batch", "ff", "bs", "ratio", "running", "waiting",
        "S", "n_dec", "sum_base", "H", "fin", "queued", "plan", "plan_start", "plan_end", "plan_m",
        "plan_sched", "plan_K0", "plan_S0", "plan_n", "alloc_upto", "rep_upto", "sync_t", "version",
        "pf_total", "dec_total", "iterations", "preemptions", "rt_queued", "rt_inflight", "rt_all",
        "rt_new",
    )

    def __init__(self, idx: int, req: PagedRequests, pool: BlockPool, coef: tuple[float, ...],
                 budget: int, max_batch: int, fast_forward: bool) -> None:
        self.idx = idx
        self.req = req
        self.pool = pool
        self.c = coef
        self.budget = budget
        self.max_batch = max_batch
        self.ff = fast_forward
        self.bs = req.block
        self.ratio = req.ratio
        self.running: list[int] = []  # admission order
        self.waiting: deque[int] = deque()
        self.S = 0  # decode clock
        self.n_dec = 0
        self.sum_base = 0  # sum of dbase over decoding requests
        self.H = [0] * self.bs  # decoding requests per block phase (-dbase mod block)
        self.fin: list[tuple[int, int]] = []  # heap of (finish clock, rid), lazily invalidated
        self.queued = 0  # engine's queued prefill tokens (prefilling remainders + waiting estimates)
        self.plan = PlanKind.IDLE
        self.plan_start = 0.0
        self.plan_end = 0.0
        self.plan_m = 0
        self.plan_sched: list[tuple[int, int, int]] = []  # (rid, tokens, computed before); -1 tokens: decode
        self.plan_K0 = 0
        self.plan_S0 = 0
        self.plan_n = 0
        self.alloc_upto = 0  # decode clock through which decode blocks are allocated
        self.rep_upto = 0  # decode clock through which output tokens are reported to the router
        self.sync_t = 0.0  # start of the next iteration of a decode stretch after the last sync
        self.version = 0
        self.pf_total = 0
        self.dec_total = 0
        self.iterations = 0
        self.preemptions = 0
        # Router-side counters (kept by the router: dispatch adds, engine events correct).
        self.rt_queued = 0
        self.rt_inflight = 0
        self.rt_all = 0
        self.rt_new = 0  # predicted new tokens of in-flight requests (released at finish)

    def clone(self, req: PagedRequests) -> PagedInstance:
        """Independent copy bound to ``req``."""
        c = PagedInstance.__new__(PagedInstance)
        for name in PagedInstance.__slots__:
            v = getattr(self, name)
            if isinstance(v, list | deque):
                v = v.copy()
            setattr(c, name, v)
        c.req = req
        c.pool = self.pool.clone()
        return c

    # ------------------------------------------------------------------ signals

    @property
    def kv(self) -> BlockPool:
        """The block pool (the router's precise cache view)."""
        return self.pool

    def kv_used_fraction(self) -> float:
        """Share of the pool's blocks held by requests."""
        return self.pool.used() / self.pool.blocks

    def kv_used_tokens(self) -> int:
        """Blocks held by requests, in tokens."""
        return self.pool.used() * self.bs

    def comp_of(self, rid: int) -> int:
        """Computed tokens of ``rid``."""
        req = self.req
        return req.dbase[rid] + self.S if req.state[rid] == DECODE else req.comp[rid]

    def check(self) -> None:
        """Assert the block bookkeeping and the request states."""
        req = self.req
        bs = self.bs
        held: dict[int, dict[int, int]] = {}
        hashless = 0
        step = {}
        if self.plan is PlanKind.MIXED:
            step = {r: (1 if n < 0 else n) for r, n, _ in self.plan_sched}
        else:
            assert self.alloc_upto == self.S or self.plan is PlanKind.DECODE
        n_dec = 0
        for r in self.running:
            assert req.state[r] in (PREFILL, DECODE), (self.idx, r)
            ext = 0
            privc = 0
            for key in req.held[r]:
                if type(key) is tuple:
                    assert key[0] not in self.pool.groups, (r, key)
                    privc += key[2]
                    continue
                e = self.pool.groups[key].refs[r]
                held.setdefault(key, {})[r] = e
                ext += e
            assert ext == req.ext[r], (r, ext, req.ext[r])
            assert privc == req.privc[r], (r, privc, req.privc[r])
            if req.state[r] == DECODE:
                n_dec += 1
                upto = self.alloc_upto if self.plan is PlanKind.DECODE else self.S
                nblk = -(-(req.dbase[r] + upto + step.get(r, 0)) // bs)
            else:
                comp = req.comp[r]
                assert comp < req.ntok[r], (r, comp, req.ntok[r])
                nblk = req.nblk[r]
                assert nblk == -(-(comp + step.get(r, 0)) // bs), (r, nblk, comp)
            assert nblk >= ext + privc
            hashless += nblk - ext  # private cached blocks are outside the chains too
        for r in self.waiting:
            assert req.state[r] == WAITING and not req.held[r], r
        assert n_dec == self.n_dec
        self.pool.check(held, hashless)
        assert self.queued >= 0 and self.rt_queued >= 0 and self.rt_inflight >= 0 and self.rt_all >= 0
        assert self.rt_new >= 0

    # ------------------------------------------------------------------ arrivals

    def enqueue(self, rid: int, est: int) -> None:
        """A routed request joins the waiting queue; ``est``: predicted new tokens."""
        req = self.req
        req.est[rid] = est
        req.qest[rid] = est
        self.queued += est
        self.waiting.append(rid)
        self.rt_queued += est
        self.rt_inflight += 1
        self.rt_all += req.inp[rid]
        self.rt_new += est

    def cut(self, t: float) -> bool:
        """Shorten a decode stretch to the iterations started by ``t``; True if it changed."""
        if self.plan is not PlanKind.DECODE or self.plan_m <= 1:
            return False
        k = self.iterations_started(t)
        if k >= self.plan_m:
            return False
        self.plan_m = k
        self.plan_end = self.plan_start + self.run_time(self.plan_n, self.plan_K0, k)
        return True

    def sync(self, t: float) -> None:
        """Apply the block allocations and output tokens of a decode stretch up to ``t``."""
        if self.plan is not PlanKind.DECODE or t < self.sync_t:
            return
        started = self.iterations_started(t)
        self.sync_t = self.plan_start + self.run_time(self.plan_n, self.plan_K0, started)
        a_to = self.plan_S0 + started
        if a_to > self.alloc_upto:
            self.pool.alloc(self._need(self.alloc_upto, a_to - self.alloc_upto))
            self.alloc_upto = a_to
        c_to = a_to - 1
        if c_to > self.rep_upto:
            self.rt_all += self.plan_n * (c_to - self.rep_upto)
            self.rep_upto = c_to

    # ------------------------------------------------------------------ timing

    run_time = Instance.run_time

    def iterations_started(self, t: float) -> int:
        """Iterations of the current decode stretch that start at or before ``t`` (>= 1)."""
        return self._started(t, self.plan_start, self.plan_n, self.plan_K0, self.plan_m)

    def _started(self, t: float, start: float, n: int, K: int, m: int) -> int:
        D = t - start
        c0, _, c_dec, c_kv, _ = self.c
        a = c_kv * n / 2.0
        b = c0 + c_dec * n + c_kv * K - a
        if a > 0:
            j = int((-b + math.sqrt(b * b + 4 * a * max(D, 0.0))) / (2 * a))
        else:
            j = int(D / b) if b > 0 else m
        j = max(0, min(j, m))
        while j + 1 <= m and self.run_time(n, K, j + 1) <= D:
            j += 1
        while j > 0 and self.run_time(n, K, j) > D:
            j -= 1
        return min(j + 1, m)

    def _need(self, s: int, m: int, H: list[int] | tuple[int, ...] | None = None) -> int:
        """Blocks the decoding requests allocate in the ``m`` iterations from clock ``s``
        (``H``: a histogram of block phases other than the current one)."""
        if m <= 0:
            return 0
        bs = self.bs
        if H is None:
            H = self.H
            n = self.n_dec
        else:
            n = sum(H)
        cycles, rest = divmod(m, bs)
        total = cycles * n
        for j in range(rest):
            total += H[(s + j) % bs]
        return total

    def signals(self) -> tuple[int, int, int, float, tuple | None]:
        """Engine signals (queued, running, waiting, KV usage) and, inside a decode stretch,
        what :meth:`kv_usage_at` needs to follow its KV usage to a later time."""
        stretch = None
        if self.plan is PlanKind.DECODE:
            stretch = (self.plan_start, self.plan_n, self.plan_K0, self.plan_m, self.plan_S0,
                       self.alloc_upto, tuple(self.H), self.pool.used())
        return (self.queued, len(self.running), len(self.waiting), self.kv_used_fraction(), stretch)

    def kv_usage_at(self, stretch: tuple, t: float) -> float:
        """KV usage at ``t`` of a decode stretch recorded by :meth:`signals`."""
        start, n, K, m, S0, upto, H, used = stretch
        a_to = S0 + self._started(t, start, n, K, m)
        if a_to > upto:
            used += self._need(upto, a_to - upto, H)
        return used / self.pool.blocks

    # ------------------------------------------------------------------ decode set

    def _to_decode(self, rid: int) -> None:
        req = self.req
        comp = req.comp[rid]
        base = comp - self.S
        req.dbase[rid] = base
        req.state[rid] = DECODE
        self.H[-base % self.bs] += 1
        self.sum_base += base
        self.n_dec += 1
        f = self.S + req.out[rid] - (req.ntok[rid] - req.inp[rid])
        req.fkey[rid] = f
        heapq.heappush(self.fin, (f, rid))

    def _from_decode(self, rid: int) -> int:
        """Leave the decode set; returns computed tokens (request becomes PREFILL-like)."""
        req = self.req
        base = req.dbase[rid]
        comp = base + self.S
        self.H[-base % self.bs] -= 1
        self.sum_base -= base
        self.n_dec -= 1
        req.fkey[rid] = -1
        req.state[rid] = PREFILL
        req.comp[rid] = comp
        req.ntok[rid] = comp + 1
        req.nblk[rid] = -(-comp // self.bs)
        return comp

    # ------------------------------------------------------------------ blocks

    def _flush(self, rid: int, tokens: int) -> None:
        """Enter ``rid``'s full blocks among its first ``tokens`` tokens into the prefix cache."""
        req = self.req
        F = tokens // self.bs
        b = req.ncached[rid]
        if b >= F:
            return
        groups = self.pool.groups
        ratio = self.ratio
        tfull = req.tfull[rid]
        held = req.held[rid]
        h0 = req.hoff[rid]
        hashes = req.hashes
        ext = 0
        pending = req.pending
        priv = 0
        while b < F:
            if b < tfull:
                gi = b // ratio
                pos = b - gi * ratio
                end = (gi + 1) * ratio
                cnt = (F if F < end else end) - b
                key = hashes[h0 + gi]
            else:
                pos = b - tfull
                cnt = F - b
                key = ~rid
            b += cnt
            # BlockPool.extend, inlined (hot): cache the blocks if rid holds [0, pos) of the
            # chain and nobody cached beyond; otherwise they duplicate cached ones (hashless).
            g = groups.get(key)
            if g is None:
                if (key < 0 or pending[key] == 1) and (not pos or (held and type(held[-1]) is tuple and held[-1][0] == key
                                          and held[-1][1] + held[-1][2] == pos)):
                    held.append((key, pos, cnt))  # nobody else will look this chain up
                    priv += cnt
                    continue
                if pos:
                    continue
                groups[key] = _Group(cnt, {rid: cnt})
                held.append(key)
                ext += cnt
            elif g.k == pos and g.refs.get(rid, 0) == pos:
                g.k = pos + cnt
                g.refs[rid] = pos + cnt
                if not pos:
                    held.append(key)
                ext += cnt
        req.ext[rid] += ext
        req.privc[rid] += priv
        req.ncached[rid] = F

    def _release(self, rid: int, nblk: int) -> None:
        """Free every block of ``rid`` (tail first: its own chain, then trace blocks backwards)."""
        req = self.req
        pool = self.pool
        groups = pool.groups
        lru = pool.lru
        freed = 0
        anon = 0
        for key in reversed(req.held[rid]):  # BlockPool.drop, inlined (hot)
            if type(key) is tuple:  # private cached blocks: one anonymous run
                anon += key[2]
                continue
            if anon:
                lru.append([None, 0, anon, None])
                freed += anon
                anon = 0
            g = groups[key]
            refs = g.refs
            e = refs.pop(rid)
            f = max(refs.values()) if refs else 0
            if e > f:
                run = [key, f, e, g]
                lru.append(run)
                g.runs.append(run)
                freed += e - f
            elif not g.k and not refs:
                del groups[key]
        if anon:
            lru.append([None, 0, anon, None])
            freed += anon
        pool.lru_n += freed
        pool.hfree += nblk - req.ext[rid] - req.privc[rid]
        req.held[rid] = []
        req.ext[rid] = 0
        req.privc[rid] = 0
        req.ncached[rid] = 0
        req.nblk[rid] = 0

    def _register(self, rid: int) -> None:
        """Enter ``rid``'s private cached blocks into the pool's index (before a preemption,
        so that the request finds them when it comes back)."""
        req = self.req
        groups = self.pool.groups
        held = []
        for item in req.held[rid]:
            if type(item) is not tuple:
                held.append(item)
                continue
            key, pos, cnt = item
            g = groups.get(key)
            if g is None:
                groups[key] = _Group(cnt, {rid: cnt})
                held.append(key)
            else:  # continues the chain registered by the previous segment
                g.k = pos + cnt
                g.refs[rid] = pos + cnt
            req.ext[rid] += cnt
        req.privc[rid] = 0
        req.held[rid] = held

    def _preempt(self, rid: int) -> None:
        """Recompute preemption: free the blocks, reset computed tokens, back to the queue head."""
        req = self.req
        if req.state[rid] == DECODE:
            comp = self._from_decode(rid)
            self.queued += req.ntok[rid]
        else:
            comp = req.comp[rid]
            self.queued += comp
        self._flush(rid, comp)
        self._register(rid)
        self._release(rid, -(-comp // self.bs))
        req.comp[rid] = 0
        req.state[rid] = WAITING
        req.qest[rid] = req.ntok[rid]
        req.pre[rid] += 1
        self.preemptions += 1
        self.waiting.appendleft(rid)

    def _finish(self, rid: int, t: float, comp: int) -> None:
        req = self.req
        self._flush(rid, comp)
        self._release(rid, -(-comp // self.bs))
        pending = req.pending
        h0 = req.hoff[rid]
        for key in req.hashes[h0 : h0 + req.nhash[rid]]:
            pending[key] -= 1
        req.state[rid] = DONE
        req.done[rid] = t
        self.running.remove(rid)
        self.rt_inflight -= 1
        self.rt_all -= req.inp[rid] + req.out[rid]
        self.rt_new -= req.est[rid]

    # ------------------------------------------------------------------ planning

    def _admissible(self, rid: int, budget: int) -> bool:
        """Whether waiting head ``rid`` would be admitted with ``budget`` tokens left."""
        if budget <= 0 or len(self.running) >= self.max_batch:
            return False
        req = self.req
        bs = self.bs
        ntok = req.ntok[rid]
        h0 = req.hoff[rid]
        hb, ev = self.pool.lookup(req.hashes[h0 : h0 + req.nhash[rid]], self.ratio, (ntok - 1) // bs, ~rid)
        return -(-ntok // bs) - hb + ev <= self.pool.free()

    def plan_next(self, t: float) -> bool:
        """Plan the iteration(s) starting at ``t``; False when the instance has nothing to do."""
        self.plan_start = t
        n_dec = self.n_dec
        if (self.ff and n_dec and n_dec == len(self.running) and n_dec <= self.budget
                and not (self.waiting and self._admissible(self.waiting[0], self.budget - n_dec))):
            fin = self.fin
            req = self.req
            while fin and (req.fkey[fin[0][1]] != fin[0][0] or req.state[fin[0][1]] != DECODE):
                heapq.heappop(fin)
            m_fin = fin[0][0] - self.S
            free = self.pool.free()
            m = m_fin
            if self._need(self.S, m) > free:
                lo, hi = 0, m  # largest m with need <= free
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    if self._need(self.S, mid) <= free:
                        lo = mid
                    else:
                        hi = mid - 1
                m = lo
            if m >= 1:
                self.plan = PlanKind.DECODE
                self.plan_m = m
                self.plan_n = n_dec
                self.plan_S0 = self.S
                self.plan_K0 = self.sum_base + n_dec * (self.S + 1)
                self.alloc_upto = self.S
                self.rep_upto = self.S
                self.sync_t = t
                self.plan_end = t + self.run_time(n_dec, self.plan_K0, m)
                return True
        return self._plan_step(t)

    def _plan_step(self, t: float) -> bool:
        req = self.req
        pool = self.pool
        bs = self.bs
        budget = self.budget
        running = self.running
        sched: list[tuple[int, int, int]] = []
        state, comp_l, nblk_l, ntok_l = req.state, req.comp, req.nblk, req.ntok
        preempted = False
        i = 0
        while i < len(running) and budget > 0:
            r = running[i]
            if state[r] == DECODE:
                comp = req.dbase[r] + self.S
                n = -1
                need = 1 if comp % bs == 0 else 0
            else:
                comp = comp_l[r]
                n = ntok_l[r] - comp
                if n > budget:
                    n = budget
                need = -(-(comp + n) // bs) - nblk_l[r]
            if need > pool.hfree + pool.lru_n:
                victim = -1
                while need > pool.hfree + pool.lru_n:
                    victim = running.pop()
                    self._preempt(victim)
                    preempted = True
                    if victim == r:
                        break
                if victim == r:
                    break
            pool.alloc(need)
            if n < 0:
                budget -= 1
            else:
                nblk_l[r] += need
                self._flush(r, comp + n)
                budget -= n
            sched.append((r, n, comp))
            i += 1
        if not preempted:
            waiting = self.waiting
            ratio = self.ratio
            hashes = req.hashes
            while budget > 0 and waiting and len(running) < self.max_batch:
                r = waiting[0]
                ntok = ntok_l[r]
                h0 = req.hoff[r]
                keys = hashes[h0 : h0 + req.nhash[r]]
                hb, ev = pool.lookup(keys, ratio, (ntok - 1) // bs, ~r)
                if -(-ntok // bs) - hb + ev > pool.hfree + pool.lru_n:
                    break
                hit = hb * bs
                n = ntok - hit
                if n > budget:
                    n = budget
                # take the hit: whole trace blocks, then the rest of the last one / own chain
                held = req.held[r]
                left = hb
                for key in keys:
                    if left <= 0:
                        break
                    e = ratio if left > ratio else left
                    pool.take(key, e, r)
                    held.append(key)
                    left -= e
                if left > 0:
                    pool.take(~r, left, r)
                    held.append(~r)
                req.ext[r] = hb
                req.ncached[r] = hb
                new = -(-(hit + n) // bs) - hb
                pool.alloc(new)
                nblk_l[r] = hb + new
                comp_l[r] = hit
                self._flush(r, hit + n)
                waiting.popleft()
                running.append(r)
                state[r] = PREFILL
                self.queued += (ntok - hit) - req.qest[r]
                if req.cached[r] < 0:  # first admission: the router learns the real hit
                    req.cached[r] = hit
                    q = self.rt_queued + (ntok - hit) - req.est[r]
                    self.rt_queued = q if q > 0 else 0
                sched.append((r, n, hit))
                budget -= n
        if not sched:
            self.plan = PlanKind.IDLE
            return False
        c0, c_pf, c_dec, c_kv, c_att = self.c
        pt = 0
        nd = 0
        kv = 0
        att = 0.0
        for _, n, comp in sched:
            if n < 0:
                nd += 1
                kv += comp + 1
            else:
                pt += n
                kv += comp + n
                att += n * (comp + n / 2.0)
        self.plan = PlanKind.MIXED
        self.plan_sched = sched
        self.plan_m = 1
        self.plan_end = t + c0 + c_pf * pt + c_dec * nd + c_kv * kv + c_att * att
        return True

    def finish_plan(self) -> None:
        """Apply the plan that ends at ``plan_end`` (the instance is then idle)."""
        t = self.plan_end
        if self.plan is PlanKind.MIXED:
            self._apply_step(t)
        else:
            m = self.plan_m
            a_to = self.plan_S0 + m
            if a_to > self.alloc_upto:
                self.pool.alloc(self._need(self.alloc_upto, a_to - self.alloc_upto))
            self.alloc_upto = a_to
            self.rt_all += self.plan_n * (a_to - self.rep_upto)
            self.rep_upto = a_to
            self.dec_total += m * self.n_dec
            self.iterations += m
            self.S = a_to
            self._complete(t)
        self.plan = PlanKind.IDLE

    def _apply_step(self, t: float) -> None:
        req = self.req
        sched = self.plan_sched
        self.plan_sched = []
        S1 = self.S + 1
        n_sched_dec = 0
        for _, n, _ in sched:
            if n < 0:
                n_sched_dec += 1
        if n_sched_dec != self.n_dec:  # decoding requests left out keep their tokens
            done = {r for r, n, _ in sched if n < 0}
            for r in self.running:
                if req.state[r] == DECODE and r not in done:
                    self._from_decode(r)
                    self.S = S1
                    self._to_decode(r)
                    self.S = S1 - 1
        self.S = S1
        self.alloc_upto = S1
        self.rep_upto = S1
        self.iterations += 1
        self.dec_total += n_sched_dec
        self.rt_all += n_sched_dec
        inp, out, ntok_l, comp_l = req.inp, req.out, req.ntok, req.comp
        for r, n, comp in sched:
            if n < 0:
                continue
            c = comp + n
            comp_l[r] = c
            self.pf_total += n
            self.queued -= n
            q = self.rt_queued - n
            self.rt_queued = q if q > 0 else 0
            if c == ntok_l[r]:  # caught up: a token is sampled
                ntok_l[r] = c + 1
                g = c + 1 - inp[r]
                if g == 1 and req.first[r] != req.first[r]:
                    req.first[r] = t
                self.dec_total += 1
                self.rt_all += 1
                if g >= out[r]:
                    self._finish(r, t, c)
                else:
                    self._to_decode(r)
        self._complete(t)

    def _complete(self, t: float) -> None:
        fin = self.fin
        req = self.req
        while fin and fin[0][0] <= self.S:
            f, r = heapq.heappop(fin)
            if req.fkey[r] != f or req.state[r] != DECODE:
                continue
            comp = self._from_decode(r)
            self._finish(r, t, comp)
