"""Streaming findings about the router's own state: ``replica_skew``, ``herding`` and
``stale_index`` (results (m)-(o) of ``lmetric-theory derive``).

Each is computed from data a router has at its decisions:

``replica_skew``
    the replica's counters against the engines' reported ones. At a decision the product's
    argmin on the replica's view is compared with its argmin on the engines' counters
    (result (m): a replica with the share ``1/R`` ranks like the global product with
    offsets ``R p0``, ``R b0``); the finding is raised when at least ``skew_share`` of the
    window's decisions would go elsewhere on the true counters. Mitigation: counter sync
    (scale by ``R``), or ``b0/R`` when ``R`` is all that is known.
``herding``
    decisions per instance per lag window, by replica. A decision herds when, within one
    lag window, at least ``herd_size - 1`` decisions of *other* replicas went to the same
    instance (result (n): they decided blind to each other). One replica never herds.
    Mitigation: a random choice among near-ties.
``stale_index``
    predicted against actual cache hits of the chosen instance, in blocks. A hit off by at
    least ``stale_blocks`` is stale; the message gives the share whose error reached the
    decision's flip threshold of result (o) (``err* = (S_runner - S_chosen)/(B_chosen +
    b0)``). Mitigation: a shorter TTL (the index predicts evicted blocks) or none (it
    forgets cached ones: lengthen the TTL or use KV events).

Cost per decision: O(1) amortised state updates (ring buffers of fixed length, a deque of
the lag window's decisions, per-instance and per-replica counters), plus O(N) passes over
the decision's vectors (argmins, one score vector). No history is scanned.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmetric_theory.core import kernel
from lmetric_theory.detector.findings import ROUTER_STATE_KINDS, Finding, Mitigation
from lmetric_theory.detector.messages import SEVERITY
from lmetric_theory.detector.settings import RouterStateSettings

__all__ = ["RouterStateMonitor", "RouterStateStats", "router_state_findings"]


class _Ring:
    """A fixed-length ring of 0/1 events with their running sum (O(1) push)."""

    __slots__ = ("buf", "n", "pos", "total")

    def __init__(self, size: int) -> None:
        self.buf = bytearray(size)
        self.n = 0
        self.pos = 0
        self.total = 0

    def push(self, event: bool) -> None:
        size = len(self.buf)
        if self.n == size:
            self.total -= self.buf[self.pos]
        else:
            self.n += 1
        self.buf[self.pos] = 1 if event else 0
        self.total += self.buf[self.pos]
        self.pos = (self.pos + 1) % size

    @property
    def share(self) -> float:
        return self.total / self.n if self.n else 0.0


@dataclass(frozen=True, slots=True)
class RouterStateStats:
    """Counters of a :class:`RouterStateMonitor` since it was built.

    Attributes
    ----------
    decisions : int
        Decisions observed.
    skew_checked, skew_differs : int
        Decisions with the engines' counters given, and those whose product argmin on them
        differs from the one on the replica's view.
    herded : int
        Decisions that herded (see the module docstring).
    hits_checked, stale, stale_flipping : int
        Decisions with predicted and actual hits given; stale ones; stale ones whose error
        reached the decision's flip threshold (result (o)).
    over_predicted : int
        Stale hits where the index predicted more than the engine found.
    counter_ratio : float
        Sum of the engines' batch counts over the replica's, over the decisions checked
        (about ``R`` under an even assignment); nan before any.
    """

    decisions: int
    skew_checked: int
    skew_differs: int
    herded: int
    hits_checked: int
    stale: int
    stale_flipping: int
    over_predicted: int
    counter_ratio: float


class RouterStateMonitor:
    """Streaming router-state findings for one router replica's decisions (or a log of
    every replica's, in time order).

    Parameters
    ----------
    n_instances : int
        Instances routed over (>= 1).
    settings : RouterStateSettings, optional
        Thresholds, windows, lag and mitigation values.
    p0, b0 : number
        Offsets of the product score the router uses.
    """

    def __init__(
        self, n_instances: int, settings: RouterStateSettings | None = None,
        *, p0: Any = 0, b0: Any = 1,
    ) -> None:
        if n_instances < 1:
            raise ValueError(f"n_instances must be >= 1, got {n_instances}")
        self.n = n_instances
        self.settings = settings if settings is not None else RouterStateSettings()
        self.p0, self.b0 = p0, b0
        st = self.settings
        self._skew = _Ring(st.window)
        self._herd = _Ring(st.window)
        self._stale = _Ring(st.window)
        self._lag: deque[tuple[float, int, int]] = deque()
        self._on_instance = [0] * n_instances
        self._own: dict[int, list[int]] = {}
        self._first: dict[str, int] = {}
        self._decisions = 0
        self._skew_checked = self._skew_differs = 0
        self._herded = 0
        self._hits = self._stale_n = self._flipping = self._over = 0
        self._true_b = self._router_b = 0.0
        self._err_blocks = 0.0
        #: Per-decision conditions of the last observed decision (see :meth:`observe`).
        self.last_events: tuple[str, ...] = ()

    # ------------------------------------------------------------------ observing

    def observe(
        self,
        time_s: float,
        chosen: int,
        prefill_tokens: Any,
        batch_size: Any,
        *,
        replica: int = 0,
        true_prefill: Any = None,
        true_batch: Any = None,
        predicted_cached: float | None = None,
        actual_cached: float | None = None,
    ) -> tuple[str, ...]:
        """Observe one decision; return the router-state kinds it raises (may be empty).

        Parameters
        ----------
        time_s : float
            Decision time, seconds (non-decreasing across calls).
        chosen : int
            Instance the decision went to.
        prefill_tokens, batch_size : array_like, shape (N,)
            ``P`` and ``B`` the replica's policy saw (tokens, requests).
        replica : int
            The router replica that decided.
        true_prefill, true_batch : array_like, shape (N,), optional
            The same signals on the engines' counters (all replicas together).
        predicted_cached, actual_cached : float, optional
            Tokens the replica's index predicted cached on ``chosen`` and the engine's hit.

        Returns
        -------
        tuple of str
            Kinds among :data:`~lmetric_theory.detector.findings.ROUTER_STATE_KINDS` whose
            finding is active after this decision.

        Notes
        -----
        :attr:`last_events` then holds the kinds whose per-decision condition this decision
        meets by itself (its pick differs from the engines' counters' pick; it herds; its
        hit is off by ``>= stale_blocks``), whether or not the finding's share is reached.
        """
        st = self.settings
        d = self._decisions
        self._decisions += 1
        P = np.asarray(prefill_tokens)
        B = np.asarray(batch_size)
        raised: list[str] = []
        events: list[str] = []
        S = None  # the view's product scores, computed at most once
        # ------------------------------------------------------------ replica_skew
        if true_batch is not None:
            TB = np.asarray(true_batch)
            TP = P if true_prefill is None else np.asarray(true_prefill)
            S = kernel.product_scores(P, B, self.p0, self.b0)
            # lowest index among equal scores, as the kernel's argmin breaks ties
            mine = int(np.argmin(S))
            true = int(np.argmin(kernel.product_scores(TP, TB, self.p0, self.b0)))
            differs = mine != true
            self._skew.push(differs)
            self._skew_checked += 1
            self._skew_differs += differs
            if differs:
                events.append("replica_skew")
            self._true_b += float(TB.sum())
            self._router_b += float(B.sum())
            if self._skew.n >= st.min_decisions and self._skew.share >= st.skew_share:
                raised.append("replica_skew")
        # ----------------------------------------------------------------- herding
        lag = self._lag
        while lag and time_s - lag[0][0] > st.lag_s:
            _, inst, rep = lag.popleft()
            self._on_instance[inst] -= 1
            self._own[rep][inst] -= 1
        own = self._own.get(replica)
        if own is None:
            own = self._own[replica] = [0] * self.n
        others = self._on_instance[chosen] - own[chosen]
        herds = others >= st.herd_size - 1
        lag.append((time_s, chosen, replica))
        self._on_instance[chosen] += 1
        own[chosen] += 1
        self._herd.push(herds)
        self._herded += herds
        if herds:
            events.append("herding")
        if self._herd.n >= st.min_decisions and self._herd.share >= st.herding_share:
            raised.append("herding")
        # ------------------------------------------------------------- stale_index
        if predicted_cached is not None and actual_cached is not None:
            err = float(predicted_cached) - float(actual_cached)
            blocks = abs(err) / st.block_tokens
            stale = blocks >= st.stale_blocks
            self._hits += 1
            self._stale.push(stale)
            if stale:
                events.append("stale_index")
                self._stale_n += 1
                self._over += err > 0
                self._err_blocks += blocks
                if self.n > 1:
                    if S is None:
                        S = kernel.product_scores(P, B, self.p0, self.b0)
                    Sf = np.array(S, dtype=float)
                    s_i = Sf[chosen]
                    Sf[chosen] = np.inf
                    star = (Sf.min() - s_i) / (float(B[chosen]) + float(self.b0))
                    # the error reached the flip threshold of result (o) (either sign:
                    # a positive margin flips under an under-prediction's push, a negative
                    # one is the stale hit that pulled the request here)
                    self._flipping += abs(err) >= abs(star)
            if self._stale.n >= st.min_decisions and self._stale.share >= st.stale_share:
                raised.append("stale_index")
        for kind in raised:
            self._first.setdefault(kind, d)
        self.last_events = tuple(events)
        return tuple(raised)

    def moved(self, instance: int) -> None:
        """The last observed decision went to ``instance`` after all (a mitigation moved
        it): the lag window's counters follow it."""
        t, old, rep = self._lag[-1]
        if old == instance:
            return
        self._lag[-1] = (t, instance, rep)
        self._on_instance[old] -= 1
        self._on_instance[instance] += 1
        self._own[rep][old] -= 1
        self._own[rep][instance] += 1

    # ------------------------------------------------------------------ reporting

    @property
    def stats(self) -> RouterStateStats:
        """Counters so far."""
        ratio = self._true_b / self._router_b if self._router_b else float("nan")
        return RouterStateStats(
            self._decisions, self._skew_checked, self._skew_differs, self._herded,
            self._hits, self._stale_n, self._flipping, self._over, ratio,
        )

    def first_decision(self, kind: str) -> int | None:
        """Decision index at which ``kind`` was first raised (None if never)."""
        return self._first.get(kind)

    def mitigation(self, kind: str) -> Mitigation:
        """The mitigation the theory supports for ``kind`` (see the module docstring)."""
        st = self.settings
        if kind == "replica_skew":
            r = st.replicas
            if r == 1 and self._router_b:
                r = max(1, round(self._true_b / self._router_b))
            return Mitigation.counter_sync(r)
        if kind == "herding":
            return Mitigation.random_near_ties(st.near_tie_tolerance)
        if kind == "stale_index":
            if self._over * 2 >= self._stale_n and st.ttl_s is not None:
                return Mitigation.shorter_ttl(st.ttl_s / 2)
            return Mitigation.none()
        raise ValueError(f"unknown router-state kind {kind!r}; valid: "
                         f"{', '.join(ROUTER_STATE_KINDS)}")

    @property
    def findings(self) -> tuple[Finding, ...]:
        """One :class:`Finding` per kind raised so far, in :data:`ROUTER_STATE_KINDS` order,
        with the counts behind it."""
        st = self.settings
        s = self.stats
        out = []
        for kind in ROUTER_STATE_KINDS:
            first = self._first.get(kind)
            if first is None:
                continue
            if kind == "replica_skew":
                msg = (f"{s.skew_differs} of {s.skew_checked} decisions would go elsewhere "
                       f"on the engines' counters (first flagged at decision {first}); the "
                       f"engines count {s.counter_ratio:.3g}x the replica's batch: with "
                       f"R = {st.replicas} replicas each ranks like the product with offsets "
                       "R p0, R b0 (result (m))")
            elif kind == "herding":
                msg = (f"{s.herded} of {s.decisions} decisions landed, within one "
                       f"{st.lag_s:g} s lag window, on an instance >= {st.herd_size - 1} "
                       "other replicas had just picked (first flagged at decision "
                       f"{first}; result (n): replicas deciding from the same state pick "
                       "the same argmin)")
            else:
                mean = self._err_blocks / s.stale if s.stale else 0.0
                msg = (f"{s.stale} of {s.hits_checked} predicted hits were off by >= "
                       f"{st.stale_blocks} block(s) (mean {mean:.3g} blocks; "
                       f"{s.over_predicted} over-predicted); {s.stale_flipping} reached the "
                       "decision's flip threshold of result (o) (first flagged at decision "
                       f"{first})")
            out.append(Finding(kind, SEVERITY[kind], msg, self.mitigation(kind)))
        return tuple(out)


def router_state_findings(
    time_s: Any,
    chosen: Any,
    prefill_tokens: Any,
    batch_size: Any,
    *,
    replica: Any = None,
    true_prefill: Any = None,
    true_batch: Any = None,
    predicted_cached: Any = None,
    actual_cached: Any = None,
    settings: RouterStateSettings | None = None,
    p0: Any = 0,
    b0: Any = 1,
    on_decision: Callable[[int, tuple[str, ...], RouterStateMonitor], None] | None = None,
) -> tuple[tuple[Finding, ...], RouterStateMonitor]:
    """The router-state findings of ``D`` logged decisions (the audit's path): the
    decisions fed, in order, through one :class:`RouterStateMonitor`.

    Parameters
    ----------
    time_s : array_like, shape (D,)
        Decision times, seconds (sorted).
    chosen : array_like of int, shape (D,)
        Instance of each decision.
    prefill_tokens, batch_size : array_like, shape (D, N)
        The views the policy saw.
    replica : array_like of int, shape (D,), optional
        Router replica of each decision (all 0 when absent).
    true_prefill, true_batch : array_like, shape (D, N), optional
        The engines' counters (``replica_skew`` is checked only when ``true_batch`` is
        given).
    predicted_cached, actual_cached : array_like, shape (D,), optional
        Predicted and actual cached tokens on the chosen instance (``stale_index`` only
        when both are given; NaN where unknown, e.g. a request never admitted).
    settings, p0, b0
        As in :class:`RouterStateMonitor`.
    on_decision : callable, optional
        ``on_decision(d, active, monitor)`` after decision ``d`` is observed (``active``:
        the kinds :meth:`RouterStateMonitor.observe` returned; the decision's own conditions
        are ``monitor.last_events``).

    Returns
    -------
    (tuple of Finding, RouterStateMonitor)
        The findings and the monitor (its :attr:`~RouterStateMonitor.stats`).
    """
    t = np.asarray(time_s, dtype=float)
    c = np.asarray(chosen, dtype=np.int64)
    P = np.atleast_2d(np.asarray(prefill_tokens))
    B = np.atleast_2d(np.asarray(batch_size))
    D = t.shape[0]
    for name, arr in (("chosen", c), ("prefill_tokens", P), ("batch_size", B)):
        if arr.shape[0] != D:
            raise ValueError(f"{name}: {arr.shape[0]} decisions, time_s has {D}")
    if P.shape != B.shape:
        raise ValueError(f"batch_size: shape {B.shape} does not match prefill_tokens {P.shape}")
    rep = np.zeros(D, dtype=np.int64) if replica is None else np.asarray(replica, np.int64)
    TB = None if true_batch is None else np.asarray(true_batch)
    TP = None if true_prefill is None else np.asarray(true_prefill)
    for name, arr in (("true_batch", TB), ("true_prefill", TP)):
        if arr is not None and arr.shape != P.shape:
            raise ValueError(f"{name}: shape {arr.shape} does not match the view {P.shape}")
    hits = predicted_cached is not None and actual_cached is not None
    pc = np.asarray(predicted_cached, dtype=float) if hits else None
    ac = np.asarray(actual_cached, dtype=float) if hits else None
    known = (np.isfinite(pc) & np.isfinite(ac)) if pc is not None and ac is not None else None
    mon = RouterStateMonitor(P.shape[1], settings, p0=p0, b0=b0)
    for d in range(D):
        active = mon.observe(
            float(t[d]), int(c[d]), P[d], B[d], replica=int(rep[d]),
            true_prefill=None if TP is None else TP[d],
            true_batch=None if TB is None else TB[d],
            predicted_cached=None if pc is None or not known[d] else pc[d],
            actual_cached=None if ac is None or not known[d] else ac[d],
        )
        if on_decision is not None:
            on_decision(d, active, mon)
    return mon.findings, mon
