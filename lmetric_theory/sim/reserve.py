"""The ``reserve`` scheduler: the first, simpler instance model, kept for comparison.

An instance runs continuous batching with chunked prefill: each iteration decodes one
token for every decoding request and spends the rest of the token budget on prefill
chunks, admitted requests first, then waiting ones (first come, first served) while the
batch-size limit and the KV capacity allow. KV for a request's prompt and whole output is
reserved at admission (:class:`~lmetric_theory.sim.kvcache.KVCache`), so nothing is
preempted. Decode-only stretches are planned in closed form up to the next completion
(:meth:`~lmetric_theory.sim.latency.LatencyModel.decode_run`).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from lmetric_theory.sim.events import PlanKind
from lmetric_theory.sim.kvcache import KVCache
from lmetric_theory.sim.latency import LatencyModel
from lmetric_theory.sim.requests import RequestData, Requests
from lmetric_theory.sim.scheduler import RouterCounters, Signals

__all__ = ["ReserveScheduler"]

#: The plan kinds as module constants: reading an enum member off its class costs about
#: ten times a global look-up in Python 3.11, and the event loop tests them once per event.
_DECODE = PlanKind.DECODE
_IDLE = PlanKind.IDLE
_MIXED = PlanKind.MIXED


class ReserveScheduler:
    """Mutable state and scheduling of one serving instance (scheduler ``reserve``).

    Satisfies :class:`~lmetric_theory.sim.scheduler.Scheduler`.

    Parameters
    ----------
    idx : int
        Instance index.
    req : Requests
        The simulator's request table (shared by all instances).
    kv : KVCache
        This instance's KV cache.
    latency : LatencyModel
        Iteration-latency model.
    budget, max_batch : int
        Token budget per iteration (tokens) and the running-request limit.
    fast_forward : bool
        Plan decode-only stretches up to the next completion (else one iteration each).
    counters : RouterCounters
        The router's counters (this instance's engine events correct entry ``idx``).
    """

    #: An idle instance starts at the first arrival (the rest of a burst waits an iteration).
    batches_arrivals: ClassVar[bool] = False

    __slots__ = (
        "idx", "req", "cache", "lat", "budget", "max_batch", "ff", "waiting", "prefilling", "n_dec",
        "ctx_sum", "fin", "steps", "queued", "plan", "plan_start", "plan_end", "plan_m",
        "plan_chunks", "version", "pf_total", "dec_total", "iterations", "preemptions", "rt",
        "fin_log", "itl_g", "itl_c", "itl_runs", "bint", "busy",
    )

    def __init__(self, idx: int, req: Requests, kv: KVCache, latency: LatencyModel, budget: int,
                 max_batch: int, fast_forward: bool, counters: RouterCounters) -> None:
        self.idx = idx
        self.req = req
        self.cache = kv
        self.lat = latency
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
        self.plan = _IDLE
        self.plan_start = 0.0
        self.plan_end = 0.0
        self.plan_m = 0
        self.plan_chunks: list[tuple[int, int]] = []
        self.version = 0
        self.pf_total = 0  # prefill tokens computed, tokens
        self.dec_total = 0  # tokens produced (first tokens + decode iterations), tokens
        self.iterations = 0  # iterations executed
        self.preemptions = 0  # never: KV is reserved at admission
        self.rt = counters
        self.fin_log: list[int] | None = None  # finished requests (the engine drains it)
        # Inter-token gaps, seconds, and how many tokens had each; every decoding request
        # decodes in every iteration, so one gap per iteration, shared by all of them.
        self.itl_g: list[float] = []
        self.itl_c: list[int] = []
        self.itl_runs: list[tuple[float, int, int, int, int]] = []  # decode stretches (ITL)
        self.bint = 0.0  # integral of the iteration batch size, request-seconds
        self.busy = 0.0  # time in iterations, seconds

    # ------------------------------------------------------------------ building

    @staticmethod
    def kv_room(config: Any, workload_block: int, capacity: int) -> int:
        """KV room of an empty instance, tokens: the whole capacity."""
        return capacity

    @staticmethod
    def kv_need(inp: np.ndarray, out: np.ndarray, config: Any) -> np.ndarray:
        """KV a request needs on an empty instance: prompt + output, tokens."""
        return inp + out

    @classmethod
    def cluster(cls, data: RequestData, config: Any, capacity: int,
                counters: RouterCounters) -> tuple[Requests, list[ReserveScheduler], int, int]:
        """The request table and the instances of a cluster.

        Returns
        -------
        (requests, instances, block, ratio) : tuple
            ``block``: the router view's block size (the workload's), tokens; ``ratio``:
            engine blocks per workload block (1).
        """
        req = Requests(*data.lists())
        bs = data.block
        inst = [cls(i, req, KVCache(capacity, bs), config.latency, int(config.token_budget),
                    int(config.max_batch), bool(config.fast_forward), counters)
                for i in range(config.n_instances)]
        return req, inst, bs, 1

    def clone(self, req: Requests, counters: RouterCounters) -> ReserveScheduler:
        """Independent copy bound to ``req`` and ``counters`` (a fork's)."""
        c = ReserveScheduler.__new__(ReserveScheduler)
        for name in ReserveScheduler.__slots__:
            v = getattr(self, name)
            if isinstance(v, list | deque):
                v = v.copy()
            setattr(c, name, v)
        c.req = req
        c.rt = counters
        c.cache = self.cache.clone()
        return c

    # ------------------------------------------------------------------ signals

    @property
    def running(self) -> int:
        """Admitted requests (prefilling or decoding)."""
        return len(self.prefilling) + self.n_dec

    def kv_used_fraction(self) -> float:
        """Share of the KV capacity held by running requests (cached-but-free excluded)."""
        return self.cache.in_use_tokens() / self.cache.cap

    def load(self) -> tuple[int, int, int, float]:
        """Queued prefill tokens, running and waiting requests, KV usage fraction."""
        kv = self.cache
        return (self.queued, len(self.prefilling) + self.n_dec, len(self.waiting),
                (kv.used - len(kv.lru) * kv.bs) / kv.cap)

    def signals(self) -> Signals:
        """The engine signals now (no decode-stretch record: they change only at plan ends)."""
        return (self.queued, len(self.prefilling) + self.n_dec, len(self.waiting),
                self.kv_used_fraction(), None)

    def kv_usage_at(self, stretch: Any, t: float) -> float:
        """KV usage (it changes only at plan boundaries, so no stretch is ever recorded)."""
        return self.kv_used_fraction()

    def peak_kv_tokens(self) -> int:
        """Highest KV occupancy (cached blocks + reservations), tokens."""
        return self.cache.peak

    def sync(self, t: float) -> None:
        """Nothing to bring up to date (signals change only at plan boundaries)."""

    def alloc_events(self, t: float, stamp: Callable[[float], None]) -> None:
        """Nothing allocated lazily (blocks change only at plan boundaries)."""

    def dispatch_estimate(self, rid: int, seen_uncached: int) -> int:
        """Predicted new tokens of ``rid``: from this instance's cache as it is, whatever the
        router's view showed (the first model's rule, kept)."""
        req = self.req
        keys, limit = req.lookup_keys(rid)
        return req.inp[rid] - self.cache.hit(keys, 1, limit) * self.cache.bs

    def holders(self) -> list[int]:
        """Requests holding KV (prefilling or decoding)."""
        return list(self.prefilling) + [r for _, r in self.fin]

    def check(self) -> None:
        """Assert the KV bookkeeping (see :meth:`KVCache.check`)."""
        holders = self.holders()
        req = self.req
        self.cache.check([req.refs[r] for r in holders], sum(req.priv[r] for r in holders))
        assert self.n_dec == len(self.fin), self.idx
        assert self.rt.inflight_new[self.idx] >= 0, self.idx

    # ------------------------------------------------------------------ arrivals

    def enqueue(self, rid: int, est: int) -> None:
        """A routed request joins the waiting queue with its queued-token estimate."""
        self.req.est[rid] = est
        self.queued += est
        self.waiting.append(rid)

    def cut(self, t: float) -> bool:
        """Shorten a decode stretch to the iterations started by ``t``; True if it changed."""
        if self.plan is not _DECODE or self.plan_m <= 1:
            return False
        k = self.iterations_started(t)
        if k >= self.plan_m:
            return False
        self.plan_m = k
        self.plan_end = self.plan_start + self.lat.decode_run(self.n_dec, self.ctx_sum, k)
        return True

    # ------------------------------------------------------------------ timing

    def iterations_started(self, t: float) -> int:
        """Iterations of the current decode stretch that start at or before ``t`` (>= 1)."""
        return self.lat.decode_steps_started(t - self.plan_start, self.n_dec, self.ctx_sum,
                                             self.plan_m)

    # ------------------------------------------------------------------ planning

    def _admit(self, rid: int) -> bool:
        """Admit ``rid`` (waiting head) if its KV need fits."""
        req = self.req
        inp = req.inp[rid]
        adm = self.cache.admit(req.full_blocks(rid), req.maxhit[rid], inp, req.out[rid])
        if adm is None:
            return False
        hit, refs, new, priv = adm
        bs = self.cache.bs
        req.refs[rid] = refs
        req.new[rid] = new
        req.priv[rid] = priv
        req.cached[rid] = hit * bs
        req.ctx[rid] = hit * bs
        rem = inp - hit * bs
        req.rem[rid] = rem
        self.queued += rem - req.est[rid]
        self.rt.admit(self.idx, rem - req.est[rid])
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
            pt = 0
            kv = self.ctx_sum
            att = 0.0
            ctx = self.req.ctx
            for rid, c in chunks:
                pt += c
                kv += ctx[rid] + c
                att += c * (ctx[rid] + c / 2.0)
            self.plan = _MIXED
            self.plan_chunks = chunks
            self.plan_m = 1
            self.plan_end = self.lat.step_end(t, pt, n_dec, kv, att)
            return True
        if n_dec:
            m = self.fin[0][0] - self.steps if self.ff else 1
            self.plan = _DECODE
            self.plan_m = m
            self.plan_end = t + self.lat.decode_run(n_dec, self.ctx_sum, m)
            return True
        self.plan = _IDLE
        return False

    def finish_plan(self) -> None:
        """Apply the plan that ends at ``plan_end`` (the instance is then idle)."""
        if self.plan is _MIXED:
            self._apply_mixed(self.plan_end)
        else:
            self._apply_run(self.plan_end)
        self.plan = _IDLE

    def _apply_mixed(self, t: float) -> None:
        req = self.req
        rem, ctx = req.rem, req.ctx
        done_prefill = []
        rt, i = self.rt, self.idx
        dur = t - self.plan_start
        self.busy += dur
        self.bint += (len(self.plan_chunks) + self.n_dec) * dur
        if self.n_dec:
            self.itl_g.append(dur)
            self.itl_c.append(self.n_dec)
        self.dec_total += self.n_dec
        rt.emit(i, self.n_dec)
        pt = 0
        for rid, c in self.plan_chunks:
            pt += c
            rem[rid] -= c
            ctx[rid] += c
            if rem[rid] == 0:
                done_prefill.append(rid)
        self.pf_total += pt
        self.queued -= pt
        rt.prefill(i, pt)
        self.plan_chunks = []
        self.iterations += 1
        self.steps += 1
        self.ctx_sum += self.n_dec
        self._complete(t)
        if done_prefill:
            gone = set(done_prefill)
            self.prefilling = [r for r in self.prefilling if r not in gone]
            ready = self.cache.ready
            for rid in done_prefill:
                ready.update(req.new[rid])
                req.first[rid] = t
                self.dec_total += 1
                rt.emit(i, 1)
                out = req.out[rid]
                if out == 1:
                    self._release(rid, t)
                else:
                    self.n_dec += 1
                    self.ctx_sum += req.inp[rid] + 1
                    heapq.heappush(self.fin, (self.steps + out - 1, rid))

    def _apply_run(self, t: float) -> None:
        m = self.plan_m
        self.itl_runs.append((self.plan_start, self.n_dec, self.ctx_sum, m, 1))
        self.busy += t - self.plan_start
        self.bint += self.n_dec * (t - self.plan_start)
        self.iterations += m
        self.dec_total += m * self.n_dec
        self.rt.emit(self.idx, m * self.n_dec)
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
        self.cache.release(req.refs[rid], req.priv[rid])
        self.rt.finish(self.idx, req.inp[rid] + req.out[rid], req.est[rid], rid)
        req.refs[rid] = None
        req.new[rid] = None
        req.done[rid] = t
        if self.fin_log is not None:
            self.fin_log.append(rid)
