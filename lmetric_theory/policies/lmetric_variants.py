"""The LMetric score as each implementation defines it: ``(P_i + p0) * (B_i + b0)``.

A variant is a pair of signal functions, ``P`` and ``B``, read from the decision view; the
score and the argmin are the LMetric policy's (``p0 = 0``, ``b0 = 1`` in every implementation
below). ``docs/policies.md`` cites the file each variant follows.

- ``paper``: ``P`` = queued_tokens + new_tokens, ``B`` = router bs (running + queued);
  ties to the lowest index.
- ``llm-d``: ``P`` = (floor(T / s) - hit_blocks) * s, ``B`` = router in-flight requests;
  random ties.
- ``dynamo``: ``P`` = (queued_tokens + new_tokens) / s (blocks), ``B`` = floor(all_tokens / s);
  random ties.
- ``sglang-fork``: ``P`` = new tokens of the in-flight requests (released at completion) +
  new_tokens, ``B`` = router in-flight requests; ties to the lowest index.
- ``legacy``: ``P`` = uncached (``view.uncached``), ``B`` = running (engine-reported); ties to the
  lowest index.

``T`` is the prompt length, ``s`` the block size, ``new_tokens = max(T - hit_blocks * s, 0)``
(hits in whole blocks). ``legacy`` is the pair this project used first; no implementation uses
it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from lmetric_theory.policies.baselines import (
    batch_size,
    block_size,
    decode_blocks,
    hit_blocks,
    new_tokens,
    prefill_tokens,
)

__all__ = [
    "LMETRIC_VARIANTS",
    "LMetricVariant",
    "VARIANT_NAMES",
    "variant_scores",
    "variant_signals",
]

Signal = Callable[[Any], list]


@dataclass(frozen=True, slots=True)
class LMetricVariant:
    """One implementation's definition of ``P`` and ``B``.

    Attributes
    ----------
    name : str
        Variant name (``lmetric:variant=NAME``).
    prefill : callable
        ``view -> list`` of ``P_i`` (tokens, or blocks for ``dynamo``), exact ints/Fractions.
    batch : callable
        ``view -> list`` of ``B_i`` (requests, or blocks for ``dynamo``), ints.
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
    prefill: Signal
    batch: Signal
    tie: str
    formula: str
    source: str
    signals: tuple[str, ...]


def _llmd_prefill(view: Any) -> list[int]:
    """``(TotalBlocks - MatchBlocks) * blockSize``: full prompt blocks not cached, in tokens
    (the partial tail block is not counted, as llm-d's scorer does)."""
    s = block_size(view)
    total = int(view.input_tokens) // s
    return [(total - min(h, total)) * s for h in hit_blocks(view)]


def _dynamo_prefill(view: Any) -> list[Fraction]:
    """``(active prefill tokens + new tokens) / block_size``, blocks (exact)."""
    s = block_size(view)
    return [Fraction(p, s) for p in prefill_tokens(view)]


def _sglang_prefill(view: Any) -> list[int]:
    """Router-counted new tokens of in-flight requests (released at completion) + new tokens."""
    q = np.asarray(view.router_inflight_new_tokens).astype(np.int64).tolist()
    return [max(a, 0) + n for a, n in zip(q, new_tokens(view), strict=True)]


def _legacy_prefill(view: Any) -> list[int]:
    return np.asarray(view.uncached).astype(np.int64).tolist()


def _legacy_batch(view: Any) -> list[int]:
    return np.asarray(view.running).astype(np.int64).tolist()


_PAPER = "blitz-serving/blitz-router"

#: Every variant by name.
LMETRIC_VARIANTS: dict[str, LMetricVariant] = {
    v.name: v
    for v in (
        LMetricVariant(
            "paper", prefill_tokens, batch_size, "lowest",
            "argmin (queued_tokens + new_tokens) * (bs + 1)",
            f"{_PAPER}: docs/dsl/policies.md (lmetric-q), router/src/policies/lmetric.rs, "
            "docs/dsl/schema.md (prefill_tokens, new_tokens, bs)",
            ("router_queued", "hit_blocks", "block_size", "input_tokens", "router_inflight"),
        ),
        LMetricVariant(
            "llm-d", _llmd_prefill, batch_size, "random",
            "argmin (floor(T / block_size) - hit_blocks) * block_size * (in-flight + 1)",
            "llm-d/llm-d-router PR 2351: "
            "pkg/epp/framework/plugins/scheduling/scorer/lmetric/lmetric.go",
            ("hit_blocks", "block_size", "input_tokens", "router_inflight"),
        ),
        LMetricVariant(
            "dynamo", _dynamo_prefill, decode_blocks, "random",
            "argmin ((queued_tokens + new_tokens) / block_size) * (floor(all_tokens / block_size) + 1)",
            "ai-dynamo/dynamo PR 11028 (router_selection_policy=lmetric: "
            "adjusted_prefill_blocks * (decode_blocks + 1))",
            ("router_queued", "hit_blocks", "block_size", "input_tokens", "router_all_tokens"),
        ),
        LMetricVariant(
            "sglang-fork", _sglang_prefill, batch_size, "lowest",
            "argmin (inflight_new_tokens + new_tokens) * (in-flight + 1), "
            "queued tokens released at completion",
            "wall96/sglang-router-simple-is-better: sgl-model-gateway/src/policies/lmetric.rs",
            ("router_inflight_new_tokens", "hit_blocks", "block_size", "input_tokens",
             "router_inflight"),
        ),
        LMetricVariant(
            "legacy", _legacy_prefill, _legacy_batch, "lowest",
            "argmin uncached * (running + 1) - used by no implementation",
            "this project's first reading; no public implementation",
            ("uncached", "running"),
        ),
    )
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


def variant_signals(name: str, view: Any) -> tuple[list, list]:
    """``(P, B)`` of variant ``name`` for one decision, as exact Python numbers, shape (N,)."""
    v = _variant(name)
    return v.prefill(view), v.batch(view)


def variant_scores(name: str, view: Any, p0: int | Fraction = 0,
                   b0: int | Fraction = 1) -> list:
    """``(P_i + p0) * (B_i + b0)`` of variant ``name`` (exact), shape (N,)."""
    P, B = variant_signals(name, view)
    return [(p + p0) * (b + b0) for p, b in zip(P, B, strict=True)]
