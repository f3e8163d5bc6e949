"""Do the router-state findings precede the loss? (docs/router_state.md)

The replay under the policy is set beside a replay of the same workload and cluster under a
baseline policy (default ``round-robin``). Per request in arrival order, the *excess* is the
policy's TTFT minus the baseline's (seconds; requests that never got a first token in
either run count 0). Its running sum ``C_j`` is the cumulative TTFT excess.

* **Loss onset**: when the policy ends up behind (``C`` final > 0), the arrival time of the
  request after the last ``j`` with ``C_j <= 0`` (the first request when there is none):
  from then on the excess never returns to zero. None when the policy does not lose.
* **10% / 50% time**: the first arrival at which ``C_j`` reaches 10% / 50% of its final
  value (the loss building up).
* **First flag / first finding**: the decision time of the first decision meeting the
  flag's own condition, and of the first decision after which the finding is active (its
  share over the monitor's window reached).

A finding *precedes* the loss when its first time is at or before the onset (and, less
strictly, before the 10% time).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmetric_theory.policies import parse_spec
from lmetric_theory.sim import SimConfig, Simulator
from lmetric_theory.workload import Workload

__all__ = ["LossOnset", "loss_onset", "precedence"]


@dataclass(frozen=True, slots=True)
class LossOnset:
    """When a cumulative TTFT excess starts and builds up (see the module docstring).

    Attributes
    ----------
    final_excess_s : float
        ``C`` after the last request, seconds (summed TTFT).
    mean_excess_s : float
        ``final_excess_s`` per request, seconds.
    onset_time_s, t10_time_s, t50_time_s : float or None
        Arrival times, seconds (None when the policy does not lose).
    """

    final_excess_s: float
    mean_excess_s: float
    onset_time_s: float | None
    t10_time_s: float | None
    t50_time_s: float | None


def loss_onset(arrival_s: Any, excess_s: Any) -> LossOnset:
    """Loss onset and build-up times of per-request TTFT excesses.

    Parameters
    ----------
    arrival_s : array_like, shape (n,)
        Arrival times, seconds, non-decreasing (the order the excess is summed in).
    excess_s : array_like, shape (n,)
        Policy TTFT minus baseline TTFT per request, seconds (NaN counts 0).

    Returns
    -------
    LossOnset
    """
    t = np.asarray(arrival_s, dtype=np.float64)
    e = np.nan_to_num(np.asarray(excess_s, dtype=np.float64), nan=0.0)
    if t.shape != e.shape or t.ndim != 1:
        raise ValueError(f"arrival_s and excess_s must be 1-d of one length, got {t.shape}, {e.shape}")
    if t.size and np.any(np.diff(t) < 0):
        raise ValueError("arrival_s must be non-decreasing")
    c = np.cumsum(e)
    final = float(c[-1]) if c.size else 0.0
    mean = final / c.size if c.size else 0.0
    if final <= 0:
        return LossOnset(final, mean, None, None, None)
    nonpos = np.flatnonzero(c <= 0)
    start = int(nonpos[-1]) + 1 if nonpos.size else 0
    t10 = float(t[int(np.argmax(c >= 0.1 * final))])
    t50 = float(t[int(np.argmax(c >= 0.5 * final))])
    return LossOnset(final, mean, float(t[start]), t10, t50)


def _first_time(mask: np.ndarray, time_s: np.ndarray) -> float | None:
    idx = np.flatnonzero(mask)
    return float(time_s[idx[0]]) if idx.size else None


def precedence(
    workload: Workload, config: SimConfig, result: Any, log: Any, *,
    flagged: np.ndarray, active: np.ndarray, seed: int = 0, baseline: str = "round-robin",
) -> dict[str, Any]:
    """Whether a router-state flag precedes the policy's TTFT loss against ``baseline``.

    Parameters
    ----------
    workload, config
        The replay's workload and cluster (the baseline runs on the same).
    result, log : SimResult, SnapshotLog
        The policy's replay and its decisions.
    flagged, active : np.ndarray of bool, shape (D,)
        Decisions meeting the flag's condition; decisions after which the finding is active.
    seed : int
        Seed of the baseline run.
    baseline : str
        Baseline policy spec (default ``round-robin``).

    Returns
    -------
    dict
        JSON-ready: the :class:`LossOnset` fields, ``first_flag_time_s``,
        ``first_finding_time_s``, ``flag_precedes_onset``, ``finding_precedes_onset``,
        ``finding_precedes_t10`` (None when there is no loss or no flag), counts, and the
        baseline.
    """
    cfg = dataclasses.replace(config, record_snapshots=False)
    base = Simulator(workload, cfg, parse_spec(baseline), seed=seed).run()
    pol_ttft = np.asarray(result.ttft_s, dtype=np.float64)
    rr_ttft = np.asarray(base.ttft_s, dtype=np.float64)
    arrival = np.asarray(result.arrival_s, dtype=np.float64)
    order = np.argsort(arrival, kind="stable")
    on = loss_onset(arrival[order], (pol_ttft - rr_ttft)[order])
    t = np.asarray(log.time_s, dtype=np.float64)
    first_flag = _first_time(np.asarray(flagged, bool), t)
    first_finding = _first_time(np.asarray(active, bool), t)

    def before(x: float | None, mark: float | None) -> bool | None:
        if x is None or mark is None:
            return None
        return x <= mark

    out = dataclasses.asdict(on)
    out.update({
        "baseline": baseline,
        "policy_ttft_mean_s": float(np.nanmean(pol_ttft)),
        "baseline_ttft_mean_s": float(np.nanmean(rr_ttft)),
        "first_flag_time_s": first_flag, "first_finding_time_s": first_finding,
        "flag_precedes_onset": before(first_flag, on.onset_time_s),
        "finding_precedes_onset": before(first_finding, on.onset_time_s),
        "finding_precedes_t10": before(first_finding, on.t10_time_s),
        "flagged_decisions": int(np.count_nonzero(flagged)),
        "active_decisions": int(np.count_nonzero(active)),
        "decisions": int(t.size),
        "rule": "excess = policy TTFT - baseline TTFT per request in arrival order; onset = "
                "arrival after the last non-positive cumulative excess; t10/t50 = first arrival "
                "where it reaches 10%/50% of its final value",
    })
    return out
