"""Per-request comparison of two simulation results of the same workload (engine vs engine).

Used to validate the fast engine against vLLM's own scheduler: both replay the same requests
with the same routing, and :func:`compare_results` says how far apart they are request by
request.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["Differential", "compare_results", "fitting_requests", "total_preemptions"]


def fitting_requests(workload: Any, capacity_tokens: int, block_size: int = 16) -> Any:
    """The workload without the requests an empty instance cannot hold.

    A request needs ``prompt + output - 1`` tokens of KV (the last sampled token is never
    computed) in whole blocks of ``block_size``; vLLM keeps one block of its pool as a null
    block, so ``capacity_tokens // block_size - 1`` blocks are usable. Used to replay a small
    KV pool, which both engines would otherwise refuse (fast) or never finish (vLLM).

    Returns
    -------
    Workload
        The kept requests, in order; ``meta["dropped_requests"]`` lists the original indices
        of the dropped ones.
    """
    from lmetric_theory.workload.loaders import make_workload

    inp = np.asarray(workload.input_tokens, dtype=np.int64)
    out = np.asarray(workload.output_tokens, dtype=np.int64)
    blocks = -(-(inp + out - 1) // block_size)
    keep = blocks <= capacity_tokens // block_size - 1
    offs = np.asarray(workload.hash_offsets, dtype=np.int64)
    idx = np.flatnonzero(keep)
    lens = offs[idx + 1] - offs[idx]
    hashes = np.concatenate([workload.hash_ids[offs[i]:offs[i + 1]] for i in idx]) if idx.size \
        else np.zeros(0, dtype=np.int64)
    meta = dict(workload.meta)
    meta["dropped_requests"] = np.flatnonzero(~keep).tolist()
    sess = None if workload.session_ids is None else np.asarray(workload.session_ids)[idx]
    return make_workload(
        arrival_s=np.asarray(workload.arrival_s)[idx], input_tokens=inp[idx],
        output_tokens=out[idx], hash_ids=hashes,
        hash_offsets=np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
        block_size=int(workload.block_size), session_ids=sess, meta=meta,
    )


def total_preemptions(result: Any) -> int:
    """Preemptions of a result: its per-request ``preemptions`` array if it has one, else the
    ``preemptions_total`` of its config, else 0 (an engine that never preempts)."""
    p = getattr(result, "preemptions", None)
    if p is not None:
        return int(np.sum(p))
    return int(result.config.get("preemptions_total", 0))


@dataclass(frozen=True, slots=True)
class Differential:
    """How result ``a`` differs from reference ``b``, per request.

    Attributes
    ----------
    requests : int
        Requests completed by both, the ones compared.
    ttft_rel_err_median, ttft_rel_err_p90, ttft_rel_err_max : float
        Quantiles of ``|ttft_a - ttft_b| / ttft_b`` over the compared requests.
    ttft_mean_a_s, ttft_mean_b_s : float
        Mean TTFT over the compared requests, seconds.
    ttft_mean_rel_diff : float
        ``(mean_a - mean_b) / mean_b``.
    completed_a, completed_b : int
        Requests completed by each.
    preemptions_a, preemptions_b : int
        Preemptions counted by each.
    cached_tokens_a, cached_tokens_b : int
        Prompt tokens served from the prefix cache (requests admitted by both), tokens.
    cached_rel_diff : float
        ``(cached_a - cached_b) / cached_b`` (0 when both are 0).
    same_assignment : bool
        Both results routed every request to the same instance.
    worst_requests : tuple of int
        The (at most 10) requests with the largest TTFT relative error, worst first.
    """

    requests: int
    ttft_rel_err_median: float
    ttft_rel_err_p90: float
    ttft_rel_err_max: float
    ttft_mean_a_s: float
    ttft_mean_b_s: float
    ttft_mean_rel_diff: float
    completed_a: int
    completed_b: int
    preemptions_a: int
    preemptions_b: int
    cached_tokens_a: int
    cached_tokens_b: int
    cached_rel_diff: float
    same_assignment: bool
    worst_requests: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        d = asdict(self)
        d["worst_requests"] = list(self.worst_requests)
        return d


def compare_results(a: Any, b: Any) -> Differential:
    """Compare result ``a`` against reference ``b`` (two ``SimResult`` of the same workload).

    Raises
    ------
    ValueError
        The results are of different workloads (lengths or arrivals differ).
    """
    n = a.arrival_s.shape[0]
    if b.arrival_s.shape[0] != n or not np.array_equal(a.arrival_s, b.arrival_s):
        raise ValueError("the two results are of different workloads")
    done = a.completed & b.completed
    ta, tb = a.ttft_s[done], b.ttft_s[done]
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.abs(ta - tb) / np.where(tb > 0, tb, np.nan)
    rel = np.nan_to_num(rel, nan=0.0)
    ids = np.flatnonzero(done)
    order = np.argsort(-rel, kind="stable")[:10]
    adm = (a.cached_tokens >= 0) & (b.cached_tokens >= 0)
    ca, cb = int(a.cached_tokens[adm].sum()), int(b.cached_tokens[adm].sum())
    ma = float(ta.mean()) if ta.size else float("nan")
    mb = float(tb.mean()) if tb.size else float("nan")

    def q(p: float) -> float:
        return float(np.percentile(rel, p)) if rel.size else float("nan")

    return Differential(
        requests=int(done.sum()),
        ttft_rel_err_median=q(50),
        ttft_rel_err_p90=q(90),
        ttft_rel_err_max=float(rel.max()) if rel.size else float("nan"),
        ttft_mean_a_s=ma,
        ttft_mean_b_s=mb,
        ttft_mean_rel_diff=(ma - mb) / mb if mb else float("nan"),
        completed_a=int(a.completed.sum()),
        completed_b=int(b.completed.sum()),
        preemptions_a=total_preemptions(a),
        preemptions_b=total_preemptions(b),
        cached_tokens_a=ca,
        cached_tokens_b=cb,
        cached_rel_diff=(ca - cb) / cb if cb else (0.0 if ca == 0 else float("inf")),
        same_assignment=bool(np.array_equal(a.instance, b.instance)),
        worst_requests=tuple(int(ids[i]) for i in order),
    )
