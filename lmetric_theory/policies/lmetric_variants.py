"""The LMetric score as each implementation defines it: ``(P_i + p0) * (B_i + b0)``.

A variant names a ``P`` and a ``B`` definition (rows of
:data:`lmetric_theory.core.definitions.LMETRIC_VARIANTS`, the one table of variants, with
what each one is and where it comes from; computed by
:func:`lmetric_theory.core.signals.score_inputs`) and the implementation's own tie rule; this
module re-exports the table and scores a view by variant. ``docs/policies.md`` cites the files.

- ``paper``: ``P`` = queued_tokens + new_tokens, ``B`` = router bs (running + queued);
  ties to the lowest index.
- ``llm-d``: ``P`` = (floor(T / s) - hit_blocks) * s, ``B`` = router in-flight requests;
  random ties.
- ``dynamo``: ``P`` = (queued_tokens + new_tokens) / s (blocks), ``B`` = floor(all_tokens / s);
  random ties.
- ``sglang-fork``: ``P`` = new tokens of the in-flight requests (released at completion) +
  new_tokens, ``B`` = router in-flight requests; ties to the lowest index.
- ``legacy``: ``P`` = uncached, ``B`` = running (engine-reported); ties to the lowest index.
  This project's first reading; no implementation uses it.

``T`` is the prompt length, ``s`` the block size, ``new_tokens = max(T - hit_blocks * s, 0)``
(hits in whole blocks).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from lmetric_theory.core.definitions import LMETRIC_VARIANTS, LMetricVariant, ScoreDefinition
from lmetric_theory.core.kernel import product_scores_exact
from lmetric_theory.core.signals import score_inputs

__all__ = [
    "LMETRIC_VARIANTS",
    "LMetricVariant",
    "VARIANT_NAMES",
    "variant_definition",
    "variant_scores",
    "variant_signals",
]

#: Variant names, in table order.
VARIANT_NAMES: tuple[str, ...] = tuple(LMETRIC_VARIANTS)


def _variant(name: str) -> LMetricVariant:
    try:
        return LMETRIC_VARIANTS[name]
    except KeyError:
        raise ValueError(
            f"unknown lmetric variant {name!r}; valid variants: {', '.join(VARIANT_NAMES)}"
        ) from None


def variant_definition(name: str, p0: int | Fraction = 0, b0: int | Fraction = 1) -> ScoreDefinition:
    """The :class:`ScoreDefinition` of variant ``name`` with offsets ``p0``, ``b0``."""
    v = _variant(name)
    return ScoreDefinition(v.p_definition, v.b_definition, p0, b0)


def variant_signals(name: str, view: Any) -> tuple[list, list]:
    """``(P, B)`` of variant ``name`` for one decision, as exact Python numbers, shape (N,)."""
    P, B = score_inputs(view, variant_definition(name))
    return P.tolist(), B.tolist()


def variant_scores(name: str, view: Any, p0: int | Fraction = 0,
                   b0: int | Fraction = 1) -> list:
    """``(P_i + p0) * (B_i + b0)`` of variant ``name`` (exact), shape (N,)."""
    P, B = variant_signals(name, view)
    return product_scores_exact(P, B, p0, b0)
