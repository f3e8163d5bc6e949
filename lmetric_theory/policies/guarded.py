"""``guarded-lmetric``: the product score, with a detector-chosen mitigation on flagged decisions.

Every decision is checked by a :class:`~lmetric_theory.detector.Detector` against the linear
reference ``P + lam * B`` (or a band ``lam_lo..lam_hi``). Unflagged decisions go where
``lmetric`` (same ``P``, ``B``, ``p0``, ``b0``, tie rule) would send them; flagged ones get the
configured mitigation:

``fallback_reference``  route by the linear reference for this decision (``fallback`` is
                       accepted as an alias);
``prefill_block``      add ``block`` tokens to ``p0``;
``batch_offset``       add ``batch_add`` slots to ``b0``;
``tie_break_load``     among instances tied on the product score, the smallest batch;
``tie_break_cache``    among instances tied on the product score, the fewest uncached tokens;
``load_cap``           the product's argmin among instances with ``B < cap``;
``auto``               the mitigation the detector's most severe finding recommends;
``counter_sync``       every decision: the product on the replica's counters scaled by
                       ``replicas`` (the queued part of ``P``, ``P - uncached``, and ``B``;
                       result (m)): what synced counters would read;
``scale_batch_offset`` every decision: the product with offsets ``p0/replicas``,
                       ``b0/replicas`` (result (m));
``random_near_ties``   every decision: a uniform pick among the instances within ``near_tie``
                       (relative) of the best product score (result (n): replicas deciding
                       from the same state stop herding);
``hotspot``            no pairwise check: a :class:`~lmetric_theory.detector.hotspot.HotspotMonitor`
                       watches prefix classes (``view.prefix_class``, the leading block hash;
                       an instance holds the class when ``view.hit_blocks > 0``) and, once a hot
                       class is confirmed (phase 2), routes its requests by the product among
                       the instances that were not hot at confirmation. ``hot_window``
                       (decisions) and ``hot_confirm`` (the factor of ``|M|`` in phase 2)
                       set the monitor.

The names are the detector's :class:`~lmetric_theory.detector.MitigationKind` values (one
vocabulary across detector, guard and this policy), except ``shorter_ttl``: it acts on the
router's cache index, not on a decision, so a policy cannot apply it. The three router-state
mitigations correct the replica's view rather than one flagged decision, so they apply at
every decision (with ``replicas=1`` the first two change nothing). The detector gets the exact offsets
``p0``, ``b0`` (Fractions stay Fractions), so it scores exactly what ``lmetric`` scores.

Registered by :func:`lmetric_theory.policies.registry.register_all`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from lmetric_theory.core.signals import score_inputs
from lmetric_theory.detector import Detector, LinearReference, Mitigation, MitigationKind, Snapshot
from lmetric_theory.detector.hotspot import HotspotMonitor
from lmetric_theory.detector.mitigation import mitigated_choice as _mitigated_choice
from lmetric_theory.policies.base import DecisionView, Policy, tie_field
from lmetric_theory.policies.builtin import (
    _B_CHOICES,
    _P_CHOICES,
    LMetric,
    LMetricParams,
    definition_field,
    resolve_definitions,
    variant_field,
)

__all__ = ["GUARD_MITIGATIONS", "GuardedLMetric", "GuardedLMetricParams"]

#: Mitigation names accepted by ``guarded-lmetric``: the detector's kinds, ``auto``, and the
#: alias ``fallback`` (of ``fallback_reference``).
GUARD_MITIGATIONS: tuple[str, ...] = (
    *(k.value for k in MitigationKind
      if k not in (MitigationKind.NONE, MitigationKind.SHORTER_TTL)),
    "auto", "fallback", "hotspot",
)
#: Mitigations applied at every decision (the router-state ones).
_EVERY_DECISION = (MitigationKind.COUNTER_SYNC, MitigationKind.SCALE_BATCH_OFFSET,
                   MitigationKind.RANDOM_NEAR_TIES)
_ALIASES = {"fallback": MitigationKind.FALLBACK_REFERENCE.value}


@dataclass(frozen=True, slots=True)
class GuardedLMetricParams:
    """``guarded-lmetric`` parameters.

    ``variant``, ``P``, ``B``, ``p0``, ``b0``: the product score (as ``lmetric``). ``lam``: reference rate
    (tokens per batch slot); ``lam_lo``/``lam_hi`` > 0 set a band (both or neither).
    ``mitigation``: see the module docstring; ``block`` (tokens), ``batch_add`` (slots),
    ``cap`` (requests), ``replicas`` (router replicas ``R``) and ``near_tie`` (relative score
    tolerance) are the mitigation values.
    """

    mitigation: str = dataclasses.field(default="fallback", metadata={"choices": GUARD_MITIGATIONS})
    lam: float = 1024.0
    lam_lo: float = 0.0
    lam_hi: float = 0.0
    variant: str = variant_field()
    P: str = definition_field(_P_CHOICES)
    B: str = definition_field(_B_CHOICES)
    p0: Fraction = Fraction(0)
    b0: Fraction = Fraction(1)
    block: int = 16
    batch_add: int = 1
    cap: int = 32
    hot_window: int = 200
    hot_confirm: int = 2
    replicas: int = 1
    near_tie: float = 0.05
    tie: str = tie_field()

    def __post_init__(self) -> None:
        if self.mitigation not in GUARD_MITIGATIONS:
            raise ValueError(f"mitigation: {self.mitigation!r} is not one of {', '.join(GUARD_MITIGATIONS)}")
        resolve_definitions(self)
        LMetricParams(P=self.P, B=self.B, p0=self.p0, b0=self.b0, tie=self.tie)
        if (self.lam_lo > 0) != (self.lam_hi > 0):
            raise ValueError("lam_lo and lam_hi: give both (> 0) for a band, or neither")
        if not math.isfinite(self.lam) or self.lam < 0:
            raise ValueError(f"lam must be finite and >= 0, got {self.lam}")
        if self.hot_window < 2:
            raise ValueError(f"hot_window must be >= 2, got {self.hot_window}")
        if not math.isfinite(self.near_tie) or self.near_tie <= 0:
            raise ValueError(f"near_tie must be finite and > 0, got {self.near_tie}")
        for k in ("block", "batch_add", "cap", "hot_confirm", "replicas"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")


class GuardedLMetric(Policy):
    """Product score; flagged decisions (detector vs linear reference) get a mitigation."""

    name = "guarded-lmetric"
    formula = "lmetric; decisions the detector flags get a mitigation (fallback to the linear reference, ...; hotspot: exclude a confirmed hot class's instances)"
    source = "this project (detector mitigations; hotspot: this project's two-phase detector of a hot prefix class)"
    Params = GuardedLMetricParams

    def __init__(self, params: GuardedLMetricParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        p = params
        ref = (LinearReference(p.lam, p.lam_lo, p.lam_hi, source="band") if p.lam_lo > 0
               else LinearReference.fixed(p.lam))
        self._product = LMetric(LMetricParams(P=p.P, B=p.B, p0=p.p0, b0=p.b0, tie=p.tie), seed)
        self._product.rng = self.rng  # one generator for ties
        # The product's score definition (exact offsets), shared with the detector.
        d = self.definition
        self.detector = Detector(ref, d.p0, d.b0, block_tokens=p.block, load_cap=float(p.cap))
        values = {
            MitigationKind.PREFILL_BLOCK: float(p.block),
            MitigationKind.BATCH_OFFSET: float(p.batch_add),
            MitigationKind.LOAD_CAP: float(p.cap),
            MitigationKind.COUNTER_SYNC: float(p.replicas),
            MitigationKind.SCALE_BATCH_OFFSET: float(p.replicas),
            MitigationKind.RANDOM_NEAR_TIES: float(p.near_tie),
        }
        kind = _ALIASES.get(p.mitigation, p.mitigation)
        self.mitigation: Mitigation | None = (
            None if kind in ("auto", "hotspot")
            else Mitigation(MitigationKind(kind), values.get(MitigationKind(kind)))
        )
        #: The hot-class monitor (``mitigation=hotspot``; built at the first decision).
        self.hotspot: HotspotMonitor | None = None
        #: Decisions flagged so far.
        self.flagged = 0

    def snapshot(self, view: DecisionView) -> Snapshot:
        """The detector's snapshot of ``view`` (``P`` and ``B`` under this policy's definitions)."""
        P, B = score_inputs(view, self.definition)
        unc = np.asarray(view.uncached, dtype=np.int64)
        return Snapshot.from_arrays(P, B, uncached_tokens=unc, validate=False)

    def choose(self, view: DecisionView) -> int:
        if self.params.mitigation == "hotspot":
            return self._choose_hotspot(view)
        snap = self.snapshot(view)
        m = self.mitigation
        if m is not None and m.kind in _EVERY_DECISION:
            return _mitigated_choice(self.detector.settings, snap, m, rng=self.rng)
        verdict = self.detector.check(snap)
        if not verdict.flagged:
            return self._product.choose(view)
        self.flagged += 1
        return self.detector.mitigated_choice(snap, self.mitigation, verdict=verdict)

    def _choose_hotspot(self, view: DecisionView) -> int:
        """``mitigation=hotspot``: the product, among the allowed instances of a confirmed
        hot class."""
        P, B = score_inputs(view, self.definition)
        if P.shape[0] < 2:
            return self._product.choose(view)
        d = self.definition
        if self.hotspot is None:
            p = self.params
            self.hotspot = HotspotMonitor(P.shape[0], window=p.hot_window,
                                          min_decisions=min(50, p.hot_window),
                                          confirm_factor=p.hot_confirm,
                                          p0=float(d.p0), b0=float(d.b0))
        hit = np.asarray(view.hit_blocks) > 0
        mask = self.hotspot.observe(int(getattr(view, "prefix_class", -1)), hit, P, B,
                                    decision=view.decision)
        if mask is None or not mask.any():
            return self._product.choose(view)
        self.flagged += 1
        idx = np.flatnonzero(mask).tolist()
        Pl, Bl = P.tolist(), B.tolist()
        return idx[self._pick_exact([(Pl[i] + d.p0) * (Bl[i] + d.b0) for i in idx])]
