"""``guarded-lmetric``: the product score, with a detector-chosen mitigation on flagged decisions.

Every decision is checked by a :class:`~lmetric_theory.detector.Detector` against the linear
reference ``P + lam * B`` (or a band ``lam_lo..lam_hi``). Unflagged decisions go where
``lmetric`` (same ``P``, ``B``, ``p0``, ``b0``, tie rule) would send them; flagged ones get the
configured mitigation:

``fallback``        route by the linear reference for this decision;
``prefill_block``   add ``block`` tokens to ``p0``;
``batch_offset``    add ``batch_add`` slots to ``b0``;
``tie_break_load``  among instances tied on the product score, the smallest batch;
``load_cap``        the product's argmin among instances with ``B < cap``;
``auto``            the mitigation the detector's most severe finding recommends.

Registered by :func:`lmetric_theory.policies.registry.register_all`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from lmetric_theory.detector import Detector, LinearReference, Mitigation, MitigationKind, Snapshot
from lmetric_theory.policies.base import DecisionView, Policy, tie_field
from lmetric_theory.policies.builtin import LMetric, LMetricParams

__all__ = ["GUARD_MITIGATIONS", "GuardedLMetric", "GuardedLMetricParams"]

#: Mitigation names accepted by ``guarded-lmetric``.
GUARD_MITIGATIONS: tuple[str, ...] = ("fallback", "prefill_block", "batch_offset", "tie_break_load",
                                      "load_cap", "auto")


@dataclass(frozen=True, slots=True)
class GuardedLMetricParams:
    """``guarded-lmetric`` parameters.

    ``P``, ``B``, ``p0``, ``b0``: the product score (as ``lmetric``). ``lam``: reference rate
    (tokens per batch slot); ``lam_lo``/``lam_hi`` > 0 set a band (both or neither).
    ``mitigation``: see the module docstring; ``block`` (tokens), ``batch_add`` (slots) and
    ``cap`` (requests) are the mitigation values.
    """

    mitigation: str = dataclasses.field(default="fallback", metadata={"choices": GUARD_MITIGATIONS})
    lam: float = 1024.0
    lam_lo: float = 0.0
    lam_hi: float = 0.0
    P: str = "uncached"
    B: str = "running"
    p0: Fraction = Fraction(0)
    b0: Fraction = Fraction(1)
    block: int = 16
    batch_add: int = 1
    cap: int = 32
    tie: str = tie_field()

    def __post_init__(self) -> None:
        if self.mitigation not in GUARD_MITIGATIONS:
            raise ValueError(f"mitigation: {self.mitigation!r} is not one of {', '.join(GUARD_MITIGATIONS)}")
        LMetricParams(P=self.P, B=self.B, p0=self.p0, b0=self.b0, tie=self.tie)
        if (self.lam_lo > 0) != (self.lam_hi > 0):
            raise ValueError("lam_lo and lam_hi: give both (> 0) for a band, or neither")
        if not math.isfinite(self.lam) or self.lam < 0:
            raise ValueError(f"lam must be finite and >= 0, got {self.lam}")
        for k in ("block", "batch_add", "cap"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")


class GuardedLMetric(Policy):
    """Product score; flagged decisions (detector vs linear reference) get a mitigation."""

    name = "guarded-lmetric"
    Params = GuardedLMetricParams

    def __init__(self, params: GuardedLMetricParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        p = params
        ref = (LinearReference(p.lam, p.lam_lo, p.lam_hi, source="band") if p.lam_lo > 0
               else LinearReference.fixed(p.lam))
        self.detector = Detector(ref, float(Fraction(p.p0)), float(Fraction(p.b0)), block_tokens=p.block,
                                 load_cap=float(p.cap))
        self._product = LMetric(LMetricParams(P=p.P, B=p.B, p0=p.p0, b0=p.b0, tie=p.tie), seed)
        self._product.rng = self.rng  # one generator for ties
        kinds = {
            "fallback": Mitigation(MitigationKind.FALLBACK_REFERENCE),
            "prefill_block": Mitigation(MitigationKind.PREFILL_BLOCK, float(p.block)),
            "batch_offset": Mitigation(MitigationKind.BATCH_OFFSET, float(p.batch_add)),
            "tie_break_load": Mitigation(MitigationKind.TIE_BREAK_LOAD),
            "load_cap": Mitigation(MitigationKind.LOAD_CAP, float(p.cap)),
        }
        self.mitigation: Mitigation | None = kinds.get(p.mitigation)
        #: Decisions flagged so far.
        self.flagged = 0

    def snapshot(self, view: DecisionView) -> Snapshot:
        """The detector's snapshot of ``view`` (``P`` and ``B`` under this policy's definitions)."""
        p = self.params
        unc = np.asarray(view.uncached, dtype=np.int64)
        P = unc + np.asarray(view.queued, dtype=np.int64) if p.P == "queued+uncached" else unc
        B = np.asarray(view.running, dtype=np.int64)
        if p.B == "in_flight" or p.B == "in-flight":
            B = B + np.asarray(view.waiting, dtype=np.int64)
        return Snapshot.from_arrays(P, B, uncached_tokens=unc, validate=False)

    def choose(self, view: DecisionView) -> int:
        snap = self.snapshot(view)
        verdict = self.detector.check(snap)
        if not verdict.flagged:
            return self._product.choose(view)
        self.flagged += 1
        return self.detector.mitigated_choice(snap, self.mitigation, verdict=verdict)
