"""Second engine: every instance is vLLM v1's own scheduler, timed by the same latency model.

The fast engine (:mod:`lmetric_theory.sim.engine`) models vLLM v1's scheduler; this engine
*is* it. Each instance is one real ``vllm.v1.core.sched.scheduler.Scheduler`` (real KV
cache manager, per-block prefix caching, chunked prefill, ``max_num_seqs``,
``max_num_batched_tokens``, preemption by recompute), built and fed by
:mod:`lmetric_theory.sim.vllm_adapter`, the only module that touches vLLM internals. Each
step's duration is the fast engine's :class:`~lmetric_theory.sim.latency.LatencyModel` of the
batch the scheduler chose, so both engines share one clock model and differ only in what they
schedule.

Semantics
---------
- A request that has arrived by a step's start is added to its instance before that step
  (vLLM's engine core drains its input queue between steps). An idle instance starts a step
  at the arrival time, after every request of that instant is routed.
- A step of ``chunks`` (prefilling requests: context ``x`` tokens, chunk ``c`` tokens) and
  ``n`` decoding requests with total context ``K`` takes
  ``c0 + c_pf * sum c + c_dec * n + c_kv * (K + sum (x + c)) + c_att * sum c (x + c / 2)``.
- A request gets its first token (TTFT) at the end of the step that computes its last
  prompt token, and finishes at the end of the step that produces its last output token.
- ``cached_tokens`` is the prefix-cache hit at the request's first admission.
- Closed loop (a workload whose ``closed_loop`` is True, or any workload under
  ``config.concurrency``): a session's first request arrives at its ``start_s`` (under a
  cap: at the admission of its session), a later one ``delay_s`` after the request it
  waits for has finished. Under a cap of ``N`` sessions, sessions are admitted in index
  order, the first ``N`` at 0 s and each later one when an active session's last request
  finishes (a workload without sessions: one-turn sessions in arrival order). A request
  released at the end of a step (delay 0, or an admission) is routed before any instance
  starts its next step, so it can join that step. Arrivals of one instant are routed in
  request order. Closed-loop instances are coupled, so the replay runs in one process.
- Output blocks: a request's sampled tokens carry the ids of its context's blocks
  (:func:`output_token_ids`), so vLLM caches the blocks its output fills and the next turn
  of the session hits them where this one ran.
- Routing: either a fixed assignment (one instance per request; instances are then
  independent and may run in parallel processes) or a :class:`~lmetric_theory.policies.base.
  Policy` given a :class:`~lmetric_theory.policies.base.DecisionView` built from the
  schedulers' state at the arrival (running, waiting, KV usage, each instance's prefix hit
  from its KV cache manager) and the router's own counters (a
  :class:`~lmetric_theory.sim.scheduler.RouterCounters`, updated as the fast engine updates it).
  Router replicas, a KV event lag, approximate indexes and delayed signals replace that view
  by :class:`~lmetric_theory.sim.vllm_routerstate.VllmRouterState` (docs/router_state.md).
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import multiprocessing
from typing import Any

import numpy as np

from lmetric_theory.sim.config import tpot_s
from lmetric_theory.sim.latency import LatencyModel
from lmetric_theory.sim.scheduler import RouterCounters
from lmetric_theory.sim.vllm_adapter import (
    StepBatch,
    VllmInstance,
    require_vllm,
)
from lmetric_theory.sim.vllm_routerstate import VllmRouterState
from lmetric_theory.workload.base import Workload

__all__ = ["DEFAULT_BLOCK_SIZE", "output_token_ids", "simulate_vllm", "step_time", "token_ids"]

#: vLLM's default KV block size, tokens.
DEFAULT_BLOCK_SIZE = 16


def token_ids(workload: Workload, rid: int) -> list[int]:
    """Fabricated prompt token ids of request ``rid`` (see the adapter's module docstring).

    Token ``j`` is the hash of the workload block holding it (``>= 0``), or ``-(rid + 1)``
    past the request's hash list, so equal prefixes of blocks give equal tokens.
    """
    L = int(workload.input_tokens[rid])
    bs = int(workload.block_size)
    hs = workload.blocks(rid).tolist()
    out: list[int] = []
    for k, h in enumerate(hs):
        n = min(bs, L - k * bs)
        if n <= 0:
            break
        out.extend([int(h)] * n)
    if len(out) < L:
        out.extend([-(rid + 1)] * (L - len(out)))
    return out


def output_token_ids(workload: Workload, rid: int) -> list[int] | None:
    """Fabricated ids of request ``rid``'s sampled tokens, or None (request-unique ids).

    A request's context is its prompt (``L`` tokens) followed by its output (``m`` tokens).
    Output token ``q`` sits at context position ``L + q``: in the prompt's last, partial
    workload block it carries that block's hash (the request-unique id when the hash list
    does not reach it); in a later block it carries the hash of that block from
    :meth:`Workload.output_blocks`, past that list the request-unique ``-(rid + 1)``. The
    next turn of a session, whose prompt holds the same ids at the same positions, then
    shares vLLM's chained block hashes with the blocks this request's decode filled.

    Returns
    -------
    list of int, length ``m``, or None
        None when the workload has no output block hashes (every sampled token then gets
        the request-unique id, as for open-loop traces).
    """
    if workload.output_hash_ids is None:
        return None
    L = int(workload.input_tokens[rid])
    m = int(workload.output_tokens[rid])
    bs = int(workload.block_size)
    hs = workload.blocks(rid)
    ob = workload.output_blocks(rid).tolist()
    uniq = -(rid + 1)
    end = L + m
    out: list[int] = []
    p = L
    if L % bs:
        k = L // bs
        stop = min((k + 1) * bs, end)
        out.extend([int(hs[k]) if k < hs.shape[0] else uniq] * (stop - p))
        p = stop
    j = 0
    while p < end:
        stop = min(p + bs, end)
        out.extend([ob[j] if j < len(ob) else uniq] * (stop - p))
        p = stop
        j += 1
    return out


class _Arrivals:
    """When each request arrives: the workload's schedule (open loop) or from completions.

    ``heap`` holds ``(time, request)`` of requests that will arrive; ``arrival`` the actual
    arrival of every request scheduled so far (NaN until then). :meth:`release` schedules
    what a finished request lets in.
    """

    def __init__(self, workload: Workload, rids: list[int], cap: int | None) -> None:
        n = len(workload)
        self.arrival = np.full(n, np.nan)
        self.cap = cap
        self.closed = cap is not None or workload.closed_loop
        if not self.closed:
            a = np.asarray(workload.arrival_s, dtype=np.float64)
            self.arrival[rids] = a[rids]
            # Sorted by (time, request): already a heap.
            self.heap: list[tuple[float, int]] = [(float(a[r]), int(r)) for r in rids]
            return
        s = workload.sessions
        if s is None:  # one-turn sessions in arrival order
            self.session = np.arange(n, dtype=np.int64)
            self.first = np.arange(n, dtype=np.int64)
            start = np.asarray(workload.arrival_s, dtype=np.float64)
            self.offsets = np.zeros(n + 1, dtype=np.int64)
            self.children = np.zeros(0, dtype=np.int64)
            self.delay = np.zeros(n)
        else:
            self.session, self.first = s.session, s.first
            start = s.start_s
            self.offsets, self.children = s.children()
            self.delay = s.delay_s
        n_sessions = int(self.first.shape[0])
        self.left = np.bincount(self.session, minlength=n_sessions).astype(np.int64)
        self.heap = []
        if cap is None:
            for k in range(n_sessions):
                self._push(float(start[k]), int(self.first[k]))
            self.next_session = n_sessions
        else:
            m = min(int(cap), n_sessions)
            for k in range(m):
                self._push(0.0, int(self.first[k]))
            self.next_session = m

    def _push(self, t: float, rid: int) -> None:
        self.arrival[rid] = t
        heapq.heappush(self.heap, (t, rid))

    def release(self, rid: int, t: float) -> None:
        """Request ``rid`` finished at ``t`` (seconds): schedule its children
        (``t + delay_s``) and, under a cap, the next session when its session ended."""
        o = self.offsets
        for j in self.children[o[rid]:o[rid + 1]].tolist():
            self._push(t + float(self.delay[j]), j)
        if self.cap is not None:
            k = int(self.session[rid])
            self.left[k] -= 1
            if self.left[k] == 0 and self.next_session < self.first.shape[0]:
                self._push(t, int(self.first[self.next_session]))
                self.next_session += 1


def step_time(latency: LatencyModel, batch: StepBatch) -> float:
    """Duration of one step of the batch vLLM scheduled, seconds
    (:meth:`LatencyModel.step_end <lmetric_theory.sim.latency.LatencyModel.step_end>` from 0)."""
    pt = 0
    kv = batch.decode_kv_tokens
    att = 0.0
    for _, x, n in batch.chunks:
        pt += n
        kv += x + n
        att += n * (x + n / 2.0)
    return latency.step_end(0.0, pt, batch.decode_seqs, kv, att)


class _Replay:
    """Event loop over ``instances`` (indices into ``config``'s cluster) of one replay."""

    def __init__(self, workload: Workload, config: Any, block_size: int, rids: list[int],
                 assignment: np.ndarray | None, policy: Any, instances: list[int],
                 state: VllmRouterState | None = None) -> None:
        self.w = workload
        self.state = state
        self.cfg = config
        self.bs = int(block_size)
        self.rids = rids
        self.assignment = assignment
        self.policy = policy
        self.ids = instances
        n = len(workload)
        self.lat = config.latency
        cap_tokens = (config.kv_capacity_tokens if getattr(config, "kv_capacity_blocks", None) is None
                      else int(config.kv_capacity_blocks) * int(workload.block_size))
        self.num_blocks = int(getattr(config, "vllm_num_blocks", 0) or cap_tokens // self.bs)
        longest = int(np.max(workload.input_tokens + workload.output_tokens)) if n else 1
        self.inst = {
            i: VllmInstance(num_blocks=self.num_blocks, block_size=self.bs,
                            max_num_seqs=config.max_batch,
                            max_num_batched_tokens=config.token_budget,
                            max_model_len=longest + 1,
                            kv_events=state is not None and state.events)
            for i in instances
        }
        self.arrivals = _Arrivals(workload, rids, config.concurrency)
        self.first = np.full(n, np.nan)
        self.done = np.full(n, np.nan)
        self.last = np.full(n, np.nan)
        self.itl: dict[float, int] = {}
        self.busy_s = dict.fromkeys(instances, 0.0)
        self.batch_integral = dict.fromkeys(instances, 0.0)
        self.cached = np.full(n, -1, dtype=np.int64)
        self.where = np.full(n, -1, dtype=np.int32)
        self.est = np.zeros(n, dtype=np.int64)
        self.pred = np.full(n, -1, dtype=np.int64)  # predicted prefix hit at dispatch, tokens
        self.iterations = 0
        self.pf = dict.fromkeys(instances, 0)
        self.dec = dict.fromkeys(instances, 0)
        self.peak = dict.fromkeys(instances, 0)
        k = len(instances)
        self.router = RouterCounters(k)
        if getattr(policy, "active_sequences", False):  # Dynamo's (dynamo-kv only)
            from lmetric_theory.sim.active_blocks import ActivePromptBlocks
            self.router.blocks = ActivePromptBlocks(k)
            if state is not None and state.R > 1:  # each replica's own (no replica sync)
                for c in state.counters:
                    c.blocks = ActivePromptBlocks(k)
        self.ratio = max(int(workload.block_size) // self.bs, 1)  # engine blocks per trace block
        self.pos = {i: j for j, i in enumerate(instances)}
        self.now = 0.0
        self.pending: dict[int, list[Any]] = {}
        self.busy: dict[int, tuple[float, Any, StepBatch]] = {}
        self.view_fields = None

    # -------------------------------------------------------------- routing

    def _view(self, d: int, t: float, rid: int, req: Any) -> Any:
        from lmetric_theory.policies.base import DecisionView

        inp = int(self.w.input_tokens[rid])
        st = self.state
        if st is None:
            hits = [self.inst[i].cached_prefix_tokens(req) // self.bs for i in self.ids]
            r = self.router
            sig = [self._signals(i) for i in self.ids]
        else:  # replicas, a lagged or approximate index, delayed signals
            st.begin(d, rid, t)
            if st.approximate:
                hits = st.approximate_hits(self._trace_keys(rid), (inp - 1) // self.bs)
            elif st.events:
                hits = st.mirror_hits(*self.inst[self.ids[0]].lookup_keys(req))
            else:
                hits = [self.inst[i].cached_prefix_tokens(req) // self.bs for i in self.ids]
            r = st.own_counters()
            sig = st.engine_signals(t, [self._signals(i) for i in self.ids])
        queued, running, waiting, kv = zip(*sig, strict=True)
        vals = {
            "decision": d, "time_s": t, "input_tokens": inp,
            "uncached": np.asarray([inp - h * self.bs for h in hits], dtype=np.int32),
            "queued": np.asarray(queued, dtype=np.int32),
            "running": np.asarray(running, dtype=np.int32),
            "waiting": np.asarray(waiting, dtype=np.int32),
            "kv_usage": np.asarray(kv, dtype=np.float32),
            "hit_blocks": np.asarray(hits, dtype=np.int32),
            "block_size": self.bs,
            "router_queued": np.asarray([max(q, 0) for q in r.queued], dtype=np.int64),
            "router_inflight": np.asarray(r.inflight, dtype=np.int64),
            "router_all_tokens": np.asarray(r.all_tokens, dtype=np.int64),
            "router_inflight_new_tokens": np.asarray(r.inflight_new, dtype=np.int64),
            "prefix_class": int(self.w.blocks(rid)[0]) if self.w.blocks(rid).size else -1,
        }
        if self.view_fields is None:
            fields = dataclasses.fields(DecisionView)
            required = [f.name for f in fields if f.default is dataclasses.MISSING
                        and f.default_factory is dataclasses.MISSING]
            missing = [f for f in required if f not in vals]
            if missing:  # a DecisionView newer than this engine
                raise ValueError(f"vllm engine cannot fill DecisionView fields {missing}")
            self.view_fields = [f.name for f in fields if f.name in vals]
        vals = {f: vals[f] for f in self.view_fields}
        for v in vals.values():
            if isinstance(v, np.ndarray):
                v.flags.writeable = False
        view = DecisionView(**vals)
        blocks = self.router.blocks
        if blocks is not None and st is not None and st.R > 1:
            blocks = r.blocks  # the deciding replica's own active sequences
        if blocks is not None:
            from lmetric_theory.sim.router import active_sequence_view
            view = active_sequence_view(view, blocks, self.first, t, self.w.blocks(rid).tolist(),
                                        self.ratio, inp // self.bs)
        return view

    def _signals(self, i: int) -> tuple[int, int, int, float]:
        """Instance ``i``'s engine-reported signals now: queued prefill tokens, running and
        waiting requests (routed ones not yet handed to the scheduler wait: they join at the
        next step), KV usage."""
        ins = self.inst[i]
        return (self._engine_queued(i), ins.running, ins.waiting + len(self.pending[i]),
                ins.kv_usage)

    def _trace_keys(self, rid: int) -> list[int]:
        """The workload block keys the router records as sent with ``rid`` and looks it up
        by (its approximate index): the prompt's block hashes, then its output's."""
        keys = self.w.blocks(rid).tolist()
        if self.w.output_hash_ids is not None:
            keys += self.w.output_blocks(rid).tolist()
        return keys

    def _record(self, i: int, t: float) -> None:
        """Keep instance ``i``'s engine signals at ``t`` for a delayed view."""
        st = self.state
        if st is not None and st.delay > 0:
            st.record(self.pos[i], t, self._signals(i))

    def _engine_queued(self, i: int) -> int:
        """The engine's queued prefill tokens, as the fast engine counts them, tokens.

        Routed or waiting requests never admitted count their predicted new tokens; preempted
        ones every token (recompute); running ones the tokens not computed before the step in
        progress (vLLM advances its counters when it schedules); decoding ones nothing.
        """
        ins = self.inst[i]
        q = sum(int(self.est[int(r.request_id)]) for r in self.pending[i])
        step = self.busy[i][1].num_scheduled_tokens if i in self.busy else {}
        running = {x.request_id for x in ins.scheduler.running}
        for rid, r in ins.scheduler.requests.items():
            if r.is_finished():
                continue
            if rid in running:
                rem = r.num_tokens - (r.num_computed_tokens - step.get(rid, 0))
                q += rem if rem > 1 else 0
            elif r.num_preemptions:
                q += r.num_tokens
            else:
                q += int(self.est[int(rid)])
        return q

    def _route(self, d: int, rid: int, t: float) -> tuple[int, Any]:
        toks = token_ids(self.w, rid)
        out = int(self.w.output_tokens[rid])
        arr = float(self.arrivals.arrival[rid])
        if self.policy is None:
            target = int(self.assignment[rid])
            req = self.inst[target].make_request(rid, toks, out, arr)
            hit = self.inst[target].cached_prefix_tokens(req)
        else:
            # One Request (its block hashes are the same on every instance) serves every lookup.
            req = self.inst[self.ids[0]].make_request(rid, toks, out, arr)
            view = self._view(d, t, rid, req)
            target = int(self.policy.choose(view))
            if target not in self.inst:
                raise ValueError(f"policy returned instance {target} out of range")
            hit = int(view.input_tokens - view.uncached[self.pos[target]])
        j = self.pos[target]
        est = len(toks) - hit
        self.est[rid] = est
        self.pred[rid] = hit
        self.router.dispatch(j, len(toks), est)
        if self.state is not None:
            self.state.dispatched(j, rid, len(toks), est, self._trace_keys(rid), t)
        if self.router.blocks is not None:
            keys = self.w.blocks(rid).tolist()
            self.router.blocks.add(j, rid, keys, self.ratio, len(toks) // self.bs, est)
            if self.state is not None and self.state.R > 1:  # and the deciding replica's
                self.state.own_counters().blocks.add(j, rid, keys, self.ratio,
                                                     len(toks) // self.bs, est)
        self.where[rid] = target
        return target, req

    # -------------------------------------------------------------- loop

    def run(self) -> None:
        heap = self.arrivals.heap
        pending: dict[int, list[Any]] = {i: [] for i in self.ids}
        busy: dict[int, tuple[float, Any, StepBatch]] = {}
        self.pending, self.busy = pending, busy
        d = 0
        while True:
            ta = heap[0][0] if heap else math.inf
            te = math.inf
            for tend, _, _ in busy.values():
                if tend < te:
                    te = tend
            if ta == math.inf and te == math.inf:
                break
            if ta <= te:
                t = ta
                d = self._route_instant(d, t)
                for i in self.ids:
                    if i not in busy:
                        self._start(i, t, pending, busy)
            else:
                t = te
                ended = [i for i, (tend, _, _) in busy.items() if tend == te]
                for i in ended:
                    _, so, batch = busy.pop(i)
                    self._finish(i, t, so, batch)
                if heap and heap[0][0] == t:
                    # Released by these completions (delay 0 or an admission): routed
                    # before any instance starts its next step.
                    d = self._route_instant(d, t)
                    for i in self.ids:
                        if i not in busy:
                            self._start(i, t, pending, busy)
                else:
                    for i in ended:
                        self._start(i, t, pending, busy)
            self.now = t
        for i, ins in self.inst.items():
            if ins.unfinished:
                raise ValueError(f"instance {i}: {ins.unfinished} requests never finished")

    def _route_instant(self, d: int, t: float) -> int:
        """Route every request arriving at ``t``, in request order; return the next decision."""
        heap = self.arrivals.heap
        while heap and heap[0][0] == t:
            _, rid = heapq.heappop(heap)
            target, req = self._route(d, rid, t)
            self.pending[target].append(req)
            self._record(target, t)
            d += 1
        return d

    def _start(self, i: int, t: float, pending: dict[int, list[Any]],
               busy: dict[int, tuple[float, Any, StepBatch]]) -> None:
        self._step(i, t, pending, busy)
        self._record(i, t)

    def _step(self, i: int, t: float, pending: dict[int, list[Any]],
              busy: dict[int, tuple[float, Any, StepBatch]]) -> None:
        ins = self.inst[i]
        for req in pending[i]:
            ins.add(req, output_token_ids(self.w, int(req.request_id)))
        pending[i].clear()
        if not ins.unfinished:
            return
        so, batch = ins.schedule()
        st = self.state
        if st is not None:
            j = self.pos[i]
            inp = self.w.input_tokens
            # the router learns a request's real hit when the step admitting it is scheduled
            for rid, hit in batch.first_scheduled:
                st.admitted(j, rid, (int(inp[rid]) - hit) - int(self.est[rid]))
            if st.events:
                st.block_events(j, ins.take_block_events(), t)
        if not batch.chunks and not batch.decode_seqs:
            if ins.running == 0:
                rid = min(int(r) for r in ins.scheduler.requests)
                raise ValueError(
                    f"request {rid}: cannot be scheduled on instance {i} "
                    f"(KV pool of {self.num_blocks} blocks of {self.bs} tokens too small?)")
            ins.finish_step(so, batch)
            if st is not None and st.events:
                st.block_events(self.pos[i], ins.take_block_events(), t)
            return
        used = int(round(ins.kv_usage * (self.num_blocks - 1))) * self.bs
        if used > self.peak[i]:
            self.peak[i] = used
        dt = step_time(self.lat, batch)
        self.busy_s[i] += dt
        self.batch_integral[i] += (len(batch.chunks) + batch.decode_seqs) * dt
        busy[i] = (t + dt, so, batch)

    def _finish(self, i: int, t: float, so: Any, batch: StepBatch) -> None:
        ins = self.inst[i]
        j = self.pos[i]
        r = self.router
        for rid, hit in batch.first_scheduled:
            self.cached[rid] = hit
            r.admit(j, (int(self.w.input_tokens[rid]) - hit) - int(self.est[rid]))
        self.iterations += 1
        pt = sum(c for _, _, c in batch.chunks)
        self.pf[i] += pt
        r.prefill(j, pt)
        self.dec[i] += len(batch.emitted)
        r.emit(j, len(batch.emitted))
        last = self.last
        itl = self.itl
        for rid in batch.emitted:
            if math.isnan(self.first[rid]):
                self.first[rid] = t
            else:
                g = t - float(last[rid])
                itl[g] = itl.get(g, 0) + 1
            last[rid] = t
        arrivals = self.arrivals
        st = self.state
        if st is not None:
            st.step_end(j, batch.chunks, batch.emitted)
        for rid in ins.finish_step(so, batch):
            self.done[rid] = t
            total = int(self.w.input_tokens[rid]) + int(self.w.output_tokens[rid])
            r.finish(j, total, int(self.est[rid]), rid)
            if st is not None:
                st.finished(j, rid, total, int(self.est[rid]))
            if arrivals.closed:
                arrivals.release(rid, t)
        if st is not None:
            if st.events:
                st.block_events(j, ins.take_block_events(), t)
            self._record(i, t)

    def preemptions(self) -> np.ndarray:
        p = np.zeros(len(self.w), dtype=np.int64)
        for rid in self.rids:
            i = int(self.where[rid])
            if i >= 0:
                p[rid] = self.inst[i].preemptions(rid)
        return p


_JOB: dict[str, Any] = {}


def _worker(instances: list[int]) -> dict[str, Any]:
    w, cfg, bs, assignment = _JOB["w"], _JOB["cfg"], _JOB["bs"], _JOB["assignment"]
    rids = [int(r) for r in np.flatnonzero(np.isin(assignment, instances))]
    rep = _Replay(w, cfg, bs, rids, assignment, None, instances)
    rep.run()
    return _collect(rep)


def _collect(rep: _Replay) -> dict[str, Any]:
    return dict(first=rep.first, done=rep.done, cached=rep.cached, where=rep.where,
                pre=rep.preemptions(), pred=rep.pred, iterations=rep.iterations, now=rep.now, pf=rep.pf,
                dec=rep.dec, peak=rep.peak, arrival=rep.arrivals.arrival, itl=rep.itl,
                busy=rep.busy_s, bint=rep.batch_integral)


def simulate_vllm(workload: Workload, config: Any, policy: Any = None, *,
                  assignment: np.ndarray | None = None, seed: int = 0,
                  block_size: int | None = None, processes: int = 1) -> Any:
    """Replay ``workload`` with one real vLLM v1 scheduler per instance.

    Parameters
    ----------
    workload : Workload
        Requests sorted by arrival.
    config : SimConfig
        Cluster settings (instances, latency model, KV capacity, token budget, max batch).
    policy : Policy, PolicySpec or str, optional
        Closed-loop routing policy (a spec is built with ``seed``). Exactly one of
        ``policy`` and ``assignment`` is given.
    assignment : np.ndarray, shape (n,), int, optional
        Fixed instance of every request (e.g. round-robin ``arange(n) % N``).
    seed : int
        Seed for a policy built from a spec.
    block_size : int, optional
        vLLM KV block size, tokens (default: ``config.block_size`` if the config has one,
        else 16). The pool has ``capacity // block_size`` blocks, one of which vLLM keeps as
        its null block.
    processes : int
        With a fixed assignment of an open-loop replay, split the instances over this many
        processes (a closed-loop replay couples the instances and runs in one).

    Returns
    -------
    SimResult
        The fast engine's result type; ``config`` holds ``engine = "vllm"`` and
        ``vllm_version``; ``snapshots`` is None. ``arrival_s`` is the actual arrival
        (closed loop: from completions and admissions).

    Raises
    ------
    ValueError
        ``config.concurrency`` below 1 ("concurrency must be >= 1"), a bad assignment, an
        empty workload, or a request no instance can hold.

    Notes
    -----
    ``config.concurrency`` (at most that many sessions active; see the module docstring)
    is read with ``getattr`` and may be absent (no cap).
    """
    from lmetric_theory.sim.engine import SimResult

    version = require_vllm()
    if block_size is None:
        block_size = int(getattr(config, "block_size", DEFAULT_BLOCK_SIZE) or DEFAULT_BLOCK_SIZE)
    if (policy is None) == (assignment is None):
        raise ValueError("give exactly one of policy and assignment")
    n = len(workload)
    if n == 0:
        raise ValueError("workload is empty")
    N = int(config.n_instances)
    cap = config.concurrency
    if cap is not None and (isinstance(cap, bool) or int(cap) != cap or cap < 1):
        raise ValueError("concurrency must be >= 1")
    closed = cap is not None or workload.closed_loop
    spec = "fixed"
    replica = None
    if assignment is not None:
        assignment = np.asarray(assignment, dtype=np.int64)
        if assignment.shape != (n,) or assignment.min() < 0 or assignment.max() >= N:
            raise ValueError(f"assignment must have shape ({n},) with values in [0, {N})")
        procs = 1 if closed else max(1, min(processes, N))
        groups = [g for g in np.array_split(np.arange(N), procs) if g.size]
        if len(groups) > 1:
            _vllm_preload()
            _JOB.update(w=workload, cfg=config, bs=block_size, assignment=assignment)
            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(len(groups)) as pool:
                parts = pool.map(_worker, [g.tolist() for g in groups])
            _JOB.clear()
        else:
            rep = _Replay(workload, config, block_size, list(range(n)), assignment, None,
                          list(range(N)))
            rep.run()
            parts = [_collect(rep)]
    else:
        from lmetric_theory.policies import PolicySpec, make_policy
        if isinstance(policy, PolicySpec | str):
            policy = make_policy(policy, seed=seed)
        bind = getattr(policy, "bind_cluster", None)
        if bind is not None:  # a latency-predicting policy (predictor) gets the cluster's model
            bind(config.latency, config.token_budget)
        spec = policy.spec
        state = router_state(workload, config, block_size, seed)
        rep = _Replay(workload, config, block_size, list(range(n)), None, policy, list(range(N)),
                      state)
        rep.run()
        parts = [_collect(rep)]
        if state is not None:
            replica = np.asarray(state.replica_of, dtype=np.int32)
    first = np.full(n, np.nan)
    done = np.full(n, np.nan)
    cached = np.full(n, -1, dtype=np.int64)
    where = np.full(n, -1, dtype=np.int32)
    pre = np.zeros(n, dtype=np.int64)
    pf = np.zeros(N, dtype=np.int64)
    dec = np.zeros(N, dtype=np.int64)
    peak = np.zeros(N, dtype=np.int64)
    arrival = np.full(n, np.nan)
    pred = np.full(n, -1, dtype=np.int64)
    busy_s = np.zeros(N)
    bint = np.zeros(N)
    itl: dict[float, int] = {}
    iterations = 0
    end = 0.0
    for p in parts:
        m = p["where"] >= 0
        first[m], done[m], cached[m], where[m], pre[m], arrival[m] = (
            p["first"][m], p["done"][m], p["cached"][m], p["where"][m], p["pre"][m],
            p["arrival"][m])
        pred[m] = p["pred"][m]
        for i in p["pf"]:
            pf[i], dec[i], peak[i] = p["pf"][i], p["dec"][i], p["peak"][i]
            busy_s[i], bint[i] = p["busy"][i], p["bint"][i]
        for g, c in p["itl"].items():
            itl[g] = itl.get(g, 0) + c
        iterations += p["iterations"]
        end = max(end, p["now"])
    gaps = np.asarray(sorted(itl), dtype=np.float64)
    counts = np.asarray([itl[g] for g in gaps.tolist()], dtype=np.int64)
    s = workload.sessions
    session = (np.full(n, -1, dtype=np.int64) if s is None
               else np.asarray(s.session, dtype=np.int64).copy())
    turn = np.zeros(n, dtype=np.int64) if s is None else np.asarray(s.turn, dtype=np.int64).copy()
    out = np.asarray(workload.output_tokens, dtype=np.int64)
    tpot = tpot_s(first, done, out)
    cfg = config.to_dict()
    cfg.update(seed=int(seed), engine="vllm", vllm_version=version, block_size=int(block_size))
    vals = dict(
        arrival_s=arrival, instance=where,
        input_tokens=np.asarray(workload.input_tokens, dtype=np.int64), output_tokens=out,
        cached_tokens=cached, ttft_s=first - arrival, tpot_s=tpot, e2e_s=done - arrival,
        snapshots=None, iterations=iterations, events=iterations + n, peak_kv_tokens=peak,
        prefill_tokens_computed=pf, output_tokens_produced=dec, end_time_s=end, policy=spec,
        config=cfg, preemptions=pre,
        preemptions_per_instance=np.bincount(where[where >= 0], weights=pre[where >= 0],
                                             minlength=N).astype(np.int64),
        first_token_s=first, finish_s=done, session=session, turn=turn, itl_gap_s=gaps,
        itl_count=counts, batch_integral=bint, busy_s=busy_s,
        replica=(np.where(where >= 0, 0, -1).astype(np.int32) if replica is None  # one router
                 else replica),
        predicted_cached_tokens=pred,
    )
    names = {f.name for f in dataclasses.fields(SimResult)}
    missing = names - set(vals) - {f.name for f in dataclasses.fields(SimResult)
                                   if f.default is not dataclasses.MISSING
                                   or f.default_factory is not dataclasses.MISSING}
    if missing:
        raise ValueError(f"vllm engine cannot fill SimResult fields {sorted(missing)}")
    # Until SimResult carries per-request preemptions, the total rides in the config.
    cfg["preemptions_total"] = int(pre.sum())
    return SimResult(**{k: v for k, v in vals.items() if k in names})


def router_state(workload: Workload, config: Any, block_size: int,
                 seed: int) -> VllmRouterState | None:
    """The router state of a policy-routed replay, or None for one router with exact state
    and current signals (the engine's own counters and the schedulers' caches).

    A view other than that (replicas, a KV event lag, an approximate index, including
    ``view="approximate"``, or delayed engine signals) gets a :class:`VllmRouterState`
    with the fast engine's semantics (docs/router_state.md). Config fields it lacks read as
    the defaults.
    """
    from lmetric_theory.sim.routerstate import IndexSpec, ReplicaAssignment

    replicas = int(getattr(config, "router_replicas", 1))
    lag = float(getattr(config, "kv_event_lag_s", 0.0))
    delay = float(getattr(config, "signal_delay_s", 0.0))
    index = getattr(config, "index", IndexSpec())
    if getattr(config, "view", "precise") == "approximate":
        index = IndexSpec("approximate")
    if replicas == 1 and lag == 0 and delay == 0 and index.kind == "precise":
        return None
    sess = workload.sessions
    return VllmRouterState(
        int(config.n_instances), len(workload), replicas=replicas,
        assignment=getattr(config, "replica_assignment", ReplicaAssignment.ROUND_ROBIN),
        index=index, lag=lag, delay=delay,
        sessions=None if sess is None else np.asarray(sess.session).tolist(), seed=int(seed),
        ratio=max(int(workload.block_size) // int(block_size), 1))


def _vllm_preload() -> None:
    """Import vLLM in the parent so forked workers share the (slow) import."""
    from lmetric_theory.sim import vllm_adapter

    vllm_adapter._vllm()

