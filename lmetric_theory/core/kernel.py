"""The numeric kernel: every formula of the product-vs-linear theory, written once.

These are the numeric counterparts of the expressions derived in
:mod:`lmetric_theory.theory`; ``tests/test_kernel_vectorised.py`` and ``tests/test_kernel.py`` tie
every function here to those expressions and to brute force in exact rational arithmetic.
Policies, the detector, the region maps, the audit and the app call these functions; none
writes a score, a rate or an argmin of its own.

Paths, side by side:

- vectorised (numpy, any shape): :func:`product_scores`, :func:`linear_scores`, the pairwise
  signs, :func:`lam_eff`, :func:`lam_star`, :func:`regret_tokens`, :func:`argmin_product`,
  :func:`argmin_linear`, :func:`band_violation`;
- exact lists (Python ints / Fractions, one decision): :func:`product_scores_exact`,
  :func:`linear_scores_exact`, :func:`pick_exact` (tie rules ``lowest``/``random``);
- the detector's fast paths: :func:`argmin_linear_rows` (rows of a (D, N) block, rate
  ``n/d``), :func:`argmin_linear_pairs` (one decision as (P, B) pairs of Python ints),
  :func:`lam_eff_pair`, :func:`lam_star_pair`, :func:`regret_pair` (Python scalars).

Scores, for instance ``i`` with prefill tokens ``P_i`` and batch size ``B_i``:

- product (LMetric): ``S_i = (P_i + p0) * (B_i + b0)``
- linear:            ``C_i = P_i + lam * B_i``

Exactness
---------
Every *sign* and every *argmin* here is exact:

- integer arrays with integer offsets / rate are evaluated in ``int64`` (exact while
  ``|P|, |B|, |p0|, |b0|, |lam| < 2**31``);
- anything else (float arrays, float or :class:`fractions.Fraction` offsets or rates) is
  evaluated in ``float64`` with a forward error bound; the few entries whose float value
  lies inside the bound are re-evaluated in exact rational arithmetic (each float taken
  at its exact binary value, each ``Fraction`` as given). Ties therefore come out as
  exactly 0, never as a rounding artefact.

Quantities that are ratios (``lam_eff``, ``lam_star``, ``regret_tokens``) are
returned as ``float64`` for reporting; decisions never depend on them.

All functions broadcast like numpy. Units: ``P`` in tokens, ``B`` in requests (or KV
blocks), ``lam`` in tokens per batch slot.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from fractions import Fraction
from numbers import Rational
from typing import Any

import numpy as np

__all__ = [
    "TIE_RULES",
    "argmin_linear",
    "argmin_linear_pairs",
    "argmin_linear_rows",
    "argmin_product",
    "band_disagrees",
    "band_violation",
    "conflicting",
    "disagrees",
    "exact_number",
    "lam_eff",
    "lam_eff_pair",
    "lam_star",
    "lam_star_pair",
    "lambda_eff",
    "lambda_star",
    "linear_scores",
    "linear_scores_exact",
    "linear_sign",
    "pick_exact",
    "pick_min",
    "product_scores",
    "product_scores_exact",
    "product_sign",
    "regret_pair",
    "regret_tokens",
    "tied_product",
]

#: Tie rules of an argmin: ``lowest`` index, or uniformly ``random`` among the minima.
TIE_RULES: tuple[str, ...] = ("lowest", "random")

ArrayLike = Any
_EPS = np.finfo(np.float64).eps
# Forward error of the float evaluations below is at most a few ulps of the
# magnitude bound; 16 ulps leaves a wide margin.
_ERR = 16.0 * _EPS
_INT_LIMIT = 2**31


def _is_int_scalar(x: object) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool | np.bool_)


def _int_path(arrays: tuple[np.ndarray, ...], scalars: tuple[object, ...]) -> bool:
    """True when every input is integer-typed and small enough for exact int64 math."""
    if not all(a.dtype.kind in "iu" for a in arrays):
        return False
    for s in scalars:
        if isinstance(s, np.ndarray):
            if s.dtype.kind not in "iu":
                return False
        elif not _is_int_scalar(s):
            return False
    return True


def _to_float(x: object) -> np.ndarray:
    if isinstance(x, Fraction):
        return np.asarray(float(x))
    return np.asarray(x, dtype=np.float64)


def _exact(x: object) -> Fraction:
    """The exact rational value of a scalar (float at its binary value)."""
    if isinstance(x, Fraction):
        return x
    if isinstance(x, Rational):
        return Fraction(int(x.numerator), int(x.denominator))
    return Fraction(float(x)) if isinstance(x, float | np.floating) else Fraction(int(x))


def _filtered_sign(
    value: Callable[..., Any],
    bound: Callable[..., Any],
    inputs: tuple[object, ...],
) -> np.ndarray:
    """Exact sign of a polynomial ``value(*inputs)``.

    ``bound`` gives a magnitude ``m`` such that the float evaluation errs by at
    most ``_ERR * m``. Entries inside that band are recomputed with Fractions.
    """
    floats = [_to_float(x) for x in inputs]
    v = np.asarray(value(*floats), dtype=np.float64)
    m = np.asarray(bound(*[np.abs(f) for f in floats]), dtype=np.float64)
    out = np.array(np.sign(v), dtype=np.int8)  # writable, also for 0-d input
    unsure = np.abs(v) <= _ERR * m
    if np.any(unsure) or not np.all(np.isfinite(v)):
        unsure |= ~np.isfinite(v)
        shape = out.shape
        idx = np.argwhere(unsure.reshape(shape)) if shape else [()]
        full = [
            np.broadcast_to(x, shape) if isinstance(x, np.ndarray) else x for x in inputs
        ]
        for ix in idx:
            ix = tuple(ix)
            args = [_exact(x[ix] if isinstance(x, np.ndarray) else x) for x in full]
            r = value(*args)
            out[ix] = (r > 0) - (r < 0)
    return out


def _arrays(*xs: ArrayLike) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(x) for x in xs)


def _scalar_or_array(x: object) -> object:
    """Keep Python/numpy scalars and Fractions as they are; turn sequences into arrays."""
    if isinstance(x, Fraction | int | float | np.generic):
        return x
    return np.asarray(x)


# --------------------------------------------------------------------------- scores


def product_scores(P: ArrayLike, B: ArrayLike, p0: object = 0, b0: object = 1) -> np.ndarray:
    """LMetric score ``(P + p0) * (B + b0)``.

    Parameters
    ----------
    P : array_like, shape (..., N)
        Prefill tokens per instance, tokens.
    B : array_like, shape (..., N)
        Batch size per instance, requests.
    p0, b0 : int, float or Fraction
        Prefill and batch offsets (defaults: 0 and 1, as public ports use).

    Returns
    -------
    np.ndarray
        ``int64`` for integer inputs, else ``float64``; units tokens x requests.
    """
    P, B = _arrays(P, B)
    if _int_path((P, B), (p0, b0)):
        return (P.astype(np.int64) + int(p0)) * (B.astype(np.int64) + int(b0))
    return (_to_float(P) + float(p0)) * (_to_float(B) + float(b0))


def linear_scores(P: ArrayLike, B: ArrayLike, lam: object) -> np.ndarray:
    """Linear score ``P + lam * B`` (tokens); ``int64`` for integer inputs."""
    P, B = _arrays(P, B)
    lam = _scalar_or_array(lam)
    if _int_path((P, B), (lam,)):
        return P.astype(np.int64) + np.asarray(lam, dtype=np.int64) * B.astype(np.int64)
    return _to_float(P) + _to_float(lam) * _to_float(B)


# ------------------------------------------------------------------- pairwise signs


def product_sign(
    P1: ArrayLike, B1: ArrayLike, P2: ArrayLike, B2: ArrayLike, p0: object = 0, b0: object = 1
) -> np.ndarray:
    """Exact ``sign(S_1 - S_2)`` as ``int8``: -1 product prefers 1, +1 prefers 2, 0 tie."""
    P1, B1, P2, B2 = _arrays(P1, B1, P2, B2)
    if _int_path((P1, B1, P2, B2), (p0, b0)):
        d = product_scores(P1, B1, p0, b0) - product_scores(P2, B2, p0, b0)
        return np.sign(d).astype(np.int8)
    return _filtered_sign(
        lambda a, b, c, d, x, y: (a + x) * (b + y) - (c + x) * (d + y),
        lambda a, b, c, d, x, y: (a + x) * (b + y) + (c + x) * (d + y),
        (P1, B1, P2, B2, _scalar_or_array(p0), _scalar_or_array(b0)),
    )


def linear_sign(
    P1: ArrayLike, B1: ArrayLike, P2: ArrayLike, B2: ArrayLike, lam: object
) -> np.ndarray:
    """Exact ``sign(C_1 - C_2)`` as ``int8``: -1 linear prefers 1, +1 prefers 2, 0 tie."""
    P1, B1, P2, B2 = _arrays(P1, B1, P2, B2)
    lam = _scalar_or_array(lam)
    if _int_path((P1, B1, P2, B2), (lam,)):
        d = linear_scores(P1, B1, lam) - linear_scores(P2, B2, lam)
        return np.sign(d).astype(np.int8)
    return _filtered_sign(
        lambda a, b, c, d, k: (a - c) + k * (b - d),
        lambda a, b, c, d, k: (a + c) + k * (b + d),
        (P1, B1, P2, B2, lam),
    )


def conflicting(P1: ArrayLike, B1: ArrayLike, P2: ArrayLike, B2: ArrayLike) -> np.ndarray:
    """True where the pair conflicts: one needs fewer prefill tokens, the other has the
    smaller batch, i.e. ``(P1 - P2) * (B1 - B2) < 0``. Dominated pairs never disagree."""
    P1, B1, P2, B2 = _arrays(P1, B1, P2, B2)
    sp = np.sign(_to_float(P1) - _to_float(P2)) if P1.dtype.kind == "f" or P2.dtype.kind == "f" \
        else np.sign(P1.astype(np.int64) - P2.astype(np.int64))
    sb = np.sign(_to_float(B1) - _to_float(B2)) if B1.dtype.kind == "f" or B2.dtype.kind == "f" \
        else np.sign(B1.astype(np.int64) - B2.astype(np.int64))
    return sp * sb < 0


def disagrees(
    P1: ArrayLike,
    B1: ArrayLike,
    P2: ArrayLike,
    B2: ArrayLike,
    lam: object,
    p0: object = 0,
    b0: object = 1,
) -> np.ndarray:
    """True where the product strictly prefers one instance and ``linear(lam)`` strictly
    the other. Ties on either side are not disagreements (see ``product_sign``)."""
    return product_sign(P1, B1, P2, B2, p0, b0) * linear_sign(P1, B1, P2, B2, lam) == -1


def band_disagrees(
    P1: ArrayLike,
    B1: ArrayLike,
    P2: ArrayLike,
    B2: ArrayLike,
    lam_lo: object,
    lam_hi: object,
    p0: object = 0,
    b0: object = 1,
) -> np.ndarray:
    """True where some ``lam`` in ``[lam_lo, lam_hi]`` strictly disagrees with the product.

    ``C_1 - C_2`` is affine in ``lam``, so its sign over the band takes its extremes
    at the two ends: checking ``lam_lo`` and ``lam_hi`` is exact.
    """
    ps = product_sign(P1, B1, P2, B2, p0, b0)
    lo = linear_sign(P1, B1, P2, B2, lam_lo)
    hi = linear_sign(P1, B1, P2, B2, lam_hi)
    return (ps * lo == -1) | (ps * hi == -1)


# ------------------------------------------------------------------------- ratios


def lam_eff(
    P1: ArrayLike, B1: ArrayLike, P2: ArrayLike, B2: ArrayLike, p0: object = 0, b0: object = 1
) -> np.ndarray:
    """Exchange rate the product implicitly uses for a pair (tokens per batch slot):
    ``(mean(P) + p0) / (mean(B) + b0)``; ``inf`` when only the denominator is 0,
    ``nan`` when both are."""
    P1, B1, P2, B2 = (_to_float(x) for x in (P1, B1, P2, B2))
    num = P1 + P2 + 2.0 * float(p0)
    den = B1 + B2 + 2.0 * float(b0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return num / den


def lam_star(P1: ArrayLike, B1: ArrayLike, P2: ArrayLike, B2: ArrayLike) -> np.ndarray:
    """Break-even rate of a pair, ``(P2 - P1) / (B1 - B2)`` (tokens per batch slot):
    ``linear(lam)`` changes its choice at ``lam = lam_star``. ``nan`` when B1 == B2."""
    P1, B1, P2, B2 = (_to_float(x) for x in (P1, B1, P2, B2))
    den = B1 - B2
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den == 0, np.nan, (P2 - P1) / np.where(den == 0, 1.0, den))


def regret_tokens(
    P1: ArrayLike, B1: ArrayLike, P2: ArrayLike, B2: ArrayLike, lam: object
) -> np.ndarray:
    """Cost of choosing instance 1 instead of 2 under ``linear(lam)``, in prefill-token
    equivalents: ``(P1 - P2) + lam * (B1 - B2)``. With 1 the product's choice and 2 the
    linear choice it is >= 0."""
    P1, B1, P2, B2 = (_to_float(x) for x in (P1, B1, P2, B2))
    return (P1 - P2) + _to_float(_scalar_or_array(lam)) * (B1 - B2)


# ------------------------------------------------------------------------- argmins


def _exact_argmin(
    scores: np.ndarray, exact_score: Callable[[tuple[int, ...]], Fraction], axis: int
) -> np.ndarray:
    """Lowest-index argmin of float ``scores`` along ``axis``, with near-ties resolved
    exactly by ``exact_score(index)``."""
    scores = np.moveaxis(scores, axis, -1)
    first = np.array(np.argmin(scores, axis=-1))  # writable, also for 1-d input
    mn = np.take_along_axis(scores, first[..., None], axis=-1)
    near = scores <= mn + _ERR * np.abs(mn) * 4 + _ERR * np.max(np.abs(scores), axis=-1,
                                                                   keepdims=True)
    rows = np.argwhere(near.sum(axis=-1) > 1)
    for row in rows:
        row = tuple(row)
        cand = np.flatnonzero(near[row])
        best = min(cand, key=lambda j: (exact_score((*row, int(j))), int(j)))
        first[row] = best
    return first


def _moved_index(ix: tuple[int, ...], axis: int, ndim: int) -> tuple[int, ...]:
    """Undo ``np.moveaxis(x, axis, -1)`` on an index tuple."""
    ix = list(ix)
    last = ix.pop()
    ix.insert(axis % ndim, last)
    return tuple(ix)


def argmin_product(
    P: ArrayLike, B: ArrayLike, p0: object = 0, b0: object = 1, axis: int = -1
) -> np.ndarray | int:
    """Instance the product picks: exact argmin of ``(P + p0)(B + b0)`` along ``axis``,
    lowest index on ties. Returns an ``int`` for 1-d input."""
    P, B = np.broadcast_arrays(*_arrays(P, B))
    if _int_path((P, B), (p0, b0)):
        out = np.argmin(product_scores(P, B, p0, b0), axis=axis)
    else:
        s = product_scores(P, B, p0, b0)
        ep0, eb0 = _exact(p0), _exact(b0)
        out = _exact_argmin(
            s,
            lambda ix: (_exact(P[_moved_index(ix, axis, P.ndim)]) + ep0)
            * (_exact(B[_moved_index(ix, axis, P.ndim)]) + eb0),
            axis,
        )
    return int(out) if np.ndim(out) == 0 else out


def argmin_linear(P: ArrayLike, B: ArrayLike, lam: object, axis: int = -1) -> np.ndarray | int:
    """Instance ``linear(lam)`` picks: exact argmin of ``P + lam * B`` along ``axis``,
    lowest index on ties. ``lam`` must be a scalar. Returns an ``int`` for 1-d input."""
    P, B = np.broadcast_arrays(*_arrays(P, B))
    if _int_path((P, B), (lam,)):
        out = np.argmin(linear_scores(P, B, lam), axis=axis)
    else:
        s = linear_scores(P, B, lam)
        el = _exact(lam)
        out = _exact_argmin(
            s,
            lambda ix: _exact(P[_moved_index(ix, axis, P.ndim)])
            + el * _exact(B[_moved_index(ix, axis, P.ndim)]),
            axis,
        )
    return int(out) if np.ndim(out) == 0 else out


# ------------------------------------------------------------ exact lists and tie rules


def exact_number(x: object) -> int | Fraction:
    """``x`` as an exact number: ``int`` when integral, else :class:`~fractions.Fraction`
    (floats at their binary value)."""
    f = _exact(x)
    return int(f) if f.denominator == 1 else f


def product_scores_exact(P: Sequence[Any], B: Sequence[Any], p0: object, b0: object) -> list:
    """``[(P_i + p0) * (B_i + b0)]`` over Python ints / Fractions (exact, one decision)."""
    if p0 == 0:
        return [p * (b + b0) for p, b in zip(P, B, strict=True)]
    return [(p + p0) * (b + b0) for p, b in zip(P, B, strict=True)]


def linear_scores_exact(P: Sequence[Any], B: Sequence[Any], lam: object) -> list:
    """``[P_i + lam * B_i]`` over Python ints / Fractions (exact, one decision)."""
    return [p + lam * b for p, b in zip(P, B, strict=True)]


def pick_exact(scores: Sequence[Any], tie: str, rng: np.random.Generator | None = None) -> int:
    """Argmin of exact scores under a tie rule.

    Parameters
    ----------
    scores : sequence of int or Fraction
        One score per instance.
    tie : {"lowest", "random"}
        ``lowest`` index among the minima, or uniform among them with ``rng`` (one draw
        ``rng.integers(k)`` only when ``k >= 2`` instances tie).
    rng : numpy.random.Generator, optional
        Needed for ``tie="random"``.
    """
    best = min(scores)
    if tie == "lowest":
        return list(scores).index(best)
    cands = [i for i, s in enumerate(scores) if s == best]
    return cands[0] if len(cands) == 1 else cands[int(rng.integers(len(cands)))]  # type: ignore[union-attr]


def pick_min(scores: np.ndarray, tie: str, rng: np.random.Generator | None = None) -> int:
    """Argmin of a numpy score vector (shape (N,)) under a tie rule (see :func:`pick_exact`)."""
    if tie == "lowest":
        return int(np.argmin(scores))
    cands = np.flatnonzero(scores == scores.min())
    if cands.size == 1:
        return int(cands[0])
    return int(cands[rng.integers(cands.size)])  # type: ignore[union-attr]


def tied_product(P: ArrayLike, B: ArrayLike, p0: object, b0: object, i: int) -> tuple[int, ...]:
    """Instances (shape (N,) inputs) whose product score equals instance ``i``'s exactly."""
    P, B = _arrays(P, B)
    sign = product_sign(P[i], B[i], P, B, p0, b0)
    return tuple(int(k) for k in np.flatnonzero(sign == 0))


# ------------------------------------------------------------- detector fast paths

_SMALL_D = 1 << 20  # rates n/d with d above this take the float-filtered path


def lam_eff_pair(P1: Any, B1: Any, P2: Any, B2: Any, p0: Any, b0: Any) -> float:
    """:func:`lam_eff` of one pair of Python numbers: ``inf`` when only the denominator
    is 0, ``nan`` when both are (tokens per batch slot)."""
    num = P1 + P2 + 2 * p0
    den = B1 + B2 + 2 * b0
    return num / den if den else (math.inf if num else math.nan)


def lam_star_pair(P1: Any, B1: Any, P2: Any, B2: Any) -> float:
    """:func:`lam_star` of one pair of Python numbers; ``nan`` when ``B1 == B2``."""
    return (P2 - P1) / (B1 - B2) if B1 != B2 else math.nan


def regret_pair(P1: Any, B1: Any, P2: Any, B2: Any, lam: float) -> float:
    """:func:`regret_tokens` of one pair of Python numbers (prefill-token equivalents)."""
    return (P1 - P2) + lam * (B1 - B2)


def argmin_linear_pairs(PB: Sequence[tuple[int, int]], nd: tuple[int, int], lam: float) -> int:
    """Exact lowest-index argmin of ``P + lam * B`` over (P, B) pairs of Python ints.

    Parameters
    ----------
    PB : sequence of (int, int)
        ``(P_i, B_i)`` per instance (tokens, requests), nonnegative.
    nd : (int, int)
        ``lam = n / d`` exactly.
    lam : float
        ``n / d`` as a float (used when ``d`` is large).
    """
    n, d = nd
    if d > _SMALL_D:
        return _argmin_linear_pairs_float(PB, n, d, lam)
    if d == 1:
        C = [p + n * b for p, b in PB]
    else:
        C = [d * p + n * b for p, b in PB]
    return C.index(min(C))


def _argmin_linear_pairs_float(PB: Sequence[tuple[int, int]], n: int, d: int, lam: float) -> int:
    """Same, for rates with a large denominator: float scores, and exact integer
    scores ``d*P + n*B`` only when the runner-up is within the float error of the
    minimum (each float score errs by at most ~1 ulp of its value)."""
    C = [p + lam * b for p, b in PB]
    m = min(C)
    j = C.index(m)
    thr = m + 8 * _EPS * m
    C[j] = math.inf
    if len(C) > 1 and min(C) <= thr:
        C[j] = m
        near = [k for k, c in enumerate(C) if c <= thr]
        j = min(near, key=lambda k: (d * PB[k][0] + n * PB[k][1], k))
    return j


def argmin_linear_rows(
    P: np.ndarray, B: np.ndarray, nd: tuple[int, int], lam: float
) -> np.ndarray:
    """Exact lowest-index argmin along axis 1 of ``P + lam * B`` (``lam = n/d``).

    Parameters
    ----------
    P, B : np.ndarray, shape (D, N)
        Nonnegative prefill tokens and batch sizes (integer or float).
    nd : (int, int)
        ``lam = n / d`` exactly; ``lam`` is its float value.

    Returns
    -------
    np.ndarray of intp, shape (D,)
    """
    n, d = nd
    if P.dtype.kind == "i" and B.dtype.kind == "i":
        pmax = int(P.max(initial=0))
        bmax = int(B.max(initial=0))
        if d * pmax + n * bmax < 2**62:
            C = B * n
            if d == 1:
                C += P
            else:
                C += P * d
            return C.argmin(axis=1)
    # float evaluation with an error filter; near-ties resolved exactly
    C = lam * B  # float64 even for integer input
    C += P
    j = C.argmin(axis=1)
    rows = np.arange(C.shape[0])
    cmin = C[rows, j]
    tol = 8 * _EPS * cmin  # each score errs by <= ~1 ulp of itself (all terms >= 0)
    C[rows, j] = np.inf
    second = C.argmin(axis=1)
    close = np.flatnonzero(C[rows, second] <= cmin + tol)
    near = np.zeros((0, C.shape[1]), bool)
    if close.size:
        C[close, j[close]] = cmin[close]
        Cc, Pc, Bc, jc = C[close], P[close], B[close], j[close]
        rc = np.arange(close.size)
        near = Cc <= (cmin[close] + tol[close])[:, None]
        near[rc, jc] = False
        # candidates identical to j (same P and B) have a higher index and tie exactly
        near &= ~((Pc == Pc[rc, jc][:, None]) & (Bc == Bc[rc, jc][:, None]))
    bad = close[near.any(axis=1)] if close.size else close
    if bad.size:
        j[bad] = np.asarray(argmin_linear(P[bad], B[bad], Fraction(n, d), axis=1)).reshape(
            bad.size
        )
    return j


# ------------------------------------------------------------------------- bands


def band_violation(
    P: ArrayLike, B: ArrayLike, chosen: ArrayLike, lam_lo: float, lam_hi: float
) -> np.ndarray:
    """Decisions whose choice no linear rate in ``[lam_lo, lam_hi]`` would make, shape (D,).

    ``chosen[d]`` is a (possibly tied) argmin of ``P + lam * B`` for some ``lam`` in the
    band iff the half-lines ``(P_i - P_j) + lam (B_i - B_j) <= 0`` over all ``j`` meet the
    band. Ties count as agreement. Evaluated in float64 (exact for integer inputs below
    ``2**53``).

    Parameters
    ----------
    P, B : array_like, shape (D, N)
        Prefill tokens and batch sizes per decision and instance.
    chosen : array_like, shape (D,)
        The instance each decision went to.
    lam_lo, lam_hi : float
        The band, tokens per batch slot, ``0 <= lam_lo <= lam_hi``.
    """
    P = np.asarray(P, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    rows = np.arange(P.shape[0])
    c = np.asarray(chosen, dtype=np.int64)
    dP = P[rows, c][:, None] - P
    dB = B[rows, c][:, None] - B
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = -dP / dB
    lo = np.where(dB < 0, bound, -np.inf).max(axis=1)
    hi = np.where(dB > 0, bound, np.inf).min(axis=1)
    flat_bad = ((dB == 0) & (dP > 0)).any(axis=1)
    return flat_bad | (np.maximum(lo, lam_lo) > np.minimum(hi, lam_hi))


#: Former names, kept as aliases.
lambda_eff = lam_eff
lambda_star = lam_star
