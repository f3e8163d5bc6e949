"""Router state as deployed: several router replicas, late state, an erring cache index
(derived with sympy, in the notation of :mod:`lmetric_theory.theory.derivation`).

Setting
-------
Instance ``i``'s prefill signal splits as ``P_i = Q_i + u_i``: ``Q_i`` are the tokens
queued on it (requests already routed there, counted by the router that routed them) and
``u_i`` the new request's own uncached prefill there (from the cache index, the same for
every replica). ``R`` router replicas each count only their own dispatches; under an even
assignment (round-robin, in expectation) a replica sees the share ``1/R`` of ``Q_i`` and of
``B_i``, so it scores ``L_i = (Q_i/R + u_i + p0)(B_i/R + b0)``.

Results (each a :class:`~lmetric_theory.theory.base.Result`; the identities that tie them
together are :class:`~lmetric_theory.theory.base.Identity` objects proved in
``tests/test_replicas_theory.py`` with ``simplify(lhs - rhs) == 0``; the numeric helpers
below are checked there against exact brute force and a small discrete simulation):

(m) replica view: ``R^2 L_i = (Q_i + R u_i + R p0)(B_i + R b0)``, so a replica ranks like
    the global product with offsets ``R p0``, ``R b0`` and the request's own prefill
    weighted ``R`` times against the queue. Its choice differs from the global one iff the
    two score differences have opposite signs; the remainder is ``(R - 1)`` times a
    linear form, and its ``lam_eff`` (in global units) is
    ``(Qbar + R ubar + R p0)/(Bbar + R b0)``. Counters scaled by ``R`` (or synced) restore
    the global ordering exactly; offsets ``p0/R``, ``b0/R`` restore it when ``u = 0``.
(n) herding: a replica's decision is blind to the other replicas' dispatches of the last
    lag window ``T``: ``QPS T (R - 1)/R`` of them on average (Poisson arrivals); from the
    same state every replica picks the same argmin, so ``R`` decisions in one window put
    ``R`` requests on one instance (max-min load ``R``, against ``ceil(R/N) - floor(R/N)``
    for one router with exact counters). A uniform choice among ``m`` near-ties spreads
    them: all on one instance with probability ``m^(1-R)``, expected max-min (``m = 2``)
    ``R binomial(R - 1, floor((R - 1)/2))/2^(R - 1)``.
(o) index error: an error of ``err`` tokens (``k`` blocks of ``blk`` tokens) in the
    predicted prefill on instance 1 flips the product's choice at
    ``err* = (P_2 + p0)(B_2 + b0)/(B_1 + b0) - P_1 - p0`` (the score margin divided by
    ``B_1 + b0``) and ``linear(lam)``'s at ``P_2 - P_1 + lam (B_2 - B_1)``; the two
    thresholds differ by ``(B_2 - B_1)((P_2 + p0)/(B_1 + b0) - lam)``.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import sympy as sp

from lmetric_theory.theory.base import SYMBOLS, Formula, Identity, Result, solve_one

__all__ = [
    "REPLICA_SYMBOLS",
    "ReplicaTheory",
    "blind_dispatches",
    "derive_replicas",
    "expected_spread",
    "flip_error",
    "flip_blocks",
    "replica_results",
    "replica_view_differs",
    "replica_view_margin",
    "spread_two_ties",
]

p_0, b_0, lam = SYMBOLS["p_0"], SYMBOLS["b_0"], SYMBOLS["lam"]
P_1, P_2, B_1, B_2 = SYMBOLS["P_1"], SYMBOLS["P_2"], SYMBOLS["B_1"], SYMBOLS["B_2"]
Q_1, Q_2, u_1, u_2 = sp.symbols("Q_1 Q_2 u_1 u_2", nonnegative=True)
R = sp.Symbol("R", positive=True, integer=True)
QPS, T = sp.symbols("QPS T", positive=True)
m = sp.Symbol("m", positive=True, integer=True)
err, blk = sp.Symbol("err", real=True), sp.Symbol("blk", positive=True)

#: Symbols of the router-state results, by name (``local_dict`` for ``sympy.parse_expr``).
REPLICA_SYMBOLS: dict[str, sp.Symbol] = {
    s.name: s
    for s in (Q_1, Q_2, u_1, u_2, R, QPS, T, m, err, blk, P_1, P_2, B_1, B_2, p_0, b_0, lam)
}

#: Meaning of each router-state symbol (units), for rendering.
SYMBOL_MEANING: dict[str, str] = {
    "Q_1": "tokens queued on instance 1, all replicas together (tokens, >= 0)",
    "Q_2": "tokens queued on instance 2, all replicas together (tokens, >= 0)",
    "u_1": "the new request's uncached prefill on instance 1 (tokens, >= 0)",
    "u_2": "the new request's uncached prefill on instance 2 (tokens, >= 0)",
    "R": "number of router replicas, each counting only its own dispatches",
    "QPS": "total arrival rate over all replicas (requests/s)",
    "T": "lag window: how late a replica learns of other replicas' dispatches (s)",
    "m": "number of near-tied instances a replica picks among uniformly",
    "err": "index error on instance 1: predicted minus true prefill (tokens, real)",
    "blk": "KV block size (tokens per block)",
}


@dataclass(frozen=True, slots=True)
class ReplicaTheory:
    """Everything :func:`derive_replicas` obtains (sympy expressions; module docstring).

    Attributes
    ----------
    global_diff, replica_diff : sympy.Expr
        ``S_1 - S_2`` from the global counters and ``R^2 (L_1 - L_2)`` from one replica's.
    replica_remainder : sympy.Expr
        ``R^2 (L_1 - L_2) - (S_1 - S_2)``, factored (a multiple of ``R - 1``).
    differs_condition : sympy relation
        The replica's strict choice is the opposite of the global one.
    lam_eff_replica, lam_eff_global : sympy.Expr
        The pairwise exchange rates of the replica view (global units) and of the global
        view.
    lam_eff_limit : sympy.Expr
        ``lim_{R->oo}`` of the replica's rate.
    blind, herding_condition, herding_lag : sympy
        Expected blind dispatches per decision, the condition that it reaches 1 and the
        lag at which it does.
    herd_all_same : sympy.Expr
        Probability that ``R`` uniform choices among ``m`` instances coincide.
    spread_two : sympy.Expr
        Expected max-min load of ``R`` uniform choices between 2 instances.
    product_flip_error, linear_flip_error, flip_error_gap, lam_matching_error : sympy.Expr
        Result (o).
    identities : tuple of Identity
    results : tuple of Result
    """

    global_diff: sp.Expr
    replica_diff: sp.Expr
    replica_remainder: sp.Expr
    differs_condition: sp.Basic
    lam_eff_replica: sp.Expr
    lam_eff_global: sp.Expr
    lam_eff_limit: sp.Expr
    blind: sp.Expr
    herding_condition: sp.Basic
    herding_lag: sp.Expr
    herd_all_same: sp.Expr
    spread_two: sp.Expr
    product_flip_error: sp.Expr
    linear_flip_error: sp.Expr
    flip_error_gap: sp.Expr
    lam_matching_error: sp.Expr
    identities: tuple[Identity, ...]
    results: tuple[Result, ...]


def _S(Q: sp.Expr, u: sp.Expr, B: sp.Expr, p0: sp.Expr = p_0, b0: sp.Expr = b_0) -> sp.Expr:
    return (Q + u + p0) * (B + b0)


@functools.cache
def derive_replicas() -> ReplicaTheory:
    """Derive the router-state results (m)-(o) (cached).

    Returns
    -------
    ReplicaTheory
    """
    ids: list[Identity] = []

    # --------------------------------------------------------------- (m) replica view
    D = _S(Q_1, u_1, B_1) - _S(Q_2, u_2, B_2)
    local = _S(Q_1 / R, u_1, B_1 / R) - _S(Q_2 / R, u_2, B_2 / R)
    DR = sp.expand(R**2 * local)
    remainder = sp.factor(sp.expand(DR - D))
    differs = sp.StrictLessThan(D * DR, 0)
    Qbar, ubar, Bbar = (Q_1 + Q_2) / 2, (u_1 + u_2) / 2, (B_1 + B_2) / 2
    dQ, du, dB = Q_1 - Q_2, u_1 - u_2, B_1 - B_2
    lam_R = (Qbar + R * ubar + R * p_0) / (Bbar + R * b_0)
    lam_G = (Qbar + ubar + p_0) / (Bbar + b_0)
    lam_lim = sp.limit(lam_R, R, sp.oo)
    q = sp.Dummy("q", real=True)
    equiv_b0 = solve_one(sp.expand(R * (B_1 / R + b_0) - (B_1 + q)), q)
    ids += [
        Identity(
            "replica_view_is_offset_change", R**2 * _S(Q_1 / R, u_1, B_1 / R),
            _S(Q_1, R * u_1, B_1, R * p_0, R * b_0),
            "R^2 L_i = (Q_i + R u_i + R p0)(B_i + R b0): a replica ranks like the global "
            "product with offsets R p0 and R b0 and the request's own prefill weighted R "
            "times against the queue.",
        ),
        Identity(
            "replica_pairwise", DR,
            (Bbar + R * b_0) * (dQ + R * du) + (Qbar + R * ubar + R * p_0) * dB,
            "R^2 (L_1 - L_2) = (Bbar + R b0)(dQ + R du) + (Qbar + R ubar + R p0) dB: the "
            "pairwise identity (c) of the replica view, in global units.",
        ),
        Identity(
            "replica_one_is_global", (DR - D).subs(R, 1), 0,
            "With one replica the view is the global one.",
        ),
        Identity(
            "replica_lam_eff_at_one", lam_R.subs(R, 1), lam_G,
            "With one replica its lam_eff is the global lam_eff.",
        ),
        Identity(
            "replica_counters_scaled", _S(R * (Q_1 / R), u_1, R * (B_1 / R)), _S(Q_1, u_1, B_1),
            "Scaling a replica's counters by R (or syncing them) gives back the global "
            "score exactly (in expectation over an even assignment).",
        ),
        Identity(
            "replica_offsets_scaled",
            R**2 * _S(Q_1 / R, 0, B_1 / R, p_0 / R, b_0 / R), _S(Q_1, 0, B_1),
            "With no request-specific prefill (u = 0), offsets p0/R and b0/R give back the "
            "global ordering: scale b0 with 1/R.",
        ),
        Identity(
            "replica_equivalent_b0", R * (B_1 / R + b_0), B_1 + equiv_b0,
            "R (B_i/R + b0) = B_i + R b0: a share 1/R of B ranks like the full B with "
            "offset R b0 (result (b) with k_B = 1/R).",
        ),
    ]

    # ------------------------------------------------------------------ (n) herding
    blind = QPS * T * (R - 1) / R
    herding = sp.GreaterThan(blind, 1)
    herding_lag = solve_one(blind - 1, T)
    all_same = m ** (1 - R)
    spread_two = R * sp.binomial(R - 1, sp.floor((R - 1) / 2)) / 2 ** (R - 1)
    ids += [
        Identity(
            "herding_no_replicas", blind.subs(R, 1), 0,
            "One router sees all its dispatches at once: no blind dispatches.",
        ),
        Identity(
            "herding_lag_form", herding_lag, R / ((R - 1) * QPS),
            "Blind dispatches per decision reach 1 at the lag T = R/((R - 1) QPS).",
        ),
    ]

    # -------------------------------------------------------------- (o) index error
    S_1 = (P_1 + p_0) * (B_1 + b_0)
    S_2 = (P_2 + p_0) * (B_2 + b_0)
    C_1, C_2 = P_1 + lam * B_1, P_2 + lam * B_2
    e_prod = solve_one((S_1 - S_2).subs(P_1, P_1 + err), err)
    e_lin = solve_one((C_1 - C_2).subs(P_1, P_1 + err), err)
    gap = sp.factor(sp.cancel(e_prod - e_lin))
    lam_match = solve_one(sp.numer(sp.together(gap)), lam)
    ids += [
        Identity(
            "index_error_product_margin", e_prod, -(S_1 - S_2) / (B_1 + b_0),
            "The product's flip error is its score margin S_2 - S_1 divided by B_1 + b0: "
            "an error of err tokens on instance 1 moves S_1 by err (B_1 + b0).",
        ),
        Identity(
            "index_error_linear_margin", e_lin, -(C_1 - C_2),
            "linear(lam)'s flip error is its score margin C_2 - C_1 (in tokens).",
        ),
        Identity(
            "index_error_gap", gap, (B_2 - B_1) * ((P_2 + p_0) / (B_1 + b_0) - lam),
            "err*_prod - err*_lin = (B_2 - B_1)((P_2 + p0)/(B_1 + b0) - lam).",
        ),
    ]

    F = Formula
    results = (
        Result(
            "replica_ordering", "m", "Router replicas: local counters and the ordering",
            "R router replicas each count only their own dispatches, so under an even "
            "assignment each sees the share 1/R of every instance's batch B_i and queued "
            "tokens Q_i, while the new request's own uncached prefill u_i (from the cache "
            "index) is whole. R^2 L_i = (Q_i + R u_i + R p0)(B_i + R b0): the replica ranks "
            "like the global product with offsets R p0 and R b0 (result (b) with k = 1/R) "
            "and the request's prefill weighted R times against the queue. With b0 = 1 the "
            "offset's weight grows with R, so the scale invariance the paper relies on "
            "(b0 = 0) is further away with every replica. The replica's strict choice is "
            "the opposite of the global one exactly when (S_1 - S_2) R^2 (L_1 - L_2) < 0; "
            "the remainder R^2 (L_1 - L_2) - (S_1 - S_2) is (R - 1) times a form linear "
            "in R, so it vanishes at R = 1. Its exchange rate lam_eff = (Qbar + R ubar + "
            "R p0)/(Bbar + R b0) (global units, B against dQ + R du) tends to "
            "(ubar + p0)/b0 as R grows; with u = p0 = 0 it is Qbar/(Bbar + R b0), falling "
            "with every replica: the replica weighs the batch less. Counters scaled "
            "by R or synced between replicas restore the global ordering exactly; "
            "offsets p0/R and b0/R restore it when the request adds no prefill of its "
            "own (u = 0), and otherwise only the offsets' part of the drift.",
            (
                F("global_diff", "S_1 - S_2", "S_1 - S_2", D),
                F("replica_diff", "R^2 (L_1 - L_2)", r"R^2 (L_1 - L_2)", DR),
                F("remainder", "R^2 (L_1 - L_2) - (S_1 - S_2)",
                  r"R^2 (L_1 - L_2) - (S_1 - S_2)", remainder),
                F("differs", "replica's choice opposite the global one", r"\text{differs}",
                  differs),
                F("lam_eff_replica", "lam_eff of a replica (global units)",
                  r"\lambda_{\mathrm{eff}}^{(R)}", lam_R),
                F("lam_eff_limit", "lam_eff of a replica as R -> oo",
                  r"\lim_{R\to\infty} \lambda_{\mathrm{eff}}^{(R)}", lam_lim),
                F("equivalent_b0", "equivalent b_0 of a replica", r"b_0^{(R)}", equiv_b0),
            ),
        ),
        Result(
            "replica_herding", "n", "Router replicas: herding within one lag window",
            "A replica learns of the other replicas' dispatches only through the engines' "
            "reported state, T seconds late. With Poisson arrivals at QPS requests/s "
            "spread evenly over R replicas, a decision is blind to QPS T (R - 1)/R "
            "dispatches on average; herding needs that to reach 1, i.e. T >= R/((R - 1) "
            "QPS) (never with one replica). Replicas that decide from the same state pick "
            "the same argmin, so R decisions in one window put R requests on one "
            "instance: max-min load R, where one router with exact counters spreading R "
            "identical requests over N identical instances keeps it at ceil(R/N) - "
            "floor(R/N) <= 1. A uniform choice among m near-tied instances (power-of-d "
            "sampling on tied state) puts all R on one instance only with probability "
            "m^(1 - R); for m = 2 the expected max-min load is R binomial(R - 1, "
            "floor((R - 1)/2))/2^(R - 1), about sqrt(2R/pi) instead of R (exact values "
            "for any m: expected_spread).",
            (
                F("blind", "blind dispatches per decision", r"n_{\mathrm{blind}}", blind),
                F("condition", "herding (at least one blind dispatch per decision)",
                  r"\text{herds}", herding),
                F("lag", "T (herding starts)", r"T^{\mathrm{herd}}", herding_lag),
                F("all_same", "P(all R on one of m)", r"P_{\mathrm{same}}", all_same),
                F("spread_two", "E[max - min] (R uniform choices, m = 2)",
                  r"\mathbb{E}[\max - \min]_{m=2}", spread_two),
            ),
        ),
        Result(
            "replica_index_error", "o", "Index error: how many blocks flip the choice",
            "The index predicts the prefill on instance 1 wrong by err tokens (k blocks "
            "of blk tokens: err > 0 when it misses cached blocks, err < 0 when it still lists "
            "evicted ones). The product's choice flips at err* = (P_2 + p0)(B_2 + b0)/(B_1 + "
            "b0) - P_1 - p0, its score margin divided by B_1 + b0: the error is amplified "
            "by instance 1's batch. linear(lam)'s flips at its margin P_2 - P_1 + lam(B_2 - "
            "B_1). The thresholds differ by (B_2 - B_1)((P_2 + p0)/(B_1 + b0) - lam): the "
            "product absorbs an error on instance 1 like linear(lam) with lam = (P_2 + "
            "p0)/(B_1 + b0), so it is the more tolerant of an error on the less loaded "
            "instance exactly when lam is below that rate. In blocks the choice flips at "
            "ceil(err*/blk) (flip_blocks).",
            (
                F("product_flip_error", "err* (product flips)", r"e^{*}_{\mathrm{prod}}",
                  e_prod),
                F("linear_flip_error", "err* (linear flips)", r"e^{*}_{\mathrm{lin}}", e_lin),
                F("gap", "err*_prod - err*_lin", r"e^{*}_{\mathrm{prod}} - e^{*}_{\mathrm{lin}}",
                  gap),
                F("lam_match", "lam absorbing the error like the product",
                  r"\lambda_{\mathrm{err}}", lam_match),
                F("flip_blocks", "k* (product flips, blocks)", r"k^{*}_{\mathrm{prod}}",
                  sp.ceiling(e_prod / blk)),
            ),
        ),
    )
    return ReplicaTheory(
        global_diff=D, replica_diff=DR, replica_remainder=remainder,
        differs_condition=differs, lam_eff_replica=lam_R, lam_eff_global=lam_G,
        lam_eff_limit=lam_lim, blind=blind, herding_condition=herding,
        herding_lag=herding_lag, herd_all_same=all_same, spread_two=spread_two,
        product_flip_error=e_prod, linear_flip_error=e_lin, flip_error_gap=gap,
        lam_matching_error=lam_match, identities=tuple(ids), results=results,
    )


def replica_results() -> tuple[Result, ...]:
    """The rendered results (m)-(o), in order."""
    return derive_replicas().results


# ------------------------------------------------------------ exact numeric helpers

Num = int | Fraction


def replica_view_margin(
    q: Sequence[Num], u: Sequence[Num], b: Sequence[Num], R: int,
    p0: Num = 0, b0: Num = 1,
) -> tuple[Fraction, Fraction]:
    """Score margins of a pair seen globally and by one of ``R`` replicas (result (m)).

    Parameters
    ----------
    q : pair of int or Fraction
        Tokens queued on instances 1 and 2, all replicas together.
    u : pair of int or Fraction
        The request's own uncached prefill on each, tokens.
    b : pair of int or Fraction
        Batch sizes (all replicas together), requests.
    R : int
        Replicas (>= 1); a replica sees ``1/R`` of ``q`` and ``b``.
    p0, b0 : int or Fraction
        Offsets.

    Returns
    -------
    (Fraction, Fraction)
        ``S_1 - S_2`` and ``R^2 (L_1 - L_2)`` from the closed form
        ``(Q + R u + R p0)(B + R b0)``.
    """
    if R < 1:
        raise ValueError(f"R must be >= 1, got {R}")
    p0, b0 = Fraction(p0), Fraction(b0)

    def sc(i: int, r: int) -> Fraction:
        return (Fraction(q[i]) + r * Fraction(u[i]) + r * p0) * (Fraction(b[i]) + r * b0)

    return sc(0, 1) - sc(1, 1), sc(0, R) - sc(1, R)


def replica_view_differs(
    q: Sequence[Num], u: Sequence[Num], b: Sequence[Num], R: int,
    p0: Num = 0, b0: Num = 1,
) -> bool:
    """Whether one of ``R`` replicas strictly prefers the other instance than the global
    counters do (result (m): the two margins have opposite signs)."""
    g, r = replica_view_margin(q, u, b, R, p0, b0)
    return g * r < 0


def blind_dispatches(qps: float, lag_s: float, R: int) -> float:
    """Expected dispatches of other replicas a decision cannot see (result (n)).

    Parameters
    ----------
    qps : float
        Total arrival rate, requests/s.
    lag_s : float
        Lag window, seconds.
    R : int
        Replicas (>= 1).

    Returns
    -------
    float
        ``qps * lag_s * (R - 1) / R`` requests.
    """
    if R < 1:
        raise ValueError(f"R must be >= 1, got {R}")
    return qps * lag_s * (R - 1) / R


def _compositions(n: int, parts: int) -> itertools.chain[tuple[int, ...]]:
    """Every tuple of ``parts`` nonnegative integers summing to ``n`` (stars and bars)."""
    return (
        tuple(b - a - 1 for a, b in zip((-1, *cut), (*cut, n + parts - 1), strict=True))
        for cut in itertools.combinations(range(n + parts - 1), parts - 1)
    )


def expected_spread(R: int, m: int) -> Fraction:
    """Expected max-min load when ``R`` replicas each pick one of ``m`` instances
    uniformly and independently (result (n)); exact, summed over the multinomial.

    Parameters
    ----------
    R : int
        Requests placed (one per replica), >= 0.
    m : int
        Instances chosen among, >= 1.

    Returns
    -------
    Fraction
        ``E[max_j n_j - min_j n_j]`` over the ``m`` loads.
    """
    if R < 0 or m < 1:
        raise ValueError(f"need R >= 0 and m >= 1, got R={R}, m={m}")
    total = Fraction(0)
    for comp in _compositions(R, m):
        ways = math.factorial(R)
        for c in comp:
            ways //= math.factorial(c)
        total += ways * (max(comp) - min(comp))
    return total / m**R


def spread_two_ties(R: int) -> Fraction:
    """The closed form of :func:`expected_spread` for ``m = 2`` (result (n)):
    ``R binomial(R - 1, floor((R - 1)/2)) / 2^(R - 1)`` for ``R >= 1``, 0 for ``R = 0``."""
    if R < 0:
        raise ValueError(f"R must be >= 0, got {R}")
    if R == 0:
        return Fraction(0)
    return Fraction(R * math.comb(R - 1, (R - 1) // 2), 2 ** (R - 1))


def flip_error(
    P: Sequence[Num], B: Sequence[Num], p0: Num = 0, b0: Num = 1, lam: Num | None = None,
) -> Fraction:
    """Error on instance 1's predicted prefill at which the choice between two instances
    ties (result (o)).

    Parameters
    ----------
    P, B : pair of int or Fraction
        True prefill tokens and batch sizes of instances 1 and 2.
    p0, b0 : int or Fraction
        Product offsets (ignored for the linear score).
    lam : int or Fraction, optional
        When given, the threshold of ``linear(lam)`` instead of the product's.

    Returns
    -------
    Fraction
        ``e*`` in tokens: predicted ``P_1 + e*`` ties the pair (``> 0`` when instance 1 wins
        with no error).
    """
    P1, P2, B1, B2 = (Fraction(v) for v in (*P, *B))
    if lam is not None:
        return P2 - P1 + Fraction(lam) * (B2 - B1)
    if B1 + Fraction(b0) <= 0:
        raise ValueError("B_1 + b0 must be > 0 (otherwise the error does not move S_1)")
    return (P2 + Fraction(p0)) * (B2 + Fraction(b0)) / (B1 + Fraction(b0)) - P1 - Fraction(p0)


def flip_blocks(
    P: Sequence[Num], B: Sequence[Num], block: int, p0: Num = 0, b0: Num = 1,
    lam: Num | None = None, *, tie_to: int = 2,
) -> int:
    """Fewest blocks of index error on instance 1 that change the choice (result (o)).

    The error pushes against the true winner: when instance 1 wins, the index misses
    ``k`` of its cached blocks (predicted prefill ``P_1 + k block``: an approximate index
    that forgot them); when instance 2 wins, it still lists ``k`` blocks instance 1 has
    evicted (predicted ``P_1 - k block``: a stale index).

    Parameters
    ----------
    P, B : pair of int or Fraction
        True prefill tokens and batch sizes of instances 1 and 2 (not tied).
    block : int
        Block size, tokens (> 0).
    p0, b0, lam
        As in :func:`flip_error`.
    tie_to : {1, 2}
        The instance that wins a tie (2 under lowest-index tie-breaking when instance 2
        has the lower index).

    Returns
    -------
    int
        ``ceil(|err*|/block)`` when ties go to the true loser, ``floor(|err*|/block) + 1``
        when they go to the true winner.
    """
    if block <= 0:
        raise ValueError(f"block must be > 0, got {block}")
    if tie_to not in (1, 2):
        raise ValueError(f"tie_to must be 1 or 2, got {tie_to!r}")
    star = flip_error(P, B, p0, b0, lam)
    if star == 0:
        raise ValueError("the pair ties with no error: any error decides it")
    winner = 1 if star > 0 else 2
    size = abs(star) / block
    return math.ceil(size) if tie_to != winner else math.floor(size) + 1
