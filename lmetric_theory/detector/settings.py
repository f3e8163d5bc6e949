"""The detector's settings in one frozen value: :class:`DetectorSettings`.

Everything a verdict, a finding's message or a mitigated choice depends on besides the
snapshot itself: the offsets, the reference and its band, the extreme-operating-point
bounds, the mitigations and whether the exact integer paths apply. The messages, the
mitigations and the columnar verdicts take this value instead of the detector.

This module is a leaf: it imports no other module of the detector (the reference and the
mitigations are typed structurally), so every other detector module may import it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from types import MappingProxyType
from typing import Any, Protocol

__all__ = ["DetectorSettings", "ReferenceRates", "RouterStateSettings"]


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


@dataclass(frozen=True, slots=True)
class RouterStateSettings:
    """Settings of the router-state findings (``replica_skew``, ``herding``,
    ``stale_index``; :mod:`lmetric_theory.detector.router_state`), validated here.

    Parameters
    ----------
    replicas : int
        Router replicas ``R`` (>= 1); the value of the counter mitigations.
    lag_s : float
        Lag window, seconds (>= 0, finite): how late a replica learns of the others'
        dispatches (signal delay or KV event lag). Herding counts decisions within it.
    window : int
        Decisions in the ring buffers the shares are taken over (>= 2).
    min_decisions : int
        Decisions (or observed hits) before a share may raise a finding (>= 1).
    skew_share : float
        ``replica_skew`` when at least this share of the window's decisions would go
        elsewhere on the engines' true counters (0 < share <= 1).
    herd_size : int
        A decision herds when it lands, within one lag window, on an instance at least
        ``herd_size - 1`` other replicas' decisions went to (>= 2).
    herding_share : float
        ``herding`` when at least this share of the window's decisions herd (0..1].
    stale_blocks : int
        A predicted hit off the actual one by at least this many blocks is stale (>= 1).
    stale_share : float
        ``stale_index`` when at least this share of the window's hits are stale (0..1].
    block_tokens : int
        Tokens per KV block (>= 1).
    ttl_s : float or None
        The approximate index's TTL, seconds (> 0), if any: the ``shorter_ttl``
        mitigation proposes half of it.
    near_tie_tolerance : float
        Relative score tolerance of the ``random_near_ties`` mitigation (> 0).
    """

    replicas: int = 1
    lag_s: float = 0.0
    window: int = 256
    min_decisions: int = 32
    skew_share: float = 0.05
    herd_size: int = 3
    herding_share: float = 0.05
    stale_blocks: int = 1
    stale_share: float = 0.1
    block_tokens: int = 16
    ttl_s: float | None = None
    near_tie_tolerance: float = 0.05

    def __post_init__(self) -> None:
        def bad(name: str, want: str) -> ValueError:
            return ValueError(f"router state: {name} must be {want}, got {getattr(self, name)!r}")

        for name, lo in (("replicas", 1), ("window", 2), ("min_decisions", 1),
                         ("herd_size", 2), ("stale_blocks", 1), ("block_tokens", 1)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise bad(name, f"an integer >= {lo}")
        if not (isinstance(self.lag_s, int | float) and math.isfinite(self.lag_s)
                and self.lag_s >= 0):
            raise bad("lag_s", "finite and >= 0 (seconds)")
        for name in ("skew_share", "herding_share", "stale_share"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and 0 < v <= 1):
                raise bad(name, "in (0, 1]")
        if self.ttl_s is not None and not (math.isfinite(self.ttl_s) and self.ttl_s > 0):
            raise bad("ttl_s", "finite and > 0 (seconds)")
        t = self.near_tie_tolerance
        if not (isinstance(t, int | float) and math.isfinite(t) and t > 0):
            raise bad("near_tie_tolerance", "finite and > 0")
