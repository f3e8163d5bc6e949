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
    #: Prefill tokens already queued (not yet computed) on ``i`` plus the request's
    #: uncached tokens on ``i`` (one reading of the paper's section 5.1).
    QUEUED_PLUS_UNCACHED = "queued+uncached"


class BDefinition(StrEnum):
    """What ``B_i`` (batch size of instance ``i``) counts."""

    #: Requests currently running (being decoded or prefilled) on ``i``.
    RUNNING = "running"
    #: Requests in flight on ``i``: running plus waiting in its queue.
    IN_FLIGHT = "in-flight"


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

    p_definition: PDefinition = PDefinition.UNCACHED
    b_definition: BDefinition = BDefinition.RUNNING
    p0: int | Fraction = DEFAULT_P0
    b0: int | Fraction = DEFAULT_B0

    def __post_init__(self) -> None:
        # Accept the plain strings too ("uncached", "in-flight", ...); reject anything else.
        try:
            object.__setattr__(self, "p_definition", PDefinition(self.p_definition))
        except ValueError:
            valid = ", ".join(repr(m.value) for m in PDefinition)
            raise ValueError(
                f"p_definition: unknown value {self.p_definition!r}; valid: {valid}"
            ) from None
        try:
            object.__setattr__(self, "b_definition", BDefinition(self.b_definition))
        except ValueError:
            valid = ", ".join(repr(m.value) for m in BDefinition)
            raise ValueError(
                f"b_definition: unknown value {self.b_definition!r}; valid: {valid}"
            ) from None
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
