"""Which decisions are flagged, their load, and a load-matched sample of both groups.

Flag definitions (:data:`FLAG_DEFINITIONS`, on the detector's verdicts)
-----------------------------------------------------------------------
``disagreement``
    The product's choice differs from the linear reference's (``lam``).
``fragile``
    The product agrees with ``lam`` but not with every rate of the reference band.
``hotspot``
    The hot-prefix-class monitor (:class:`~lmetric_theory.detector.hotspot.HotspotMonitor`,
    fed the run's decisions in order) is in phase 1 or 2 for the request's class at this
    decision (:func:`hotspot_phase`), or the detector's zero-prefill hot-spot finding holds
    (a loaded instance with ``P + p0 == 0``).
``any-but-ties``
    Any finding except the tie findings (``exact_tie``, ``idle_tie``): disagreement,
    fragile, hot spot or extreme operating point.
``herding``, ``replica_skew``, ``stale_index``
    The router-state monitor (:class:`~lmetric_theory.detector.RouterStateMonitor`, fed
    the replay's decisions in order with the thresholds that fit the replay, as the audit
    does) finds the decision meets the kind's own condition: it lands, within one lag
    window, on an instance other replicas just picked; its pick differs from the pick on
    the engines' counters; its predicted hit is off by at least one block
    (docs/router_state.md). Needs a replay that records the router-state fields.

Load and matching
-----------------
A decision's load is the mean number of in-flight requests (running + waiting) per
instance at decision time, as the router saw it. Load deciles are cut over all decisions
of the run. The flagged sample is a uniform draw (without replacement) from the flagged
decisions; each sampled flagged decision is then matched with an unflagged decision
drawn from the same load decile (without replacement; when a decile runs out, from the
nearest decile that still has unflagged decisions). So both groups have the same load
distribution, decile by decile.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmetric_theory.core.definitions import ScoreDefinition
from lmetric_theory.detector import Verdicts
from lmetric_theory.sim import SnapshotLog
from lmetric_theory.workload import Workload

__all__ = ["FLAG_DEFINITIONS", "FLAG_TEXT", "ROUTER_STATE_FLAGS", "Sample", "decision_load", "flag_mask", "hotspot_phase",
           "load_deciles", "matched_sample"]

#: Flag definitions the study accepts.
FLAG_DEFINITIONS: tuple[str, ...] = ("disagreement", "fragile", "hotspot", "any-but-ties",
                                     "herding", "replica_skew", "stale_index")

#: The flags read from the router-state monitor rather than the detector's verdicts.
ROUTER_STATE_FLAGS: tuple[str, ...] = ("herding", "replica_skew", "stale_index")

#: One-line statement of each flag definition (recorded in the results).
FLAG_TEXT: dict[str, str] = {
    "disagreement": "the product's choice differs from the linear reference's choice at lam",
    "fragile": "the product agrees with lam but not with every rate of the reference band",
    "hotspot": "the hot-prefix-class monitor is in phase 1 (alarm) or 2 (confirmed) for the "
               "request's class, or a loaded instance has P + p0 == 0 (zero-prefill hot spot)",
    "any-but-ties": "any detector finding except exact_tie and idle_tie",
    "herding": "the decision lands, within one lag window, on an instance >= herd_size - 1 "
               "other router replicas just picked (result (n))",
    "replica_skew": "the replica's pick differs from the pick on the engines' counters "
                    "(result (m))",
    "stale_index": "the replica's predicted hit on the chosen instance is off by >= "
                   "stale_blocks blocks (result (o))",
}


def flag_mask(v: Verdicts, flag: str, phase: np.ndarray | None = None,
              router_events: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Boolean mask (D,) of the decisions flagged under ``flag`` (see the module docstring).

    ``phase`` is the hot-spot phase per decision (:func:`hotspot_phase`), used by ``hotspot``;
    ``router_events`` the router-state conditions per kind
    (:attr:`~lmetric_theory.experiments.router_state_log.RouterStateDecisions.events`), used by the
    router-state flags.
    """
    if flag in ROUTER_STATE_FLAGS:
        if router_events is None:
            raise ValueError(f"flag {flag}: the replay has no router-state fields")
        return np.asarray(router_events[flag], dtype=bool)
    if flag == "disagreement":
        return np.asarray(v.disagrees, dtype=bool)
    if flag == "fragile":
        return np.asarray(v.fragile, dtype=bool)
    if flag == "hotspot":
        hot = np.asarray(v.zero_prefill, dtype=bool)
        return hot if phase is None else hot | (np.asarray(phase) >= 1)
    if flag == "any-but-ties":
        return np.asarray(v.disagrees | v.fragile | v.zero_prefill | v.extreme_operating_point,
                          dtype=bool)
    raise ValueError(f"flag: {flag!r} is not one of {', '.join(FLAG_DEFINITIONS)}")


def hotspot_phase(workload: Workload, log: SnapshotLog, definition: ScoreDefinition) -> np.ndarray:
    """Hot-spot phase of each decision's prefix class, shape (D,), int64: 0, 1 or 2.

    The shared hot-spot runner (:func:`lmetric_theory.experiments.hotspots.run_hotspots`,
    default monitor settings, detect only) observes the decisions in order: the class is
    the request's leading block hash, an instance holds it when the request has a prefix
    hit there (uncached < prompt tokens), ``P``/``B`` the log's signals under the policy's
    score ``definition`` (offsets included). After observing decision ``d``: 2 when the
    class is confirmed (the monitor's mitigation applies), 1 when the phase-1 condition
    ``x |Mbar| > (1 - x) |M|`` holds (share ``x`` of the class in the window, ``|M|``
    instances holding it, ``1 <= |M| < N``, window at least ``min_decisions`` long), else 0.
    """
    from lmetric_theory.experiments.hotspots import run_hotspots

    return run_hotspots(workload, log, definition).phase


def decision_load(log: SnapshotLog) -> np.ndarray:
    """Mean in-flight requests (running + waiting) per instance at each decision, shape (D,)."""
    return (log.running.astype(np.float64) + log.waiting).mean(axis=1)


def load_deciles(load: np.ndarray) -> np.ndarray:
    """Decile (0..9) of each decision's load among all decisions, shape (D,), int64.

    Cut at the 10%, 20%, ..., 90% quantiles; equal loads share a decile (so a decile can
    be empty when many decisions have the same load).
    """
    edges = np.quantile(load, np.linspace(0.1, 0.9, 9)) if load.size else np.zeros(9)
    return np.searchsorted(edges, load, side="right").astype(np.int64)


@dataclass(frozen=True, slots=True)
class Sample:
    """Sampled decisions of the two groups.

    Attributes
    ----------
    flagged, control : np.ndarray of int64
        Decision indices; ``control[k]`` is the match of ``flagged[k]`` (same length
        unless the unflagged decisions ran out).
    decile : np.ndarray of int64, shape (D,)
        Load decile of every decision.
    """

    flagged: np.ndarray
    control: np.ndarray
    decile: np.ndarray


def matched_sample(flagged: np.ndarray, load: np.ndarray, k: int,
                   rng: np.random.Generator) -> Sample:
    """Up to ``k`` flagged decisions and as many load-matched unflagged ones.

    Parameters
    ----------
    flagged : np.ndarray of bool, shape (D,)
        Flag of every decision.
    load : np.ndarray, shape (D,)
        Load of every decision (:func:`decision_load`), requests per instance.
    k : int
        Flagged decisions to sample (>= 0; all of them when fewer).
    rng : numpy.random.Generator
        Randomness of both draws.
    """
    if k < 0:
        raise ValueError(f"samples must be >= 0, got {k}")
    flagged = np.asarray(flagged, dtype=bool)
    dec = load_deciles(np.asarray(load, dtype=np.float64))
    fl = np.flatnonzero(flagged)
    s_f = rng.choice(fl, size=min(k, fl.size), replace=False) if fl.size else fl
    pools = {q: list(rng.permutation(np.flatnonzero(~flagged & (dec == q)))) for q in range(10)}
    s_c = []
    for d in s_f.tolist():
        q = int(dec[d])
        for dq in sorted(range(10), key=lambda x: (abs(x - q), x)):
            if pools[dq]:
                s_c.append(int(pools[dq].pop()))
                break
    return Sample(np.asarray(s_f, dtype=np.int64), np.asarray(s_c, dtype=np.int64), dec)
