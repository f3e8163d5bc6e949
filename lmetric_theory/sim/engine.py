"""Discrete-event cluster simulator: N serving instances behind one router.

Each instance runs continuous batching with chunked prefill: every iteration decodes one
token for each decoding request and spends the rest of a token budget on prefill chunks,
first-come first-served (admitted requests first, then waiting ones while the batch-size
limit and the KV capacity allow). Iteration time follows :class:`LatencyModel`.

Modelling choices (documented deviations from a real engine)
------------------------------------------------------------
- KV space for a request's whole output is reserved at admission, so running requests are
  never preempted; a request whose prompt + output exceeds the capacity is rejected at
  construction with ``ValueError``.
- The prefix cache holds full prompt blocks of the workload's block size, keyed by block
  hash (a hash names its whole prefix chain). A lookup walks the prompt's hashes until the
  first block that is absent or not yet computed; at least one prompt token is always
  recomputed, so the hit is capped at ``floor((L - 1) / block) * block`` tokens. Blocks of
  running requests are pinned (reference counts); unreferenced blocks are evicted least
  recently used first (a released request's tail blocks before its head blocks). A
  request's new blocks become hits for others when its prefill completes.
- A routed request joins its instance at the next iteration boundary; the iteration in
  progress at its arrival keeps its composition.
- Decode-only stretches are advanced in closed form: with ``n`` sequences of total context
  ``K`` the ``j``-th iteration takes ``a + c_kv * (K + j n)`` with ``a = c0 + c_dec n``, so
  ``m`` iterations take ``m (a + c_kv K) + c_kv n m (m - 1) / 2``. A stretch ends at the next
  completion, or is cut at the boundary after a new request reaches the instance.

Router view: ``precise`` looks the request up in each instance's cache as it is;
``approximate`` in the set of blocks the router itself sent to each instance (never
evicted). Load signals (queued prefill tokens, running, waiting, KV usage) are read as of
``signal_delay_s`` seconds before the decision.

Forking: ``run(until_decision=d)`` stops right before decision ``d``; ``fork()`` returns an
independent deep copy (policy and generator state included); ``force(d, i)`` makes
decision ``d`` go to instance ``i`` whatever the policy says. ``run()`` can then be called
again, with ``until_time`` for a window.
"""

from __future__ import annotations

import bisect
import copy
import heapq
import math
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass, field
from itertools import islice
from typing import Any

import numpy as np

from lmetric_theory.policies.base import DecisionView, Policy, make_policy
from lmetric_theory.sim.latency import LatencyModel, Preset
from lmetric_theory.sim.snapshots import SnapshotLog
from lmetric_theory.workload.base import Workload

__all__ = ["SimConfig", "SimResult", "Simulator", "simulate", "VIEWS"]

#: Router cache views.
VIEWS: tuple[str, ...] = ("precise", "approximate")

_PLAN_END = 0  # event priority: iteration ends before arrivals at the same instant
_ARRIVAL = 1


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Cluster settings.

    Attributes
    ----------
    n_instances : int
        Number of serving instances ``N``.
    latency : LatencyModel
        Iteration-latency coefficients.
    kv_capacity_tokens : int
        KV capacity of each instance, tokens.
    kv_capacity_blocks : int or None
        If set, the capacity in blocks of the workload's block size instead (overrides
        ``kv_capacity_tokens``).
    token_budget : int
        Tokens per iteration (decode tokens + prefill chunks), tokens.
    max_batch : int
        Maximum running (prefilling + decoding) requests per instance.
    view : str
        Router cache view: ``"precise"`` or ``"approximate"``.
    signal_delay_s : float
        Age of the load signals the router sees, seconds (0: current).
    fast_forward : bool
        Advance decode-only stretches in closed form (``False``: one iteration per event,
        the slow reference).
    record_snapshots : bool
        Keep the per-decision :class:`SnapshotLog`.
    """

    n_instances: int
    latency: LatencyModel
    kv_capacity_tokens: int
    token_budget: int = 8192
    max_batch: int = 256
    kv_capacity_blocks: int | None = None
    view: str = "precise"
    signal_delay_s: float = 0.0
    fast_forward: bool = True
    record_snapshots: bool = True

    def __post_init__(self) -> None:
        if self.n_instances < 1:
            raise ValueError(f"n_instances must be >= 1, got {self.n_instances}")
        if self.kv_capacity_tokens < 1 or self.token_budget < 1 or self.max_batch < 1:
            raise ValueError("kv_capacity_tokens, token_budget and max_batch must be >= 1")
        if self.kv_capacity_blocks is not None and self.kv_capacity_blocks < 1:
            raise ValueError(f"kv_capacity_blocks must be >= 1, got {self.kv_capacity_blocks}")
        if self.max_batch > self.token_budget:
            raise ValueError("max_batch must not exceed token_budget (one decode token each)")
        if self.view not in VIEWS:
            raise ValueError(f"view: {self.view!r} is not one of {', '.join(VIEWS)}")
        if not (math.isfinite(self.signal_delay_s) and self.signal_delay_s >= 0):
            raise ValueError(f"signal_delay_s must be finite and >= 0, got {self.signal_delay_s}")

    @classmethod
    def from_preset(cls, preset: Preset, n_instances: int, **overrides: Any) -> SimConfig:
        """Config with the preset's latency and limits; keyword overrides win."""
        kw: dict[str, Any] = dict(
            latency=preset.latency,
            kv_capacity_tokens=preset.kv_capacity_tokens,
            token_budget=preset.token_budget,
            max_batch=preset.max_batch,
        )
        kw.update(overrides)
        return cls(n_instances=n_instances, **kw)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class SimResult:
    """Outcome of a run (requests not finished by the stop time hold NaN).

    Attributes
    ----------
    arrival_s : np.ndarray, shape (n,), float64
        Arrival times, seconds.
    instance : np.ndarray, shape (n,), int32
        Instance each request was routed to (-1: not routed yet).
    input_tokens, output_tokens : np.ndarray, shape (n,), int64
        Prompt and output lengths, tokens.
    cached_tokens : np.ndarray, shape (n,), int64
        Prompt tokens served from the prefix cache at admission (-1: not admitted), tokens.
    ttft_s : np.ndarray, shape (n,), float64
        Time to first token (arrival to end of the last prefill iteration), seconds.
    tpot_s : np.ndarray, shape (n,), float64
        Time per output token after the first, seconds (NaN for one-token outputs).
    e2e_s : np.ndarray, shape (n,), float64
        Arrival to last token, seconds.
    snapshots : SnapshotLog or None
        Router views of the decisions made.
    iterations : int
        Iterations executed over all instances (closed-form stretches counted in full).
    events : int
        Events processed.
    peak_kv_tokens : np.ndarray, shape (N,), int64
        Highest KV occupancy (cached blocks + reservations) per instance, tokens.
    prefill_tokens_computed : np.ndarray, shape (N,), int64
        Prompt tokens computed by prefill iterations per instance, tokens.
    output_tokens_produced : np.ndarray, shape (N,), int64
        Tokens produced per instance (first tokens plus decode-iteration tokens), tokens.
    end_time_s : float
        Simulated time reached, seconds.
    policy : str
        Canonical policy spec.
    config : dict
        The :class:`SimConfig` as a dictionary, plus the seed.
    """

    arrival_s: np.ndarray
    instance: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    cached_tokens: np.ndarray
    ttft_s: np.ndarray
    tpot_s: np.ndarray
    e2e_s: np.ndarray
    snapshots: SnapshotLog | None
    iterations: int
    events: int
    peak_kv_tokens: np.ndarray
    prefill_tokens_computed: np.ndarray
    output_tokens_produced: np.ndarray
    end_time_s: float
    policy: str
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def completed(self) -> np.ndarray:
        """Mask of finished requests, shape (n,), bool."""
        return np.isfinite(self.e2e_s)

    def summary(self) -> dict[str, float | int]:
        """Headline figures: completed count, TTFT/TPOT statistics (s), prefix-hit rate."""
        done = self.completed
        ttft = self.ttft_s[done]
        tpot = self.tpot_s[done]
        tpot = tpot[np.isfinite(tpot)]
        admitted = self.cached_tokens >= 0

        def stat(a: np.ndarray, f: Any) -> float:
            return float(f(a)) if a.size else float("nan")

        inp = int(self.input_tokens[admitted].sum())
        return {
            "completed": int(done.sum()),
            "ttft_mean_s": stat(ttft, np.mean),
            "ttft_p50_s": stat(ttft, lambda a: np.percentile(a, 50)),
            "ttft_p90_s": stat(ttft, lambda a: np.percentile(a, 90)),
            "ttft_p99_s": stat(ttft, lambda a: np.percentile(a, 99)),
            "tpot_mean_s": stat(tpot, np.mean),
            "tpot_p99_s": stat(tpot, lambda a: np.percentile(a, 99)),
            "prefix_hit_rate": float(self.cached_tokens[admitted].sum() / inp) if inp else float("nan"),
        }


class _Instance:
    """Mutable state of one serving instance (private to the simulator)."""

    __slots__ = (
        "idx", "cache", "lru", "used", "waiting", "prefilling", "n_dec", "ctx_sum", "fin",
        "steps", "queued", "plan", "plan_start", "plan_end", "plan_m", "plan_chunks",
        "version", "approx", "hist_t", "hist_v", "ready", "peak", "pf_total", "dec_total",
    )

    def __init__(self, idx: int) -> None:
        self.idx = idx
        self.cache: dict[int, int] = {}  # block hash -> reference count (running requests)
        self.ready: set[int] = set()  # hashes of computed blocks (the lookup set)
        self.lru: OrderedDict[int, None] = OrderedDict()  # unreferenced ready blocks, oldest first
        self.used = 0  # KV tokens held: cache entries + private reservations
        self.waiting: deque[int] = deque()
        self.prefilling: list[int] = []
        self.n_dec = 0
        self.ctx_sum = 0  # sum of decoding contexts, tokens
        self.fin: list[tuple[int, int]] = []  # heap of (finish step, rid)
        self.steps = 0  # decode iterations executed
        self.queued = 0  # prefill tokens not yet computed (admitted remaining + waiting estimates)
        self.plan = 0  # 0 idle, 1 mixed iteration, 2 decode stretch
        self.plan_start = 0.0
        self.plan_end = 0.0
        self.plan_m = 0
        self.plan_chunks: list[tuple[int, int]] = []
        self.version = 0
        self.approx: set[int] = set()
        self.hist_t: list[float] = []
        self.hist_v: list[tuple[int, int, int, int]] = []
        self.peak = 0  # highest KV tokens held, tokens
        self.pf_total = 0  # prefill tokens computed, tokens
        self.dec_total = 0  # tokens produced (first tokens + decode iterations), tokens


def _clone_instance(ins: _Instance) -> _Instance:
    """Independent copy of an instance's mutable state (hashes and tuples are immutable)."""
    c = _Instance.__new__(_Instance)
    for name in _Instance.__slots__:
        v = getattr(ins, name)
        if isinstance(v, dict | set | list | deque):
            v = v.copy()
        setattr(c, name, v)
    return c


#: Simulator attributes derived from the workload and never mutated: shared by forks.
_SHARED = ("config", "_arrival", "_inp", "_out", "_hashes", "_hoff", "_nfull", "_maxhit", "_c")
#: Per-request lists whose items are replaced, never mutated in place: shallow-copied by forks.
_PER_REQUEST = ("_where", "_cached", "_rem", "_ctx", "_est", "_refs", "_new", "_priv", "_first", "_done")


class Simulator:
    """Replay a workload through a router policy onto ``N`` simulated instances.

    Parameters
    ----------
    workload : Workload
        Requests sorted by arrival.
    config : SimConfig
        Cluster settings.
    policy : Policy or str
        A policy object or a spec ``NAME[:key=value,...]`` (built with ``seed``).
    seed : int
        Seed for the policy's generator (when ``policy`` is a spec).

    Notes
    -----
    The simulator owns its event heap of ``(time, priority, seq, kind, instance, version)``
    tuples; the arrival and iteration-end handlers return the events they cause.
    """

    def __init__(self, workload: Workload, config: SimConfig, policy: Policy | str, *, seed: int = 0) -> None:
        self.config = config
        self.seed = int(seed)
        self.policy = make_policy(policy, seed=seed) if isinstance(policy, str) else policy
        n = len(workload)
        if n == 0:
            raise ValueError("workload is empty")
        self._bs = int(workload.block_size)
        if self._bs < 1:
            raise ValueError(f"workload block_size must be >= 1, got {self._bs}")
        cap = (config.kv_capacity_tokens if config.kv_capacity_blocks is None
               else config.kv_capacity_blocks * self._bs)
        arr = np.asarray(workload.arrival_s, dtype=np.float64)
        if np.any(np.diff(arr) < 0):
            raise ValueError("workload arrivals must be non-decreasing")
        self._arrival: list[float] = arr.tolist()
        self._inp: list[int] = np.asarray(workload.input_tokens, dtype=np.int64).tolist()
        self._out: list[int] = np.asarray(workload.output_tokens, dtype=np.int64).tolist()
        too_big = np.flatnonzero(
            np.asarray(workload.input_tokens) + np.asarray(workload.output_tokens) > cap
        )
        if too_big.size:
            i = int(too_big[0])
            raise ValueError(
                f"request {i}: prompt + output = {self._inp[i] + self._out[i]} tokens exceeds the KV "
                f"capacity of {cap} tokens ({too_big.size} such requests)"
            )
        if min(self._out) < 1 or min(self._inp) < 1:
            raise ValueError("every request needs input_tokens >= 1 and output_tokens >= 1")
        offs = np.asarray(workload.hash_offsets, dtype=np.int64)
        hashes = np.asarray(workload.hash_ids, dtype=np.int64)
        # Cacheable (full) blocks only; the hash list of a request is a slice of this list.
        self._hashes: list[int] = hashes.tolist()
        self._hoff: list[int] = offs[:-1].tolist()
        nfull = np.minimum(np.asarray(workload.input_tokens) // self._bs, offs[1:] - offs[:-1])
        self._nfull: list[int] = nfull.tolist()
        # Hit cap: at least one prompt token is recomputed.
        self._maxhit: list[int] = np.minimum((np.asarray(workload.input_tokens) - 1) // self._bs, nfull).tolist()

        self._inst = [_Instance(i) for i in range(config.n_instances)]
        # Per-request state.
        self._where = [-1] * n
        self._cached = [-1] * n
        self._rem = [0] * n  # prompt tokens still to prefill
        self._ctx = [0] * n  # prompt tokens in KV (cached + prefilled)
        self._est = [0] * n  # queued-token estimate at routing
        self._refs: list[list[int] | None] = [None] * n
        self._new: list[list[int] | None] = [None] * n
        self._priv = [0] * n
        self._first = [math.nan] * n
        self._done = [math.nan] * n

        # Event heap: sorted arrivals already form a heap.
        self._heap: list[tuple] = [(t, _ARRIVAL, i, 0, i, 0) for i, t in enumerate(self._arrival)]
        self._seq = n
        self._next_decision = 0
        self._forced: dict[int, int] = {}
        self._iterations = 0
        self._events = 0
        self._now = 0.0
        self._log = (
            SnapshotLog.empty(n, config.n_instances, meta={
                "view": config.view, "signal_delay_s": config.signal_delay_s,
                "policy": self.policy.spec,
            })
            if config.record_snapshots else None
        )
        if not config.record_snapshots:
            self._row = SnapshotLog.empty(1, config.n_instances)
        lat = config.latency
        self._c = (lat.c0, lat.c_pf, lat.c_dec, lat.c_kv, lat.c_att)
        # Settings read in hot paths, as plain attributes.
        self._approx = config.view == "approximate"
        self._delay = float(config.signal_delay_s)
        self._cap = int(cap)
        self._budget = int(config.token_budget)
        self._max_batch = int(config.max_batch)
        self._ff = bool(config.fast_forward)
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

    def fork(self) -> Simulator:
        """Independent copy of the whole simulator state (policy and RNG included).

        Workload-derived data is shared (it is never mutated); instance state, per-request
        state, the event heap and the snapshot log are copied. ``copy.deepcopy`` does the same.
        """
        return copy.deepcopy(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> Simulator:
        new = Simulator.__new__(Simulator)
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            if k in _SHARED:
                pass
            elif k in _PER_REQUEST or k == "_heap":
                v = v.copy()
            elif k == "_inst":
                v = [_clone_instance(i) for i in v]
            elif k in ("_log", "_row") and v is not None:
                v = SnapshotLog(**{c: getattr(v, c).copy() for c in v._columns()}, meta=dict(v.meta))
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
        if decision >= len(self._arrival):
            raise ValueError(f"decision {decision} out of range: the workload has {len(self._arrival)} requests")
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
        while heap:
            ev = heap[0]
            if ev[0] > stop_t:
                break
            if ev[1] == _ARRIVAL:
                if self._next_decision >= stop_d:
                    break
                pop(heap)
                self._now = ev[0]
                out = self._on_arrival(ev[0], ev[4])
            else:
                pop(heap)
                ins = inst[ev[4]]
                if ev[5] != ins.version:
                    continue  # stale (the plan was cut)
                self._now = ev[0]
                out = self._on_plan_end(ins)
            self._events += 1
            for e in out:
                push(heap, e)

    def check_invariants(self) -> None:
        """Verify the KV/cache bookkeeping of every instance; ``AssertionError`` on a breach.

        Checks: occupancy = cached blocks + private reservations <= capacity; reference
        counts equal the number of running requests holding each block; every block of a
        running request (pinned) is cached and never on the eviction list; the eviction list
        holds exactly the unreferenced blocks; computed blocks are a subset of the cache.
        """
        bs = self._bs
        cap = self._cap
        for ins in self._inst:
            holders = [r for r in ins.prefilling] + [r for _, r in ins.fin]
            counts: dict[int, int] = {}
            for r in holders:
                for h in self._refs[r]:
                    counts[h] = counts.get(h, 0) + 1
            priv = sum(self._priv[r] for r in holders)
            assert ins.used == len(ins.cache) * bs + priv, (ins.idx, ins.used)
            assert ins.used <= cap, (ins.idx, ins.used, cap)
            for h, c in ins.cache.items():
                assert c == counts.get(h, 0), (ins.idx, h, c, counts.get(h, 0))
                assert (c == 0) == (h in ins.lru), (ins.idx, h)
            assert all(h in ins.cache for h in counts), ins.idx
            assert set(ins.lru) <= ins.ready <= set(ins.cache), ins.idx
            assert ins.n_dec == len(ins.fin), ins.idx

    # ------------------------------------------------------------------ handlers

    def _event(self, ins: _Instance) -> tuple:
        self._seq += 1
        ins.version += 1
        return (ins.plan_end, _PLAN_END, self._seq, 1, ins.idx, ins.version)

    def _on_arrival(self, t: float, rid: int) -> list[tuple]:
        d = self._next_decision
        self._next_decision = d + 1
        view = self._snapshot(t, rid, d)
        target = self._forced.pop(d, None)
        if target is None:
            target = self.policy.choose(view)
            if not 0 <= target < self._n:
                raise ValueError(f"policy {self.policy.name!r} returned instance {target} out of range")
        if self._log is not None:
            self._log.chosen[d] = target
        ins = self._inst[target]
        self._where[rid] = target
        if not self._approx:
            est = int(view.uncached[target])
        else:
            est = self._inp[rid] - self._hit_blocks(ins, rid, False) * self._bs
        self._est[rid] = est
        ins.queued += est
        ins.waiting.append(rid)
        if self._approx:
            h0 = self._hoff[rid]
            ins.approx.update(self._hashes[h0 : h0 + self._nfull[rid]])
        out: list[tuple] = []
        if ins.plan == 0:
            if self._plan(ins, t):
                out.append(self._event(ins))
        elif ins.plan == 2 and ins.plan_m > 1:
            k = self._iterations_started(ins, t)
            if k < ins.plan_m:
                ins.plan_m = k
                ins.plan_end = ins.plan_start + self._run_time(ins.n_dec, ins.ctx_sum, k)
                out.append(self._event(ins))
        if self._delay > 0:
            self._record(ins, t)
        return out

    def _on_plan_end(self, ins: _Instance) -> list[tuple]:
        t = ins.plan_end
        if ins.plan == 1:
            self._apply_mixed(ins, t)
        else:
            self._apply_run(ins, t)
        ins.plan = 0
        out = [self._event(ins)] if self._plan(ins, t) else []
        if self._delay > 0:
            self._record(ins, t)
        return out

    # ------------------------------------------------------------------ snapshot

    def _hit_blocks(self, ins: _Instance, rid: int, approximate: bool) -> int:
        """Cached full blocks of ``rid`` on ``ins`` (capped), precise or approximate view."""
        h0 = self._hoff[rid]
        a = ins.approx if approximate else ins.ready
        k = 0
        for h in self._hashes[h0 : h0 + self._maxhit[rid]]:
            if h not in a:
                break
            k += 1
        return k

    def _signals(self, ins: _Instance) -> tuple[int, int, int, int]:
        return (ins.queued, len(ins.prefilling) + ins.n_dec, len(ins.waiting),
                ins.used - len(ins.lru) * self._bs)

    def _record(self, ins: _Instance, t: float) -> None:
        """Append the instance's load signals at ``t`` to its history (delayed views only)."""
        ins.hist_t.append(t)
        ins.hist_v.append(self._signals(ins))

    def _snapshot(self, t: float, rid: int, d: int) -> DecisionView:
        bs = self._bs
        inp = self._inp[rid]
        approx = self._approx
        delay = self._delay
        cap = self._cap
        h0 = self._hoff[rid]
        hs = self._hashes
        blocks = hs[h0 : h0 + self._maxhit[rid]]
        unc = []
        for ins in self._inst:
            a = ins.approx if approx else ins.ready
            k = 0
            for h in blocks:
                if h not in a:
                    break
                k += 1
            unc.append(inp - k * bs)
        if delay == 0:
            q = [ins.queued for ins in self._inst]
            r = [len(ins.prefilling) + ins.n_dec for ins in self._inst]
            w = [len(ins.waiting) for ins in self._inst]
            kv = [(ins.used - len(ins.lru) * bs) / cap for ins in self._inst]
        else:
            q, r, w, kv = self._delayed(t, delay, cap)
        return self._snapshot_rows(t, rid, d, inp, unc, q, r, w, kv)

    def _delayed(self, t: float, delay: float, cap: int) -> tuple[list, list, list, list]:
        """Load signals as of ``t - delay`` from each instance's signal history."""
        q, r, w, kv = [], [], [], []
        for ins in self._inst:
            j = bisect.bisect_right(ins.hist_t, t - delay) - 1
            s = ins.hist_v[j] if j >= 0 else (0, 0, 0, 0)
            if j > 64:  # forget history nobody will look at again
                del ins.hist_t[:j]
                del ins.hist_v[:j]
            q.append(s[0])
            r.append(s[1])
            w.append(s[2])
            kv.append(s[3] / cap)
        return q, r, w, kv

    def _snapshot_rows(self, t: float, rid: int, d: int, inp: int, unc: list, q: list, r: list,
                       w: list, kv: list) -> DecisionView:
        log = self._log
        if log is None:
            log = self._row
            d_row = 0
        else:
            d_row = d
            log.request[d] = rid
            log.time_s[d] = t
            log.input_tokens[d] = inp
        log.uncached[d_row] = unc
        log.queued[d_row] = q
        log.running[d_row] = r
        log.waiting[d_row] = w
        log.kv_usage[d_row] = kv
        rows = [log.uncached[d_row], log.queued[d_row], log.running[d_row], log.waiting[d_row],
                log.kv_usage[d_row]]
        for row in rows:  # policies get read-only views of the log rows
            row.flags.writeable = False
        return DecisionView(d, t, inp, *rows)

    # ------------------------------------------------------------------ instance mechanics

    def _run_time(self, n: int, ctx: int, m: int) -> float:
        c0, _, c_dec, c_kv, _ = self._c
        return m * (c0 + c_dec * n + c_kv * ctx) + c_kv * n * (m * (m - 1) // 2)

    def _iterations_started(self, ins: _Instance, t: float) -> int:
        """Iterations of the current decode stretch that start at or before ``t`` (>= 1)."""
        D = t - ins.plan_start
        c0, _, c_dec, c_kv, _ = self._c
        n, K = ins.n_dec, ins.ctx_sum
        a = c_kv * n / 2.0
        b = c0 + c_dec * n + c_kv * K - a
        # Largest j with T(j) <= D, T(j) = a j^2 + b j.
        if a > 0:
            j = int((-b + math.sqrt(b * b + 4 * a * max(D, 0.0))) / (2 * a))
        else:
            j = int(D / b) if b > 0 else ins.plan_m
        j = max(0, min(j, ins.plan_m))
        while j + 1 <= ins.plan_m and self._run_time(n, K, j + 1) <= D:
            j += 1
        while j > 0 and self._run_time(n, K, j) > D:
            j -= 1
        return min(j + 1, ins.plan_m)

    def _try_admit(self, ins: _Instance, rid: int) -> bool:
        """Admit ``rid`` (waiting head) if its KV need fits; pins hits, evicts LRU blocks."""
        bs = self._bs
        cache = ins.cache
        h0 = self._hoff[rid]
        hs = self._hashes
        hit = self._hit_blocks(ins, rid, False)
        nfull = self._nfull[rid]
        new = [h for h in hs[h0 + hit : h0 + nfull] if h not in cache]
        if len(set(new)) != len(new):  # a hash repeated inside one prompt: keep the first
            new = list(dict.fromkeys(new))
        dup = nfull - hit - len(new)
        inp = self._inp[rid]
        priv = inp - nfull * bs + dup * bs + self._out[rid]
        need = len(new) * bs + priv
        hits = hs[h0 : h0 + hit]
        pinned_free = sum(map(ins.lru.__contains__, hits))
        free = self._cap - ins.used
        if need > free + (len(ins.lru) - pinned_free) * bs:
            return False
        lru = ins.lru
        for h in hits:
            c = cache[h]
            if not c:
                del lru[h]
            cache[h] = c + 1
        short = need - (self._cap - ins.used)
        if short > 0:
            k = -(-short // bs)
            victims = list(islice(lru, k))  # least recently used first
            for h in victims:
                del lru[h]
                del cache[h]
            ins.ready.difference_update(victims)
            ins.used -= k * bs
        for h in new:
            cache[h] = 1
        ins.used += need
        if ins.used > ins.peak:
            ins.peak = ins.used
        self._refs[rid] = hits + new
        self._new[rid] = new
        self._priv[rid] = priv
        self._cached[rid] = hit * bs
        self._ctx[rid] = hit * bs
        rem = inp - hit * bs
        self._rem[rid] = rem
        ins.queued += rem - self._est[rid]
        return True

    def _plan(self, ins: _Instance, t: float) -> bool:
        """Plan the iteration starting at ``t``; False when the instance has nothing to do."""
        n_dec = ins.n_dec
        budget = self._budget - n_dec
        chunks: list[tuple[int, int]] = []
        rem = self._rem
        for rid in ins.prefilling:
            if budget <= 0:
                break
            c = rem[rid] if rem[rid] < budget else budget
            chunks.append((rid, c))
            budget -= c
        waiting = ins.waiting
        max_batch = self._max_batch
        while budget > 0 and waiting and len(ins.prefilling) + n_dec < max_batch:
            rid = waiting[0]
            if not self._try_admit(ins, rid):
                break
            waiting.popleft()
            ins.prefilling.append(rid)
            c = rem[rid] if rem[rid] < budget else budget
            chunks.append((rid, c))
            budget -= c
        ins.plan_start = t
        if chunks:
            c0, c_pf, c_dec, c_kv, c_att = self._c
            pt = 0
            kv = ins.ctx_sum
            att = 0.0
            ctx = self._ctx
            for rid, c in chunks:
                pt += c
                kv += ctx[rid] + c
                att += c * (ctx[rid] + c / 2.0)
            ins.plan = 1
            ins.plan_chunks = chunks
            ins.plan_m = 1
            ins.plan_end = t + c0 + c_pf * pt + c_dec * n_dec + c_kv * kv + c_att * att
            return True
        if n_dec:
            m = ins.fin[0][0] - ins.steps if self._ff else 1
            ins.plan = 2
            ins.plan_m = m
            ins.plan_end = t + self._run_time(n_dec, ins.ctx_sum, m)
            return True
        ins.plan = 0
        return False

    def _apply_mixed(self, ins: _Instance, t: float) -> None:
        rem, ctx = self._rem, self._ctx
        done_prefill = []
        ins.dec_total += ins.n_dec
        for rid, c in ins.plan_chunks:
            ins.pf_total += c
            rem[rid] -= c
            ctx[rid] += c
            ins.queued -= c
            if rem[rid] == 0:
                done_prefill.append(rid)
        ins.plan_chunks = []
        self._iterations += 1
        ins.steps += 1
        ins.ctx_sum += ins.n_dec
        self._complete(ins, t)
        if done_prefill:
            gone = set(done_prefill)
            ins.prefilling = [r for r in ins.prefilling if r not in gone]
            for rid in done_prefill:
                ins.ready.update(self._new[rid])
                self._first[rid] = t
                ins.dec_total += 1
                out = self._out[rid]
                if out == 1:
                    self._release(ins, rid, t)
                else:
                    ins.n_dec += 1
                    ins.ctx_sum += self._inp[rid] + 1
                    heapq.heappush(ins.fin, (ins.steps + out - 1, rid))

    def _apply_run(self, ins: _Instance, t: float) -> None:
        m = ins.plan_m
        self._iterations += m
        ins.dec_total += m * ins.n_dec
        ins.steps += m
        ins.ctx_sum += m * ins.n_dec
        self._complete(ins, t)

    def _complete(self, ins: _Instance, t: float) -> None:
        fin = ins.fin
        while fin and fin[0][0] <= ins.steps:
            _, rid = heapq.heappop(fin)
            ins.n_dec -= 1
            ins.ctx_sum -= self._inp[rid] + self._out[rid]
            self._release(ins, rid, t)

    def _release(self, ins: _Instance, rid: int, t: float) -> None:
        cache, lru = ins.cache, ins.lru
        for h in reversed(self._refs[rid]):  # tail blocks become eviction candidates first
            c = cache[h] - 1
            cache[h] = c
            if not c:
                lru[h] = None
        ins.used -= self._priv[rid]
        self._refs[rid] = None
        self._new[rid] = None
        self._done[rid] = t

    # ------------------------------------------------------------------ result

    def _result(self) -> SimResult:
        arrival = np.asarray(self._arrival)
        first = np.asarray(self._first)
        done = np.asarray(self._done)
        out = np.asarray(self._out, dtype=np.int64)
        ttft = first - arrival
        e2e = done - arrival
        with np.errstate(invalid="ignore", divide="ignore"):
            tpot = np.where(out > 1, (done - first) / np.maximum(out - 1, 1), np.nan)
        log = None
        if self._log is not None:
            log = self._log.head(self._next_decision)
            if self._heap:  # unfinished: the simulator keeps writing its log, so copy
                log = SnapshotLog(**{c: np.array(getattr(log, c)) for c in log._columns()},
                                  meta=dict(log.meta))
        cfg = self.config.to_dict()
        cfg["seed"] = self.seed
        return SimResult(
            arrival_s=arrival,
            instance=np.asarray(self._where, dtype=np.int32),
            input_tokens=np.asarray(self._inp, dtype=np.int64),
            output_tokens=out,
            cached_tokens=np.asarray(self._cached, dtype=np.int64),
            ttft_s=ttft,
            tpot_s=tpot,
            e2e_s=e2e,
            snapshots=log,
            iterations=self._iterations,
            events=self._events,
            peak_kv_tokens=np.asarray([i.peak for i in self._inst], dtype=np.int64),
            prefill_tokens_computed=np.asarray([i.pf_total for i in self._inst], dtype=np.int64),
            output_tokens_produced=np.asarray([i.dec_total for i in self._inst], dtype=np.int64),
            end_time_s=self._now,
            policy=self.policy.spec,
            config=cfg,
        )


def simulate(workload: Workload, config: SimConfig, policy: Policy | str, *, seed: int = 0) -> SimResult:
    """Run a whole workload: ``Simulator(workload, config, policy, seed=seed).run()``."""
    return Simulator(workload, config, policy, seed=seed).run()
