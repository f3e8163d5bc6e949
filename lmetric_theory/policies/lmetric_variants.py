"""The LMetric score as each implementation defines it: ``(P_i + p0) * (B_i + b0)``.

A variant names a ``P`` and a ``B`` definition (rows of
:data:`lmetric_theory.core.definitions.LMETRIC_VARIANTS`, computed by
:func:`lmetric_theory.core.signals.score_inputs`) and the implementation's own tie rule; this
module adds what each one is and where it comes from. ``docs/policies.md`` cites the files.

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

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from lmetric_theory.core import definitions as defs
from lmetric_theory.core.definitions import ScoreDefinition
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


@dataclass(frozen=True, slots=True)
class LMetricVariant:
    """One implementation's definition of ``P`` and ``B``, with what it is and its source.

    Attributes
    ----------
    name : str
        Variant name (``lmetric:variant=NAME``).
    p_definition, b_definition : str
        :class:`~lmetric_theory.core.definitions.PDefinition` and ``BDefinition`` values.
    tie : str
        The implementation's own tie rule (``lowest`` or ``random``).
    formula : str
        The score, in words.
    source : str
        Repository and file it follows.
    signals : tuple of str
        View attributes read.
    """

    name: str
    p_definition: str
    b_definition: str
    tie: str
    formula: str
    source: str
    signals: tuple[str, ...]


_PAPER = "blitz-serving/blitz-router"
_ABOUT: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "paper": (
        "argmin (queued_tokens + new_tokens) * (bs + 1)",
        f"{_PAPER}: docs/dsl/policies.md (lmetric-q), router/src/policies/lmetric.rs, "
        "docs/dsl/schema.md (prefill_tokens, new_tokens, bs)",
        ("router_queued", "hit_blocks", "block_size", "input_tokens", "router_inflight"),
    ),
    "llm-d": (
        "argmin (floor(T / block_size) - hit_blocks) * block_size * (in-flight + 1)",
        "llm-d/llm-d-router PR 2351: pkg/epp/framework/plugins/scheduling/scorer/lmetric/lmetric.go",
        ("hit_blocks", "block_size", "input_tokens", "router_inflight"),
    ),
    "dynamo": (
        "argmin ((queued_tokens + new_tokens) / block_size) * (floor(all_tokens / block_size) + 1)",
        "ai-dynamo/dynamo PR 11028 (router_selection_policy=lmetric: "
        "adjusted_prefill_blocks * (decode_blocks + 1))",
        ("router_queued", "hit_blocks", "block_size", "input_tokens", "router_all_tokens"),
    ),
    "sglang-fork": (
        "argmin (inflight_new_tokens + new_tokens) * (in-flight + 1), "
        "queued tokens released at completion",
        "wall96/sglang-router-simple-is-better: sgl-model-gateway/src/policies/lmetric.rs",
        ("router_inflight_new_tokens", "hit_blocks", "block_size", "input_tokens",
         "router_inflight"),
    ),
    "legacy": (
        "argmin uncached * (running + 1) - used by no implementation",
        "this project's first reading; no public implementation",
        ("uncached", "running"),
    ),
}

#: Every variant by name.
LMETRIC_VARIANTS: dict[str, LMetricVariant] = {
    name: LMetricVariant(name, v.p_definition, v.b_definition, v.tie, *_ABOUT[name])
    for name, v in defs.LMETRIC_VARIANTS.items()
}

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
