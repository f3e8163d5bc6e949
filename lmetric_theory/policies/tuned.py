"""``tuned-linear``: the linear score with ``lam`` tuned on the workload it is about to route.

The tuning itself is a simulation sweep, so it lives in :mod:`lmetric_theory.experiments.tuning`
(:func:`~lmetric_theory.experiments.tuning.prepare_tuned` tunes and binds,
:func:`~lmetric_theory.experiments.tuning.resolve_policy` turns a typed spec into the
equivalent ``linear`` spec). This module holds only the policy: it routes with ``linear`` once a rate has
been bound with :meth:`TunedLinear.bind`, and refuses to route before.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from lmetric_theory.policies.base import DecisionView, Policy, tie_field
from lmetric_theory.policies.builtin import (
    _B_CHOICES,
    _P_CHOICES,
    Linear,
    LinearParams,
    definition_field,
    resolve_definitions,
    variant_field,
)
from lmetric_theory.policies.spec import PolicySpec, coerce_value, format_value

__all__ = ["OBJECTIVES", "TunedLinear", "TunedLinearParams", "linear_spec"]

#: Objectives (keys of ``SimResult.summary()``, all "lower is better", seconds).
OBJECTIVES: tuple[str, ...] = ("ttft_mean", "ttft_p50", "ttft_p90", "ttft_p99", "tpot_mean", "tpot_p99")


def linear_spec(lam: float | Fraction, P: str, B: str, tie: str) -> PolicySpec:
    """The ``linear`` spec with rate ``lam`` (tokens per batch slot; a float is the decimal
    number it prints as) and these settings, parameters set in the order ``lam, P, B, tie``."""
    rate = coerce_value("linear", "lam", lam, Fraction)
    params = LinearParams(lam=rate, P=P, B=B, tie=tie)
    return PolicySpec("linear", params, (("lam", format_value(rate)), ("P", params.P),
                                         ("B", params.B), ("tie", params.tie)))


@dataclass(frozen=True, slots=True)
class TunedLinearParams:
    """``tuned-linear`` parameters: grid bounds and size, objective, definitions, refinement."""

    lam_min: float = 1.0
    lam_max: float = 65536.0
    points: int = 9
    objective: str = dataclasses.field(default="ttft_mean", metadata={"choices": OBJECTIVES})
    refine: bool = False
    variant: str = variant_field()
    P: str = definition_field(_P_CHOICES)
    B: str = definition_field(_B_CHOICES)
    tie: str = tie_field()

    def __post_init__(self) -> None:
        resolve_definitions(self)
        if not (math.isfinite(self.lam_min) and math.isfinite(self.lam_max) and 0 < self.lam_min < self.lam_max):
            raise ValueError(f"need 0 < lam_min < lam_max, got {self.lam_min}, {self.lam_max}")
        if self.points < 2:
            raise ValueError(f"points must be >= 2, got {self.points}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective: {self.objective!r} is not one of {', '.join(OBJECTIVES)}")
        # Validates P, B and tie.
        LinearParams(lam=Fraction(1), P=self.P, B=self.B, tie=self.tie)


class TunedLinear(Policy):
    """Linear score with ``lam`` tuned on the workload before the run.

    Call :func:`lmetric_theory.experiments.tuning.prepare_tuned` (or :meth:`bind` with a
    rate found otherwise) before routing.
    """

    name = "tuned-linear"
    formula = "linear with lam chosen by simulating the workload over a log-spaced grid (optimistic: tuned on the workload it is evaluated on)"
    source = "this project"
    Params = TunedLinearParams

    def __init__(self, params: TunedLinearParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        #: The tuning outcome (an object with ``lam``) once bound, else None.
        self.result: Any = None
        self._linear: Policy | None = None

    def bind(self, result: Any) -> None:
        """Route with ``result.lam`` (tokens per batch slot) from now on.

        Parameters
        ----------
        result : object with a float ``lam``
            Usually a :class:`~lmetric_theory.experiments.tuning.TuneResult`.
        """
        self.result = result
        p = self.params
        self._linear = Linear(linear_spec(result.lam, p.P, p.B, p.tie).params, seed=self.seed)

    @property
    def linear_spec(self) -> PolicySpec:
        """The equivalent ``linear`` spec (after tuning)."""
        if self.result is None:
            raise RuntimeError("tuned-linear is not prepared: call prepare_tuned(policy, workload, "
                               "config) first")
        return linear_spec(self.result.lam, self.params.P, self.params.B, self.params.tie)

    def choose(self, view: DecisionView) -> int:
        if self._linear is None:
            raise RuntimeError("tuned-linear is not prepared: call "
                               "lmetric_theory.experiments.tuning.prepare_tuned (or resolve_policy) "
                               "before simulating")
        return self._linear.choose(view)
