"""Mitigations applied: the detector's defaults per finding kind and the instance a decision
would go to under a mitigation (one decision or many), given the detector's settings.

Every argmin here is the kernel's (:mod:`lmetric_theory.core.kernel`), exact for integer
inputs and exact offsets (ints or :class:`~fractions.Fraction`).
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np

from lmetric_theory.core import kernel
from lmetric_theory.detector.findings import FINDING_KINDS, Mitigation, MitigationKind
from lmetric_theory.detector.snapshot import Snapshot, as_exact_array

if TYPE_CHECKING:
    from lmetric_theory.detector.settings import DetectorSettings

__all__ = [
    "default_mitigations",
    "mitigated_choice",
    "mitigated_choices",
    "near_ties",
    "synced_view",
]

#: Router-state mitigations that rewrite the replica's view or offsets (value: ``R``).
_REPLICA_KINDS = (MitigationKind.COUNTER_SYNC, MitigationKind.SCALE_BATCH_OFFSET)


def synced_view(P: Any, B: Any, U: Any, replicas: float) -> tuple[np.ndarray, np.ndarray]:
    """A replica's ``(P, B)`` with its counters scaled by ``R`` (result (m)): the queued part
    of ``P`` (``P - U``; all of ``P`` when the uncached split ``U`` is unknown) and ``B``
    times ``R``; the request's own uncached prefill ``U`` stays whole. Exact for integer
    ``R`` and integer inputs.

    Returns
    -------
    (np.ndarray, np.ndarray)
        Tokens and requests, shaped like ``P``.
    """
    r = int(replicas) if float(replicas).is_integer() else float(replicas)
    P, B = np.asarray(P), np.asarray(B)
    if U is None:
        return P * r, B * r
    U = np.asarray(U)
    return (P - U) * r + U, B * r


def near_ties(P: Any, B: Any, p0: Any, b0: Any, tolerance: float) -> np.ndarray:
    """Indices of the instances whose product score is within ``tolerance`` (relative) of
    the best: ``S_k <= (1 + tolerance) S_min`` (the candidates of ``random_near_ties``)."""
    S = np.asarray(kernel.product_scores(P, B, p0, b0), dtype=float)
    best = S.min()
    return np.flatnonzero(S <= best + abs(best) * tolerance)


def _replica_offsets(p0: Any, b0: Any, r: float) -> tuple[Any, Any]:
    """``p0/R``, ``b0/R``, exact for exact offsets and integer ``R``."""
    if float(r).is_integer() and not isinstance(p0, float) and not isinstance(b0, float):
        return (kernel.exact_number(Fraction(p0) / int(r)),
                kernel.exact_number(Fraction(b0) / int(r)))
    return p0 / r, b0 / r


def default_mitigations(
    *,
    block_tokens: int,
    tie_break: str,
    load_cap: float | None,
    mitigation: Mitigation | Mapping[str, Mitigation] | None = None,
) -> dict[str, Mitigation]:
    """The mitigation per finding kind (plus ``extreme_low``: an extreme operating point
    below the band), the theory's defaults overridden by ``mitigation``.

    Parameters
    ----------
    block_tokens : int
        Tokens of one KV block (``zero_prefill`` -> ``PREFILL_BLOCK``).
    tie_break : {"load", "cache"}
        ``exact_tie`` -> ``TIE_BREAK_LOAD`` or ``TIE_BREAK_CACHE``.
    load_cap : float, optional
        ``extreme_low`` -> ``LOAD_CAP`` (requests) when given, else the fallback.
    mitigation : Mitigation or mapping of kind to Mitigation, optional
        One mitigation for every kind, or overrides for the kinds given.
    """
    defaults: dict[str, Mitigation] = {
        "disagreement": Mitigation.fallback(),
        "fragile": Mitigation.fallback(),
        "zero_prefill": Mitigation.prefill_block(block_tokens),
        "idle_tie": Mitigation.batch_offset(1),
        "exact_tie": Mitigation.tie_break(tie_break),
        "extreme_operating_point": Mitigation.fallback(),
        "extreme_low": (
            Mitigation.load_cap(load_cap) if load_cap is not None else Mitigation.fallback()
        ),
    }
    if isinstance(mitigation, Mitigation):
        return dict.fromkeys(defaults, mitigation)
    if mitigation is not None:
        for kind, m in mitigation.items():
            if kind not in FINDING_KINDS:
                raise ValueError(
                    f"mitigation: unknown finding kind {kind!r}; valid: {', '.join(FINDING_KINDS)}"
                )
            if not isinstance(m, Mitigation):
                raise ValueError(f"mitigation[{kind!r}]: expected a Mitigation, got {m!r}")
            defaults[kind] = m
            if kind == "extreme_operating_point":
                defaults["extreme_low"] = m
    return defaults


def _shift(offset: Any, v: float) -> int | float | Fraction:
    """``offset + v`` keeping exactness: an exact (int / Fraction) offset stays exact
    (``int`` when integral); a float offset gives ``int`` when integral, else float."""
    if isinstance(offset, Fraction):
        return kernel.exact_number(offset + Fraction(v))
    x = offset + v
    return int(x) if float(x).is_integer() else float(x)


def mitigated_choice(
    settings: DetectorSettings,
    snapshot: Snapshot,
    mitigation: Mitigation,
    *,
    rng: np.random.Generator | None = None,
) -> int:
    """Instance the product would pick under ``mitigation``.

    Parameters
    ----------
    settings : DetectorSettings
        The detector's offsets and reference.
    snapshot : Snapshot
        The decision.
    mitigation : Mitigation
        The mitigation applied (the verdict's default is resolved by
        :meth:`Detector.mitigated_choice`).
    rng : numpy.random.Generator, optional
        The draw of ``random_near_ties`` (required for it; each replica its own).

    Returns
    -------
    int
        Index of the chosen instance.
    """
    P, B = snapshot.prefill_tokens, snapshot.batch_size
    p0, b0 = settings.prefill_offset, settings.batch_offset
    k, v = mitigation.kind, mitigation.value
    if k is MitigationKind.PREFILL_BLOCK:
        return kernel.argmin_product(P, B, _shift(p0, v), b0)  # type: ignore[operator]
    if k is MitigationKind.BATCH_OFFSET:
        return kernel.argmin_product(P, B, p0, _shift(b0, v))  # type: ignore[operator]
    if k is MitigationKind.FALLBACK_REFERENCE:
        return kernel.argmin_linear(P, B, settings.lam)
    if k is MitigationKind.COUNTER_SYNC:
        Ps, Bs = synced_view(P, B, snapshot.uncached_tokens, v)  # type: ignore[arg-type]
        return kernel.argmin_product(Ps, Bs, p0, b0)  # type: ignore[return-value]
    if k is MitigationKind.SCALE_BATCH_OFFSET:
        q0, c0 = _replica_offsets(p0, b0, v)  # type: ignore[arg-type]
        return kernel.argmin_product(P, B, q0, c0)  # type: ignore[return-value]
    if k is MitigationKind.RANDOM_NEAR_TIES:
        if rng is None:
            raise ValueError("random_near_ties: needs a random generator (rng=...)")
        cand = near_ties(P, B, p0, b0, v)  # type: ignore[arg-type]
        return int(cand[rng.integers(cand.size)])
    i = kernel.argmin_product(P, B, p0, b0)
    if k in (MitigationKind.TIE_BREAK_LOAD, MitigationKind.TIE_BREAK_CACHE):
        tied = kernel.tied_product(P, B, p0, b0, i)
        if k is MitigationKind.TIE_BREAK_LOAD:
            key = B
        else:
            key = snapshot.uncached_tokens if snapshot.uncached_tokens is not None else P
        return min(tied, key=lambda t: (key[t], B[t], t))
    if k is MitigationKind.LOAD_CAP:
        ok = np.flatnonzero(B < v)
        if ok.size == 0 or ok.size == B.size:
            return i
        return int(ok[kernel.argmin_product(P[ok], B[ok], p0, b0)])
    return i


def mitigated_choices(
    settings: DetectorSettings,
    prefill_tokens: Any,
    batch_size: Any,
    mitigation: Mitigation,
    *,
    uncached_tokens: Any = None,
    only: Any = None,
    validate: bool = True,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Vectorised :meth:`mitigated_choice` with one mitigation over ``D`` decisions.

    Parameters
    ----------
    settings : DetectorSettings
        The detector's offsets and reference.
    prefill_tokens, batch_size : array_like, shape (D, N)
        As in :meth:`check_many` (tokens, requests).
    mitigation : Mitigation
        Applied to every selected decision.
    uncached_tokens : array_like, shape (D, N), optional
        For ``TIE_BREAK_CACHE`` (defaults to ``prefill_tokens``).
    only : array_like of bool, shape (D,), optional
        Decisions to mitigate (e.g. ``verdicts.flagged``); the others keep the
        product's choice.
    rng : numpy.random.Generator, optional
        For ``random_near_ties`` (one draw per decision, in order).

    Returns
    -------
    np.ndarray of int64, shape (D,)
        The instance each decision would go to.
    """
    P = np.atleast_2d(as_exact_array(prefill_tokens, "prefill_tokens", validate=validate))
    B = np.atleast_2d(as_exact_array(batch_size, "batch_size", validate=validate))
    if validate and P.shape != B.shape:
        raise ValueError(
            f"batch_size: shape {B.shape} does not match prefill_tokens shape {P.shape}"
        )
    U = None
    if uncached_tokens is not None:
        U = np.atleast_2d(as_exact_array(uncached_tokens, "uncached_tokens", validate=validate))
        if validate and U.shape != P.shape:
            raise ValueError(
                f"uncached_tokens: shape {U.shape} does not match prefill_tokens shape "
                f"{P.shape}"
            )
    p0, b0 = settings.prefill_offset, settings.batch_offset
    k, v = mitigation.kind, mitigation.value
    base = np.asarray(kernel.argmin_product(P, B, p0, b0, axis=1)).reshape(-1)
    if k is MitigationKind.PREFILL_BLOCK:
        out = np.asarray(kernel.argmin_product(P, B, _shift(p0, v), b0, axis=1)).reshape(-1)
    elif k is MitigationKind.BATCH_OFFSET:
        out = np.asarray(kernel.argmin_product(P, B, p0, _shift(b0, v), axis=1)).reshape(-1)
    elif k is MitigationKind.FALLBACK_REFERENCE:
        out = kernel.argmin_linear_rows(P, B, settings.lam_nd, settings.lam)
    elif k is MitigationKind.COUNTER_SYNC:
        Ps, Bs = synced_view(P, B, U, v)  # type: ignore[arg-type]
        out = np.asarray(kernel.argmin_product(Ps, Bs, p0, b0, axis=1)).reshape(-1)
    elif k is MitigationKind.SCALE_BATCH_OFFSET:
        q0, c0 = _replica_offsets(p0, b0, v)  # type: ignore[arg-type]
        out = np.asarray(kernel.argmin_product(P, B, q0, c0, axis=1)).reshape(-1)
    elif k is MitigationKind.RANDOM_NEAR_TIES:
        if rng is None:
            raise ValueError("random_near_ties: needs a random generator (rng=...)")
        out = np.array([
            int(c[rng.integers(c.size)])
            for c in (near_ties(P[r], B[r], p0, b0, v) for r in range(P.shape[0]))  # type: ignore[arg-type]
        ], dtype=np.int64)
    elif k in (MitigationKind.TIE_BREAK_LOAD, MitigationKind.TIE_BREAK_CACHE):
        rows = np.arange(P.shape[0])
        Pi, Bi = P[rows, base][:, None], B[rows, base][:, None]
        tied = kernel.product_sign(Pi, Bi, P, B, p0, b0) == 0
        if k is MitigationKind.TIE_BREAK_LOAD:
            key1 = B
        else:
            key1 = U if U is not None else P
        # lexicographic (key1, B, index) among the tied instances
        big1 = np.where(tied, key1, np.inf)
        m1 = big1.min(axis=1, keepdims=True)
        cand = tied & (key1 == m1)
        big2 = np.where(cand, B, np.inf)
        out = big2.argmin(axis=1)
    elif k is MitigationKind.LOAD_CAP:
        ok = B < v
        none_ok = ~ok.any(axis=1)
        Bx = np.where(ok, B, 0)
        Px = np.where(ok, P, 0)
        # excluded instances get a score above every eligible one
        S = kernel.product_scores(Px, Bx, p0, b0)
        top = S.max(axis=1, keepdims=True) + 1
        out = np.where(ok, S, top).argmin(axis=1) if S.dtype.kind == "i" else None
        if out is None:
            out = np.array(
                [
                    mitigated_choice(
                        settings, Snapshot.from_arrays(P[r], B[r], validate=False), mitigation
                    )
                    for r in range(P.shape[0])
                ],
                dtype=np.int64,
            )
        out = np.where(none_ok, base, out)
    else:
        out = base
    out = np.asarray(out, dtype=np.int64)
    if only is not None:
        out = np.where(np.asarray(only, dtype=bool), out, base)
    return out
