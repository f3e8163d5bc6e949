"""Differential of the fast engine against DynoSim (Dynamo's own simulator), request by request.

:func:`dynosim_differential` replays one workload on both engines under the same settings
(:func:`lmetric_theory.sim.dynosim.engine_args`) and one policy both can run: ``round-robin``
(ours against DynoSim's ``round_robin``) or ``dynamo-kv`` (our port against DynoSim's own
``kv_router`` with the same ``KvRouterConfig``). The figures are those of the issue's targets:
median per-request relative TTFT error, prefix-hit rates, the share of requests sent to the
same worker and the relative difference of mean TTFT.

:func:`fixed_step_config` gives the one latency model both engines share exactly (a constant
time per pass, ``c0`` only); any other model runs DynoSim on its own ``polynomial`` timing,
so the TTFT figures then measure the two timing models as much as the engines.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmetric_theory.sim.config import SimConfig, SimResult
from lmetric_theory.sim.latency import LatencyModel

__all__ = ["DynoSimDifferential", "RouterAgreement", "dynosim_differential", "fixed_step_config",
           "relabelled_agreement", "router_agreement"]


@dataclass(frozen=True, slots=True)
class DynoSimDifferential:
    """Fast engine against DynoSim on one workload and policy.

    Attributes
    ----------
    policy : str
        Canonical policy spec.
    requests : int
        Requests compared (finished on both engines).
    ttft_median_rel_error : float
        Median over requests of ``|ttft_ours - ttft_dynosim| / ttft_dynosim``.
    ttft_mean_ours_s, ttft_mean_dynosim_s : float
        Mean TTFT on each engine, seconds.
    ttft_mean_rel_diff : float
        ``(mean ours - mean DynoSim) / mean DynoSim``.
    hit_rate_ours, hit_rate_dynosim : float
        Prefix-cache hit rate (cached prompt tokens / prompt tokens) on each engine.
    same_worker : float
        Share of requests routed to the same worker index.
    same_worker_relabelled : float
        The same share after the one relabelling of DynoSim's workers that maximises it
        (workers are identical, and both routers break ties among empty workers at random
        with their own generators, so worker names differ by a permutation from the first
        tie on).
    wall_ours_s, wall_dynosim_s : float
        Wall time of each run in this process, seconds.
    dynosim_timing : str
        The timing model DynoSim ran on.
    """

    policy: str
    requests: int
    ttft_median_rel_error: float
    ttft_mean_ours_s: float
    ttft_mean_dynosim_s: float
    ttft_mean_rel_diff: float
    hit_rate_ours: float
    hit_rate_dynosim: float
    same_worker: float
    same_worker_relabelled: float
    wall_ours_s: float
    wall_dynosim_s: float
    dynosim_timing: str

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return dataclasses.asdict(self)


def fixed_step_config(config: SimConfig, step_s: float) -> SimConfig:
    """``config`` with the constant-time latency model both engines share (``c0 = step_s``)."""
    return dataclasses.replace(config, latency=LatencyModel(c0=step_s, c_pf=0.0, c_dec=0.0,
                                                            c_kv=0.0, c_att=0.0))


def relabelled_agreement(ours: np.ndarray, theirs: np.ndarray, n: int) -> float:
    """Share of equal entries after the permutation of ``theirs``' labels (0..n-1) that
    maximises it (an assignment problem on the n x n contingency table)."""
    from scipy.optimize import linear_sum_assignment

    if ours.size == 0:
        return float("nan")
    table = np.zeros((n, n), dtype=np.int64)
    np.add.at(table, (ours, theirs), 1)
    r, c = linear_sum_assignment(table, maximize=True)
    return float(table[r, c].sum()) / ours.size


def _hit_rate(r: SimResult) -> float:
    ok = r.cached_tokens >= 0
    inp = float(np.sum(r.input_tokens[ok]))
    return float(np.sum(r.cached_tokens[ok])) / inp if inp > 0 else float("nan")


def dynosim_differential(workload: Any, config: SimConfig, spec: Any,
                         seed: int = 0) -> tuple[DynoSimDifferential, SimResult, SimResult]:
    """Run ``spec`` on the fast engine and on DynoSim and compare request by request.

    Parameters
    ----------
    workload : Workload
        As :func:`lmetric_theory.sim.dynosim.simulate_dynosim` takes it.
    config : SimConfig
        Shared settings (``scheduler`` must be ``vllm-v1``, the engine DynoSim's vLLM-shaped
        mocker mirrors).
    spec : PolicySpec
        ``round-robin`` or ``dynamo-kv``.
    seed : int
        Seed of our run.

    Returns
    -------
    (DynoSimDifferential, SimResult, SimResult)
        The figures, our result, DynoSim's.
    """
    from lmetric_theory.policies.registry import make_policy
    from lmetric_theory.sim import Simulator
    from lmetric_theory.sim.dynosim import simulate_dynosim, timing_model

    if config.scheduler != "vllm-v1":
        raise ValueError("the DynoSim differential compares the vllm-v1 scheduler")
    make_policy(spec, seed=seed)
    t = time.perf_counter()
    ours = Simulator(workload, config, spec, seed=seed).run()
    wall_ours = time.perf_counter() - t
    t = time.perf_counter()
    theirs = simulate_dynosim(workload, config, spec, seed=seed)
    wall_theirs = time.perf_counter() - t
    both = ours.completed & theirs.completed
    a, b = ours.ttft_s[both], theirs.ttft_s[both]
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.abs(a - b) / b
    rel = rel[np.isfinite(rel)]
    ma, mb = float(np.mean(a)) if a.size else float("nan"), float(np.mean(b)) if b.size else float("nan")
    diff = DynoSimDifferential(
        policy=str(spec), requests=int(both.sum()),
        ttft_median_rel_error=float(np.median(rel)) if rel.size else float("nan"),
        ttft_mean_ours_s=ma, ttft_mean_dynosim_s=mb,
        ttft_mean_rel_diff=(ma - mb) / mb if mb else float("nan"),
        hit_rate_ours=_hit_rate(ours), hit_rate_dynosim=_hit_rate(theirs),
        same_worker=float(np.mean(ours.instance[both] == theirs.instance[both])) if both.any() else float("nan"),
        same_worker_relabelled=relabelled_agreement(ours.instance[both], theirs.instance[both],
                                                    config.n_instances),
        wall_ours_s=wall_ours, wall_dynosim_s=wall_theirs,
        dynosim_timing=timing_model(config)[1])
    return diff, ours, theirs


@dataclass(frozen=True, slots=True)
class RouterAgreement:
    """Our ``dynamo-kv`` cost on the trajectory DynoSim's own ``kv_router`` chose.

    The fast engine replays the workload sending each request where DynoSim's router sent
    it; at every decision our port's costs are computed on our view of that same state.

    Attributes
    ----------
    decisions : int
        Decisions compared.
    pick_is_argmin : float
        Share of decisions where DynoSim's worker is one of our lowest-cost workers.
    pick_unique_argmin : float
        Share where it is our only lowest-cost worker.
    tied : float
        Share of decisions where our lowest cost is shared by several workers (where two
        independently seeded random tie draws differ).
    mean_excess_blocks : float
        Mean of ``cost[DynoSim's pick] - min cost`` over the decisions, blocks.
    ttft_mean_rel_diff : float
        ``(mean TTFT of this replay - DynoSim's) / DynoSim's``.
    """

    decisions: int
    pick_is_argmin: float
    pick_unique_argmin: float
    tied: float
    mean_excess_blocks: float
    ttft_mean_rel_diff: float

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return dataclasses.asdict(self)


def router_agreement(workload: Any, config: SimConfig, spec: Any,
                     theirs: SimResult) -> RouterAgreement:
    """Score DynoSim's choices (``theirs``, a ``dynamo-kv`` run of ``workload``) with our port.

    Open-loop workloads only (decision ``d`` is request ``d``, in arrival order).
    """
    from lmetric_theory.policies.base import Policy
    from lmetric_theory.policies.registry import make_policy
    from lmetric_theory.sim import Simulator

    if workload.sessions is not None and workload.sessions.closed_loop:
        raise ValueError("router_agreement compares open-loop replays")
    port = make_policy(spec)
    target = np.asarray(theirs.instance, dtype=np.int64)
    rows: list[tuple[bool, bool, bool, float]] = []

    class Follow(Policy):
        name = "follow-dynosim"
        # the engines keep Dynamo's active sequences for the port's view too
        active_sequences = getattr(port, "active_sequences", False)

        def choose(self, view: Any) -> int:
            c = port.costs(view)
            k = int(target[view.decision])
            best = c.min()
            ties = int(np.sum(c == best))
            rows.append((bool(c[k] == best), bool(c[k] == best and ties == 1), ties > 1,
                         float(c[k] - best)))
            return k

    follow = Follow(port.params, seed=0)
    ours = Simulator(workload, config, follow, seed=0).run()
    a = np.array(rows, dtype=np.float64) if rows else np.zeros((0, 4))
    both = ours.completed & theirs.completed
    ma, mb = float(np.mean(ours.ttft_s[both])), float(np.mean(theirs.ttft_s[both]))
    return RouterAgreement(
        decisions=len(rows), pick_is_argmin=float(a[:, 0].mean()),
        pick_unique_argmin=float(a[:, 1].mean()), tied=float(a[:, 2].mean()),
        mean_excess_blocks=float(a[:, 3].mean()), ttft_mean_rel_diff=(ma - mb) / mb)
