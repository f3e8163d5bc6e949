"""Simulator settings (:class:`SimConfig`) and the outcome of a run (:class:`SimResult`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lmetric_theory.sim.latency import LatencyModel, Preset
from lmetric_theory.sim.routerstate import IndexSpec, ReplicaAssignment
from lmetric_theory.sim.snapshots import SnapshotLog

__all__ = ["SCHEDULERS", "SimConfig", "SimResult", "VIEWS", "tpot_s"]

#: Router cache views.
VIEWS: tuple[str, ...] = ("precise", "approximate")

#: Instance schedulers: ``vllm-v1`` (paged KV, preemption, vLLM v1's scheduling loop) and
#: ``reserve`` (the first model: KV reserved for prompt + output at admission, no preemption).
SCHEDULERS: tuple[str, ...] = ("vllm-v1", "reserve")


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Cluster settings.

    Attributes
    ----------
    n_instances : int
        Number of serving instances ``N``.
    latency : LatencyModel
        Iteration-latency coefficients.
    kv_capacity_tokens : int
        KV capacity of each instance, tokens.
    kv_capacity_blocks : int or None
        If set, the capacity in blocks of the workload's block size instead (overrides
        ``kv_capacity_tokens``).
    token_budget : int
        Tokens per iteration (decode tokens + prefill chunks), tokens.
    max_batch : int
        Maximum running (prefilling + decoding) requests per instance.
    view : str
        Router cache view: ``"precise"`` or ``"approximate"``.
    signal_delay_s : float
        Age of the load signals the router sees, seconds (0: current).
    fast_forward : bool
        Advance decode-only stretches in closed form (``False``: one iteration per event,
        the slow reference).
    record_snapshots : bool
        Keep the per-decision :class:`SnapshotLog`.
    scheduler : str
        ``"vllm-v1"`` or ``"reserve"`` (see :data:`SCHEDULERS` and docs/simulator.md).
    block_size : int
        KV block size of the ``vllm-v1`` scheduler, tokens (vLLM's default 16). It must
        divide the workload's hash block size; each workload block then spans
        ``workload.block_size // block_size`` engine blocks. The ``reserve`` scheduler uses
        the workload's block size.
    preset : str or None
        Name of the preset the latency model came from (reporting only).
    latency_fit_error : dict or None
        ``{"mean": ..., "max": ...}`` relative error of the preset on its calibration rows;
        ``None`` for an uncalibrated preset (reporting only).
    concurrency : int or None
        At most this many sessions active (``None``: no cap). Sessions are admitted in
        ``Sessions.session`` order, the first ``concurrency`` at t = 0 and each later one
        when an active session's last request completes; first-turn timestamps are then
        ignored. A workload without closed-loop sessions counts each request as a one-turn
        session, in arrival order. See docs/simulator.md, "Closed loop".
    router_replicas : int
        Router replicas R, each with its own counters (1: one router with exact state).
        See docs/router_state.md.
    replica_assignment : ReplicaAssignment
        How requests are spread over the replicas (round-robin, random, session).
    kv_event_lag_s : float
        The precise index sees block stored/removed events this late, seconds (0: at once).
    index : IndexSpec
        The router's cache index: precise, or approximate (the router's own dispatches,
        optionally forgotten after a TTL or past an LRU bound). ``view="approximate"`` is
        the unbounded approximate index.
    """

    n_instances: int
    latency: LatencyModel
    kv_capacity_tokens: int
    token_budget: int = 8192
    max_batch: int = 256
    kv_capacity_blocks: int | None = None
    view: str = "precise"
    signal_delay_s: float = 0.0
    fast_forward: bool = True
    record_snapshots: bool = True
    scheduler: str = "vllm-v1"
    block_size: int = 16
    preset: str | None = None
    latency_fit_error: dict[str, float] | None = None
    concurrency: int | None = None
    router_replicas: int = 1
    replica_assignment: ReplicaAssignment = ReplicaAssignment.ROUND_ROBIN
    kv_event_lag_s: float = 0.0
    index: IndexSpec = field(default_factory=IndexSpec)

    def __post_init__(self) -> None:
        from lmetric_theory.core.limits import INSTANCES_MAX

        if not 1 <= self.n_instances <= INSTANCES_MAX:
            raise ValueError(
                f"n_instances must be an integer in [1, {INSTANCES_MAX}], got {self.n_instances}"
            )
        if self.kv_capacity_tokens < 1 or self.token_budget < 1 or self.max_batch < 1:
            raise ValueError("kv_capacity_tokens, token_budget and max_batch must be >= 1")
        if self.kv_capacity_blocks is not None and self.kv_capacity_blocks < 1:
            raise ValueError(f"kv_capacity_blocks must be >= 1, got {self.kv_capacity_blocks}")
        if self.max_batch > self.token_budget:
            raise ValueError("max_batch must not exceed token_budget (one decode token each)")
        if self.view not in VIEWS:
            raise ValueError(f"view: {self.view!r} is not one of {', '.join(VIEWS)}")
        if not (math.isfinite(self.signal_delay_s) and self.signal_delay_s >= 0):
            raise ValueError(f"signal_delay_s must be finite and >= 0, got {self.signal_delay_s}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler: {self.scheduler!r} is not one of {', '.join(SCHEDULERS)}")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"block_size must be an integer >= 1, got {self.block_size!r}")
        if self.concurrency is not None and (isinstance(self.concurrency, bool)
                                             or not isinstance(self.concurrency, int | np.integer)
                                             or self.concurrency < 1):
            raise ValueError("concurrency must be >= 1")
        if (isinstance(self.router_replicas, bool) or not isinstance(self.router_replicas, int | np.integer)
                or self.router_replicas < 1):
            raise ValueError(f"router_replicas must be an integer >= 1, got {self.router_replicas!r}")
        if not isinstance(self.replica_assignment, ReplicaAssignment):
            raise ValueError("replica_assignment must be a ReplicaAssignment "
                             f"(one of {', '.join(a.value for a in ReplicaAssignment)})")
        if not (math.isfinite(self.kv_event_lag_s) and self.kv_event_lag_s >= 0):
            raise ValueError(f"kv_event_lag_s must be finite and >= 0, got {self.kv_event_lag_s}")
        if not isinstance(self.index, IndexSpec):
            raise ValueError("index must be an IndexSpec")
        if self.view == "approximate" and self.index.kind != "approximate" and self.index != IndexSpec():
            raise ValueError("view approximate contradicts the index")

    @property
    def default_router_state(self) -> bool:
        """One router with exact state: R = 1, no KV event lag, no bounded approximate
        index (today's model, :class:`~lmetric_theory.sim.router.RouterView`)."""
        return (self.router_replicas == 1 and self.kv_event_lag_s == 0
                and not self.index.bounded and self.index.kind == "precise")

    @property
    def approximate_index(self) -> bool:
        """The router predicts the cache from its own dispatches."""
        return self.view == "approximate" or self.index.kind == "approximate"

    @classmethod
    def from_preset(cls, preset: Preset, n_instances: int, **overrides: Any) -> SimConfig:
        """Config with the preset's latency and limits; keyword overrides win."""
        kw: dict[str, Any] = dict(
            latency=preset.latency,
            kv_capacity_tokens=preset.kv_capacity_tokens,
            token_budget=preset.token_budget,
            max_batch=preset.max_batch,
            preset=preset.name,
            latency_fit_error=preset.fit_error,
        )
        kw.update(overrides)
        return cls(n_instances=n_instances, **kw)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (the router-state fields only when not the default, so a
        default run's dictionary reads as before)."""
        d = asdict(self)
        for k in ("router_replicas", "replica_assignment", "kv_event_lag_s", "index"):
            d.pop(k)
        if not self.default_router_state:
            d["router_replicas"] = int(self.router_replicas)
            d["replica_assignment"] = self.replica_assignment.value
            d["kv_event_lag_s"] = float(self.kv_event_lag_s)
            d["index"] = self.index.text
        return d


@dataclass(frozen=True, slots=True)
class SimResult:
    """Outcome of a run (requests not finished by the stop time hold NaN).

    Attributes
    ----------
    arrival_s : np.ndarray, shape (n,), float64
        Actual arrival times, seconds (closed loop: the previous turn's finish plus the
        delay, or the admission time under a concurrency cap).
    instance : np.ndarray, shape (n,), int32
        Instance each request was routed to (-1: not routed yet).
    input_tokens, output_tokens : np.ndarray, shape (n,), int64
        Prompt and output lengths, tokens.
    cached_tokens : np.ndarray, shape (n,), int64
        Prompt tokens served from the prefix cache at admission (-1: not admitted), tokens.
    ttft_s : np.ndarray, shape (n,), float64
        Time to first token (arrival to end of the last prefill iteration), seconds.
    tpot_s : np.ndarray, shape (n,), float64
        Time per output token after the first, seconds (NaN for one-token outputs).
    e2e_s : np.ndarray, shape (n,), float64
        Arrival to last token, seconds.
    snapshots : SnapshotLog or None
        Router views of the decisions made.
    iterations : int
        Iterations executed over all instances (closed-form stretches counted in full).
    events : int
        Events processed.
    peak_kv_tokens : np.ndarray, shape (N,), int64
        Highest KV occupancy (cached blocks + reservations) per instance, tokens.
    prefill_tokens_computed : np.ndarray, shape (N,), int64
        Prompt tokens computed by prefill iterations per instance, tokens.
    output_tokens_produced : np.ndarray, shape (N,), int64
        Tokens produced per instance (first tokens plus decode-iteration tokens), tokens.
    preemptions : np.ndarray, shape (n,), int64
        Times each request was preempted (recompute); zeros under ``reserve``.
    preemptions_per_instance : np.ndarray, shape (N,), int64
        Preemptions per instance.
    first_token_s, finish_s : np.ndarray, shape (n,), float64, or None
        Absolute simulated times of each request's first and last token, seconds (NaN if
        not reached).
    session, turn : np.ndarray, shape (n,), int64, or None
        Session index and turn of each request (-1 and 0 when the workload has no sessions).
    itl_gap_s : np.ndarray, shape (k,), float64, or None
        Every inter-token gap of every request, pooled, seconds, as ``(gap, multiplicity)``
        pairs with :attr:`itl_count` (exact, not binned).
    itl_count : np.ndarray, shape (k,), int64, or None
        Multiplicity of each gap; ``sum(itl_count) == sum(output_tokens - 1)`` over finished
        requests.
    batch_integral : np.ndarray, shape (N,), float64, or None
        Integral of the running-batch size over time per instance, request-seconds.
    busy_s : np.ndarray, shape (N,), float64, or None
        Time each instance spent in iterations, seconds.
    end_time_s : float
        Simulated time reached, seconds.
    policy : str
        Canonical policy spec.
    config : dict
        The :class:`SimConfig` as a dictionary, plus the seed.
    first_token_s, finish_s : np.ndarray, shape (n,), float64
        Absolute simulated times of each request's first and last token, seconds (NaN: not
        reached). ``arrival_s`` is the actual arrival: under closed loop the previous turn's
        finish plus the think time, or the admission time of the session under a cap.
    session, turn : np.ndarray, shape (n,), int64
        Session index and turn of each request (-1 and 0 without sessions).
    itl_gap_s : np.ndarray, shape (k,), float64
        Inter-token gaps, seconds, pooled over every request, with multiplicities
        ``itl_count`` (shape (k,), int64): ``itl_count[j]`` tokens followed their previous
        token of the same request by ``itl_gap_s[j]``. ``sum(itl_count)`` is ``sum(out - 1)``
        over finished requests (plus tokens of unfinished ones so far). Exact, not binned.
    batch_integral : np.ndarray, shape (N,), float64
        Integral of the running-batch size (requests scheduled in the iteration) over time
        per instance, request-seconds.
    busy_s : np.ndarray, shape (N,), float64
        Time each instance spent in iterations, seconds.
    replica : np.ndarray, shape (n,), int32, or None
        Router replica that routed each request (all 0 with one router; -1: not routed).
    predicted_cached_tokens : np.ndarray, shape (n,), int64, or None
        Prefix hit the routing replica's index predicted for the chosen instance at
        dispatch, tokens (-1: not routed). Equals ``cached_tokens`` up to eviction timing
        with the precise index and no lag.
    """

    arrival_s: np.ndarray
    instance: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    cached_tokens: np.ndarray
    ttft_s: np.ndarray
    tpot_s: np.ndarray
    e2e_s: np.ndarray
    snapshots: SnapshotLog | None
    iterations: int
    events: int
    peak_kv_tokens: np.ndarray
    prefill_tokens_computed: np.ndarray
    output_tokens_produced: np.ndarray
    end_time_s: float
    policy: str
    config: dict[str, Any] = field(default_factory=dict)
    preemptions: np.ndarray | None = None
    preemptions_per_instance: np.ndarray | None = None
    first_token_s: np.ndarray | None = None
    finish_s: np.ndarray | None = None
    session: np.ndarray | None = None
    turn: np.ndarray | None = None
    itl_gap_s: np.ndarray | None = None
    itl_count: np.ndarray | None = None
    batch_integral: np.ndarray | None = None
    busy_s: np.ndarray | None = None
    replica: np.ndarray | None = None
    predicted_cached_tokens: np.ndarray | None = None

    @property
    def completed(self) -> np.ndarray:
        """Mask of finished requests, shape (n,), bool."""
        return np.isfinite(self.e2e_s)

    def counts(self) -> dict[str, Any]:
        """Total preemptions and requests routed to each instance (a list, one per instance)."""
        n = int(self.peak_kv_tokens.shape[0])
        routed = self.instance[self.instance >= 0]
        pre = 0 if self.preemptions is None else int(self.preemptions.sum())
        return {"preemptions": pre,
                "requests_per_instance": np.bincount(routed, minlength=n).astype(int).tolist()}

    def summary(self) -> dict[str, float | int]:
        """Headline figures: completed count, TTFT/TPOT statistics (s), prefix-hit rate."""
        done = self.completed
        ttft = self.ttft_s[done]
        tpot = self.tpot_s[done]
        tpot = tpot[np.isfinite(tpot)]
        admitted = self.cached_tokens >= 0

        def stat(a: np.ndarray, f: Any) -> float:
            return float(f(a)) if a.size else float("nan")

        inp = int(self.input_tokens[admitted].sum())
        return {
            "completed": int(done.sum()),
            "ttft_mean_s": stat(ttft, np.mean),
            "ttft_p50_s": stat(ttft, lambda a: np.percentile(a, 50)),
            "ttft_p90_s": stat(ttft, lambda a: np.percentile(a, 90)),
            "ttft_p99_s": stat(ttft, lambda a: np.percentile(a, 99)),
            "tpot_mean_s": stat(tpot, np.mean),
            "tpot_p99_s": stat(tpot, lambda a: np.percentile(a, 99)),
            "prefix_hit_rate": float(self.cached_tokens[admitted].sum() / inp) if inp else float("nan"),
        }


def tpot_s(first: np.ndarray, done: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Time per output token after the first, seconds per token (NaN for one-token outputs
    and unfinished requests)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(out > 1, (done - first) / np.maximum(out - 1, 1), np.nan)
