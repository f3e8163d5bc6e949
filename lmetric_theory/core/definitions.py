"""Which quantities the scores are built from: the P and B definitions and the offsets.

The algebra in :mod:`lmetric_theory.theory` holds for any nonnegative ``P`` and ``B``;
which concrete definition a simulator run, an audit or a detector verdict used is
metadata, recorded with every result through :class:`ScoreDefinition`.

This module is deliberately tiny and dependency-free so every layer can import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction

__all__ = [
    "LMETRIC_VARIANTS",
    "LMetricVariant",
    "DEFAULT_B0",
    "DEFAULT_P0",
    "BDefinition",
    "PDefinition",
    "ScoreDefinition",
]

#: Default prefill offset ``p0`` (tokens). Public ports of LMetric use 0.
DEFAULT_P0: int = 0
#: Default batch offset ``b0`` (requests). Public ports use 1 ("BS + 1").
DEFAULT_B0: int = 1


class PDefinition(StrEnum):
    """What ``P_i`` (prefill tokens if the request is routed to instance ``i``) counts."""

    #: The request's uncached tokens on ``i``: prompt length minus the cached prefix on ``i``.
    UNCACHED = "uncached"
    #: Prefill tokens already queued (not yet computed) on ``i`` as the engine reports them,
    #: plus the request's uncached tokens on ``i``.
    QUEUED_PLUS_UNCACHED = "queued+uncached"
    #: The paper's router (``lmetric-q``): router-counted queued prefill tokens plus the
    #: request's new tokens ``T - hit_blocks * block_size`` (hits in whole blocks).
    ROUTER_QUEUED_PLUS_NEW = "router-queued+new"
    #: llm-d's scorer: ``(floor(T / block_size) - hit_blocks) * block_size`` (full prompt
    #: blocks not cached, in tokens; the partial tail block is not counted).
    UNCACHED_FULL_BLOCKS = "uncached-full-blocks"
    #: Dynamo's port, in blocks: ``(router_queued + new tokens) / block_size`` (active
    #: prefill plus the request's uncached tokens, exact).
    PREFILL_BLOCKS = "prefill-blocks"
    #: The SGLang-router fork: router-counted new tokens of the in-flight requests (released
    #: at completion, not at prefill) plus the request's new tokens.
    INFLIGHT_NEW_PLUS_NEW = "inflight-new+new"


class BDefinition(StrEnum):
    """What ``B_i`` (batch size of instance ``i``) counts."""

    #: Requests currently running (being decoded or prefilled) on ``i``.
    RUNNING = "running"
    #: Requests in flight on ``i`` as the engine reports them: running plus waiting.
    IN_FLIGHT = "in-flight"
    #: Requests in flight on ``i`` as the router counts them (+1 at dispatch, -1 at finish):
    #: the paper's ``bs`` (running + queued), llm-d's and the SGLang fork's in-flight count.
    ROUTER_IN_FLIGHT = "router-in-flight"
    #: Dynamo's port: ``floor(router_all_tokens / block_size)`` (KV blocks of the in-flight
    #: requests), blocks.
    DECODE_BLOCKS = "decode-blocks"


@dataclass(frozen=True, slots=True)
class ScoreDefinition:
    """The settings that turn an instance's state into ``P_i``, ``B_i`` and the scores.

    Attributes
    ----------
    p_definition : PDefinition
        What ``P_i`` counts (tokens).
    b_definition : BDefinition
        What ``B_i`` counts (requests).
    p0 : int or Fraction
        Prefill offset, tokens; the product score is ``(P_i + p0) * (B_i + b0)``.
    b0 : int or Fraction
        Batch offset, requests.
    """

    p_definition: PDefinition = PDefinition.ROUTER_QUEUED_PLUS_NEW
    b_definition: BDefinition = BDefinition.ROUTER_IN_FLIGHT
    p0: int | Fraction = DEFAULT_P0
    b0: int | Fraction = DEFAULT_B0

    def __post_init__(self) -> None:
        # Accept the plain strings too ("uncached", "in-flight", ...); reject anything else.
        for name, enum in (("p_definition", PDefinition), ("b_definition", BDefinition)):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, enum(value))
            except ValueError:
                valid = ", ".join(repr(m.value) for m in enum)
                raise ValueError(f"{name}: unknown value {value!r}; valid: {valid}") from None
        for name in ("p0", "b0"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | Fraction):
                raise ValueError(
                    f"{name}: offsets must be int or Fraction (exact), got {value!r}"
                )

    def as_dict(self) -> dict[str, str]:
        """JSON-ready metadata: definitions by name, offsets as exact strings."""
        return {
            "P_definition": self.p_definition.value,
            "B_definition": self.b_definition.value,
            "p_0": str(self.p0),
            "b_0": str(self.b0),
        }


@dataclass(frozen=True, slots=True)
class LMetricVariant:
    """One implementation's LMetric definition: ``P``, ``B``, its own tie rule, what it is
    and where it comes from.

    Attributes
    ----------
    name : str
        Variant name (``lmetric:variant=NAME``).
    p_definition, b_definition : str
        :class:`PDefinition` and :class:`BDefinition` values.
    tie : str
        The implementation's tie rule: ``lowest`` (first minimum) or ``random``.
    formula : str
        The score, in words.
    source : str
        Repository and file it follows (``docs/policies.md`` cites them).
    signals : tuple of str
        Router-view attributes read.
    """

    name: str
    p_definition: str
    b_definition: str
    tie: str
    formula: str
    source: str
    signals: tuple[str, ...]


_PAPER = "blitz-serving/blitz-router"

#: The one table of LMetric variants: ``lmetric:variant=NAME`` -> definitions, tie rule and
#: sources. ``paper`` is the default: the authors' router, policy ``lmetric-q``.
LMETRIC_VARIANTS: dict[str, LMetricVariant] = {v.name: v for v in (
    LMetricVariant(
        "paper", PDefinition.ROUTER_QUEUED_PLUS_NEW.value, BDefinition.ROUTER_IN_FLIGHT.value,
        "lowest",
        "argmin (queued_tokens + new_tokens) * (bs + 1)",
        f"{_PAPER}: docs/dsl/policies.md (lmetric-q), router/src/policies/lmetric.rs, "
        "docs/dsl/schema.md (prefill_tokens, new_tokens, bs)",
        ("router_queued", "hit_blocks", "block_size", "input_tokens", "router_inflight"),
    ),
    LMetricVariant(
        "llm-d", PDefinition.UNCACHED_FULL_BLOCKS.value, BDefinition.ROUTER_IN_FLIGHT.value,
        "random",
        "argmin (floor(T / block_size) - hit_blocks) * block_size * (in-flight + 1)",
        "llm-d/llm-d-router PR 2351: pkg/epp/framework/plugins/scheduling/scorer/lmetric/lmetric.go",
        ("hit_blocks", "block_size", "input_tokens", "router_inflight"),
    ),
    LMetricVariant(
        "dynamo", PDefinition.PREFILL_BLOCKS.value, BDefinition.DECODE_BLOCKS.value, "random",
        "argmin ((queued_tokens + new_tokens) / block_size) * (floor(all_tokens / block_size) + 1)",
        "ai-dynamo/dynamo PR 11028 (router_selection_policy=lmetric: "
        "adjusted_prefill_blocks * (decode_blocks + 1))",
        ("router_queued", "hit_blocks", "block_size", "input_tokens", "router_all_tokens"),
    ),
    LMetricVariant(
        "sglang-fork", PDefinition.INFLIGHT_NEW_PLUS_NEW.value,
        BDefinition.ROUTER_IN_FLIGHT.value, "lowest",
        "argmin (inflight_new_tokens + new_tokens) * (in-flight + 1), "
        "queued tokens released at completion",
        "wall96/sglang-router-simple-is-better: sgl-model-gateway/src/policies/lmetric.rs",
        ("router_inflight_new_tokens", "hit_blocks", "block_size", "input_tokens",
         "router_inflight"),
    ),
    # This project's first reading; no public implementation uses it.
    LMetricVariant(
        "legacy", PDefinition.UNCACHED.value, BDefinition.RUNNING.value, "lowest",
        "argmin uncached * (running + 1) - used by no implementation",
        "this project's first reading; no public implementation",
        ("uncached", "running"),
    ),
)}
