"""Router signals to the scores' inputs: ``(P, B)`` from an instance view and a definition.

A *view* is anything with the router's per-instance signals as attributes (duck-typed): the
policies' :class:`~lmetric_theory.policies.DecisionView` (arrays of shape (N,)), the
simulator's snapshot log (shape (D, N)), or any object with the same names. The signals a
definition reads:

- ``uncached`` - the request's uncached prompt tokens on each instance, tokens;
- ``queued`` - prefill tokens queued on each instance, tokens;
- ``running`` - running requests per instance;
- ``waiting`` - waiting requests per instance;
- ``input_tokens`` - the request's prompt length ``T`` (scalar, or shape (D,) for a log);
- ``hit_blocks``, ``block_size`` - the request's cached prefix blocks on each instance (the
  router's cache view) and tokens per block;
- ``router_queued``, ``router_inflight``, ``router_all_tokens``, ``router_inflight_new_tokens`` - the
  router's own counters: queued prefill tokens, requests in flight, tokens of in-flight
  requests, new tokens of in-flight requests (released at completion).

Each definition is one row of :data:`P_SIGNALS` or :data:`B_SIGNALS`; adding a definition
(a new :class:`~lmetric_theory.core.definitions.PDefinition` or ``BDefinition`` member) is
one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np

from lmetric_theory.core.definitions import BDefinition, PDefinition, ScoreDefinition

__all__ = [
    "B_SIGNALS",
    "P_SIGNALS",
    "batch_signal",
    "full_prompt_blocks",
    "hit_blocks",
    "new_blocks",
    "new_tokens",
    "prefill_signal",
    "router_inflight",
    "router_queued",
    "score_inputs",
    "score_row",
]


def _i64(x: Any) -> np.ndarray:
    return np.asarray(x).astype(np.int64)


def _block(v: Any) -> int:
    """Tokens per block: ``v.block_size``, or ``v.meta["block_size"]`` (a snapshot log)."""
    b = getattr(v, "block_size", None)
    if b is None:
        b = getattr(v, "meta", {}).get("block_size")
    if b is None:
        raise ValueError("the view has no block_size (tokens per block)")
    s = int(b)
    if s <= 0:
        raise ValueError(f"block_size must be > 0, got {s}")
    return s


def _prompt(v: Any, like: np.ndarray) -> np.ndarray:
    """``T`` broadcast against a (N,) or (D, N) signal."""
    t = _i64(v.input_tokens)
    return t if t.ndim == 0 or t.ndim == like.ndim else t[:, None]


def hit_blocks(v: Any) -> np.ndarray:
    """Cached prefix blocks of the request per instance (router's view), blocks, >= 0."""
    return np.maximum(_i64(v.hit_blocks), 0)


def new_tokens(v: Any) -> np.ndarray:
    """``max(T - hit_blocks * block_size, 0)``: uncached tokens, hits in whole blocks."""
    h = hit_blocks(v)
    return np.maximum(_prompt(v, h) - h * _block(v), 0)


def new_blocks(v: Any) -> np.ndarray:
    """``max(ceil(T / block_size) - hit_blocks, 0)``: the request's uncached blocks."""
    h, s = hit_blocks(v), _block(v)
    return np.maximum(-(-_prompt(v, h) // s) - h, 0)


def router_queued(v: Any) -> np.ndarray:
    """Router-counted queued prefill tokens (clamped at 0), tokens."""
    return np.maximum(_i64(v.router_queued), 0)


def router_inflight(v: Any) -> np.ndarray:
    """Router-counted requests in flight (the paper's ``bs``), requests."""
    return np.maximum(_i64(v.router_inflight), 0)


def full_prompt_blocks(v: Any) -> np.ndarray:
    """``floor(T / block_size)``: the prompt's full blocks (llm-d's ``TotalBlocks``), blocks."""
    return _i64(v.input_tokens) // _block(v)


def _full_blocks_uncached(v: Any) -> np.ndarray:
    h, s = hit_blocks(v), _block(v)
    total = _prompt(v, h) // s
    return (total - np.minimum(h, total)) * s


def _prefill_blocks(v: Any) -> np.ndarray:
    """``(router_queued + new_tokens) / block_size``, blocks, exact (object array of
    Fractions: the ordering is the paper's ``P`` divided by the block size)."""
    s = _block(v)
    tokens = router_queued(v) + new_tokens(v)
    return np.frompyfunc(lambda t: Fraction(int(t), s), 1, 1)(tokens)


def _inflight_new(v: Any) -> np.ndarray:
    if getattr(v, "router_inflight_new_tokens", None) is None:
        raise ValueError("P definition 'inflight-new+new' needs the router counter "
                         "router_inflight_new_tokens (new tokens of in-flight requests)")
    return np.maximum(_i64(v.router_inflight_new_tokens), 0) + new_tokens(v)


#: ``P`` per definition: view -> int64 tokens, the view's shape.
P_SIGNALS: dict[PDefinition, Callable[[Any], np.ndarray]] = {
    PDefinition.UNCACHED: lambda v: _i64(v.uncached),
    PDefinition.QUEUED_PLUS_UNCACHED: lambda v: _i64(v.queued) + _i64(v.uncached),
    PDefinition.ROUTER_QUEUED_PLUS_NEW: lambda v: router_queued(v) + new_tokens(v),
    PDefinition.UNCACHED_FULL_BLOCKS: _full_blocks_uncached,
    PDefinition.PREFILL_BLOCKS: _prefill_blocks,
    PDefinition.INFLIGHT_NEW_PLUS_NEW: _inflight_new,
}

#: ``B`` per definition: view -> int64 requests, the view's shape.
B_SIGNALS: dict[BDefinition, Callable[[Any], np.ndarray]] = {
    BDefinition.RUNNING: lambda v: _i64(v.running),
    BDefinition.IN_FLIGHT: lambda v: _i64(v.running) + _i64(v.waiting),
    BDefinition.ROUTER_IN_FLIGHT: router_inflight,
    BDefinition.DECODE_BLOCKS: lambda v: np.maximum(_i64(v.router_all_tokens), 0) // _block(v),
}


def prefill_signal(view: Any, definition: PDefinition | str) -> np.ndarray:
    """``P`` (int64 tokens, the view's shape) under a :class:`PDefinition` (or its value)."""
    return P_SIGNALS[PDefinition(definition)](view)


def batch_signal(view: Any, definition: BDefinition | str) -> np.ndarray:
    """``B`` (int64 requests, the view's shape) under a :class:`BDefinition` (or its value)."""
    return B_SIGNALS[BDefinition(definition)](view)


def score_inputs(view: Any, definition: ScoreDefinition) -> tuple[np.ndarray, np.ndarray]:
    """``(P, B)`` of a view under a score definition.

    Parameters
    ----------
    view : object
        Router signals as attributes (see the module docstring), arrays of shape (N,) for
        one decision or (D, N) for many.
    definition : ScoreDefinition
        Which ``P`` and ``B`` definitions to use (the offsets are not applied here).

    Returns
    -------
    (np.ndarray, np.ndarray)
        ``P`` in tokens and ``B`` in requests, int64, the view's shape.
    """
    return (
        P_SIGNALS[definition.p_definition](view),
        B_SIGNALS[definition.b_definition](view),
    )


# ---------------------------------------------------------------------------- one decision
# The same definitions over Python ints for one decision of a few instances: numpy's per-call
# cost dominates arrays of ~8 elements, and a policy is asked once per routed request. Each
# row function equals its array function above (``score_row(v, d)`` is
# ``tuple(a.tolist() for a in score_inputs(v, d))``; tests/test_signals_row.py checks every
# definition against it); :func:`score_row` falls back to the array functions for any view
# that is not one decision of integer signals.


def _ints(x: Any) -> list[int] | None:
    """A 1-d integer array (or list of ints) as a list of Python ints; ``None`` otherwise."""
    if type(x) is np.ndarray:
        return x.tolist() if x.ndim == 1 and x.dtype.kind in "iu" else None
    if type(x) is list and all(type(e) is int for e in x):
        return x
    return None


def _row_new(v: Any) -> list[int] | None:
    """:func:`new_tokens` of one decision."""
    h = _ints(v.hit_blocks)
    t = v.input_tokens
    if h is None or type(t) is not int:
        return None
    s = _block(v)
    return [max(t - (k if k > 0 else 0) * s, 0) for k in h]


def _row_clamped(x: Any) -> list[int] | None:
    a = _ints(x)
    return None if a is None else [e if e > 0 else 0 for e in a]


def _row_add(a: list[int] | None, b: list[int] | None) -> list[int] | None:
    return None if a is None or b is None else [x + y for x, y in zip(a, b, strict=True)]


def _row_full_blocks_uncached(v: Any) -> list[int] | None:
    h = _ints(v.hit_blocks)
    t = v.input_tokens
    if h is None or type(t) is not int:
        return None
    s = _block(v)
    total = t // s
    return [(total - min(k if k > 0 else 0, total)) * s for k in h]


def _row_prefill_blocks(v: Any) -> list[Fraction] | None:
    tokens = _row_add(_row_clamped(v.router_queued), _row_new(v))
    if tokens is None:
        return None
    s = _block(v)
    return [Fraction(t, s) for t in tokens]


def _row_inflight_new(v: Any) -> list[int] | None:
    if getattr(v, "router_inflight_new_tokens", None) is None:
        return None  # the array function raises the error
    return _row_add(_row_clamped(v.router_inflight_new_tokens), _row_new(v))


def _row_decode_blocks(v: Any) -> list[int] | None:
    a = _row_clamped(v.router_all_tokens)
    if a is None:
        return None
    s = _block(v)
    return [e // s for e in a]


_P_ROW: dict[PDefinition, Callable[[Any], list | None]] = {
    PDefinition.UNCACHED: lambda v: _ints(v.uncached),
    PDefinition.QUEUED_PLUS_UNCACHED: lambda v: _row_add(_ints(v.queued), _ints(v.uncached)),
    PDefinition.ROUTER_QUEUED_PLUS_NEW: lambda v: _row_add(_row_clamped(v.router_queued),
                                                           _row_new(v)),
    PDefinition.UNCACHED_FULL_BLOCKS: _row_full_blocks_uncached,
    PDefinition.PREFILL_BLOCKS: _row_prefill_blocks,
    PDefinition.INFLIGHT_NEW_PLUS_NEW: _row_inflight_new,
}

_B_ROW: dict[BDefinition, Callable[[Any], list | None]] = {
    BDefinition.RUNNING: lambda v: _ints(v.running),
    BDefinition.IN_FLIGHT: lambda v: _row_add(_ints(v.running), _ints(v.waiting)),
    BDefinition.ROUTER_IN_FLIGHT: lambda v: _row_clamped(v.router_inflight),
    BDefinition.DECODE_BLOCKS: _row_decode_blocks,
}


def prefill_row(view: Any, definition: PDefinition) -> list:
    """``P`` of one decision as a list (Python ints, or Fractions for ``prefill-blocks``):
    ``prefill_signal(view, definition).tolist()``, without numpy for a decision view."""
    row = _P_ROW.get(definition)  # a definition without a row function: the array one
    out = None if row is None else row(view)
    return P_SIGNALS[definition](view).tolist() if out is None else out


def batch_row(view: Any, definition: BDefinition) -> list[int]:
    """``B`` of one decision as a list of Python ints: ``batch_signal(view, definition).tolist()``."""
    row = _B_ROW.get(definition)
    out = None if row is None else row(view)
    return B_SIGNALS[definition](view).tolist() if out is None else out


def score_row(view: Any, definition: ScoreDefinition) -> tuple[list, list[int]]:
    """``(P, B)`` of one decision as lists: the values of :func:`score_inputs`, as Python
    numbers (tokens, requests).

    Parameters
    ----------
    view : object
        One decision's signals (a :class:`~lmetric_theory.policies.DecisionView`); any
        other view goes through :func:`score_inputs`.
    definition : ScoreDefinition
        Which ``P`` and ``B`` definitions to use.
    """
    return (prefill_row(view, definition.p_definition),
            batch_row(view, definition.b_definition))
