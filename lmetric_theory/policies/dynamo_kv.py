"""``dynamo-kv``: Dynamo 1.6.1's KV router (its default worker selector) with its shipped defaults.

Per worker ``i`` (blocks of the engine's ``block_size`` ``s``, request of ``T`` prompt tokens):

    raw_i     = (active_prefill_tokens_i + T) / s                (0 without prefill tracking)
    decay_i   = 1 / (1 + overlap_score_credit_decay
                         * ((active_prefill_tokens_i - min_j active_prefill_tokens_j) / s)
                         / ceil(T / s))                          (1 when the decay is 0)
    credit_i  = overlap_score_credit * decay_i * overlap_blocks_i
    cost_i    = prefill_load_scale * max(0, raw_i - credit_i)
              + active_prompt_blocks_i + new_prompt_blocks_i  (see below)
              + decode_active_request_weight * active_requests_i

``router_temperature = 0`` (the default) picks the lowest cost, exact ties uniformly at random
(Dynamo's reservoir draw, here the policy's seeded generator); ``> 0`` draws worker ``i``
with probability proportional to ``exp(-(cost_i - min cost) / ((max cost - min cost) * t))``
(costs normalised to their range, uniform when all are equal), seeded.

Read from ai-dynamo/dynamo (reference only): ``lib/kv-router/src/scheduling/selector/default.rs``
(the logit and the softmax), ``lib/kv-router/src/scheduling/selector/mod.rs``
(``raw_prefill_blocks``, ``decode_cost_blocks``), ``lib/kv-router/src/sequences/``
(``single.rs``: ``ActiveSequences``; ``prompt_registry.rs``:
``WorkerLoadProjection::potential_decode_blocks``) and
the ``KvRouterConfig`` defaults of the ``ai-dynamo-runtime`` 1.6.1 wheel (``dynamo/_core.pyi``,
``KvRouterConfig.from_json``).

Signals of the router views (both engines): ``overlap_blocks`` = ``hit_blocks`` (the router's
cache view, engine blocks); ``active_prefill_tokens`` = ``router_active_prefill_tokens``
(predicted new tokens of in-flight requests, released at their first token, as Dynamo's
``mark_prefill_completed``); ``active_decode_blocks + floor(T / s)`` is Dynamo's
``potential_decode_blocks``: ``router_active_prompt_blocks`` (unique complete prompt blocks of
in-flight requests, a block shared by several counted once, released at finish; output
blocks not tracked, 1.6.1's default) + ``router_new_prompt_blocks`` (the request's complete
blocks not already active there, ``additional_active_blocks``). The engines keep these
(:mod:`lmetric_theory.sim.active_blocks`) because this policy sets ``active_sequences``; a
view without them (hand-built, recorded logs) falls back to ``router_queued`` and
``floor(router_all_tokens / s) + floor(T / s)``. Terms equal on every worker do not change a
pick (the softmax normalises costs by their range). ``active_requests`` =
``router_inflight``. ``docs/simulator.md`` ("DynoSim") gives the agreement measured against
DynoSim's own ``kv_router``.

``config=FILE`` reads a ``KvRouterConfig`` JSON object (the format of
``KvRouterConfig.from_json``: every key optional, unknown keys refused). The keys the selector
above reads are used; every other key of 1.6.1's ``KvRouterConfig`` is accepted only at its
default (it changes what a Dynamo deployment does in ways these engines do not model), and
``router_queue_threshold`` (router-side queueing, off by default) is accepted and handed to
DynoSim's own router, but the fast and vLLM engines cannot hold requests at the router and
refuse it there.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lmetric_theory.core import signals as sig
from lmetric_theory.policies.base import Policy

__all__ = ["DynamoKv", "DynamoKvParams", "KvRouterSettings", "read_kv_router_config"]

_DYNAMO = "ai-dynamo/dynamo"

#: Keys of Dynamo 1.6.1's ``KvRouterConfig`` JSON that do not enter the default selector's
#: cost, with their defaults: accepted only at these values (``None``: JSON ``null``).
_INERT_DEFAULTS: dict[str, Any] = {
    "host_cache_hit_weight": 0.75,
    "disk_cache_hit_weight": 0.25,
    "use_kv_events": True,
    "durable_kv_events": False,
    "router_replica_sync": False,
    "router_track_output_blocks": False,
    "router_assume_kv_reuse": True,
    "router_tracking_hash": "public-xxh3-v1",
    "router_tracking_key_file": None,
    "router_tracking_key_id": None,
    "router_prefill_load_model": "none",
    "router_snapshot_threshold": None,
    "router_reset_states": False,
    "router_ttl_secs": 120.0,
    "router_policy_config": None,
    "router_event_threads": 4,
    "skip_initial_worker_wait": False,
    "router_queue_policy": "fcfs",
    "use_remote_indexer": False,
    "serve_indexer": False,
    "enable_session_prefix_index": False,
    "shared_cache_multiplier": None,
    "shared_cache_type": "none",
    "router_predicted_ttl_secs": None,
    "conditional_disagg_enabled": False,
    "conditional_disagg_policy": "isl_bounding",
    "conditional_disagg_eff_isl_threshold": 2048,
    "conditional_disagg_eff_isl_ratio_threshold": 0.7,
    "conditional_disagg_prefill_busy_threshold": None,
    "conditional_disagg_decode_busy_threshold": None,
}

#: The numeric keys the selector reads: key -> (default, allows null).
_WEIGHTS: dict[str, tuple[float | None, bool]] = {
    "overlap_score_weight": (None, True),
    "overlap_score_credit": (1.0, False),
    "overlap_score_credit_decay": (0.0, False),
    "prefill_load_scale": (1.0, False),
    "decode_active_request_weight": (0.0, False),
    "router_temperature": (0.0, False),
    "router_queue_threshold": (None, True),
}
_FLAGS: dict[str, bool] = {"router_track_active_blocks": True, "router_track_prefill_tokens": True}


@dataclass(frozen=True, slots=True)
class KvRouterSettings:
    """The values of a ``KvRouterConfig`` the default selector reads (defaults: 1.6.1's).

    Attributes
    ----------
    overlap_score_credit : float
        Credit per device-cached prefix block (>= 0), blocks per block.
    overlap_score_credit_decay : float
        Decay of that credit with the worker's excess active prefill (>= 0; 0: none).
    prefill_load_scale : float
        Weight of the adjusted prefill blocks (>= 0).
    decode_active_request_weight : float
        Block-equivalent cost of each active request (>= 0).
    router_temperature : float
        Softmax temperature (>= 0; 0: argmin).
    router_queue_threshold : float or None
        Router-side queue threshold, a fraction of ``max_num_batched_tokens`` (``None``: off).
    router_track_active_blocks, router_track_prefill_tokens : bool
        Whether the decode and the prefill terms are counted.
    json_text : str
        The JSON object DynoSim's own router is built from (``KvRouterConfig.from_json``).
    """

    overlap_score_credit: float = 1.0
    overlap_score_credit_decay: float = 0.0
    prefill_load_scale: float = 1.0
    decode_active_request_weight: float = 0.0
    router_temperature: float = 0.0
    router_queue_threshold: float | None = None
    router_track_active_blocks: bool = True
    router_track_prefill_tokens: bool = True
    json_text: str = "{}"


def _number(path: str, key: str, value: Any, nullable: bool) -> float | None:
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{path}: key {key!r}: expected a number, got {json.dumps(value)}")
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{path}: key {key!r}: must be finite and >= 0, got {value}")
    return v


def kv_router_settings(obj: Any, path: str) -> KvRouterSettings:
    """Validate a parsed ``KvRouterConfig`` JSON value (``path`` names it in errors).

    Raises
    ------
    ValueError
        One line naming ``path`` and the key: not an object, an unknown key, a value of the
        wrong type or out of range, a key these engines do not model at a non-default value.
    """
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object (a KvRouterConfig), got {type(obj).__name__}")
    known = set(_INERT_DEFAULTS) | set(_WEIGHTS) | set(_FLAGS)
    for key in obj:
        if key not in known:
            raise ValueError(f"{path}: unknown key {key!r}; valid KvRouterConfig keys: "
                             f"{', '.join(sorted(known))}")
    for key, default in _INERT_DEFAULTS.items():
        if key in obj and obj[key] != default:
            raise ValueError(f"{path}: key {key!r}: only its default {json.dumps(default)} is "
                             "supported (it does not enter the default selector's cost these "
                             "engines model)")
    kw: dict[str, Any] = {}
    for key, (_default, nullable) in _WEIGHTS.items():
        if key in obj:
            kw[key] = _number(path, key, obj[key], nullable)
    for key in _FLAGS:
        if key in obj:
            if not isinstance(obj[key], bool):
                raise ValueError(f"{path}: key {key!r}: expected true or false, got {json.dumps(obj[key])}")
            kw[key] = obj[key]
    # overlap_score_weight: 1.6.1's deprecated alias of prefill_load_scale (it wins); 0 also
    # sets the overlap credit to 0 (KvRouterConfig's documentation in the wheel)
    w = kw.pop("overlap_score_weight", None)
    if w is not None:
        kw["prefill_load_scale"] = w
        if w == 0:
            kw["overlap_score_credit"] = 0.0
    return KvRouterSettings(**kw, json_text=json.dumps(obj, sort_keys=True))


def read_kv_router_config(path: str) -> KvRouterSettings:
    """Read and validate a ``KvRouterConfig`` JSON file (see :func:`kv_router_settings`).

    Raises
    ------
    ValueError
        Unreadable file, malformed JSON (with line and column) or a bad key, naming the file.
    """
    from lmetric_theory.core.fileio import TextFileError, read_text

    try:
        text = read_text(Path(path), "KvRouterConfig JSON")
    except (OSError, TextFileError) as exc:
        raise ValueError(f"{path}: cannot read the KvRouterConfig JSON: {exc}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: line {exc.lineno} column {exc.colno}: malformed JSON: {exc.msg}") from None
    return kv_router_settings(obj, path)


@dataclass(frozen=True, slots=True)
class DynamoKvParams:
    """``config``: a ``KvRouterConfig`` JSON file ("" = 1.6.1's defaults); ``tie``: the rule
    for equal costs at temperature 0 (default ``random``, Dynamo's)."""

    config: str = ""
    tie: str = dataclasses.field(default="random", metadata={"choices": ("random", "lowest")})

    def __post_init__(self) -> None:
        if self.tie not in ("random", "lowest"):
            raise ValueError(f"tie: {self.tie!r} is not one of random, lowest")
        if self.config:
            read_kv_router_config(self.config)  # bad input fails when the spec is read

    def settings(self) -> KvRouterSettings:
        """The validated settings (1.6.1's defaults without a file)."""
        return read_kv_router_config(self.config) if self.config else KvRouterSettings()


class DynamoKv(Policy):
    """Dynamo 1.6.1's default KV-router worker selector (see the module docstring)."""

    name = "dynamo-kv"
    formula = ("argmin prefill_load_scale * max(0, (active_prefill + T) / s - credit * "
               "decay * overlap_blocks) + active_prompt_blocks + new_prompt_blocks "
               "+ w_req * active_requests; decay = 1 / (1 + credit_decay * excess_prefill_blocks "
               "/ ceil(T / s)); softmax over range-normalised costs when router_temperature > 0")
    source = (f"{_DYNAMO} (ai-dynamo-runtime 1.6.1): lib/kv-router/src/scheduling/selector/"
              "default.rs, lib/kv-router/src/scheduling/selector/mod.rs, "
              "lib/kv-router/src/sequences/; KvRouterConfig in dynamo/_core.pyi")
    signals: ClassVar[tuple[str, ...]] = ("hit_blocks", "router_active_prefill_tokens",
                                          "router_active_prompt_blocks",
                                          "router_new_prompt_blocks", "router_inflight",
                                          "block_size", "input_tokens")
    Params = DynamoKvParams

    def __init__(self, params: DynamoKvParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        self.settings = params.settings()
        #: Engines keep Dynamo's active sequences for this policy (router counters'
        #: ``blocks``): the unique active prompt blocks and the prefills not yet started.
        self.active_sequences = True

    def costs(self, view: Any) -> np.ndarray:
        """Per-worker cost (float64, shape (N,)), in blocks."""
        k = self.settings
        s = float(sig._block(view))
        t = int(view.input_tokens)
        req_blocks = max(-(-t // int(s)), 1)  # ceil: the decay's request size
        full_blocks = t // int(s)  # complete blocks: a partial tail adds prefill work only
        overlap = sig.hit_blocks(view).astype(np.float64)
        seq_pf = view.router_active_prefill_tokens
        active_pf = (sig.router_queued(view) if seq_pf is None else seq_pf).astype(np.float64)
        n = overlap.shape[0]
        if k.router_track_prefill_tokens:
            raw = (active_pf + t) / s
            if k.overlap_score_credit_decay > 0:
                excess = (active_pf - active_pf.min()) / s / req_blocks
                decay = 1.0 / (1.0 + k.overlap_score_credit_decay * excess)
            else:
                decay = np.ones(n)
        else:
            raw = np.zeros(n)
            decay = np.ones(n)
        prefill = k.prefill_load_scale * np.maximum(raw - k.overlap_score_credit * decay * overlap, 0.0)
        if k.router_track_active_blocks:
            if view.router_active_prompt_blocks is not None:
                # Dynamo: |unique active prompt blocks U the request's complete blocks|
                decode = (view.router_active_prompt_blocks.astype(np.float64)
                          + view.router_new_prompt_blocks)
            else:  # views without active sequences (hand-built, recorded logs)
                active = np.maximum(np.asarray(view.router_all_tokens, dtype=np.int64), 0) // int(s)
                decode = active.astype(np.float64) + full_blocks
        else:
            decode = np.zeros(n)
        inflight = np.maximum(np.asarray(view.router_inflight, dtype=np.float64), 0.0)
        return prefill + decode + k.decode_active_request_weight * inflight

    def choose(self, view: Any) -> int:
        c = self.costs(view)
        temp = self.settings.router_temperature
        if temp > 0:
            return softmax_pick(c, temp, float(self.rng.random()))
        best = np.flatnonzero(c == c.min())
        if best.size == 1 or self.params.tie == "lowest":
            return int(best[0])
        return int(best[int(self.rng.integers(best.size))])


def softmax_pick(costs: np.ndarray, temperature: float, u: float) -> int:
    """Dynamo's softmax draw: costs normalised by their range, lower cost likelier.

    Parameters
    ----------
    costs : np.ndarray, shape (N,)
        Worker costs, blocks.
    temperature : float
        > 0.
    u : float
        A uniform draw in [0, 1).

    Returns
    -------
    int
        The first row whose cumulative probability reaches ``u`` (the last row if rounding
        leaves the sum short).
    """
    lo, hi = float(costs.min()), float(costs.max())
    if lo == hi:
        p = np.full(costs.shape[0], 1.0 / costs.shape[0])
    else:
        w = np.exp(-(costs - lo) / ((hi - lo) * temperature))
        p = w / w.sum()
    cum = np.cumsum(p)
    hit = np.flatnonzero(u <= cum)
    return int(hit[0]) if hit.size else costs.shape[0] - 1
