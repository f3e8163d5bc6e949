"""The linear score the product is compared with: :class:`LinearReference`."""

from __future__ import annotations

from dataclasses import dataclass

from lmetric_theory.core.validate import finite_scalar

__all__ = ["LinearReference"]

_SOURCES = ("fixed", "band", "latency_model", "tuned")


def _finite_nonneg(name: str, value: object) -> float:
    return finite_scalar(name, value, nonneg=True, why="a batch slot cannot be worth < 0 tokens")


@dataclass(frozen=True, slots=True)
class LinearReference:
    """Linear score ``C_i = P_i + lam * B_i`` and the band of plausible rates.

    Parameters
    ----------
    lam : float
        Reference exchange rate, prefill tokens per batch slot (``>= 0``). The
        detector's ``linear_choice``, ``disagrees`` and ``regret_tokens`` use it.
    lam_lo, lam_hi : float, optional
        Band of plausible rates (tokens per batch slot), ``lam_lo <= lam <= lam_hi``;
        both default to ``lam`` (no band). Decisions that agree with ``lam`` but not
        with every rate of the band are reported as *fragile*.
    source : {"fixed", "band", "latency_model", "tuned"}
        Where ``lam`` comes from (recorded in reports).
    objective : str, optional
        For ``source="tuned"``: what the tuning minimised (e.g. ``"mean_ttft_s"``).
    provenance : str
        Free text: how the rate was obtained (derivation, trace, sweep).

    Raises
    ------
    ValueError
        NaN, infinite or negative rates, ``lam_lo > lam_hi`` or ``lam`` outside the band.
    """

    lam: float
    lam_lo: float | None = None
    lam_hi: float | None = None
    source: str = "fixed"
    objective: str | None = None
    provenance: str = ""

    def __post_init__(self) -> None:
        s = object.__setattr__
        lam = _finite_nonneg("lam", self.lam)
        lo = lam if self.lam_lo is None else _finite_nonneg("lam_lo", self.lam_lo)
        hi = lam if self.lam_hi is None else _finite_nonneg("lam_hi", self.lam_hi)
        if lo > hi:
            raise ValueError(f"lam_lo: band lower end {lo!r} exceeds upper end lam_hi={hi!r}")
        if not lo <= lam <= hi:
            raise ValueError(f"lam: {lam!r} lies outside the band [{lo!r}, {hi!r}]")
        if self.source not in _SOURCES:
            raise ValueError(f"source: unknown {self.source!r}; valid: {', '.join(_SOURCES)}")
        s(self, "lam", lam)
        s(self, "lam_lo", lo)
        s(self, "lam_hi", hi)

    # ----------------------------------------------------------------- constructors

    @classmethod
    def fixed(cls, lam: float) -> LinearReference:
        """A single rate ``lam`` (tokens per batch slot), no band."""
        return cls(lam, source="fixed")

    @classmethod
    def band(cls, lam_lo: float, lam_hi: float, lam: float | None = None) -> LinearReference:
        """A band ``[lam_lo, lam_hi]``; the reference rate defaults to its midpoint."""
        lo = _finite_nonneg("lam_lo", lam_lo)
        hi = _finite_nonneg("lam_hi", lam_hi)
        if lo > hi:
            raise ValueError(f"lam_lo: band lower end {lo!r} exceeds upper end lam_hi={hi!r}")
        mid = 0.5 * (lo + hi) if lam is None else lam
        return cls(mid, lo, hi, source="band")

    @classmethod
    def from_latency_model(
        cls,
        *,
        c_pf: float,
        c_dec: float,
        c_kv: float = 0.0,
        context_tokens: float = 0.0,
        iterations: float = 1.0,
        band_factor: float = 1.0,
    ) -> LinearReference:
        """Derive ``lam`` from the coefficients of an iteration-latency model.

        The model: one engine iteration takes
        ``c0 + c_pf * (prefill tokens) + c_dec * (sequences) + c_kv * (context tokens)``
        seconds. Routing a request to instance ``i``

        - adds ``c_pf`` seconds per prefill token to the work ahead of its first token,
          so ``P_i`` prefill tokens cost ``c_pf * P_i`` seconds;
        - puts it in a batch of ``B_i`` other sequences, each of which adds
          ``c_dec + c_kv * context_tokens`` seconds to every iteration the request
          lives through (``iterations``: its remaining lifetime in iterations, e.g. its
          output length, or 1 to count a single iteration).

        In seconds the cost is ``c_pf * P_i + iterations * (c_dec + c_kv * context) * B_i``;
        dividing by ``c_pf`` expresses it in prefill-token equivalents, giving
        ``C_i = P_i + lam * B_i`` with::

            lam = iterations * (c_dec + c_kv * context_tokens) / c_pf

        This is a first-order, per-request view (it ignores the request's own effect
        on the others and queueing); use ``band_factor > 1`` to widen it into the band
        ``[lam / band_factor, lam * band_factor]``.

        Parameters
        ----------
        c_pf : float
            Seconds per prefill token (> 0).
        c_dec : float
            Seconds per decoding sequence per iteration (>= 0).
        c_kv : float
            Seconds per context token in the KV cache per iteration (>= 0).
        context_tokens : float
            Mean context length of a running sequence, tokens (>= 0).
        iterations : float
            Iterations over which a batch slot's cost is counted (> 0).
        band_factor : float
            Multiplicative half-width of the band (>= 1).
        """
        cpf = _finite_nonneg("c_pf", c_pf)
        if cpf == 0:
            raise ValueError("c_pf: must be > 0 (seconds per prefill token)")
        cdec = _finite_nonneg("c_dec", c_dec)
        ckv = _finite_nonneg("c_kv", c_kv)
        ctx = _finite_nonneg("context_tokens", context_tokens)
        it = _finite_nonneg("iterations", iterations)
        if it == 0:
            raise ValueError("iterations: must be > 0")
        f = _finite_nonneg("band_factor", band_factor)
        if f < 1:
            raise ValueError(f"band_factor: must be >= 1, got {f!r}")
        lam = it * (cdec + ckv * ctx) / cpf
        prov = (
            f"lam = iterations*(c_dec + c_kv*context_tokens)/c_pf = {lam:.4g} with "
            f"c_pf={cpf:.4g} s/token, c_dec={cdec:.4g} s, c_kv={ckv:.4g} s/token, "
            f"context_tokens={ctx:.6g}, iterations={it:.6g}"
        )
        return cls(lam, lam / f, lam * f, source="latency_model", provenance=prov)

    @classmethod
    def tuned(
        cls,
        lam: float,
        *,
        objective: str,
        source: str,
        lam_lo: float | None = None,
        lam_hi: float | None = None,
    ) -> LinearReference:
        """A rate found by a tuning sweep (e.g. the simulator's ``tuned-linear``).

        Parameters
        ----------
        lam : float
            The best rate found, tokens per batch slot.
        objective : str
            What the sweep minimised, e.g. ``"mean_ttft_s"``.
        source : str
            Provenance: which sweep, on which trace and cluster.
        lam_lo, lam_hi : float, optional
            Rates whose objective is within tolerance of the best (a band).
        """
        return cls(lam, lam_lo, lam_hi, source="tuned", objective=objective, provenance=source)

    @property
    def has_band(self) -> bool:
        """True when ``lam_lo < lam_hi``."""
        return self.lam_lo < self.lam_hi  # type: ignore[operator]
