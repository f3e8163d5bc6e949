"""The detector: :class:`Detector`, :class:`Verdict` (one decision), :class:`Verdicts` (many).

Definitions (``i`` the product's choice, ``j`` the linear reference's choice, both the
lowest index on ties, exactly as :func:`lmetric_theory.core.kernel.argmin_product` and
:func:`~lmetric_theory.core.kernel.argmin_linear` pick them):

- ``disagrees``: ``i != j``. Whenever neither score ties at its minimum this equals
  ``predicates.disagrees`` on the pair ``(i, j)`` (the theory: the argmins differ exactly
  when that pair disagrees); with a tie at the minimum the decision may differ by
  tie-breaking alone, which is also reported as ``exact_tie``.
- the *rival* ``r``: ``j`` when ``i != j``, else the product's runner-up (lowest index
  among the second-best product scores); ``-1`` when ``N == 1``. ``lambda_eff`` and
  ``lambda_star`` are those of the pair ``(i, r)``: the rate the product implicitly used
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
- ``extreme_operating_point``: finite ``lambda_eff`` outside
  ``[lam_lo / extreme_factor, lam_hi * extreme_factor]``.

Every decision (choices, flags) is exact for integer inputs; ``lambda_eff``,
``lambda_star`` and ``regret_tokens`` are float64 for reporting.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from lmetric_theory.core import kernel as pr
from lmetric_theory.core.validate import exact_if_integral, finite_scalar
from lmetric_theory.detector.findings import (
    FINDING_KINDS,
    Finding,
    Mitigation,
    MitigationKind,
    Severity,
)
from lmetric_theory.detector.reference import LinearReference
from lmetric_theory.detector.snapshot import Snapshot, as_exact_array

__all__ = ["Detector", "Verdict", "Verdicts"]

_NAN = float("nan")
_INF = float("inf")
_I64MAX = np.iinfo(np.int64).max
_EPS = float(np.finfo(np.float64).eps)
_CHUNK = 1 << 16  # rows per vectorised block in check_many
_SMALL_D = 1 << 20  # rates n/d with d above this take the float-filtered path

_SEVERITY = {
    "disagreement": Severity.WARNING,
    "fragile": Severity.INFO,
    "zero_prefill": Severity.CRITICAL,
    "idle_tie": Severity.WARNING,
    "exact_tie": Severity.INFO,
    "extreme_operating_point": Severity.WARNING,
}
_EMPTY: tuple[Finding, ...] = ()


def _offset(name: str, value: object) -> int | float:
    return exact_if_integral(finite_scalar(name, value, nonneg=True, why="offsets must be >= 0"))


# =============================================================================== Verdict


@dataclass(frozen=True, slots=True)
class Verdict:
    """The detector's verdict on one routing decision.

    Attributes
    ----------
    product_choice : int
        Instance the product score picks (index into the snapshot).
    linear_choice : int
        Instance ``linear(lam)`` picks.
    disagrees : bool
        ``product_choice != linear_choice``.
    lambda_eff : float
        Rate the product implicitly uses for the pair (choice, rival), tokens per slot.
    lambda_star : float
        Break-even rate of that pair, tokens per slot (``nan`` for equal batches).
    regret_tokens : float
        Cost of the product's choice under ``linear(lam)``, prefill-token equivalents.
    findings : tuple of Finding
        Empty when nothing is flagged.
    fragile : bool
        Agrees with ``lam`` but not with every rate of the band.
    rival : int
        The other instance of the pair (see module docs); ``-1`` when ``N == 1``.
    """

    product_choice: int
    linear_choice: int
    disagrees: bool
    lambda_eff: float
    lambda_star: float
    regret_tokens: float
    findings: tuple[Finding, ...]
    fragile: bool
    rival: int

    @property
    def flagged(self) -> bool:
        """True when there is at least one finding."""
        return bool(self.findings)

    @property
    def kinds(self) -> tuple[str, ...]:
        """Kinds of the findings, in reporting order."""
        return tuple(f.kind for f in self.findings)

    @property
    def mitigation(self) -> Mitigation | None:
        """Mitigation of the most severe finding (first in reporting order), or None."""
        if not self.findings:
            return None
        return max(self.findings, key=lambda f: f.severity).mitigation


def _fast_constructor() -> Any:
    """``Verdict(...)`` without the frozen-dataclass ``__init__`` overhead (same fields,
    same positional order, no validation): used on :meth:`Detector.check`'s hot path."""
    setters = [getattr(Verdict, name).__set__ for name in Verdict.__slots__]
    a, b, c, d, e, f, g, h, k = setters
    new = object.__new__

    def build(i, j, dis, le, ls, regret, findings, fragile, r):  # type: ignore[no-untyped-def]
        o = new(Verdict)
        a(o, i)
        b(o, j)
        c(o, dis)
        d(o, le)
        e(o, ls)
        f(o, regret)
        g(o, findings)
        h(o, fragile)
        k(o, r)
        return o

    return build


_new_verdict = _fast_constructor()


# ================================================================================ Verdicts


@dataclass(frozen=True, slots=True, eq=False)
class Verdicts:
    """Columnar verdicts on ``D`` decisions (from :meth:`Detector.check_many`).

    Every attribute is a numpy array of shape (D,) except ``prefill_tokens`` and
    ``batch_size`` (the inputs, shape (D, N)). ``verdicts[k]`` builds the full
    :class:`Verdict` (with findings and messages) of decision ``k`` on demand.
    """

    product_choice: np.ndarray
    linear_choice: np.ndarray
    rival: np.ndarray
    disagrees: np.ndarray
    fragile: np.ndarray
    zero_prefill: np.ndarray
    idle_tie: np.ndarray
    exact_tie: np.ndarray
    extreme_operating_point: np.ndarray
    lambda_eff: np.ndarray
    lambda_star: np.ndarray
    regret_tokens: np.ndarray
    prefill_tokens: np.ndarray
    batch_size: np.ndarray
    detector: Detector

    def __len__(self) -> int:
        return int(self.product_choice.shape[0])

    def mask(self, kind: str) -> np.ndarray:
        """Boolean mask (D,) of decisions with a finding of ``kind``."""
        if kind not in FINDING_KINDS:
            raise ValueError(f"kind: unknown {kind!r}; valid: {', '.join(FINDING_KINDS)}")
        return getattr(self, "disagrees" if kind == "disagreement" else kind)

    @property
    def flagged(self) -> np.ndarray:
        """Boolean mask (D,) of decisions with at least one finding."""
        return (
            self.disagrees
            | self.fragile
            | self.zero_prefill
            | self.idle_tie
            | self.exact_tie
            | self.extreme_operating_point
        )

    def counts(self) -> dict[str, int]:
        """Number of decisions with each finding kind."""
        return {k: int(np.count_nonzero(self.mask(k))) for k in FINDING_KINDS}

    def snapshot(self, k: int) -> Snapshot:
        """Decision ``k`` as a :class:`Snapshot` (trusted, not re-validated)."""
        return Snapshot.from_arrays(
            self.prefill_tokens[k], self.batch_size[k], validate=False
        )

    def __getitem__(self, k: int) -> Verdict:
        k = int(k)
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError(f"decision {k} out of range for {len(self)} verdicts")
        det = self.detector
        i = int(self.product_choice[k])
        j = int(self.linear_choice[k])
        r = int(self.rival[k])
        regret = float(self.regret_tokens[k])
        le = float(self.lambda_eff[k])
        ls = float(self.lambda_star[k])
        flags = (
            bool(self.disagrees[k]),
            bool(self.fragile[k]),
            bool(self.zero_prefill[k]),
            bool(self.idle_tie[k]),
            bool(self.exact_tie[k]),
            bool(self.extreme_operating_point[k]),
        )
        findings = (
            det._findings(self.snapshot(k), i, j, r, flags, le, regret) if any(flags) else _EMPTY
        )
        return Verdict(i, j, i != j, le, ls, regret, findings, flags[1], r)

    def __iter__(self):  # type: ignore[no-untyped-def]
        for k in range(len(self)):
            yield self[k]


# ================================================================================ Detector


class Detector:
    """Checks routing decisions of the product score against a linear reference.

    Parameters
    ----------
    reference : LinearReference or float
        The linear score to compare with (a float means ``LinearReference.fixed``).
    prefill_offset : int or float
        ``p0`` of the product score, tokens (>= 0).
    batch_offset : int or float
        ``b0`` of the product score, batch slots (>= 0).
    extreme_factor : float
        ``lambda_eff`` more than this factor outside the band is an extreme operating
        point (> 1).
    tie_break : {"load", "cache"}
        Tie-break the ``exact_tie`` finding recommends.
    block_tokens : int
        Tokens of one KV block, the prefill offset the ``zero_prefill`` finding recommends.
    load_cap : float, optional
        Batch-size cap (requests) recommended for extreme operating points where the
        product under-weights load (``lambda_eff`` below the band); without it those fall
        back to the reference.
    mitigation : Mitigation or mapping of kind to Mitigation, optional
        Overrides the theory's default mitigation for every kind (a single Mitigation) or
        for the kinds given (a mapping).
    """

    __slots__ = (
        "reference",
        "prefill_offset",
        "batch_offset",
        "extreme_factor",
        "tie_break",
        "block_tokens",
        "load_cap",
        "mitigations",
        "_lam",
        "_lam_nd",
        "_lo_nd",
        "_hi_nd",
        "_band",
        "_ext_lo",
        "_ext_hi",
        "_int_offsets",
        "_hot",
    )

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
        self.reference = reference
        self.prefill_offset = _offset("prefill_offset", prefill_offset)
        self.batch_offset = _offset("batch_offset", batch_offset)
        f = float(extreme_factor)
        if not (math.isfinite(f) and f > 1):
            raise ValueError(f"extreme_factor: must be a finite number > 1, got {extreme_factor!r}")
        self.extreme_factor = f
        if tie_break not in ("load", "cache"):
            raise ValueError(f"tie_break: unknown {tie_break!r}; valid: 'load', 'cache'")
        self.tie_break = tie_break
        if not (isinstance(block_tokens, int | np.integer) and block_tokens > 0):
            raise ValueError(f"block_tokens: must be a positive integer, got {block_tokens!r}")
        self.block_tokens = int(block_tokens)
        if load_cap is not None:
            load_cap = float(load_cap)
            if not (math.isfinite(load_cap) and load_cap > 0):
                raise ValueError(f"load_cap: must be a positive finite number, got {load_cap!r}")
        self.load_cap = load_cap

        defaults: dict[str, Mitigation] = {
            "disagreement": Mitigation.fallback(),
            "fragile": Mitigation.fallback(),
            "zero_prefill": Mitigation.prefill_block(self.block_tokens),
            "idle_tie": Mitigation.batch_offset(1),
            "exact_tie": Mitigation.tie_break(tie_break),
            "extreme_operating_point": Mitigation.fallback(),
            "extreme_low": (
                Mitigation.load_cap(load_cap) if load_cap is not None else Mitigation.fallback()
            ),
        }
        if isinstance(mitigation, Mitigation):
            defaults = dict.fromkeys(defaults, mitigation)
        elif mitigation is not None:
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
        self.mitigations = defaults

        ref = reference
        self._lam = float(ref.lam)
        self._lam_nd = Fraction(ref.lam).as_integer_ratio()
        self._lo_nd = Fraction(ref.lam_lo).as_integer_ratio()
        self._hi_nd = Fraction(ref.lam_hi).as_integer_ratio()
        self._band = ref.lam_lo < ref.lam_hi
        self._ext_lo = ref.lam_lo / f
        self._ext_hi = ref.lam_hi * f
        self._int_offsets = isinstance(self.prefill_offset, int) and isinstance(
            self.batch_offset, int
        )
        # constants of check()'s pure-Python path (integer inputs and offsets only)
        self._hot = (
            (
                self.prefill_offset,
                self.batch_offset,
                *self._lam_nd,
                self._lam,
                self._band,
                self._ext_lo,
                self._ext_hi,
            )
            if self._int_offsets
            else None
        )

    def __repr__(self) -> str:
        return (
            f"Detector({self.reference!r}, prefill_offset={self.prefill_offset!r}, "
            f"batch_offset={self.batch_offset!r}, extreme_factor={self.extreme_factor!r}, "
            f"tie_break={self.tie_break!r})"
        )

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
        if hot is None or not snapshot._exact:
            return self._check_general(snapshot)
        p0, b0, n, d, lam, band, ext_lo, ext_hi = hot
        P = snapshot._p
        B = snapshot._b
        PB = snapshot._pb
        if p0 == 0:
            S = [p * (b + b0) for p, b in PB]
        else:
            S = [(p + p0) * (b + b0) for p, b in PB]
        smin = min(S)
        i = S.index(smin)
        if d == 1:
            C = [p + n * b for p, b in PB]
            j = C.index(min(C))
        elif d <= _SMALL_D:
            C = [d * p + n * b for p, b in PB]
            j = C.index(min(C))
        else:
            j = _py_argmin_linear_float(PB, n, d, lam)
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
                ref = self.reference
                fragile = _py_argmin_linear(PB, self._lo_nd, ref.lam_lo) != i or (
                    _py_argmin_linear(PB, self._hi_nd, ref.lam_hi) != i
                )
        else:
            regret = (P[i] - P[j]) + lam * (B[i] - B[j])
        if r >= 0:
            pi, bi, pr_, br = P[i], B[i], P[r], B[r]
            num = pi + pr_ + 2 * p0
            den = bi + br + 2 * b0
            le = num / den if den else (_INF if num else _NAN)
            ls = (pr_ - pi) / (bi - br) if bi != br else _NAN
            extreme = le < ext_lo or (le > ext_hi and le != _INF)
        else:
            le = ls = _NAN
            extreme = False
        if i != j or fragile or zp or idle or exact_tie or extreme:
            flags = (i != j, fragile, zp, idle, exact_tie, extreme)
            findings = self._findings(snapshot, i, j, r, flags, le, regret)
        else:
            findings = _EMPTY
        return _new_verdict(i, j, i != j, le, ls, regret, findings, fragile, r)

    def _check_general(self, snapshot: Snapshot) -> Verdict:
        """Same verdict for float inputs or offsets, through the vectorised path."""
        v = self.check_many(
            snapshot.prefill_tokens[None, :], snapshot.batch_size[None, :], validate=False
        )
        i, j, r = int(v.product_choice[0]), int(v.linear_choice[0]), int(v.rival[0])
        le, regret = float(v.lambda_eff[0]), float(v.regret_tokens[0])
        flags = (
            i != j,
            bool(v.fragile[0]),
            bool(v.zero_prefill[0]),
            bool(v.idle_tie[0]),
            bool(v.exact_tie[0]),
            bool(v.extreme_operating_point[0]),
        )
        findings = self._findings(snapshot, i, j, r, flags, le, regret) if any(flags) else _EMPTY
        return Verdict(i, j, i != j, le, float(v.lambda_star[0]), regret, findings, flags[1], r)

    # ---------------------------------------------------------------------- findings

    def _findings(
        self,
        snap: Snapshot,
        i: int,
        j: int,
        r: int,
        flags: tuple[bool, ...],
        lam_eff: float,
        regret: float,
    ) -> tuple[Finding, ...]:
        """Build the findings of one flagged decision (only called when flagged)."""
        P, B = snap._p, snap._b  # Python numbers: cheaper to index and format
        p0, b0 = self.prefill_offset, self.batch_offset
        lab = snap.label
        ref = self.reference
        m = self.mitigations
        out: list[Finding] = []
        disagree, fragile, zp, idle, tie, extreme = flags
        if disagree:
            out.append(
                Finding(
                    "disagreement",
                    _SEVERITY["disagreement"],
                    f"product picks {lab(i)} (P={P[i]}, B={B[i]}) but linear(lam={ref.lam:g}) "
                    f"picks {lab(j)} (P={P[j]}, B={B[j]}); regret {regret:g} prefill-token "
                    f"equivalents; the product used lam_eff={lam_eff:g}",
                    m["disagreement"],
                    (i, j),
                )
            )
        if fragile:
            out.append(
                Finding(
                    "fragile",
                    _SEVERITY["fragile"],
                    f"product and linear(lam={ref.lam:g}) both pick {lab(i)}, but some rate in "
                    f"the band [{ref.lam_lo:g}, {ref.lam_hi:g}] picks another instance",
                    m["fragile"],
                    (i,),
                )
            )
        if zp:
            hot = tuple(k for k, (p, b) in enumerate(snap._pb) if p + p0 == 0 and b > 0)
            out.append(
                Finding(
                    "zero_prefill",
                    _SEVERITY["zero_prefill"],
                    f"P + p0 = 0 on loaded instance(s) {', '.join(lab(k) for k in hot)}: their "
                    "product score is 0 whatever their batch size (hot-spot)",
                    m["zero_prefill"],
                    hot,
                )
            )
        if idle:
            idl = tuple(k for k, b in enumerate(B) if b + b0 == 0)
            out.append(
                Finding(
                    "idle_tie",
                    _SEVERITY["idle_tie"],
                    f"B + b0 = 0 on {len(idl)} instances ({', '.join(lab(k) for k in idl)}): "
                    "all score 0 whatever their prefill tokens; the index breaks the tie",
                    m["idle_tie"],
                    idl,
                )
            )
        if tie:
            if snap._exact and self._int_offsets:
                si = (P[i] + p0) * (B[i] + b0)
                tied = tuple(k for k, (p, b) in enumerate(snap._pb) if (p + p0) * (b + b0) == si)
            else:
                tied = _tied(snap.prefill_tokens, snap.batch_size, p0, b0, i)
            out.append(
                Finding(
                    "exact_tie",
                    _SEVERITY["exact_tie"],
                    f"{len(tied)} instances ({', '.join(lab(k) for k in tied)}) tie on the "
                    f"minimum product score; the lowest index ({lab(i)}) wins",
                    m["exact_tie"],
                    tied,
                )
            )
        if extreme:
            low = lam_eff < ref.lam_lo
            out.append(
                Finding(
                    "extreme_operating_point",
                    _SEVERITY["extreme_operating_point"],
                    f"lam_eff={lam_eff:g} of ({lab(i)}, {lab(r)}) is more than "
                    f"{self.extreme_factor:g}x {'below' if low else 'above'} the band "
                    f"[{ref.lam_lo:g}, {ref.lam_hi:g}]: the product "
                    f"{'under' if low else 'over'}-weights load here",
                    m["extreme_low"] if low else m["extreme_operating_point"],
                    (i, r),
                )
            )
        return tuple(out)

    # -------------------------------------------------------------------- mitigation

    def mitigated_choice(
        self,
        snapshot: Snapshot,
        mitigation: Mitigation | None = None,
        *,
        verdict: Verdict | None = None,
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
        P, B = snapshot.prefill_tokens, snapshot.batch_size
        p0, b0 = self.prefill_offset, self.batch_offset
        k, v = mitigation.kind, mitigation.value
        if k is MitigationKind.PREFILL_BLOCK:
            return _argmin_product1(P, B, _num(p0 + v), b0)  # type: ignore[operator]
        if k is MitigationKind.BATCH_OFFSET:
            return _argmin_product1(P, B, p0, _num(b0 + v))  # type: ignore[operator]
        if k is MitigationKind.FALLBACK_REFERENCE:
            return _argmin_linear1(P, B, self.reference.lam)
        i = _argmin_product1(P, B, p0, b0)
        if k in (MitigationKind.TIE_BREAK_LOAD, MitigationKind.TIE_BREAK_CACHE):
            tied = _tied(P, B, p0, b0, i)
            if k is MitigationKind.TIE_BREAK_LOAD:
                key = B
            else:
                key = snapshot.uncached_tokens if snapshot.uncached_tokens is not None else P
            return min(tied, key=lambda t: (key[t], B[t], t))
        if k is MitigationKind.LOAD_CAP:
            ok = np.flatnonzero(B < v)
            if ok.size == 0 or ok.size == B.size:
                return i
            return int(ok[_argmin_product1(P[ok], B[ok], p0, b0)])
        return i

    def mitigated_choices(
        self,
        prefill_tokens: Any,
        batch_size: Any,
        mitigation: Mitigation,
        *,
        uncached_tokens: Any = None,
        only: Any = None,
        validate: bool = True,
    ) -> np.ndarray:
        """Vectorised :meth:`mitigated_choice` with one mitigation over ``D`` decisions.

        Parameters
        ----------
        prefill_tokens, batch_size : array_like, shape (D, N)
            As in :meth:`check_many` (tokens, requests).
        mitigation : Mitigation
            Applied to every selected decision.
        uncached_tokens : array_like, shape (D, N), optional
            For ``TIE_BREAK_CACHE`` (defaults to ``prefill_tokens``).
        only : array_like of bool, shape (D,), optional
            Decisions to mitigate (e.g. ``verdicts.flagged``); the others keep the
            product's choice.

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
        p0, b0 = self.prefill_offset, self.batch_offset
        k, v = mitigation.kind, mitigation.value
        base = np.asarray(pr.argmin_product(P, B, p0, b0, axis=1)).reshape(-1)
        if k is MitigationKind.PREFILL_BLOCK:
            out = np.asarray(pr.argmin_product(P, B, _num(p0 + v), b0, axis=1)).reshape(-1)
        elif k is MitigationKind.BATCH_OFFSET:
            out = np.asarray(pr.argmin_product(P, B, p0, _num(b0 + v), axis=1)).reshape(-1)
        elif k is MitigationKind.FALLBACK_REFERENCE:
            out = _np_argmin_linear(P, B, self._lam_nd, self._lam)
        elif k in (MitigationKind.TIE_BREAK_LOAD, MitigationKind.TIE_BREAK_CACHE):
            rows = np.arange(P.shape[0])
            Pi, Bi = P[rows, base][:, None], B[rows, base][:, None]
            tied = pr.product_sign(Pi, Bi, P, B, p0, b0) == 0
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
            S = pr.product_scores(Px, Bx, p0, b0)
            top = S.max(axis=1, keepdims=True) + 1
            out = np.where(ok, S, top).argmin(axis=1) if S.dtype.kind == "i" else None
            if out is None:
                out = np.array(
                    [
                        self.mitigated_choice(
                            Snapshot.from_arrays(P[r], B[r], validate=False), mitigation
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
                ("lambda_eff", np.float64),
                ("lambda_star", np.float64),
                ("regret_tokens", np.float64),
            )
        }
        for start in range(0, D, _CHUNK):
            sl = slice(start, min(D, start + _CHUNK))
            self._block(P[sl], B[sl], {k: v[sl] for k, v in cols.items()})
        return Verdicts(**cols, prefill_tokens=P, batch_size=B, detector=self)

    def _block(self, P: np.ndarray, B: np.ndarray, out: dict[str, np.ndarray]) -> None:
        """Fill ``out`` (views of shape (d,)) for one block of decisions."""
        d, N = P.shape
        rows = np.arange(d)
        base = rows * N  # flat gathers on contiguous blocks beat 2-d fancy indexing
        Pf, Bf = P.ravel(), B.ravel()
        p0, b0 = self.prefill_offset, self.batch_offset
        exact = P.dtype.kind == "i" and B.dtype.kind == "i" and self._int_offsets
        if exact:
            S = P * (B + b0) if p0 == 0 else (P + p0) * (B + b0)
            i = S.argmin(axis=1)
            Sf = S.ravel()
            fi = base + i
            smin = Sf.take(fi)
            Sf[fi] = _I64MAX
            r2 = S.argmin(axis=1)
            tie = Sf.take(base + r2) == smin
            zero = smin == 0
        else:
            i = np.asarray(pr.argmin_product(P, B, p0, b0, axis=1)).reshape(d)
            Pm, Bm = P.astype(np.float64), B.astype(np.float64)
            Pm[rows, i] = 2.0 * Pm.max(axis=1) + 1.0 + p0
            Bm[rows, i] = 2.0 * Bm.max(axis=1) + 1.0 + b0
            r2 = np.asarray(pr.argmin_product(Pm, Bm, p0, b0, axis=1)).reshape(d)
            Pi, Bi, Pr, Br = P[rows, i], B[rows, i], P[rows, r2], B[rows, r2]
            tie = pr.product_sign(Pi, Bi, Pr, Br, p0, b0) == 0
            zero = pr.product_scores(Pi, Bi, p0, b0) == 0
        if N == 1:
            tie = np.zeros(d, bool)
            r2 = np.full(d, -1)
        j = _np_argmin_linear(P, B, self._lam_nd, self._lam)
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
        if self._band:
            # on every row (cheaper than gathering the agreeing ones), kept where i == j
            lo = _np_argmin_linear(P, B, self._lo_nd, self.reference.lam_lo)
            hi = _np_argmin_linear(P, B, self._hi_nd, self.reference.lam_hi)
            fragile = ~dis & ((lo != i) | (hi != i))
        fi = base + i
        Pi, Bi = Pf.take(fi), Bf.take(fi)
        fr = base + np.maximum(r, 0)
        Pr, Br = Pf.take(fr), Bf.take(fr)
        fj = base + j
        le = pr.lambda_eff(Pi, Bi, Pr, Br, p0, b0)
        ls = pr.lambda_star(Pi, Bi, Pr, Br)
        if N == 1:
            le = np.full(d, np.nan)
            ls = np.full(d, np.nan)
        regret = pr.regret_tokens(Pi, Bi, Pf.take(fj), Bf.take(fj), self._lam)
        with np.errstate(invalid="ignore"):
            extreme = np.isfinite(le) & ((le < self._ext_lo) | (le > self._ext_hi))
        out["product_choice"][:] = i
        out["linear_choice"][:] = j
        out["rival"][:] = r
        out["disagrees"][:] = dis
        out["fragile"][:] = fragile
        out["zero_prefill"][:] = zp
        out["idle_tie"][:] = idle
        out["exact_tie"][:] = tie & ~zp & ~idle
        out["extreme_operating_point"][:] = extreme
        out["lambda_eff"][:] = le
        out["lambda_star"][:] = ls
        out["regret_tokens"][:] = np.where(dis, regret, 0.0)


# ================================================================================ helpers


def _argmin_product1(P: np.ndarray, B: np.ndarray, p0: object, b0: object) -> int:
    """Exact product argmin of one decision (through the 2-d predicate path)."""
    return int(np.asarray(pr.argmin_product(P[None, :], B[None, :], p0, b0, axis=1))[0])


def _argmin_linear1(P: np.ndarray, B: np.ndarray, lam: float) -> int:
    """Exact linear argmin of one decision (through the 2-d predicate path)."""
    return int(np.asarray(pr.argmin_linear(P[None, :], B[None, :], lam, axis=1))[0])


def _num(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


def _tied(P: np.ndarray, B: np.ndarray, p0: object, b0: object, i: int) -> tuple[int, ...]:
    """Instances whose product score equals instance ``i``'s exactly."""
    sign = pr.product_sign(P[i], B[i], P, B, p0, b0)
    return tuple(int(k) for k in np.flatnonzero(sign == 0))


def _py_argmin_linear(PB: list, nd: tuple[int, int], lam: float) -> int:
    """Exact lowest-index argmin of ``P + lam * B`` over (P, B) pairs of Python ints,
    ``lam = n/d``."""
    n, d = nd
    if d > _SMALL_D:
        return _py_argmin_linear_float(PB, n, d, lam)
    C = [d * p + n * b for p, b in PB]
    return C.index(min(C))


def _py_argmin_linear_float(PB: list, n: int, d: int, lam: float) -> int:
    """Same, for rates with a large denominator: float scores, and exact integer
    scores ``d*P + n*B`` only when the runner-up is within the float error of the
    minimum (each float score errs by at most ~1 ulp of its value)."""
    C = [p + lam * b for p, b in PB]
    m = min(C)
    j = C.index(m)
    thr = m + 8 * _EPS * m
    C[j] = _INF
    if len(C) > 1 and min(C) <= thr:
        C[j] = m
        near = [k for k, c in enumerate(C) if c <= thr]
        j = min(near, key=lambda k: (d * PB[k][0] + n * PB[k][1], k))
    return j


def _np_argmin_linear(
    P: np.ndarray, B: np.ndarray, nd: tuple[int, int], lam: float
) -> np.ndarray:
    """Exact lowest-index argmin along axis 1 of ``P + lam * B`` (``lam = n/d``)."""
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
        j[bad] = np.asarray(pr.argmin_linear(P[bad], B[bad], Fraction(n, d), axis=1)).reshape(
            bad.size
        )
    return j
