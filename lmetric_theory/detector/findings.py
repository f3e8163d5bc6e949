"""What the detector reports (:class:`Finding`) and what to do about it (:class:`Mitigation`)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum

__all__ = [
    "FINDING_KINDS",
    "ROUTER_STATE_KINDS",
    "DEGENERATE_KINDS",
    "Finding",
    "Mitigation",
    "MitigationKind",
    "Severity",
]

#: Every finding kind, in reporting order.
FINDING_KINDS: tuple[str, ...] = (
    "disagreement",
    "fragile",
    "zero_prefill",
    "idle_tie",
    "exact_tie",
    "extreme_operating_point",
)
#: Findings about the router's state (replicas, lag, index), from
#: :mod:`lmetric_theory.detector.router_state`: computed over a stream of decisions, not
#: from one snapshot (results (m)-(o) of ``lmetric-theory derive``).
ROUTER_STATE_KINDS: tuple[str, ...] = ("replica_skew", "herding", "stale_index")
#: Kinds where the product score degenerates (counted under "degenerate" in audits).
DEGENERATE_KINDS: tuple[str, ...] = ("zero_prefill", "idle_tie", "exact_tie")


class Severity(IntEnum):
    """How much a finding matters; ordered, so ``max()`` gives the worst."""

    INFO = 1
    WARNING = 2
    CRITICAL = 3

    def __str__(self) -> str:
        return self.name.lower()


class MitigationKind(StrEnum):
    """The mitigations the theory supports."""

    NONE = "none"
    #: Add one KV block of tokens to ``p0``: ``P + p0 > 0`` everywhere, so the batch
    #: term can no longer vanish (removes zero-prefill hot-spots).
    PREFILL_BLOCK = "prefill_block"
    #: Raise ``b0``: ``B + b0 > 0`` everywhere (removes idle ties).
    BATCH_OFFSET = "batch_offset"
    #: Among instances tied on the product score, take the smallest batch.
    TIE_BREAK_LOAD = "tie_break_load"
    #: Among instances tied on the product score, take the best cache hit (fewest
    #: uncached tokens; fewest prefill tokens when the split is unknown).
    TIE_BREAK_CACHE = "tie_break_cache"
    #: Route this decision by the linear reference instead.
    FALLBACK_REFERENCE = "fallback_reference"
    #: Exclude instances whose batch is at or above a cap, then take the product argmin.
    LOAD_CAP = "load_cap"
    #: Score the replica's counters scaled by the replica count ``R`` (value), as synced
    #: counters would read: the global ordering again (result (m)).
    COUNTER_SYNC = "counter_sync"
    #: Divide both offsets by the replica count ``R`` (value): ``p0/R``, ``b0/R`` restore
    #: the global ordering when the request adds no prefill of its own (result (m)).
    SCALE_BATCH_OFFSET = "scale_batch_offset"
    #: Pick uniformly among the instances whose product score is within the relative
    #: tolerance (value) of the best (power-of-d on near-ties): replicas deciding from the
    #: same state stop herding onto one instance (result (n)).
    RANDOM_NEAR_TIES = "random_near_ties"
    #: Shorten the approximate index's TTL to the value (s), so it stops predicting blocks
    #: the engine has evicted (result (o)); advisory: the decision itself is unchanged.
    SHORTER_TTL = "shorter_ttl"

    def __str__(self) -> str:
        return self.value


_NEEDS_VALUE = {
    MitigationKind.PREFILL_BLOCK: "tokens",
    MitigationKind.BATCH_OFFSET: "batch slots",
    MitigationKind.LOAD_CAP: "requests",
    MitigationKind.COUNTER_SYNC: "router replicas",
    MitigationKind.SCALE_BATCH_OFFSET: "router replicas",
    MitigationKind.RANDOM_NEAR_TIES: "relative score tolerance",
    MitigationKind.SHORTER_TTL: "seconds",
}


@dataclass(frozen=True, slots=True)
class Mitigation:
    """One mitigation with its parameter.

    Parameters
    ----------
    kind : MitigationKind or str
        Which mitigation.
    value : float, optional
        ``PREFILL_BLOCK``: tokens added to ``p0`` (one KV block, e.g. 16);
        ``BATCH_OFFSET``: slots added to ``b0``; ``LOAD_CAP``: batch-size cap
        (requests). Unused by the others.
    """

    kind: MitigationKind
    value: float | None = None

    def __post_init__(self) -> None:
        try:
            kind = MitigationKind(self.kind)
        except ValueError:
            valid = ", ".join(k.value for k in MitigationKind)
            raise ValueError(f"mitigation: unknown kind {self.kind!r}; valid: {valid}") from None
        object.__setattr__(self, "kind", kind)
        if kind in _NEEDS_VALUE:
            v = self.value
            if v is None or not v == v or v in (float("inf"), float("-inf")) or v <= 0:
                raise ValueError(
                    f"mitigation: {kind.value} needs a positive finite value "
                    f"({_NEEDS_VALUE[kind]}), got {v!r}"
                )

    @property
    def message(self) -> str:
        """One sentence saying what the mitigation does."""
        k, v = self.kind, self.value
        if k is MitigationKind.PREFILL_BLOCK:
            return f"add a prefill offset of one block (p0 += {v:g} tokens)"
        if k is MitigationKind.BATCH_OFFSET:
            return f"add a batch offset (b0 += {v:g})"
        if k is MitigationKind.TIE_BREAK_LOAD:
            return "break product-score ties by load (smallest batch)"
        if k is MitigationKind.TIE_BREAK_CACHE:
            return "break product-score ties by cache hit (fewest uncached tokens)"
        if k is MitigationKind.FALLBACK_REFERENCE:
            return "fall back to the linear reference for this decision"
        if k is MitigationKind.LOAD_CAP:
            return f"cap the load: skip instances with batch >= {v:g}"
        if k is MitigationKind.COUNTER_SYNC:
            return f"sync the replicas' counters (or scale this replica's by R = {v:g})"
        if k is MitigationKind.SCALE_BATCH_OFFSET:
            return f"scale the offsets with the replica count (b0/{v:g}, p0/{v:g})"
        if k is MitigationKind.RANDOM_NEAR_TIES:
            return (f"pick at random among instances within {v:g} (relative) of the best "
                    "product score (power-of-d on near-ties)")
        if k is MitigationKind.SHORTER_TTL:
            return f"shorten the approximate index's TTL to {v:g} s (or use KV events)"
        return "no mitigation"

    @classmethod
    def none(cls) -> Mitigation:
        return cls(MitigationKind.NONE)

    @classmethod
    def prefill_block(cls, block_tokens: float = 16) -> Mitigation:
        return cls(MitigationKind.PREFILL_BLOCK, block_tokens)

    @classmethod
    def batch_offset(cls, slots: float = 1) -> Mitigation:
        return cls(MitigationKind.BATCH_OFFSET, slots)

    @classmethod
    def tie_break(cls, by: str = "load") -> Mitigation:
        if by == "load":
            return cls(MitigationKind.TIE_BREAK_LOAD)
        if by == "cache":
            return cls(MitigationKind.TIE_BREAK_CACHE)
        raise ValueError(f"tie_break: unknown {by!r}; valid: 'load', 'cache'")

    @classmethod
    def fallback(cls) -> Mitigation:
        return cls(MitigationKind.FALLBACK_REFERENCE)

    @classmethod
    def load_cap(cls, cap: float) -> Mitigation:
        return cls(MitigationKind.LOAD_CAP, cap)

    @classmethod
    def counter_sync(cls, replicas: float) -> Mitigation:
        return cls(MitigationKind.COUNTER_SYNC, replicas)

    @classmethod
    def scale_batch_offset(cls, replicas: float) -> Mitigation:
        return cls(MitigationKind.SCALE_BATCH_OFFSET, replicas)

    @classmethod
    def random_near_ties(cls, tolerance: float = 0.05) -> Mitigation:
        return cls(MitigationKind.RANDOM_NEAR_TIES, tolerance)

    @classmethod
    def shorter_ttl(cls, ttl_s: float) -> Mitigation:
        return cls(MitigationKind.SHORTER_TTL, ttl_s)


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing the detector found about a decision.

    Attributes
    ----------
    kind : str
        One of :data:`FINDING_KINDS`.
    severity : Severity
        ``INFO``, ``WARNING`` or ``CRITICAL``.
    message : str
        Human-readable explanation with the numbers.
    mitigation : Mitigation
        What the theory suggests doing about it.
    instances : tuple of int
        Instances the finding is about (indices into the snapshot).
    """

    kind: str
    severity: Severity
    message: str
    mitigation: Mitigation
    instances: tuple[int, ...] = ()
