"""The router's view of the cluster: what a policy is shown at each decision.

``precise`` looks the request up in each instance's prefix cache as it is; ``approximate``
in the set of blocks the router itself sent to each instance (never evicted). Load signals
(queued prefill tokens, running, waiting, KV usage) are read as of ``signal_delay_s``
seconds before the decision from a per-instance history of engine states.
"""

from __future__ import annotations

import bisect

from lmetric_theory.policies.base import DecisionView
from lmetric_theory.sim.instance import Instance, Requests
from lmetric_theory.sim.snapshots import SnapshotLog

__all__ = ["RouterView"]

Signals = tuple[int, int, int, int]


class RouterView:
    """Builds :class:`DecisionView` rows and keeps the router-side state.

    Parameters
    ----------
    req : Requests
        The simulator's request table.
    instances : list of Instance
        The instances (read, never changed).
    approximate : bool
        Use the router's own record of sent blocks as the cache view.
    delay : float
        Age of the load signals, seconds (0: current).
    capacity : int
        KV capacity per instance, tokens (for the usage fraction).
    block : int
        Prefix-cache block size, tokens.
    log : SnapshotLog or None
        Where to write every decision's row (``None``: one scratch row is reused).
    """

    def __init__(self, req: Requests, instances: list[Instance], *, approximate: bool, delay: float,
                 capacity: int, block: int, log: SnapshotLog | None) -> None:
        n = len(instances)
        self.req = req
        self.inst = instances
        self.approximate = approximate
        self.delay = delay
        self.cap = capacity
        self.bs = block
        self.log = log
        self.row = SnapshotLog.empty(1, n) if log is None else None
        self.approx: list[set[int]] = [set() for _ in range(n)]
        self.hist_t: list[list[float]] = [[] for _ in range(n)]
        self.hist_v: list[list[Signals]] = [[] for _ in range(n)]

    def clone(self, req: Requests, instances: list[Instance]) -> RouterView:
        """Independent copy bound to a fork's request table and instances."""
        c = RouterView.__new__(RouterView)
        c.__dict__.update(self.__dict__)
        c.req, c.inst = req, instances
        for k in ("log", "row"):
            v = getattr(self, k)
            if v is not None:
                setattr(c, k, SnapshotLog(**{col: getattr(v, col).copy() for col in v._columns()},
                                          meta=dict(v.meta)))
        c.approx = [s.copy() for s in self.approx]
        c.hist_t = [h.copy() for h in self.hist_t]
        c.hist_v = [h.copy() for h in self.hist_v]
        return c

    # ------------------------------------------------------------------ dispatch

    def dispatched(self, ins: Instance, rid: int, view: DecisionView) -> int:
        """Record that ``rid`` went to ``ins``; its queued-token estimate, tokens."""
        req = self.req
        if not self.approximate:
            return int(view.uncached[ins.idx])
        est = req.inp[rid] - ins.kv.hit_blocks(req.hit_candidates(rid)) * self.bs
        self.approx[ins.idx].update(req.full_blocks(rid))
        return est

    def record(self, ins: Instance, t: float) -> None:
        """Append the instance's load signals at ``t`` to its history (delayed views only)."""
        self.hist_t[ins.idx].append(t)
        self.hist_v[ins.idx].append((ins.queued, ins.running, len(ins.waiting), ins.kv.in_use_tokens()))

    # ------------------------------------------------------------------ snapshot

    def snapshot(self, t: float, rid: int, d: int) -> DecisionView:
        """The view of decision ``d`` (request ``rid`` at time ``t``), written to the log."""
        req = self.req
        bs = self.bs
        inp = req.inp[rid]
        cap = self.cap
        blocks = req.hit_candidates(rid)
        unc = []
        for i, ins in enumerate(self.inst):
            a = self.approx[i] if self.approximate else ins.kv.ready
            k = 0
            for h in blocks:
                if h not in a:
                    break
                k += 1
            unc.append(inp - k * bs)
        if self.delay == 0:
            q = [ins.queued for ins in self.inst]
            r = [len(ins.prefilling) + ins.n_dec for ins in self.inst]
            w = [len(ins.waiting) for ins in self.inst]
            kv = [ins.kv.in_use_tokens() / cap for ins in self.inst]
        else:
            q, r, w, kv = self._delayed(t)
        return self._rows(t, rid, d, inp, unc, q, r, w, kv)

    def _delayed(self, t: float) -> tuple[list, list, list, list]:
        """Load signals as of ``t - delay`` from each instance's signal history."""
        q, r, w, kv = [], [], [], []
        cap = self.cap
        for ht, hv in zip(self.hist_t, self.hist_v, strict=True):
            j = bisect.bisect_right(ht, t - self.delay) - 1
            s = hv[j] if j >= 0 else (0, 0, 0, 0)
            if j > 64:  # forget history nobody will look at again
                del ht[:j]
                del hv[:j]
            q.append(s[0])
            r.append(s[1])
            w.append(s[2])
            kv.append(s[3] / cap)
        return q, r, w, kv

    def _rows(self, t: float, rid: int, d: int, inp: int, unc: list, q: list, r: list, w: list,
              kv: list) -> DecisionView:
        log = self.log
        if log is None:
            log = self.row
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
