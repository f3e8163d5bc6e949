"""Symbols, score definitions and the result types shared by every derivation in
:mod:`lmetric_theory.theory` (pairwise results a-i in ``derivation``, hot prefix classes j-l
in ``hotspot``, router state m-o in ``replicas``); a module of its own so the derivations
import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

__all__ = [
    "SYMBOLS",
    "Degenerate",
    "Derivation",
    "Formula",
    "Identity",
    "Region",
    "Result",
    "linear_score",
    "product_score",
]

# ----------------------------------------------------------------------------- symbols

P_1, P_2, B_1, B_2 = sp.symbols("P_1 P_2 B_1 B_2", nonnegative=True)
p_0, b_0 = sp.symbols("p_0 b_0", real=True)
lam = sp.Symbol("lam", nonnegative=True)
lam_lo, lam_hi = sp.symbols("lam_lo lam_hi", nonnegative=True)
k_P, k_B = sp.symbols("k_P k_B", positive=True)

#: Every symbol the emitted expressions use, by name (pass as ``local_dict`` to
#: ``sympy.parse_expr`` to get back identical objects).
SYMBOLS: dict[str, sp.Symbol] = {
    s.name: s for s in (P_1, P_2, B_1, B_2, p_0, b_0, lam, lam_lo, lam_hi, k_P, k_B)
}


def product_score(P: sp.Expr, B: sp.Expr, p0: sp.Expr = p_0, b0: sp.Expr = b_0) -> sp.Expr:
    """Symbolic LMetric score ``(P + p0) * (B + b0)``."""
    return (P + p0) * (B + b0)


def linear_score(P: sp.Expr, B: sp.Expr, rate: sp.Expr = lam) -> sp.Expr:
    """Symbolic linear score ``P + rate * B``."""
    return P + rate * B


def solve_one(equation: sp.Expr, symbol: sp.Symbol) -> sp.Expr:
    """The unique solution of ``equation == 0`` for ``symbol``, factored (solved over an
    assumption-free real dummy so sympy does not drop solutions of unknown sign)."""
    x = sp.Dummy(symbol.name, real=True)
    sols = sp.solve(equation.subs(symbol, x), x, simplify=False)
    if len(sols) != 1:  # pragma: no cover - a derivation bug, not an input error
        raise RuntimeError(f"expected one solution for {symbol}, got {sols}")
    return sp.factor(sols[0])


# ------------------------------------------------------------------------ result types


@dataclass(frozen=True, slots=True)
class Formula:
    """One displayed expression: ``label = expr`` (or ``label: expr`` for relations).

    Attributes
    ----------
    key : str
        Machine name (used as JSON key where the JSON layout has no fixed key).
    label : str
        Plain-text left-hand side, e.g. ``"S_1 - S_2"``; empty for a bare relation.
    latex_label : str
        LaTeX of the left-hand side.
    expr : sympy.Basic
        The expression or relation.
    """

    key: str
    label: str
    latex_label: str
    expr: sp.Basic


@dataclass(frozen=True, slots=True)
class Identity:
    """A derived identity ``lhs == rhs`` (tests prove ``simplify(lhs - rhs) == 0``)."""

    name: str
    lhs: sp.Expr
    rhs: sp.Expr
    statement: str


@dataclass(frozen=True, slots=True)
class Region:
    """One part of the disagreement region in the plane of instance 2's state.

    ``P_2`` ranges over the open interval ``(P2_lower, P2_upper)`` and ``B_2`` over
    ``(B2_lower, B2_upper)``; inside, the product favours ``product_favours`` and
    ``linear(lam)`` favours ``linear_favours`` (instance number 1 or 2).
    """

    name: str
    bounded: bool
    P2_lower: sp.Expr
    P2_upper: sp.Expr
    B2_lower: sp.Expr
    B2_upper: sp.Expr
    product_favours: int
    linear_favours: int
    statement: str


@dataclass(frozen=True, slots=True)
class Degenerate:
    """A degenerate case of the product score.

    Attributes
    ----------
    name : str
    condition : sympy relation
        When the case occurs.
    value_of : sympy expression
        The score (or score difference) the case is about.
    value : sympy expression
        What ``value_of`` becomes under ``condition`` (derived by substitution).
    reachable_when : sympy relation or None
        Offsets for which the case occurs with nonnegative ``P``/``B``; ``None`` when
        it occurs for every offset.
    removed_by : sympy relation or None
        Offsets that remove the case; ``None`` when no offset does.
    statement : str
        Routing meaning.
    """

    name: str
    condition: sp.Basic
    value_of: sp.Expr
    value: sp.Expr
    reachable_when: sp.Basic | None
    removed_by: sp.Basic | None
    statement: str


@dataclass(frozen=True, slots=True)
class Result:
    """One numbered result of the theory, for rendering (item letter as in the issue)."""

    key: str
    item: str
    title: str
    statement: str
    formulas: tuple[Formula, ...]


@dataclass(frozen=True, slots=True)
class Derivation:
    """Everything :func:`derive` obtains, as named sympy expressions plus statements.

    Pair quantities refer to instance 1 and instance 2; for the geometry, instance 1
    is fixed and ``(P_2, B_2)`` is the plane. See the module docstring of
    :mod:`lmetric_theory.theory.derivation` for conventions.
    """

    # (a) definitions
    S_1: sp.Expr
    S_2: sp.Expr
    C_1: sp.Expr
    C_2: sp.Expr
    p_definitions: tuple[str, ...]
    b_definitions: tuple[str, ...]
    default_p0: int
    default_b0: int
    # (b) scale invariance
    prefill_rescale_remainder: sp.Expr
    batch_rescale_remainder: sp.Expr
    prefill_offset_for_invariance: sp.Expr
    batch_offset_for_invariance: sp.Expr
    prefill_rescale_equivalent_p0: sp.Expr
    batch_rescale_equivalent_b0: sp.Expr
    linear_lam_after_prefill_rescale: sp.Expr
    lam_eff_ratio_after_prefill_rescale: sp.Expr
    # (c) pairwise identity
    pairwise_lhs: sp.Expr
    pairwise_rhs: sp.Expr
    prefill_weight: sp.Expr
    batch_weight: sp.Expr
    lam_eff: sp.Expr
    # (d) break-even rate and disagreement
    lam_star: sp.Expr
    conflict_condition: sp.Basic
    disagreement_lhs: sp.Expr
    disagreement_rhs: sp.Expr
    disagreement_condition: sp.Basic
    disagreement_between: sp.Basic
    # (e) geometry
    hyperbola_B2: sp.Expr
    line_B2: sp.Expr
    intersections: tuple[tuple[sp.Expr, sp.Expr], ...]
    second_P2: sp.Expr
    second_B2: sp.Expr
    gap: sp.Expr
    tangent_lam: sp.Expr
    regions: tuple[Region, ...]
    # (f) N instances
    n_pair_condition: sp.Basic
    n_statement: str
    n_ties_statement: str
    # (g) degenerate cases
    degenerate: tuple[Degenerate, ...]
    # (h) regret
    regret: sp.Expr
    regret_via_star: sp.Expr
    regret_decomposition: sp.Expr
    regret_bound: sp.Expr
    # (i) robust band
    band_hull_lo: sp.Expr
    band_hull_hi: sp.Expr
    band_disagrees_condition: sp.Basic
    band_hull_condition: sp.Basic
    band_agrees_strictly_condition: sp.Basic
    band_boundary_rule: str
    # all identities (tests prove each) and the rendering order
    identities: tuple[Identity, ...]
    results: tuple[Result, ...]

    def result(self, key: str) -> Result:
        """The result with JSON key ``key`` (``KeyError`` listing valid keys otherwise)."""
        for r in self.results:
            if r.key == key:
                return r
        raise KeyError(f"unknown result {key!r}; valid: {', '.join(r.key for r in self.results)}")

    # The rates were first named ``lambda_*``; those names remain as read-only aliases.

    @property
    def lambda_eff(self) -> sp.Expr:
        """Alias of :attr:`lam_eff`, the product's pairwise exchange rate."""
        return self.lam_eff

    @property
    def lambda_star(self) -> sp.Expr:
        """Alias of :attr:`lam_star`, the pair's break-even rate ``lam*``."""
        return self.lam_star

    @property
    def lambda_eff_ratio_after_prefill_rescale(self) -> sp.Expr:
        """Alias of :attr:`lam_eff_ratio_after_prefill_rescale`."""
        return self.lam_eff_ratio_after_prefill_rescale
