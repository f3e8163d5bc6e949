"""Decision regions of a pair: where the product and a linear score choose differently.

Fix instance A with state ``(P_A, B_A)``. Every state ``(P_B, B_B)`` of a second
instance B is classified by which instance each score picks:

==========================  =====  ===========================================
region                      code   meaning
==========================  =====  ===========================================
``BOTH_A``                  0      product and ``linear(lam)`` both pick A
``BOTH_B``                  1      both pick B
``ONLY_PRODUCT_B``          2      the product picks B, ``linear(lam)`` picks A
``ONLY_LINEAR_B``           3      ``linear(lam)`` picks B, the product picks A
==========================  =====  ===========================================

Ties
----
Each score is compared exactly (:func:`lmetric_theory.core.kernel.product_sign` and
:func:`~lmetric_theory.core.kernel.linear_sign`). "Picks B" means B's score is
*strictly* lower; on an exact tie the score keeps A, exactly as the argmins of the
predicates module do with A listed first (lowest index wins). The regions are therefore
the argmin choices of the pair ``[A, B]``, and the disagreement share is the share of
grid points where ``argmin_product != argmin_linear``. It differs from
:func:`~lmetric_theory.core.kernel.disagrees` (which never counts ties) only on grid
points where one of the scores ties exactly; those are flagged in ``RegionMap.ties``
and counted in ``RegionMap.n_ties``.

Geometry (``x = P_B`` in tokens, ``y = B_B`` in requests, as in
:mod:`lmetric_theory.theory.geometry`, whose lambdified helpers draw the curves): the
product's iso-curve through A is the hyperbola ``(P + p0)(B + b0) = (P_A + p0)(B_A + b0)``,
the linear iso-line through A is ``P + lam*B = P_A + lam*B_A``; they meet at A and at a
second point; between the two curves lies the disagreement region.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lmetric_theory import theory as symbolic
from lmetric_theory.core import kernel as predicates  # the formula kernel
from lmetric_theory.core.validate import finite_scalar

__all__ = [
    "BOTH_A",
    "BOTH_B",
    "ONLY_LINEAR_B",
    "ONLY_PRODUCT_B",
    "REGION_LABELS",
    "RegionMap",
    "classify",
    "compute_regions",
]

BOTH_A: int = 0
BOTH_B: int = 1
ONLY_PRODUCT_B: int = 2
ONLY_LINEAR_B: int = 3
#: Human-readable label of each region code (index = code).
REGION_LABELS: tuple[str, ...] = (
    "both prefer A",
    "both prefer B",
    "only the product prefers B",
    "only the linear score prefers B",
)

_MAX_RESOLUTION = 2000


# ----------------------------------------------------------------- classification


def classify(
    P_A: object,
    B_A: object,
    P_B: object,
    B_B: object,
    lam: object,
    p0: object = 0,
    b0: object = 1,
) -> np.ndarray:
    """Region code of each state of B against A (exact; broadcasts like numpy).

    Parameters
    ----------
    P_A, B_A : int, float or array_like
        State of instance A (tokens, requests).
    P_B, B_B : array_like
        States of instance B (tokens, requests); broadcast together.
    lam : int, float or Fraction
        Linear exchange rate, tokens per batch slot.
    p0, b0 : int, float or Fraction
        Offsets of the product score.

    Returns
    -------
    np.ndarray, int8
        Codes ``BOTH_A``, ``BOTH_B``, ``ONLY_PRODUCT_B`` or ``ONLY_LINEAR_B``; ties
        keep A (see the module docstring).
    """
    prod_b = predicates.product_sign(P_A, B_A, P_B, B_B, p0, b0) == 1
    lin_b = predicates.linear_sign(P_A, B_A, P_B, B_B, lam) == 1
    return _codes(prod_b, lin_b)


def _codes(prod_b: np.ndarray, lin_b: np.ndarray) -> np.ndarray:
    # both A -> 0, both B -> 1, product only -> 2, linear only -> 3
    out = np.where(prod_b, np.where(lin_b, BOTH_B, ONLY_PRODUCT_B),
                   np.where(lin_b, ONLY_LINEAR_B, BOTH_A))
    return out.astype(np.int8)


# -------------------------------------------------------------------------- grid


@dataclass(frozen=True, slots=True, eq=False)
class RegionMap:
    """The classified plane of instance B's states for a fixed instance A.

    Attributes
    ----------
    P_A, B_A : float
        Instance A (tokens, requests).
    lam, p0, b0 : float
        Linear rate (tokens per batch slot) and product offsets.
    P : np.ndarray, shape (n_p,), float64
        Grid of B's prefill tokens (the x axis), ascending.
    B : np.ndarray, shape (n_b,), float64
        Grid of B's batch sizes (the y axis), ascending.
    log_p, log_b : bool
        Whether the grid is evenly spaced in log10 (then shares are of the log-scaled
        plot area).
    region : np.ndarray, shape (n_b, n_p), int8
        Region code at ``B[i], P[j]`` (row = y = batch size, column = x = tokens, the
        layout of a heatmap).
    ties : np.ndarray, shape (n_b, n_p), bool
        Grid points where the product or the linear score ties exactly.
    disagreement_share : float
        Share of grid points (= of the plotted area, as drawn) where the two scores
        pick different instances: codes ``ONLY_PRODUCT_B`` and ``ONLY_LINEAR_B``.
    region_shares : tuple of float
        Share of each region code, indexed by code; sums to 1.
    n_ties : int
        Number of grid points in ``ties``.
    product_curve : np.ndarray, shape (n_p,), float64
        ``B`` on the product's hyperbola through A at each ``P`` (``inf`` at the
        asymptote ``P = -p0``).
    linear_curve : np.ndarray, shape (n_p,), float64
        ``B`` on the linear line through A at each ``P`` (``inf``/``nan`` when
        ``lam == 0``: the line is then vertical at ``P = P_A``).
    intersections : tuple of (float, float)
        Meeting points ``(P, B)`` of the two curves: A first, then the second one
        when it is finite and differs from A (none for ``lam == 0``).
    lam_eff_at_A : float
        The product's own rate at A (:func:`~lmetric_theory.core.kernel.lam_eff` of the
        pair (A, A)), ``(P_A + p0)/(B_A + b0)`` (tokens per slot); the
        line is tangent to the hyperbola when ``lam`` equals it. ``inf`` when only the
        denominator is 0, ``nan`` when both are.
    """

    P_A: float
    B_A: float
    lam: float
    p0: float
    b0: float
    P: np.ndarray
    B: np.ndarray
    log_p: bool
    log_b: bool
    region: np.ndarray
    ties: np.ndarray
    disagreement_share: float
    region_shares: tuple[float, ...]
    n_ties: int
    product_curve: np.ndarray
    linear_curve: np.ndarray
    intersections: tuple[tuple[float, float], ...]
    lam_eff_at_A: float

    @property
    def lambda_eff_at_A(self) -> float:
        """Former name of :attr:`lam_eff_at_A` (read-only alias)."""
        return self.lam_eff_at_A


def _axis(name: str, rng: tuple[float, float], n: int, log: bool) -> np.ndarray:
    if len(rng) != 2:
        raise ValueError(f"{name}: expected (low, high), got {rng!r}")
    lo, hi = finite_scalar(f"{name}[0]", rng[0]), finite_scalar(f"{name}[1]", rng[1])
    if not lo < hi:
        raise ValueError(f"{name}: low end {lo!r} must be below high end {hi!r}")
    if log:
        if lo <= 0:
            raise ValueError(f"{name}: a log axis needs a positive low end, got {lo!r}")
        return np.logspace(math.log10(lo), math.log10(hi), n)
    return np.linspace(lo, hi, n)


def compute_regions(
    P_A: float,
    B_A: float,
    *,
    lam: float,
    p0: float = 0.0,
    b0: float = 1.0,
    p_range: tuple[float, float] = (0.0, 4096.0),
    b_range: tuple[float, float] = (0.0, 32.0),
    log_p: bool = False,
    log_b: bool = False,
    resolution: tuple[int, int] = (400, 400),
) -> RegionMap:
    """Classify a grid of instance-B states against instance A.

    Parameters
    ----------
    P_A, B_A : float
        State of instance A: prefill tokens and batch size.
    lam : float
        Linear exchange rate, tokens per batch slot.
    p0, b0 : float
        Product offsets (tokens, requests).
    p_range : (float, float)
        Range of B's prefill tokens (x axis), tokens.
    b_range : (float, float)
        Range of B's batch size (y axis), requests.
    log_p, log_b : bool
        Space the grid evenly in log10 along that axis (low end must be > 0).
    resolution : (int, int)
        Grid points ``(n_p, n_b)``, each in [2, 2000].

    Returns
    -------
    RegionMap

    Raises
    ------
    ValueError
        Non-finite inputs, an empty range, a log axis reaching 0, a bad resolution.
    """
    P_A, B_A = finite_scalar("P_A", P_A), finite_scalar("B_A", B_A)
    lam, p0, b0 = finite_scalar("lam", lam), finite_scalar("p0", p0), finite_scalar("b0", b0)
    try:
        n_p, n_b = (int(r) for r in resolution)
    except (TypeError, ValueError):
        raise ValueError(f"resolution: expected (n_p, n_b), got {resolution!r}") from None
    for name, n in (("resolution[0]", n_p), ("resolution[1]", n_b)):
        if not 2 <= n <= _MAX_RESOLUTION:
            raise ValueError(f"{name}: must lie in [2, {_MAX_RESOLUTION}], got {n}")
    P = _axis("p_range", p_range, n_p, log_p)
    B = _axis("b_range", b_range, n_b, log_b)

    ps = predicates.product_sign(P_A, B_A, P[None, :], B[:, None], p0, b0)
    ls = predicates.linear_sign(P_A, B_A, P[None, :], B[:, None], lam)
    region = _codes(ps == 1, ls == 1)
    ties = (ps == 0) | (ls == 0)
    counts = np.bincount(region.ravel(), minlength=4)
    total = float(region.size)
    shares = tuple(float(c) / total for c in counts)

    prod_curve = symbolic.hyperbola_B2(P, P_A, B_A, p0, b0)
    lin_curve = symbolic.line_B2(P, P_A, B_A, lam)
    p2, b2 = (float(v) for v in symbolic.second_intersection(P_A, B_A, lam, p0, b0))
    points: list[tuple[float, float]] = [(P_A, B_A)]
    if (
        lam > 0
        and math.isfinite(p2)
        and math.isfinite(b2)
        and not np.allclose((p2, b2), (P_A, B_A), rtol=1e-12, atol=0.0)
    ):
        points.append((p2, b2))
    lam_a = predicates.lam_eff_pair(P_A, B_A, P_A, B_A, p0, b0)

    return RegionMap(
        P_A=P_A,
        B_A=B_A,
        lam=lam,
        p0=p0,
        b0=b0,
        P=P,
        B=B,
        log_p=bool(log_p),
        log_b=bool(log_b),
        region=region,
        ties=ties,
        disagreement_share=float(counts[ONLY_PRODUCT_B] + counts[ONLY_LINEAR_B]) / total,
        region_shares=shares,
        n_ties=int(ties.sum()),
        product_curve=prod_curve,
        linear_curve=lin_curve,
        intersections=tuple(points),
        lam_eff_at_A=lam_a,
    )
