"""``advise``: should this workload be routed by LMetric? One study that answers with evidence.

:func:`advise` runs, on one workload:

1. **Saturation.** :func:`lmetric_theory.experiments.study.find_saturation` under
   ``round-robin``: on the arrival-rate scale for an open-loop workload, on the session
   concurrency (``SimConfig.concurrency``) for a closed-loop session workload, where the
   evaluator runs at concurrency ``round(k)`` and only the TTFT criterion applies (arrivals
   follow completions, so the replay cannot lag behind its trace).
2. **Load sweep.** Every policy (``lmetric``, ``guarded-lmetric`` with the detector's
   mitigations at the reference, ``tuned-linear`` as an oracle, and every current policy) at
   every load (fractions of the saturation point) for every seed, through an executor of
   :mod:`lmetric_theory.experiments.tasks` (rows of
   :func:`lmetric_theory.experiments.study.study_task`). Seeds change the policies' random
   choices and, for a synthetic workload, the workload itself.
3. **Comparisons and verdict.** ``lmetric`` against each other policy, paired by seed
   (:func:`lmetric_theory.experiments.study.claim_changes`): per seed the percent change
   ``100 (lmetric - other) / other`` of a metric. At one load, lmetric **wins** when every
   seed's change is better than ``-tolerance_pct`` (lower latency; for goodput, higher),
   **loses** when every seed's change is worse than ``+tolerance_pct``, and **ties**
   otherwise (the seed range holds a change within the tolerance, or straddles it).
   Over the sweep: ``win``, ``tie`` or ``lose`` when every load agrees, else ``mixed``, with
   the load range of each outcome.
4. **Hot-prefix risk.** A replay under ``lmetric`` at the focus load with snapshots, through
   the shared hot-spot runner (:func:`lmetric_theory.experiments.hotspots.run_hotspots`,
   lmetric's own score definition): the classes that raised phase 1 and whether condition
   (l) held; when a class was found, ``guarded-lmetric:mitigation=hotspot`` runs at the focus
   load for every seed and its paired change against ``lmetric`` is the measured gain.
5. **Is harm detectable?** A short counterfactual study
   (:func:`lmetric_theory.experiments.counterfactual.counterfactual_study`) of lmetric's
   disagreement flag at the focus load: harm rates of flagged and control decisions and
   AUROC, with bootstrap intervals. Harm is called detectable when the flagged harm-rate
   interval lies above the control's, or the AUROC interval of ``disagreement`` above 0.5.
6. **Confirmation** (optional): the focus-load comparison of ``lmetric`` and the current
   policies re-run on vLLM's own scheduler over the first ``confirm_vllm`` requests, beside
   the fast engine on the same requests.
7. **Router state.** The sweep runs under ``config``'s router set-up (replicas, replica
   assignment, signal delay, KV-event lag, cache index; docs/router_state.md); at the focus
   load ``lmetric`` and the current policies also run at every setting of router replicas
   ``R`` (default 1, 2, 4, 8) and KV-event lag (default 0, 0.2, 1 s) on the two axes and the
   corner, every seed, paired comparisons per setting.

The library prints nothing and writes nothing; :mod:`lmetric_theory.cli.advise` prints and
:mod:`lmetric_theory.io.advise` writes the report.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmetric_theory.core.fileio import json_safe
from lmetric_theory.detector import LinearReference
from lmetric_theory.experiments import stats
from lmetric_theory.experiments.study import (
    Claim,
    LoadPoint,
    SaturationResult,
    aggregate,
    claim_changes,
    find_saturation,
    run_chunked,
    study_run,
    study_task,
)
from lmetric_theory.experiments.tasks import Executor, SimTask, get_executor
from lmetric_theory.policies import PolicySpec, parse_spec, policy_names, policy_spec
from lmetric_theory.sim import SimConfig
from lmetric_theory.sim.metrics import Slo
from lmetric_theory.workload import Workload, scale_rate, select

__all__ = [
    "ADVICE_SCHEMA",
    "CDF_POINTS",
    "DEFAULT_CURRENT",
    "FALLBACK_CURRENT",
    "METRICS",
    "AdviseSettings",
    "SaturationNotFound",
    "advise",
    "advise_task",
    "default_current",
    "outcome",
]

#: Identifier of the JSON document (``schema`` key); bumped when a documented key changes.
ADVICE_SCHEMA = "lmetric-theory/advice/1"

#: Default current policies once the shipped router policies are registered.
DEFAULT_CURRENT: tuple[str, ...] = ("dynamo-kv", "llm-d:profile=optimized-baseline")

#: Default current policies while they are not.
FALLBACK_CURRENT: tuple[str, ...] = ("vllm-v1", "round-robin")

#: Per-load metrics reported with intervals over seeds: key -> True when lower is better.
METRICS: dict[str, bool] = {
    "ttft_mean_s": True, "ttft_p99_s": True, "tpot_mean_s": True, "tpot_p99_s": True,
    "itl_p99_s": True, "e2e_p99_s": True, "goodput_rps": False, "slo_attainment": False,
}

#: Metrics compared for the verdict (the first is the headline); goodput only with an SLO.
VERDICT_METRICS: tuple[str, ...] = ("ttft_mean_s", "ttft_p99_s", "tpot_mean_s", "goodput_rps")

#: Probabilities at which the TTFT and TPOT distributions are kept for the CDF plots.
CDF_POINTS: int = 101

class SaturationNotFound(ValueError):
    """The workload never saturated within the search (too short, or too few sessions)."""


def default_current() -> tuple[str, ...]:
    """The current policies compared by default: :data:`DEFAULT_CURRENT` when every one of
    them parses against the registry (checked now, not at import), else
    :data:`FALLBACK_CURRENT`."""
    names = set(policy_names())
    try:
        if all(parse_spec(s).name in names for s in DEFAULT_CURRENT):
            return DEFAULT_CURRENT
    except (ValueError, KeyError, TypeError):
        pass
    return FALLBACK_CURRENT


@dataclass(frozen=True, slots=True)
class AdviseSettings:
    """What :func:`advise` runs.

    Attributes
    ----------
    current : tuple of PolicySpec
        The policies run today (compared against ``lmetric``).
    reference : LinearReference
        Linear reference (rate ``lam``, band; tokens per batch slot) of ``guarded-lmetric``
        and of the counterfactual study's detector.
    loads : tuple of float
        Fractions of the saturation point (> 0).
    focus : float
        The fraction whose CDFs, per-instance loads, hot-spot check and counterfactual
        study are reported (one of ``loads``).
    seeds : int
        Seeds ``0..seeds-1``.
    slo : Slo or None
        Objective of goodput and SLO attainment.
    engine : str
        ``"fast"`` or ``"vllm"`` for the sweep.
    confirm_vllm : int or None
        Requests of the vLLM confirmation (``None``: none).
    points : int
        Grid points of ``tuned-linear``.
    tolerance_pct : float
        Changes within ``+-tolerance_pct`` percent are ties.
    cf_samples : int
        Flagged decisions (and as many controls) of the counterfactual study (0: skip it).
    cf_horizon_s : float
        Its affected-request horizon, seconds.
    concurrency : tuple of int or None
        Explicit session concurrencies to sweep (closed loop; no saturation search).
    router_sensitivity : bool
        Run the router-state sensitivity at the focus load.
    router_replicas, router_lags_s : tuple
        Its router replica counts and KV-event lags (seconds); the settings are the two axes
        and the corner (:func:`~lmetric_theory.experiments.router_state.router_state_settings`).
    router_seeds : int
        Seeds ``0..router_seeds-1`` of the sensitivity (at most ``seeds``; default 1, to keep
        the main job within its time goal).
    sat_factor, sat_drain : float
        Saturation criterion (see :func:`~lmetric_theory.experiments.study.find_saturation`).
    """

    current: tuple[PolicySpec, ...]
    reference: LinearReference
    loads: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    focus: float = 0.75
    seeds: int = 2
    slo: Slo | None = None
    engine: str = "fast"
    confirm_vllm: int | None = None
    points: int = 4
    tolerance_pct: float = 1.0
    cf_samples: int = 8
    cf_horizon_s: float = 5.0
    concurrency: tuple[int, ...] | None = None
    router_sensitivity: bool = True
    router_replicas: tuple[int, ...] = (1, 2, 4, 8)
    router_lags_s: tuple[float, ...] = (0.0, 0.2, 1.0)
    router_seeds: int = 1
    sat_factor: float = 10.0
    sat_drain: float = 0.25

    def __post_init__(self) -> None:
        if not self.current:
            raise ValueError("current: give at least one current policy")
        if not self.loads or any(not (math.isfinite(f) and f > 0) for f in self.loads):
            raise ValueError(f"loads: need fractions > 0, got {self.loads}")
        if self.focus not in self.loads:
            raise ValueError(f"focus {self.focus:g} is not one of the loads {self.loads}")
        if self.seeds < 1 or self.points < 2 or self.cf_samples < 0 or self.cf_horizon_s <= 0:
            raise ValueError("seeds >= 1, points >= 2, cf_samples >= 0, cf_horizon_s > 0 needed")
        if self.tolerance_pct < 0:
            raise ValueError(f"tolerance_pct must be >= 0, got {self.tolerance_pct}")
        if self.engine not in ("fast", "vllm"):
            raise ValueError(f"engine: {self.engine!r} is not one of fast, vllm")
        if self.confirm_vllm is not None and self.confirm_vllm < 1:
            raise ValueError(f"confirm_vllm must be >= 1, got {self.confirm_vllm}")
        if self.concurrency is not None and (not self.concurrency or min(self.concurrency) < 1):
            raise ValueError(f"concurrency: need values >= 1, got {self.concurrency}")
        if not 1 <= self.router_seeds <= self.seeds:
            raise ValueError(f"router_seeds must be in 1..seeds, got {self.router_seeds}")
        if not self.router_replicas or min(self.router_replicas) < 1:
            raise ValueError(f"router_replicas: need values >= 1, got {self.router_replicas}")
        if not self.router_lags_s or any(not (math.isfinite(x) and x >= 0)
                                         for x in self.router_lags_s):
            raise ValueError(f"router_lags_s: need seconds >= 0, got {self.router_lags_s}")


def advise_task(task: SimTask, slo: Slo | None = None) -> dict[str, Any]:
    """:func:`~lmetric_theory.experiments.study.study_task`'s row plus ``detail``.

    ``detail`` holds ``ttft_q_s`` and ``tpot_q_s`` (the finished requests' TTFT and TPOT at
    :data:`CDF_POINTS` evenly spaced probabilities 0..1, seconds; TPOT over outputs of more
    than one token) and ``per_instance`` (the metrics document's requests, prefill tokens
    computed and mean batch per instance). Picklable, for an executor's ``map``.
    """
    row, res, metrics = study_run(task, slo)
    done = res.completed
    q = np.linspace(0.0, 1.0, CDF_POINTS)

    def quant(a: np.ndarray) -> list[float] | None:
        a = a[np.isfinite(a)]
        return np.quantile(a, q).tolist() if a.size else None

    row["detail"] = {"ttft_q_s": quant(np.asarray(res.ttft_s)[done]),
                     "tpot_q_s": quant(np.asarray(res.tpot_s)[done]),
                     "per_instance": metrics["per_instance"]}
    return row


def outcome(pcts: Sequence[float], lower_is_better: bool, tolerance_pct: float) -> str:
    """``win``, ``lose`` or ``tie`` of lmetric from its per-seed percent changes.

    Parameters
    ----------
    pcts : sequence of float
        ``100 (lmetric - other) / other`` per seed, percent.
    lower_is_better : bool
        The metric's direction (latency: True; goodput: False).
    tolerance_pct : float
        Half-width of the tie zone, percent.

    Returns
    -------
    str
        ``win`` when every seed is better by more than the tolerance, ``lose`` when every
        seed is worse by more, else ``tie``; ``n/a`` without a value.
    """
    if not pcts:
        return "n/a"
    better = [(-p if lower_is_better else p) for p in pcts]
    if min(better) > tolerance_pct:
        return "win"
    if max(better) < -tolerance_pct:
        return "lose"
    return "tie"


# ---------------------------------------------------------------------------------- steps


def _point_task(workload: Workload, config: SimConfig, mode: str, policy: PolicySpec, seed: int,
                k: float) -> SimTask:
    """The saturation search's run at rate scale ``k`` (open loop) or concurrency ``round(k)``."""
    if mode == "rate":
        return SimTask(scale_rate(workload, float(k)), config, policy, seed)
    return SimTask(workload, dataclasses.replace(config, concurrency=max(1, int(round(k)))),
                   policy, seed)


def _point(mode: str, row: Mapping[str, Any]) -> LoadPoint:
    if mode == "rate":
        return LoadPoint(float(row["ttft_mean_s"]), float(row["drain_s"]), float(row["span_s"]))
    return LoadPoint(float(row["ttft_mean_s"]), 0.0, 1.0)  # closed loop: no lag criterion


def _evaluator(workload: Workload, config: SimConfig, mode: str, policy: PolicySpec, seed: int,
               start: float, ex: Executor) -> Callable[[float], LoadPoint]:
    """``k -> LoadPoint`` of the saturation search. A scale on the doubling ladder
    ``start * 2**j`` that is not cached yet is run together with the next ``workers - 1``
    rungs through ``ex`` (the search asks for them next unless it saturates first), so the
    doubling phase uses every worker; the bisection points run one at a time."""
    width = max(1, int(getattr(ex, "workers", 1) or 1))
    cache: dict[float, LoadPoint] = {}

    def on_ladder(k: float) -> bool:
        j = math.log2(k / start)
        return abs(j - round(j)) < 1e-9 and round(j) >= 0

    def evaluate(k: float) -> LoadPoint:
        k = float(k)
        if k not in cache:
            ks = [k * 2.0 ** i for i in range(width)] if on_ladder(k) else [k]
            ks = [x for x in ks if x not in cache]
            tasks = [_point_task(workload, config, mode, policy, seed, x) for x in ks]
            rows = ex.map(study_task, tasks) if len(tasks) > 1 else [study_task(tasks[0])]
            for x, row in zip(ks, rows, strict=True):
                cache[x] = _point(mode, row)
        return cache[k]

    return evaluate


def _saturation(workload: Workload, config: SimConfig, mode: str, s: AdviseSettings,
                source: str, ex: Executor) -> SaturationResult:
    start = 0.25 if mode == "rate" else 1.0
    evaluate = _evaluator(workload, config, mode, parse_spec("round-robin"), 0, start, ex)
    if mode == "rate":
        r = find_saturation(evaluate, start=start, factor=s.sat_factor, drain=s.sat_drain)
    else:
        n_sessions = workload.sessions.n_sessions if workload.sessions is not None else len(workload)
        doublings = max(1, min(8, int(math.floor(math.log2(max(n_sessions, 2))))))
        # no lag criterion in closed loop: arrivals follow completions
        r = find_saturation(evaluate, start=start, factor=s.sat_factor, drain=math.inf,
                            max_doublings=doublings)
    if not r.found:
        last = r.evaluations[-1][0]
        axis = "rate scale" if mode == "rate" else "concurrency"
        raise SaturationNotFound(
            f"{source}: {len(workload)} requests are too few to find a saturation point (mean "
            f"TTFT under round-robin stayed below {s.sat_factor:g}x its light-load value up to "
            f"{axis} {last:g}); give a longer trace or a larger --count")
    return r


def _load_points(mode: str, sat: SaturationResult | None, s: AdviseSettings) -> list[dict[str, Any]]:
    """``[{"label", "fraction", "value"}]``: value = rate scale or concurrency."""
    if s.concurrency is not None:
        return [{"label": f"c={c}", "fraction": None, "value": float(c)} for c in s.concurrency]
    assert sat is not None
    out, seen = [], set()
    for f in s.loads:
        v = f * sat.scale
        if mode == "concurrency":
            v = float(max(1, int(round(v))))
        if v in seen:
            continue
        seen.add(v)
        label = f"{f:g}x sat"
        out.append({"label": label, "fraction": f, "value": float(v)})
    return out


def _task(workload: Workload, config: SimConfig, mode: str, value: float, spec: PolicySpec,
          seed: int, tags: dict[str, Any], engine: str) -> SimTask:
    if mode == "rate":
        return SimTask(scale_rate(workload, value), config, spec, seed, tags, engine)
    return SimTask(workload, dataclasses.replace(config, concurrency=int(value)), spec, seed, tags,
                   engine)


def _summary(rows: Sequence[Mapping[str, Any]], slo: Slo | None) -> list[dict[str, Any]]:
    """Per (load, policy): each metric's mean, min, max over seeds and its t interval."""
    metrics = [m for m in METRICS if slo is not None or m not in ("goodput_rps", "slo_attainment")]
    agg = aggregate(rows, [*metrics, "prefix_hit_rate", "preemptions", "completed",
                           "request_throughput_rps"])
    out = []
    for a in agg:
        vals = [r for r in rows if r["load"] == a["load"] and r["name"] == a["name"]]
        entry: dict[str, Any] = {"load": a["load"], "value": a["rate_scale"], "policy": a["name"],
                                 "seeds": a["seeds"]}
        for m in [*metrics, "prefix_hit_rate", "preemptions", "completed", "request_throughput_rps"]:
            ci = stats.t_interval([np.nan if r.get(m) is None else float(r[m]) for r in vals])
            entry[m] = {"mean": a[m], "min": a[f"{m}_min"], "max": a[f"{m}_max"],
                        "ci95": [ci.lo, ci.hi]}
        out.append(entry)
    return out


def _comparisons(rows: Sequence[Mapping[str, Any]], others: Sequence[str], slo: Slo | None,
                 tol: float) -> list[dict[str, Any]]:
    metrics = [m for m in VERDICT_METRICS if slo is not None or m != "goodput_rps"]
    claims = [Claim(f"lmetric vs {o}: {m}", m, "lmetric", o, None) for o in others for m in metrics]
    out = []
    seeds = sorted({int(r["seed"]) for r in rows})
    idx = {(r["load"], r["name"], int(r["seed"])): r for r in rows}
    for c in claim_changes(rows, claims):
        pcts = []
        for sd in seeds:  # the per-seed values behind claim_changes' mean/min/max
            t, b = idx.get((c["load"], c["target"], sd)), idx.get((c["load"], c["baseline"], sd))
            if t is None or b is None or t.get(c["metric"]) is None or b.get(c["metric"]) is None:
                continue
            tv, bv = float(t[c["metric"]]), float(b[c["metric"]])
            if math.isfinite(tv) and math.isfinite(bv) and bv > 0:
                pcts.append(100.0 * (tv - bv) / bv)
        out.append({"load": c["load"], "other": c["baseline"], "metric": c["metric"],
                    "pct": c["pct"], "pct_min": c["pct_min"], "pct_max": c["pct_max"],
                    "seeds": c["seeds"], "per_seed_pct": pcts,
                    "outcome": outcome(pcts, METRICS[c["metric"]], tol)})
    return out


def _verdict(comparisons: Sequence[Mapping[str, Any]], loads: Sequence[Mapping[str, Any]],
             current: Sequence[str], tol: float, seeds: int) -> dict[str, Any]:
    labels = [ld["label"] for ld in loads]
    against = []
    for cur in current:
        per_metric: dict[str, Any] = {}
        for m in VERDICT_METRICS:
            cells = [c for c in comparisons if c["other"] == cur and c["metric"] == m]
            if not cells:
                continue
            cells.sort(key=lambda c: labels.index(c["load"]))
            outs = [c["outcome"] for c in cells]
            kinds = set(outs) - {"n/a"}
            overall = (next(iter(kinds)) if len(kinds) == 1 else "mixed") if kinds else "n/a"
            ranges = {k: [cells[i]["load"] for i, o in enumerate(outs) if o == k]
                      for k in ("win", "tie", "lose")}
            per_metric[m] = {
                "outcome": overall, "loads": {k: v for k, v in ranges.items() if v},
                "by_load": [{"load": c["load"], "outcome": c["outcome"], "pct": c["pct"],
                             "pct_min": c["pct_min"], "pct_max": c["pct_max"]} for c in cells],
            }
        head = per_metric.get("ttft_mean_s", {})
        against.append({"policy": cur, "outcome": head.get("outcome", "n/a"),
                        "metrics": per_metric, "text": _verdict_text(cur, head, tol)})
    overall = {a["outcome"] for a in against}
    text = " ".join(a["text"] for a in against)
    return {"metric": "ttft_mean_s", "tolerance_pct": tol, "seeds": seeds,
            "rule": (f"per load, paired by seed: win when every seed's change of lmetric is "
                     f"better than -{tol:g}%, lose when every seed's is worse than +{tol:g}%, "
                     "else tie; over the sweep win/tie/lose when every load agrees, else mixed"),
            "outcome": next(iter(overall)) if len(overall) == 1 else "mixed",
            "against": against, "text": text}


def _pct_range(cells: Sequence[Mapping[str, Any]]) -> str:
    lo = min(c["pct_min"] for c in cells)
    hi = max(c["pct_max"] for c in cells)
    return f"{lo:+.0f}%" if abs(hi - lo) < 0.5 else f"{lo:+.0f}% to {hi:+.0f}%"


def _verdict_text(cur: str, head: Mapping[str, Any], tol: float) -> str:
    if not head:
        return f"Against {cur}: no comparison."
    parts = []
    for kind, word in (("win", "wins"), ("tie", "ties"), ("lose", "loses")):
        loads = head["loads"].get(kind)
        if not loads:
            continue
        cells = [c for c in head["by_load"] if c["outcome"] == kind and c["pct"] is not None]
        pos = [i for i, c in enumerate(head["by_load"]) if c["outcome"] == kind]
        if len(loads) == 1:
            where = loads[0]
        elif pos == list(range(pos[0], pos[0] + len(pos))):  # neighbouring loads: a range
            where = f"{loads[0]} to {loads[-1]}"
        else:
            where = ", ".join(loads[:-1]) + f" and {loads[-1]}"
        span = f" (mean TTFT {_pct_range(cells)})" if cells else ""
        parts.append(f"{word} at {where}{span}")
    return f"Against {cur}: LMetric " + "; ".join(parts) + "."


def _detail_at(rows: Sequence[Mapping[str, Any]], load: str) -> dict[str, Any]:
    """CDF quantiles and per-instance loads of seed 0 at ``load``, per policy."""
    out: dict[str, Any] = {}
    for r in rows:
        if r["load"] == load and int(r["seed"]) == 0:
            out[r["name"]] = r["detail"]
    return out


def _hotspots(workload: Workload, config: SimConfig, mode: str, value: float,
              rows: Sequence[Mapping[str, Any]], load: str, s: AdviseSettings,
              ex: Executor, slo: Slo | None, seeds: Sequence[int]) -> dict[str, Any]:
    from lmetric_theory.experiments.counterfactual.study import policy_score
    from lmetric_theory.experiments.hotspots import run_hotspots
    from lmetric_theory.experiments.tasks import run_engine

    definition, _ = policy_score("lmetric")
    cfg = dataclasses.replace(config, record_snapshots=True)
    task = _task(workload, cfg, mode, value, parse_spec("lmetric"), 0, {}, "fast")
    res = run_engine(task, task.policy)
    hot = run_hotspots(task.workload, res.snapshots, definition)
    entries = [e.to_json() for e in hot.entries]
    doc: dict[str, Any] = {
        "load": load, "classes": entries, "classes_found": len(entries),
        "condition_holds": any(e["condition_holds"] for e in entries),
        "confirmed": sum(1 for e in entries if e["phase2_decision"] is not None),
        "definition": {"P": definition.p_definition.value, "B": definition.b_definition.value,
                       "p0": float(definition.p0), "b0": float(definition.b0)},
        "mitigation": None,
    }
    if not entries:
        doc["text"] = "No prefix class raised phase 1 under lmetric at this load: no hot-prefix risk seen."
        return doc
    name = "guarded-lmetric:mitigation=hotspot"
    spec = parse_spec(name)
    tasks = [_task(workload, dataclasses.replace(config, record_snapshots=False), mode, value, spec,
                   sd, {"load": load, "name": name, "rate_scale": value, "workload": "w"}, "fast")
             for sd in seeds]
    mrows = run_chunked(tasks, ex, None, max(1, len(tasks)), slo)
    base = {int(r["seed"]): r for r in rows if r["load"] == load and r["name"] == "lmetric"}
    pcts = [100.0 * (float(m["ttft_mean_s"]) - float(base[int(m["seed"])]["ttft_mean_s"]))
            / float(base[int(m["seed"])]["ttft_mean_s"])
            for m in mrows if int(m["seed"]) in base and float(base[int(m["seed"])]["ttft_mean_s"]) > 0]
    gain = [-p for p in pcts]
    doc["mitigation"] = {
        "policy": name, "metric": "ttft_mean_s",
        "ttft_mean_s": [float(m["ttft_mean_s"]) for m in mrows],
        "lmetric_ttft_mean_s": [float(base[int(m["seed"])]["ttft_mean_s"]) for m in mrows
                                if int(m["seed"]) in base],
        "gain_pct": float(np.mean(gain)) if gain else None,
        "gain_pct_min": float(min(gain)) if gain else None,
        "gain_pct_max": float(max(gain)) if gain else None,
        "outcome": outcome(pcts, True, s.tolerance_pct),
    }
    g = doc["mitigation"]
    doc["text"] = (f"{len(entries)} prefix class(es) raised phase 1 ({doc['confirmed']} confirmed); "
                   f"condition (l) {'held' if doc['condition_holds'] else 'did not hold'}; the "
                   f"hot-spot mitigation changed mean TTFT by {-g['gain_pct']:+.1f}% "
                   f"({g['outcome']} for the mitigation)." if gain else
                   f"{len(entries)} prefix class(es) raised phase 1; the mitigation had no "
                   "comparable run.")
    return doc


def _harm(workload: Workload, config: SimConfig, mode: str, value: float, load: str,
          s: AdviseSettings, ex: Executor) -> dict[str, Any]:
    from lmetric_theory.experiments.counterfactual import counterfactual_study

    if s.cf_samples == 0:
        return {"load": load, "run": False, "text": "not run (no samples asked)"}
    cfg = config if mode == "rate" else dataclasses.replace(config, concurrency=int(value))
    w = scale_rate(workload, value) if mode == "rate" else workload
    try:
        st = counterfactual_study(w, cfg, reference=s.reference, policy="lmetric",
                                  flag="disagreement", samples=s.cf_samples,
                                  horizon_s=s.cf_horizon_s, end_to_end_seeds=0, n_boot=1000,
                                  executor=ex, seed=0)
    except ValueError as exc:
        return {"load": load, "run": False, "text": f"not run: {exc}"}
    d = st.summary
    fl, ct = d["flagged"], d["control"]
    au = d["auroc"].get("disagreement") or {}
    lo_f = (fl.get("harm_rate_ci95") or [None, None])[0]
    hi_c = (ct.get("harm_rate_ci95") or [None, None])[1]
    au_lo = (au.get("ci95") or [None, None])[0]
    rate_sep = lo_f is not None and hi_c is not None and lo_f > hi_c
    au_sep = au_lo is not None and au_lo > 0.5
    detectable = bool(rate_sep or au_sep)
    doc = {"load": load, "run": True, "flag": "disagreement", "samples": s.cf_samples,
           "horizon_s": s.cf_horizon_s,
           "flagged": {k: fl.get(k) for k in ("n", "harm_rate", "harm_rate_ci95", "mean_harm_s",
                                              "mean_harm_ci95")},
           "control": {k: ct.get(k) for k in ("n", "harm_rate", "harm_rate_ci95", "mean_harm_s",
                                              "mean_harm_ci95")},
           "auroc": d["auroc"], "precision": d["precision"], "recall": d["recall"],
           "mitigations": d["mitigations"], "population": d["population"],
           "noise_floor_s": d["noise_floor_s"], "detectable": detectable,
           "runtime_s": d["runtime_s"]["total"]}

    def pc(x: Any) -> str:
        return "-" if x is None else f"{100 * x:.0f}%"

    def ci(x: Any) -> str:
        return "" if not x or x[0] is None else f" [{pc(x[0])}, {pc(x[1])}]"

    doc["text"] = (f"{'Detectable' if detectable else 'Not shown detectable'}: harm rate of "
                   f"flagged decisions {pc(fl.get('harm_rate'))}{ci(fl.get('harm_rate_ci95'))} vs "
                   f"controls {pc(ct.get('harm_rate'))}{ci(ct.get('harm_rate_ci95'))} "
                   f"({fl.get('n')} + {ct.get('n')} sampled decisions, 95% bootstrap).")
    return doc


def _confirm(workload: Workload, config: SimConfig, mode: str, value: float, load: str,
             names: Sequence[str], specs: Mapping[str, PolicySpec], n: int,
             ex: Executor) -> dict[str, Any]:
    w = select(workload, count=n)
    rows = []
    for engine in ("fast", "vllm"):
        tasks = [_task(w, config, mode, value, specs[name], 0,
                       {"load": load, "name": name, "engine": engine}, engine) for name in names]
        rows += run_chunked(tasks, get_executor(None, workers=1) if engine == "vllm" else ex,
                            None, max(1, len(tasks)))
    by = {(r["engine"], r["name"]): r for r in rows}
    table = []
    for name in names:
        f, v = by[("fast", name)], by[("vllm", name)]
        table.append({"policy": name, "fast_ttft_mean_s": f["ttft_mean_s"],
                      "vllm_ttft_mean_s": v["ttft_mean_s"], "fast_tpot_mean_s": f["tpot_mean_s"],
                      "vllm_tpot_mean_s": v["tpot_mean_s"]})
    lm = by[("fast", "lmetric")], by[("vllm", "lmetric")]
    changes = []
    for name in names:
        if name == "lmetric":
            continue
        ch: dict[str, Any] = {"other": name}
        for eng, base in (("fast", lm[0]), ("vllm", lm[1])):
            o = by[(eng, name)]["ttft_mean_s"]
            ch[f"{eng}_pct"] = (100.0 * (base["ttft_mean_s"] - o) / o
                                if o and math.isfinite(o) and o > 0 else None)
        changes.append(ch)
    return {"load": load, "requests": len(w), "seed": 0, "policies": table, "changes": changes}


def _setup(config: SimConfig) -> dict[str, Any]:
    """The router set-up of ``config`` (docs/router_state.md), JSON-ready."""
    return {"router_replicas": int(config.router_replicas),
            "replica_assignment": config.replica_assignment.value,
            "kv_event_lag_s": float(config.kv_event_lag_s),
            "signal_delay_s": float(config.signal_delay_s), "index": config.index.text}


def _router_state(make: Callable[[int], Workload], config: SimConfig, mode: str, value: float,
                  load: str, s: AdviseSettings, names: Sequence[str],
                  specs: Mapping[str, PolicySpec], ex: Executor, slo: Slo | None,
                  sweep_rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Sensitivity at the focus load: ``lmetric`` and the current policies at every
    (router replicas R, KV-event lag) setting of
    :func:`~lmetric_theory.experiments.router_state.router_state_settings` (the two axes
    and the corner), every seed, the rest of the router set-up as in ``config``. The
    setting equal to ``config``'s own reuses the sweep's rows."""
    from lmetric_theory.experiments.router_state import router_state_settings

    setup = _setup(config)
    if not s.router_sensitivity:
        return {"run": False, "setup": setup, "text": "not run"}
    settings = router_state_settings(s.router_replicas, s.router_lags_s)
    own = (setup["router_replicas"], setup["kv_event_lag_s"])
    n_seeds = s.router_seeds

    def label(r: int, lag: float) -> str:
        return f"R={r}, lag={lag:g}s"

    rows: list[dict[str, Any]] = []
    tasks = []
    for r, lag in settings:
        lab = label(r, lag)
        if (r, lag) == own:
            for row in sweep_rows:
                if row["load"] == load and row["name"] in names and int(row["seed"]) < n_seeds:
                    rows.append({**{k: v for k, v in row.items() if k != "detail"}, "load": lab,
                                 "replicas": r, "lag_s": lag})
            continue
        cfg = dataclasses.replace(config, router_replicas=int(r), kv_event_lag_s=float(lag))
        tasks += [_task(make(sd), cfg, mode, value, specs[n], sd,
                        {"load": lab, "name": n, "rate_scale": value, "workload": "w",
                         "replicas": int(r), "lag_s": float(lag)}, "fast")
                  for sd in range(n_seeds) for n in names]
    if tasks:
        chunk = max(1, 2 * int(getattr(ex, "workers", 1) or 1))
        rows += run_chunked(tasks, ex, None, chunk, slo)
    comps = _comparisons(rows, [n for n in names if n != "lmetric"], slo, s.tolerance_pct)
    order = [label(r, lag) for r, lag in settings]
    summary = sorted(_summary(rows, slo), key=lambda e: order.index(e["load"]))
    for e in summary:
        r, lag = settings[order.index(e["load"])]
        e["replicas"], e["lag_s"] = r, lag
    heads = sorted((c for c in comps if c["metric"] == "ttft_mean_s"),
                   key=lambda c: order.index(c["load"]))
    for c in comps:
        r, lag = settings[order.index(c["load"])]
        c["replicas"], c["lag_s"] = r, lag
    parts = []
    for o in [n for n in names if n != "lmetric"]:
        cells = [c for c in heads if c["other"] == o]
        kinds = {c["outcome"] for c in cells} - {"n/a"}
        if len(kinds) == 1:
            parts.append(f"vs {o} {next(iter(kinds))} at every setting")
        else:
            parts.append(f"vs {o} " + ", ".join(f"{c['outcome']} at {c['load']}" for c in cells))
    words = "lmetric's mean TTFT " + "; ".join(parts)
    return {"run": True, "setup": setup, "load": load, "seeds": list(range(n_seeds)),
            "policies": list(names), "settings": [[int(r), float(lag)] for r, lag in settings],
            "summary": summary, "comparisons": sorted(comps, key=lambda c: order.index(c["load"])),
            "text": f"{len(settings)} settings of R and lag at {load}: {words}."}


# ----------------------------------------------------------------------------- the study


def advise(workload: Workload | Callable[[int], Workload], config: SimConfig,
           settings: AdviseSettings, *, source: str = "workload",
           executor: Executor | str | None = None, workers: int | None = None,
           progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Run the advice study (see the module docstring); the JSON-ready document.

    Parameters
    ----------
    workload : Workload or callable
        The requests, or ``seed -> Workload`` (a synthetic workload regenerated per seed, or
        windows of a trace; seed 0's is used for the saturation search, hot spots and the
        counterfactual study). A ``replicates`` attribute of the callable names how the
        seeds' workloads differ (``workload.replicates`` in the document).
    config : SimConfig
        Cluster settings (instances, preset); snapshots are recorded only where needed.
    settings : AdviseSettings
    source : str
        Name of the workload in the document.
    executor, workers
        Sweep executor (:func:`lmetric_theory.experiments.tasks.get_executor`).
    progress : callable, optional
        ``progress(stage, done, total)``: stage ``"saturation"``, ``"sweep"``, ``"hotspots"``,
        ``"counterfactual"``, ``"confirm"``, ``"router state"``, ``"done"``.

    Returns
    -------
    dict
        The advice document (keys in docs/advise.md), strict-JSON ready (``json_safe``).

    Raises
    ------
    SaturationNotFound
        When no saturated load is reached (a trace too short for the search).
    """
    t0 = time.perf_counter()
    s = settings
    make = workload if callable(workload) else (lambda seed, _w=workload: _w)
    w0 = make(0)
    config = dataclasses.replace(config, record_snapshots=False)
    mode = "concurrency" if (w0.closed_loop or s.concurrency is not None) else "rate"
    ex = get_executor(executor, workers=workers)
    step = progress or (lambda stage, done, total: None)
    timings: dict[str, float] = {}

    sat = None
    if s.concurrency is None:
        step("saturation", 0, 1)
        sat = _saturation(w0, config, mode, s, source, ex)
    timings["saturation"] = time.perf_counter() - t0
    loads = _load_points(mode, sat, s)
    focus_label = (f"{s.focus:g}x sat" if s.concurrency is None else loads[-1]["label"])
    if focus_label not in [ld["label"] for ld in loads]:  # merged by rounding: the nearest kept
        focus_label = loads[-1]["label"]
    focus_value = next(ld["value"] for ld in loads if ld["label"] == focus_label)

    current = [str(c) for c in s.current]
    names = ["lmetric", "guarded-lmetric", "tuned-linear", *[c for c in current
                                                             if c not in ("lmetric", "tuned-linear")]]
    band = ({"lam_lo": float(s.reference.lam_lo), "lam_hi": float(s.reference.lam_hi)}
            if s.reference.has_band and s.reference.lam_lo and s.reference.lam_lo > 0 else {})
    specs: dict[str, PolicySpec] = {
        "lmetric": parse_spec("lmetric"),
        "guarded-lmetric": policy_spec("guarded-lmetric", mitigation="auto",
                                       lam=float(s.reference.lam), **band),
        "tuned-linear": parse_spec(f"tuned-linear:points={s.points}"),
    }
    specs.update({str(c): c for c in s.current if str(c) not in specs})
    seeds = list(range(s.seeds))
    tasks = []
    for sd in seeds:
        w = make(sd)
        for ld in loads:
            tasks += [_task(w, config, mode, ld["value"], specs[n], sd,
                            {"workload": source, "load": ld["label"], "rate_scale": ld["value"],
                             "name": n}, s.engine)
                      for n in names]
    total = len(tasks)
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        step("sweep", done[0], total)

    t1 = time.perf_counter()
    chunk = max(1, 2 * int(getattr(ex, "workers", 1) or 1))
    rows = run_chunked(tasks, ex, tick, chunk, s.slo, fn=advise_task)
    timings["sweep"] = time.perf_counter() - t1

    comparisons = _comparisons(rows, [n for n in names if n != "lmetric"], s.slo, s.tolerance_pct)
    verdict = _verdict(comparisons, loads, [n for n in current if n != "lmetric"], s.tolerance_pct,
                       s.seeds)
    detail = _detail_at(rows, focus_label)

    t2 = time.perf_counter()
    step("hotspots", 0, 1)
    hot = _hotspots(w0, config, mode, focus_value, rows, focus_label, s, ex, s.slo, seeds)
    timings["hotspots"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    step("counterfactual", 0, 1)
    harm = _harm(w0, config, mode, focus_value, focus_label, s, ex)
    timings["counterfactual"] = time.perf_counter() - t3
    confirm = None
    if s.confirm_vllm is not None:
        t4 = time.perf_counter()
        step("confirm", 0, 1)
        confirm = _confirm(w0, config, mode, focus_value, focus_label,
                           ["lmetric", *[c for c in current if c != "lmetric"]], specs,
                           s.confirm_vllm, ex)
        timings["confirm_vllm"] = time.perf_counter() - t4
    t5 = time.perf_counter()
    step("router state", 0, 1)
    router = _router_state(make, config, mode, focus_value, focus_label, s,
                           ["lmetric", *[c for c in current if c != "lmetric"]], specs, ex, s.slo,
                           rows)
    timings["router_state"] = time.perf_counter() - t5
    step("done", 1, 1)
    for r in rows:
        r.pop("detail", None)
    timings["total"] = time.perf_counter() - t0
    doc: dict[str, Any] = {
        "schema": ADVICE_SCHEMA,
        "workload": {"source": source, "requests": len(w0), "mode": mode,
                     "axis": "rate_scale" if mode == "rate" else "concurrency",
                     "sessions": (w0.sessions.n_sessions if w0.sessions is not None else None),
                     "replicates": getattr(workload, "replicates", "regenerated" if callable(workload)
                                           else "same requests")},
        "config": {"instances": config.n_instances, "preset": config.preset, "engine": s.engine,
                   "seeds": seeds, "loads": list(s.loads), "focus": s.focus,
                   "slo": None if s.slo is None else s.slo.to_json(),
                   "current": current, "policies": names,
                   "policies_resolved": {n: str(specs[n]) for n in names},
                   "tuned_linear_points": s.points, "tolerance_pct": s.tolerance_pct,
                   "reference": {"lam": float(s.reference.lam),
                                 "lam_lo": float(s.reference.lam_lo),
                                 "lam_hi": float(s.reference.lam_hi),
                                 "source": s.reference.source},
                   "saturation_policy": "round-robin",
                   "concurrency": None if s.concurrency is None else list(s.concurrency)},
        "saturation": None if sat is None else {**sat.to_dict(), "axis": "rate_scale" if mode == "rate"
                                                else "concurrency"},
        "loads": loads,
        "focus_load": focus_label,
        "verdict": verdict,
        "summary": _summary(rows, s.slo),
        "comparisons": comparisons,
        "distributions": {"load": focus_label, "seed": 0, "probabilities": np.linspace(0, 1, CDF_POINTS).tolist(),
                          "policies": {n: {"ttft_q_s": d["ttft_q_s"], "tpot_q_s": d["tpot_q_s"]}
                                       for n, d in detail.items()}},
        "per_instance": {"load": focus_label, "seed": 0,
                         "policies": {n: d["per_instance"] for n, d in detail.items()}},
        "hotspots": hot,
        "harm": harm,
        "confirm_vllm": confirm,
        "router_state": router,
        "rows": rows,
        "runtime_s": timings,
    }
    return json_safe(doc)
