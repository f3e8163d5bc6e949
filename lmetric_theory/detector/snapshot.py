"""One routing decision as the detector sees it: :class:`Snapshot`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from numbers import Integral, Real
from typing import Any

import numpy as np

from lmetric_theory.core.limits import COUNT_MAX, check_number

__all__ = ["Snapshot", "as_exact_array"]

_OPTIONAL_ARRAYS = ("uncached_tokens", "queued_prefill_tokens", "waiting", "kv_usage")
_KNOWN_KEYS = frozenset(
    ("prefill_tokens", "batch_size", "instance_ids", "time_s", *_OPTIONAL_ARRAYS)
)
# int64 arithmetic of the detector stays exact below this magnitude (see predicates).
_INT_LIMIT = COUNT_MAX + 1
_EXPECTED = f"a finite number in [0, {COUNT_MAX}] (int, float or Fraction)"


def _what(x: object) -> str:
    if x is None:
        return "None"
    if isinstance(x, bool | np.bool_):
        return f"{bool(x)!r} (a boolean)"
    text = repr(x)
    if isinstance(x, int) and len(text) > 24:
        text = f"{x:.3e}" if x.bit_length() < 1000 else f"an integer of {len(text)} digits"
    elif len(text) > 40:
        text = text[:37] + "..."
    return text if isinstance(x, Real) else f"{text} (a {type(x).__name__})"


def _element_error(name: str, values: Any) -> str | None:
    """The first element of a (nested) sequence that is not a number in range, worded as
    ``"<name>[i]: expected ..., got ..."``; ``None`` when every element is fine."""
    if isinstance(values, np.ndarray) or not isinstance(values, list | tuple):
        return None
    rows = values if values and all(isinstance(r, list | tuple) for r in values) else [values]
    if all(set(map(type, r)) <= {int, float} for r in rows):
        # plain numbers: numpy's own checks word NaN, negative and too-large values, except
        # for ints beyond int64, which must be named here
        if all(max((abs(x) for x in r if type(x) is int), default=0) < 2**63 for r in rows):
            return None
    stack: list[tuple[str, Any]] = [(name, values)]
    while stack:
        where, v = stack.pop()
        if isinstance(v, list | tuple):
            stack.extend((f"{where}[{i}]", x) for i, x in reversed(list(enumerate(v))))
            continue
        if isinstance(v, bool | np.bool_) or not isinstance(v, Real):
            return f"{where}: expected {_EXPECTED}, got {_what(v)}"
        try:
            f = float(v)
        except OverflowError:
            f = math.inf
        if not (math.isfinite(f) and 0 <= f <= COUNT_MAX):
            return f"{where}: expected {_EXPECTED}, got {_what(v)}"
    return None


def _from_objects(arr: np.ndarray, name: str) -> np.ndarray:
    """An object array of valid numbers (ints, Fractions, floats) as int64 when every value
    is integral, else float64 (a Fraction rounds to the nearest float)."""
    flat = arr.ravel().tolist()
    if all(isinstance(x, Integral) or (isinstance(x, Fraction) and x.denominator == 1)
           for x in flat):
        return np.array([int(x) for x in flat], dtype=np.int64).reshape(arr.shape)
    return np.array([float(x) for x in flat], dtype=np.float64).reshape(arr.shape)


def as_exact_array(values: Any, name: str, *, validate: bool = True) -> np.ndarray:
    """Turn per-instance values into a 1-d (or 2-d) numeric array.

    Integral values come back as ``int64`` (exact arithmetic downstream), anything
    else as ``float64``.

    Parameters
    ----------
    values : array_like
        Numbers, shape (N,) or (D, N).
    name : str
        Field name used in error messages.
    validate : bool
        Check for NaN, infinities, negative values and non-numeric input.

    Raises
    ------
    ValueError
        Naming ``name`` (with the index of the bad element) and what was expected:
        ``"prefill_tokens[0]: expected a finite number in [0, 2147483647] (int, float or
        Fraction), got None"``. Booleans are not numbers (``True`` is not 1).
    """
    if validate:
        bad = _element_error(name, values)
        if bad is not None:
            raise ValueError(bad)
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError, OverflowError) as exc:  # ragged input
        why = "rows of different lengths" if "inhomogeneous" in str(exc) else str(exc)[:80]
        raise ValueError(f"{name}: not a rectangular array of numbers ({why})") from None
    kind = arr.dtype.kind
    if kind == "O" and validate and isinstance(values, list | tuple):
        arr = _from_objects(arr, name)  # ints beyond int64 were refused above; Fractions
        kind = arr.dtype.kind
    if kind == "b" or kind not in "iuf":
        if validate:
            raise ValueError(
                f"{name}: expected an array of numbers (int, float or Fraction), "
                f"got dtype {arr.dtype}"
            )
        arr = arr.astype(np.float64)
        kind = "f"
    if validate:
        if arr.size == 0:
            raise ValueError(f"{name}: empty (a snapshot needs at least one instance)")
        # two reductions decide the common (valid) case; the slow scans only name the culprit
        lo, hi = arr.min(), arr.max()
        if kind == "f" and not (np.isfinite(lo) and np.isfinite(hi)):
            bad = ~np.isfinite(arr)
            k = int(np.flatnonzero(bad.ravel())[0])
            what = "NaN" if np.isnan(arr.ravel()[k]) else "infinite"
            raise ValueError(f"{name}: {what} value at index {_index(arr, k)}")
        if lo < 0:
            k = int(np.flatnonzero((arr < 0).ravel())[0])
            raise ValueError(
                f"{name}: negative value {arr.ravel()[k].item()!r} at index {_index(arr, k)}"
            )
        if hi >= _INT_LIMIT:
            k = int(np.flatnonzero((arr >= _INT_LIMIT).ravel())[0])
            raise ValueError(
                f"{name}: value {arr.ravel()[k].item()!r} at index {_index(arr, k)} is too "
                "large (inputs must stay below 2**31 for exact arithmetic)"
            )
    if kind == "f":
        if arr.size and np.all(arr == np.floor(arr)) and np.max(np.abs(arr)) < _INT_LIMIT:
            return arr.astype(np.int64)
        return arr.astype(np.float64, copy=False)
    if kind == "u" or arr.dtype != np.int64:
        return arr.astype(np.int64)
    return arr


def _index(arr: np.ndarray, flat: int) -> Any:
    ix = np.unravel_index(flat, arr.shape)
    return int(ix[0]) if len(ix) == 1 else tuple(int(i) for i in ix)


@dataclass(frozen=True, slots=True, eq=False)
class Snapshot:
    """The load of every candidate instance at one routing decision.

    Parameters
    ----------
    prefill_tokens : array_like, shape (N,)
        ``P_i``: prefill tokens the request would cost on instance ``i`` (tokens), under
        whichever definition the router uses ("uncached" or "queued+uncached").
    batch_size : array_like, shape (N,)
        ``B_i``: batch size of instance ``i`` (requests; or KV blocks if the router uses
        those).
    instance_ids : sequence of str, optional
        Names of the N instances (for messages and reports).
    uncached_tokens : array_like, shape (N,), optional
        The request's prompt tokens not cached on ``i`` (tokens); ``<= prefill_tokens``.
        Used by the cache-hit tie-break mitigation.
    queued_prefill_tokens : array_like, shape (N,), optional
        Tokens already queued for prefill on ``i`` (tokens).
    waiting : array_like, shape (N,), optional
        Requests waiting (not yet running) on ``i``.
    kv_usage : array_like, shape (N,), optional
        KV-cache usage of ``i`` as a fraction in [0, 1].
    time_s : float, optional
        Decision time (seconds, any origin).

    Attributes
    ----------
    prefill_list, batch_list : list of int or float
        ``prefill_tokens`` and ``batch_size`` as Python numbers (tokens, requests), shape
        (N,); ``int`` when the array is ``int64``.
    pairs : list of (P_i, B_i)
        The two lists zipped, one pair per instance.
    integral : bool
        Both arrays are ``int64`` (every score of the detector is then exact).

    Notes
    -----
    Construction validates every field and raises ``ValueError`` naming the field and
    the reason (NaN, infinite, negative, wrong shape, mismatched length, empty).
    :meth:`from_arrays` with ``validate=False`` skips validation for trusted input.
    Arrays are stored as ``int64`` when all values are integral (exact detector
    arithmetic), else ``float64``; a :class:`~fractions.Fraction` that is not integral
    rounds to the nearest float. Every value must be a finite number in ``[0, 2**31 - 1]``
    (booleans, ``None`` and text are refused, naming the index). The stored arrays are
    read-only and never the caller's own array (validated input is copied when needed), so
    the verdict always describes the values the snapshot holds. Equality is identity
    (arrays do not compare as bools).
    """

    prefill_tokens: np.ndarray
    batch_size: np.ndarray
    instance_ids: tuple[str, ...] | None = None
    uncached_tokens: np.ndarray | None = None
    queued_prefill_tokens: np.ndarray | None = None
    waiting: np.ndarray | None = None
    kv_usage: np.ndarray | None = None
    time_s: float | None = None
    # Derived on construction (read-only, like every field): the values as Python numbers
    # for the detector's one-decision path, which is cheaper on lists than on arrays.
    prefill_list: list = field(init=False, repr=False, compare=False)
    batch_list: list = field(init=False, repr=False, compare=False)
    pairs: list = field(init=False, repr=False, compare=False)
    integral: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _fill(self, validate=True)

    # ----------------------------------------------------------------- constructors

    @classmethod
    def from_arrays(
        cls,
        prefill_tokens: Any,
        batch_size: Any,
        *,
        instance_ids: Sequence[str] | None = None,
        uncached_tokens: Any = None,
        queued_prefill_tokens: Any = None,
        waiting: Any = None,
        kv_usage: Any = None,
        time_s: float | None = None,
        validate: bool = True,
    ) -> Snapshot:
        """Build a snapshot; ``validate=False`` is the fast path for trusted arrays.

        With ``validate=False`` the caller guarantees finite, non-negative values of
        equal length; nothing is checked (garbage in, garbage out).
        """
        self = object.__new__(cls)
        s = object.__setattr__
        s(self, "prefill_tokens", prefill_tokens)
        s(self, "batch_size", batch_size)
        s(self, "instance_ids", instance_ids)
        s(self, "uncached_tokens", uncached_tokens)
        s(self, "queued_prefill_tokens", queued_prefill_tokens)
        s(self, "waiting", waiting)
        s(self, "kv_usage", kv_usage)
        s(self, "time_s", time_s)
        _fill(self, validate=validate)
        return self

    @classmethod
    def from_split(
        cls,
        uncached_tokens: Any,
        queued_prefill_tokens: Any,
        batch_size: Any,
        *,
        prefill_definition: str = "queued+uncached",
        instance_ids: Sequence[str] | None = None,
        waiting: Any = None,
        kv_usage: Any = None,
        time_s: float | None = None,
    ) -> Snapshot:
        """Build ``P`` from its parts: ``uncached`` or ``queued + uncached`` (tokens)."""
        unc = as_exact_array(uncached_tokens, "uncached_tokens")
        que = as_exact_array(queued_prefill_tokens, "queued_prefill_tokens")
        if unc.shape != que.shape:
            raise ValueError(
                f"queued_prefill_tokens: length {que.shape[0]} does not match "
                f"uncached_tokens length {unc.shape[0]}"
            )
        if prefill_definition == "uncached":
            P = unc
        elif prefill_definition == "queued+uncached":
            P = unc + que
        else:
            raise ValueError(
                f"prefill_definition: unknown {prefill_definition!r}; "
                "valid: 'uncached', 'queued+uncached'"
            )
        return cls(
            P,
            batch_size,
            instance_ids=tuple(instance_ids) if instance_ids is not None else None,
            uncached_tokens=unc,
            queued_prefill_tokens=que,
            waiting=waiting,
            kv_usage=kv_usage,
            time_s=time_s,
        )

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> Snapshot:
        """Build from a JSON-like mapping with the field names as keys (validated).

        Unknown keys raise ``ValueError`` naming them (nothing is dropped silently).
        """
        if not isinstance(obj, Mapping):
            raise ValueError(f"snapshot: expected an object, got {type(obj).__name__}")
        unknown = sorted(set(obj) - _KNOWN_KEYS)
        if unknown:
            raise ValueError(
                f"{unknown[0]}: unknown field; valid: {', '.join(sorted(_KNOWN_KEYS))}"
            )
        for key in ("prefill_tokens", "batch_size"):
            if key not in obj:
                raise ValueError(f"{key}: missing")
        ids = obj.get("instance_ids")
        if ids is not None and not isinstance(ids, list | tuple):
            raise ValueError(f"instance_ids: expected an array of names, got {_what(ids)}")
        return cls(
            obj["prefill_tokens"],
            obj["batch_size"],
            instance_ids=None if ids is None else tuple(ids),
            uncached_tokens=obj.get("uncached_tokens"),
            queued_prefill_tokens=obj.get("queued_prefill_tokens"),
            waiting=obj.get("waiting"),
            kv_usage=obj.get("kv_usage"),
            time_s=obj.get("time_s"),
        )

    # -------------------------------------------------------------------- helpers

    @property
    def n_instances(self) -> int:
        """Number of candidate instances ``N``."""
        return len(self.prefill_list)

    def label(self, i: int) -> str:
        """Display name of instance ``i`` (its id, else ``#i``)."""
        if self.instance_ids is not None:
            return str(self.instance_ids[i])
        return f"#{i}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping (lists of numbers); omits absent optional fields."""
        out: dict[str, Any] = {
            "prefill_tokens": self.prefill_tokens.tolist(),
            "batch_size": self.batch_size.tolist(),
        }
        if self.instance_ids is not None:
            out["instance_ids"] = list(self.instance_ids)
        for name in _OPTIONAL_ARRAYS:
            v = getattr(self, name)
            if v is not None:
                out[name] = v.tolist()
        if self.time_s is not None:
            out["time_s"] = self.time_s
        return out


def _small_int(values: Any, name: str, validate: bool) -> np.ndarray:
    """:func:`as_exact_array` with a cheaper check for small int64 vectors (the common
    live-router case): Python ``min``/``max`` over the list beat numpy reductions."""
    if (
        validate
        and type(values) is np.ndarray
        and values.dtype == np.int64
        and values.ndim == 1
        and 0 < values.shape[0] <= 64
    ):
        vals = values.tolist()
        if min(vals) >= 0 and max(vals) < _INT_LIMIT:
            return values
    return as_exact_array(values, name, validate=validate)


def _frozen(arr: np.ndarray, given: Any, validate: bool) -> np.ndarray:
    """``arr`` made read-only without touching the caller's array: a copy when it shares
    memory with ``given`` (validated input: later changes to the caller's array cannot
    reach the snapshot), a read-only view for trusted input (``validate=False``)."""
    if isinstance(given, np.ndarray) and np.may_share_memory(arr, given):
        arr = arr.copy() if validate else arr.view()
    arr.flags.writeable = False
    return arr


def _fill(self: Snapshot, *, validate: bool) -> None:
    """Normalise (and optionally validate) the fields of a freshly built snapshot.

    Every array field ends read-only: the detector judges the values captured here, so a
    snapshot must not be mutated afterwards (assigning to an element raises ``ValueError``).
    """
    s = object.__setattr__
    P = _frozen(
        _small_int(self.prefill_tokens, "prefill_tokens", validate), self.prefill_tokens, validate
    )
    B = _frozen(_small_int(self.batch_size, "batch_size", validate), self.batch_size, validate)
    if validate:
        for name, arr in (("prefill_tokens", P), ("batch_size", B)):
            if arr.ndim != 1:
                raise ValueError(f"{name}: expected shape (N,), got {arr.shape}")
        if B.shape != P.shape:
            raise ValueError(
                f"batch_size: length {B.shape[0]} does not match "
                f"prefill_tokens length {P.shape[0]}"
            )
    n = P.shape[0]
    s(self, "prefill_tokens", P)
    s(self, "batch_size", B)
    for name in _OPTIONAL_ARRAYS:
        v = getattr(self, name)
        if v is None:
            continue
        arr = _frozen(as_exact_array(v, name, validate=validate), v, validate)
        if validate:
            if arr.shape != (n,):
                raise ValueError(
                    f"{name}: length {arr.shape[0] if arr.ndim else 0} does not match "
                    f"prefill_tokens length {n}"
                    if arr.ndim == 1
                    else f"{name}: expected shape ({n},), got {arr.shape}"
                )
            if name == "kv_usage" and np.any(arr > 1):
                k = int(np.flatnonzero(arr > 1)[0])
                raise ValueError(
                    f"kv_usage: value {arr[k].item()!r} at index {k} is not a fraction in [0, 1]"
                )
            if name == "uncached_tokens" and np.any(arr > P):
                k = int(np.flatnonzero(arr > P)[0])
                raise ValueError(
                    f"uncached_tokens: {arr[k].item()!r} at index {k} exceeds "
                    f"prefill_tokens {P[k].item()!r}"
                )
        s(self, name, arr)
    ids = self.instance_ids
    if ids is not None:
        if isinstance(ids, str | bytes | Mapping) or not isinstance(ids, Sequence | np.ndarray):
            raise ValueError(f"instance_ids: expected a list of {n} names, got {_what(ids)}")
        ids = tuple(str(x) for x in ids)
        if validate and len(ids) != n:
            raise ValueError(
                f"instance_ids: length {len(ids)} does not match prefill_tokens length {n}"
            )
        s(self, "instance_ids", ids)
    t = self.time_s
    if t is not None:
        if validate:
            t = check_number("time_s", t, lo=None, hi=None)
        else:
            t = float(t)
        s(self, "time_s", t)
    pl, bl = P.tolist(), B.tolist()
    s(self, "prefill_list", pl)
    s(self, "batch_list", bl)
    s(self, "pairs", list(zip(pl, bl, strict=True)))
    s(self, "integral", P.dtype.kind == "i" and B.dtype.kind == "i")
