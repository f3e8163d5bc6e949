"""Numeric helpers for the geometry result (e), generated from the derived expressions.

Instance 1 is fixed at ``(P1, B1)``; the plane is instance 2's state ``(P2, B2)``.
Every function is produced by ``sympy.lambdify`` from :func:`lmetric_theory.theory.derive`
(built once per process, on first use) and broadcasts like numpy. These are float
helpers for plotting and exploration; exact decisions live in
:mod:`lmetric_theory.core.kernel`.

Units: ``P`` in tokens, ``B`` in requests, ``lam`` in tokens per batch slot.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import sympy as sp

from lmetric_theory.core.definitions import DEFAULT_B0, DEFAULT_P0
from lmetric_theory.theory.derivation import B_1, B_2, P_1, P_2, b_0, derive, lam, p_0

__all__ = [
    "REGION_AGREE",
    "REGION_LEFT",
    "REGION_LENS",
    "REGION_NAMES",
    "REGION_RIGHT",
    "hyperbola_B2",
    "line_B2",
    "region_of",
    "second_intersection",
    "tangent_lam",
]

ArrayLike = Any

#: Region codes returned by :func:`region_of`.
REGION_AGREE, REGION_LENS, REGION_LEFT, REGION_RIGHT = 0, 1, 2, 3
#: Names of the region codes, indexable by code.
REGION_NAMES: tuple[str, ...] = ("agree", "lens", "left", "right")


@functools.cache
def _functions() -> dict[str, Callable[..., Any]]:
    d = derive()
    args = (P_2, B_2, P_1, B_1, lam, p_0, b_0)

    def make(expr: sp.Basic) -> Callable[..., Any]:
        return sp.lambdify(args, expr, modules="numpy")

    return {
        "hyperbola": make(d.hyperbola_B2),
        "line": make(d.line_B2),
        "second_P2": make(d.second_P2),
        "second_B2": make(d.second_B2),
        "tangent": make(d.tangent_lam),
        "product_diff": make(d.S_2 - d.S_1),
        "linear_diff": make(d.C_2 - d.C_1),
    }


def _f(x: ArrayLike) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def hyperbola_B2(
    P2: ArrayLike, P1: ArrayLike, B1: ArrayLike, p0: float = DEFAULT_P0, b0: float = DEFAULT_B0
) -> np.ndarray:
    """``B_2`` on the product's iso-curve through instance 1 (same score as instance 1).

    Parameters
    ----------
    P2 : array_like
        Instance 2's prefill tokens, tokens (any shape; broadcasts with the others).
    P1, B1 : array_like
        Instance 1's prefill tokens (tokens) and batch size (requests).
    p0, b0 : float
        Offsets.

    Returns
    -------
    np.ndarray, float64
        Batch size (requests); ``inf`` on the asymptote ``P2 = -p0``.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        return _f(_functions()["hyperbola"](_f(P2), 0.0, _f(P1), _f(B1), 0.0, _f(p0), _f(b0)))


def line_B2(P2: ArrayLike, P1: ArrayLike, B1: ArrayLike, lam: ArrayLike) -> np.ndarray:
    """``B_2`` on linear(lam)'s iso-line through instance 1 (slope ``-1/lam``).

    Returns float64 batch sizes (requests), broadcast over the inputs; ``lam`` must be
    positive (``lam = 0`` makes the iso-line vertical: ``inf``/``nan``).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        return _f(_functions()["line"](_f(P2), 0.0, _f(P1), _f(B1), _f(lam), 0.0, 0.0))


def second_intersection(
    P1: ArrayLike,
    B1: ArrayLike,
    lam: ArrayLike,
    p0: float = DEFAULT_P0,
    b0: float = DEFAULT_B0,
) -> tuple[np.ndarray, np.ndarray]:
    """The intersection of the hyperbola and the line other than instance 1.

    Returns
    -------
    (P2, B2) : tuple of np.ndarray, float64
        ``P2 = lam (B1 + b0) - p0`` tokens and ``B2 = (P1 + p0)/lam - b0`` requests (as
        derived); it coincides with instance 1 when ``lam = tangent_lam(P1, B1, p0, b0)``.
        May lie outside the reachable quadrant ``P2, B2 >= 0``.
    """
    fns = _functions()
    with np.errstate(divide="ignore", invalid="ignore"):
        a = (0.0, 0.0, _f(P1), _f(B1), _f(lam), _f(p0), _f(b0))
        return _f(fns["second_P2"](*a)), _f(fns["second_B2"](*a))


def tangent_lam(
    P1: ArrayLike, B1: ArrayLike, p0: float = DEFAULT_P0, b0: float = DEFAULT_B0
) -> np.ndarray:
    """Rate at which the line touches the hyperbola at instance 1 (the lens is empty):
    ``(P1 + p0)/(B1 + b0)`` tokens per batch slot."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return _f(_functions()["tangent"](0.0, 0.0, _f(P1), _f(B1), 0.0, _f(p0), _f(b0)))


def region_of(
    P2: ArrayLike,
    B2: ArrayLike,
    P1: ArrayLike,
    B1: ArrayLike,
    lam: ArrayLike,
    p0: float = DEFAULT_P0,
    b0: float = DEFAULT_B0,
) -> np.ndarray:
    """Which part of the disagreement region each point ``(P2, B2)`` lies in (float signs,
    for plotting).

    Returns
    -------
    np.ndarray, int8, broadcast shape
        :data:`REGION_AGREE` (0) where product and linear(lam) do not strictly
        disagree, :data:`REGION_LENS` (1) in the bounded lens (product keeps 1, linear
        moves to 2), :data:`REGION_LEFT` (2) / :data:`REGION_RIGHT` (3) in the unbounded
        parts left / right of both intersections (product moves to 2, linear keeps 1).
    """
    fns = _functions()
    a = (_f(P2), _f(B2), _f(P1), _f(B1), _f(lam), _f(p0), _f(b0))
    prod = np.sign(fns["product_diff"](*a))  # +1: product favours instance 1
    lin = np.sign(fns["linear_diff"](*a))  # +1: linear favours instance 1
    sP2 = fns["second_P2"](*a)
    P2b = np.broadcast_to(a[0], np.broadcast(prod, lin, sP2).shape)
    out = np.zeros(P2b.shape, dtype=np.int8)
    disagree = np.broadcast_to(prod * lin < 0, out.shape)
    lens = disagree & np.broadcast_to(prod > 0, out.shape)
    side = disagree & ~lens
    left = side & (P2b < np.minimum(_f(P1), sP2))
    out[lens] = REGION_LENS
    out[side] = REGION_RIGHT
    out[left] = REGION_LEFT
    return out
