"""The detector's settings in one frozen value: :class:`DetectorSettings`.

Everything a verdict, a finding's message or a mitigated choice depends on besides the
snapshot itself: the offsets, the reference and its band, the extreme-operating-point
bounds, the mitigations and whether the exact integer paths apply. The messages, the
mitigations and the columnar verdicts take this value instead of the detector.

This module is a leaf: it imports no other module of the detector (the reference and the
mitigations are typed structurally), so every other detector module may import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from types import MappingProxyType
from typing import Any, Protocol

__all__ = ["DetectorSettings", "ReferenceRates"]


class ReferenceRates(Protocol):
    """What the settings read of a linear reference (a
    :class:`~lmetric_theory.detector.LinearReference`): its rate and band, tokens per
    batch slot."""

    @property
    def lam(self) -> float: ...

    @property
    def lam_lo(self) -> float | None: ...

    @property
    def lam_hi(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class DetectorSettings:
    """The detector's settings (validated by :class:`~lmetric_theory.detector.Detector`,
    which builds them; the fields below are taken as given).

    Parameters
    ----------
    reference : LinearReference
        The linear score ``P + lam * B`` and its band ``[lam_lo, lam_hi]`` (tokens per
        batch slot).
    prefill_offset : int, float or Fraction
        ``p0`` of the product score, tokens (>= 0); ``int`` when integral, a Fraction
        kept exact.
    batch_offset : int, float or Fraction
        ``b0`` of the product score, batch slots (>= 0); same forms.
    extreme_factor : float
        ``lam_eff`` more than this factor outside the band is an extreme operating
        point (> 1).
    tie_break : {"load", "cache"}
        Tie-break the ``exact_tie`` finding recommends.
    block_tokens : int
        Tokens of one KV block (the ``zero_prefill`` mitigation's prefill offset).
    load_cap : float or None
        Batch-size cap (requests) recommended below the band, if any.
    mitigations : mapping of str to Mitigation
        The mitigation per finding kind, plus ``extreme_low`` (an extreme operating point
        below the band); stored as a read-only mapping.

    Attributes
    ----------
    lam, lam_lo, lam_hi : float
        The reference's rate and band ends, tokens per batch slot.
    lam_nd, lam_lo_nd, lam_hi_nd : tuple of (int, int)
        The same rates as exact integer ratios ``(numerator, denominator)`` of their
        binary values.
    band : bool
        ``lam_lo < lam_hi`` (decisions can be fragile).
    extreme_lo, extreme_hi : float
        ``lam_lo / extreme_factor`` and ``lam_hi * extreme_factor``: a finite ``lam_eff``
        outside ``[extreme_lo, extreme_hi]`` is an extreme operating point (tokens per
        batch slot).
    integer_offsets : bool
        Both offsets are Python ``int``: with integer inputs every score is an exact
        integer (the detector's pure-Python and int64 paths apply).
    """

    reference: ReferenceRates
    prefill_offset: int | float | Fraction
    batch_offset: int | float | Fraction
    extreme_factor: float
    tie_break: str
    block_tokens: int
    load_cap: float | None
    mitigations: Mapping[str, Any]
    lam: float = field(init=False)
    lam_lo: float = field(init=False)
    lam_hi: float = field(init=False)
    lam_nd: tuple[int, int] = field(init=False)
    lam_lo_nd: tuple[int, int] = field(init=False)
    lam_hi_nd: tuple[int, int] = field(init=False)
    band: bool = field(init=False)
    extreme_lo: float = field(init=False)
    extreme_hi: float = field(init=False)
    integer_offsets: bool = field(init=False)

    def __post_init__(self) -> None:
        s = object.__setattr__
        ref = self.reference
        lam = float(ref.lam)
        lo = lam if ref.lam_lo is None else float(ref.lam_lo)
        hi = lam if ref.lam_hi is None else float(ref.lam_hi)
        s(self, "mitigations", MappingProxyType(dict(self.mitigations)))
        s(self, "lam", lam)
        s(self, "lam_lo", lo)
        s(self, "lam_hi", hi)
        s(self, "lam_nd", Fraction(lam).as_integer_ratio())
        s(self, "lam_lo_nd", Fraction(lo).as_integer_ratio())
        s(self, "lam_hi_nd", Fraction(hi).as_integer_ratio())
        s(self, "band", lo < hi)
        s(self, "extreme_lo", lo / self.extreme_factor)
        s(self, "extreme_hi", hi * self.extreme_factor)
        s(
            self,
            "integer_offsets",
            isinstance(self.prefill_offset, int) and isinstance(self.batch_offset, int),
        )

    def _arguments(self) -> tuple[Any, ...]:
        """The constructor's arguments, in order (the mitigations as a plain dict)."""
        return (
            self.reference,
            self.prefill_offset,
            self.batch_offset,
            self.extreme_factor,
            self.tie_break,
            self.block_tokens,
            self.load_cap,
            dict(self.mitigations),
        )

    def __hash__(self) -> int:
        *args, mitigations = self._arguments()
        return hash((*args, tuple(mitigations.items())))

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # the read-only mapping does not pickle: rebuild from the constructor's arguments
        return (DetectorSettings, self._arguments())
