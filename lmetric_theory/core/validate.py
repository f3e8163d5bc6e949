"""Validation of scalar settings (rates, offsets, ranges) shared by the library layers.

Every error is a ``ValueError`` whose message starts with the field's name and gives the
reason: ``"lam: NaN"``, ``"b0: infinite"``, ``"prefill_offset: negative (-1.0); ..."``.
"""

from __future__ import annotations

import math

__all__ = ["exact_if_integral", "finite_scalar"]


def finite_scalar(name: str, value: object, *, nonneg: bool = False, why: str = "") -> float:
    """``value`` as a finite float, or ``ValueError`` naming ``name`` and the reason.

    Parameters
    ----------
    name : str
        Field name used in the message.
    value : object
        Anything ``float()`` accepts; text is parsed as a number, never evaluated.
    nonneg : bool
        Also reject negative values.
    why : str
        Appended to the "negative" message (what a negative value would mean).
    """
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name}: not a number ({value!r})") from None
    if math.isnan(v):
        raise ValueError(f"{name}: NaN")
    if math.isinf(v):
        raise ValueError(f"{name}: infinite")
    if nonneg and v < 0:
        raise ValueError(f"{name}: negative ({v!r})" + (f"; {why}" if why else ""))
    return v


def exact_if_integral(v: float) -> int | float:
    """``int(v)`` when ``v`` is integral and inside the exact int64 range of the
    predicates (``|v| < 2**31``), else ``v``: integer settings keep integer exactness."""
    return int(v) if v.is_integer() and abs(v) < 2**31 else v
