"""Which decisions are flagged, their load, and a load-matched sample of both groups.

Flag definitions (:data:`FLAG_DEFINITIONS`, on the detector's verdicts)
-----------------------------------------------------------------------
``disagreement``
    The product's choice differs from the linear reference's (``lam``).
``fragile``
    The product agrees with ``lam`` but not with every rate of the reference band.
``hotspot``
    The detector's hot-spot finding: some loaded instance (``B > 0``) has ``P + p0 == 0``,
    so its product score is 0 whatever its load (``zero_prefill``).
``any-but-ties``
    Any finding except the tie findings (``exact_tie``, ``idle_tie``): disagreement,
    fragile, hot spot or extreme operating point.

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

from lmetric_theory.detector import Verdicts
from lmetric_theory.sim import SnapshotLog

__all__ = ["FLAG_DEFINITIONS", "Sample", "decision_load", "flag_mask", "load_deciles", "matched_sample"]

#: Flag definitions the study accepts.
FLAG_DEFINITIONS: tuple[str, ...] = ("disagreement", "fragile", "hotspot", "any-but-ties")

#: One-line statement of each flag definition (recorded in the results).
FLAG_TEXT: dict[str, str] = {
    "disagreement": "the product's choice differs from the linear reference's choice at lam",
    "fragile": "the product agrees with lam but not with every rate of the reference band",
    "hotspot": "a loaded instance (B > 0) has P + p0 == 0 (zero-prefill hot spot)",
    "any-but-ties": "any detector finding except exact_tie and idle_tie",
}


def flag_mask(v: Verdicts, flag: str) -> np.ndarray:
    """Boolean mask (D,) of the decisions flagged under ``flag`` (see the module docstring)."""
    if flag == "disagreement":
        return np.asarray(v.disagrees, dtype=bool)
    if flag == "fragile":
        return np.asarray(v.fragile, dtype=bool)
    if flag == "hotspot":
        return np.asarray(v.zero_prefill, dtype=bool)
    if flag == "any-but-ties":
        return np.asarray(v.disagrees | v.fragile | v.zero_prefill | v.extreme_operating_point,
                          dtype=bool)
    raise ValueError(f"flag: {flag!r} is not one of {', '.join(FLAG_DEFINITIONS)}")


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
