"""The detector's verdicts: :class:`Verdict` (one decision) and :class:`Verdicts` (many, columnar).

Field meanings are defined in :mod:`lmetric_theory.detector.detector`. ``lam_eff`` and
``lam_star`` were called ``lambda_eff`` and ``lambda_star``; those names remain as deprecated
read-only aliases.

:func:`assemble` is the one place a decision's flags become its findings and its
:class:`Verdict` (for :meth:`Detector.check`, its general path and :meth:`Verdicts.__getitem__`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from lmetric_theory.detector.findings import FINDING_KINDS, Finding, Mitigation
from lmetric_theory.detector.messages import EMPTY as _EMPTY
from lmetric_theory.detector.messages import build_findings
from lmetric_theory.detector.snapshot import Snapshot

if TYPE_CHECKING:
    from lmetric_theory.detector.settings import DetectorSettings

__all__ = ["Verdict", "Verdicts", "assemble", "new_verdict"]


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
    lam_eff : float
        Rate the product implicitly uses for the pair (choice, rival), tokens per slot.
    lam_star : float
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
    lam_eff: float
    lam_star: float
    regret_tokens: float
    findings: tuple[Finding, ...]
    fragile: bool
    rival: int

    @property
    def lambda_eff(self) -> float:
        """Former name of :attr:`lam_eff` (deprecated read-only alias)."""
        return self.lam_eff

    @property
    def lambda_star(self) -> float:
        """Former name of :attr:`lam_star` (deprecated read-only alias)."""
        return self.lam_star

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


#: ``Verdict(...)`` without ``__init__`` overhead (positional, unvalidated).
new_verdict = _fast_constructor()


def assemble(
    settings: DetectorSettings,
    snap: Snapshot,
    i: int,
    j: int,
    r: int,
    flags: tuple[bool, bool, bool, bool, bool, bool],
    lam_eff: float,
    lam_star: float,
    regret: float,
) -> Verdict:
    """The verdict of one decision from its choices and flags: findings built (with their
    messages) only when something is flagged.

    Parameters
    ----------
    settings : DetectorSettings
        The detector's settings.
    snap : Snapshot
        The decision.
    i, j, r : int
        Product choice, linear choice, rival (see :mod:`lmetric_theory.detector.detector`).
    flags : tuple of bool
        disagreement, fragile, zero_prefill, idle_tie, exact_tie, extreme_operating_point.
    lam_eff, lam_star : float
        Rates of the pair ``(i, r)``, tokens per batch slot.
    regret : float
        Regret of the product's choice, prefill-token equivalents.
    """
    findings = (
        build_findings(settings, snap, i, j, r, flags, lam_eff, regret)
        if True in flags
        else _EMPTY
    )
    return new_verdict(i, j, i != j, lam_eff, lam_star, regret, findings, flags[1], r)


# ================================================================================ Verdicts


@dataclass(frozen=True, slots=True, eq=False)
class Verdicts:
    """Columnar verdicts on ``D`` decisions (from :meth:`Detector.check_many`).

    Every attribute is a numpy array of shape (D,) except ``prefill_tokens`` and
    ``batch_size`` (the inputs, shape (D, N)) and ``settings`` (the detector's
    :class:`~lmetric_theory.detector.settings.DetectorSettings`). ``verdicts[k]`` builds the
    full :class:`Verdict` (with findings and messages) of decision ``k`` on demand.
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
    lam_eff: np.ndarray
    lam_star: np.ndarray
    regret_tokens: np.ndarray
    prefill_tokens: np.ndarray
    batch_size: np.ndarray
    settings: DetectorSettings

    def __len__(self) -> int:
        return int(self.product_choice.shape[0])

    @property
    def lambda_eff(self) -> np.ndarray:
        """Former name of :attr:`lam_eff` (deprecated read-only alias)."""
        return self.lam_eff

    @property
    def lambda_star(self) -> np.ndarray:
        """Former name of :attr:`lam_star` (deprecated read-only alias)."""
        return self.lam_star

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
        flags = (
            bool(self.disagrees[k]),
            bool(self.fragile[k]),
            bool(self.zero_prefill[k]),
            bool(self.idle_tie[k]),
            bool(self.exact_tie[k]),
            bool(self.extreme_operating_point[k]),
        )
        return assemble(
            self.settings,
            self.snapshot(k),
            int(self.product_choice[k]),
            int(self.linear_choice[k]),
            int(self.rival[k]),
            flags,
            float(self.lam_eff[k]),
            float(self.lam_star[k]),
            float(self.regret_tokens[k]),
        )

    def __iter__(self):  # type: ignore[no-untyped-def]
        for k in range(len(self)):
            yield self[k]
