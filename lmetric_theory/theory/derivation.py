"""Derivations (sympy) of every result of the product-vs-linear theory.

Nothing here is a typed-in final formula: each expression is obtained from the score
definitions with ``solve``, ``expand``, ``factor``, ``cancel`` or ``apart``; the
identities that tie the pieces together are listed in :attr:`Derivation.identities`
and proved in the tests with ``simplify(lhs - rhs) == 0``.

Conventions: lower score wins; instance 1 and instance 2 form a pair; ``P`` in
tokens, ``B`` in requests (or KV blocks), ``lam`` in tokens per batch slot.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import sympy as sp

from lmetric_theory.core.definitions import DEFAULT_B0, DEFAULT_P0, BDefinition, PDefinition
from lmetric_theory.theory.base import (  # noqa: F401  (re-exported: the public names live here too)
    B_1,
    B_2,
    P_1,
    P_2,
    SYMBOLS,
    Degenerate,
    Derivation,
    Formula,
    Identity,
    Region,
    Result,
    b_0,
    k_B,
    k_P,
    lam,
    lam_hi,
    lam_lo,
    linear_score,
    p_0,
    product_score,
    solve_one,
)
from lmetric_theory.theory.hotspot import derive_hotspot
from lmetric_theory.theory.replicas import derive_replicas

__all__ = ["derive"]

# -------------------------------------------------------------------------- helpers


def _split_terms(expr: sp.Expr, var: sp.Symbol) -> sp.Expr:
    """Partial fractions in ``var`` with each term factored (the readable form)."""
    return sp.Add(*[sp.factor(t) for t in sp.Add.make_args(sp.apart(sp.cancel(expr), var))])


# --------------------------------------------------------------------- step results
#
# ``derive`` runs one step per result; each step returns the expressions it derived, the
# identities that tie them together and its rendered :class:`Result`. Later steps take
# the earlier ones they build on.


@dataclass(frozen=True, slots=True)
class _Step:
    """What one step derived: its expressions (and statements) by the name of the
    :class:`Derivation` field they fill, read back as attributes (``pw.lam_eff``); the
    identities that tie them together; its rendered :class:`Result`."""

    values: dict[str, Any]
    result: Result
    identities: tuple[Identity, ...] = ()

    def __getattr__(self, name: str) -> Any:
        if name == "values":  # pragma: no cover - only before the slot is set
            raise AttributeError(name)
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None


#: The pair's differences.
_dP, _dB = P_1 - P_2, B_1 - B_2


# ------------------------------------------------------------------------- derivation


@functools.cache
def derive() -> Derivation:
    """Derive every result (cached: the first call takes about a second, later ones
    return the same object).

    Returns
    -------
    Derivation
        Named sympy expressions, regions, degenerate cases, identities and the
        plain-language statements of results (a)-(o) ((j)-(l), the hot prefix classes,
        come from :func:`~lmetric_theory.theory.hotspot.derive_hotspot`; (m)-(o), router
        replicas, herding and index errors, from
        :func:`~lmetric_theory.theory.replicas.derive_replicas`).
    """
    sc = _definitions()
    pw = _pairwise_identity(sc)
    be = _break_even(sc, pw)
    geo = _geometry(sc)
    rg = _regret(sc, pw, be)
    si = _scale_invariance(pw)
    dg = _degenerate_cases(sc, pw, be, geo)
    band = _robust_band(sc, pw, be)
    n = _n_instances(be)
    # (j)-(l) hot prefix classes: a cluster-level condition built on (d), derived in its
    # own module
    hot = derive_hotspot()
    # (m)-(o) router state as deployed (replicas, lag, index error), built on (b)-(d)
    rep = derive_replicas()
    results = (
        sc.result, si.result, pw.result, be.result, geo.result, n.result, dg.result,
        rg.result, band.result, *hot.results, *rep.results,
    )
    steps = (sc, pw, be, geo, rg, si, dg, band, n)  # in the order they are derived
    return Derivation(
        p_definitions=tuple(m.value for m in PDefinition),
        b_definitions=tuple(m.value for m in BDefinition),
        default_p0=DEFAULT_P0,
        default_b0=DEFAULT_B0,
        **{name: value for step in steps for name, value in step.values.items()},
        identities=(
            *(i for step in steps for i in step.identities), *hot.identities,
            *rep.identities,
        ),
        results=results,
    )


# ------------------------------------------------------------------ (a) definitions


def _definitions() -> _Step:
    """(a) The product and linear scores of instances 1 and 2."""
    S_1, S_2 = product_score(P_1, B_1), product_score(P_2, B_2)
    C_1, C_2 = linear_score(P_1, B_1), linear_score(P_2, B_2)
    result = Result(
        "definitions", "a", "Definitions",
        "Lower score wins. The product (LMetric) score multiplies the prefill tokens the "
        "request would cost on instance i by its batch size, each with an offset; the "
        "linear score adds them with an exchange rate λ (prefill tokens per batch "
        "slot). P counts the request's uncached tokens ('uncached') or queued prefill "
        "plus uncached ('queued+uncached'); B counts running or in-flight requests. "
        "Defaults p0 = 0, b0 = 1. Every result below holds for either definition.",
        (
            Formula("S_i", "S_i", "S_i", product_score(sp.Symbol("P_i"), sp.Symbol("B_i"))),
            Formula("C_i", "C_i", "C_i", linear_score(sp.Symbol("P_i"), sp.Symbol("B_i"))),
        ),
    )
    return _Step(dict(S_1=S_1, S_2=S_2, C_1=C_1, C_2=C_2), result)


# ------------------------------------------------------------------- (c) pairwise


def _pairwise_identity(sc: _Step) -> _Step:
    """(c) Write each pair as mean +- half difference and collect the difference terms."""
    S_1, S_2, dP, dB = sc.S_1, sc.S_2, _dP, _dB
    mP, mB, hP, hB = sp.symbols("m_P m_B d_P d_B", real=True)
    centred = {P_1: mP + hP / 2, P_2: mP - hP / 2, B_1: mB + hB / 2, B_2: mB - hB / 2}
    poly = sp.Poly(sp.expand((S_1 - S_2).subs(centred)), hP, hB)
    if set(poly.as_dict()) != {(1, 0), (0, 1)}:  # pragma: no cover - derivation bug
        raise RuntimeError(f"S_1 - S_2 is not linear in the differences: {poly}")
    means = {mP: (P_1 + P_2) / 2, mB: (B_1 + B_2) / 2}
    prefill_weight = poly.coeff_monomial(hP).subs(means)  # mean(B) + b0
    batch_weight = poly.coeff_monomial(hB).subs(means)  # mean(P) + p0
    pairwise_rhs = prefill_weight * dP + batch_weight * dB
    lam_eff = sp.factor(sp.cancel(batch_weight / prefill_weight))
    identities = (
        Identity(
            "pairwise_identity", S_1 - S_2, pairwise_rhs,
            "S_1 - S_2 = (mean(B) + b0)(P_1 - P_2) + (mean(P) + p0)(B_1 - B_2).",
        ),
        Identity(
            "product_is_linear_at_lam_eff", S_1 - S_2,
            prefill_weight * linear_score(P_1, B_1, lam_eff)
            - prefill_weight * linear_score(P_2, B_2, lam_eff),
            "For each pair the product ranks like linear(λ_eff), scaled by "
            "mean(B) + b0 > 0.",
        ),
    )
    result = Result(
        "pairwise_identity", "c", "Pairwise identity and the effective exchange rate",
        "For every pair, the product's difference is a linear score difference whose "
        "weights are the pair's mean batch (+ b0) and mean prefill (+ p0): the product "
        "chooses exactly as linear(λ_eff) would, with a rate that adapts to the "
        "state - more prefill-tolerant when instances hold many tokens, more "
        "batch-averse when batches are small.",
        (
            Formula("lhs", "S_1 - S_2", "S_1 - S_2", S_1 - S_2),
            Formula("rhs", "S_1 - S_2", "S_1 - S_2", pairwise_rhs),
            Formula("lam_eff", "λ_eff", r"\lambda_{\mathrm{eff}}", lam_eff),
        ),
    )
    return _Step(
        dict(pairwise_lhs=S_1 - S_2, pairwise_rhs=pairwise_rhs, prefill_weight=prefill_weight,
             batch_weight=batch_weight, lam_eff=lam_eff),
        result, identities,
    )


# ------------------------------------------------------------------ (d) break-even


def _break_even(sc: _Step, pw: _Step) -> _Step:
    """(d) The rate at which linear(λ) flips, and when the two scores disagree."""
    S_1, S_2, C_1, C_2, dB = sc.S_1, sc.S_2, sc.C_1, sc.C_2, _dB
    lam_eff = pw.lam_eff
    rate = sp.Dummy("rate", real=True)
    lam_star = solve_one(_linear_diff(rate), rate)
    conflict_rhs = sp.factor(sp.expand(lam_star * dB**2))
    conflict_condition = sp.StrictLessThan(sp.factor(-conflict_rhs), 0)
    disagreement_lhs = (S_1 - S_2) * (C_1 - C_2)
    disagreement_rhs = pw.prefill_weight * dB**2 * (lam - lam_star) * (lam_eff - lam_star)
    between = sp.StrictLessThan((lam - lam_star) * (lam_eff - lam_star), 0)
    identities = (
        Identity(
            "linear_difference_factors", C_1 - C_2, dB * (lam - lam_star),
            "C_1 - C_2 = (B_1 - B_2)(λ - λ*): linear(λ) flips at λ*.",
        ),
        Identity(
            "conflict_sign", lam_star * dB**2, conflict_rhs,
            "λ* > 0 exactly when (P_1 - P_2)(B_1 - B_2) < 0 (a conflicting pair).",
        ),
        Identity(
            "disagreement_factors", disagreement_lhs, disagreement_rhs,
            "(S_1 - S_2)(C_1 - C_2) = (mean(B) + b0)(B_1 - B_2)^2 (λ - λ*)"
            "(λ_eff - λ*).",
        ),
    )
    result = Result(
        "disagreement", "d", "Break-even rate and exact disagreement condition",
        "A conflicting pair (one instance needs fewer prefill tokens, the other has the "
        "smaller batch) has a break-even rate λ* > 0 at which linear(λ) "
        "changes its choice; a dominated pair has λ* <= 0 (or none) and never "
        "disagrees (λ and λ_eff are >= 0). Whenever mean(B) + b0 > 0, product "
        "and linear(λ) strictly disagree exactly when λ* lies strictly "
        "between λ and λ_eff, i.e. (S_1 - S_2)(C_1 - C_2) < 0. "
        "Ties are separate: λ = λ* is a linear tie, λ_eff = "
        "λ* a product tie, B_1 = B_2 leaves both ranking by P; none is a "
        "disagreement.",
        (
            Formula("lam_star", "λ*", r"\lambda^{*}", lam_star),
            Formula("conflict", "conflicting pair", r"\text{conflict}", conflict_condition),
            Formula("disagreement_lhs", "(S_1 - S_2)(C_1 - C_2)", r"(S_1 - S_2)(C_1 - C_2)",
                    disagreement_lhs),
            Formula("disagreement_rhs", "(S_1 - S_2)(C_1 - C_2)", r"(S_1 - S_2)(C_1 - C_2)",
                    disagreement_rhs),
            Formula("disagreement", "strict disagreement", r"\text{disagree}", between),
        ),
    )
    return _Step(
        dict(lam_star=lam_star, conflict_condition=conflict_condition,
             disagreement_lhs=disagreement_lhs, disagreement_rhs=disagreement_rhs,
             disagreement_condition=sp.StrictLessThan(disagreement_lhs, 0),
             disagreement_between=between),
        result, identities,
    )


def _linear_diff(rate: sp.Expr) -> sp.Expr:
    """``C_1 - C_2`` at the exchange rate ``rate``."""
    return linear_score(P_1, B_1, rate) - linear_score(P_2, B_2, rate)


# -------------------------------------------------------------------- (e) geometry


def _geometry(sc: _Step) -> _Step:
    """(e) Fix instance 1: the product's hyperbola and linear(λ)'s line through it in the
    ``(P_2, B_2)`` plane, where they meet, and the regions where the scores disagree."""
    S_1, S_2, C_1, C_2 = sc.S_1, sc.S_2, sc.C_1, sc.C_2
    hyperbola_B2 = _split_terms(solve_one(S_2 - S_1, B_2), P_2)
    line_B2 = _split_terms(solve_one(C_2 - C_1, B_2), lam)
    intersections = _intersections(S_2 - S_1, C_2 - C_1)
    second_P2, second_B2 = sp.expand(intersections[1][0]), intersections[1][1]
    gap = sp.factor(sp.together(hyperbola_B2 - line_B2))
    tangent_lam = solve_one(second_P2 - P_1, lam)
    # Which side of each curve favours which instance: S_2 - S_1 and C_2 - C_1
    # factor through B_2 minus the curve.
    s_side = sp.factor(sp.cancel((S_2 - S_1) / (B_2 - hyperbola_B2)))  # P_2 + p_0 > 0
    c_side = sp.factor(sp.cancel((C_2 - C_1) / (B_2 - line_B2)))  # lam > 0
    identities = (
        Identity(
            "hyperbola_is_product_isocurve", S_2.subs(B_2, hyperbola_B2), S_1,
            "Every point of the hyperbola has the product score of instance 1.",
        ),
        Identity(
            "line_is_linear_isoline", C_2.subs(B_2, line_B2), C_1,
            "Every point of the line has the linear score of instance 1.",
        ),
        Identity(
            "product_side_of_hyperbola", S_2 - S_1, s_side * (B_2 - hyperbola_B2),
            "S_2 - S_1 = (P_2 + p0)(B_2 - hyperbola): above the hyperbola the product "
            "favours instance 1.",
        ),
        Identity(
            "linear_side_of_line", C_2 - C_1, c_side * (B_2 - line_B2),
            "C_2 - C_1 = λ (B_2 - line): above the line linear(λ) favours instance 1.",
        ),
        Identity(
            "second_intersection_on_hyperbola",
            product_score(second_P2, second_B2), S_1,
            "The second intersection has the product score of instance 1.",
        ),
        Identity(
            "second_intersection_on_line",
            linear_score(second_P2, second_B2), C_1,
            "The second intersection has the linear score of instance 1.",
        ),
        Identity(
            "gap_factors", hyperbola_B2 - line_B2, gap,
            "hyperbola - line = (P_2 - P_1)(P_2 - P_2*) / (λ (P_2 + p0)).",
        ),
    )
    product_above = 1 if s_side.subs({P_2: 1 - p_0}) > 0 else 2  # P_2 + p0 = 1 > 0
    linear_above = 1 if c_side.subs(lam, 1) > 0 else 2
    regions = _regions(hyperbola_B2, line_B2, second_P2, product_above, linear_above)
    result = Result(
        "geometry", "e", "Geometry in the plane of instance 2's state",
        "Fix instance 1. In the (P_2, B_2) plane the product's iso-curve through "
        "instance 1 is a hyperbola (asymptotes P_2 = -p0, B_2 = -b0) and linear(λ)'s "
        "is a line of slope -1/λ. They meet at instance 1 and at one second point; "
        "they touch when λ = (P_1 + p0)/(B_1 + b0). Between the two points the line "
        "lies above the hyperbola (bounded lens: product keeps 1, linear moves to 2); "
        "outside them the hyperbola lies above the line (two unbounded parts: product "
        "moves to 2, linear keeps 1). Above both curves both keep 1; below both, both "
        "move to 2. Only the part with P_2, B_2 >= 0 is reachable.",
        (
            Formula("hyperbola", "B_2 (product iso-curve)", r"B_2^{\mathrm{prod}}",
                    hyperbola_B2),
            Formula("line", "B_2 (linear iso-line)", r"B_2^{\mathrm{lin}}", line_B2),
            Formula("second_P2", "P_2 (second intersection)", r"P_2^{\times}", second_P2),
            Formula("second_B2", "B_2 (second intersection)", r"B_2^{\times}", second_B2),
            Formula("gap", "hyperbola - line", r"B_2^{\mathrm{prod}} - B_2^{\mathrm{lin}}",
                    gap),
            Formula("tangent", "λ (tangent, empty lens)", r"\lambda_{\mathrm{tangent}}",
                    tangent_lam),
        ),
    )
    return _Step(
        dict(hyperbola_B2=hyperbola_B2, line_B2=line_B2, intersections=intersections,
             second_P2=second_P2, second_B2=second_B2, gap=gap, tangent_lam=tangent_lam,
             regions=regions),
        result, identities,
    )


def _intersections(
    product_diff: sp.Expr, linear_diff: sp.Expr
) -> tuple[tuple[sp.Expr, sp.Expr], tuple[sp.Expr, sp.Expr]]:
    """Where both differences vanish in the ``(P_2, B_2)`` plane: instance 1 itself, then
    the one other point (``B_2`` in partial fractions in ``lam``)."""
    X, Y = sp.Dummy("X", real=True), sp.Dummy("Y", real=True)
    sols = sp.solve(
        [product_diff.subs({P_2: X, B_2: Y}), linear_diff.subs({P_2: X, B_2: Y})],
        [X, Y],
        dict=True,
        simplify=False,
    )
    found = tuple((sp.factor(s[X]), _split_terms(s[Y], lam)) for s in sols)
    others = [pt for pt in found if sp.simplify(pt[0] - P_1) != 0]
    if len(found) != 2 or len(others) != 1:  # pragma: no cover - derivation bug
        raise RuntimeError(f"unexpected intersections {found}")
    return (P_1, B_1), others[0]


def _regions(
    hyperbola_B2: sp.Expr, line_B2: sp.Expr, second_P2: sp.Expr, product_above: int,
    linear_above: int,
) -> tuple[Region, ...]:
    """The lens and the two unbounded parts where the product and linear(λ) disagree;
    ``*_above`` is the instance each score favours above its own curve."""
    below = {1: 2, 2: 1}
    lo_x, hi_x = sp.Min(P_1, second_P2), sp.Max(P_1, second_P2)
    return (
        Region(
            "lens", True, lo_x, hi_x, hyperbola_B2, line_B2,
            product_above, below[linear_above],
            "Bounded lens between instance 1 and the second intersection, above the "
            "hyperbola and below the line: the product keeps instance 1, linear(λ) "
            "moves to instance 2. For λ above (P_1 + p0)/(B_1 + b0) the lens lies right "
            "of instance 1 (instance 2 has more tokens and a smaller batch), below it left "
            "(fewer tokens, larger batch).",
        ),
        Region(
            "left", False, -p_0, lo_x, line_B2, hyperbola_B2,
            below[product_above], linear_above,
            "Unbounded part left of both intersections (instance 2 has fewer prefill "
            "tokens and a larger batch), above the line and below the hyperbola: the "
            "product moves to instance 2, linear(λ) keeps instance 1.",
        ),
        Region(
            "right", False, hi_x, sp.oo, line_B2, hyperbola_B2,
            below[product_above], linear_above,
            "Unbounded part right of both intersections (instance 2 has more prefill "
            "tokens and a smaller batch), above the line and below the hyperbola: the "
            "product moves to instance 2, linear(λ) keeps instance 1.",
        ),
    )


# ---------------------------------------------------------------------- (h) regret


def _regret(sc: _Step, pw: _Step, be: _Step) -> _Step:
    """(h) What following the product costs when linear(λ) is the reference."""
    dB = _dB
    regret = sp.expand(sc.C_1 - sc.C_2)
    via_star = sp.factor(dB) * (lam - be.lam_star)
    decomposition = (lam - pw.lam_eff) * dB + (sc.S_1 - sc.S_2) / pw.prefill_weight
    bound = (lam - pw.lam_eff) * sp.factor(dB)
    identities = (
        Identity(
            "regret_via_lam_star", regret, via_star,
            "Regret = (B_1 - B_2)(λ - λ*).",
        ),
        Identity(
            "regret_decomposition", regret, decomposition,
            "Regret = (λ - λ_eff)(B_1 - B_2) + (S_1 - S_2)/(mean(B) + b0); the "
            "last term is <= 0 when the product chose 1.",
        ),
    )
    result = Result(
        "regret", "h", "Regret of following the product",
        "When the product picks 1 and linear(λ) - the reference - picks 2, following "
        "the product costs (P_1 - P_2) + λ (B_1 - B_2) >= 0 prefill-token "
        "equivalents. It equals (B_1 - B_2)(λ - λ*) and is at most "
        "(λ - λ_eff)(B_1 - B_2): the further the pair's adaptive rate is from "
        "the reference rate, the more a disagreement can cost.",
        (
            Formula("regret", "regret", r"\mathrm{regret}", regret),
            Formula("via_star", "regret", r"\mathrm{regret}", via_star),
            Formula("decomposition", "regret", r"\mathrm{regret}", decomposition),
            Formula("bound", "regret bound (product picked 1)", r"\mathrm{regret}_{\max}",
                    bound),
        ),
    )
    return _Step(
        dict(regret=regret, regret_via_star=via_star, regret_decomposition=decomposition,
             regret_bound=bound),
        result, identities,
    )


# ------------------------------------------------------------- (b) scale invariance


def _pair_diff(P_scale: sp.Expr, B_scale: sp.Expr) -> sp.Expr:
    """``S_1 - S_2`` after rescaling ``P`` by ``P_scale`` and ``B`` by ``B_scale``."""
    return product_score(P_scale * P_1, B_scale * B_1) - product_score(
        P_scale * P_2, B_scale * B_2
    )


def _scale_invariance(pw: _Step) -> _Step:
    """(b) Which offsets make the product's choices independent of the units of ``P`` and
    ``B``, and what a rescaling does to either score otherwise."""
    prefill_rescale_remainder = sp.factor(
        sp.expand(_pair_diff(k_P, 1) - k_P * _pair_diff(1, 1))
    )
    batch_rescale_remainder = sp.factor(
        sp.expand(_pair_diff(1, k_B) - k_B * _pair_diff(1, 1))
    )
    (sol_p,) = sp.solve(sp.Poly(prefill_rescale_remainder, B_1, B_2).coeffs(), p_0, dict=True)
    (sol_b,) = sp.solve(sp.Poly(batch_rescale_remainder, P_1, P_2).coeffs(), b_0, dict=True)
    prefill_offset_for_invariance = sol_p[p_0]
    batch_offset_for_invariance = sol_b[b_0]
    q = sp.Dummy("q", real=True)
    prefill_rescale_equivalent_p0 = solve_one(
        sp.expand(product_score(k_P * P_1, B_1) - k_P * product_score(P_1, B_1, q)), q
    )
    batch_rescale_equivalent_b0 = solve_one(
        sp.expand(product_score(P_1, k_B * B_1) - k_B * product_score(P_1, B_1, p_0, q)), q
    )
    linear_lam_after_prefill_rescale = solve_one(
        sp.expand(linear_score(k_P * P_1, B_1) - k_P * linear_score(P_1, B_1, q)), q
    )
    lam_eff = pw.lam_eff
    lam_eff_ratio_after_prefill_rescale = sp.factor(
        sp.cancel(
            lam_eff.subs({P_1: k_P * P_1, P_2: k_P * P_2, p_0: prefill_offset_for_invariance})
            / lam_eff.subs(p_0, prefill_offset_for_invariance)
        )
    )
    identities = (
        Identity(
            "prefill_rescale_remainder", _pair_diff(k_P, 1) - k_P * _pair_diff(1, 1),
            prefill_rescale_remainder,
            "Rescaling P by k_P changes S_1 - S_2 by k_P-times plus p0 (1 - k_P)(B_1 - B_2).",
        ),
        Identity(
            "batch_rescale_remainder", _pair_diff(1, k_B) - k_B * _pair_diff(1, 1),
            batch_rescale_remainder,
            "Rescaling B by k_B changes S_1 - S_2 by k_B-times plus b0 (1 - k_B)(P_1 - P_2).",
        ),
        Identity(
            "prefill_rescale_is_offset_change", product_score(k_P * P_1, B_1),
            k_P * product_score(P_1, B_1, prefill_rescale_equivalent_p0),
            "Rescaling P by k_P ranks like the original with offset p0 / k_P.",
        ),
        Identity(
            "batch_rescale_is_offset_change", product_score(P_1, k_B * B_1),
            k_B * product_score(P_1, B_1, p_0, batch_rescale_equivalent_b0),
            "Rescaling B by k_B ranks like the original with offset b0 / k_B.",
        ),
        Identity(
            "linear_needs_retuning", linear_score(k_P * P_1, B_1),
            k_P * linear_score(P_1, B_1, linear_lam_after_prefill_rescale),
            "Rescaling P by k_P ranks linear(λ) like linear(λ / k_P): λ must be re-tuned.",
        ),
    )
    result = Result(
        "scale_invariance", "b", "Scale invariance (when the hyperparameters cancel)",
        "Rescaling P by k_P != 1 (tokens vs KV blocks) keeps every product choice iff "
        "p0 = 0; rescaling B by k_B != 1 (requests vs KV blocks) keeps them iff b0 = 0 "
        "(otherwise a tie with B_1 != B_2, resp. P_1 != P_2, is broken). Otherwise the "
        "rescaled product ranks like the original with offset p0/k_P (or b0/k_B), so "
        "with the public default b0 = 1 the unit of B matters. The linear score always "
        "needs λ re-tuned to λ/k_P, while the product's implicit rate λ_eff "
        "follows the unit of P by itself (ratio k_P when p0 = 0).",
        (
            Formula("prefill_remainder", "(S'_1 - S'_2) - k_P (S_1 - S_2)",
                    r"(S'_1 - S'_2) - k_P (S_1 - S_2)", prefill_rescale_remainder),
            Formula("prefill_offset", "p_0 for invariance", r"p_0^{\mathrm{inv}}",
                    prefill_offset_for_invariance),
            Formula("equivalent_p0", "equivalent p_0 after P -> k_P P",
                    r"p_0^{\mathrm{equiv}}", prefill_rescale_equivalent_p0),
            Formula("batch_remainder", "(S'_1 - S'_2) - k_B (S_1 - S_2)",
                    r"(S'_1 - S'_2) - k_B (S_1 - S_2)", batch_rescale_remainder),
            Formula("batch_offset", "b_0 for invariance", r"b_0^{\mathrm{inv}}",
                    batch_offset_for_invariance),
            Formula("equivalent_b0", "equivalent b_0 after B -> k_B B",
                    r"b_0^{\mathrm{equiv}}", batch_rescale_equivalent_b0),
            Formula("linear_lam", "linear λ after P -> k_P P", r"\lambda'",
                    linear_lam_after_prefill_rescale),
            Formula("lam_eff_ratio", "λ_eff ratio after P -> k_P P (p_0 = 0)",
                    r"\lambda_{\mathrm{eff}}' / \lambda_{\mathrm{eff}}",
                    lam_eff_ratio_after_prefill_rescale),
        ),
    )
    return _Step(
        dict(prefill_rescale_remainder=prefill_rescale_remainder,
             batch_rescale_remainder=batch_rescale_remainder,
             prefill_offset_for_invariance=prefill_offset_for_invariance,
             batch_offset_for_invariance=batch_offset_for_invariance,
             prefill_rescale_equivalent_p0=prefill_rescale_equivalent_p0,
             batch_rescale_equivalent_b0=batch_rescale_equivalent_b0,
             linear_lam_after_prefill_rescale=linear_lam_after_prefill_rescale,
             lam_eff_ratio_after_prefill_rescale=lam_eff_ratio_after_prefill_rescale),
        result, identities,
    )


# ------------------------------------------------------------ (g) degenerate cases


def _degenerate_cases(
    sc: _Step, pw: _Step, be: _Step, geo: _Step
) -> _Step:
    """(g) Zero scores, ties and an undefined λ_eff, each with the offsets that reach or
    remove it."""
    S_1, S_2, C_1, C_2 = sc.S_1, sc.S_2, sc.C_1, sc.C_2
    x = sp.Dummy("x", real=True)
    p_zero = solve_one(product_score(x, B_1), x)  # P_1 = -p0
    b_zero = solve_one(product_score(P_1, x), x)  # B_1 = -b0
    p_reach = sp.solve(p_zero >= 0, p_0)  # a nonnegative P reaches it iff p0 <= 0
    b_reach = sp.solve(b_zero >= 0, b_0)
    tie_B2 = geo.hyperbola_B2
    cases = (
        Degenerate(
            "prefill_zero",
            sp.Eq(P_1, p_zero),
            S_1,
            S_1.subs(P_1, p_zero),
            p_reach,
            sp.StrictGreaterThan(p_0, 0),
            "P_i + p0 = 0 makes S_i = 0 whatever the batch: with p0 = 0 a request whose "
            "prompt is fully cached on i (P_i = 0) goes to i however loaded it is (a "
            "hot-spot). A nonnegative P reaches it only when p0 <= 0; any p0 > 0 removes it.",
        ),
        Degenerate(
            "batch_zero",
            sp.Eq(B_1, b_zero),
            S_1,
            S_1.subs(B_1, b_zero),
            b_reach,
            sp.StrictGreaterThan(b_0, 0),
            "B_i + b0 = 0 makes S_i = 0 whatever the cache: with b0 = 0 every idle "
            "instance scores 0, so idle instances tie and prefix-cache hits are ignored "
            "among them. Reached only when b0 <= 0; b0 > 0 (the default b0 = 1) removes it.",
        ),
        Degenerate(
            "product_tie",
            sp.Eq(B_2, tie_B2),
            S_1 - S_2,
            sp.cancel((S_1 - S_2).subs(B_2, tie_B2)),
            None,
            None,
            "S_1 = S_2 on the iso-hyperbola through instance 1; with integer P and B such "
            "ties are real events (e.g. (P, B) = (100, 1) and (50, 3) with b0 = 1). No "
            "offset removes them; the predicates compare exactly and break ties by lowest "
            "index, and a tie is never counted as a disagreement.",
        ),
        Degenerate(
            "linear_tie",
            sp.Eq(lam, be.lam_star),
            C_1 - C_2,
            sp.cancel((C_1 - C_2).subs(lam, be.lam_star)),
            None,
            None,
            "linear(λ) ties exactly at λ = λ* (a boundary of every "
            "disagreement interval); not a disagreement.",
        ),
        Degenerate(
            "equal_batches",
            sp.Eq(B_1, B_2),
            S_1 - S_2,
            sp.factor((S_1 - S_2).subs(B_2, B_1)),
            None,
            None,
            "Equal batches: λ* is undefined, both scores rank by P alone in the "
            "same direction, so the pair never disagrees.",
        ),
        Degenerate(
            "lam_eff_undefined",
            sp.Eq(sp.denom(pw.lam_eff), 0),
            S_1 - S_2,
            sp.factor((S_1 - S_2).subs(B_2, solve_one(sp.denom(pw.lam_eff), B_2))),
            b_reach,
            sp.StrictGreaterThan(b_0, 0),
            "mean(B) + b0 = 0 (only with b0 <= 0; with b0 = 0 both instances idle): the "
            "product then weights only the batch difference and λ_eff is undefined; "
            "b0 > 0 removes it.",
        ),
    )
    result = Result(
        "degenerate_cases", "g", "Degenerate cases and which offsets remove them",
        " ".join(d.statement for d in cases),
        tuple(
            Formula(d.name, d.name.replace("_", " "),
                    r"\text{" + d.name.replace("_", r"\_") + "}", d.condition)
            for d in cases
        ),
    )
    return _Step(dict(degenerate=cases), result)


# ----------------------------------------------------------------- (i) robust band

_BAND_BOUNDARY_RULE = (
    "With λ_lo <= λ_hi and mean(B) + b0 > 0: some λ in [λ_lo, λ_hi] "
    "strictly disagrees with the product iff B_1 != B_2 and λ* lies in the "
    "OPEN interval (min(λ_lo, λ_eff), max(λ_hi, λ_eff)) and "
    "λ* != λ_eff. Boundaries: λ* equal to a band end that is "
    "a hull end means linear(λ) only ties there (no disagreement); λ* = "
    "λ_eff means the product ties (no disagreement for any λ). Equivalently, "
    "division-free: (S_1 - S_2)(C_1 - C_2) < 0 at λ_lo or at λ_hi. The product's "
    "choice is strictly the linear choice for every λ in the band iff "
    "(S_1 - S_2)(C_1 - C_2) > 0 at both ends, i.e. S_1 != S_2 and λ* is "
    "outside the CLOSED hull (or B_1 = B_2)."
)


def _robust_band(sc: _Step, pw: _Step, be: _Step) -> _Step:
    """(i) When the product agrees with linear(λ) for every λ of a band
    ``[lam_lo, lam_hi]``."""
    lam_eff, lam_star = pw.lam_eff, be.lam_star
    rate = sp.Dummy("rate", real=True)
    d_at = sp.Lambda(rate, (sc.S_1 - sc.S_2) * _linear_diff(rate))
    disagrees = sp.Or(sp.StrictLessThan(d_at(lam_lo), 0), sp.StrictLessThan(d_at(lam_hi), 0))
    agrees_strictly = sp.And(
        sp.StrictGreaterThan(d_at(lam_lo), 0), sp.StrictGreaterThan(d_at(lam_hi), 0)
    )
    hull_lo = sp.Min(lam_lo, lam_eff)
    hull_hi = sp.Max(lam_hi, lam_eff)
    hull_rule = sp.And(
        sp.Ne(B_1, B_2),
        sp.Ne(lam_star, lam_eff),
        sp.StrictLessThan(hull_lo, lam_star),
        sp.StrictLessThan(lam_star, hull_hi),
    )
    result = Result(
        "robust_band", "i", "Robust band of exchange rates",
        "If the right rate is only known to lie in [λ_lo, λ_hi], the product's "
        "choice agrees with linear(λ) for every λ in the band iff λ* lies "
        "outside the hull of {λ_lo, λ_hi, λ_eff}. " + _BAND_BOUNDARY_RULE,
        (
            Formula("hull_lo", "hull low end", r"\underline{h}", hull_lo),
            Formula("hull_hi", "hull high end", r"\overline{h}", hull_hi),
            Formula("disagrees", "some λ in band disagrees", r"\exists\lambda", disagrees),
            Formula("hull_rule", "some λ in band disagrees", r"\exists\lambda", hull_rule),
            Formula("agrees_strictly", "strict agreement on the whole band",
                    r"\forall\lambda", agrees_strictly),
        ),
    )
    return _Step(
        dict(band_hull_lo=hull_lo, band_hull_hi=hull_hi, band_disagrees_condition=disagrees,
             band_hull_condition=hull_rule, band_agrees_strictly_condition=agrees_strictly,
             band_boundary_rule=_BAND_BOUNDARY_RULE),
        result,
    )


# --------------------------------------------------------------- (f) N instances

_N_STATEMENT = (
    "Among N instances let i* be the product's choice and j* the linear(λ) choice. "
    "When all scores are distinct, i* != j* exactly when the pair (i*, j*) disagrees "
    "as in (d) - λ*(i*, j*) strictly between λ and λ_eff(i*, j*) - so "
    "one O(N) pass (two argmins, one pair test) decides it; no pair other than "
    "(i*, j*) matters, and the regret of the decision is that pair's regret."
)
_N_TIES_STATEMENT = (
    "With ties and lowest-index tie-breaking, i* != j* exactly when S_i* <= S_j* and "
    "C_j* <= C_i* with at least one strict: a strict pair disagreement, or a "
    "tie-break disagreement (S_i* = S_j*, i.e. λ* = λ_eff; or "
    "C_i* = C_j*, i.e. λ* = λ) that a different tie-break would remove. "
    "'No instance is optimal for both scores' is stronger than a strict pair "
    "disagreement when scores tie: check it in O(N) as 'no k with S_k = min S and "
    "C_k = min C'."
)


def _n_instances(be: _Step) -> _Step:
    """(f) Among N instances the pair (product's choice, linear's choice) decides."""
    pair_condition = sp.StrictLessThan(be.disagreement_lhs, 0)
    result = Result(
        "n_instances", "f", "N instances: one pair decides",
        _N_STATEMENT + " " + _N_TIES_STATEMENT,
        (Formula("pair", "pair (i*, j*) disagrees", r"\text{disagree}(i^*, j^*)",
                 pair_condition),),
    )
    return _Step(
        dict(n_pair_condition=pair_condition, n_statement=_N_STATEMENT,
             n_ties_statement=_N_TIES_STATEMENT),
        result,
    )
