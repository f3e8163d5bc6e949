"""The ``vllm-v1`` scheduler: one instance scheduled like vLLM v1's scheduler.

Synchronous scheduling, no speculative decoding; paged KV in a
:class:`~lmetric_theory.sim.kvcache.BlockPool` with vLLM's prefix cache and eviction order,
chunked prefill, preemption by recompute. docs/simulator.md states the model and how it
was read against vLLM's sources; :mod:`lmetric_theory.sim.vllm_engine` runs vLLM's own
scheduler to keep it honest.
"""

from __future__ import annotations

import heapq
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from lmetric_theory.sim.events import PlanKind
from lmetric_theory.sim.kvcache import BlockPool
from lmetric_theory.sim.latency import LatencyModel
from lmetric_theory.sim.requests import RequestData, Requests
from lmetric_theory.sim.scheduler import RouterCounters, Signals

__all__ = ["DECODE", "DONE", "PREFILL", "PagedRequests", "PagedScheduler", "WAITING"]

#: The plan kinds as module constants: reading an enum member off its class costs about
#: ten times a global look-up in Python 3.11, and the event loop tests them once per event.
_DECODE = PlanKind.DECODE
_IDLE = PlanKind.IDLE
_MIXED = PlanKind.MIXED


#: Request states in the paged (vLLM v1) engine.
WAITING, PREFILL, DECODE, DONE = 0, 1, 2, 3


class PagedRequests(Requests):
    """:class:`Requests` plus the per-request state of the paged (vLLM v1) engine.

    Token counts follow vLLM: ``ntok`` = prompt + outputs so far, ``comp`` = tokens whose
    KV is computed (for a decoding request ``dbase + S`` of its instance's decode clock).
    """

    STATE = Requests.STATE + ("ntok", "comp", "dbase", "fkey", "state", "nblk", "ext", "ncached",
                              "held", "pre", "qest", "privc", "pending", "tok")

    def __init__(self, *args: Any, nhash: list[int], ratio: int, block: int,
                 ctx: list[int] | None = None) -> None:
        super().__init__(*args)
        n = len(self.arrival)
        self.ratio = ratio  # engine blocks per trace block
        self.block = block  # engine block size, tokens
        self.nhash = nhash  # trace hashes per request (the last one may name a partial block)
        # Engine blocks inside hashed trace blocks (keyed by the trace hash, position within).
        # With output hashes (``ctx``: prompt + output tokens), the blocks of generated tokens
        # join the chains of the context's trace hashes too.
        self.tfull = [min(i // block, k * ratio)
                      for i, k in zip(self.inp if ctx is None else ctx, nhash, strict=True)]
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
        self.tok = [float("nan")] * n  # time of the last output token, seconds

    def lookup_keys(self, rid: int) -> tuple[list[int], int]:
        """Keys the router looks ``rid`` up by: its trace hashes (the last one may name a
        partial block), and the most engine blocks a hit may cover (one token short)."""
        h0 = self.hoff[rid]
        return self.hashes[h0 : h0 + self.nhash[rid]], (self.inp[rid] - 1) // self.block

    def sent_keys(self, rid: int) -> list[int]:
        """Keys the router records as sent with ``rid``: its trace hashes."""
        h0 = self.hoff[rid]
        return self.hashes[h0 : h0 + self.nhash[rid]]

    def preemption_counts(self) -> np.ndarray:
        """Preemptions of each request, shape (n,), int64."""
        return np.asarray(self.pre, dtype=np.int64)

    def clone(self) -> PagedRequests:
        c = super().clone()
        c.held = [list(h) for h in self.held]
        return c  # type: ignore[return-value]


class PagedScheduler:
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

    Satisfies :class:`~lmetric_theory.sim.scheduler.Scheduler`. Parameters as
    :class:`~lmetric_theory.sim.reserve.ReserveScheduler`, with ``pool`` (the instance's
    :class:`~lmetric_theory.sim.kvcache.BlockPool`) for its KV cache.
    """

    #: An idle instance starts after every arrival of the same instant (a burst is one batch).
    batches_arrivals: ClassVar[bool] = True

    __slots__ = (
        "idx", "req", "pool", "cache", "lat", "budget", "max_batch", "ff", "bs", "ratio", "running", "waiting",
        "S", "n_dec", "sum_base", "H", "fin", "queued", "plan", "plan_start", "plan_end", "plan_m",
        "plan_sched", "plan_nd", "plan_K0", "plan_S0", "plan_n", "alloc_upto", "rep_upto", "sync_t", "version",
        "pf_total", "dec_total", "iterations", "preemptions", "rt", "fin_log", "itl_g", "itl_c",
        "itl_runs", "bint", "busy",
    )

    def __init__(self, idx: int, req: PagedRequests, pool: BlockPool, latency: LatencyModel,
                 budget: int, max_batch: int, fast_forward: bool, counters: RouterCounters) -> None:
        self.idx = idx
        self.req = req
        self.pool = pool
        self.cache = pool  # the router's precise view looks hits up in the pool
        self.lat = latency
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
        self.plan = _IDLE
        self.plan_start = 0.0
        self.plan_end = 0.0
        self.plan_m = 0
        self.plan_sched: list[tuple[int, int, int]] = []  # (rid, tokens, computed before); -1 tokens: decode
        self.plan_nd = 0  # decoding requests in plan_sched
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
        self.rt = counters
        self.fin_log: list[int] | None = None  # finished requests (the engine drains it)
        self.itl_g: list[float] = []  # inter-token gaps, seconds ...
        self.itl_c: list[int] = []  # ... and how many tokens had each
        self.itl_runs: list[tuple[float, int, int, int, int]] = []  # decode stretches (ITL)
        self.bint = 0.0  # integral of the iteration batch size, request-seconds
        self.busy = 0.0  # time in iterations, seconds

    # ------------------------------------------------------------------ building

    @staticmethod
    def kv_room(config: Any, workload_block: int, capacity: int) -> int:
        """KV room of an empty instance, tokens: whole engine blocks, one of them kept aside
        (vLLM's null block). Raises ``ValueError`` for an engine block size that does not
        divide the workload's hash block, or a capacity without one usable block."""
        ebs = int(config.block_size)
        if workload_block % ebs:
            raise ValueError(
                f"block_size {ebs} does not divide the workload's hash block size {workload_block}: "
                "choose an engine block size that does (vLLM's default is 16)")
        n_blocks = capacity // ebs - 1  # vLLM keeps one block aside (its null block)
        if n_blocks < 1:
            raise ValueError(f"KV capacity of {capacity} tokens holds no {ebs}-token block")
        return n_blocks * ebs

    @staticmethod
    def kv_need(inp: np.ndarray, out: np.ndarray, config: Any) -> np.ndarray:
        """KV a request needs on an empty instance: every token but the last (the last
        sampled token is never computed) in whole engine blocks, tokens."""
        ebs = int(config.block_size)
        return -(-(inp + out - 1) // ebs) * ebs

    @classmethod
    def cluster(cls, data: RequestData, config: Any, capacity: int,
                counters: RouterCounters) -> tuple[PagedRequests, list[PagedScheduler], int, int]:
        """The request table and the instances of a cluster (see
        :meth:`ReserveScheduler.cluster <lmetric_theory.sim.reserve.ReserveScheduler.cluster>`;
        the view's block is the engine block, ``ratio`` engine blocks per workload block)."""
        ebs = int(config.block_size)
        bs = data.block
        hash_ids = data.hash_ids
        if hash_ids.size and hash_ids.min() < 0:  # keep ~request free for own chains
            hash_ids = hash_ids - hash_ids.min()
        offs = data.offsets
        req = PagedRequests(*data.lists(hash_ids), nhash=(offs[1:] - offs[:-1]).tolist(),
                            ratio=bs // ebs, block=ebs, ctx=data.ctx)
        n_blocks = capacity // ebs - 1
        inst = [cls(i, req, BlockPool(n_blocks, bs // ebs), config.latency, int(config.token_budget),
                    int(config.max_batch), bool(config.fast_forward), counters)
                for i in range(config.n_instances)]
        return req, inst, ebs, bs // ebs

    def clone(self, req: PagedRequests, counters: RouterCounters) -> PagedScheduler:
        """Independent copy bound to ``req`` and ``counters`` (a fork's)."""
        c = PagedScheduler.__new__(PagedScheduler)
        for name in PagedScheduler.__slots__:
            v = getattr(self, name)
            if isinstance(v, list | deque):
                v = v.copy()
            setattr(c, name, v)
        c.req = req
        c.rt = counters
        c.pool = c.cache = self.pool.clone()
        return c

    # ------------------------------------------------------------------ signals

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
        if self.plan is _MIXED:
            step = {r: (1 if n < 0 else n) for r, n, _ in self.plan_sched}
        else:
            assert self.alloc_upto == self.S or self.plan is _DECODE
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
                if type(key) is range:
                    assert all(req.hashes[j] not in self.pool.groups for j in key), (r, key)
                    privc += len(key) * self.ratio
                    continue
                e = self.pool.groups[key].refs[r]
                held.setdefault(key, {})[r] = e
                ext += e
            assert ext == req.ext[r], (r, ext, req.ext[r])
            assert privc == req.privc[r], (r, privc, req.privc[r])
            if req.state[r] == DECODE:
                n_dec += 1
                upto = self.alloc_upto if self.plan is _DECODE else self.S
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
        rt, i = self.rt, self.idx
        assert self.queued >= 0 and rt.queued[i] >= 0 and rt.inflight[i] >= 0 and rt.all_tokens[i] >= 0
        assert rt.inflight_new[i] >= 0

    # ------------------------------------------------------------------ arrivals

    def enqueue(self, rid: int, est: int) -> None:
        """A routed request joins the waiting queue; ``est``: predicted new tokens."""
        req = self.req
        req.est[rid] = est
        req.qest[rid] = est
        self.queued += est
        self.waiting.append(rid)

    def dispatch_estimate(self, rid: int, seen_uncached: int) -> int:
        """Predicted new tokens of ``rid``: the uncached tokens the router's view showed."""
        return seen_uncached

    def cut(self, t: float) -> bool:
        """Shorten a decode stretch to the iterations started by ``t``; True if it changed."""
        if self.plan is not _DECODE or self.plan_m <= 1:
            return False
        k = self.iterations_started(t)
        if k >= self.plan_m:
            return False
        self.plan_m = k
        self.plan_end = self.plan_start + self.lat.decode_run(self.plan_n, self.plan_K0, k)
        return True

    def sync(self, t: float) -> None:
        """Apply the block allocations and output tokens of a decode stretch up to ``t``."""
        if self.plan is not _DECODE or t < self.sync_t:
            return
        started = self.iterations_started(t)
        self.sync_t = self.plan_start + self.lat.decode_run(self.plan_n, self.plan_K0, started)
        a_to = self.plan_S0 + started
        if a_to > self.alloc_upto:
            self.pool.alloc(self._need(self.alloc_upto, a_to - self.alloc_upto))
            self.alloc_upto = a_to
        c_to = a_to - 1
        if c_to > self.rep_upto:
            self.rt.emit(self.idx, self.plan_n * (c_to - self.rep_upto))
            self.rep_upto = c_to

    def alloc_events(self, t: float, stamp: Callable[[float], None]) -> None:
        """Allocate a decode stretch's blocks up to ``t`` as they happened, for a KV event stream.

        A decode stretch allocates its blocks lazily, when it is next read (:meth:`sync`,
        :meth:`finish_plan`); a lagged KV event stream needs each eviction at the start of
        the iteration that caused it. Where the allocation up to ``t`` would evict cached
        blocks, the iterations' blocks are allocated one iteration at a time and ``stamp(s)``
        runs after each that allocates (``s``: the iteration's start, seconds); otherwise
        nothing happens here. Allocating in pieces leaves the pool as one allocation would
        (hashless blocks first, then the same LRU order), so results are unchanged.
        """
        if self.plan is not PlanKind.DECODE or t < self.sync_t:
            return
        s0 = self.plan_S0
        a_to = s0 + self.iterations_started(t)
        upto = self.alloc_upto
        if a_to <= upto or self._need(upto, a_to - upto) <= self.pool.hfree:
            return  # no eviction: nothing to report
        run = self.lat.decode_run
        n, k0, start = self.plan_n, self.plan_K0, self.plan_start
        alloc = self.pool.alloc
        need_of = self._need
        while upto < a_to:
            need = need_of(upto, 1)  # iteration upto - s0 (0-based) allocates clock ``upto``
            upto += 1
            self.alloc_upto = upto
            if need:
                alloc(need)
                stamp(start + run(n, k0, upto - 1 - s0))

    # ------------------------------------------------------------------ timing

    def iterations_started(self, t: float) -> int:
        """Iterations of the current decode stretch that start at or before ``t`` (>= 1)."""
        return self.lat.decode_steps_started(t - self.plan_start, self.plan_n, self.plan_K0,
                                             self.plan_m)

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
        if rest:  # phases s .. s + rest - 1 (mod bs): one or two slices summed in C
            a = s % bs
            b = a + rest
            total += sum(H[a:b]) if b <= bs else sum(H[a:]) + sum(H[:b - bs])
        return total

    def load(self) -> tuple[int, int, int, float]:
        """Queued prefill tokens, running and waiting requests, KV usage fraction."""
        pool = self.pool
        return (self.queued, len(self.running), len(self.waiting),
                (pool.blocks - pool.hfree - pool.lru_n) / pool.blocks)

    def peak_kv_tokens(self) -> int:
        """Highest number of blocks held by requests, in tokens."""
        return self.pool.peak_used * self.bs

    def signals(self) -> Signals:
        """Engine signals (queued, running, waiting, KV usage) and, inside a decode stretch,
        what :meth:`kv_usage_at` needs to follow its KV usage to a later time."""
        stretch = None
        if self.plan is _DECODE:
            stretch = (self.plan_start, self.plan_n, self.plan_K0, self.plan_m, self.plan_S0,
                       self.alloc_upto, tuple(self.H), self.pool.used())
        return (self.queued, len(self.running), len(self.waiting), self.kv_used_fraction(), stretch)

    def kv_usage_at(self, stretch: tuple, t: float) -> float:
        """KV usage at ``t`` of a decode stretch recorded by :meth:`signals`."""
        start, n, K, m, S0, upto, H, used = stretch
        a_to = S0 + self.lat.decode_steps_started(t - start, n, K, m)
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
        ext, priv = self.pool.cache_blocks(rid, req.held[rid], b, F, req.tfull[rid], self.ratio,
                                           req.hashes, req.hoff[rid], req.pending)
        req.ext[rid] += ext
        req.privc[rid] += priv
        req.ncached[rid] = F

    def _release(self, rid: int, nblk: int) -> None:
        """Free every block of ``rid`` (``nblk`` blocks held, tail first)."""
        req = self.req
        self.pool.release_blocks(rid, req.held[rid], nblk - req.ext[rid] - req.privc[rid])
        req.held[rid] = []
        req.ext[rid] = 0
        req.privc[rid] = 0
        req.ncached[rid] = 0
        req.nblk[rid] = 0

    def _register(self, rid: int) -> None:
        """Enter ``rid``'s private cached blocks into the pool's index (before a preemption,
        so that the request finds them when it comes back)."""
        req = self.req
        held, ext = self.pool.register_blocks(rid, req.held[rid], req.hashes)
        req.ext[rid] += ext
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
        if self.fin_log is not None:
            self.fin_log.append(rid)
        self.running.remove(rid)
        self.rt.finish(self.idx, req.inp[rid] + req.out[rid], req.est[rid], rid)

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
                self.plan = _DECODE
                self.plan_m = m
                self.plan_n = n_dec
                self.plan_S0 = self.S
                self.plan_K0 = self.sum_base + n_dec * (self.S + 1)
                self.alloc_upto = self.S
                self.rep_upto = self.S
                self.sync_t = t
                self.plan_end = t + self.lat.decode_run(n_dec, self.plan_K0, m)
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
        dbase, S = req.dbase, self.S  # the decode clock does not move while a step is planned
        preempted = False
        # the step's prefill tokens, decode sequences, KV tokens read and attention work,
        # summed in schedule order (victims of a preemption are never already scheduled)
        pt = 0
        nd = 0
        kv = 0
        att = 0.0
        i = 0
        while i < len(running) and budget > 0:
            r = running[i]
            if state[r] == DECODE:
                comp = dbase[r] + S
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
            if need > 0:
                pool.alloc(need)
            if n < 0:
                budget -= 1
                nd += 1
                kv += comp + 1
            else:
                nblk_l[r] += need
                self._flush(r, comp + n)
                budget -= n
                pt += n
                kv += comp + n
                att += n * (comp + n / 2.0)
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
                    self.rt.admit(self.idx, (ntok - hit) - req.est[r])
                sched.append((r, n, hit))
                budget -= n
                pt += n
                kv += hit + n
                att += n * (hit + n / 2.0)
        if not sched:
            self.plan = _IDLE
            return False
        self.plan = _MIXED
        self.plan_sched = sched
        self.plan_nd = nd
        self.plan_m = 1
        self.plan_end = self.lat.step_end(t, pt, nd, kv, att)
        return True

    def finish_plan(self) -> None:
        """Apply the plan that ends at ``plan_end`` (the instance is then idle)."""
        t = self.plan_end
        if self.plan is _MIXED:
            self._apply_step(t)
        else:
            m = self.plan_m
            ps = self.plan_start
            n = self.plan_n
            # Inter-token gaps: the first iteration's from each request's last token, the
            # others (one per iteration, shared by all n) expanded from the record.
            e1 = ps + self.lat.decode_run(n, self.plan_K0, 1)
            tok = self.req.tok
            c = 0
            for r in self.running:
                lt = tok[r]
                if lt == ps:
                    c += 1
                else:
                    self.itl_g.append(e1 - lt)
                    self.itl_c.append(1)
                tok[r] = t
            if c:
                self.itl_g.append(e1 - ps)
                self.itl_c.append(c)
            if m > 1:
                self.itl_runs.append((ps, n, self.plan_K0, m, 2))
            self.busy += t - ps
            self.bint += n * (t - ps)
            a_to = self.plan_S0 + m
            if a_to > self.alloc_upto:
                self.pool.alloc(self._need(self.alloc_upto, a_to - self.alloc_upto))
            self.alloc_upto = a_to
            self.rt.emit(self.idx, self.plan_n * (a_to - self.rep_upto))
            self.rep_upto = a_to
            self.dec_total += m * self.n_dec
            self.iterations += m
            self.S = a_to
            self._complete(t)
        self.plan = _IDLE

    def _apply_step(self, t: float) -> None:
        req = self.req
        sched = self.plan_sched
        self.plan_sched = []
        S1 = self.S + 1
        n_sched_dec = self.plan_nd
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
        rt, i = self.rt, self.idx
        rt.emit(i, n_sched_dec)
        inp, out, ntok_l, comp_l = req.inp, req.out, req.ntok, req.comp
        ps = self.plan_start
        self.busy += t - ps
        self.bint += len(sched) * (t - ps)
        tok = req.tok
        itl_g, itl_c = self.itl_g, self.itl_c
        shared = 0  # decoding requests whose last token ended the previous iteration
        pt = 0
        for r, n, comp in sched:
            if n < 0:
                lt = tok[r]
                if lt == ps:
                    shared += 1
                else:
                    itl_g.append(t - lt)
                    itl_c.append(1)
                tok[r] = t
                continue
            c = comp + n
            comp_l[r] = c
            pt += n
            if c == ntok_l[r]:  # caught up: a token is sampled
                ntok_l[r] = c + 1
                g = c + 1 - inp[r]
                if g == 1 and req.first[r] != req.first[r]:
                    req.first[r] = t
                elif g > 1:  # a preempted request's next token, after recomputation
                    itl_g.append(t - tok[r])
                    itl_c.append(1)
                tok[r] = t
                self.dec_total += 1
                rt.emit(i, 1)
                if g >= out[r]:
                    self._finish(r, t, c)
                else:
                    self._to_decode(r)
        if shared:
            itl_g.append(t - ps)
            itl_c.append(shared)
        self.pf_total += pt
        self.queued -= pt
        rt.prefill(i, pt)
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
