"""Evidence per decision and per mitigation: which mitigations apply, what each would change,
and the worst decisions of an audit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lmetric_theory.detector import (
    FINDING_KINDS,
    Detector,
    Mitigation,
    Verdicts,
)

__all__ = ["candidate_mitigations", "mitigation_evidence", "worst_decisions"]


def _pct(x: np.ndarray, qs: Sequence[float], names: Sequence[str]) -> dict[str, float | None]:
    x = x[np.isfinite(x)]
    if x.size == 0:
        return dict.fromkeys(names)
    return {n: float(v) for n, v in zip(names, np.percentile(x, qs), strict=True)}


def candidate_mitigations(det: Detector) -> list[Mitigation]:
    """Mitigations the audit weighs: the theory's standard set plus the detector's own."""
    out = [
        Mitigation.fallback(),
        Mitigation.prefill_block(det.block_tokens),
        Mitigation.batch_offset(1),
        Mitigation.tie_break("load"),
        Mitigation.tie_break("cache"),
    ]
    if det.load_cap is not None:
        out.append(Mitigation.load_cap(det.load_cap))
    for m in det.mitigations.values():
        if m not in out and m.kind.value != "none":
            out.append(m)
    return out


def mitigation_evidence(
    det: Detector, v: Verdicts, uncached_tokens: np.ndarray | None = None
) -> list[dict[str, Any]]:
    """Rank mitigations by how many flagged decisions each fixes.

    For every candidate mitigation ``m`` and the flagged decisions ``F``:
    ``fixes`` counts decisions in ``F`` that disagree with the reference and whose
    mitigated choice (:meth:`Detector.mitigated_choices`) is the reference's choice;
    ``breaks`` counts decisions in ``F`` that agreed and no longer do; ``agree_share`` is
    the share of ``F`` whose mitigated choice equals the reference's choice; and
    ``mean_regret_removed_tokens`` the mean over ``F`` of the regret before minus after
    (prefill-token equivalents, under the reference rate). Sorted by ``fixes``, then
    ``breaks`` (fewer first), then regret removed.
    """
    F = np.flatnonzero(v.flagged)
    lam = float(det.reference.lam)
    kinds_of: dict[Mitigation, list[str]] = {}
    for kind in FINDING_KINDS:
        kinds_of.setdefault(det.mitigations[kind], []).append(kind)
    counts = v.counts()
    out = []
    if F.size:
        P, B = v.prefill_tokens[F], v.batch_size[F]
        i, j = v.product_choice[F], v.linear_choice[F]
        dis = v.disagrees[F]
        rows = np.arange(F.size)
        before = v.regret_tokens[F]
        U = uncached_tokens[F] if uncached_tokens is not None else None
    for m in candidate_mitigations(det):
        rec = {
            "mitigation": m.kind.value,
            "value": m.value,
            "description": m.message,
            "recommended_for": {k: counts[k] for k in kinds_of.get(m, [])},
            "flagged": int(F.size),
        }
        if F.size:
            c = det.mitigated_choices(P, B, m, uncached_tokens=U, validate=False)
            agree = c == j
            after = (P[rows, c] - P[rows, j]).astype(np.float64) + lam * (
                B[rows, c] - B[rows, j]).astype(np.float64)
            rec.update(
                fixes=int(np.count_nonzero(agree & dis)),
                breaks=int(np.count_nonzero(~agree & ~dis)),
                changed=int(np.count_nonzero(c != i)),
                agree_share=float(agree.mean()),
                mean_regret_removed_tokens=float(np.mean(before - after)),
            )
        else:
            rec.update(fixes=0, breaks=0, changed=0, agree_share=None,
                       mean_regret_removed_tokens=0.0)
        out.append(rec)
    out.sort(key=lambda r: (-r["fixes"], r["breaks"], -r["mean_regret_removed_tokens"]))
    for rank, r in enumerate(out, start=1):
        r["rank"] = rank
    return out


def worst_decisions(
    v: Verdicts,
    time_s: np.ndarray,
    top: int,
    ids: list[tuple[str, ...] | None] | None = None,
) -> list[dict[str, Any]]:
    """The ``top`` disagreeing decisions with the largest regret, worst first (ties: earlier
    decision first), each with its snapshot ``P``/``B`` and findings."""
    idx = np.flatnonzero(v.disagrees)
    if idx.size == 0 or top <= 0:
        return []
    order = idx[np.argsort(-v.regret_tokens[idx], kind="stable")][:top]
    out = []
    for k in order.tolist():
        verdict = v[k]
        entry: dict[str, Any] = {
            "decision": int(k),
            "time_s": float(time_s[k]),
            "product_choice": verdict.product_choice,
            "linear_choice": verdict.linear_choice,
            "regret_tokens": verdict.regret_tokens,
            "lam_eff": verdict.lam_eff,
            "lam_star": verdict.lam_star,
            "P": v.prefill_tokens[k].tolist(),
            "B": v.batch_size[k].tolist(),
            "findings": [
                {"kind": f.kind, "severity": str(f.severity), "message": f.message,
                 "mitigation": f.mitigation.kind.value, "mitigation_value": f.mitigation.value,
                 "instances": list(f.instances)}
                for f in verdict.findings
            ],
        }
        if ids is not None and ids[k] is not None:
            entry["instance_ids"] = list(ids[k])
        out.append(entry)
    return out
