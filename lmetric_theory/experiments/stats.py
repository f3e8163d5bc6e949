"""Interval estimates for the experiments: percentile bootstrap, AUROC, t intervals.

Every resampling function takes an explicit ``seed`` (or a ``numpy.random.Generator``) and
is deterministic for a given seed. Intervals are two-sided at ``level`` (default 95%).

* :func:`bootstrap_ci` - percentile bootstrap of a statistic of one sample (mean by default;
  a rate is the mean of a 0/1 sample).
* :func:`auroc` - area under the ROC curve of a score as a predictor of a binary label
  (the Mann-Whitney statistic, ties counted one half); :func:`auroc_ci` adds a stratified
  bootstrap interval (positives and negatives resampled separately, so every resample has
  both classes).
* :func:`t_interval` - mean and Student-t interval of a few replicates (e.g. seeds).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats as _st

__all__ = [
    "DEFAULT_BOOTSTRAP",
    "Estimate",
    "auroc",
    "auroc_ci",
    "bootstrap_ci",
    "t_interval",
]

#: Bootstrap resamples used when none are given.
DEFAULT_BOOTSTRAP = 2000


@dataclass(frozen=True, slots=True)
class Estimate:
    """A point estimate with a two-sided interval (``nan`` when undefined).

    Attributes
    ----------
    value : float
        Point estimate (units of the statistic).
    lo, hi : float
        Interval ends.
    n : int
        Sample size the estimate is based on.
    """

    value: float
    lo: float
    hi: float
    n: int

    @property
    def ci95(self) -> tuple[float, float]:
        """``(lo, hi)``."""
        return (self.lo, self.hi)

    def to_dict(self) -> dict[str, object]:
        """``{"value", "ci95": [lo, hi], "n"}`` (JSON-ready; nan kept as float)."""
        return {"value": self.value, "ci95": [self.lo, self.hi], "n": self.n}


_NAN = math.nan


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _check_level(level: float) -> float:
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return level


def bootstrap_ci(
    x: np.ndarray | list[float],
    *,
    statistic: Callable[[np.ndarray], np.ndarray] | None = None,
    n_boot: int = DEFAULT_BOOTSTRAP,
    level: float = 0.95,
    seed: int | np.random.Generator = 0,
) -> Estimate:
    """Percentile bootstrap interval of a statistic of one sample.

    Parameters
    ----------
    x : array_like, shape (n,)
        The sample (NaN not allowed).
    statistic : callable, optional
        Maps an array of shape (B, n) to shape (B,) along ``axis=1``; default the mean.
        A rate is the mean of a 0/1 sample.
    n_boot : int
        Resamples ``B`` (>= 1).
    level : float
        Two-sided coverage, in (0, 1).
    seed : int or numpy.random.Generator
        Randomness of the resampling.

    Returns
    -------
    Estimate
        ``value`` the statistic of ``x``; all ``nan`` (``n = 0``) for an empty sample.
    """
    level = _check_level(level)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if a.size == 0:
        return Estimate(_NAN, _NAN, _NAN, 0)
    if np.isnan(a).any():
        raise ValueError("bootstrap_ci: the sample holds NaN")

    def mean(m: np.ndarray) -> np.ndarray:
        return m.mean(axis=1)

    f = statistic or mean
    value = float(f(a[None, :])[0])
    idx = _rng(seed).integers(0, a.size, size=(n_boot, a.size))
    reps = np.asarray(f(a[idx]), dtype=np.float64)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(reps, [alpha, 1.0 - alpha])
    return Estimate(value, float(lo), float(hi), int(a.size))


def auroc(scores: np.ndarray | list[float], labels: np.ndarray | list[bool]) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative) + ties / 2.

    Parameters
    ----------
    scores : array_like, shape (n,)
        Predictor (larger means "more likely positive"); NaN not allowed.
    labels : array_like of bool, shape (n,)
        True for positives.

    Returns
    -------
    float
        In [0, 1]; 0.5 is no information; ``nan`` unless both classes are present.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=bool).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"auroc: scores shape {s.shape} does not match labels shape {y.shape}")
    if np.isnan(s).any():
        raise ValueError("auroc: scores hold NaN")
    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        return _NAN
    r = _st.rankdata(s)  # average ranks: ties count one half
    return float((r[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def auroc_ci(
    scores: np.ndarray | list[float],
    labels: np.ndarray | list[bool],
    *,
    n_boot: int = DEFAULT_BOOTSTRAP,
    level: float = 0.95,
    seed: int | np.random.Generator = 0,
) -> Estimate:
    """:func:`auroc` with a stratified percentile-bootstrap interval.

    Positives and negatives are resampled separately (their counts fixed), so every
    resample has both classes. ``n`` of the result is the sample size.
    """
    level = _check_level(level)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=bool).reshape(-1)
    value = auroc(s, y)
    if math.isnan(value):
        return Estimate(_NAN, _NAN, _NAN, int(s.size))
    pos, neg = s[y], s[~y]
    rng = _rng(seed)
    P = pos[rng.integers(0, pos.size, size=(n_boot, pos.size))]
    N = neg[rng.integers(0, neg.size, size=(n_boot, neg.size))]
    both = np.concatenate([P, N], axis=1)
    r = _st.rankdata(both, axis=1)
    n1, n0 = pos.size, neg.size
    reps = (r[:, :n1].sum(axis=1) - n1 * (n1 + 1) / 2.0) / (n1 * n0)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(reps, [alpha, 1.0 - alpha])
    return Estimate(value, float(lo), float(hi), int(s.size))


def t_interval(x: np.ndarray | list[float], *, level: float = 0.95) -> Estimate:
    """Mean of a few replicates with a Student-t interval (``nan`` ends for ``n < 2``)."""
    level = _check_level(level)
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return Estimate(_NAN, _NAN, _NAN, 0)
    m = float(a.mean())
    if a.size < 2:
        return Estimate(m, _NAN, _NAN, 1)
    half = float(_st.t.ppf(0.5 + level / 2.0, a.size - 1) * a.std(ddof=1) / math.sqrt(a.size))
    return Estimate(m, m - half, m + half, int(a.size))
