"""Streaming two-phase detector of hot prefix classes (a cluster-level failure of the product).

The condition, the two phases and the ``2|M|`` confirmation are this project's derivation
(results (j)-(l) of ``lmetric-theory derive``), not cited from a section of the LMetric paper, whose
abstract says only that it derives conditions under which multiplication may fail and that
they can be detected and mitigated beforehand.

Requests are grouped into prefix classes by their leading block hash. For class ``c``,
``M`` is the set of instances whose cache holds the class's leading blocks and ``x`` the
share of class ``c`` among the last ``window`` decisions (``xbar = 1 - x``). Result (k) of
``lmetric-theory derive`` says the product piles class ``c`` on ``M`` when
``x/xbar > |M|/|Mbar|``; result (j) says it keeps doing so while the hot instances'
batches stay below the prefill-ratio tolerance.

Phase 1 (alarm)
    at a class-``c`` decision, ``x/xbar > |M|/|Mbar|`` with ``1 <= |M| < N``, evaluated as
    ``count_c * |Mbar| > (n - count_c) * |M|`` in integers (``n`` decisions in the window,
    at least ``min_decisions``; ``count_c >= min_count``).
Phase 2 (confirmation)
    ``confirm_factor * |M|`` consecutive class-``c`` decisions (``2|M|`` by default) at which
    the best product score on a hot instance is strictly below the best elsewhere, i.e.
    the product still sends the class to ``M``. A decision that would go elsewhere, or the
    phase-1 condition failing, resets the count.
Mitigation
    once confirmed, class-``c`` decisions get a candidate mask that excludes the instances
    that were hot at confirmation. An instance the class reaches later is a new cache
    holder and a candidate; the mitigation ends when the phase-1 condition stops holding
    (the class has spread over enough instances), and the class may alarm again.

Cost: O(1) amortised per decision (a ring buffer of class ids and per-class counters) plus
an O(N) pass over the hit vector and, for alarmed classes, the product scores (computed
with :func:`lmetric_theory.core.kernel.product_scores` unless the caller passes the score
vector it already has). No array of size N is allocated per decision except that score
vector; masks are allocated once per confirmation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lmetric_theory.core.kernel import product_scores

__all__ = ["HotspotFinding", "HotspotMonitor"]


@dataclass(frozen=True, slots=True)
class HotspotFinding:
    """One prefix class that raised phase 1.

    Attributes
    ----------
    class_id : int
        The class: its leading block hash.
    share : float
        Its share ``x`` of the window at phase 1 (0..1).
    cached_instances : tuple of int
        ``M`` at phase 1 (instance indices whose cache held the class).
    phase1_decision : int
        Decision index of the first alarm.
    phase2_decision : int or None
        Decision index of the first confirmation; None if never confirmed.
    condition_holds : bool
        Result (l)'s sufficient condition at phase 1, with the decision's state:
        ``x |Mbar| (P_hit + p0) > xbar |M| (P_miss + p0)`` (``P_hit``, ``P_miss``: least
        prefill tokens on a hot and on a cold instance). True means the product would keep
        the class on ``M`` until departures stop the growth.
    mitigation : str or None
        The mitigation for the class on confirmation (applied when the monitor mitigates);
        None if never confirmed.
    """

    class_id: int
    share: float
    cached_instances: tuple[int, ...]
    phase1_decision: int
    phase2_decision: int | None
    condition_holds: bool
    mitigation: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with the audit report's keys (``class``, ``share``, ...)."""
        return {
            "class": self.class_id,
            "share": self.share,
            "cached_instances": list(self.cached_instances),
            "phase1_decision": self.phase1_decision,
            "phase2_decision": self.phase2_decision,
            "condition_holds": self.condition_holds,
            "mitigation": self.mitigation,
        }


def _min_where(a: np.ndarray, where: np.ndarray) -> Any:
    """Minimum of ``a`` over ``where`` (the dtype's largest value when empty)."""
    a = np.asarray(a)
    top = np.iinfo(a.dtype).max if a.dtype.kind in "iu" else np.inf
    return np.min(a, where=where, initial=top)


class _ClassState:
    __slots__ = ("alarmed", "streak", "excluded", "mask", "p1", "p2", "share", "cached",
                 "holds", "mitigation")

    def __init__(self) -> None:
        self.alarmed = False
        self.streak = 0
        self.excluded: tuple[int, ...] = ()
        self.mask: np.ndarray | None = None
        self.p1 = -1
        self.p2: int | None = None
        self.share = 0.0
        self.cached: tuple[int, ...] = ()
        self.holds = False
        self.mitigation: str | None = None


class HotspotMonitor:
    """Two-phase hot-class detector, fed one routing decision at a time.

    Parameters
    ----------
    n_instances : int
        Number of instances ``N`` (>= 2).
    window : int
        Decisions in the sliding window the share ``x`` is measured over (>= 2).
    min_decisions : int
        Phase 1 is not evaluated before the window holds this many decisions (>= 1,
        <= window); avoids alarms on the first few requests.
    min_count : int
        Phase 1 needs at least this many class-``c`` decisions in the window (>= 1).
    confirm_factor : int
        Phase 2 needs ``confirm_factor * |M|`` consecutive confirming decisions (>= 1;
        default 2, this project's choice).
    p0, b0 : float
        Offsets of the product score (tokens, requests).
    mitigate : bool
        Return candidate masks for confirmed classes (False: detect only; findings still
        name the mitigation).
    """

    def __init__(
        self,
        n_instances: int,
        *,
        window: int = 200,
        min_decisions: int = 50,
        min_count: int = 2,
        confirm_factor: int = 2,
        p0: float = 0.0,
        b0: float = 1.0,
        mitigate: bool = True,
    ) -> None:
        for name, v, lo in (("n_instances", n_instances, 2), ("window", window, 2),
                            ("min_decisions", min_decisions, 1), ("min_count", min_count, 1),
                            ("confirm_factor", confirm_factor, 1)):
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        if min_decisions > window:
            raise ValueError(f"min_decisions must be <= window ({window}), got {min_decisions}")
        self.n_instances = int(n_instances)
        self.window = int(window)
        self.min_decisions = int(min_decisions)
        self.min_count = int(min_count)
        self.confirm_factor = int(confirm_factor)
        self.p0 = float(p0)
        self.b0 = float(b0)
        self.mitigate = bool(mitigate)
        self.reset()

    def reset(self) -> None:
        """Forget every decision and finding."""
        self._ring = [0] * self.window
        self._pos = 0
        self._n = 0
        self._counts: dict[int, int] = {}
        self._state: dict[int, _ClassState] = {}
        self._order: list[int] = []
        self.decisions = 0

    # ---------------------------------------------------------------- streaming

    def share(self, class_id: int) -> float:
        """Current share of ``class_id`` in the window (0 when the window is empty)."""
        return self._counts.get(class_id, 0) / self._n if self._n else 0.0

    def observe(
        self,
        class_id: int,
        hit: np.ndarray,
        P: np.ndarray | None = None,
        B: np.ndarray | None = None,
        *,
        scores: np.ndarray | None = None,
        decision: int | None = None,
    ) -> np.ndarray | None:
        """Take one decision into account; the candidate mask when a mitigation applies.

        Parameters
        ----------
        class_id : int
            The request's class (its leading block hash); a negative id means "no class"
            (counted in the window, never alarmed).
        hit : np.ndarray, shape (N,), bool or int
            Nonzero where the instance's cache holds the class's leading blocks.
        P, B : np.ndarray, shape (N,), optional
            Prefill tokens and batch sizes (tokens, requests); needed when ``scores`` is not
            given and the class is alarmed.
        scores : np.ndarray, shape (N,), optional
            The product scores of this decision, if the caller has them already.
        decision : int, optional
            Decision index to record in findings (default: a running count from 0).

        Returns
        -------
        np.ndarray of bool, shape (N,), or None
            Read-only mask of allowed instances (hot instances excluded) while the class's
            mitigation is active; None otherwise.
        """
        d = self.decisions if decision is None else int(decision)
        self.decisions += 1
        counts = self._counts
        ring = self._ring
        if self._n == self.window:  # evict the oldest
            old = ring[self._pos]
            left = counts[old] - 1
            if left:
                counts[old] = left
            else:
                del counts[old]
        else:
            self._n += 1
        ring[self._pos] = class_id
        self._pos = 0 if self._pos + 1 == self.window else self._pos + 1
        cnt = counts.get(class_id, 0) + 1
        counts[class_id] = cnt
        if class_id < 0:
            return None
        st = self._state.get(class_id)
        n = self._n
        if n < self.min_decisions or cnt < self.min_count:
            if st is not None:
                self._clear(st)
            return None
        m = int(np.count_nonzero(hit))
        mbar = self.n_instances - m
        holds = m >= 1 and mbar >= 1 and cnt * mbar > (n - cnt) * m
        if not holds:
            if st is not None:
                self._clear(st)
            return None
        if st is None:
            st = self._state[class_id] = _ClassState()
        elif st.mask is not None:  # confirmed and still holding: the mitigation applies
            return st.mask
        if scores is None:
            scores = product_scores(P, B, self.p0, self.b0)
        hot = np.asarray(hit, dtype=bool)
        if not st.alarmed:
            st.alarmed = True
            st.streak = 0
            if st.p1 < 0:  # first episode: the finding
                self._order.append(class_id)
                st.p1 = d
                st.share = cnt / n
                st.cached = tuple(int(i) for i in np.flatnonzero(hot))
                st.holds = self._sufficient(cnt, n, m, mbar, hot, P, scores, B)
        best_hot = _min_where(scores, hot)
        best_cold = _min_where(scores, ~hot)
        st.streak = st.streak + 1 if best_hot < best_cold else 0
        if st.streak >= self.confirm_factor * m:
            st.excluded = tuple(int(i) for i in np.flatnonzero(hot))
            if st.p2 is None:
                st.p2 = d
                st.mitigation = (
                    "exclude instances " + ", ".join(map(str, st.excluded)) + " for this class"
                )
            if self.mitigate:
                mask = ~hot
                mask.flags.writeable = False
                st.mask = mask
                return mask
        return None

    def _clear(self, st: _ClassState) -> None:
        st.alarmed = False
        st.streak = 0
        st.mask = None
        st.excluded = ()

    def _sufficient(self, cnt: int, n: int, m: int, mbar: int, hot: np.ndarray,
                    P: np.ndarray | None, scores: np.ndarray, B: np.ndarray | None) -> bool:
        """Result (l)'s condition ``x|Mbar|(P_hit + p0) > xbar|M|(P_miss + p0)``."""
        if P is None:
            if B is None:
                return False
            P = np.asarray(scores, dtype=np.float64) / (np.asarray(B, dtype=np.float64)
                                                        + self.b0) - self.p0
        P = np.asarray(P, dtype=np.float64)
        p_hit = float(_min_where(P, hot))
        p_miss = float(_min_where(P, ~hot))
        return cnt * mbar * (p_hit + self.p0) > (n - cnt) * m * (p_miss + self.p0)

    # ---------------------------------------------------------------- results

    def active(self, class_id: int) -> bool:
        """True while ``class_id``'s mitigation applies."""
        st = self._state.get(class_id)
        return st is not None and st.mask is not None

    @property
    def findings(self) -> tuple[HotspotFinding, ...]:
        """One finding per class that raised phase 1, in order of first alarm."""
        out = []
        for c in self._order:
            st = self._state[c]
            out.append(HotspotFinding(c, st.share, st.cached, st.p1, st.p2, st.holds,
                                      st.mitigation))
        return tuple(out)

    def fit(
        self,
        class_ids: np.ndarray,
        hits: np.ndarray,
        P: np.ndarray,
        B: np.ndarray,
    ) -> HotspotMonitor:
        """Observe a whole log in order (after :meth:`reset`); returns ``self``.

        Parameters
        ----------
        class_ids : np.ndarray, shape (D,), int
        hits : np.ndarray, shape (D, N), bool
        P, B : np.ndarray, shape (D, N)
            Prefill tokens and batch sizes per decision and instance.
        """
        self.reset()
        for d in range(len(class_ids)):
            self.observe(int(class_ids[d]), hits[d], P[d], B[d], decision=d)
        return self
