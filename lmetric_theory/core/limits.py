"""Valid ranges of every numeric input field, and one checker that words the errors.

Every number the toolkit reads from a file or a caller (trace fields, snapshot arrays,
calibration rows, preset coefficients, policy parameters) is checked against a range stated
here, so an absurd value is refused with a one-line reason instead of producing a wrong
answer downstream. Booleans and text are never numbers: ``true`` is not 1 and ``"5"`` is
not 5.

Ranges and why
--------------
``TIME_MAX_S = 1e10`` s
    Timestamps (after unit conversion) must be finite, ``>= 0`` and ``<= 1e10`` s (about
    317 years). Unix-epoch seconds (about 1.8e9 today) and epoch milliseconds in Mooncake's
    millisecond field (1.8e12 ms = 1.8e9 s) both fit; at 1e10 s a float64 still resolves
    2 microseconds, so latencies computed after rebasing stay exact to the microsecond. A
    timestamp of 1e30 would leave a resolution of ~1e14 s and report every latency as 0.
``TOKENS_MAX = 2**24`` (16,777,216) tokens
    Prompt and output lengths of one request (ints ``>= 1``): above the longest context
    windows in use (a few million tokens). A longer prompt is a corrupt field, and would make
    the loader allocate its ``ceil(tokens / block_size)`` hash blocks.
``COUNT_MAX = 2**31 - 1``
    Snapshot loads (``prefill_tokens``, ``batch_size`` and the other per-instance counts):
    the exact int64 arithmetic of the detector needs ``|P|, |B| < 2**31`` (products of two
    such numbers stay below 2**62).
``ID_MIN, ID_MAX``
    Identifiers (block hashes, chat ids, session ids) are any int64.
Calibration rows
    ``prefill_tokens``, ``prefill_context``, ``decode_context`` in ``[0, TOKENS_MAX]``
    tokens, ``decode_seqs`` in ``[0, BATCH_MAX]`` sequences, ``iteration_s_median`` in
    ``(0, ITERATION_MAX_S]`` seconds.
Presets
    Latency coefficients in ``[0, COEF_MAX[name]]`` (seconds per unit; see
    :data:`COEF_MAX`), ``kv_capacity_tokens`` in ``[1, 2**40]``, ``token_budget`` in
    ``[1, TOKENS_MAX]``, ``max_batch`` in ``[1, BATCH_MAX]``.
Simulated instances
    ``1 .. INSTANCES_MAX = 4096`` serving instances: well above any single router's fleet;
    a larger count is a typo, and the simulator keeps per-instance state for each.
Policy parameters
    Numbers with ``|v| <= POLICY_NUMBER_MAX = 2**31 - 1`` (offsets and rates: the exact
    kernel needs ``|p0|, |b0|, |lam| < 2**31``).
"""

from __future__ import annotations

import math
from fractions import Fraction
from numbers import Integral, Real
from typing import Any

__all__ = [
    "BATCH_MAX",
    "COEF_MAX",
    "COUNT_MAX",
    "ID_MAX",
    "ID_MIN",
    "INSTANCES_MAX",
    "ITERATION_MAX_S",
    "KV_CAPACITY_MAX",
    "POLICY_NUMBER_MAX",
    "TIME_MAX_S",
    "TOKENS_MAX",
    "check_int",
    "check_number",
    "describe",
]

#: Largest timestamp accepted, seconds (after unit conversion).
TIME_MAX_S: float = 1e10
#: Largest prompt or output length of one request, tokens.
TOKENS_MAX: int = 2**24
#: Largest per-instance count in a snapshot (exact int64 products below this).
COUNT_MAX: int = 2**31 - 1
#: Identifier range (block hashes, chat ids, session ids): int64.
ID_MIN: int = -(2**63)
ID_MAX: int = 2**63 - 1
#: Largest number of sequences in one iteration / one instance's batch.
BATCH_MAX: int = 2**20
#: Longest plausible measured iteration, seconds.
ITERATION_MAX_S: float = 3600.0
#: Largest KV capacity of one instance, tokens.
KV_CAPACITY_MAX: int = 2**40
#: Largest number of simulated serving instances.
INSTANCES_MAX: int = 4096
#: Largest magnitude of a numeric policy parameter.
POLICY_NUMBER_MAX: int = 2**31 - 1
#: Largest latency coefficient accepted in a preset, per unit (seconds, s/token, ...):
#: a whole minute of fixed cost per iteration, a full second per token or sequence.
#: Real accelerators are 4-5 orders of magnitude below these.
COEF_MAX: dict[str, float] = {
    "c0": 60.0,
    "c_pf": 1.0,
    "c_dec": 1.0,
    "c_kv": 1.0,
    "c_att": 1.0,
}


def describe(
    lo: float | None, hi: float | None, *, integer: bool, lo_open: bool = False, unit: str = ""
) -> str:
    """Words for a range: ``"an integer in [1, 16777216]"``, ``"a finite number >= 0 s"``."""
    kind = "an integer" if integer else "a finite number"
    u = f" {unit}" if unit else ""

    def f(x: float) -> str:
        return str(int(x)) if integer else f"{x:g}"

    if lo is not None and hi is not None:
        return f"{kind} in {'(' if lo_open else '['}{f(lo)}, {f(hi)}]{u}"
    if lo is not None:
        return f"{kind} {'>' if lo_open else '>='} {f(lo)}{u}"
    if hi is not None:
        return f"{kind} <= {f(hi)}{u}"
    return kind + u


def _what(value: object) -> str:
    """``repr`` of a value that is not a number, with its kind: ``True (a boolean)``."""
    if value is None:
        return "None (null)"
    if isinstance(value, bool):
        return f"{value!r} (a boolean)"
    if isinstance(value, str):
        return f"{_clip(repr(value))} (a string)"
    return f"{_clip(repr(value))} (a {type(value).__name__})"


def _clip(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def check_number(
    name: str,
    value: Any,
    *,
    lo: float | None = 0.0,
    hi: float | None = None,
    lo_open: bool = False,
    unit: str = "",
) -> float:
    """``value`` as a float inside ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``).

    Accepts ``int``, ``float``, ``Fraction`` and numpy numbers; refuses booleans, text,
    ``None``, NaN and infinities.

    Raises
    ------
    ValueError
        ``"<name>: expected <range>, got <value>"``.
    """
    want = describe(lo, hi, integer=False, lo_open=lo_open, unit=unit)
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name}: expected {want}, got {_what(value)}")
    try:
        v = float(value)
    except OverflowError:
        raise ValueError(f"{name}: expected {want}, got {value!r} (too large)") from None
    if math.isnan(v):
        raise ValueError(f"{name}: expected {want}, got NaN")
    if math.isinf(v):
        raise ValueError(f"{name}: expected {want}, got {'-' if v < 0 else ''}infinity")
    if (lo is not None and (v <= lo if lo_open else v < lo)) or (hi is not None and v > hi):
        raise ValueError(f"{name}: expected {want}, got {_short(value)}")
    return v


def check_int(name: str, value: Any, *, lo: int | None = 0, hi: int | None = None) -> int:
    """``value`` as an int inside ``[lo, hi]``; refuses booleans, floats (``12.0`` too),
    text and ``None``.

    Raises
    ------
    ValueError
        ``"<name>: expected <range>, got <value>"``.
    """
    want = describe(lo, hi, integer=True)
    if isinstance(value, bool) or not isinstance(value, Integral):
        if isinstance(value, Fraction) and value.denominator == 1:
            value = int(value)
        else:
            raise ValueError(f"{name}: expected {want}, got {_what(value)}")
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ValueError(f"{name}: expected {want}, got {_short(v)}")
    return v


def _short(value: object) -> str:
    """``repr`` of a number, abbreviated when it has many digits."""
    text = repr(value)
    if isinstance(value, int) and len(text) > 24:
        return f"{float(value):.3e}" if value.bit_length() < 1024 else f"an integer of {len(text)} digits"
    return text
