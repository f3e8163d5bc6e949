"""What an audit returns: :class:`AuditResult` and its JSON-ready report (strict JSON:
non-finite numbers are ``None``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lmetric_theory.audit.evidence import _pct, mitigation_evidence, worst_decisions
from lmetric_theory.core.fileio import json_safe  # re-exported: the audit's strict JSON
from lmetric_theory.detector import (
    DEGENERATE_KINDS,
    Detector,
    LinearReference,
    Verdicts,
)

__all__ = ["AuditResult", "json_safe"]


@dataclass(frozen=True, slots=True, eq=False)
class AuditResult:
    """Outcome of an audit.

    Attributes
    ----------
    time_s : np.ndarray, shape (D,), float64
        Decision times, seconds (the decision index when the input has no times).
    verdicts : Verdicts
        The detector's verdict on every decision (``D`` decisions over ``N`` instances).
    report : dict
        JSON-ready summary (keys as ``lmetric-theory audit --json``; see module docs).
    reference : LinearReference
        The reference the decisions were checked against.
    """

    time_s: np.ndarray
    verdicts: Verdicts
    report: dict[str, Any]
    reference: LinearReference


def _build_report(
    det: Detector,
    v: Verdicts,
    time_s: np.ndarray,
    U: np.ndarray | None,
    ids: list[tuple[str, ...] | None] | None,
    *,
    top: int,
    trace: dict[str, Any],
    config: dict[str, Any],
    skipped: int,
    time_axis: str,
) -> dict[str, Any]:
    D = len(v)
    counts = v.counts()
    ref = det.reference
    dis = int(counts["disagreement"])
    regret = v.regret_tokens
    config = {**config, "extreme_factor": det.extreme_factor, "block_tokens": det.block_tokens,
              "tie_break": det.tie_break}
    report: dict[str, Any] = {
        "decisions": D,
        "instances": int(v.prefill_tokens.shape[1]),
        "disagreements": dis,
        "disagreement_rate": dis / D if D else 0.0,
        "fragile": int(counts["fragile"]),
        "degenerate": {k: int(counts[k]) for k in DEGENERATE_KINDS},
        "extreme_operating_point": int(counts["extreme_operating_point"]),
        "flagged": int(np.count_nonzero(v.flagged)),
        "regret_tokens": {
            "mean": float(regret.mean()) if D else 0.0,
            **_pct(regret, (50, 99, 100), ("p50", "p99", "max")),
            "total": float(regret.sum()),
            "mean_when_disagreeing": float(regret[v.disagrees].mean()) if dis else 0.0,
        },
        "lambda_reference": {
            "lam": ref.lam, "lam_lo": ref.lam_lo, "lam_hi": ref.lam_hi,
            "source": ref.source, "objective": ref.objective, "provenance": ref.provenance,
        },
        "lambda_eff": _pct(v.lam_eff, (1, 50, 99), ("p1", "p50", "p99")),
        "lambda_eff_in_band": _in_band(v.lam_eff, ref),
        "worst": worst_decisions(v, time_s, int(top), ids),
        "mitigations": mitigation_evidence(det, v, U),
        "time_axis": time_axis,
        "skipped_lines": int(skipped),
        "config": config,
        "trace": trace,
    }
    return json_safe(report)


def _in_band(le: np.ndarray, ref: LinearReference) -> float | None:
    ok = np.isfinite(le)
    if not ok.any():
        return None
    x = le[ok]
    return float(np.mean((x >= ref.lam_lo) & (x <= ref.lam_hi)))
