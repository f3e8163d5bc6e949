"""The results study: saturation search, a grid of policies x loads x seeds, and the paper's claims.

Three steps, each a library function (the ``results`` CLI only prints):

1. :func:`find_saturation` finds a workload's saturation point under one reference policy by a
   sweep of the arrival-rate scale ``k``. It takes the *evaluator* ``k -> LoadPoint`` as a
   parameter, so it is testable without a simulator (:func:`simulator_evaluator` builds the
   real one).

   Definition. ``base`` = mean TTFT at the sweep's first scale ``start`` (a light load). A scale
   ``k`` is *saturated* when its mean TTFT exceeds ``factor * base`` (default 10x) **or** the
   replay lags: the time the cluster stays busy after the last arrival grew, relative to the
   light load, by more than ``drain`` (default 0.25) x the arrival span
   (``(drain_s(k) - drain_s(start)) / span_s(k) > drain``; subtracting the light-load drain
   removes the service time of the last requests, which is there at any load). The sweep
   doubles ``k`` from ``start`` until a saturated scale is seen (at most ``max_doublings``),
   then bisects ``refine`` times in ``log k`` between the last unsaturated and the first
   saturated scale; the saturation point is the smallest saturated scale found. The criterion
   is assumed monotone in ``k`` (true for the mean TTFT of a fixed request sequence in
   practice, not guaranteed).

2. :func:`run_grid` runs every policy at every load (fractions of the saturation point, e.g.
   0.5 and 0.9) for every seed through an executor of :mod:`lmetric_theory.experiments.tasks`.
   Seeds change the policies' random choices (ties, weighted random selection) and, for
   synthetic workloads, the workload itself. ``tuned-linear`` is tuned on each (workload,
   load, seed) it runs on (grid search of ``lam``, mean TTFT), inside the task.

3. :func:`aggregate` reduces rows over seeds (mean, min, max) and :func:`claim_changes`
   computes the paper's claims as percentage changes from the rows, paired by seed:
   ``100 * (target - baseline) / baseline`` per seed, then the mean and range over seeds.
   :func:`claim_best` reads the paper's "up to" figures as they are meant: the best case over
   the workloads and loads run (the most negative mean change), beside the per-cell values.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmetric_theory.core.fileio import json_safe
from lmetric_theory.experiments.tasks import Executor, SimTask, get_executor, run_engine
from lmetric_theory.policies import PolicySpec, parse_spec
from lmetric_theory.sim import SimConfig
from lmetric_theory.sim.metrics import Slo, compute_metrics
from lmetric_theory.workload import Workload, scale_rate

__all__ = [
    "CLAIMS",
    "HEADLINE",
    "METRICS",
    "PAPER_POLICIES",
    "SHIPPED_DEFAULTS",
    "COMPANY_X",
    "PAPER_V1",
    "Claim",
    "GridSpec",
    "LoadPoint",
    "SaturationResult",
    "aggregate",
    "claim_best",
    "claim_changes",
    "find_saturation",
    "run_grid",
    "saturation_job",
    "simulator_evaluator",
    "run_chunked",
    "study_run",
    "study_task",
]

#: The paper's "production scheduler": Company-X of the authors' artefact
#: (``bailian-impl-*`` in blitz-serving/blitz-router ``ae/``), tuned per workload as they did.
COMPANY_X = "bailian:alpha=tuned"

#: The routers' own shipped defaults (issue "the policies routers ship"): Dynamo 1.6.1's KV
#: router and llm-d's default scheduling profile, as their deployments run them.
SHIPPED_DEFAULTS: tuple[str, ...] = ("dynamo-kv", "llm-d:profile=optimized-baseline")

#: The comparison set run by default: the paper's score, the public variants, the paper's
#: baselines (vLLM v1, Dynamo, Bailian with its default weights and tuned per workload as
#: Company-X, Preble, an llm-d scorer, the Predictor), the routers' shipped defaults (Dynamo's
#: KV router, llm-d's optimized-baseline and the Inference Extension's default profile),
#: round-robin, tuned linear.
PAPER_POLICIES: tuple[str, ...] = (
    "lmetric", "lmetric:tie=random", "lmetric:variant=llm-d", "lmetric:variant=dynamo",
    "lmetric:variant=sglang-fork",
    "vllm-v1", "dynamo", "bailian", COMPANY_X, "preble", "most-hit-load", "predictor",
    *SHIPPED_DEFAULTS, "llm-d:profile=gie-default", "round-robin", "tuned-linear",
)

#: The deployers' headline metrics of a row (docs/metrics.md): seconds, per second,
#: fractions; ``slo_attainment`` and ``goodput_rps`` are ``None`` without an SLO.
HEADLINE: tuple[str, ...] = ("ttft_p95_s", "itl_p50_s", "itl_p99_s", "e2e_p50_s", "e2e_p99_s",
                             "request_throughput_rps", "output_throughput_tok_s",
                             "slo_attainment", "goodput_rps")

#: Row metrics aggregated over seeds (seconds, fractions, counts).
METRICS: tuple[str, ...] = ("ttft_mean_s", "ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "tpot_mean_s",
                            "tpot_p99_s", "prefix_hit_rate", "preemptions", "completed",
                            *HEADLINE)


@dataclass(frozen=True, slots=True)
class LoadPoint:
    """What the saturation finder needs to know about one load level.

    Attributes
    ----------
    ttft_mean_s : float
        Mean time to first token, seconds (``inf`` when nothing completed).
    drain_s : float
        ``end - last_arrival``: how long the cluster stays busy after the last arrival, seconds.
    span_s : float
        ``last_arrival - first_arrival``, seconds.
    """

    ttft_mean_s: float
    drain_s: float = 0.0
    span_s: float = 1.0


@dataclass(frozen=True, slots=True)
class SaturationResult:
    """Outcome of :func:`find_saturation`.

    Attributes
    ----------
    scale : float
        Saturation point: the smallest saturated rate scale found (``nan`` if none).
    base_ttft_s : float
        Mean TTFT at the first scale, seconds.
    found : bool
        Whether a saturated scale was reached within the sweep.
    evaluations : tuple of (float, LoadPoint, bool)
        Every ``(scale, point, saturated)`` evaluated, in order.
    factor, drain : float
        The criterion's thresholds.
    """

    scale: float
    base_ttft_s: float
    found: bool
    evaluations: tuple[tuple[float, LoadPoint, bool], ...]
    factor: float
    drain: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"scale": json_safe(self.scale), "base_ttft_s": json_safe(self.base_ttft_s), "found": self.found,
                "factor": self.factor, "drain": self.drain,
                "evaluations": [{"scale": k, "ttft_mean_s": json_safe(p.ttft_mean_s),
                                 "drain_s": json_safe(p.drain_s), "span_s": json_safe(p.span_s),
                                 "lag": json_safe(self.lag(p)), "saturated": s}
                                for k, p, s in self.evaluations]}

    def lag(self, p: LoadPoint) -> float:
        """Drain growth over the light load, as a fraction of ``p``'s arrival span."""
        base = self.evaluations[0][1].drain_s if self.evaluations else 0.0
        return _lag(p, base)


def find_saturation(evaluate: Callable[[float], LoadPoint], *, start: float = 0.25,
                    factor: float = 10.0, drain: float = 0.25, max_doublings: int = 8,
                    refine: int = 3) -> SaturationResult:
    """Smallest rate scale at which the evaluated load saturates (see the module docstring).

    Parameters
    ----------
    evaluate : callable
        ``k -> LoadPoint`` for rate scale ``k`` (dimensionless).
    start : float
        First (light-load) scale; its mean TTFT is the baseline.
    factor : float
        Saturated when mean TTFT > ``factor`` x baseline.
    drain : float
        Saturated when the drain ratio exceeds this.
    max_doublings : int
        Doublings of ``k`` tried after ``start``.
    refine : int
        Bisection steps in ``log k`` once bracketed.

    Returns
    -------
    SaturationResult
    """
    if not (start > 0 and factor > 1 and drain > 0 and max_doublings >= 1 and refine >= 0):
        raise ValueError("find_saturation: need start > 0, factor > 1, drain > 0, max_doublings >= 1, "
                         "refine >= 0")
    evals: list[tuple[float, LoadPoint, bool]] = []
    base_point = evaluate(start)
    base = base_point.ttft_mean_s

    def saturated(p: LoadPoint) -> bool:
        return (not math.isfinite(p.ttft_mean_s) or p.ttft_mean_s > factor * base
                or _lag(p, base_point.drain_s) > drain)

    s0 = saturated(base_point)
    evals.append((start, base_point, s0))
    if s0:  # already saturated at the light load: nothing below to compare with
        return SaturationResult(start, base, True, tuple(evals), factor, drain)
    lo, hi = start, math.nan
    k = start
    for _ in range(max_doublings):
        k *= 2.0
        p = evaluate(k)
        s = saturated(p)
        evals.append((k, p, s))
        if s:
            hi = k
            break
        lo = k
    if not math.isfinite(hi):
        return SaturationResult(math.nan, base, False, tuple(evals), factor, drain)
    for _ in range(refine):
        mid = float(f"{math.sqrt(lo * hi):.4g}")
        if not lo < mid < hi:
            break
        p = evaluate(mid)
        s = saturated(p)
        evals.append((mid, p, s))
        if s:
            hi = mid
        else:
            lo = mid
    return SaturationResult(hi, base, True, tuple(evals), factor, drain)


def _lag(p: LoadPoint, base_drain_s: float) -> float:
    d = p.drain_s - base_drain_s
    if not math.isfinite(d):
        return math.inf
    return max(0.0, d) / p.span_s if p.span_s > 0 else (math.inf if d > 0 else 0.0)


def study_task(task: SimTask, slo: Slo | None = None) -> dict[str, Any]:
    """Run one task (tuning ``tuned-linear`` on the task's workload first); its row.

    Parameters
    ----------
    task : SimTask
    slo : Slo or None
        Objective of ``slo_attainment`` and ``goodput_rps`` (``None`` in the row without).

    Returns
    -------
    dict
        ``tags`` merged with ``policy``, ``policy_resolved``, ``seed``, ``requests``,
        the keys of :meth:`SimResult.summary` (seconds / fractions), ``preemptions`` (count),
        ``end_s``, ``drain_s`` and ``span_s`` (seconds), and the :data:`HEADLINE` metrics
        of :func:`lmetric_theory.sim.metrics.compute_metrics`.
    """
    return study_run(task, slo)[0]


def study_run(task: SimTask, slo: Slo | None = None) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """:func:`study_task`, also returning the run's ``SimResult`` and its metrics document.

    Returns
    -------
    (dict, SimResult, dict)
        The row of :func:`study_task`, the result, and
        :meth:`lmetric_theory.sim.metrics.Metrics.to_json` of the run under ``slo``.
    """
    from lmetric_theory.experiments.tuning import resolve_policy

    policy = resolve_policy(task.policy, task.workload, task.config, seed=task.seed)
    res = run_engine(task, policy)
    row: dict[str, Any] = dict(task.tags)
    row.update(policy=str(task.policy), policy_resolved=res.policy, seed=task.seed,
               requests=len(task.workload))
    row.update(res.summary())
    row["preemptions"] = res.counts()["preemptions"]
    done = res.completed
    end = float(np.max(res.arrival_s[done] + res.e2e_s[done])) if done.any() else math.inf
    arr = np.asarray(res.arrival_s, dtype=float)
    row["end_s"] = end
    row["drain_s"] = end - float(arr.max()) if arr.size else 0.0
    row["span_s"] = float(arr.max() - arr.min()) if arr.size else 0.0
    metrics = compute_metrics(res, slo, task.workload).to_json()
    row.update(headline(metrics))
    return row, res, metrics


def headline(m: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`HEADLINE` keys of a :meth:`Metrics.to_json` document (flat, one row's)."""
    return {"ttft_p95_s": m["ttft_s"]["p95"], "itl_p50_s": m["itl_s"]["p50"],
            "itl_p99_s": m["itl_s"]["p99"], "e2e_p50_s": m["e2e_s"]["p50"],
            "e2e_p99_s": m["e2e_s"]["p99"],
            "request_throughput_rps": m["request_throughput_rps"],
            "output_throughput_tok_s": m["output_throughput_tok_s"],
            "slo_attainment": m["slo_attainment"] if m["slo"] is not None else None,
            "goodput_rps": m["goodput_rps"] if m["slo"] is not None else None}


def saturation_job(job: tuple[Workload, SimConfig, PolicySpec, int, dict[str, Any]]) -> SaturationResult:
    """:func:`find_saturation` with the simulator evaluator; ``job`` = (workload, config, policy,
    seed, keyword arguments of :func:`find_saturation`). Picklable, for an executor's ``map``."""
    w, cfg, policy, seed, kw = job
    return find_saturation(simulator_evaluator(w, cfg, policy, seed=seed), **kw)


def simulator_evaluator(workload: Workload, config: SimConfig,
                        policy: PolicySpec | str = "round-robin", *,
                        seed: int = 0) -> Callable[[float], LoadPoint]:
    """The real evaluator: replay ``workload`` at rate scale ``k`` under ``policy`` (spec
    text is read once, here)."""
    policy = parse_spec(policy)

    def evaluate(k: float) -> LoadPoint:
        row = study_task(SimTask(scale_rate(workload, float(k)), config, policy, seed))
        return LoadPoint(float(row["ttft_mean_s"]), float(row["drain_s"]), float(row["span_s"]))

    return evaluate


def run_chunked(tasks: Sequence[SimTask], executor: Executor, progress: Callable[[int], None] | None,
                chunk: int, slo: Slo | None = None,
                fn: Callable[..., dict[str, Any]] = study_task) -> list[dict[str, Any]]:
    """``fn(task, slo=slo)`` (default :func:`study_task`) of every task through ``executor``;
    the rows in task order.

    An executor with ``imap`` (one pool, results as they finish) keeps at most ``chunk``
    tasks pending and starts the next as soon as one ends, so a slow task never leaves the
    other workers idle at a chunk boundary; ``progress(1)`` after each task. Otherwise the
    tasks go ``chunk`` at a time through ``executor.map``, ``progress(n)`` after each chunk.
    """
    rows: list[dict[str, Any]] = []
    fn = fn if slo is None else functools.partial(fn, slo=slo)
    imap = getattr(executor, "imap", None)
    if imap is not None and len(tasks) > 1:
        out: list[dict[str, Any] | None] = [None] * len(tasks)
        for k, row in imap(fn, tasks, window=max(1, chunk)):
            out[k] = row
            if progress is not None:
                progress(1)
        assert all(r is not None for r in out), "imap returned fewer rows than tasks"
        return out  # type: ignore[return-value]
    for i in range(0, len(tasks), chunk):
        part = list(tasks[i:i + chunk])
        rows += list(executor.map(fn, part))
        if progress is not None:
            progress(len(part))
    return rows


@dataclass(slots=True)
class GridSpec:
    """One workload of the grid: a name, a factory ``seed -> Workload`` and the loads to run.

    Attributes
    ----------
    name : str
        Label used in the rows (``workload`` key).
    make : callable
        ``seed -> Workload`` (a trace ignores the seed).
    scales : list of float
        Absolute rate scales to run.
    labels : list of str
        One label per scale (e.g. ``"0.5x sat"``), in the rows as ``load``.
    """

    name: str
    make: Callable[[int], Workload]
    scales: list[float]
    labels: list[str] = field(default_factory=list)


def run_grid(grids: Iterable[GridSpec], config: SimConfig, policies: Sequence[str],
             seeds: Sequence[int], *, executor: Executor | str | None = None,
             workers: int | None = None, progress: Callable[[int], None] | None = None,
             chunk: int | None = None, run_specs: Mapping[str, PolicySpec] | None = None,
             engine: str = "fast", slo: Slo | None = None) -> list[dict[str, Any]]:
    """Every policy x load x seed on every workload; one row per run (see :func:`study_task`).

    Rows carry ``workload``, ``load`` (label), ``rate_scale``, ``name`` (the spec asked for) and
    ``seed``. ``run_specs`` maps a name to the typed spec actually run (e.g. ``tuned-linear``
    -> ``tuned-linear:points=6``); a name without one is read as spec text, once.
    ``progress(n)`` is called after each chunk of ``n`` finished runs. ``engine`` runs every task on ``fast`` or ``vllm`` (tuning ``tuned-linear`` always uses
    the fast engine). ``slo`` fills the rows' ``slo_attainment`` and ``goodput_rps``.
    """
    given = dict(run_specs or {})
    specs = {name: parse_spec(given.get(name, name)) for name in policies}
    ex = get_executor(executor, workers=workers)
    tasks = []
    for g in grids:
        labels = g.labels or [f"x{k:g}" for k in g.scales]
        for seed in seeds:
            w = g.make(seed)
            for k, lab in zip(g.scales, labels, strict=True):
                wk = scale_rate(w, float(k))
                tasks += [SimTask(wk, config, specs[name], int(seed),
                                  {"workload": g.name, "load": lab, "rate_scale": float(k), "name": name},
                                  engine)
                          for name in policies]
    n = chunk or max(1, 4 * int(getattr(ex, "workers", 1) or 1))
    return run_chunked(tasks, ex, progress, n, slo)


def aggregate(rows: Iterable[Mapping[str, Any]], metrics: Sequence[str] = METRICS) -> list[dict[str, Any]]:
    """Rows reduced over seeds: per (workload, load, name), each metric's mean, min and max.

    Returns
    -------
    list of dict
        Keys ``workload``, ``load``, ``rate_scale``, ``name``, ``seeds`` and, per metric ``m``,
        ``m`` (mean over seeds), ``m_min``, ``m_max`` (``None`` when undefined).
    """
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["workload"], r["load"], r["name"]), []).append(r)
    out = []
    for (wl, load, name), rs in groups.items():
        a: dict[str, Any] = {"workload": wl, "load": load, "rate_scale": rs[0]["rate_scale"], "name": name,
                             "seeds": len(rs)}
        for m in metrics:
            v = np.array([np.nan if r.get(m) is None else float(r[m]) for r in rs], dtype=float)
            ok = np.isfinite(v)
            a[m] = float(v[ok].mean()) if ok.any() else None
            a[f"{m}_min"] = float(v[ok].min()) if ok.any() else None
            a[f"{m}_max"] = float(v[ok].max()) if ok.any() else None
        out.append(a)
    return out


@dataclass(frozen=True, slots=True)
class Claim:
    """One of the paper's claims: target vs baseline on a metric, and the paper's figure.

    Attributes
    ----------
    label : str
        Short description.
    metric : str
        Row key compared (e.g. ``ttft_mean_s``).
    target, baseline : str
        Policy names (``name`` in the rows).
    paper_pct : float or None
        The paper's figure, percent change of target vs baseline (negative = better); ``None``
        for a comparison this project adds, for which no figure of the paper can be cited.
    source : str or None
        Where ``paper_pct`` is stated (version and place), ``None`` without one.
    """

    label: str
    metric: str
    target: str
    baseline: str
    paper_pct: float | None
    source: str | None = None


#: Where the paper's figures are stated: the abstract of arXiv 2603.15202v1 (16 Mar 2026),
#: "reduce TTFT by 92% and 52%, and TPOT by 21% and 20%, compared to vLLM-v1 and a production
#: scheduler" (respectively). Later versions' figures are not used: their text could not be
#: read here (docs/results.md).
PAPER_V1 = "arXiv 2603.15202v1, abstract"

#: The paper's claims as the v1 abstract states them (TTFT and TPOT against vLLM-v1, and
#: against the production scheduler = Company-X = :data:`COMPANY_X`), then this project's own
#: comparisons, which the paper gives no figure for (Dynamo's score, an oracle-tuned linear
#: score). The abstract's figures are "up to" figures: compare them with :func:`claim_best`.
CLAIMS: tuple[Claim, ...] = (
    Claim("TTFT vs vLLM-v1", "ttft_mean_s", "lmetric", "vllm-v1", -92.0, PAPER_V1),
    Claim("TPOT vs vLLM-v1", "tpot_mean_s", "lmetric", "vllm-v1", -21.0, PAPER_V1),
    Claim("TTFT vs Company-X (tuned bailian)", "ttft_mean_s", "lmetric", COMPANY_X, -52.0, PAPER_V1),
    Claim("TPOT vs Company-X (tuned bailian)", "tpot_mean_s", "lmetric", COMPANY_X, -20.0, PAPER_V1),
    Claim("TTFT vs Dynamo", "ttft_mean_s", "lmetric", "dynamo", None),
    Claim("TPOT vs Dynamo", "tpot_mean_s", "lmetric", "dynamo", None),
    Claim("TTFT vs tuned linear", "ttft_mean_s", "lmetric", "tuned-linear", None),
    Claim("TTFT vs Dynamo's default (dynamo-kv)", "ttft_mean_s", "lmetric", SHIPPED_DEFAULTS[0], None),
    Claim("TPOT vs Dynamo's default (dynamo-kv)", "tpot_mean_s", "lmetric", SHIPPED_DEFAULTS[0], None),
    Claim("TTFT vs llm-d's default (optimized-baseline)", "ttft_mean_s", "lmetric",
          SHIPPED_DEFAULTS[1], None),
    Claim("TPOT vs llm-d's default (optimized-baseline)", "tpot_mean_s", "lmetric",
          SHIPPED_DEFAULTS[1], None),
)


def claim_changes(rows: Iterable[Mapping[str, Any]], claims: Sequence[Claim] = CLAIMS) -> list[dict[str, Any]]:
    """Percentage change of each claim's target vs its baseline, paired by seed.

    For each (workload, load) and claim: per seed, ``100 * (target - baseline) / baseline`` of
    the claim's metric; then the mean, min and max over the seeds where both ran.

    Returns
    -------
    list of dict
        Keys ``workload``, ``load``, ``claim``, ``metric``, ``target``, ``baseline``,
        ``paper_pct``, ``source``, ``pct`` (mean, percent), ``pct_min``, ``pct_max``, ``seeds``;
        ``pct`` is ``None`` when no seed has both values.
    """
    idx: dict[tuple[str, str, str, int], Mapping[str, Any]] = {}
    cells: list[tuple[str, str]] = []
    for r in rows:
        idx[(r["workload"], r["load"], r["name"], int(r["seed"]))] = r
        if (r["workload"], r["load"]) not in cells:
            cells.append((r["workload"], r["load"]))
    seeds = sorted({k[3] for k in idx})
    out = []
    for wl, load in cells:
        for c in claims:
            pcts = []
            for s in seeds:
                t, b = idx.get((wl, load, c.target, s)), idx.get((wl, load, c.baseline, s))
                if t is None or b is None or t.get(c.metric) is None or b.get(c.metric) is None:
                    continue
                tv, bv = float(t[c.metric]), float(b[c.metric])
                if math.isfinite(tv) and math.isfinite(bv) and bv > 0:
                    pcts.append(100.0 * (tv - bv) / bv)
            out.append({"workload": wl, "load": load, "claim": c.label, "metric": c.metric,
                        "target": c.target, "baseline": c.baseline, "paper_pct": c.paper_pct,
                        "source": c.source,
                        "pct": float(np.mean(pcts)) if pcts else None,
                        "pct_min": float(min(pcts)) if pcts else None,
                        "pct_max": float(max(pcts)) if pcts else None, "seeds": len(pcts)})
    return out


def claim_best(changes: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The best case of each claim over every workload and load: the paper's "up to" reading.

    Parameters
    ----------
    changes : iterable of dict
        The output of :func:`claim_changes`.

    Returns
    -------
    list of dict
        One per claim, in first-seen order: ``claim``, ``paper_pct``, ``source``, ``pct``
        (the most negative mean change over the cells, percent; ``None`` when no cell has
        one), ``pct_min`` and ``pct_max`` (that cell's seed range), ``workload`` and
        ``load`` (that cell), ``cells`` (how many cells had a value), ``worst_pct`` (the
        least negative mean change, percent).
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for c in changes:
        groups.setdefault(c["claim"], []).append(c)
    out = []
    for label, cs in groups.items():
        ok = [c for c in cs if c["pct"] is not None]
        best = min(ok, key=lambda c: c["pct"]) if ok else None
        out.append({"claim": label, "paper_pct": cs[0]["paper_pct"], "source": cs[0].get("source"),
                    "pct": None if best is None else best["pct"],
                    "pct_min": None if best is None else best["pct_min"],
                    "pct_max": None if best is None else best["pct_max"],
                    "workload": None if best is None else best["workload"],
                    "load": None if best is None else best["load"],
                    "cells": len(ok),
                    "worst_pct": max(c["pct"] for c in ok) if ok else None})
    return out
