"""The detector's words: severity per finding kind and the message of each finding."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmetric_theory.core.kernel import product_scores_exact, tied_product
from lmetric_theory.detector.findings import Finding, Severity

if TYPE_CHECKING:
    from lmetric_theory.detector.settings import DetectorSettings
    from lmetric_theory.detector.snapshot import Snapshot

__all__ = ["EMPTY", "SEVERITY", "build_findings"]

#: Severity of each finding kind.
SEVERITY = {
    "disagreement": Severity.WARNING,
    "fragile": Severity.INFO,
    "zero_prefill": Severity.CRITICAL,
    "idle_tie": Severity.WARNING,
    "exact_tie": Severity.INFO,
    "extreme_operating_point": Severity.WARNING,
    # router-state findings (lmetric_theory.detector.router_state)
    "replica_skew": Severity.WARNING,
    "herding": Severity.WARNING,
    "stale_index": Severity.WARNING,
}
#: The findings of an unflagged decision (one shared empty tuple).
EMPTY: tuple[Finding, ...] = ()


def build_findings(
    settings: DetectorSettings,
    snap: Snapshot,
    i: int,
    j: int,
    r: int,
    flags: tuple[bool, ...],
    lam_eff: float,
    regret: float,
) -> tuple[Finding, ...]:
    """The findings (kind, severity, message, mitigation, instances) of one flagged decision.

    Parameters
    ----------
    settings : DetectorSettings
        The offsets, the reference and its band, the extreme factor and the mitigations.
    snap : Snapshot
        The decision.
    i, j, r : int
        Product choice, linear choice, rival (see :mod:`lmetric_theory.detector.detector`).
    flags : tuple of bool
        disagreement, fragile, zero_prefill, idle_tie, exact_tie, extreme_operating_point.
    lam_eff : float
        Rate of the pair ``(i, r)``, tokens per slot.
    regret : float
        Regret of the product's choice, prefill-token equivalents.
    """
    P, B = snap.prefill_list, snap.batch_list  # Python numbers: cheaper to index and format
    p0, b0 = settings.prefill_offset, settings.batch_offset
    lab = snap.label
    lam, lam_lo, lam_hi = settings.lam, settings.lam_lo, settings.lam_hi
    m = settings.mitigations
    out: list[Finding] = []
    disagree, fragile, zp, idle, tie, extreme = flags
    if disagree:
        out.append(
            Finding(
                "disagreement",
                SEVERITY["disagreement"],
                f"product picks {lab(i)} (P={P[i]}, B={B[i]}) but linear(lam={lam:g}) "
                f"picks {lab(j)} (P={P[j]}, B={B[j]}); regret {regret:g} prefill-token "
                f"equivalents; the product used lam_eff={lam_eff:g}",
                m["disagreement"],
                (i, j),
            )
        )
    if fragile:
        out.append(
            Finding(
                "fragile",
                SEVERITY["fragile"],
                f"product and linear(lam={lam:g}) both pick {lab(i)}, but some rate in "
                f"the band [{lam_lo:g}, {lam_hi:g}] picks another instance",
                m["fragile"],
                (i,),
            )
        )
    if zp:
        hot = tuple(k for k, (p, b) in enumerate(snap.pairs) if p + p0 == 0 and b > 0)
        out.append(
            Finding(
                "zero_prefill",
                SEVERITY["zero_prefill"],
                f"P + p0 = 0 on loaded instance(s) {', '.join(lab(k) for k in hot)}: their "
                "product score is 0 whatever their batch size (hot-spot)",
                m["zero_prefill"],
                hot,
            )
        )
    if idle:
        idl = tuple(k for k, b in enumerate(B) if b + b0 == 0)
        out.append(
            Finding(
                "idle_tie",
                SEVERITY["idle_tie"],
                f"B + b0 = 0 on {len(idl)} instances ({', '.join(lab(k) for k in idl)}): "
                "all score 0 whatever their prefill tokens; the index breaks the tie",
                m["idle_tie"],
                idl,
            )
        )
    if tie:
        if snap.integral and settings.integer_offsets:
            S = product_scores_exact(P, B, p0, b0)
            si = S[i]
            tied = tuple(k for k, s in enumerate(S) if s == si)
        else:
            tied = tied_product(snap.prefill_tokens, snap.batch_size, p0, b0, i)
        out.append(
            Finding(
                "exact_tie",
                SEVERITY["exact_tie"],
                f"{len(tied)} instances ({', '.join(lab(k) for k in tied)}) tie on the "
                f"minimum product score; the lowest index ({lab(i)}) wins",
                m["exact_tie"],
                tied,
            )
        )
    if extreme:
        low = lam_eff < lam_lo
        out.append(
            Finding(
                "extreme_operating_point",
                SEVERITY["extreme_operating_point"],
                f"lam_eff={lam_eff:g} of ({lab(i)}, {lab(r)}) is more than "
                f"{settings.extreme_factor:g}x {'below' if low else 'above'} the band "
                f"[{lam_lo:g}, {lam_hi:g}]: the product "
                f"{'under' if low else 'over'}-weights load here",
                m["extreme_low"] if low else m["extreme_operating_point"],
                (i, r),
            )
        )
    return tuple(out) if out else EMPTY
