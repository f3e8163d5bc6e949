"""Router state as deployed: several router replicas, late KV events, approximate indexes.

The default router (:class:`~lmetric_theory.sim.router.RouterView`) is one router with
exact state. :class:`ReplicatedRouterView` is the same view when the state is partial or
stale (docs/router_state.md states the model):

- **replicas** (``SimConfig.router_replicas`` = R). Each decision is taken by one replica,
  chosen by :class:`ReplicaAssignment`. A replica's own counters (``router_queued``,
  ``router_inflight``, ``router_all_tokens``, ``router_inflight_new_tokens``) see only its
  own dispatches and the engine events of its own requests: for each of its unfinished
  requests, the predicted new tokens until the engine admits it, then the prompt tokens it
  has left to prefill; the prompt plus the output tokens reported so far. Engine-reported
  signals (queued, running, waiting, KV usage) are polled, the same for every replica, aged
  by ``signal_delay_s``.
- **KV event lag** (``kv_event_lag_s`` = S). The precise index is a mirror of each
  instance's prefix cache fed by block stored/removed events, each applied S seconds after
  the engine step that caused it (the cache as it was S seconds ago).
- **approximate index** (``IndexSpec`` ``approximate:ttl=S`` or ``approximate:lru=N``).
  Each replica predicts an instance's cache from the blocks it sent there itself,
  forgetting a block S seconds after it last sent it, or keeping the N most recently sent
  blocks per instance.

With R = 1, no lag and the precise index the engine uses the plain
:class:`~lmetric_theory.sim.router.RouterView`, so today's results are unchanged.
"""

from __future__ import annotations

import enum
import math
import random
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from lmetric_theory.policies.base import DecisionView
from lmetric_theory.sim.active_blocks import ActivePromptBlocks
from lmetric_theory.sim.events import PlanKind
from lmetric_theory.sim.kvcache import BlockPool, KVCache
from lmetric_theory.sim.requests import Requests
from lmetric_theory.sim.router import RouterView, active_sequence_view
from lmetric_theory.sim.scheduler import RouterCounters, Scheduler

__all__ = ["INDEX_KINDS", "IndexSpec", "ReplicaAssignment", "ReplicatedRouterView",
           "parse_index", "pick_replica", "record_sent", "sent_hit"]

#: Index kinds of ``--index``.
INDEX_KINDS: tuple[str, ...] = ("precise", "approximate")


class ReplicaAssignment(enum.StrEnum):
    """How requests are spread over the router replicas."""

    ROUND_ROBIN = "round-robin"  #: decision ``d`` goes to replica ``d mod R``
    RANDOM = "random"  #: a uniform replica per decision (seeded by the run's seed)
    SESSION = "session"  #: every turn of session ``s`` to replica ``s mod R`` (no session: round-robin)


@dataclass(frozen=True, slots=True)
class IndexSpec:
    """The router's cache index.

    Attributes
    ----------
    kind : str
        ``"precise"`` (the engines' own prefix caches, through the KV event stream) or
        ``"approximate"`` (the blocks the router itself sent).
    ttl_s : float or None
        Approximate only: a sent block is forgotten this long after it was last sent,
        seconds.
    lru_blocks : int or None
        Approximate only: at most this many sent blocks are kept per instance (least
        recently sent forgotten first), blocks of the workload's hash block size.
    """

    kind: str = "precise"
    ttl_s: float | None = None
    lru_blocks: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise ValueError(f"index: unknown kind {self.kind!r} (one of {', '.join(INDEX_KINDS)})")
        if self.kind == "precise" and (self.ttl_s is not None or self.lru_blocks is not None):
            raise ValueError("index: precise takes no ttl or lru bound")
        if self.ttl_s is not None and self.lru_blocks is not None:
            raise ValueError("index: give ttl or lru, not both")
        if self.ttl_s is not None and not (math.isfinite(self.ttl_s) and self.ttl_s > 0):
            raise ValueError(f"index: ttl must be a finite number > 0, got {self.ttl_s}")
        if self.lru_blocks is not None and (isinstance(self.lru_blocks, bool)
                                            or not isinstance(self.lru_blocks, int)
                                            or self.lru_blocks <= 0):
            raise ValueError(f"index: lru must be an integer > 0, got {self.lru_blocks!r}")

    @property
    def bounded(self) -> bool:
        """An approximate index with a TTL or an LRU bound."""
        return self.ttl_s is not None or self.lru_blocks is not None

    @property
    def text(self) -> str:
        """The spec as ``--index`` spells it."""
        if self.ttl_s is not None:
            return f"approximate:ttl={self.ttl_s:g}"
        if self.lru_blocks is not None:
            return f"approximate:lru={self.lru_blocks}"
        return self.kind


def parse_index(text: str) -> IndexSpec:
    """``precise``, ``approximate``, ``approximate:ttl=S`` or ``approximate:lru=N``.

    Raises ``ValueError`` with one line starting ``index:`` for anything else.
    """
    kind, _, rest = text.strip().partition(":")
    if kind not in INDEX_KINDS:
        raise ValueError(f"index: unknown kind {kind!r} in {text!r} (precise, approximate:ttl=S, "
                         "approximate:lru=N)")
    if not rest:
        return IndexSpec(kind)
    key, eq, val = rest.partition("=")
    if kind != "approximate" or not eq or key not in ("ttl", "lru"):
        raise ValueError(f"index: expected approximate:ttl=S or approximate:lru=N, got {text!r}")
    if key == "ttl":
        try:
            ttl = float(val)
        except ValueError:
            raise ValueError(f"index: ttl must be a number of seconds, got {val!r}") from None
        return IndexSpec(kind, ttl_s=ttl)
    try:
        lru = int(val)
    except ValueError:
        raise ValueError(f"index: lru must be an integer number of blocks, got {val!r}") from None
    return IndexSpec(kind, lru_blocks=lru)


# ---------------------------------------------------------------------- engine-independent parts
# (used by this module's view and by the vLLM engine's router state, sim/vllm_routerstate.py)


def pick_replica(d: int, rid: int, replicas: int, assignment: ReplicaAssignment,
                 rng: random.Random, sessions: Sequence[int] | None) -> int:
    """The replica taking decision ``d`` (request ``rid``).

    Parameters
    ----------
    d, rid : int
        Decision number and request.
    replicas : int
        Router replicas R.
    assignment : ReplicaAssignment
        How decisions are spread.
    rng : random.Random
        The run's replica draw (``random``: one ``randrange(R)`` per decision when R > 1).
    sessions : sequence of int or None
        Session of each request (-1: none), for the ``session`` assignment.
    """
    R = replicas
    if R == 1:
        return 0
    if assignment is ReplicaAssignment.ROUND_ROBIN:
        return d % R
    if assignment is ReplicaAssignment.RANDOM:
        return rng.randrange(R)
    s = -1 if sessions is None else sessions[rid]
    return s % R if s >= 0 else d % R


def record_sent(sent: OrderedDict, keys: Sequence[Any], index: IndexSpec, now: float) -> None:
    """Record in one replica's approximate index of one instance that ``keys`` were sent
    at ``now`` (seconds): an LRU bound keeps the ``index.lru_blocks`` most recently sent
    keys; otherwise each key keeps its last send time."""
    if index.lru_blocks is not None:
        bound = index.lru_blocks
        for h in keys:
            sent[h] = None
            sent.move_to_end(h)
        while len(sent) > bound:
            sent.popitem(last=False)
    else:
        for h in keys:
            sent[h] = now
            sent.move_to_end(h)


def sent_hit(sent: OrderedDict, keys: Sequence[Any], ratio: int, limit: int,
             ttl: float | None, now: float) -> int:
    """Predicted prefix hit of ``keys`` in one approximate index, engine blocks.

    Keys last sent ``ttl`` seconds or more before ``now`` are forgotten first (oldest
    first; ``ttl`` None: never). The hit is the leading keys still recorded, ``ratio``
    engine blocks each, at most ``limit`` blocks.
    """
    if ttl is not None:
        old = now - ttl
        while sent:
            k0 = next(iter(sent))
            if sent[k0] > old:
                break
            del sent[k0]
    k = 0
    for h in keys:
        if h not in sent:
            break
        k += 1
    k *= ratio
    return k if k < limit else limit


# ---------------------------------------------------------------------- KV event sources


def _shared_keys(held: list[Any]) -> list[Any]:
    """The chain keys among a request's held items (private blocks are tuples, runs of
    private whole blocks are ``range`` objects; neither is ever looked up by a router)."""
    return [k for k in held if type(k) is not tuple and type(k) is not range]


class _LoggedPool(BlockPool):
    """A :class:`BlockPool` that reports every chain whose cached extent may have changed
    (the engine's block stored/removed events) to ``sink`` as ``(key, extent)``."""

    __slots__ = ("sink",)

    @classmethod
    def wrap(cls, pool: BlockPool, sink: list[tuple[int, int]]) -> _LoggedPool:
        c = cls.__new__(cls)
        for name in BlockPool.__slots__:
            setattr(c, name, getattr(pool, name))
        c.sink = sink
        return c

    def _note(self, keys: Any) -> None:
        groups = self.groups
        sink = self.sink
        for key in keys:
            g = groups.get(key)
            sink.append((key, g.k if g is not None else 0))

    def _evict(self, n: int) -> None:
        keys = []
        left = n
        for run in self.lru:
            if left <= 0:
                break
            size = run[2] - run[1]
            if size > 0:
                if run[3] is not None:
                    keys.append(run[0])
                left -= size
        super()._evict(n)
        self._note(keys)

    def extend(self, key: int, pos: int, count: int, rid: int) -> bool:
        ok = super().extend(key, pos, count, rid)
        if ok:
            self._note((key,))
        return ok

    def cache_blocks(self, rid: int, held: list[Any], *args: Any) -> tuple[int, int]:
        start = max(len(held) - 1, 0)
        out = super().cache_blocks(rid, held, *args)
        self._note(_shared_keys(held[start:]))
        return out

    def release_blocks(self, rid: int, held: list[Any], hashless: int) -> None:
        keys = _shared_keys(held)
        super().release_blocks(rid, held, hashless)
        self._note(keys)

    def register_blocks(self, rid: int, held: list[Any], *args: Any) -> tuple[list[Any], int]:
        out = super().register_blocks(rid, held, *args)
        self._note(_shared_keys(out[0]))
        return out

    def clone(self) -> BlockPool:
        return _LoggedPool.wrap(super().clone(), self.sink)


class _LoggedSet(set):
    """The ``reserve`` cache's set of computed blocks, reporting additions and removals to
    ``sink`` as ``(key, 1)`` / ``(key, 0)``."""

    __slots__ = ("sink",)

    def update(self, *others: Any) -> None:  # type: ignore[override]
        for o in others:
            o = list(o)
            set.update(self, o)
            self.sink.extend((k, 1) for k in o)

    def difference_update(self, *others: Any) -> None:  # type: ignore[override]
        for o in others:
            o = list(o)
            set.difference_update(self, o)
            self.sink.extend((k, 0) for k in o)

    def add(self, key: Any) -> None:
        set.add(self, key)
        self.sink.append((key, 1))

    def discard(self, key: Any) -> None:
        set.discard(self, key)
        self.sink.append((key, 0))


def _install_sink(ins: Scheduler) -> list[tuple[int, int]]:
    """Make ``ins``'s prefix cache report its changes; returns the list they go to."""
    sink: list[tuple[int, int]] = []
    pool = getattr(ins, "pool", None)
    if isinstance(pool, BlockPool):
        if isinstance(pool, _LoggedPool):
            pool.sink = sink  # a fork's copy: its own event list
        else:
            ins.pool = ins.cache = _LoggedPool.wrap(pool, sink)
        return sink
    cache = ins.cache
    if not isinstance(cache, KVCache):
        raise ValueError("kv_event_lag_s: this scheduler's cache cannot report block events")
    ready = _LoggedSet(cache.ready)
    ready.sink = sink
    cache.ready = ready
    return sink


# ---------------------------------------------------------------------- the view


class ReplicatedRouterView(RouterView):
    """:class:`RouterView` for R router replicas, a lagged KV index and bounded approximate
    indexes (see the module docstring).

    Parameters
    ----------
    req, instances, counters, delay, block, ratio, log
        As for :class:`RouterView`; ``counters`` are the counters of one router that sees
        every dispatch and every engine event (the engine-side truth, logged as
        ``true_batch`` / ``true_queued_tokens``).
    replicas : int
        Router replicas R.
    assignment : ReplicaAssignment
        How decisions are spread over the replicas.
    index : IndexSpec
        The cache index (``approximate`` without bound: the sent blocks, never forgotten).
    lag : float
        KV event lag of the precise index, seconds.
    sessions : list of int or None
        Session of each request (``session`` assignment; -1: none).
    seed : int
        Seed of the ``random`` assignment.
    """

    def __init__(self, req: Requests, instances: Sequence[Scheduler], counters: RouterCounters, *,
                 replicas: int, assignment: ReplicaAssignment, index: IndexSpec, lag: float,
                 delay: float, block: int, ratio: int, log: Any,
                 sessions: list[int] | None, seed: int) -> None:
        if log is not None and log.true_batch is None:
            d, n_i = log.uncached.shape
            log = replace(log, replica=np.full(d, -1, np.int32),
                          true_batch=np.zeros((d, n_i), np.int32),
                          true_queued_tokens=np.zeros((d, n_i), np.int32))
        super().__init__(req, instances, counters, approximate=index.kind == "approximate",
                         delay=delay, block=block, ratio=ratio, log=log)
        n = len(instances)
        self.R = int(replicas)
        self.assignment = ReplicaAssignment(assignment)
        self.index = index
        self.lag = float(lag)
        self.sessions = sessions
        self.rng = random.Random(seed)
        self.replica_of = [-1] * len(req)  # replica that routed each request
        self.cur = 0  # replica of the decision being taken
        # each replica's unfinished requests per instance (finished ones dropped lazily)
        self.own: list[list[list[int]]] = [[[] for _ in range(n)] for _ in range(self.R)]
        # approximate index per replica and instance: key -> last send time (ttl) or LRU order
        self.sent: list[list[Any]] = [[OrderedDict() for _ in range(n)] for _ in range(self.R)]
        # lagged precise index: per instance the mirror (key -> cached extent), the
        # engine's changes not yet stamped, and stamped ones not yet visible
        self.mirror: list[dict[int, int]] = [{} for _ in range(n)]
        self.sinks: list[list[tuple[int, int]]] = []
        self.due: list[deque[tuple[float, int, int]]] = [deque() for _ in range(n)]
        # Dynamo's active sequences per replica: each replica tracks only the requests it
        # routed (no replica sync); ``counters.blocks`` stays the one-router truth
        self.rblocks: list[ActivePromptBlocks] | None = None
        if counters.blocks is not None and self.R > 1:
            self.rblocks = [ActivePromptBlocks(n) for _ in range(self.R)]
        if self.lag > 0 and not self.approximate:
            self.sinks = [_install_sink(ins) for ins in instances]
            # what is cached already at the start is known
            for i, ins in enumerate(instances):
                self.mirror[i] = _cache_extents(ins)

    def clone(self, req: Requests, instances: Sequence[Scheduler],
              counters: RouterCounters) -> ReplicatedRouterView:
        c = super().clone(req, instances, counters)
        c.__class__ = ReplicatedRouterView  # the base copies every attribute of the view
        assert isinstance(c, ReplicatedRouterView)
        if self.log is not None:
            c.log = replace(c.log, **{k: v.copy() for k, v in self.log.optional_columns().items()})
            c._bind()
        c.rng = random.Random()
        c.rng.setstate(self.rng.getstate())
        c.replica_of = self.replica_of.copy()
        c.own = [[lst.copy() for lst in rep] for rep in self.own]
        c.sent = [[d.copy() for d in rep] for rep in self.sent]
        c.mirror = [m.copy() for m in self.mirror]
        c.due = [d.copy() for d in self.due]
        c.rblocks = None if self.rblocks is None else [b.clone() for b in self.rblocks]
        if self.sinks:
            c.sinks = []
            for ins, old in zip(instances, self.sinks, strict=True):
                sink = _install_sink(ins)
                sink[:] = old
                c.sinks.append(sink)
        return c

    # ------------------------------------------------------------------ engine hooks

    def needs_record(self) -> bool:
        """Whether the engine must call :meth:`record` after every event."""
        return self.delay > 0 or bool(self.sinks)

    def record(self, ins: Scheduler, t: float) -> None:
        """Stamp the instance's block events of the event just processed with ``t`` (and
        keep its engine signals for a delayed view)."""
        if self.delay > 0:
            super().record(ins, t)
        if self.sinks:
            self._stamp(ins.idx, t)

    def before_plan_end(self, ins: Scheduler) -> None:
        """Stamp the block changes of a decode stretch ending now at the starts of the
        iterations that made them (the engine calls this before ``finish_plan``)."""
        if ins.plan is PlanKind.DECODE:
            i = ins.idx
            ins.alloc_events(ins.plan_end, lambda s: self._stamp(i, s))

    def _stamp(self, i: int, t: float) -> None:
        sink = self.sinks[i]
        if sink:
            due = self.due[i]
            at = t + self.lag
            for key, k in sink:
                due.append((at, key, k))
            sink.clear()

    def _catch_up(self, t: float) -> None:
        """Apply to the mirrors every block event visible at ``t``."""
        for i in range(len(self.inst)):
            self._stamp(i, t)
            due = self.due[i]
            m = self.mirror[i]
            while due and due[0][0] <= t:
                _, key, k = due.popleft()
                if k:
                    m[key] = k
                else:
                    m.pop(key, None)

    # ------------------------------------------------------------------ decisions

    def pick_replica(self, d: int, rid: int) -> int:
        """The replica taking decision ``d`` (request ``rid``)."""
        return pick_replica(d, rid, self.R, self.assignment, self.rng, self.sessions)

    def dispatched(self, ins: Scheduler, rid: int, view: DecisionView) -> int:
        req = self.req
        i = ins.idx
        est = ins.dispatch_estimate(rid, int(view.uncached[i]))
        r = self.cur
        self.replica_of[rid] = r
        self.own[r][i].append(rid)
        if self.approximate:
            record_sent(self.sent[r][i], req.sent_keys(rid), self.index, view.time_s)
        c = self.counters
        c.dispatch(i, req.inp[rid], est)
        if c.blocks is not None:  # Dynamo's active sequences, as RouterView.dispatched
            c.blocks.add(i, rid, req.sent_keys(rid), self.ratio, req.inp[rid] // self.bs, est)
            if self.rblocks is not None:  # and the deciding replica's own
                self.rblocks[r].add(i, rid, req.sent_keys(rid), self.ratio,
                                    req.inp[rid] // self.bs, est)
        return est

    def _hits(self, rid: int) -> list[int]:
        keys, limit = self.req.lookup_keys(rid)
        ratio = self.ratio
        out = []
        if self.approximate:
            ttl = self.index.ttl_s
            return [sent_hit(sent, keys, ratio, limit, ttl, self._now)
                    for sent in self.sent[self.cur]]
        if not self.sinks:
            return [ins.cache.hit(keys, ratio, limit) for ins in self.inst]
        for m in self.mirror:
            hit = 0
            for key in keys:
                e = m.get(key, 0)
                if not e:
                    break
                hit += e
                if e < ratio:
                    break
            out.append(hit if hit < limit else limit)
        return out

    def snapshot(self, t: float, rid: int, d: int) -> DecisionView:
        self._now = t
        self.cur = r = self.pick_replica(d, rid)
        if self.sinks:
            stamp = self._stamp
            for ins in self.inst:
                if ins.plan is PlanKind.DECODE:
                    i = ins.idx
                    ins.alloc_events(t, lambda s, i=i: stamp(i, s))
                    ins.sync(t)
            self._catch_up(t)
        view = super().snapshot(t, rid, d) if self.R == 1 else self._replica_snapshot(t, rid, d, r)
        log = self.log
        if log is not None and log.true_batch is not None:
            c = self.counters
            log.true_batch[d] = c.inflight
            log.true_queued_tokens[d] = c.queued
            log.replica[d] = r
        return view

    def _replica_snapshot(self, t: float, rid: int, d: int, r: int) -> DecisionView:
        """As :meth:`RouterView.snapshot`, with replica ``r``'s own counters."""
        inst = self.inst
        decode = PlanKind.DECODE
        for ins in inst:
            if ins.plan is decode:
                ins.sync(t)
        inp = self.req.inp[rid]
        hb = self._hits(rid)
        bs = self.bs
        unc = [inp - k * bs for k in hb]
        if self.delay == 0:
            q, run, w, kv = zip(*[ins.load() for ins in inst], strict=True)
        else:
            q, run, w, kv = self._delayed(t)
        rq, rb, ra, rn = self._own_counters(r)
        view = self._rows(t, rid, d, inp, unc, q, run, w, kv, hb, rq, rb, ra, rn)
        if self.rblocks is not None:
            blocks = self.rblocks[r]
            done = self.req.done
            for x in [x for x in blocks.req if not math.isnan(done[x])]:
                blocks.remove(x)  # the replica saw its request finish
            view = active_sequence_view(view, blocks, self.req.first, t,
                                        self.req.sent_keys(rid), self.ratio, inp // bs)
        return view

    def _own_counters(self, r: int) -> tuple[list[int], list[int], list[int], list[int]]:
        """Replica ``r``'s queued tokens, in-flight requests, tokens in flight and new tokens
        in flight per instance, from the state of its own unfinished requests."""
        req = self.req
        done, first, cached, est, inp = req.done, req.first, req.cached, req.est, req.inp
        paged = hasattr(req, "comp")
        q, b, a, nw = [], [], [], []
        for i, lst in enumerate(self.own[r]):
            live = [x for x in lst if math.isnan(done[x])]
            if len(live) != len(lst):
                self.own[r][i] = live
            qi = ai = ni = 0
            ins = self.inst[i]
            for x in live:
                ni += est[x]
                p = inp[x]
                if not math.isnan(first[x]):
                    # prefill done; prompt + outputs reported so far
                    ai += ins.comp_of(x) + 1 if paged else p + 1
                    continue
                ai += p
                if cached[x] < 0:
                    qi += est[x]
                elif paged:
                    left = p - req.comp[x]
                    qi += left if left > 0 else 0
                else:
                    qi += req.rem[x]
            q.append(qi)
            b.append(len(live))
            a.append(ai)
            nw.append(ni)
        return q, b, a, nw


def _cache_extents(ins: Scheduler) -> dict[int, int]:
    """Every indexed chain of ``ins``'s prefix cache with its cached extent."""
    pool = getattr(ins, "pool", None)
    if isinstance(pool, BlockPool):
        return {k: g.k for k, g in pool.groups.items() if g.k}
    return dict.fromkeys(ins.cache.ready, 1)
