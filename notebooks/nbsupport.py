"""Glue for the notebooks: locate the shared data, sweep policies, check a band of rates.

Only what the packaged modules do not already offer lives here. Tuning the linear rate is
:func:`lmetric_theory.experiments.tuning.tune_linear` (band: :func:`lmetric_theory.audit.reference_from_tuning`),
auditing a run is :func:`lmetric_theory.audit.audit_workload` (its report ranks the
mitigations) and the forked-replay study is :func:`lmetric_theory.experiments.counterfactual.counterfactual_study`;
the notebooks call those directly. Nothing here prints or writes files; :func:`find_shared`
only looks for a folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lmetric_theory.core.kernel import band_violation
from lmetric_theory.sim import SimConfig, load_preset, simulate
from lmetric_theory.workload import Workload, load_trace, scale_rate, select, synthetic

__all__ = [
    "MOONCAKE_NAME",
    "band_disagreement",
    "find_shared",
    "policy_sweep",
    "trace_or_synthetic",
]

#: File name of the shared Mooncake conversation trace inside ``shared/traces``.
MOONCAKE_NAME = "mooncake_conversation_trace.jsonl"


def find_shared(start: str | Path | None = None) -> Path | None:
    """The shared data folder: the first ``<ancestor>/shared/traces`` walking up from ``start``.

    Parameters
    ----------
    start : path, optional
        Where to start (default: the current directory). The folder itself and each of
        its parents is tried, so the project root (``../shared``) and ``notebooks/``
        (``../../shared``) both resolve.

    Returns
    -------
    Path or None
        The ``shared`` folder, or None when no ancestor has one.
    """
    here = Path.cwd() if start is None else Path(start)
    here = here.resolve()
    for d in (here, *here.parents):
        cand = d / "shared"
        if (cand / "traces").is_dir():
            return cand
    return None


def trace_or_synthetic(
    *,
    count: int | None,
    seed: int = 0,
    kind: str = "chat",
    rate_rps: float = 8.0,
    start: str | Path | None = None,
) -> tuple[Workload, str]:
    """The shared Mooncake trace (first ``count`` requests), or a synthetic stand-in.

    Parameters
    ----------
    count : int or None
        Keep at most this many requests (None: all).
    seed : int
        Seed of the synthetic fallback.
    kind : str
        Synthetic kind used when the trace is absent.
    rate_rps : float
        Arrival rate of the synthetic fallback, requests per second.
    start : path, optional
        Where :func:`find_shared` starts looking.

    Returns
    -------
    (Workload, str)
        The workload and a label: ``"mooncake"`` or ``"synthetic-<kind> (trace absent)"``.
    """
    shared = find_shared(start)
    path = None if shared is None else shared / "traces" / MOONCAKE_NAME
    if path is not None and path.is_file():
        w = load_trace(path)
        return (select(w, count=count) if count is not None else w), "mooncake"
    n = 2000 if count is None else count
    return synthetic(kind, n_requests=n, rate_rps=rate_rps, seed=seed), f"synthetic-{kind} (trace absent)"


def _config(preset: str, n_instances: int) -> SimConfig:
    return SimConfig.from_preset(load_preset(preset), n_instances)


def policy_sweep(
    workload: Workload,
    *,
    policies: Sequence[str],
    loads: Sequence[float],
    n_instances: int,
    preset: str = "h100-llama3-8b",
    seed: int = 0,
) -> list[dict[str, object]]:
    """Simulate every policy at every load (arrival-rate factor).

    Parameters
    ----------
    workload : Workload
    policies : sequence of str
        Policy specs for :func:`lmetric_theory.policies.make_policy`.
    loads : sequence of float
        Arrival-rate factors for :func:`lmetric_theory.workload.scale_rate`.
    n_instances : int
    preset : str
        Latency preset name.
    seed : int

    Returns
    -------
    list of dict
        One row per (load, policy): ``load``, ``policy`` and the
        :meth:`SimResult.summary` figures (seconds, shares).
    """
    rows: list[dict[str, object]] = []
    cfg = _config(preset, n_instances)
    for k in loads:
        w = scale_rate(workload, k)
        for spec in policies:
            s = simulate(w, cfg, spec, seed=seed).summary()
            rows.append({"load": float(k), "policy": spec, **s})
    return rows


def band_disagreement(
    P: np.ndarray, B: np.ndarray, chosen: np.ndarray, lam_lo: float, lam_hi: float
) -> np.ndarray:
    """Decisions whose choice no linear rate in ``[lam_lo, lam_hi]`` would make, shape (D,).

    The kernel's :func:`lmetric_theory.core.kernel.band_violation`: ``chosen[d]`` is a
    (possibly tied) argmin of ``P + lam * B`` for some ``lam``
    in the band iff the half-lines ``(P_i - P_j) + lam (B_i - B_j) <= 0`` over all
    ``j`` meet the band. Ties count as agreement.

    Parameters
    ----------
    P, B : np.ndarray, shape (D, N)
        Prefill tokens and batch sizes per decision and instance.
    chosen : np.ndarray, shape (D,)
        The instance each decision went to.
    lam_lo, lam_hi : float
        The band, tokens per batch slot, ``0 <= lam_lo <= lam_hi``.
    """
    return band_violation(P, B, chosen, lam_lo, lam_hi)
