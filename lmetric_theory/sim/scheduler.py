"""What the engine and the router need of an instance scheduler, and the router's counters.

Both fast-engine schedulers (:class:`~lmetric_theory.sim.paged.PagedScheduler`, scheduler
``vllm-v1``, and :class:`~lmetric_theory.sim.reserve.ReserveScheduler`, scheduler
``reserve``) satisfy :class:`Scheduler`; the engine (:mod:`.engine`) and the router view
(:mod:`.router`) use nothing else of them. :class:`RouterCounters` is the router's own
per-instance bookkeeping, fed by both fast-engine schedulers and by the vLLM engine
(:mod:`.vllm_engine`), so the three update it through the same five operations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Protocol, runtime_checkable

from lmetric_theory.sim.events import PlanKind

__all__ = ["PrefixCache", "RouterCounters", "Scheduler", "Signals"]

#: Engine-reported signals of one instance at one time: queued prefill tokens (tokens),
#: running requests, waiting requests, KV usage (fraction of capacity), and what
#: :meth:`Scheduler.kv_usage_at` needs to follow the KV usage inside a decode stretch
#: (``None`` outside one).
Signals = tuple[int, int, int, float, Any]


class RouterCounters:
    """The router's own counters, one entry per instance, as real routers keep them.

    Updated at dispatch and corrected by engine events; never delayed:

    - ``inflight``: +1 at dispatch, -1 when the request finishes (requests);
    - ``queued``: + the request's predicted new tokens at dispatch, corrected at its first
      admission to the real prefix hit, - the prefill tokens each iteration computes, never
      below 0 (tokens);
    - ``all_tokens``: + the prompt at dispatch, + each output token as reported, - prompt
      and output at finish (tokens);
    - ``inflight_new``: + the predicted new tokens at dispatch, - the same at finish
      (tokens);
    - ``blocks``: ``None``, or (when a policy reads ``router_active_prompt_blocks``) an
      :class:`~lmetric_theory.sim.active_blocks.ActivePromptBlocks`, fed at dispatch by the
      router and released at :meth:`finish` (Dynamo's unique active prompt blocks).

    Parameters
    ----------
    n : int
        Number of instances.
    """

    __slots__ = ("queued", "inflight", "all_tokens", "inflight_new", "blocks")

    def __init__(self, n: int) -> None:
        self.queued = [0] * n
        self.inflight = [0] * n
        self.all_tokens = [0] * n
        self.inflight_new = [0] * n
        self.blocks: Any = None

    def dispatch(self, i: int, prompt: int, new: int) -> None:
        """A request of ``prompt`` tokens, ``new`` of them predicted uncached, goes to ``i``."""
        self.inflight[i] += 1
        self.queued[i] += new
        self.all_tokens[i] += prompt
        self.inflight_new[i] += new

    def admit(self, i: int, correction: int) -> None:
        """A request's first admission on ``i``: its real new tokens differ from the predicted
        ones by ``correction`` tokens (clamped at 0)."""
        q = self.queued[i] + correction
        self.queued[i] = q if q > 0 else 0

    def prefill(self, i: int, tokens: int) -> None:
        """An iteration of ``i`` computed ``tokens`` prefill tokens (clamped at 0).

        Subtracting a step's chunks one by one with a clamp after each gives the same
        counter as subtracting their sum once (all chunks are >= 0).
        """
        q = self.queued[i] - tokens
        self.queued[i] = q if q > 0 else 0

    def emit(self, i: int, tokens: int) -> None:
        """``i`` reported ``tokens`` output tokens."""
        self.all_tokens[i] += tokens

    def finish(self, i: int, total: int, new: int, rid: int = -1) -> None:
        """Request ``rid`` of ``total`` tokens (prompt + output), ``new`` predicted new,
        finished (``rid`` releases its blocks when ``blocks`` is kept)."""
        self.inflight[i] -= 1
        self.all_tokens[i] -= total
        self.inflight_new[i] -= new
        if self.blocks is not None:
            self.blocks.remove(rid)

    def clone(self) -> RouterCounters:
        """Independent copy."""
        c = RouterCounters.__new__(RouterCounters)
        c.queued = self.queued.copy()
        c.inflight = self.inflight.copy()
        c.all_tokens = self.all_tokens.copy()
        c.inflight_new = self.inflight_new.copy()
        c.blocks = None if self.blocks is None else self.blocks.clone()
        return c

    def as_dict(self) -> dict[str, list[int]]:
        """``{"queued", "inflight", "all_tokens", "inflight_new"}``: copies of the lists."""
        return {"queued": list(self.queued), "inflight": list(self.inflight),
                "all_tokens": list(self.all_tokens), "inflight_new": list(self.inflight_new)}

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.queued, self.inflight, self.all_tokens, self.inflight_new, self.blocks)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.queued, self.inflight, self.all_tokens, self.inflight_new = state[:4]
        self.blocks = state[4] if len(state) > 4 else None


@runtime_checkable
class PrefixCache(Protocol):
    """An instance's prefix cache as the router's precise view reads it."""

    def hit(self, keys: list[int], ratio: int, limit: int) -> int:
        """Leading cached blocks of ``keys`` (``ratio`` engine blocks each), at most ``limit``."""
        ...


@runtime_checkable
class Scheduler(Protocol):
    """One serving instance's scheduler, as the engine and the router view drive it.

    Attributes
    ----------
    batches_arrivals : bool
        ``True``: an idle instance starts its next iteration after every arrival of the
        same instant is routed (vLLM's engine drains its input queue between steps), so a
        burst lands in one batch; ``False``: it starts at the first arrival.
    idx : int
        Instance index.
    version : int
        Number of the current plan (the engine drops iteration ends of older ones).
    plan : PlanKind
        What the instance is doing until ``plan_end``.
    plan_end : float
        End of the current plan, seconds.
    cache : PrefixCache
        The prefix cache (the router's precise view).
    queued : int
        Engine-reported queued prefill tokens, tokens.
    iterations, pf_total, dec_total, preemptions : int
        Iterations executed, prefill tokens computed, tokens produced, preemptions.
    """

    batches_arrivals: ClassVar[bool]
    idx: int
    version: int
    plan: PlanKind
    plan_end: float
    cache: PrefixCache
    queued: int
    iterations: int
    pf_total: int
    dec_total: int
    preemptions: int

    def enqueue(self, rid: int, est: int) -> None:
        """Routed request ``rid`` joins the waiting queue; ``est``: predicted new tokens."""
        ...

    def dispatch_estimate(self, rid: int, seen_uncached: int) -> int:
        """Predicted new tokens of ``rid`` on this instance, given the uncached tokens the
        router's view showed, tokens."""
        ...

    def cut(self, t: float) -> bool:
        """Shorten a decode stretch to the iterations started by ``t``; True if it changed."""
        ...

    def plan_next(self, t: float) -> bool:
        """Plan the iteration(s) starting at ``t``; False when there is nothing to do."""
        ...

    def finish_plan(self) -> None:
        """Apply the plan that ends at ``plan_end`` (the instance is then idle)."""
        ...

    def sync(self, t: float) -> None:
        """Bring a decode stretch's state up to ``t`` (before the router reads it)."""
        ...

    def alloc_events(self, t: float, stamp: Callable[[float], None]) -> None:
        """Apply a decode stretch's block allocations up to ``t``, calling ``stamp(s)`` after
        the block changes of the iteration started at ``s`` (a lagged KV event stream)."""
        ...

    def load(self) -> tuple[int, int, int, float]:
        """Current queued prefill tokens, running and waiting requests, KV usage fraction."""
        ...

    def signals(self) -> Signals:
        """The engine signals now, for the router's delayed view."""
        ...

    def kv_usage_at(self, stretch: Any, t: float) -> float:
        """KV usage at ``t`` inside a decode stretch recorded by :meth:`signals`."""
        ...

    def peak_kv_tokens(self) -> int:
        """Highest KV occupancy so far, tokens."""
        ...

    def clone(self, req: Any, counters: RouterCounters) -> Scheduler:
        """Independent copy bound to a fork's request table and router counters."""
        ...

    def check(self) -> None:
        """Assert the KV and request bookkeeping (``AssertionError`` on a breach)."""
        ...
