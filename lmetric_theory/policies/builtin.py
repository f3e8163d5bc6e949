"""The built-in routing policies.

Every policy takes ``tie=lowest|random``: ``lowest`` picks the lowest instance index among
equal scores, ``random`` picks uniformly among them with the policy's seeded generator.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from lmetric_theory.core.definitions import (
    LMETRIC_VARIANTS,
    BDefinition,
    PDefinition,
    ScoreDefinition,
)
from lmetric_theory.core.kernel import exact_number, linear_scores_exact, product_scores_exact
from lmetric_theory.core.signals import (
    batch_row,
    batch_signal,
    prefill_row,
    prefill_signal,
    score_row,
)
from lmetric_theory.policies.base import TIE_RULES, DecisionView, Policy, tie_field

__all__ = [
    "CacheAffinity",
    "LMetric",
    "LeastLoaded",
    "Linear",
    "PowerOfTwo",
    "Random",
    "RoundRobin",
    "check_offsets",
    "prefill_signal",
    "batch_signal",
]


def _check_tie(tie: str) -> None:
    if tie not in TIE_RULES:
        raise ValueError(f"tie: {tie!r} is not one of {', '.join(TIE_RULES)}")


def _exact_offset(x: Fraction) -> int | Fraction:
    return exact_number(Fraction(x))


_P_CHOICES = ("",) + tuple(m.value for m in PDefinition)
_B_CHOICES = ("",) + tuple(m.value for m in BDefinition)
_VARIANTS = tuple(LMETRIC_VARIANTS)


def resolve_definitions(params: Any) -> None:
    """Fill empty ``P``, ``B`` (and ``tie``, if the params have ``tie=""``) of frozen params
    from their ``variant`` (:data:`~lmetric_theory.core.definitions.LMETRIC_VARIANTS`);
    explicit ``P=``/``B=`` override the variant's definitions."""
    if params.variant not in LMETRIC_VARIANTS:
        raise ValueError(
            f"variant: {params.variant!r} is not one of {', '.join(_VARIANTS)}")
    v = LMETRIC_VARIANTS[params.variant]
    if not params.P:
        object.__setattr__(params, "P", v.p_definition)
    if not params.B:
        object.__setattr__(params, "B", v.b_definition)
    if getattr(params, "tie", None) == "":
        object.__setattr__(params, "tie", v.tie)
    for key, enum in (("P", PDefinition), ("B", BDefinition)):
        if getattr(params, key) not in {m.value for m in enum}:
            valid = ", ".join(m.value for m in enum)
            raise ValueError(f"{key}: {getattr(params, key)!r} is not one of {valid}")


def variant_field() -> Any:
    """The ``variant`` dataclass field (default ``paper``, the authors' router)."""
    return dataclasses.field(default="paper", metadata={"choices": _VARIANTS})


def definition_field(choices: tuple[str, ...]) -> Any:
    """A ``P``/``B`` dataclass field: empty means "the variant's definition" (``choices``
    are checked by :func:`resolve_definitions`, which names the valid ones)."""
    del choices
    return dataclasses.field(default="")


@dataclass(frozen=True, slots=True)
class LMetricParams:
    """``lmetric`` parameters.

    ``variant`` picks an implementation's ``P`` and ``B`` definitions and its tie rule
    (``paper`` = the authors' router, ``llm-d``, ``dynamo``, ``sglang-fork``, ``legacy``);
    ``P=``/``B=`` override the definitions, ``tie=`` the tie rule; ``p0``, ``b0`` are the
    offsets (exact).
    """

    variant: str = variant_field()
    P: str = definition_field(_P_CHOICES)
    B: str = definition_field(_B_CHOICES)
    p0: Fraction = Fraction(0)
    b0: Fraction = Fraction(1)
    tie: str = ""  # empty: the variant's own tie rule

    def __post_init__(self) -> None:
        resolve_definitions(self)
        _check_tie(self.tie)
        check_offsets(self.p0, self.b0)
        ScoreDefinition(PDefinition(self.P), BDefinition(self.B),
                        _exact_offset(Fraction(self.p0)), _exact_offset(Fraction(self.b0)))


def check_offsets(p0: Fraction, b0: Fraction) -> None:
    """Refuse a negative offset (``p0`` tokens, ``b0`` requests), as the detector does."""
    for key, value in (("p0", p0), ("b0", b0)):
        if Fraction(value) < 0:
            raise ValueError(f"{key} must be >= 0 (offsets are never negative), got {value}")


class LMetric(Policy):
    """LMetric: argmin of ``(P_i + p0) * (B_i + b0)`` (its :attr:`definition`)."""

    name = "lmetric"
    formula = 'argmin (P_i + p0) * (B_i + b0); P, B per variant (default paper: (queued_tokens + new_tokens) * (bs + 1))'
    source = 'blitz-serving/blitz-router docs/dsl/policies.md (lmetric-q) and the public ports; see docs/policies.md'
    Params = LMetricParams

    def choose(self, view: DecisionView) -> int:
        d = self.definition
        P, B = score_row(view, d)  # score_inputs' values as Python numbers, without numpy
        # Exact: Python ints / Fractions (agrees with kernel.argmin_product, tested).
        return self._pick_exact(product_scores_exact(P, B, d.p0, d.b0))


@dataclass(frozen=True, slots=True)
class LinearParams:
    """``linear`` parameters: exchange rate ``lam`` (tokens per batch slot); ``variant``,
    ``P``, ``B`` pick the definitions as for ``lmetric`` (so both score the same signals)."""

    lam: Fraction = Fraction(1024)
    variant: str = variant_field()
    P: str = definition_field(_P_CHOICES)
    B: str = definition_field(_B_CHOICES)
    tie: str = tie_field()

    def __post_init__(self) -> None:
        resolve_definitions(self)
        _check_tie(self.tie)
        if Fraction(self.lam) < 0:
            raise ValueError(f"lam must be >= 0, got {self.lam}")


class Linear(Policy):
    """Linear score: argmin of ``P_i + lam * B_i``."""

    name = "linear"
    formula = 'argmin P_i + lam * B_i (same P, B definitions as lmetric)'
    source = 'the linear combination production routers tune; this project'
    Params = LinearParams

    def __init__(self, params: LinearParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        self.lam = _exact_offset(Fraction(params.lam))
        self._defs = (PDefinition(params.P), BDefinition(params.B))

    def choose(self, view: DecisionView) -> int:
        pd, bd = self._defs
        P = prefill_row(view, pd)
        B = batch_row(view, bd)
        return self._pick_exact(linear_scores_exact(P, B, self.lam))


@dataclass(frozen=True, slots=True)
class TieOnlyParams:
    """Parameters of policies that only choose a tie rule."""

    tie: str = tie_field()

    def __post_init__(self) -> None:
        _check_tie(self.tie)


class RoundRobin(Policy):
    """Instances in turn, 0, 1, ..., N-1, 0, ... (``tie`` has no effect)."""

    name = "round-robin"
    formula = 'instances in turn 0, 1, ..., N-1'
    source = 'classic'
    Params = TieOnlyParams

    def __init__(self, params: TieOnlyParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        self.next = 0

    blind = True

    def choose(self, view: DecisionView) -> int:
        return self.choose_blind(view.uncached.shape[0])

    def choose_blind(self, n_instances: int) -> int:
        i = self.next % n_instances
        self.next = i + 1
        return i


class Random(Policy):
    """Uniformly random instance from the seeded generator."""

    name = "random"
    formula = 'uniformly random instance'
    source = 'classic'
    Params = TieOnlyParams

    blind = True

    def choose(self, view: DecisionView) -> int:
        return self.choose_blind(view.uncached.shape[0])

    def choose_blind(self, n_instances: int) -> int:
        return int(self.rng.integers(n_instances))


class LeastLoaded(Policy):
    """vLLM-v1 data-parallel load score: argmin of ``4 * waiting + running``."""

    name = "least-loaded"
    formula = 'argmin 4 * waiting + running (engine-reported)'
    source = 'vLLM v1 data-parallel load score'
    Params = TieOnlyParams

    def choose(self, view: DecisionView) -> int:
        return self.pick_min(4 * view.waiting.astype(np.int64) + view.running)


@dataclass(frozen=True, slots=True)
class CacheAffinityParams:
    """``cache-affinity`` parameters (defaults as SGLang's gateway documents them).

    ``cache_threshold``: minimum matched fraction of the prompt to follow the cache;
    ``abs_threshold`` (requests) and ``rel_threshold`` (ratio): the load imbalance
    ``max - min > abs_threshold and max > rel_threshold * min`` that switches to least-loaded.
    """

    cache_threshold: float = 0.3
    abs_threshold: int = 64
    rel_threshold: float = 1.5
    tie: str = tie_field()

    def __post_init__(self) -> None:
        _check_tie(self.tie)
        if not 0.0 <= self.cache_threshold <= 1.0:
            raise ValueError(f"cache_threshold must be in [0, 1], got {self.cache_threshold}")
        if self.abs_threshold < 0 or self.rel_threshold < 1.0:
            raise ValueError("abs_threshold must be >= 0 and rel_threshold >= 1")


class CacheAffinity(Policy):
    """Longest prefix hit, falling back to least-loaded when load is imbalanced.

    Load is in-flight requests (running + waiting). When the cluster is imbalanced, or the
    best match covers less than ``cache_threshold`` of the prompt, the request goes to the
    least-loaded instance (SGLang then picks the smallest cache tree; this simulator uses load).
    """

    name = "cache-affinity"
    formula = 'most cached prefix unless load is imbalanced beyond thresholds, then least loaded'
    source = 'SGLang gateway cache-aware policy (documented defaults)'
    Params = CacheAffinityParams

    def choose(self, view: DecisionView) -> int:
        p = self.params
        load = view.running.astype(np.int64) + view.waiting
        lo, hi = int(load.min()), int(load.max())
        if hi - lo > p.abs_threshold and hi > p.rel_threshold * lo:
            return self.pick_min(load)
        hit = view.input_tokens - view.uncached.astype(np.int64)
        best = int(hit.max())
        if view.input_tokens <= 0 or best < p.cache_threshold * view.input_tokens or best == 0:
            return self.pick_min(load)
        # Among instances with the longest hit, the least loaded; then the tie rule.
        return self.pick_min(np.where(hit == best, load, np.iinfo(np.int64).max))


class PowerOfTwo(Policy):
    """Two distinct instances drawn at random; the one with fewer in-flight requests."""

    name = "power-of-two"
    formula = 'two random instances, the less loaded one'
    source = 'power of two choices'
    Params = TieOnlyParams

    def choose(self, view: DecisionView) -> int:
        n = view.uncached.shape[0]
        if n == 1:
            return 0
        a, b = (int(x) for x in self.rng.choice(n, size=2, replace=False))
        la = int(view.running[a]) + int(view.waiting[a])
        lb = int(view.running[b]) + int(view.waiting[b])
        if la != lb:
            return a if la < lb else b
        if self.params.tie == "lowest":
            return min(a, b)
        return a if self.rng.random() < 0.5 else b
