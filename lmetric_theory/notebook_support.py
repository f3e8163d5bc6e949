"""Glue for the notebooks: locate the shared data, sweep policies, a lam grid, audit a run.

Thin wrappers over :mod:`lmetric_theory.sim`, :mod:`lmetric_theory.workload` and
:mod:`lmetric_theory.detector`, so the notebooks keep only plotting and prose. Nothing
here prints or writes files; :func:`find_shared` only looks for a folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmetric_theory.detector import Detector, LinearReference, Mitigation, Verdicts
from lmetric_theory.sim import SimConfig, SimResult, Simulator, SnapshotLog, load_preset, simulate
from lmetric_theory.workload import Workload, load_trace, scale_rate, select, synthetic

__all__ = [
    "MOONCAKE_NAME",
    "AuditRun",
    "LamSweep",
    "audit_run",
    "band_disagreement",
    "counterfactual_ttft",
    "find_shared",
    "mitigation_table",
    "policy_sweep",
    "signals",
    "sweep_lam",
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


@dataclass(frozen=True, slots=True)
class LamSweep:
    """Result of :func:`sweep_lam`.

    Attributes
    ----------
    lams : np.ndarray, shape (K,)
        Rates tried, tokens per batch slot.
    objective : np.ndarray, shape (K,)
        The objective at each rate (seconds).
    best : float
        Rate with the lowest objective.
    reference : LinearReference
        ``LinearReference.tuned`` with the band of rates within tolerance of the best.
    """

    lams: np.ndarray
    objective: np.ndarray
    best: float
    reference: LinearReference


def sweep_lam(
    workload: Workload,
    *,
    lams: Sequence[float],
    n_instances: int,
    preset: str = "h100-llama3-8b",
    objective: str = "ttft_mean_s",
    tolerance: float = 0.05,
    P: str = "uncached",
    B: str = "running",
    seed: int = 0,
) -> LamSweep:
    """Tune the linear score's rate by simulation over a grid (a small ``tuned-linear``).

    Parameters
    ----------
    lams : sequence of float
        Rates to try (tokens per batch slot), >= 0.
    objective : str
        A key of :meth:`SimResult.summary` to minimise.
    tolerance : float
        Relative slack defining the band: rates within ``(1 + tolerance) * best``.
    P, B : str
        Signal definitions of the linear policy.

    Returns
    -------
    LamSweep
    """
    cfg = _config(preset, n_instances)
    lam_arr = np.asarray(sorted(float(x) for x in lams))
    if lam_arr.size == 0:
        raise ValueError("lams: need at least one rate")
    obj = np.array([
        simulate(workload, cfg, f"linear:lam={lam:g},P={P},B={B}", seed=seed).summary()[objective]
        for lam in lam_arr
    ])
    i = int(np.nanargmin(obj))
    ok = lam_arr[obj <= obj[i] * (1.0 + tolerance)]
    ref = LinearReference.tuned(
        float(lam_arr[i]), objective=objective, source=f"grid of {lam_arr.size} rates, {n_instances} instances",
        lam_lo=float(ok.min()), lam_hi=float(ok.max()),
    )
    return LamSweep(lam_arr, obj, float(lam_arr[i]), ref)


def signals(log: SnapshotLog, P: str = "uncached", B: str = "running") -> tuple[np.ndarray, np.ndarray]:
    """``P`` and ``B`` per decision and instance from a snapshot log, shapes (D, N), int64.

    ``P``: ``"uncached"`` or ``"queued+uncached"`` (tokens); ``B``: ``"running"`` or
    ``"in-flight"`` (running + waiting, requests).
    """
    unc = log.uncached.astype(np.int64)
    if P == "uncached":
        p = unc
    elif P == "queued+uncached":
        p = unc + log.queued.astype(np.int64)
    else:
        raise ValueError(f"P: unknown {P!r}; valid: 'uncached', 'queued+uncached'")
    run = log.running.astype(np.int64)
    if B == "running":
        b = run
    elif B == "in-flight":
        b = run + log.waiting.astype(np.int64)
    else:
        raise ValueError(f"B: unknown {B!r}; valid: 'running', 'in-flight'")
    return p, b


def band_disagreement(
    P: np.ndarray, B: np.ndarray, chosen: np.ndarray, lam_lo: float, lam_hi: float
) -> np.ndarray:
    """Decisions whose choice no linear rate in ``[lam_lo, lam_hi]`` would make, shape (D,).

    Exact: ``chosen[d]`` is a (possibly tied) argmin of ``P + lam * B`` for some ``lam``
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
    P = np.asarray(P, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    rows = np.arange(P.shape[0])
    c = np.asarray(chosen, dtype=np.int64)
    dP = P[rows, c][:, None] - P
    dB = B[rows, c][:, None] - B
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = -dP / dB
    lo = np.where(dB < 0, bound, -np.inf).max(axis=1)
    hi = np.where(dB > 0, bound, np.inf).min(axis=1)
    flat_bad = ((dB == 0) & (dP > 0)).any(axis=1)
    return flat_bad | (np.maximum(lo, lam_lo) > np.minimum(hi, lam_hi))


@dataclass(frozen=True, slots=True)
class AuditRun:
    """A product-score run checked decision by decision (see :func:`audit_run`).

    Attributes
    ----------
    result : SimResult
        The simulated run (routed by ``policy``).
    verdicts : Verdicts
        One verdict per decision against the reference.
    P, B : np.ndarray, shape (D, N)
        Signals the detector saw (tokens, requests).
    """

    result: SimResult
    verdicts: Verdicts
    P: np.ndarray
    B: np.ndarray


def audit_run(
    workload: Workload,
    *,
    reference: LinearReference,
    n_instances: int,
    preset: str = "h100-llama3-8b",
    policy: str = "lmetric",
    P: str = "uncached",
    B: str = "running",
    prefill_offset: float = 0,
    batch_offset: float = 1,
    seed: int = 0,
) -> AuditRun:
    """Simulate ``policy`` and check each of its decisions' views with :class:`Detector`."""
    res = simulate(workload, _config(preset, n_instances), policy, seed=seed)
    if res.snapshots is None:
        raise ValueError("the simulator recorded no snapshots (record_snapshots=False)")
    p, b = signals(res.snapshots, P, B)
    det = Detector(reference, prefill_offset, batch_offset)
    return AuditRun(res, det.check_many(p, b), p, b)


def mitigation_table(run: AuditRun, mitigations: Sequence[Mitigation]) -> list[dict[str, object]]:
    """What each mitigation does to the flagged decisions of an audit.

    For each mitigation, applied only to flagged decisions: how many of the
    disagreements it resolves (now picks the reference's instance) and the remaining
    mean linear-score regret over the disagreements (tokens).
    """
    v = run.verdicts
    det = v.detector
    lam = float(det.reference.lam)
    lin = run.P + lam * run.B  # (D, N) float
    best = lin.min(axis=1)
    dis = v.disagrees
    rows = []
    for m in mitigations:
        ch = det.mitigated_choices(run.P, run.B, m, only=v.flagged)
        regret = lin[np.arange(len(ch)), ch] - best
        fixed = int(np.count_nonzero(dis & (ch == v.linear_choice)))
        rows.append({
            "mitigation": m.message,
            "disagreements": int(dis.sum()),
            "resolved": fixed,
            "mean_regret_tokens_on_disagreements": float(regret[dis].mean()) if dis.any() else 0.0,
        })
    return rows


def counterfactual_ttft(
    workload: Workload,
    *,
    decisions: Sequence[int],
    alternatives: Sequence[int],
    n_instances: int,
    preset: str = "h100-llama3-8b",
    policy: str = "lmetric",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """TTFT change (seconds, alternative minus actual) when one decision is re-routed.

    For each decision ``d``: run ``policy`` up to ``d``, fork, force ``d`` to its
    alternative instance, finish both copies with ``policy`` and compare. Later decisions
    may change too (knock-on effects), so the mean change includes them.

    Returns
    -------
    own, mean : np.ndarray, shape (len(decisions),), float64
        Change of the re-routed request's own TTFT, and of the mean TTFT over all
        completed requests.
    """
    cfg = _config(preset, n_instances)
    own = np.empty(len(decisions))
    mean = np.empty(len(decisions))
    for k, (d, alt) in enumerate(zip(decisions, alternatives, strict=True)):
        sim = Simulator(workload, cfg, policy, seed=seed)
        sim.advance(until_decision=int(d))
        fork = sim.fork()
        fork.force(int(d), int(alt))
        base, other = sim.run(), fork.run()
        rid_b = int(base.snapshots.request[d]) if base.snapshots is not None else int(d)
        own[k] = float(other.ttft_s[rid_b]) - float(base.ttft_s[rid_b])
        mean[k] = float(other.summary()["ttft_mean_s"]) - float(base.summary()["ttft_mean_s"])
    return own, mean
