"""Router signals to the scores' inputs: ``(P, B)`` from an instance view and a definition.

A *view* is anything with the router's per-instance signals as attributes (duck-typed): the
policies' :class:`~lmetric_theory.policies.DecisionView` (arrays of shape (N,)), the
simulator's snapshot log (shape (D, N)), or any object with the same names. The signals a
definition reads:

- ``uncached`` - the request's uncached prompt tokens on each instance, tokens;
- ``queued`` - prefill tokens queued on each instance, tokens;
- ``running`` - running requests per instance;
- ``waiting`` - waiting requests per instance.

Each definition is one row of :data:`P_SIGNALS` or :data:`B_SIGNALS`; adding a definition
(a new :class:`~lmetric_theory.core.definitions.PDefinition` or ``BDefinition`` member) is
one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from lmetric_theory.core.definitions import BDefinition, PDefinition, ScoreDefinition

__all__ = ["B_SIGNALS", "P_SIGNALS", "batch_signal", "prefill_signal", "score_inputs"]


def _i64(x: Any) -> np.ndarray:
    return np.asarray(x).astype(np.int64)


#: ``P`` per definition: view -> int64 tokens, the view's shape.
P_SIGNALS: dict[PDefinition, Callable[[Any], np.ndarray]] = {
    PDefinition.UNCACHED: lambda v: _i64(v.uncached),
    PDefinition.QUEUED_PLUS_UNCACHED: lambda v: _i64(v.queued) + _i64(v.uncached),
}

#: ``B`` per definition: view -> int64 requests, the view's shape.
B_SIGNALS: dict[BDefinition, Callable[[Any], np.ndarray]] = {
    BDefinition.RUNNING: lambda v: _i64(v.running),
    BDefinition.IN_FLIGHT: lambda v: _i64(v.running) + _i64(v.waiting),
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
