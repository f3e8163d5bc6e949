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

from lmetric_theory.policies import Policy, PolicySpec, make_policy
from lmetric_theory.sim.config import VIEWS, SimConfig, SimResult
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
from lmetric_theory.sim.scheduler import RouterCounters, Scheduler
from lmetric_theory.sim.snapshots import SnapshotLog
from lmetric_theory.workload.base import Workload

__all__ = ["SCHEDULER_TYPES", "SimConfig", "SimResult", "Simulator", "simulate", "VIEWS"]

#: The scheduler class of each ``SimConfig.scheduler`` name.
SCHEDULER_TYPES: dict[str, type[PagedScheduler] | type[ReserveScheduler]] = {
    "vllm-v1": PagedScheduler,
    "reserve": ReserveScheduler,
}

#: A queue entry: (time in seconds, unique sequence number, event).
Entry = tuple[float, int, Event]


class Simulator:
    """Replay a workload through a router policy onto ``N`` simulated instances.

    Parameters
    ----------
    workload : Workload
        Requests sorted by arrival.
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
        self.config = config
        self.seed = int(seed)
        self.policy = make_policy(policy, seed=seed) if isinstance(policy, PolicySpec | str) else policy
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
        data = RequestData(arr.tolist(), inp, out, np.asarray(workload.hash_ids, dtype=np.int64),
                           offs, nfull.tolist(), maxhit.tolist(), bs)
        self._counters = counters = RouterCounters(config.n_instances)
        self._req, inst, view_bs, ratio = kind.cluster(data, config, cap, counters)
        self._inst: list[Scheduler] = list(inst)
        log = (
            SnapshotLog.empty(n, config.n_instances, meta={
                "view": config.view, "signal_delay_s": config.signal_delay_s,
                "policy": self.policy.spec, "block_size": view_bs, "scheduler": config.scheduler,
            })
            if config.record_snapshots else None
        )
        self._router = RouterView(self._req, self._inst, counters,
                                  approximate=config.view == "approximate",
                                  delay=float(config.signal_delay_s), block=view_bs,
                                  ratio=ratio, log=log)
        # Event queue: sorted arrivals already form a heap.
        self._heap: list[Entry] = [(t, ARRIVAL_SEQ + i, Arrival(i)) for i, t in enumerate(self._req.arrival)]
        self._seq = 0
        self._wake = WAKE_SEQ
        self._next_decision = 0
        self._forced: dict[int, int] = {}
        self._events = 0
        self._now = 0.0
        self._delay = float(config.signal_delay_s)
        self._n = int(config.n_instances)

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
            return heap[0]
        return None

    def step(self) -> Entry | None:
        """Process the next event; returns it (``None`` when the queue is empty)."""
        entry = self.peek()
        if entry is None:
            return None
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
        handle = self._handle
        while heap:
            entry = heap[0]
            if entry[0] > stop_t:
                break
            ev = entry[2]
            if type(ev) is Arrival:
                if self._next_decision >= stop_d:
                    break
            elif ev.version != inst[ev.instance].version:
                pop(heap)
                continue  # stale (the plan was cut)
            pop(heap)
            for e in handle(entry):
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
            Time to first token, seconds (NaN: no first token yet).
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
        return inst, f - a, _tpot(f, d, out), d - a

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
        ins.plan = PlanKind.WAKING
        return (t, self._wake, StepStart(ins.idx, ins.version))

    def _on_step_start(self, t: float, ins: Scheduler) -> list[Entry]:
        out = [self._plan_event(ins)] if ins.plan_next(t) else []
        if self._delay > 0:
            self._router.record(ins, t)
        return out

    def _on_arrival(self, t: float, rid: int) -> list[Entry]:
        d = self._next_decision
        self._next_decision = d + 1
        router = self._router
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
        ins.enqueue(rid, router.dispatched(ins, rid, view))
        out: list[Entry] = []
        if ins.plan is PlanKind.IDLE:
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
        ins.finish_plan()
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
        tpot = _tpot(first, done, out)
        log = None
        if self._router.log is not None:
            log = self._router.log.head(self._next_decision)
            if self._heap:  # unfinished: the simulator keeps writing its log, so copy
                log = SnapshotLog(**{c: np.array(getattr(log, c)) for c in log._columns()},
                                  meta=dict(log.meta))
        cfg = self.config.to_dict()
        cfg["seed"] = self.seed
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
            first_token_s=first.astype(np.float64),
            finish_s=done.astype(np.float64),
        )


def _tpot(first: np.ndarray, done: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Time per output token after the first, seconds per token (NaN for one-token outputs
    and unfinished requests)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(out > 1, (done - first) / np.maximum(out - 1, 1), np.nan)


def simulate(workload: Workload, config: SimConfig, policy: Policy | str, *, seed: int = 0) -> SimResult:
    """Run a whole workload: ``Simulator(workload, config, policy, seed=seed).run()``."""
    return Simulator(workload, config, policy, seed=seed).run()
