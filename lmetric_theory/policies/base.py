"""Policy protocol, per-decision view, the spec lexer and the registry's table.

A policy is a small class with a frozen ``Params`` dataclass and a ``choose(view)`` method
returning an instance index. Policies are selected by a typed
:class:`~lmetric_theory.policies.spec.PolicySpec`, read once from ``NAME[:key=value,...]``
by :func:`lmetric_theory.policies.registry.parse_spec`;
:func:`lmetric_theory.policies.registry.make_policy` builds the policy. This module holds the
table itself (:func:`register_policy` adds to it) and imports no policy:
:func:`lmetric_theory.policies.registry.register_all` lists them all.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from lmetric_theory.core.definitions import DEFAULT_B0, DEFAULT_P0, ScoreDefinition
from lmetric_theory.core.kernel import TIE_RULES as KERNEL_TIE_RULES
from lmetric_theory.core.kernel import exact_number, pick_exact, pick_min

__all__ = [
    "DecisionView",
    "Policy",
    "TIE_RULES",
    "TUNED",
    "parse_policy_spec",
    "score_definition",
    "register_policy",
    "tie_field",
]

#: Tie-breaking rules every policy accepts through its ``tie`` parameter (the kernel's).
TIE_RULES: tuple[str, ...] = KERNEL_TIE_RULES


@dataclass(frozen=True, slots=True)
class DecisionView:
    """What a policy sees for one routing decision (one row of the snapshot log).

    Attributes
    ----------
    decision : int
        Decision index (0-based, in arrival order).
    time_s : float
        Decision time, seconds.
    input_tokens : int
        Prompt length of the request, tokens.
    uncached : np.ndarray, shape (N,), int32
        The request's uncached prompt tokens on each instance (router's cache view), tokens.
    queued : np.ndarray, shape (N,), int32
        Prefill tokens queued on each instance, tokens.
    running : np.ndarray, shape (N,), int32
        Running requests per instance.
    waiting : np.ndarray, shape (N,), int32
        Waiting requests per instance.
    kv_usage : np.ndarray, shape (N,), float32
        KV-cache usage fraction per instance.
    hit_blocks : np.ndarray, shape (N,), int32
        The request's prefix-cache hit per instance in the router's cache view, in engine
        blocks of ``block_size`` tokens (``uncached = input_tokens - hit_blocks * block_size``).
    block_size : int
        Engine KV block size, tokens.
    router_queued : np.ndarray, shape (N,), int32
        Prefill tokens the router itself counts as queued per instance: + the request's
        predicted new tokens at dispatch, - prefill tokens each engine step reports, corrected
        when the real prefix hit differs from the prediction, never below 0; tokens.
    router_inflight : np.ndarray, shape (N,), int32
        Requests the router dispatched to each instance and has not seen finish.
    router_all_tokens : np.ndarray, shape (N,), int32
        Tokens of the router's in-flight requests per instance: + prompt at dispatch, + each
        output token as reported, - (prompt + output) at finish; tokens. Dynamo's
        ``decode_blocks`` is ``router_all_tokens // block_size``.
    router_inflight_new_tokens : np.ndarray, shape (N,), int32
        Predicted new (uncached) tokens of the requests the router dispatched to each
        instance and has not seen finish: + the request's predicted new tokens at dispatch,
        - the same amount at finish, never changed at prefill (the SGLang fork's queued
        term, ``lmetric:variant=sglang-fork``); tokens.
    prefix_class : int
        The request's prefix class: the hash of its first prompt block (-1 when unknown or
        the prompt is empty). Used by the hot-class monitor (``guarded-lmetric``'s
        ``mitigation=hotspot``).
    router_active_prompt_blocks : np.ndarray or None, shape (N,), int64
        Dynamo's active sequence load: unique complete prompt blocks of the router's
        in-flight requests per instance (a block shared by several counts once; added at
        dispatch, released at finish), blocks. ``None`` unless the policy asks for it
        (:mod:`lmetric_theory.sim.active_blocks`).
    router_new_prompt_blocks : np.ndarray or None, shape (N,), int64
        The request's complete prompt blocks not already active on each instance, blocks
        (with ``router_active_prompt_blocks``).
    router_active_prefill_tokens : np.ndarray or None, shape (N,), int64
        Predicted new prompt tokens of the router's in-flight requests that have not yet
        produced their first token, per instance (Dynamo's active prefill tokens: added at
        dispatch, released at the first token), tokens (with ``router_active_prompt_blocks``).

    Notes
    -----
    The fields after ``kv_usage`` may be omitted by callers that build views by hand; they
    then default to ``hit_blocks = input_tokens - uncached`` with ``block_size = 1``,
    ``router_queued = queued``, ``router_inflight = running + waiting``,
    ``router_all_tokens = 0``, ``router_inflight_new_tokens = router_queued`` and
    ``prefix_class = -1``.
    """

    decision: int
    time_s: float
    input_tokens: int
    uncached: np.ndarray
    queued: np.ndarray
    running: np.ndarray
    waiting: np.ndarray
    kv_usage: np.ndarray
    hit_blocks: np.ndarray | None = None
    block_size: int = 1
    router_queued: np.ndarray | None = None
    router_inflight: np.ndarray | None = None
    router_all_tokens: np.ndarray | None = None
    prefix_class: int = -1
    router_inflight_new_tokens: np.ndarray | None = None
    router_active_prompt_blocks: np.ndarray | None = None
    router_new_prompt_blocks: np.ndarray | None = None
    router_active_prefill_tokens: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.hit_blocks is None:
            hit = (self.input_tokens - np.asarray(self.uncached, dtype=np.int64)) // max(self.block_size, 1)
            object.__setattr__(self, "hit_blocks", hit.astype(np.int32))
        if self.router_queued is None:
            object.__setattr__(self, "router_queued", np.asarray(self.queued, dtype=np.int32))
        if self.router_inflight is None:
            inflight = np.asarray(self.running, dtype=np.int32) + np.asarray(self.waiting, dtype=np.int32)
            object.__setattr__(self, "router_inflight", inflight)
        if self.router_all_tokens is None:
            object.__setattr__(self, "router_all_tokens", np.zeros(np.shape(self.uncached), np.int32))
        if self.router_inflight_new_tokens is None:
            object.__setattr__(self, "router_inflight_new_tokens",
                               np.asarray(self.router_queued, dtype=np.int32))


class Policy:
    """Base class: subclasses set ``name``, ``Params`` and implement :meth:`choose`.

    Parameters
    ----------
    params : Params
        Validated parameters (a frozen dataclass with a ``tie`` field).
    seed : int
        Seed of the policy's own random generator (used by random policies and ties).
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type] = type(None)
    #: The score or rule, in words (printed by ``simulate --list-policies``).
    formula: ClassVar[str] = ""
    #: Where the policy comes from (repository and file, or "this project").
    source: ClassVar[str] = ""

    def __init__(self, params: Any, seed: int = 0) -> None:
        self.params = params
        self.seed = int(seed)
        self.rng = np.random.default_rng([self.seed, 0x5EED])
        self._definition = score_definition(params)

    @property
    def spec(self) -> str:
        """Canonical spec string ``name:key=value,...`` (all parameters, each printed as
        :func:`~lmetric_theory.policies.spec.format_value` prints it)."""
        kv = ",".join(f"{f.name}={getattr(self.params, f.name)}" for f in dataclasses.fields(self.params))
        return f"{self.name}:{kv}" if kv else self.name

    @property
    def definition(self) -> ScoreDefinition:
        """The :class:`~lmetric_theory.core.definitions.ScoreDefinition` this policy scores
        ``P`` and ``B`` by: the product's own (``lmetric``, ``guarded-lmetric``), the linear
        score's definitions with the default offsets (``linear``, ``tuned-linear``), and the
        paper's defaults for a policy whose parameters name no ``P``/``B`` (the detector and
        the counterfactual study check such a policy's decisions against that score)."""
        return self._definition

    #: A blind policy reads nothing of the view but the instance count; the fast engine then
    #: calls :meth:`choose_blind` and builds no view (it still dispatches as for any view).
    blind: ClassVar[bool] = False

    def choose(self, view: DecisionView) -> int:
        """Instance index for the request described by ``view``."""
        raise NotImplementedError

    def choose_blind(self, n_instances: int) -> int:
        """A blind policy's choice among ``n_instances`` (the same as :meth:`choose` on any
        view of that many instances, with the same effect on the policy's state)."""
        raise NotImplementedError

    def bind_cluster(self, latency: Any, token_budget: int) -> None:
        """Called by the engines before routing with the cluster's latency model (an object
        with ``step_end``) and token budget per iteration, tokens; policies that predict
        latency (``predictor``) keep them, the others ignore them."""

    def _pick_exact(self, scores: list) -> int:
        """Argmin of a list of exact scores (ints / Fractions) under the tie rule."""
        return pick_exact(scores, self.params.tie, self.rng)

    def pick_min(self, scores: np.ndarray) -> int:
        """Argmin of ``scores`` (shape (N,)) under the configured tie rule."""
        return pick_min(scores, self.params.tie, self.rng)


_REGISTRY: dict[str, type[Policy]] = {}


def register_policy(cls: type[Policy]) -> type[Policy]:
    """Add a policy class to the registry (usable as a decorator).

    The class needs a non-empty ``name``, a frozen dataclass ``Params`` whose fields have
    defaults and include ``tie``, and a ``choose`` method. Re-registering a name replaces it.
    The built-in policies are registered by
    :func:`lmetric_theory.policies.registry.register_all`, not by importing their modules.
    """
    if not cls.name or not dataclasses.is_dataclass(cls.Params):
        raise ValueError(f"policy class {cls.__name__} needs a name and a dataclass Params")
    names = {f.name for f in dataclasses.fields(cls.Params)}
    if "tie" not in names:
        raise ValueError(f"policy {cls.name!r}: Params must have a 'tie' field")
    _REGISTRY[cls.name] = cls
    return cls


#: The value of a tunable parameter (field metadata ``tunable``) that asks for it to be tuned
#: on the workload before the run (e.g. ``dynamo:w=tuned``).
TUNED = "tuned"


def parse_policy_spec(spec: str) -> tuple[str, dict[str, str]]:
    """Split ``NAME[:key=value,...]`` into the name and raw string parameters."""
    name, _, rest = spec.strip().partition(":")
    name = name.strip()
    raw: dict[str, str] = {}
    if rest.strip():
        for item in rest.split(","):
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or not key:
                raise ValueError(f"policy spec {spec!r}: expected key=value, got {item!r}")
            if key in raw:
                raise ValueError(f"policy spec {spec!r}: parameter {key!r} given twice")
            raw[key] = value.strip()
    return name, raw


def score_definition(params: Any) -> ScoreDefinition:
    """The score definition a policy's parameters name: their ``P``, ``B`` (resolved from
    the variant), ``p0`` and ``b0`` where they have them, else the paper's defaults (exact
    offsets)."""
    d = ScoreDefinition()
    P = getattr(params, "P", "") or d.p_definition
    B = getattr(params, "B", "") or d.b_definition
    p0 = getattr(params, "p0", DEFAULT_P0)
    b0 = getattr(params, "b0", DEFAULT_B0)
    return ScoreDefinition(P, B, exact_number(p0), exact_number(b0))


def tie_field() -> Any:
    """The shared ``tie`` dataclass field (default ``lowest``)."""
    return dataclasses.field(default="lowest", metadata={"choices": TIE_RULES})
