"""Hot prefix classes: when the product piles one class of requests on the instances that
cache it (derived with sympy, in the notation of :mod:`lmetric_theory.theory.derivation`).

Setting
-------
Requests fall into prefix classes. ``M`` is the set of instances whose cache holds class
``c``'s shared prefix (the *hot* instances), ``Mbar`` the others; ``|M|`` and ``|Mbar|``
are their sizes (symbols ``M`` and ``Mbar``). A class-``c`` request needs ``P_hit``
prefill tokens on a hot instance ``h`` and ``P_miss >= P_hit`` on a cold one ``o``;
``B_h`` and ``B_o`` are their batch sizes (requests). Class ``c`` is a share ``x`` of
the arrivals, all other classes a share ``xbar``; ``QPS`` is the total arrival rate
(requests/s), ``BS0`` the common starting batch, ``mu`` the rate (1/s) at which one
request leaves its batch (service time ``1/mu`` seconds).

Results (each a :class:`~lmetric_theory.theory.derivation.Result`; the identities that
tie them together are :class:`~lmetric_theory.theory.derivation.Identity` objects proved
in ``tests/test_hotspot_theory.py`` with ``simplify(lhs - rhs) == 0``):

(j) pair spill: the product keeps class ``c`` on ``h`` while the batch ratio
    ``(B_h + b0)/(B_o + b0)`` is below ``(P_miss + p0)/(P_hit + p0)``; ``linear(lam)``
    while ``B_h - B_o < (P_miss - P_hit)/lam``.
(k) growth: with no departures the hot batch grows as ``BS0 + x QPS t/|M|`` against
    ``BS0 + xbar QPS t/|Mbar|``; the hot batch is the larger iff ``x/xbar > |M|/|Mbar|``.
(l) when the condition is necessary and when sufficient: the spill needs the ratio to
    pass the tolerance, not 1; the time to reach it, and with departures the arrival rate
    at which the steady-state (Little's law) batches reach it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction

import sympy as sp

from lmetric_theory.theory.base import SYMBOLS, Formula, Identity, Result, solve_one

__all__ = [
    "HOTSPOT_SYMBOLS",
    "HotspotTheory",
    "brute_force_spill_batch",
    "derive_hotspot",
    "hotspot_results",
    "spill_batch",
]

p_0, b_0, lam = SYMBOLS["p_0"], SYMBOLS["b_0"], SYMBOLS["lam"]
P_hit, P_miss, B_h, B_o = sp.symbols("P_hit P_miss B_h B_o", nonnegative=True)
x, xbar, QPS, t, mu = sp.symbols("x xbar QPS t mu", positive=True)
M, Mbar = sp.symbols("M Mbar", positive=True)
BS0 = sp.Symbol("BS0", nonnegative=True)

#: Symbols of the hot-spot results, by name (pass to ``sympy.parse_expr`` as ``local_dict``).
HOTSPOT_SYMBOLS: dict[str, sp.Symbol] = {
    s.name: s
    for s in (P_hit, P_miss, B_h, B_o, x, xbar, QPS, t, mu, M, Mbar, BS0, p_0, b_0, lam)
}

#: Meaning of each hot-spot symbol (units), for rendering.
SYMBOL_MEANING: dict[str, str] = {
    "P_hit": "prefill tokens of a class-c request on a hot instance (tokens, >= 0)",
    "P_miss": "prefill tokens of a class-c request on a cold instance (tokens, >= P_hit)",
    "B_h": "batch size of a hot instance (requests)",
    "B_o": "batch size of a cold instance (requests)",
    "x": "share of arrivals in class c (0 < x <= 1)",
    "xbar": "share of all other arrivals (usually 1 - x)",
    "QPS": "total arrival rate (requests/s)",
    "t": "time since the batches were equal (s)",
    "mu": "departure rate of one request from its batch (1/s); 1/mu is its service time",
    "M": "|M|, number of instances caching class c",
    "Mbar": "|Mbar|, number of the other instances",
    "BS0": "common starting batch size (requests)",
}


@dataclass(frozen=True, slots=True)
class HotspotTheory:
    """Everything :func:`derive_hotspot` obtains (sympy expressions, see the module docstring).

    Attributes
    ----------
    stay_margin : sympy.Expr
        ``S_h - S_o``; class-``c`` requests stay on ``h`` while it is negative.
    product_spill_B_h : sympy.Expr
        The hot batch at which the product ties (``S_h = S_o``), requests.
    product_tolerance : sympy.Expr
        Batch ratio ``(B_h + b0)/(B_o + b0)`` at the product's tie.
    product_spill_gap : sympy.Expr
        ``B_h - B_o`` at the product's tie, requests.
    linear_spill_gap : sympy.Expr
        ``B_h - B_o`` at which ``linear(lam)`` ties, requests.
    lam_matching_product : sympy.Expr
        The rate whose linear spill gap equals the product's at this ``B_o``.
    hot_batch, cold_batch : sympy.Expr
        Batches after ``t`` seconds with no departures, requests.
    batch_difference : sympy.Expr
        ``hot_batch - cold_batch`` in factored form.
    growth_condition : sympy relation
        ``x/xbar > |M|/|Mbar|``: the hot batch grows faster.
    limit_ratio : sympy.Expr
        ``lim_{t->oo}`` of the batch ratio with no departures.
    sufficient_condition : sympy relation
        The product spills (eventually, no departures) iff this holds.
    spill_time : sympy.Expr
        Seconds until the product spills, no departures (positive iff sufficient).
    linear_spill_time : sympy.Expr
        Seconds until ``linear(lam)`` spills, same model (positive iff growth condition).
    steady_hot_batch, steady_cold_batch : sympy.Expr
        Little's-law steady-state batches with departures at rate ``mu``, requests.
    spill_qps : sympy.Expr
        Arrival rate at which the steady-state batches reach the product's tolerance.
    identities : tuple of Identity
    results : tuple of Result
    """

    stay_margin: sp.Expr
    product_spill_B_h: sp.Expr
    product_tolerance: sp.Expr
    product_spill_gap: sp.Expr
    linear_spill_gap: sp.Expr
    lam_matching_product: sp.Expr
    hot_batch: sp.Expr
    cold_batch: sp.Expr
    batch_difference: sp.Expr
    growth_condition: sp.Basic
    limit_ratio: sp.Expr
    sufficient_condition: sp.Basic
    spill_time: sp.Expr
    linear_spill_time: sp.Expr
    steady_hot_batch: sp.Expr
    steady_cold_batch: sp.Expr
    spill_qps: sp.Expr
    identities: tuple[Identity, ...]
    results: tuple[Result, ...]


@functools.cache
def derive_hotspot() -> HotspotTheory:
    """Derive the hot-spot results (cached; about a second the first time).

    Returns
    -------
    HotspotTheory
    """
    S_h = (P_hit + p_0) * (B_h + b_0)
    S_o = (P_miss + p_0) * (B_o + b_0)
    C_h = P_hit + lam * B_h
    C_o = P_miss + lam * B_o
    ids: list[Identity] = []

    # ------------------------------------------------------------- (j) pair spill
    spill_B_h = solve_one(S_h - S_o, B_h)
    tolerance = sp.factor(sp.cancel((spill_B_h + b_0) / (B_o + b_0)))
    spill_gap = sp.factor(sp.cancel(spill_B_h - B_o))
    linear_gap = sp.factor(solve_one(C_h - C_o, B_h) - B_o)
    lam_match = solve_one(sp.numer(sp.together(linear_gap - spill_gap)), lam)
    # at the product's tie, lam_eff of the pair equals its lam* (the pair ties)
    lam_eff_pair = ((P_hit + P_miss) / 2 + p_0) / ((B_h + B_o) / 2 + b_0)
    lam_star_pair = (P_miss - P_hit) / (B_h - B_o)
    ids += [
        Identity(
            "hotspot_stay_margin", S_h - S_o,
            (P_hit + p_0) * (B_o + b_0) * ((B_h + b_0) / (B_o + b_0) - tolerance),
            "S_h - S_o = (P_hit + p0)(B_o + b0)[(B_h + b0)/(B_o + b0) - (P_miss + p0)/"
            "(P_hit + p0)]: the product keeps class c on h while the batch ratio is below "
            "the prefill ratio.",
        ),
        Identity(
            "hotspot_product_gap", spill_gap,
            (P_miss - P_hit) * (B_o + b_0) / (P_hit + p_0),
            "At the product's spill point B_h - B_o = (P_miss - P_hit)(B_o + b0)/(P_hit + p0).",
        ),
        Identity(
            "hotspot_linear_gap", (C_h - C_o).subs(B_h, B_o + linear_gap), 0,
            "linear(lam) ties when B_h - B_o = (P_miss - P_hit)/lam.",
        ),
        Identity(
            "hotspot_lam_match", linear_gap.subs(lam, lam_match), spill_gap,
            "The product spills like linear(lam) with lam = (P_hit + p0)/(B_o + b0): "
            "a rate that falls as the cold batch grows.",
        ),
        Identity(
            "hotspot_tie_is_pair_tie", (lam_eff_pair - lam_star_pair).subs(B_h, spill_B_h), 0,
            "At the product's spill point the pair's lam_eff equals its lam* (result (d): "
            "the product ties exactly there).",
        ),
    ]

    # ---------------------------------------------------------------- (k) growth
    hot = BS0 + x * QPS * t / M
    cold = BS0 + xbar * QPS * t / Mbar
    diff = sp.factor(hot - cold)
    growth = sp.StrictGreaterThan(x / xbar, M / Mbar)
    ratio = (hot + b_0) / (cold + b_0)
    limit_ratio = sp.factor(sp.limit(ratio, t, sp.oo))
    ids += [
        Identity(
            "hotspot_growth_difference", hot - cold,
            QPS * t * xbar / M * (x / xbar - M / Mbar),
            "B_h - B_o = (QPS t xbar/|M|)(x/xbar - |M|/|Mbar|): positive for t > 0 iff "
            "x/xbar > |M|/|Mbar|.",
        ),
        Identity(
            "hotspot_limit_ratio", limit_ratio, (x / M) / (xbar / Mbar),
            "With no departures the batch ratio tends to (x/|M|)/(xbar/|Mbar|).",
        ),
    ]

    # ------------------------------------------------- (l) sufficiency and timing
    tie_at = sp.numer(sp.together((S_h - S_o).subs({B_h: hot, B_o: cold})))
    spill_time = solve_one(tie_at, t)
    lin_time = solve_one(sp.numer(sp.together((C_h - C_o).subs({B_h: hot, B_o: cold}))), t)
    sufficient = sp.StrictGreaterThan(
        x * Mbar * (P_hit + p_0), xbar * M * (P_miss + p_0)
    )
    steady_hot = x * QPS / (M * mu)
    steady_cold = xbar * QPS / (Mbar * mu)
    spill_qps = solve_one(
        sp.numer(sp.together((S_h - S_o).subs({B_h: steady_hot, B_o: steady_cold}))), QPS
    )
    ids += [
        Identity(
            "hotspot_spill_time_ties", (S_h - S_o).subs({B_h: hot, B_o: cold}).subs(t, spill_time),
            0, "At t = spill_time the product ties between h and o.",
        ),
        Identity(
            "hotspot_spill_time_form", spill_time,
            (BS0 + b_0) * (P_miss - P_hit) * M * Mbar
            / (QPS * (x * Mbar * (P_hit + p_0) - xbar * M * (P_miss + p_0))),
            "spill_time = (BS0 + b0)(P_miss - P_hit)|M||Mbar| / (QPS (x|Mbar|(P_hit + p0) "
            "- xbar|M|(P_miss + p0))): finite and positive exactly when the sufficient "
            "condition holds.",
        ),
        Identity(
            "hotspot_linear_time_form", lin_time,
            (P_miss - P_hit) * M * Mbar / (lam * QPS * (x * Mbar - xbar * M)),
            "linear(lam) spills after (P_miss - P_hit)|M||Mbar| / (lam QPS (x|Mbar| - "
            "xbar|M|)): whenever the growth condition holds.",
        ),
        Identity(
            "hotspot_steady_is_accumulation", spill_qps,
            (spill_time * QPS * mu).subs(BS0, 0),
            "With departures, the steady-state batches are the no-departure batches at "
            "t = 1/mu from BS0 = 0 (Little's law), so the critical rate is spill_time's "
            "formula solved for QPS.",
        ),
    ]

    F = Formula
    results = (
        Result(
            "hotspot_pair_spill", "j", "Hot prefix classes: when one pair spills",
            "A class-c request costs P_hit prefill tokens on an instance h that caches its "
            "prefix and P_miss >= P_hit on an instance o that does not. The product keeps it "
            "on h while (P_hit + p0)(B_h + b0) < (P_miss + p0)(B_o + b0): it tolerates a "
            "batch ratio (B_h + b0)/(B_o + b0) up to (P_miss + p0)/(P_hit + p0), a gap that "
            "grows with the cold batch. linear(lam) tolerates a fixed gap B_h - B_o = "
            "(P_miss - P_hit)/lam. The product spills exactly where the pair's lam_eff "
            "meets its lam* (result (d)); it acts like linear(lam) with lam = "
            "(P_hit + p0)/(B_o + b0). With a long shared prefix (P_hit small) the tolerated "
            "ratio is large: the hot instances' batches can grow far before anything moves.",
            (
                F("stay_margin", "S_h - S_o", "S_h - S_o", S_h - S_o),
                F("spill_B_h", "B_h (product spills)", r"B_h^{\mathrm{spill}}", spill_B_h),
                F("tolerance", "(B_h + b_0)/(B_o + b_0) at the spill",
                  r"\frac{B_h + b_0}{B_o + b_0}\Big|_{\mathrm{spill}}", tolerance),
                F("product_gap", "B_h - B_o (product spills)",
                  r"(B_h - B_o)^{\mathrm{prod}}", spill_gap),
                F("linear_gap", "B_h - B_o (linear spills)", r"(B_h - B_o)^{\mathrm{lin}}",
                  linear_gap),
                F("lam_match", "lam spilling like the product", r"\lambda_{\mathrm{match}}",
                  lam_match),
            ),
        ),
        Result(
            "hotspot_growth", "k", "Hot prefix classes: growth with arrival rates",
            "If the product keeps class c (share x of QPS requests/s) on the |M| hot "
            "instances and the rest (share xbar) on the |Mbar| others, then with no "
            "departures the batches grow as BS0 + x QPS t/|M| and BS0 + xbar QPS t/|Mbar|. "
            "The hot batch is the larger for t > 0 iff x/xbar > |M|/|Mbar| (this project's "
            "derivation, not cited from a section of the paper); the batch ratio tends to "
            "(x/|M|)/(xbar/|Mbar|).",
            (
                F("hot_batch", "B_h(t)", "B_h(t)", hot),
                F("cold_batch", "B_o(t)", "B_o(t)", cold),
                F("difference", "B_h(t) - B_o(t)", "B_h(t) - B_o(t)", diff),
                F("condition", "hot batch grows faster", r"\text{hot}", growth),
                F("limit_ratio", "lim (B_h + b_0)/(B_o + b_0)",
                  r"\lim_{t\to\infty} \frac{B_h + b_0}{B_o + b_0}", limit_ratio),
            ),
        ),
        Result(
            "hotspot_sufficiency", "l", "Hot prefix classes: necessary, sufficient, and when",
            "x/xbar > |M|/|Mbar| is necessary for the product to spill class c (otherwise "
            "the hot batch never exceeds the cold one while the prefill ratio is >= 1) but "
            "not sufficient: the batch ratio must pass the tolerance (P_miss + p0)/(P_hit + "
            "p0), not 1. With no departures the product spills, after spill_time seconds, "
            "iff x|Mbar|(P_hit + p0) > xbar|M|(P_miss + p0); the condition is sufficient "
            "only when P_hit = P_miss (no cache benefit). linear(lam) spills whenever the "
            "condition holds, after linear_spill_time. With departures (each request "
            "leaves after 1/mu s) the steady-state batches are x QPS/(|M| mu) and xbar "
            "QPS/(|Mbar| mu) (Little's law); under the same condition the product spills "
            "only above the arrival rate spill_qps. Below it the hot instances carry the "
            "whole class in steady state, with the larger batch whenever x/xbar > "
            "|M|/|Mbar| - the state the two-phase detector looks for; above it the product "
            "spills until the two scores tie.",
            (
                F("sufficient", "product spills (no departures)", r"\text{spills}",
                  sufficient),
                F("spill_time", "t (product spills)", r"t^{\mathrm{prod}}", spill_time),
                F("linear_spill_time", "t (linear spills)", r"t^{\mathrm{lin}}", lin_time),
                F("steady_hot", "B_h (steady state)", r"\bar B_h", steady_hot),
                F("steady_cold", "B_o (steady state)", r"\bar B_o", steady_cold),
                F("spill_qps", "QPS (product spills in steady state)",
                  r"\mathrm{QPS}^{\mathrm{spill}}", spill_qps),
            ),
        ),
    )
    return HotspotTheory(
        stay_margin=S_h - S_o,
        product_spill_B_h=spill_B_h,
        product_tolerance=tolerance,
        product_spill_gap=spill_gap,
        linear_spill_gap=linear_gap,
        lam_matching_product=lam_match,
        hot_batch=hot,
        cold_batch=cold,
        batch_difference=diff,
        growth_condition=growth,
        limit_ratio=limit_ratio,
        sufficient_condition=sufficient,
        spill_time=spill_time,
        linear_spill_time=lin_time,
        steady_hot_batch=steady_hot,
        steady_cold_batch=steady_cold,
        spill_qps=spill_qps,
        identities=tuple(ids),
        results=results,
    )


def hotspot_results() -> tuple[Result, ...]:
    """The rendered results (j)-(l), in order."""
    return derive_hotspot().results


def _check_state(p_hit: object, p_miss: object, b_o: object, p0: object, b0: object) -> None:
    if Fraction(p_hit) + Fraction(p0) <= 0:
        raise ValueError("P_hit + p0 must be > 0 (otherwise the hot score is 0 for any batch)")
    if Fraction(b_o) + Fraction(b0) <= 0:
        raise ValueError("B_o + b0 must be > 0")
    if Fraction(p_miss) < Fraction(p_hit):
        raise ValueError("P_miss must be >= P_hit (a cache hit never costs more)")


def spill_batch(
    P_hit: int | Fraction,
    P_miss: int | Fraction,
    B_o: int | Fraction,
    p0: int | Fraction = 0,
    b0: int | Fraction = 1,
    *,
    ties: str = "cold",
) -> int:
    """Smallest integer hot batch at which the product sends a class-``c`` request to ``o``.

    From result (j): the product ties at ``B_h* = (P_miss + p0)(B_o + b0)/(P_hit + p0) - b0``.

    Parameters
    ----------
    P_hit, P_miss : int or Fraction
        Prefill tokens on the hot and on the cold instance, tokens.
    B_o : int or Fraction
        Batch of the cold instance, requests.
    p0, b0 : int or Fraction
        Offsets.
    ties : {"cold", "hot"}
        Where a tie goes (``"cold"``: the cold instance wins ties, e.g. it has the lower
        index under lowest-index tie-breaking).

    Returns
    -------
    int
        ``ceil(B_h*)`` when ties go cold, ``floor(B_h*) + 1`` when they go hot (at least 0).
    """
    _check_state(P_hit, P_miss, B_o, p0, b0)
    star = (Fraction(P_miss) + Fraction(p0)) * (Fraction(B_o) + Fraction(b0)) / (
        Fraction(P_hit) + Fraction(p0)
    ) - Fraction(b0)
    if ties == "cold":
        k = math.ceil(star)
    elif ties == "hot":
        k = math.floor(star) + 1
    else:
        raise ValueError(f"ties must be 'cold' or 'hot', got {ties!r}")
    return max(k, 0)


def brute_force_spill_batch(
    P_hit: int | Fraction,
    P_miss: int | Fraction,
    B_o: int | Fraction,
    p0: int | Fraction = 0,
    b0: int | Fraction = 1,
    *,
    ties: str = "cold",
    limit: int = 10**6,
) -> int:
    """:func:`spill_batch` by enumerating hot batch states 0, 1, 2, ... in exact arithmetic
    (the reference the formula is tested against)."""
    _check_state(P_hit, P_miss, B_o, p0, b0)
    s_o = (Fraction(P_miss) + Fraction(p0)) * (Fraction(B_o) + Fraction(b0))
    for b in range(limit):
        s_h = (Fraction(P_hit) + Fraction(p0)) * (b + Fraction(b0))
        if s_h > s_o or (s_h == s_o and ties == "cold"):
            return b
    raise RuntimeError("no spill below limit")  # pragma: no cover
