"""The detector: :class:`Detector` (verdicts in :mod:`~lmetric_theory.detector.verdict`).

Definitions (``i`` the product's choice, ``j`` the linear reference's choice, both the
lowest index on ties, exactly as :func:`lmetric_theory.core.kernel.argmin_product` and
:func:`~lmetric_theory.core.kernel.argmin_linear` pick them):

- ``disagrees``: ``i != j``. Whenever neither score ties at its minimum this equals
  ``kernel.disagrees`` on the pair ``(i, j)`` (the theory: the argmins differ exactly
  when that pair disagrees); with a tie at the minimum the decision may differ by
  tie-breaking alone, which is also reported as ``exact_tie``.
- the *rival* ``r``: ``j`` when ``i != j``, else the product's runner-up (lowest index
  among the second-best product scores); ``-1`` when ``N == 1``. ``lam_eff`` and
  ``lam_star`` are those of the pair ``(i, r)``: the rate the product implicitly used
  at this decision and the rate at which a linear score flips between the two.
- ``regret_tokens``: ``(P_i - P_j) + lam * (B_i - B_j) >= 0`` (prefill-token equivalents).
- ``fragile``: ``i == j`` but some rate in the reference band picks another instance.
  The set of rates for which a linear score picks ``i`` is an interval, so checking the
  band's two ends is exact.
- ``zero_prefill``: some instance with ``B > 0`` has ``P + p0 == 0`` (its product score
  is 0 whatever its load: a hot-spot).
- ``idle_tie``: two or more instances have ``B + b0 == 0`` (score 0 whatever their P).
- ``exact_tie``: the minimum product score is attained twice or more, not explained by
  the two degenerate kinds above.
- ``extreme_operating_point``: finite ``lam_eff`` outside
  ``[lam_lo / extreme_factor, lam_hi * extreme_factor]``.

Every decision (choices, flags) is exact for integer inputs and exact offsets (int or
:class:`~fractions.Fraction`); ``lam_eff``, ``lam_star`` and ``regret_tokens`` are float64 for reporting.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

import numpy as np

from lmetric_theory.core import kernel
from lmetric_theory.core.validate import exact_if_integral, finite_scalar
from lmetric_theory.detector import mitigation as _mit
from lmetric_theory.detector.findings import Mitigation
from lmetric_theory.detector.reference import LinearReference
from lmetric_theory.detector.settings import DetectorSettings
from lmetric_theory.detector.snapshot import Snapshot, as_exact_array
from lmetric_theory.detector.verdict import Verdict, Verdicts, assemble

__all__ = ["Detector"]

_NAN = float("nan")
_INF = float("inf")
_I64MAX = np.iinfo(np.int64).max
_CHUNK = 1 << 16  # rows per vectorised block in check_many


def _offset(name: str, value: object) -> int | float | Fraction:
    """A validated offset (>= 0): a Fraction stays exact (``int`` when integral), anything
    else goes through ``finite_scalar`` (``int`` when integral)."""
    if isinstance(value, Fraction):
        if value < 0:
            raise ValueError(f"{name}: negative ({value}); offsets must be >= 0")
        return kernel.exact_number(value)
    return exact_if_integral(finite_scalar(name, value, nonneg=True, why="offsets must be >= 0"))


class Detector:
    """Checks routing decisions of the product score against a linear reference.

    Parameters
    ----------
    reference : LinearReference or float
        The linear score to compare with (a float means ``LinearReference.fixed``).
    prefill_offset : int, float or Fraction
        ``p0`` of the product score, tokens (>= 0); a Fraction is kept exact.
    batch_offset : int, float or Fraction
        ``b0`` of the product score, batch slots (>= 0); a Fraction is kept exact.
    extreme_factor : float
        ``lam_eff`` more than this factor outside the band is an extreme operating
        point (> 1).
    tie_break : {"load", "cache"}
        Tie-break the ``exact_tie`` finding recommends.
    block_tokens : int
        Tokens of one KV block, the prefill offset the ``zero_prefill`` finding recommends.
    load_cap : float, optional
        Batch-size cap (requests) recommended for extreme operating points where the
        product under-weights load (``lam_eff`` below the band); without it those fall
        back to the reference.
    mitigation : Mitigation or mapping of kind to Mitigation, optional
        Overrides the theory's default mitigation for every kind (a single Mitigation) or
        for the kinds given (a mapping).

    Attributes
    ----------
    settings : DetectorSettings
        Every setting above, validated, with the derived forms the checks use (exact
        rate ratios, band, extreme bounds, mitigations per kind). ``reference``,
        ``prefill_offset``, ``batch_offset``, ``extreme_factor``, ``tie_break``,
        ``block_tokens``, ``load_cap`` and ``mitigations`` read it (read-only).
    """

    __slots__ = ("_settings", "_hot")

    def __init__(
        self,
        reference: LinearReference | float,
        prefill_offset: float = 0,
        batch_offset: float = 1,
        *,
        extreme_factor: float = 10.0,
        tie_break: str = "load",
        block_tokens: int = 16,
        load_cap: float | None = None,
        mitigation: Mitigation | Mapping[str, Mitigation] | None = None,
    ) -> None:
        if not isinstance(reference, LinearReference):
            reference = LinearReference.fixed(reference)  # validates
        p0 = _offset("prefill_offset", prefill_offset)
        b0 = _offset("batch_offset", batch_offset)
        f = float(extreme_factor)
        if not (math.isfinite(f) and f > 1):
            raise ValueError(f"extreme_factor: must be a finite number > 1, got {extreme_factor!r}")
        if tie_break not in ("load", "cache"):
            raise ValueError(f"tie_break: unknown {tie_break!r}; valid: 'load', 'cache'")
        if not (isinstance(block_tokens, int | np.integer) and block_tokens > 0):
            raise ValueError(f"block_tokens: must be a positive integer, got {block_tokens!r}")
        block_tokens = int(block_tokens)
        if load_cap is not None:
            load_cap = float(load_cap)
            if not (math.isfinite(load_cap) and load_cap > 0):
                raise ValueError(f"load_cap: must be a positive finite number, got {load_cap!r}")
        mitigations = _mit.default_mitigations(
            block_tokens=block_tokens, tie_break=tie_break, load_cap=load_cap,
            mitigation=mitigation,
        )
        s = DetectorSettings(
            reference, p0, b0, f, tie_break, block_tokens, load_cap, mitigations
        )
        self._settings = s
        # constants of check()'s pure-Python path (integer inputs and offsets only)
        self._hot = (
            (p0, b0, *s.lam_nd, s.lam, s.band, s.extreme_lo, s.extreme_hi)
            if s.integer_offsets
            else None
        )

    def __repr__(self) -> str:
        s = self._settings
        return (
            f"Detector({s.reference!r}, prefill_offset={s.prefill_offset!r}, "
            f"batch_offset={s.batch_offset!r}, extreme_factor={s.extreme_factor!r}, "
            f"tie_break={s.tie_break!r})"
        )

    # ------------------------------------------------------------------ settings

    @property
    def settings(self) -> DetectorSettings:
        """The detector's settings (one frozen value)."""
        return self._settings

    @property
    def reference(self) -> LinearReference:
        """The linear reference (rate and band, tokens per batch slot)."""
        return self._settings.reference  # type: ignore[return-value]

    @property
    def prefill_offset(self) -> int | float | Fraction:
        """``p0``, tokens (``int`` when integral, a Fraction kept exact)."""
        return self._settings.prefill_offset

    @property
    def batch_offset(self) -> int | float | Fraction:
        """``b0``, batch slots (``int`` when integral, a Fraction kept exact)."""
        return self._settings.batch_offset

    @property
    def extreme_factor(self) -> float:
        """Factor outside the band beyond which ``lam_eff`` is extreme."""
        return self._settings.extreme_factor

    @property
    def tie_break(self) -> str:
        """Tie-break the ``exact_tie`` finding recommends (``"load"`` or ``"cache"``)."""
        return self._settings.tie_break

    @property
    def block_tokens(self) -> int:
        """Tokens of one KV block."""
        return self._settings.block_tokens

    @property
    def load_cap(self) -> float | None:
        """Batch-size cap recommended below the band (requests), or None."""
        return self._settings.load_cap

    @property
    def mitigations(self) -> Mapping[str, Mitigation]:
        """Mitigation per finding kind, plus ``extreme_low`` (read-only mapping)."""
        return self._settings.mitigations

    # ------------------------------------------------------------------ one decision

    def check(self, snapshot: Snapshot) -> Verdict:
        """Verdict on one decision.

        Parameters
        ----------
        snapshot : Snapshot
            The N instances' loads at the decision.

        Returns
        -------
        Verdict
            ``findings`` is empty (a shared empty tuple) unless something is flagged.
        """
        if snapshot.__class__ is not Snapshot and not isinstance(snapshot, Snapshot):
            raise TypeError(
                f"check: expected a Snapshot, got {type(snapshot).__name__}; build one with "
                "Snapshot(prefill_tokens, batch_size), or pass arrays to check_many(P, B)"
            )
        hot = self._hot
        if hot is None or not snapshot.integral:
            return self._check_general(snapshot)
        p0, b0, n, d, lam, band, ext_lo, ext_hi = hot
        P = snapshot.prefill_list
        B = snapshot.batch_list
        PB = snapshot.pairs
        S = kernel.product_scores_exact(P, B, p0, b0)
        smin = min(S)
        i = S.index(smin)
        j = kernel.argmin_linear_pairs(PB, (n, d), lam)
        if len(S) > 1:
            S[i] = _INF
            s2 = min(S)
            tie = s2 == smin
            r = j if j != i else S.index(s2)
        else:
            tie = False
            r = -1
        zp = idle = False
        if smin == 0:
            zp = any(p + p0 == 0 and b > 0 for p, b in PB)
            if b0 == 0:
                idle = sum(1 for b in B if b == 0) >= 2
        exact_tie = tie and not (zp or idle)
        fragile = False
        if i == j:
            regret = 0.0
            if band:
                s = self._settings
                fragile = kernel.argmin_linear_pairs(PB, s.lam_lo_nd, s.lam_lo) != i or (
                    kernel.argmin_linear_pairs(PB, s.lam_hi_nd, s.lam_hi) != i
                )
        else:
            regret = kernel.regret_pair(P[i], B[i], P[j], B[j], lam)
        if r >= 0:
            le = kernel.lam_eff_pair(P[i], B[i], P[r], B[r], p0, b0)
            ls = kernel.lam_star_pair(P[i], B[i], P[r], B[r])
            extreme = le < ext_lo or (le > ext_hi and le != _INF)
        else:
            le = ls = _NAN
            extreme = False
        flags = (i != j, fragile, zp, idle, exact_tie, extreme)
        return assemble(self._settings, snapshot, i, j, r, flags, le, ls, regret)

    def _check_general(self, snapshot: Snapshot) -> Verdict:
        """Same verdict for float inputs or offsets, through the vectorised path."""
        v = self.check_many(
            snapshot.prefill_tokens[None, :], snapshot.batch_size[None, :], validate=False
        )
        flags = (
            bool(v.disagrees[0]),
            bool(v.fragile[0]),
            bool(v.zero_prefill[0]),
            bool(v.idle_tie[0]),
            bool(v.exact_tie[0]),
            bool(v.extreme_operating_point[0]),
        )
        return assemble(
            self._settings,
            snapshot,
            int(v.product_choice[0]),
            int(v.linear_choice[0]),
            int(v.rival[0]),
            flags,
            float(v.lam_eff[0]),
            float(v.lam_star[0]),
            float(v.regret_tokens[0]),
        )

    # -------------------------------------------------------------------- mitigation

    def mitigated_choice(
        self,
        snapshot: Snapshot,
        mitigation: Mitigation | None = None,
        *,
        verdict: Verdict | None = None,
        rng: np.random.Generator | None = None,
    ) -> int:
        """Instance the product would pick under ``mitigation``.

        Parameters
        ----------
        snapshot : Snapshot
            The decision.
        mitigation : Mitigation, optional
            Defaults to the verdict's mitigation (most severe finding); when nothing is
            flagged the product's own choice is returned.
        verdict : Verdict, optional
            ``self.check(snapshot)`` if already computed.
        rng : numpy.random.Generator, optional
            The draw of ``random_near_ties`` (required for it).

        Returns
        -------
        int
            Index of the chosen instance.
        """
        if mitigation is None:
            verdict = verdict if verdict is not None else self.check(snapshot)
            mitigation = verdict.mitigation
            if mitigation is None:
                return verdict.product_choice
        return _mit.mitigated_choice(self._settings, snapshot, mitigation, rng=rng)

    def mitigated_choices(
        self,
        prefill_tokens: Any,
        batch_size: Any,
        mitigation: Mitigation,
        *,
        uncached_tokens: Any = None,
        only: Any = None,
        validate: bool = True,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """Vectorised :meth:`mitigated_choice` with one mitigation over ``D`` decisions
        (see :func:`lmetric_theory.detector.mitigation.mitigated_choices`).

        Returns
        -------
        np.ndarray of int64, shape (D,)
            The instance each decision would go to.
        """
        return _mit.mitigated_choices(
            self._settings, prefill_tokens, batch_size, mitigation,
            uncached_tokens=uncached_tokens, only=only, validate=validate, rng=rng,
        )

    # ---------------------------------------------------------------- many decisions

    def check_many(
        self,
        prefill_tokens: Any,
        batch_size: Any,
        *,
        validate: bool = True,
    ) -> Verdicts:
        """Vectorised verdicts on ``D`` decisions over ``N`` instances each.

        Parameters
        ----------
        prefill_tokens : array_like, shape (D, N) or (N,)
            ``P`` per decision and instance, tokens.
        batch_size : array_like, shape (D, N) or (N,)
            ``B`` per decision and instance, requests.
        validate : bool
            Check for NaN, inf, negative values, shape mismatch, emptiness
            (``ValueError`` naming the field); ``False`` trusts the input.

        Returns
        -------
        Verdicts
            Columnar results; ``verdicts[k]`` gives decision ``k``'s :class:`Verdict`.
        """
        if isinstance(prefill_tokens, Snapshot) or isinstance(batch_size, Snapshot):
            raise TypeError(
                "check_many: expected arrays prefill_tokens and batch_size of shape (D, N) or "
                "(N,), got a Snapshot; use check(snapshot) for one Snapshot"
            )
        P = as_exact_array(prefill_tokens, "prefill_tokens", validate=validate)
        B = as_exact_array(batch_size, "batch_size", validate=validate)
        if P.ndim == 1:
            P = P[None, :]
        if B.ndim == 1:
            B = B[None, :]
        if validate:
            for name, arr in (("prefill_tokens", P), ("batch_size", B)):
                if arr.ndim != 2:
                    raise ValueError(f"{name}: expected shape (D, N), got {arr.shape}")
            if P.shape != B.shape:
                raise ValueError(
                    f"batch_size: shape {B.shape} does not match prefill_tokens shape {P.shape}"
                )
        P = np.ascontiguousarray(P)
        B = np.ascontiguousarray(B)
        D = P.shape[0]
        cols = {
            name: np.empty(D, dtype)
            for name, dtype in (
                ("product_choice", np.int64),
                ("linear_choice", np.int64),
                ("rival", np.int64),
                ("disagrees", bool),
                ("fragile", bool),
                ("zero_prefill", bool),
                ("idle_tie", bool),
                ("exact_tie", bool),
                ("extreme_operating_point", bool),
                ("lam_eff", np.float64),
                ("lam_star", np.float64),
                ("regret_tokens", np.float64),
            )
        }
        for start in range(0, D, _CHUNK):
            sl = slice(start, min(D, start + _CHUNK))
            self._block(P[sl], B[sl], {k: v[sl] for k, v in cols.items()})
        return Verdicts(**cols, prefill_tokens=P, batch_size=B, settings=self._settings)

    def _block(self, P: np.ndarray, B: np.ndarray, out: dict[str, np.ndarray]) -> None:
        """Fill ``out`` (views of shape (d,)) for one block of decisions."""
        d, N = P.shape
        rows = np.arange(d)
        base = rows * N  # flat gathers on contiguous blocks beat 2-d fancy indexing
        Pf, Bf = P.ravel(), B.ravel()
        s = self._settings
        p0, b0 = s.prefill_offset, s.batch_offset
        exact = P.dtype.kind == "i" and B.dtype.kind == "i" and s.integer_offsets
        if exact:
            S = kernel.product_scores(P, B, p0, b0)
            i = S.argmin(axis=1)
            Sf = S.ravel()
            fi = base + i
            smin = Sf.take(fi)
            Sf[fi] = _I64MAX
            r2 = S.argmin(axis=1)
            tie = Sf.take(base + r2) == smin
            zero = smin == 0
        else:
            i = np.asarray(kernel.argmin_product(P, B, p0, b0, axis=1)).reshape(d)
            Pm, Bm = P.astype(np.float64), B.astype(np.float64)
            Pm[rows, i] = 2.0 * Pm.max(axis=1) + 1.0 + p0
            Bm[rows, i] = 2.0 * Bm.max(axis=1) + 1.0 + b0
            r2 = np.asarray(kernel.argmin_product(Pm, Bm, p0, b0, axis=1)).reshape(d)
            Pi, Bi, Pr, Br = P[rows, i], B[rows, i], P[rows, r2], B[rows, r2]
            tie = kernel.product_sign(Pi, Bi, Pr, Br, p0, b0) == 0
            zero = kernel.product_scores(Pi, Bi, p0, b0) == 0
        if N == 1:
            tie = np.zeros(d, bool)
            r2 = np.full(d, -1)
        j = kernel.argmin_linear_rows(P, B, s.lam_nd, s.lam)
        dis = i != j
        r = np.where(dis, j, r2)
        zp = np.zeros(d, bool)
        idle = np.zeros(d, bool)
        if zero.any():
            z = np.flatnonzero(zero)
            Pz, Bz = P[z], B[z]
            zp[z] = ((Pz + p0 == 0) & (Bz > 0)).any(axis=1)
            if b0 == 0:
                idle[z] = np.count_nonzero(Bz == 0, axis=1) >= 2
        fragile = np.zeros(d, bool)
        if s.band:
            # on every row (cheaper than gathering the agreeing ones), kept where i == j
            lo = kernel.argmin_linear_rows(P, B, s.lam_lo_nd, s.lam_lo)
            hi = kernel.argmin_linear_rows(P, B, s.lam_hi_nd, s.lam_hi)
            fragile = ~dis & ((lo != i) | (hi != i))
        fi = base + i
        Pi, Bi = Pf.take(fi), Bf.take(fi)
        fr = base + np.maximum(r, 0)
        Pr, Br = Pf.take(fr), Bf.take(fr)
        fj = base + j
        le = kernel.lam_eff(Pi, Bi, Pr, Br, p0, b0)
        ls = kernel.lam_star(Pi, Bi, Pr, Br)
        if N == 1:
            le = np.full(d, np.nan)
            ls = np.full(d, np.nan)
        regret = kernel.regret_tokens(Pi, Bi, Pf.take(fj), Bf.take(fj), s.lam)
        with np.errstate(invalid="ignore"):
            extreme = np.isfinite(le) & ((le < s.extreme_lo) | (le > s.extreme_hi))
        out["product_choice"][:] = i
        out["linear_choice"][:] = j
        out["rival"][:] = r
        out["disagrees"][:] = dis
        out["fragile"][:] = fragile
        out["zero_prefill"][:] = zp
        out["idle_tie"][:] = idle
        out["exact_tie"][:] = tie & ~zp & ~idle
        out["extreme_operating_point"][:] = extreme
        out["lam_eff"][:] = le
        out["lam_star"][:] = ls
        out["regret_tokens"][:] = np.where(dis, regret, 0.0)
