"""Router state as deployed, on the vLLM engine: replicas, late KV events, approximate indexes.

The vLLM engine (:mod:`lmetric_theory.sim.vllm_engine`) shows a policy one router with
exact state unless the config asks otherwise; :class:`VllmRouterState` is what it keeps
then, the model of :mod:`lmetric_theory.sim.routerstate` (docs/router_state.md) fed by the
real vLLM schedulers' outputs:

- **replicas**: each replica's :class:`~lmetric_theory.sim.scheduler.RouterCounters` see
  only its own requests: its dispatches, their first admission (at the step that schedules
  them, when the router learns the real hit), their prefill chunks and output tokens (at
  the end of the step that computes them) and their finish. The replica of a decision is
  drawn by :func:`~lmetric_theory.sim.routerstate.pick_replica`, seeded as on the fast
  engine, so both engines ask the same replica at every decision.
- **KV event lag**: each instance's vLLM KV cache manager emits block stored / removed
  events (``enable_kv_cache_events``); a mirror per instance (block hash -> cached copies)
  applies each ``lag`` seconds after the step that caused it (events of ``schedule()`` at
  the step's start, the rest at its end) and the hit is the leading blocks of the
  request's hash chain the mirror holds.
- **approximate index**: per replica and instance, the workload block keys the replica
  sent there, recorded and looked up by
  :func:`~lmetric_theory.sim.routerstate.record_sent` and
  :func:`~lmetric_theory.sim.routerstate.sent_hit`, the fast engine's own functions.
- **signal delay**: the engine-reported signals (queued, running, waiting, KV usage) are
  read from a per-instance history as of ``delay`` seconds before the decision.

This module never touches vLLM: the adapter hands over the events and the block keys.
"""

from __future__ import annotations

import bisect
import random
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Any

from lmetric_theory.sim.routerstate import (
    IndexSpec,
    ReplicaAssignment,
    pick_replica,
    record_sent,
    sent_hit,
)
from lmetric_theory.sim.scheduler import RouterCounters

__all__ = ["VllmRouterState"]

#: Engine signals of one instance at one time: queued prefill tokens (tokens), running and
#: waiting requests, KV usage (fraction).
EngineSignals = tuple[int, int, int, float]


class VllmRouterState:
    """The router state of one vLLM-engine replay that is not one exact router.

    Parameters
    ----------
    n_instances : int
        Instances N.
    n_requests : int
        Requests of the workload.
    replicas : int
        Router replicas R.
    assignment : ReplicaAssignment
        How decisions are spread over the replicas.
    index : IndexSpec
        The cache index (``approximate`` without bound: the sent blocks, never forgotten).
    lag : float
        KV event lag of the precise index, seconds (0: the schedulers' caches as they are).
    delay : float
        Age of the engine-reported signals, seconds (0: current).
    sessions : sequence of int or None
        Session of each request (-1: none), for the ``session`` assignment.
    seed : int
        Seed of the ``random`` assignment (the run's seed).
    ratio : int
        Engine blocks per workload hash block.
    """

    def __init__(self, n_instances: int, n_requests: int, *, replicas: int,
                 assignment: ReplicaAssignment, index: IndexSpec, lag: float, delay: float,
                 sessions: Sequence[int] | None, seed: int, ratio: int) -> None:
        n = int(n_instances)
        self.R = int(replicas)
        self.assignment = ReplicaAssignment(assignment)
        self.index = index
        self.approximate = index.kind == "approximate"
        self.lag = float(lag)
        self.delay = float(delay)
        self.sessions = sessions
        self.rng = random.Random(seed)
        self.ratio = int(ratio)
        self.counters = [RouterCounters(n) for _ in range(self.R)]
        self.replica_of = [-1] * int(n_requests)
        self.cur = 0  # replica of the decision being taken
        self.now = 0.0
        self.sent: list[list[OrderedDict]] = [[OrderedDict() for _ in range(n)]
                                              for _ in range(self.R)]
        #: whether the precise index is the lagged mirror (the adapter must emit KV events)
        self.events = self.lag > 0 and not self.approximate
        self.mirror: list[dict[Any, int]] = [{} for _ in range(n)]
        self.due: list[deque[tuple[float, Any, int]]] = [deque() for _ in range(n)]
        self.hist_t: list[list[float]] = [[] for _ in range(n)]
        self.hist_v: list[list[EngineSignals]] = [[] for _ in range(n)]

    # ------------------------------------------------------------------ decisions

    def begin(self, d: int, rid: int, t: float) -> int:
        """Decision ``d`` (request ``rid``) at ``t``: pick its replica, bring the mirrors up
        to ``t``; returns the replica."""
        self.now = t
        self.cur = r = pick_replica(d, rid, self.R, self.assignment, self.rng, self.sessions)
        if self.events:
            self._catch_up(t)
        return r

    def approximate_hits(self, keys: Sequence[Any], limit: int) -> list[int]:
        """The deciding replica's predicted hit of trace block ``keys`` on each instance,
        engine blocks (at most ``limit``)."""
        ttl = self.index.ttl_s
        return [sent_hit(sent, keys, self.ratio, limit, ttl, self.now)
                for sent in self.sent[self.cur]]

    def mirror_hits(self, keys: Sequence[Any], limit: int) -> list[int]:
        """The hit of vLLM block ``keys`` (in chain order) on each instance's lagged
        mirror: the leading blocks it holds, at most ``limit``."""
        out = []
        for m in self.mirror:
            k = 0
            for key in keys:
                if k >= limit or not m.get(key):
                    break
                k += 1
            out.append(k)
        return out

    def own_counters(self) -> RouterCounters:
        """The deciding replica's counters."""
        return self.counters[self.cur]

    def engine_signals(self, t: float, now: list[EngineSignals]) -> list[EngineSignals]:
        """The engine signals the router sees at ``t``: ``now`` (each instance's current
        ones) without a delay, else each instance's last recorded at or before
        ``t - delay`` (zeros before the first)."""
        if self.delay == 0:
            return now
        then = t - self.delay
        out = []
        for ht, hv in zip(self.hist_t, self.hist_v, strict=True):
            j = bisect.bisect_right(ht, then) - 1
            out.append(hv[j] if j >= 0 else (0, 0, 0, 0.0))
            if j > 64:  # forget history nobody will look at again
                del ht[:j]
                del hv[:j]
        return out

    # ------------------------------------------------------------------ engine feed

    def dispatched(self, j: int, rid: int, prompt: int, est: int, keys: Sequence[Any],
                   t: float) -> None:
        """Request ``rid`` (``prompt`` tokens, ``est`` predicted new) went to instance
        position ``j`` at ``t``; ``keys``: its trace block keys (the approximate index)."""
        r = self.cur
        self.replica_of[rid] = r
        self.counters[r].dispatch(j, prompt, est)
        if self.approximate:
            record_sent(self.sent[r][j], keys, self.index, t)

    def admitted(self, j: int, rid: int, correction: int) -> None:
        """``rid``'s first admission on ``j``: its real new tokens differ from the predicted
        ones by ``correction`` tokens."""
        self.counters[self.replica_of[rid]].admit(j, correction)

    def step_end(self, j: int, chunks: Sequence[tuple[int, int, int]],
                 emitted: Sequence[int]) -> None:
        """A step of ``j`` ended: its prefill ``chunks`` ``(request, context, tokens)`` and
        the requests that got a token, each counted by the replica that routed it."""
        of = self.replica_of
        pf = [0] * self.R
        em = [0] * self.R
        for rid, _, n in chunks:
            pf[of[rid]] += n
        for rid in emitted:
            em[of[rid]] += 1
        for r, c in enumerate(self.counters):
            if pf[r]:
                c.prefill(j, pf[r])
            if em[r]:
                c.emit(j, em[r])

    def finished(self, j: int, rid: int, total: int, est: int) -> None:
        """``rid`` (``total`` tokens, prompt + output; ``est`` predicted new) finished."""
        self.counters[self.replica_of[rid]].finish(j, total, est, rid)

    def block_events(self, j: int, events: Sequence[tuple[Any, int]], t: float) -> None:
        """Instance ``j``'s KV events of the engine step part that ended at ``t``: visible
        from ``t + lag``."""
        if events:
            at = t + self.lag
            self.due[j].extend((at, key, delta) for key, delta in events)

    def record(self, j: int, t: float, signals: EngineSignals) -> None:
        """Instance ``j``'s engine signals at ``t`` (a delayed view only)."""
        if self.delay > 0:
            self.hist_t[j].append(t)
            self.hist_v[j].append(signals)

    def _catch_up(self, t: float) -> None:
        """Apply to the mirrors every KV event visible at ``t``."""
        for due, m in zip(self.due, self.mirror, strict=True):
            while due and due[0][0] <= t:
                _, key, delta = due.popleft()
                if delta == 0:  # every block cleared
                    m.clear()
                    continue
                c = m.get(key, 0) + delta
                if c > 0:
                    m[key] = c
                else:
                    m.pop(key, None)
