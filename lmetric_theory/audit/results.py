"""What an audit returns: :class:`AuditResult`, holding the typed :class:`AuditReport`, whose
:meth:`AuditReport.to_json` is the report of ``lmetric-theory audit --json`` (strict JSON:
non-finite numbers are ``None``).

JSON keys are stable. The λ keys are ``lam_reference``, ``lam_eff`` and ``lam_eff_in_band``
(and ``lam_eff``, ``lam_star`` in each ``worst`` entry); the former spellings with
``lambda_`` are written beside them as aliases, at the JSON boundary only
(:data:`REPORT_ALIASES`, :data:`WORST_ALIASES`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
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
from lmetric_theory.experiments.hotspots import HotspotEntry
from lmetric_theory.experiments.router_state_log import RouterStateEntry

__all__ = ["REPORT_ALIASES", "WORST_ALIASES", "AuditReport", "AuditResult", "json_safe"]

#: Former top-level key -> its key now; both are written by :meth:`AuditReport.to_json`.
REPORT_ALIASES: dict[str, str] = {
    "lambda_reference": "lam_reference",
    "lambda_eff": "lam_eff",
    "lambda_eff_in_band": "lam_eff_in_band",
}
#: Former key of a ``worst`` entry -> its key now; both are written.
WORST_ALIASES: dict[str, str] = {"lambda_eff": "lam_eff", "lambda_star": "lam_star"}


def _with_aliases(d: dict[str, Any], aliases: dict[str, str]) -> dict[str, Any]:
    """``d`` with each alias written right after the key it stands for."""
    back = {new: old for old, new in aliases.items()}
    out: dict[str, Any] = {}
    for k, val in d.items():
        out[k] = val
        if k in back:
            out[back[k]] = val
    return out


@dataclass(frozen=True, slots=True)
class AuditReport:
    """Summary of an audit; :meth:`to_json` gives the ``--json`` report.

    Attributes
    ----------
    decisions, instances : int
        ``D`` decisions over ``N`` instances.
    disagreements : int
        Decisions where the product's choice is not ``linear(lam)``'s.
    disagreement_rate : float
        ``disagreements / decisions`` (0 without decisions).
    fragile : int
        Decisions that agree at ``lam`` but not with every rate of the band.
    degenerate : dict
        ``{"zero_prefill", "idle_tie", "exact_tie"}`` counts.
    extreme_operating_point, flagged : int
        Decisions with ``lam_eff`` far outside the band; decisions with any finding.
    regret_tokens : dict
        ``{"mean", "p50", "p99", "max", "total", "mean_when_disagreeing"}``, prefill-token
        equivalents.
    lam_reference : dict
        ``{"lam", "lam_lo", "lam_hi", "source", "objective", "provenance"}`` (tokens per
        batch slot).
    lam_eff : dict
        ``{"p1", "p50", "p99"}`` of the finite ``lam_eff``, tokens per batch slot.
    lam_eff_in_band : float or None
        Share of the finite ``lam_eff`` inside the band.
    worst : tuple of dict
        The worst disagreeing decisions by regret (keys in ``docs/audit.md``).
    mitigations : tuple of dict
        Mitigations ranked by evidence.
    time_axis : str
        ``"seconds"`` or ``"decision index"``.
    skipped_lines : int
        Bad input lines skipped.
    config, trace : dict
        Settings of the audit and the input's description.
    hotspots : tuple of HotspotEntry or None
        Hot prefix classes of a replay; None for snapshot audits (no block hashes), and
        then no ``hotspots`` key in the JSON.
    router_state : tuple of RouterStateEntry or None
        Router-state findings (``replica_skew``, ``herding``, ``stale_index``) when the input
        carries the router-state fields (replica, the engines' counters, predicted hits);
        None otherwise, and then no ``router_state`` key in the JSON. Empty with one
        replica, no lag and a precise index.
    """

    decisions: int
    instances: int
    disagreements: int
    disagreement_rate: float
    fragile: int
    degenerate: dict[str, int]
    extreme_operating_point: int
    flagged: int
    regret_tokens: dict[str, float | None]
    lam_reference: dict[str, Any]
    lam_eff: dict[str, float | None]
    lam_eff_in_band: float | None
    worst: tuple[dict[str, Any], ...]
    mitigations: tuple[dict[str, Any], ...]
    time_axis: str
    skipped_lines: int
    config: dict[str, Any] = field(default_factory=dict)
    trace: dict[str, Any] = field(default_factory=dict)
    hotspots: tuple[HotspotEntry, ...] | None = None
    router_state: tuple[RouterStateEntry, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON-ready report (a fresh dict; strict JSON, the documented keys and the
        ``lambda_*`` aliases)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            val = getattr(self, f.name)
            if f.name in ("hotspots", "router_state"):
                if val is not None:
                    out[f.name] = [h.to_json() for h in val]
            elif f.name == "worst":
                out["worst"] = [_with_aliases(w, WORST_ALIASES) for w in val]
            else:
                out[f.name] = val
        return json_safe(_with_aliases(out, REPORT_ALIASES))


@dataclass(frozen=True, slots=True, eq=False)
class AuditResult:
    """Outcome of an audit.

    Attributes
    ----------
    time_s : np.ndarray, shape (D,), float64
        Decision times, seconds (the decision index when the input has no times).
    verdicts : Verdicts
        The detector's verdict on every decision (``D`` decisions over ``N`` instances).
    report : AuditReport
        The summary (``report.to_json()`` is ``lmetric-theory audit --json``).
    reference : LinearReference
        The reference the decisions were checked against.
    """

    time_s: np.ndarray
    verdicts: Verdicts
    report: AuditReport
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
    hotspots: tuple[HotspotEntry, ...] | None = None,
    router_state: tuple[RouterStateEntry, ...] | None = None,
) -> AuditReport:
    D = len(v)
    counts = v.counts()
    ref = det.reference
    dis = int(counts["disagreement"])
    regret = v.regret_tokens
    config = {**config, "extreme_factor": det.extreme_factor, "block_tokens": det.block_tokens,
              "tie_break": det.tie_break}
    return AuditReport(
        decisions=D,
        instances=int(v.prefill_tokens.shape[1]),
        disagreements=dis,
        disagreement_rate=dis / D if D else 0.0,
        fragile=int(counts["fragile"]),
        degenerate={k: int(counts[k]) for k in DEGENERATE_KINDS},
        extreme_operating_point=int(counts["extreme_operating_point"]),
        flagged=int(np.count_nonzero(v.flagged)),
        regret_tokens=json_safe({
            "mean": float(regret.mean()) if D else 0.0,
            **_pct(regret, (50, 99, 100), ("p50", "p99", "max")),
            "total": float(regret.sum()),
            "mean_when_disagreeing": float(regret[v.disagrees].mean()) if dis else 0.0,
        }),
        lam_reference=json_safe({
            "lam": ref.lam, "lam_lo": ref.lam_lo, "lam_hi": ref.lam_hi,
            "source": ref.source, "objective": ref.objective, "provenance": ref.provenance,
        }),
        lam_eff=json_safe(_pct(v.lam_eff, (1, 50, 99), ("p1", "p50", "p99"))),
        lam_eff_in_band=json_safe(_in_band(v.lam_eff, ref)),
        worst=tuple(json_safe(worst_decisions(v, time_s, int(top), ids))),
        mitigations=tuple(json_safe(mitigation_evidence(det, v, U))),
        time_axis=time_axis,
        skipped_lines=int(skipped),
        config=json_safe(config),
        trace=json_safe(trace),
        hotspots=hotspots,
        router_state=router_state,
    )


def _in_band(le: np.ndarray, ref: LinearReference) -> float | None:
    ok = np.isfinite(le)
    if not ok.any():
        return None
    x = le[ok]
    return float(np.mean((x >= ref.lam_lo) & (x <= ref.lam_hi)))
