"""Discrete-event cluster simulator: N serving instances behind one router.

The kernel: an event queue of ``(time, seq, event)`` entries (:mod:`.events`), handlers that
return the events they cause, :meth:`Simulator.peek` / :meth:`Simulator.step` /
:meth:`Simulator.advance` to drive it and :meth:`Simulator.run` to get a
:class:`~lmetric_theory.sim.config.SimResult`. The instances are
:class:`~lmetric_theory.sim.scheduler.Scheduler` objects chosen by ``SimConfig.scheduler``
from :data:`SCHEDULER_TYPES`: :class:`~lmetric_theory.sim.paged.PagedScheduler` (``vllm-v1``:
paged KV, preemption, vLLM v1's scheduling loop) or
:class:`~lmetric_theory.sim.reserve.ReserveScheduler` (``reserve``); their KV caches live in
:mod:`.kvcache`, the router's counters are one
:class:`~lmetric_theory.sim.scheduler.RouterCounters` and what the router sees is built by
:class:`~lmetric_theory.sim.router.RouterView`. docs/simulator.md states the model.

Closed loop (a workload with closed-loop ``sessions``, or ``SimConfig.concurrency`` set):
only the first requests of admitted sessions are queued at the start; when a request
completes, each request waiting for it (``Sessions.children``) is queued to arrive at that
completion plus its think time ``delay_s``; under a concurrency cap a session is admitted
when a slot frees. Routing decisions are numbered in arrival order (decision ``d`` routes
the ``d``-th arrival, not request ``d``). Closed-form decode stretches end at the first
completion of the instance, so every completion is an event.

Forking: ``run(until_decision=d)`` stops right before decision ``d``; ``fork()`` returns an
independent deep copy (policy and generator state included); ``force(d, i)`` makes
decision ``d`` go to instance ``i`` whatever the policy says. ``run()`` can then be called
again, with ``until_time`` for a window.
"""

from __future__ import annotations

import copy
import heapq
import math
from typing import Any

import numpy as np

from lmetric_theory.core.gcpause import cyclic_gc_paused
from lmetric_theory.policies import Policy, PolicySpec, make_policy
from lmetric_theory.sim.config import VIEWS, SimConfig, SimResult, tpot_s
from lmetric_theory.sim.events import (
    ARRIVAL_SEQ,
    WAKE_SEQ,
    Arrival,
    Event,
    IterationEnd,
    PlanKind,
    StepStart,
)
from lmetric_theory.sim.paged import PagedScheduler
from lmetric_theory.sim.requests import RequestData
from lmetric_theory.sim.reserve import ReserveScheduler
from lmetric_theory.sim.router import RouterView
from lmetric_theory.sim.routerstate import IndexSpec, ReplicatedRouterView
from lmetric_theory.sim.scheduler import RouterCounters, Scheduler
from lmetric_theory.sim.snapshots import SnapshotLog
from lmetric_theory.workload.base import Workload

__all__ = ["SCHEDULER_TYPES", "SimConfig", "SimResult", "Simulator", "simulate", "VIEWS"]

#: The plan kinds as module constants: reading an enum member off its class costs about
#: ten times a global look-up in Python 3.11, and the event loop tests them once per event.
_IDLE = PlanKind.IDLE
_WAKING = PlanKind.WAKING

#: The scheduler class of each ``SimConfig.scheduler`` name.
SCHEDULER_TYPES: dict[str, type[PagedScheduler] | type[ReserveScheduler]] = {
    "vllm-v1": PagedScheduler,
    "reserve": ReserveScheduler,
}

#: Simulator attributes derived from the workload and never mutated (a fork shares them).
_SHARED = frozenset({"_koff", "_kidx", "_think", "_sess_of", "_roots", "_roff", "_session", "_turn"})

#: A queue entry: (time in seconds, unique sequence number, event).
Entry = tuple[float, int, Event]


class Simulator:
    """Replay a workload through a router policy onto ``N`` simulated instances.

    Parameters
    ----------
    workload : Workload
        Requests sorted by (nominal) arrival. Closed-loop sessions are replayed closed loop
        (see the module docstring and docs/simulator.md, "Closed loop").
    config : SimConfig
        Cluster settings.
    policy : Policy, PolicySpec or str
        A policy object, or a typed spec (spec text ``NAME[:key=value,...]`` is read once)
        built with ``seed``.
    seed : int
        Seed for the policy's generator (when ``policy`` is a spec).

    Notes
    -----
    The simulator owns an event queue of ``(time, seq, event)`` entries (see
    :mod:`lmetric_theory.sim.events`); :meth:`peek` shows the next one, :meth:`step`
    processes it, and each handler returns the events it causes.
    """

    def __init__(self, workload: Workload, config: SimConfig, policy: Policy | PolicySpec | str, *,
                 seed: int = 0) -> None:
        # The per-request tables are many small lists and no cycles: the collector's passes
        # over them during set-up (about a tenth of set-up on the shared trace) free nothing.
        with cyclic_gc_paused():
            self._init(workload, config, policy, seed)

    def _init(self, workload: Workload, config: SimConfig, policy: Policy | PolicySpec | str,
              seed: int) -> None:
        self.config = config
        self.seed = int(seed)
        self.policy = make_policy(policy, seed=seed) if isinstance(policy, PolicySpec | str) else policy
        bind = getattr(self.policy, "bind_cluster", None)
        if bind is not None:  # a latency-predicting policy (predictor) gets the cluster's model
            bind(config.latency, config.token_budget)
        n = len(workload)
        if n == 0:
            raise ValueError("workload is empty")
        bs = int(workload.block_size)
        if bs < 1:
            raise ValueError(f"workload block_size must be >= 1, got {bs}")
        cap = (config.kv_capacity_tokens if config.kv_capacity_blocks is None
               else config.kv_capacity_blocks * bs)
        kind = SCHEDULER_TYPES[config.scheduler]
        room = kind.kv_room(config, bs, cap)
        self._bs = bs
        arr = np.asarray(workload.arrival_s, dtype=np.float64)
        if np.any(np.diff(arr) < 0):
            raise ValueError("workload arrivals must be non-decreasing")
        inp_a = np.asarray(workload.input_tokens, dtype=np.int64)
        out_a = np.asarray(workload.output_tokens, dtype=np.int64)
        inp, out = inp_a.tolist(), out_a.tolist()
        # A request must fit an empty instance (what that means is the scheduler's).
        too_big = np.flatnonzero(kind.kv_need(inp_a, out_a, config) > room)
        if too_big.size:
            i = int(too_big[0])
            raise ValueError(
                f"request {i}: prompt + output = {inp[i] + out[i]} tokens exceeds the KV "
                f"capacity of {room} tokens ({too_big.size} such requests)"
            )
        if min(out) < 1 or min(inp) < 1:
            raise ValueError("every request needs input_tokens >= 1 and output_tokens >= 1")
        offs = np.asarray(workload.hash_offsets, dtype=np.int64)
        # Cacheable (full) blocks only; the hash list of a request is a slice of this list.
        nfull = np.minimum(inp_a // bs, offs[1:] - offs[:-1])
        # Hit cap: at least one prompt token is recomputed.
        maxhit = np.minimum((inp_a - 1) // bs, nfull)
        hash_ids = np.asarray(workload.hash_ids, dtype=np.int64)
        ctx = None
        if workload.output_hash_ids is not None and workload.output_hash_offsets is not None:
            # A request's context hash list: its prompt's, then its output's.
            hash_ids, offs = _concat_csr(hash_ids, offs,
                                         np.asarray(workload.output_hash_ids, dtype=np.int64),
                                         np.asarray(workload.output_hash_offsets, dtype=np.int64))
            ctx_a = inp_a + out_a
            nfull = np.minimum(ctx_a // bs, offs[1:] - offs[:-1])
            ctx = ctx_a.tolist()
        data = RequestData(arr.tolist(), inp, out, hash_ids, offs, nfull.tolist(), maxhit.tolist(),
                           bs, ctx)
        self._counters = counters = RouterCounters(config.n_instances)
        if getattr(self.policy, "active_sequences", False):  # Dynamo's (dynamo-kv only)
            from lmetric_theory.sim.active_blocks import ActivePromptBlocks
            counters.blocks = ActivePromptBlocks(config.n_instances)
        self._req, inst, view_bs, ratio = kind.cluster(data, config, cap, counters)
        self._inst: list[Scheduler] = list(inst)
        log = (
            SnapshotLog.empty(n, config.n_instances, meta={
                "view": config.view, "signal_delay_s": config.signal_delay_s,
                "policy": self.policy.spec, "block_size": view_bs, "scheduler": config.scheduler,
            })
            if config.record_snapshots else None
        )
        if config.default_router_state:
            self._router = RouterView(self._req, self._inst, counters,
                                      approximate=config.view == "approximate",
                                      delay=float(config.signal_delay_s), block=view_bs,
                                      ratio=ratio, log=log)
        else:  # replicas, late KV events or a bounded index (docs/router_state.md)
            if log is not None:
                log.meta.update(router_replicas=int(config.router_replicas),
                                replica_assignment=config.replica_assignment.value,
                                kv_event_lag_s=float(config.kv_event_lag_s),
                                index=config.index.text)
            sess = workload.sessions
            self._router = ReplicatedRouterView(
                self._req, self._inst, counters, replicas=config.router_replicas,
                assignment=config.replica_assignment,
                index=IndexSpec("approximate") if config.view == "approximate" else config.index,
                lag=float(config.kv_event_lag_s), delay=float(config.signal_delay_s),
                block=view_bs, ratio=ratio, log=log,
                sessions=None if sess is None else np.asarray(sess.session).tolist(),
                seed=self.seed)
        self._pred = [-1] * n  # predicted prefix hit of each request at dispatch, tokens
        self._seq = 0
        self._wake = WAKE_SEQ
        self._next_decision = 0
        self._forced: dict[int, int] = {}
        self._events = 0
        self._now = 0.0
        # > 0: the router view's record() runs after every engine event (a delayed view
        # keeps signal history; a lagged index stamps the step's block events)
        self._delay = float(config.signal_delay_s)
        if isinstance(self._router, ReplicatedRouterView) and self._router.needs_record():
            self._delay = 1.0
        # a blind policy (round-robin, random) on one exact router without a log builds no
        # view: the decision is the same, and only the chosen instance's hit is looked up
        self._blind = bool(getattr(self.policy, "blind", False)) and self._router.serves_blind()
        # a lagged index: a decode stretch's evictions are stamped at their iterations
        self._stamp_plans = isinstance(self._router, ReplicatedRouterView) and bool(self._router.sinks)
        self._n = int(config.n_instances)
        self._setup_arrivals(workload, arr)

    def _setup_arrivals(self, workload: Workload, arr: np.ndarray) -> None:
        """The first arrivals and, in closed loop, what schedules the later ones."""
        n = len(workload)
        sess = workload.sessions
        cap = self.config.concurrency
        closed = workload.closed_loop
        self._closed = closed or cap is not None
        if sess is not None:
            self._session = np.asarray(sess.session, dtype=np.int64)
            self._turn = np.asarray(sess.turn, dtype=np.int64)
        else:
            self._session = np.full(n, -1, dtype=np.int64)
            self._turn = np.zeros(n, dtype=np.int64)
        if not self._closed:
            # Open loop: the arrivals stay out of the queue. Arrival ``d`` (decision ``d``,
            # routed in request order) is the entry ``(arrival[d], ARRIVAL_SEQ + d,
            # Arrival(d))`` of a sorted list, merged with the queue's head by
            # :meth:`_open_next`: the same order as one heap of both, with a queue of a few
            # pending iteration ends instead of one of every request (each push and pop of
            # the event loop then sifts through a few levels, not fourteen).
            self._heap: list[Entry] = []
            return
        if closed:
            assert sess is not None
            prev = np.asarray(sess.prev, dtype=np.int64)
            koff, kidx = sess.children()
            s_of = self._session
            n_s = sess.n_sessions
            think = np.asarray(sess.delay_s, dtype=np.float64)
        else:  # independent requests under a cap: one-turn sessions in arrival order
            prev = np.full(n, -1, dtype=np.int64)
            koff, kidx = np.zeros(n + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)
            s_of = np.arange(n, dtype=np.int64)
            n_s = n
            think = np.zeros(n, dtype=np.float64)
        roots = np.flatnonzero(prev < 0)
        order = np.argsort(s_of[roots], kind="stable")
        rs = roots[order]
        roff = np.zeros(n_s + 1, dtype=np.int64)
        np.cumsum(np.bincount(s_of[roots], minlength=n_s), out=roff[1:])
        # Closed-loop state (lists, copied by a fork): actual arrivals, children, sessions.
        self._req.arrival = [math.nan] * n
        self._req.STATE = (*type(self._req).STATE, "arrival")
        self._koff = koff.tolist()
        self._kidx = kidx.tolist()
        self._think = think.tolist()
        self._sess_of = s_of.tolist()
        self._roots = rs.tolist()
        self._roff = roff.tolist()
        self._left = np.bincount(s_of, minlength=n_s).tolist()  # unfinished requests per session
        self._arr_at: dict[float, int] = {}  # pending arrivals per instant
        self._heap = []
        for ins in self._inst:
            ins.fin_log = []
        if cap is None:
            for r in rs.tolist():
                self._schedule(float(arr[r]), r)
            self._next_session = n_s
        else:
            k = min(int(cap), n_s)
            for s in range(k):
                self._admit(0.0, s)
            self._next_session = k
        self._n_sessions = n_s

    def _schedule(self, t: float, rid: int) -> None:
        """Queue request ``rid`` to arrive at ``t`` (closed loop)."""
        heapq.heappush(self._heap, (t, ARRIVAL_SEQ + rid, Arrival(rid)))
        self._arr_at[t] = self._arr_at.get(t, 0) + 1

    def _admit(self, t: float, s: int) -> None:
        """Admit session ``s`` at ``t``: its first request(s) arrive then."""
        for r in self._roots[self._roff[s]:self._roff[s + 1]]:
            self._schedule(t, r)

    def _completed(self, rids: list[int], t: float) -> None:
        """Requests ``rids`` completed at ``t``: queue their children, free session slots."""
        koff, kidx, think, left, sess_of = self._koff, self._kidx, self._think, self._left, self._sess_of
        for r in rids:
            for c in kidx[koff[r]:koff[r + 1]]:
                self._schedule(t + think[c], c)
            s = sess_of[r]
            left[s] -= 1
            if left[s] == 0 and self._next_session < self._n_sessions:
                self._admit(t, self._next_session)
                self._next_session += 1
        rids.clear()

    # ------------------------------------------------------------------ public API

    @property
    def decisions_made(self) -> int:
        """Routing decisions taken so far."""
        return self._next_decision

    @property
    def now(self) -> float:
        """Simulated time of the last processed event, seconds."""
        return self._now

    @property
    def finished(self) -> bool:
        """True when no event is left (every request has completed)."""
        return self.peek() is None

    def peek(self) -> Entry | None:
        """The next live ``(time, seq, event)`` entry, or ``None`` when the queue is empty.

        Stale iteration ends (of plans that were cut) are dropped on the way.
        """
        heap = self._heap
        inst = self._inst
        while heap:
            ev = heap[0][2]
            if type(ev) is not Arrival and ev.version != inst[ev.instance].version:
                heapq.heappop(heap)
                continue
            break
        d = self._open_next()
        if d >= 0:
            return (self._req.arrival[d], ARRIVAL_SEQ + d, Arrival(d))
        return heap[0] if heap else None

    def _open_next(self) -> int:
        """The open-loop arrival that comes before the queue's head (decision ``d``), or -1.

        At one instant iteration ends (sequence numbers below ``ARRIVAL_SEQ``) come before
        an arrival and step starts (from ``WAKE_SEQ``) after it, as in one heap of both.
        """
        if self._closed:
            return -1
        d = self._next_decision
        if d >= len(self._req):
            return -1
        heap = self._heap
        if not heap:
            return d
        t, seq, _ = heap[0]
        ta = self._req.arrival[d]
        return d if ta < t or (ta == t and seq > ARRIVAL_SEQ + d) else -1

    @property
    def _pending(self) -> bool:
        """Whether any entry is left (queued, or an open-loop arrival not yet routed)."""
        return bool(self._heap) or (not self._closed and self._next_decision < len(self._req))

    def step(self) -> Entry | None:
        """Process the next event; returns it (``None`` when the queue is empty)."""
        entry = self.peek()
        if entry is None:
            return None
        if self._closed or type(entry[2]) is not Arrival:  # open-loop arrivals are not queued
            heapq.heappop(self._heap)
        for e in self._handle(entry):
            heapq.heappush(self._heap, e)
        return entry

    def fork(self) -> Simulator:
        """Independent copy of the whole simulator state (policy and RNG included).

        Workload-derived data is shared (it is never mutated); instance state, per-request
        state, the event queue and the snapshot log are copied. ``copy.deepcopy`` does the same.
        """
        return copy.deepcopy(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> Simulator:
        new = Simulator.__new__(Simulator)
        memo[id(self)] = new
        req = self._req.clone()
        counters = self._counters.clone()
        inst = [i.clone(req, counters) for i in self._inst]
        for k, v in self.__dict__.items():
            if k == "config":
                pass
            elif k == "_req":
                v = req
            elif k == "_counters":
                v = counters
            elif k == "_inst":
                v = inst
            elif k == "_router":
                v = v.clone(req, inst, counters)
            elif k == "_heap":
                v = v.copy()
            elif k in _SHARED:
                pass  # workload-derived, never mutated
            else:
                v = copy.deepcopy(v, memo)
            new.__dict__[k] = v
        return new

    def force(self, decision: int, instance: int) -> None:
        """Send decision ``decision`` to ``instance`` regardless of the policy."""
        if not 0 <= instance < self.config.n_instances:
            raise ValueError(f"instance {instance} out of range 0..{self.config.n_instances - 1}")
        if decision < self._next_decision:
            raise ValueError(f"decision {decision} was already taken")
        if decision >= len(self._req):
            raise ValueError(f"decision {decision} out of range: the workload has {len(self._req)} requests")
        self._forced[int(decision)] = int(instance)

    def run(self, *, until_decision: int | None = None, until_time: float | None = None) -> SimResult:
        """Process events (see :meth:`advance`) and return the result so far."""
        self.advance(until_decision=until_decision, until_time=until_time)
        return self._result()

    def advance(self, *, until_decision: int | None = None, until_time: float | None = None) -> None:
        """Process events without building a result (cheap to call repeatedly).

        Parameters
        ----------
        until_decision : int, optional
            Stop right before routing decision ``until_decision`` is taken (all events
            before its arrival, and iteration ends at the same instant, are processed).
        until_time : float, optional
            Stop before the first event later than this time, seconds.
        """
        heap = self._heap
        pop = heapq.heappop
        push = heapq.heappush
        stop_d = math.inf if until_decision is None else until_decision
        stop_t = math.inf if until_time is None else until_time
        inst = self._inst
        on_arrival, on_plan_end, on_step_start = self._on_arrival, self._on_plan_end, self._on_step_start
        # The loop's garbage (event entries, step schedules, LRU runs) is freed by reference
        # counting; the cyclic collector, left on, runs every 700 container allocations and
        # rescans what survived (measured: about 5% of a run). It is off during the loop only.
        with cyclic_gc_paused():
            self._loop(heap, pop, push, stop_d, stop_t, inst, on_arrival, on_plan_end, on_step_start)

    def _loop(self, heap: list[Entry], pop: Any, push: Any, stop_d: float, stop_t: float,
              inst: list[Scheduler], on_arrival: Any, on_plan_end: Any, on_step_start: Any) -> None:
        """The event loop of :meth:`advance`.

        Open loop, the next arrival (decision ``d``) is merged with the queue's head here as
        :meth:`_open_next` does (inlined: once per event).
        """
        arr = self._req.arrival
        n_open = 0 if self._closed else len(arr)  # open loop: arrivals outside the queue
        while True:
            d = self._next_decision
            if d < n_open:
                ta = arr[d]
                if not heap or ta < heap[0][0] or (ta == heap[0][0] and heap[0][1] > ARRIVAL_SEQ + d):
                    if ta > stop_t or d >= stop_d:
                        break
                    self._now = ta
                    self._events += 1
                    for e in on_arrival(ta, d):
                        push(heap, e)
                    continue
            elif not heap:
                break
            entry = heap[0]
            t = entry[0]
            if t > stop_t:
                break
            ev = entry[2]
            kind = type(ev)
            if kind is Arrival:
                if self._next_decision >= stop_d:
                    break
                pop(heap)
                self._now = t
                self._events += 1
                out = on_arrival(t, ev.request)
            else:
                ins = inst[ev.instance]
                if ev.version != ins.version:
                    pop(heap)
                    continue  # stale (the plan was cut)
                pop(heap)
                self._now = t
                self._events += 1
                # :meth:`_handle`, inlined (once per event)
                out = on_step_start(t, ins) if kind is StepStart else on_plan_end(ins)
            for e in out:
                push(heap, e)

    def outcomes(self, requests: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                      np.ndarray]:
        """Where some requests went and when they got their first and last token, so far.

        A cheap slice of :meth:`run`'s result for a few requests (no whole-workload arrays,
        no snapshot copy): the counterfactual forks call it many times per decision.

        Parameters
        ----------
        requests : np.ndarray of int
            Request indices.

        Returns
        -------
        instance : np.ndarray of int64
            Instance each request was routed to (-1: not routed yet).
        ttft_s : np.ndarray of float64
            Time to first token from the request's actual arrival, seconds (NaN: no first
            token yet; in closed loop, a request that has not arrived yet).
        tpot_s : np.ndarray of float64
            Time per output token after the first, seconds per token (NaN: not finished,
            or a one-token output), as in :class:`~lmetric_theory.sim.config.SimResult`.
        e2e_s : np.ndarray of float64
            Arrival to last token, seconds (NaN: not finished).
        """
        req = self._req
        ids = [int(i) for i in np.asarray(requests).ravel()]
        where, first, done, arr = req.where, req.first, req.done, req.arrival
        inst = np.fromiter((where[i] for i in ids), dtype=np.int64, count=len(ids))
        a = np.fromiter((arr[i] for i in ids), dtype=np.float64, count=len(ids))
        f = np.fromiter((first[i] for i in ids), dtype=np.float64, count=len(ids))
        d = np.fromiter((done[i] for i in ids), dtype=np.float64, count=len(ids))
        out = np.fromiter((req.out[i] for i in ids), dtype=np.int64, count=len(ids))
        return inst, f - a, tpot_s(f, d, out), d - a

    def router_counters(self) -> dict[str, list[int]]:
        """The router's own counters per instance: queued prefill tokens, in-flight requests,
        tokens of in-flight requests and predicted new tokens of in-flight requests
        (see :class:`~lmetric_theory.policies.base.DecisionView`)."""
        return self._counters.as_dict()

    def check_invariants(self) -> None:
        """Verify the KV/cache bookkeeping of every instance; ``AssertionError`` on a breach.

        Checks: occupancy = cached blocks + private reservations <= capacity; reference
        counts equal the number of running requests holding each block; every block of a
        running request (pinned) is cached and never on the eviction list; the eviction list
        holds exactly the unreferenced blocks; computed blocks are a subset of the cache.
        """
        for ins in self._inst:
            ins.check()

    # ------------------------------------------------------------------ handlers

    def _handle(self, entry: Entry) -> list[Entry]:
        t, _, ev = entry
        self._now = t
        self._events += 1
        if type(ev) is Arrival:
            return self._on_arrival(t, ev.request)
        if type(ev) is StepStart:
            return self._on_step_start(t, self._inst[ev.instance])
        return self._on_plan_end(self._inst[ev.instance])

    def _plan_event(self, ins: Scheduler) -> Entry:
        self._seq += 1
        ins.version += 1
        return (ins.plan_end, self._seq, IterationEnd(ins.idx, ins.version))

    def _wake_event(self, ins: Scheduler, t: float) -> Entry:
        """A step start at ``t`` after every arrival of that instant (for schedulers that
        batch arrivals)."""
        self._wake += 1
        ins.version += 1
        ins.plan = _WAKING
        return (t, self._wake, StepStart(ins.idx, ins.version))

    def _on_step_start(self, t: float, ins: Scheduler) -> list[Entry]:
        out = [self._plan_event(ins)] if ins.plan_next(t) else []
        if self._delay > 0:
            self._router.record(ins, t)
        return out

    def _on_arrival(self, t: float, rid: int) -> list[Entry]:
        if self._closed:
            self._req.arrival[rid] = t
            left = self._arr_at[t] - 1
            if left:
                self._arr_at[t] = left
            else:
                del self._arr_at[t]
        d = self._next_decision
        self._next_decision = d + 1
        router = self._router
        if self._blind:  # the policy reads no view: only the chosen instance is looked up
            target = self._forced.pop(d, None)
            if target is None:
                target = self.policy.choose_blind(self._n)
            ins = self._inst[target]
            unc = router.uncached_on(t, rid, ins)
            self._req.where[rid] = target
            self._pred[rid] = self._req.inp[rid] - unc
            ins.enqueue(rid, router.dispatched_uncached(ins, rid, unc))
        else:
            view = router.snapshot(t, rid, d)
            target = self._forced.pop(d, None)
            if target is None:
                target = self.policy.choose(view)
                if not 0 <= target < self._n:
                    raise ValueError(f"policy {self.policy.name!r} returned instance {target} out of range")
            if router.log is not None:
                router.log.chosen[d] = target
            ins = self._inst[target]
            self._req.where[rid] = target
            self._pred[rid] = view.input_tokens - int(view.uncached[target])
            ins.enqueue(rid, router.dispatched(ins, rid, view))
        out: list[Entry] = []
        if ins.plan is _IDLE:
            if ins.batches_arrivals:
                out.append(self._wake_event(ins, t))
            elif ins.plan_next(t):
                out.append(self._plan_event(ins))
        elif ins.cut(t):
            out.append(self._plan_event(ins))
        if self._delay > 0:
            router.record(ins, t)
        return out

    def _on_plan_end(self, ins: Scheduler) -> list[Entry]:
        t = ins.plan_end
        if self._stamp_plans:
            self._router.before_plan_end(ins)
        ins.finish_plan()
        if self._closed:
            if ins.fin_log:
                self._completed(ins.fin_log, t)
            if ins.batches_arrivals and t in self._arr_at:
                return [self._wake_event(ins, t)]  # arrivals of this instant join the next step
        else:
            d = self._next_decision
            if ins.batches_arrivals and d < len(self._req) and self._req.arrival[d] == t:
                return [self._wake_event(ins, t)]  # arrivals of this instant join the next step
        out = [self._plan_event(ins)] if ins.plan_next(t) else []
        if self._delay > 0:
            self._router.record(ins, t)
        return out

    # ------------------------------------------------------------------ result

    def _result(self) -> SimResult:
        req = self._req
        arrival = np.asarray(req.arrival)
        first = np.asarray(req.first)
        done = np.asarray(req.done)
        out = np.asarray(req.out, dtype=np.int64)
        ttft = first - arrival
        e2e = done - arrival
        tpot = tpot_s(first, done, out)
        log = None
        if self._router.log is not None:
            log = self._router.log.head(self._next_decision)
            if self._pending:  # unfinished: the simulator keeps writing its log, so copy
                log = log.copy()
            log = log.with_router_state()
        cfg = self.config.to_dict()
        cfg["seed"] = self.seed
        gaps, counts = _itl_arrays(self._inst)
        return SimResult(
            arrival_s=arrival,
            instance=np.asarray(req.where, dtype=np.int32),
            input_tokens=np.asarray(req.inp, dtype=np.int64),
            output_tokens=out,
            cached_tokens=np.asarray(req.cached, dtype=np.int64),
            ttft_s=ttft,
            tpot_s=tpot,
            e2e_s=e2e,
            snapshots=log,
            iterations=sum(i.iterations for i in self._inst),
            events=self._events,
            peak_kv_tokens=np.asarray([i.peak_kv_tokens() for i in self._inst], dtype=np.int64),
            prefill_tokens_computed=np.asarray([i.pf_total for i in self._inst], dtype=np.int64),
            output_tokens_produced=np.asarray([i.dec_total for i in self._inst], dtype=np.int64),
            end_time_s=self._now,
            policy=self.policy.spec,
            config=cfg,
            preemptions=req.preemption_counts(),
            preemptions_per_instance=np.asarray([i.preemptions for i in self._inst], dtype=np.int64),
            first_token_s=first.copy(),
            finish_s=done.copy(),
            session=self._session.copy(),
            turn=self._turn.copy(),
            itl_gap_s=gaps,
            itl_count=counts,
            batch_integral=np.asarray([i.bint for i in self._inst], dtype=np.float64),
            busy_s=np.asarray([i.busy for i in self._inst], dtype=np.float64),
            replica=(np.asarray(self._router.replica_of, dtype=np.int32)
                     if isinstance(self._router, ReplicatedRouterView)
                     else np.where(np.asarray(req.where) >= 0, 0, -1).astype(np.int32)),
            predicted_cached_tokens=np.asarray(self._pred, dtype=np.int64),
        )


def _concat_csr(a: np.ndarray, aoff: np.ndarray, b: np.ndarray, boff: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Row ``i`` of the result is row ``i`` of ``a`` then row ``i`` of ``b`` (CSR arrays)."""
    la = aoff[1:] - aoff[:-1]
    lb = boff[1:] - boff[:-1]
    off = np.zeros(la.size + 1, dtype=np.int64)
    np.cumsum(la + lb, out=off[1:])
    out = np.empty(int(off[-1]), dtype=np.int64)
    pos_a = np.repeat(off[:-1] - aoff[:-1], la) + np.arange(int(aoff[-1] - aoff[0])) + aoff[0]
    pos_b = np.repeat(off[:-1] + la - boff[:-1], lb) + np.arange(int(boff[-1] - boff[0])) + boff[0]
    out[pos_a] = a[aoff[0]:aoff[-1]]
    out[pos_b] = b[boff[0]:boff[-1]]
    return out, off


def _itl_arrays(instances: list[Scheduler]) -> tuple[np.ndarray, np.ndarray]:
    """Every instance's inter-token gaps and their multiplicities, seconds and tokens.

    Decode stretches are kept as ``(start, n, ctx, m, j0)`` records: iteration ``j`` of the
    stretch ends at ``start + decode_run(n, ctx, j)`` and its ``n`` tokens follow the
    previous iteration's by the difference (iterations ``j0 .. m``; the end of iteration 0
    is ``start``).
    """
    gaps: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    for ins in instances:
        gaps.append(np.asarray(ins.itl_g, dtype=np.float64))
        counts.append(np.asarray(ins.itl_c, dtype=np.int64))
        if ins.itl_runs:
            runs = np.asarray(ins.itl_runs, dtype=np.float64)
            n = runs[:, 1].astype(np.int64)
            j0 = runs[:, 4].astype(np.int64)
            k = runs[:, 3].astype(np.int64) - j0 + 2  # iteration ends j0 - 1 .. m of each run
            ends_at = np.cumsum(k)
            j = np.arange(int(ends_at[-1]), dtype=np.int64) - np.repeat(ends_at - k - j0 + 1, k)
            ends = ins.lat.decode_run(np.repeat(n, k), np.repeat(runs[:, 2].astype(np.int64), k), j)
            ends += np.repeat(runs[:, 0], k)  # start + run time (in place: one array fewer)
            gaps.append(np.delete(np.diff(ends), ends_at[:-1] - 1))  # no gap across runs
            counts.append(np.repeat(n, k - 1))
    return np.concatenate(gaps), np.concatenate(counts)


def simulate(workload: Workload, config: SimConfig, policy: Policy | str, *, seed: int = 0) -> SimResult:
    """Run a whole workload: ``Simulator(workload, config, policy, seed=seed).run()``."""
    return Simulator(workload, config, policy, seed=seed).run()
