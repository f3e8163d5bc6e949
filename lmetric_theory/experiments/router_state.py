"""The router-state study: policies under router replicas and late KV events.

Every policy replays the same workloads at each router-state setting (``router_replicas``
R and ``kv_event_lag_s``), on a few seeds; the study reports mean and p99 TTFT, ITL p99
and goodput per cell with a Student-t interval and the range over seeds, and the percent
change of a focus policy (``lmetric``) against every other, paired by seed.
docs/router_state.md states the model and shows the table.

A seed is a window of the trace: seed ``k`` replays the ``count`` requests starting at
request ``k * count`` (sessions cut by the window start become sessions of their own, as
:func:`~lmetric_theory.workload.select` says), routed with policy seed ``k``; with
``ReplicaAssignment.RANDOM`` it also draws the replicas.

``tuned-linear`` is tuned once per workload window on one router with exact state (a
deployer tunes offline) and keeps that rate at every setting.

A policy text may name the setting's replica count as ``replicas=R``
(:data:`REPLICAS_PLACEHOLDER`; e.g. ``guarded-lmetric:mitigation=counter_sync,replicas=R``):
at each setting it runs with the setting's ``R`` (a deployer who knows its replica count
configures it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from lmetric_theory.experiments.stats import t_interval
from lmetric_theory.experiments.tasks import LocalExecutor, get_executor
from lmetric_theory.experiments.tuning import resolve_policy
from lmetric_theory.policies import PolicySpec, parse_spec
from lmetric_theory.sim import SimConfig, Simulator
from lmetric_theory.sim.metrics import Slo, compute_metrics
from lmetric_theory.workload import Workload, select

__all__ = ["METRICS", "REPLICAS_PLACEHOLDER", "RouterStateStudy", "resolve_replicas", "StudyWorkload", "router_state_settings",
           "router_state_study", "window"]

#: Metrics of a cell: name -> (Metrics attribute, lower is better).
METRICS: dict[str, tuple[str, bool]] = {
    "ttft_mean_s": ("ttft_mean_s", True),
    "ttft_p99_s": ("ttft_p99_s", True),
    "itl_p99_s": ("itl_p99_s", True),
    "goodput_rps": ("goodput_rps", False),
    "prefix_hit_rate": ("prefix_hit_rate", False),
}


#: In a policy text of the study, the setting's router replica count.
REPLICAS_PLACEHOLDER = "replicas=R"


def resolve_replicas(text: str, replicas: int) -> PolicySpec:
    """The policy of ``text`` at a setting with ``replicas`` router replicas: every
    :data:`REPLICAS_PLACEHOLDER` becomes ``replicas=<R>``; other texts are parsed as they
    are."""
    return parse_spec(text.replace(REPLICAS_PLACEHOLDER, f"replicas={int(replicas)}"))


@dataclass(frozen=True, slots=True)
class StudyWorkload:
    """One workload of the study.

    Attributes
    ----------
    name : str
        Label in the table.
    workload : Workload
        The whole trace (windows are cut from it per seed).
    count : int
        Requests per window.
    concurrency : int or None
        Session cap (closed loop), or None (the trace's own arrivals).
    """

    name: str
    workload: Workload
    count: int
    concurrency: int | None = None


def window(w: Workload, count: int, seed: int) -> Workload:
    """Requests ``[seed * count, (seed + 1) * count)`` of ``w`` (rebased to start at 0 s);
    ``ValueError`` when the trace is too short."""
    n = len(w)
    first = seed * count
    if first + count > n:
        raise ValueError(f"window: seed {seed} needs requests {first}..{first + count - 1}, "
                         f"the trace has {n}")
    if first == 0:
        return select(w, count=count)
    t = np.asarray(w.arrival_s)
    t0 = float(t[first])
    return select(w, start_s=t0, count=count,
                  skip=first - int(np.searchsorted(t, t0, side="left")))


def router_state_settings(replicas: Sequence[int], lags_s: Sequence[float], *,
                          full: bool = False) -> list[tuple[int, float]]:
    """The ``(R, lag)`` settings: every pair with ``full``; otherwise the two axes through
    ``(min R, min lag)`` (each R at the smallest lag, each lag at the smallest R) plus the
    corner ``(max R, max lag)``, in that order, without repeats."""
    rs = sorted({int(r) for r in replicas})
    ls = sorted({float(x) for x in lags_s})
    if not rs or not ls:
        raise ValueError("settings: give at least one replica count and one lag")
    if full:
        return [(r, x) for r in rs for x in ls]
    out: list[tuple[int, float]] = [(r, ls[0]) for r in rs]
    out += [(rs[0], x) for x in ls[1:]]
    if (rs[-1], ls[-1]) not in out:
        out.append((rs[-1], ls[-1]))
    return out


@dataclass(frozen=True, slots=True)
class RouterStateStudy:
    """The rows of a study and their aggregates.

    Attributes
    ----------
    rows : list of dict
        One per run: ``workload``, ``policy``, ``replicas``, ``lag_s``, ``seed``, the
        :data:`METRICS` values (seconds, requests per second, fractions) and
        ``policy_resolved``.
    settings : list of (int, float)
        The ``(R, lag)`` settings in table order.
    policies : list of str
        The policy texts, in order.
    focus : str
        The policy the percent changes are about.
    config : dict
        The cluster, the SLO, the seeds and the per-workload sizes.
    """

    rows: list[dict[str, Any]]
    settings: list[tuple[int, float]]
    policies: list[str]
    focus: str
    config: dict[str, Any] = field(default_factory=dict)

    def _cells(self) -> dict[tuple[str, str, int, float], list[dict[str, Any]]]:
        cells: dict[tuple[str, str, int, float], list[dict[str, Any]]] = {}
        for r in self.rows:
            cells.setdefault((r["workload"], r["policy"], r["replicas"], r["lag_s"]), []).append(r)
        return cells

    def aggregate(self) -> list[dict[str, Any]]:
        """Per (workload, policy, R, lag): each metric's mean over seeds with a 95% t
        interval and the [min, max] range (``{"value", "ci95", "range", "n"}``)."""
        out = []
        for (wl, pol, r, lag), rows in self._cells().items():
            cell: dict[str, Any] = {"workload": wl, "policy": pol, "replicas": r, "lag_s": lag}
            for m in METRICS:
                v = np.asarray([x[m] for x in rows], dtype=np.float64)
                est = t_interval(v)
                fin = v[np.isfinite(v)]
                cell[m] = {"value": est.value, "ci95": [est.lo, est.hi],
                           "range": [float(fin.min()), float(fin.max())] if fin.size else
                           [math.nan, math.nan], "n": est.n}
            out.append(cell)
        return out

    def changes(self, metric: str = "ttft_mean_s") -> list[dict[str, Any]]:
        """Percent change of the focus policy against every other, per (workload, R, lag),
        paired by seed: ``100 * (focus / other - 1)``, mean and [min, max] over seeds
        (negative: the focus policy is lower)."""
        if metric not in METRICS:
            raise ValueError(f"metric: {metric!r} is not one of {', '.join(METRICS)}")
        by = {(r["workload"], r["policy"], r["replicas"], r["lag_s"], r["seed"]): r[metric]
              for r in self.rows}
        out = []
        wls = list(dict.fromkeys(r["workload"] for r in self.rows))
        seeds = sorted({r["seed"] for r in self.rows})
        for wl in wls:
            for r, lag in self.settings:
                for pol in self.policies:
                    if pol == self.focus:
                        continue
                    pc = []
                    for s in seeds:
                        a = by.get((wl, self.focus, r, lag, s))
                        b = by.get((wl, pol, r, lag, s))
                        if a is not None and b is not None and b > 0 and math.isfinite(a):
                            pc.append(100.0 * (a / b - 1.0))
                    out.append({"workload": wl, "replicas": r, "lag_s": lag, "against": pol,
                                "metric": metric,
                                "pct": float(np.mean(pc)) if pc else math.nan,
                                "range": [min(pc), max(pc)] if pc else [math.nan, math.nan],
                                "n": len(pc)})
        return out

    def to_json(self) -> dict[str, Any]:
        """JSON-ready document: config, settings, rows, aggregates, focus changes (mean TTFT,
        p99 TTFT, goodput)."""
        return {"config": self.config, "settings": [list(s) for s in self.settings],
                "policies": self.policies, "focus": self.focus, "rows": self.rows,
                "aggregate": self.aggregate(),
                "changes": {m: self.changes(m) for m in ("ttft_mean_s", "ttft_p99_s",
                                                          "goodput_rps")}}


def _run_cell(job: tuple[Workload, SimConfig, PolicySpec, int, dict[str, Any], Slo | None]
              ) -> dict[str, Any]:
    w, cfg, spec, seed, tags, slo = job
    res = Simulator(w, cfg, spec, seed=seed).run()
    m = compute_metrics(res, slo, w)
    row = dict(tags)
    row["policy_resolved"] = res.policy
    for k, (attr, _) in METRICS.items():
        row[k] = float(getattr(m, attr))
    row["completed"] = int(m.completed)
    return row


def router_state_study(
    workloads: Sequence[StudyWorkload],
    config: SimConfig,
    policies: Sequence[str | PolicySpec],
    *,
    replicas: Sequence[int] = (1, 2, 4, 8),
    lags_s: Sequence[float] = (0.0, 0.05, 0.2, 1.0),
    seeds: Sequence[int] = (0, 1),
    full: bool = False,
    slo: Slo | None = None,
    focus: str = "lmetric",
    executor: Any = None,
    progress: Callable[[int, int], None] | None = None,
) -> RouterStateStudy:
    """Run every policy at every router-state setting on every workload window.

    Parameters
    ----------
    workloads : sequence of StudyWorkload
        The traces, window sizes and session caps.
    config : SimConfig
        The cluster (its router-state fields are replaced per setting; its
        ``replica_assignment``, ``index`` and ``signal_delay_s`` are kept).
    policies : sequence of str or PolicySpec
        Policies (texts are read once, here); ``tuned-linear`` is tuned per window at R = 1,
        lag 0; ``replicas=R`` in a text takes each setting's replica count.
    replicas, lags_s : sequences
        Router replica counts (>= 1) and KV event lags (seconds, >= 0).
    seeds : sequence of int
        Windows / policy seeds.
    full : bool
        Every (R, lag) pair instead of the two axes and the corner
        (:func:`router_state_settings`).
    slo : Slo, optional
        For goodput (NaN without one).
    focus : str
        Policy text the percent changes are about.
    executor
        ``"local"``, ``"dask"``, an executor, or None (local processes).
    progress : callable, optional
        ``progress(done, total)`` after each batch of runs.

    Returns
    -------
    RouterStateStudy
    """
    texts = [str(p) if isinstance(p, PolicySpec) else p for p in policies]
    if len(set(texts)) != len(texts):
        raise ValueError("policies: the same policy was given twice")
    specs = {t: p if isinstance(p, PolicySpec) else resolve_replicas(p, 1)
             for t, p in zip(texts, policies, strict=True)}
    templated = {t for t, p in zip(texts, policies, strict=True)
                 if not isinstance(p, PolicySpec) and REPLICAS_PLACEHOLDER in p}
    per_r = {(t, int(r)): resolve_replicas(t, int(r)) for t in templated for r in replicas}
    if focus not in specs:
        raise ValueError(f"focus: {focus!r} is not one of the policies")
    for r in replicas:
        if int(r) < 1:
            raise ValueError(f"replicas: must be >= 1, got {r}")
    for x in lags_s:
        if not (math.isfinite(float(x)) and float(x) >= 0):
            raise ValueError(f"lags: must be finite and >= 0 seconds, got {x}")
    settings = router_state_settings(replicas, lags_s, full=full)
    ex = get_executor(executor)
    jobs = []
    for sw in workloads:
        for seed in seeds:
            w = window(sw.workload, sw.count, int(seed))
            base = replace(config, concurrency=sw.concurrency, record_snapshots=False,
                           router_replicas=1, kv_event_lag_s=0.0)
            resolved = {t: resolve_policy(s, w, base, seed=int(seed), executor=LocalExecutor(1))
                        if s.name == "tuned-linear" else s for t, s in specs.items()}
            for r, lag in settings:
                cfg = replace(base, router_replicas=int(r), kv_event_lag_s=float(lag))
                for t in texts:
                    tags = {"workload": sw.name, "policy": t, "replicas": int(r),
                            "lag_s": float(lag), "seed": int(seed)}
                    spec = per_r[(t, int(r))] if t in templated else resolved[t]
                    jobs.append((w, cfg, spec, int(seed), tags, slo))
    rows: list[dict[str, Any]] = []
    step = max(1, len(jobs) // 20)
    for k in range(0, len(jobs), step):
        rows.extend(ex.map(_run_cell, jobs[k:k + step]))
        if progress is not None:
            progress(len(rows), len(jobs))
    cfg_doc = config.to_dict()
    cfg_doc.pop("latency", None)
    doc = {"cluster": cfg_doc, "seeds": [int(s) for s in seeds],
           "slo": None if slo is None else slo.to_json(),
           "workloads": [{"name": sw.name, "count": sw.count, "concurrency": sw.concurrency,
                          "source": sw.workload.meta.get("source")} for sw in workloads],
           "replica_assignment": config.replica_assignment.value,
           "index": config.index.text}
    return RouterStateStudy(rows=rows, settings=settings, policies=texts, focus=focus,
                            config=doc)
