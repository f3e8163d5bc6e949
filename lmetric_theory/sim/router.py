"""The router's view of the cluster: what a policy is shown at each decision.

``precise`` looks the request up in each instance's prefix cache as it is; ``approximate``
in the set of blocks the router itself sent to each instance (never evicted). Engine-reported
signals (queued prefill tokens, running, waiting, KV usage) are read as of ``signal_delay_s``
seconds before the decision from a per-instance history of engine states. The router's own
counters (queued prefill tokens, in-flight requests, tokens in flight, new tokens in flight)
are current: the router updates them at dispatch and engine events correct them.
"""

from __future__ import annotations

import bisect
import dataclasses
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from lmetric_theory.policies.base import DecisionView
from lmetric_theory.sim.events import PlanKind
from lmetric_theory.sim.requests import Requests
from lmetric_theory.sim.scheduler import RouterCounters, Scheduler, Signals
from lmetric_theory.sim.snapshots import SIGNALS, SnapshotLog

__all__ = ["RouterView"]


class RouterView:
    """Builds :class:`DecisionView` rows from the instances and the router's counters.

    Parameters
    ----------
    req : Requests
        The simulator's request table (it names the keys a request is looked up by).
    instances : sequence of Scheduler
        The instances.
    counters : RouterCounters
        The router's own counters (updated here at dispatch, by the instances after).
    approximate : bool
        Use the router's own record of sent blocks as the cache view.
    delay : float
        Age of the engine-reported signals, seconds (0: current). The router's own
        counters and the cache view are never delayed.
    block : int
        Block size of the hit, tokens (the engine block size).
    ratio : int
        Engine blocks per workload hash block (1 for the ``reserve`` scheduler).
    log : SnapshotLog or None
        Where to write every decision's row (``None``: one scratch row is reused).
    """

    def __init__(self, req: Requests, instances: Sequence[Scheduler], counters: RouterCounters, *,
                 approximate: bool, delay: float, block: int, ratio: int,
                 log: SnapshotLog | None) -> None:
        n = len(instances)
        self.req = req
        self.inst = instances
        self.counters = counters
        self.approximate = approximate
        self.delay = delay
        self.bs = block
        self.ratio = ratio
        self.log = log
        self.row = SnapshotLog.empty(1, n) if log is None else None
        self._bind()
        self.approx: list[set[int]] = [set() for _ in range(n)]
        self.hist_t: list[list[float]] = [[] for _ in range(n)]
        self.hist_v: list[list[Signals]] = [[] for _ in range(n)]

    def clone(self, req: Requests, instances: Sequence[Scheduler],
              counters: RouterCounters) -> RouterView:
        """Independent copy bound to a fork's request table, instances and counters."""
        c = RouterView.__new__(RouterView)
        c.__dict__.update(self.__dict__)
        c.req, c.inst, c.counters = req, instances, counters
        for k in ("log", "row"):
            v = getattr(self, k)
            if v is not None:
                setattr(c, k, SnapshotLog(**{col: getattr(v, col).copy() for col in v._columns()},
                                          meta=dict(v.meta)))
        c._bind()
        c.approx = [s.copy() for s in self.approx]
        c.hist_t = [h.copy() for h in self.hist_t]
        c.hist_v = [h.copy() for h in self.hist_v]
        return c

    def __getstate__(self) -> dict[str, Any]:
        # The policy-facing arrays are views of the log's columns; pickle would turn them
        # into independent copies (the policy would then read signals frozen at pickling
        # time), so they are dropped here and re-made by __setstate__.
        state = dict(self.__dict__)
        state.pop("_wr", None)
        state.pop("_ro", None)
        state.pop("_mv", None)
        state.pop("_pack", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._bind()

    def _bind(self) -> None:
        """Writable signal columns of the log, byte views of them for :meth:`_rows`, and
        read-only views of them for policies."""
        log = self.log if self.log is not None else self.row
        self._wr = [getattr(log, name) for name, _ in SIGNALS]
        self._ro = []
        for a in self._wr:
            v = a.view()
            v.flags.writeable = False
            self._ro.append(v)
        # A row is written with one struct.pack_into per column (the same C conversion as
        # numpy's, int -> int32 and float -> float32, without building an array per column).
        self._mv = [memoryview(a).cast("B") for a in self._wr]
        n = self._wr[0].shape[1]
        self._pack = [struct.Struct(f"={n}{'f' if dt is np.float32 else 'i'}").pack_into
                      for _, dt in SIGNALS]

    # ------------------------------------------------------------------ dispatch

    def dispatched(self, ins: Scheduler, rid: int, view: DecisionView) -> int:
        """Record that ``rid`` went to ``ins`` (counters, sent blocks); its predicted new
        (uncached) tokens."""
        return self.dispatched_uncached(ins, rid, int(view.uncached[ins.idx]))

    def dispatched_uncached(self, ins: Scheduler, rid: int, uncached: int) -> int:
        """:meth:`dispatched` for a router view that showed ``uncached`` tokens on ``ins``."""
        req = self.req
        i = ins.idx
        est = ins.dispatch_estimate(rid, uncached)
        if self.approximate:
            self.approx[i].update(req.sent_keys(rid))
        c = self.counters
        c.dispatch(i, req.inp[rid], est)
        if c.blocks is not None:  # Dynamo's active sequences (only when a policy reads them)
            c.blocks.add(i, rid, req.sent_keys(rid), self.ratio, req.inp[rid] // self.bs, est)
        return est

    def record(self, ins: Scheduler, t: float) -> None:
        """Append the instance's engine signals at ``t`` to its history (delayed views only)."""
        self.hist_t[ins.idx].append(t)
        self.hist_v[ins.idx].append(ins.signals())

    # ------------------------------------------------------------------ snapshot

    def _hits(self, rid: int) -> list[int]:
        """The request's prefix hit on each instance in the router's cache view, blocks."""
        keys, limit = self.req.lookup_keys(rid)
        ratio = self.ratio
        if not self.approximate:
            return [ins.cache.hit(keys, ratio, limit) for ins in self.inst]
        out = []
        for a in self.approx:
            k = 0
            for h in keys:
                if h not in a:
                    break
                k += 1
            k *= ratio
            out.append(k if k < limit else limit)
        return out

    def uncached_on(self, t: float, rid: int, ins: Scheduler) -> int:
        """The uncached tokens of ``rid`` on ``ins`` in the view :meth:`snapshot` would build
        at ``t`` (a blind policy's decision: only the chosen instance is read). Only for the
        exact view without a log, a delay or Dynamo's active sequences (see
        :meth:`serves_blind`)."""
        if ins.plan is PlanKind.DECODE:
            ins.sync(t)  # as snapshot() does; the other instances catch up later, unchanged
        keys, limit = self.req.lookup_keys(rid)
        return self.req.inp[rid] - ins.cache.hit(keys, self.ratio, limit) * self.bs

    def serves_blind(self) -> bool:
        """Whether a blind policy may skip the view here: one exact router, no snapshot log,
        no signal delay, the precise index, no active-sequence counter."""
        return (type(self) is RouterView and self.log is None and self.delay == 0
                and not self.approximate and self.counters.blocks is None)

    def snapshot(self, t: float, rid: int, d: int) -> DecisionView:
        """The view of decision ``d`` (request ``rid`` at time ``t``), written to the log."""
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
            q, r, w, kv = zip(*[ins.load() for ins in inst], strict=True)
        else:
            q, r, w, kv = self._delayed(t)
        c = self.counters
        view = self._rows(t, rid, d, inp, unc, q, r, w, kv, hb, c.queued, c.inflight,
                          c.all_tokens, c.inflight_new)
        if c.blocks is not None:
            view = active_sequence_view(view, c.blocks, self.req.first, t,
                                        self.req.sent_keys(rid), self.ratio, inp // bs)
        return view

    def _delayed(self, t: float) -> tuple[list, list, list, list]:
        """Engine signals as of ``t - delay`` from each instance's signal history."""
        q, r, w, kv = [], [], [], []
        then = t - self.delay
        for ins, ht, hv in zip(self.inst, self.hist_t, self.hist_v, strict=True):
            j = bisect.bisect_right(ht, then) - 1
            s = hv[j] if j >= 0 else (0, 0, 0, 0.0, None)
            if j > 64:  # forget history nobody will look at again
                del ht[:j]
                del hv[:j]
            q.append(s[0])
            r.append(s[1])
            w.append(s[2])
            # inside a decode stretch KV usage grows between events: follow it to `then`
            kv.append(s[3] if s[4] is None else ins.kv_usage_at(s[4], then))
        return q, r, w, kv

    def _rows(self, t: float, rid: int, d: int, inp: int, *cols: Sequence) -> DecisionView:
        log = self.log
        if log is None:
            d_row = 0
        else:
            d_row = d
            log.request[d] = rid
            log.time_s[d] = t
            log.input_tokens[d] = inp
        off = d_row * self._wr[0].strides[0]
        for pack, mv, col in zip(self._pack, self._mv, cols, strict=True):
            pack(mv, off, *col)
        ro = self._ro  # policies get read-only views of the log rows
        req = self.req  # prefix class: the first full block's hash (-1 without one)
        pc = int(req.hashes[req.hoff[rid]]) if req.nfull[rid] else -1
        return DecisionView(d, t, inp, ro[0][d_row], ro[1][d_row], ro[2][d_row], ro[3][d_row],
                            ro[4][d_row], ro[5][d_row], self.bs, ro[6][d_row], ro[7][d_row],
                            ro[8][d_row], prefix_class=pc,
                            router_inflight_new_tokens=ro[9][d_row])


def active_sequence_view(view: DecisionView, blocks: Any, first: Any, t: float,
                         keys: Sequence[int], ratio: int, nblocks: int) -> DecisionView:
    """``view`` with Dynamo's active-sequence signals from ``blocks`` (an
    :class:`~lmetric_theory.sim.active_blocks.ActivePromptBlocks`) at time ``t``.

    ``first`` holds first-token times by request (NaN before one): prefills whose first
    token is at or before ``t`` are released first. Used by both the fast and the vLLM engine.
    """
    blocks.release_started(first, t)
    return dataclasses.replace(
        view,
        router_active_prompt_blocks=np.asarray(blocks.unique, dtype=np.int64),
        router_new_prompt_blocks=np.asarray(blocks.new_blocks(keys, ratio, nblocks), dtype=np.int64),
        router_active_prefill_tokens=np.asarray(blocks.prefill_tokens(), dtype=np.int64))
