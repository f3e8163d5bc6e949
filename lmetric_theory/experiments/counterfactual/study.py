"""Does a detector flag predict harm? The counterfactual study (:func:`counterfactual_study`).

Procedure
---------
1. Replay the workload under the policy under study (default ``lmetric``) and check every
   decision with a :class:`~lmetric_theory.detector.Detector` built from the policy's own
   ``P``/``B`` definitions and offsets, against the reference (rate ``lam``, band).
2. Sample up to ``samples`` flagged decisions and as many load-matched unflagged ones
   (:mod:`~lmetric_theory.experiments.counterfactual.sampling` states the flag definitions
   and the matching).
3. At every sampled decision, replay all ``N`` instance choices and an A-A branch
   (:mod:`~lmetric_theory.experiments.counterfactual.forks` states the cost rule: summed
   TTFT of the affected requests until re-convergence or the horizon). The forks run
   through a sweep executor (local processes or Dask) in batches.
4. One comparator for every decision:

   * ``harm_s`` = cost of the policy's choice - cost of the best branch (>= 0);
   * ``regret_vs_reference_s`` = cost of the policy's choice - cost of the reference's
     choice (the linear argmin at ``lam``; negative when the policy did better);
   * ``noise_floor_s`` = the 95th percentile of ``|A-A branch - chosen branch|`` over the
     sampled decisions (exactly 0 for a deterministic policy);
   * a decision is **harmful** when ``harm_s > max(noise_floor_s, min_harm_s)``.

5. Statistics (:mod:`lmetric_theory.experiments.stats`, percentile bootstrap, seeded):
   harm rate and mean harm per group; AUROC of each signal as a predictor of "harmful"
   over both groups pooled; precision = P(harmful | flagged) (the flagged sample is a
   uniform draw of the flagged decisions); recall = P(flagged | harmful) =
   ``F h_f / (F h_f + U h_u)`` with ``F``, ``U`` the flagged and unflagged decision counts
   of the run, ``h_f`` the flagged sample's harm rate and ``h_u`` the controls' harm rate
   re-weighted from the matched (flagged-like) load distribution to the unflagged
   decisions' load-decile distribution (deciles without controls take the pooled control
   rate). Both from the same harmful/harmless label.
6. Mitigations: for each mitigation the detector proposes, its choice at every sampled
   flagged decision; its gain is ``cost(policy's choice) - cost(mitigated choice)`` read
   off the same forks (positive: the mitigation helps).
7. End to end: ``guarded-lmetric`` (same score, same reference) against the policy under
   study, paired, on ``end_to_end_seeds`` replicate workloads: workloads regenerated with
   seeds ``seed, seed+1, ...`` when a ``replicate`` factory is given (synthetic), else
   equal consecutive slices of the workload (a trace); mean TTFT difference with a
   Student-t interval.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from lmetric_theory.core.definitions import ScoreDefinition
from lmetric_theory.core.fileio import json_safe
from lmetric_theory.core.kernel import product_scores
from lmetric_theory.detector import Detector, LinearReference, Mitigation, Verdicts
from lmetric_theory.experiments import stats
from lmetric_theory.experiments.counterfactual.forks import DecisionForks, ForkTask, run_fork_task
from lmetric_theory.experiments.counterfactual.sampling import (
    FLAG_DEFINITIONS,
    FLAG_TEXT,
    ROUTER_STATE_FLAGS,
    decision_load,
    flag_mask,
    hotspot_phase,
    matched_sample,
)
from lmetric_theory.policies import PolicySpec, parse_spec, policy_spec
from lmetric_theory.sim import SimConfig, Simulator
from lmetric_theory.workload import Workload

__all__ = ["DEFAULTS", "HARM_RULE", "SIGNALS", "CounterfactualStudy", "counterfactual_study",
           "policy_score"]

#: Default settings of the study (the CLI's defaults).
DEFAULTS: dict[str, Any] = {
    "policy": "lmetric",
    "flag": "disagreement",
    "samples": 170,
    "horizon_s": 30.0,
    "converge_k": 32,
    "min_harm_s": 0.0,
    "end_to_end_seeds": 5,
    "n_boot": 2000,
}

#: Harm thresholds of the sensitivity table ``harm_rate_by_threshold``, seconds of summed
#: TTFT over the affected requests (each at least the noise floor).
HARM_SENSITIVITY_S: tuple[float, ...] = (0.01, 0.1, 1.0)

#: Detector signals whose AUROC is reported (larger value = predicted harmful).
SIGNALS: tuple[str, ...] = ("disagreement", "regret_tokens", "lam_star_band_distance", "lam_eff",
                            "hotspot_phase")

#: The cost rule, stated in the results.
HARM_RULE = (
    "fork at the decision; branch c sends it to instance c, later requests follow the policy; "
    "affected = requests with decision index >= d arriving by t_d + horizon_s, cut before the "
    "first run of converge_k consecutive later requests routed identically with bit-equal TTFT "
    "in every branch; cost = summed TTFT of the affected requests (summed TPOT beside it); "
    "harm = cost(chosen) - min over branches; harmful = harm > max(noise_floor_s, min_harm_s)"
)


@dataclass(frozen=True, slots=True)
class CounterfactualStudy:
    """Result of :func:`counterfactual_study` (``to_dict()`` gives the stable JSON).

    Attributes
    ----------
    forks : tuple of DecisionForks
        Every sampled decision's branches, in decision order.
    flagged_decisions, control_decisions : tuple of int
        The two samples (``control_decisions[k]`` matches ``flagged_decisions[k]``).
    harm_threshold_s : float
        ``max(noise_floor_s, min_harm_s)``, seconds.
    summary : dict
        The JSON-ready figures (see :meth:`to_dict`).
    """

    forks: tuple[DecisionForks, ...]
    flagged_decisions: tuple[int, ...]
    control_decisions: tuple[int, ...]
    harm_threshold_s: float
    summary: dict[str, Any] = field(default_factory=dict)

    def fork(self, decision: int) -> DecisionForks:
        """The branches of one sampled decision."""
        for f in self.forks:
            if f.decision == decision:
                return f
        raise KeyError(f"decision {decision} was not sampled")

    def to_dict(self) -> dict[str, Any]:
        """Stable JSON: ``flagged``, ``control``, ``noise_floor_s``, ``auroc``, ``precision``,
        ``recall``, ``mitigations``, ``end_to_end``, ``population``, ``config`` (and more)."""
        return json_safe(self.summary)


def policy_score(spec: PolicySpec | str, seed: int = 0) -> tuple[ScoreDefinition, str]:
    """The score definition and tie rule a policy is studied by.

    Parameters
    ----------
    spec : PolicySpec or str
        The policy (spec text is read once, here).
    seed : int
        The policy's seed.

    Returns
    -------
    definition : ScoreDefinition
        :attr:`Policy.definition <lmetric_theory.policies.base.Policy.definition>`: the
        policy's own ``P``, ``B`` (a variant resolves to its definitions), ``p0`` and ``b0``
        (exact), the paper's defaults where it names none.
    tie : str
        The policy's tie rule (``lowest`` when it has none).
    """
    from lmetric_theory.policies import make_policy

    pol = make_policy(spec, seed=seed)
    return pol.definition, str(getattr(pol.params, "tie", "") or "lowest")


def _json_number(x: int | Fraction) -> int | float:
    """An exact offset as JSON prints it: ``int`` when integral, else ``float``."""
    return int(x) if Fraction(x).denominator == 1 else float(x)


def _signals(log: Any, d: ScoreDefinition) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``P``, ``B`` (the policy's definitions) and the uncached tokens, each (D, N) int64."""
    from lmetric_theory.core.signals import batch_signal, prefill_signal

    U = log.uncached.astype(np.int64)
    view = _LogView(log)
    return prefill_signal(view, d.p_definition), batch_signal(view, d.b_definition), U


class _LogView:
    """A snapshot log with ``block_size`` (from its ``meta``) as the signal functions expect."""

    def __init__(self, log: Any) -> None:
        self._log = log
        self.block_size = max(int(log.meta.get("block_size", 1) or 1), 1)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)


def _band_distance(lam_star: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``|log|`` distance of ``lam*`` from ``[lo, hi]`` (0 inside, inf for lam* <= 0 outside)."""
    x = np.asarray(lam_star, dtype=np.float64)
    out = np.zeros_like(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        below = x < lo
        above = x > hi
        out[below] = np.where(x[below] > 0, np.log(lo / x[below]), np.inf)
        out[above] = np.where(hi > 0, np.log(x[above] / hi), np.inf)
    out[np.isnan(x)] = np.inf  # equal batches: lam never flips the pair
    return out


def _group(harm: np.ndarray, harmful: np.ndarray, regret: np.ndarray, tpot_harm: np.ndarray,
           n_boot: int, seed: int) -> dict[str, Any]:
    rate = stats.bootstrap_ci(harmful.astype(np.float64), n_boot=n_boot, seed=[seed, 1])
    mean = stats.bootstrap_ci(harm, n_boot=n_boot, seed=[seed, 2])
    reg = stats.bootstrap_ci(regret, n_boot=n_boot, seed=[seed, 3])
    tp = stats.bootstrap_ci(tpot_harm, n_boot=n_boot, seed=[seed, 4])
    return {
        "n": int(harm.size),
        "harm_rate": rate.value, "harm_rate_ci95": list(rate.ci95),
        "mean_harm_s": mean.value, "mean_harm_ci95": list(mean.ci95),
        "mean_regret_vs_reference_s": reg.value, "mean_regret_vs_reference_ci95": list(reg.ci95),
        "mean_tpot_harm_s": tp.value, "mean_tpot_harm_ci95": list(tp.ci95),
    }


def _weighted_rate(hc: np.ndarray, dec: np.ndarray, u_share: np.ndarray) -> float:
    """Control harm rate re-weighted to the unflagged decisions' load deciles."""
    pooled = float(hc.mean())
    return float(sum(u_share[q] * (hc[dec == q].mean() if (dec == q).any() else pooled)
                     for q in range(10)))


def _recall(hf: float, hc: np.ndarray, dec: np.ndarray, F: int, U: int,
            u_share: np.ndarray) -> float:
    if hc.size == 0 or not math.isfinite(hf):
        return math.nan
    den = F * hf + U * _weighted_rate(hc, dec, u_share)
    return F * hf / den if den > 0 else math.nan


def _precision_recall(h_f: np.ndarray, h_c: np.ndarray, dec_c: np.ndarray, F: int, U: int,
                      u_share: np.ndarray, n_boot: int, seed: int) -> tuple[dict, dict]:
    """Precision and recall (module docstring, step 5) with percentile-bootstrap intervals
    (flagged and control samples resampled independently, controls with their deciles)."""
    prec = float(h_f.mean()) if h_f.size else math.nan
    rec = _recall(prec, h_c, dec_c, F, U, u_share)
    rng = np.random.default_rng([seed, 5])
    pr, rr = [], []
    if h_f.size:
        for _ in range(n_boot):
            p = float(h_f[rng.integers(0, h_f.size, h_f.size)].mean())
            pr.append(p)
            if h_c.size:
                j = rng.integers(0, h_c.size, h_c.size)
                rr.append(_recall(p, h_c[j], dec_c[j], F, U, u_share))

    def ci(xs: list[float]) -> list[float]:
        a = np.asarray([x for x in xs if math.isfinite(x)])
        if not a.size:
            return [math.nan, math.nan]
        return [float(np.quantile(a, 0.025)), float(np.quantile(a, 0.975))]

    return {"value": prec, "ci95": ci(pr)}, {"value": rec, "ci95": ci(rr)}


def _parallelism(ex: Any) -> int:
    """Tasks the executor runs at once: local workers, or the Dask cluster's worker count."""
    n = getattr(ex, "workers", None)
    if n is None and getattr(ex, "client", None) is not None:
        try:
            n = len(ex.client.scheduler_info().get("workers", {}))
        except Exception:  # noqa: BLE001 - a client without scheduler info: one at a time
            n = 1
    return max(1, int(n or 1))


#: Fork tasks per worker: small enough to balance uneven decisions, large enough that the
#: per-task copy of the simulator (a few MB) stays cheap.
_TASKS_PER_WORKER = 16


def _stream(ex: Any, fn: Callable[[Any], Any], items: Iterator[Any],
            n_workers: int) -> Iterator[Any]:
    """Results of ``fn`` over ``items`` as they finish: the executor's ``imap`` when it has
    one, else its ``map`` over batches of ``n_workers`` items."""
    if hasattr(ex, "imap"):
        for _, r in ex.imap(fn, items, window=2 * n_workers):
            yield r
        return
    batch: list[Any] = []
    for x in items:
        batch.append(x)
        if len(batch) == n_workers:
            yield from ex.map(fn, batch)
            batch = []
    if batch:
        yield from ex.map(fn, batch)


def _mitigation_name(m: Mitigation) -> str:
    return m.kind.value if m.value is None else f"{m.kind.value}={m.value:g}"


def _guard_spec(ref: LinearReference, d: ScoreDefinition, tie: str, block: int) -> PolicySpec:
    """``guarded-lmetric`` with the policy's score (definitions, exact offsets, tie rule) and
    the study's reference (rate, band)."""
    band = ({"lam_lo": float(ref.lam_lo), "lam_hi": float(ref.lam_hi)}
            if ref.has_band and ref.lam_lo and ref.lam_lo > 0 else {})
    return policy_spec("guarded-lmetric", lam=float(ref.lam), **band, P=d.p_definition.value,
                       B=d.b_definition.value, p0=d.p0, b0=d.b0, block=block, tie=tie)


def _end_to_end(workload: Workload, config: SimConfig, base_spec: PolicySpec,
                guard_spec: PolicySpec,
                seeds: int, seed: int, replicate: Callable[[int], Workload] | None,
                executor: Any) -> dict[str, Any]:
    from lmetric_theory.experiments.sweep import SimTask, run_sweep
    from lmetric_theory.workload import select

    cfg = dataclasses.replace(config, record_snapshots=False)
    reps: list[tuple[str, Workload, int]] = []
    if replicate is not None:
        reps = [(f"seed {seed + k}", replicate(seed + k), seed + k) for k in range(seeds)]
        how = "workload regenerated per seed"
    elif _closed(workload, config):
        return {"replicates": 0,
                "why": "closed-loop replay: time slices would cut its sessions (no replicates)"}
    else:
        n = len(workload)
        size = n // seeds
        if size < 1:
            return {"replicates": 0, "why": f"{n} requests cannot make {seeds} slices"}
        arr = np.asarray(workload.arrival_s)
        for k in range(seeds):
            lo_t = float(arr[k * size])
            hi_t = float(arr[(k + 1) * size]) if (k + 1) * size < n else None
            w = select(workload, start_s=lo_t, end_s=hi_t)
            reps.append((f"slice {k + 1}/{seeds}", w, seed))
        how = f"{seeds} consecutive slices of the workload (equal request counts)"
    tasks = []
    for label, w, s in reps:
        tasks += [SimTask(w, cfg, base_spec, s, {"replicate": label}),
                  SimTask(w, cfg, guard_spec, s, {"replicate": label})]
    rows = run_sweep(tasks, executor)
    base = np.array([r["ttft_mean_s"] for r in rows[0::2]], dtype=np.float64)
    guard = np.array([r["ttft_mean_s"] for r in rows[1::2]], dtype=np.float64)
    diff = stats.t_interval(guard - base)
    b = stats.t_interval(base)
    g = stats.t_interval(guard)
    return {
        "replicates": len(reps), "how": how, "labels": [r[0] for r in reps],
        "policy": str(base_spec), "guarded": str(guard_spec), "metric": "mean TTFT, seconds",
        "policy_ttft_mean_s": b.value, "policy_ttft_ci95": list(b.ci95),
        "guarded_ttft_mean_s": g.value, "guarded_ttft_ci95": list(g.ci95),
        "mean_diff_s": diff.value, "diff_ci95": list(diff.ci95),
        "per_replicate": {"policy": base.tolist(), "guarded": guard.tolist()},
    }


def counterfactual_study(
    workload: Workload,
    config: SimConfig,
    *,
    reference: LinearReference,
    policy: PolicySpec | str = DEFAULTS["policy"],
    flag: str = DEFAULTS["flag"],
    samples: int = DEFAULTS["samples"],
    horizon_s: float = DEFAULTS["horizon_s"],
    converge_k: int = DEFAULTS["converge_k"],
    min_harm_s: float = DEFAULTS["min_harm_s"],
    seed: int = 0,
    end_to_end_seeds: int = DEFAULTS["end_to_end_seeds"],
    replicate: Callable[[int], Workload] | None = None,
    n_boot: int = DEFAULTS["n_boot"],
    executor: Any = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    source: str | None = None,
) -> CounterfactualStudy:
    """Run the counterfactual study (see the module docstring).

    Parameters
    ----------
    workload : Workload
        Requests (arrival order).
    config : SimConfig
        Cluster settings (snapshots are recorded whatever it says).
    reference : LinearReference
        The linear reference (rate ``lam`` and band, tokens per batch slot).
    policy : PolicySpec or str
        Policy under study (``tuned-linear`` is tuned on the workload first; spec text is
        read once, here). The detector uses its score definition
        (:attr:`Policy.definition <lmetric_theory.policies.base.Policy.definition>`).
    flag : {"disagreement", "fragile", "hotspot", "any-but-ties"}
        What counts as flagged (:mod:`~lmetric_theory.experiments.counterfactual.sampling`).
    samples : int
        Flagged decisions to sample (and as many controls), >= 1.
    horizon_s : float
        Affected-request horizon, seconds (> 0).
    converge_k : int
        Consecutive agreeing requests that end the affected set early (0: off).
    min_harm_s : float
        Harm below this never counts (on top of the noise floor), seconds (>= 0).
    seed : int
        Seed of the sampling, the bootstrap and the A-A branches.
    end_to_end_seeds : int
        Replicates of the guarded-vs-policy comparison (0 skips it).
    replicate : callable, optional
        ``seed -> Workload`` regenerating the workload per replicate (synthetic workloads).
    n_boot : int
        Bootstrap resamples.
    executor : Executor or str, optional
        ``"local"`` (default), ``"dask"`` or an executor object
        (:mod:`lmetric_theory.experiments.sweep`).
    workers : int, optional
        Local worker processes (default: CPU count).
    progress : callable, optional
        ``progress(done, total)`` after each batch of sampled decisions.
    source : str, optional
        Name of the workload in the results.

    Returns
    -------
    CounterfactualStudy
    """
    from lmetric_theory.experiments.sweep import get_executor

    _check_settings(flag, samples, horizon_s, converge_k, min_harm_s, end_to_end_seeds)
    t_start = time.perf_counter()
    ex = get_executor(executor, workers=workers)
    asked = parse_spec(policy)
    base = _replay(workload, config, reference, asked, flag, samples, seed, ex)
    t_base = time.perf_counter() - t_start

    forks = _run_forks(workload, config, base, horizon_s, converge_k, seed, ex, progress)
    t_forks = time.perf_counter() - t_start - t_base

    out = _outcomes(forks, base, min_harm_s)
    groups = {
        name: _group(out.harm[k], out.harmful[k], out.regret[k], out.tpot_harm[k], n_boot, seed + g)
        for g, (name, k) in enumerate((("flagged", out.kf), ("control", out.kc)))
    }
    sensitivity = _harm_sensitivity(out, n_boot, seed)
    auroc, omitted = _auroc_table(out, base, flag, n_boot, seed)
    precision, recall, U = _flag_precision_recall(out, base, n_boot, seed)
    mitigations = _mitigation_gains(out, base, n_boot, seed) if out.kf.size else {}

    prec: dict[str, Any] | None = None
    if base.router is not None:
        from lmetric_theory.experiments.counterfactual.precedence import precedence

        prec = precedence(workload, config, base.result, base.log, flagged=base.flagged,
                          active=base.router.active[flag], seed=seed)

    t_e2e0 = time.perf_counter()
    e2e: dict[str, Any] = {"replicates": 0}
    if end_to_end_seeds:
        gspec = _guard_spec(base.det.reference, base.definition, base.tie, base.block)
        e2e = _end_to_end(workload, config, base.spec, gspec, end_to_end_seeds, seed, replicate, ex)
    t_e2e = time.perf_counter() - t_e2e0

    summary: dict[str, Any] = {
        **groups,
        "noise_floor_s": out.noise,
        "harm_threshold_s": out.threshold,
        "harm_rate_by_threshold": sensitivity,
        "auroc": auroc,
        "auroc_omitted": omitted,
        "precision": precision,
        "recall": recall,
        "mitigations": mitigations,
        "end_to_end": e2e,
        **({"precedence": prec} if prec is not None else {}),
        "population": _population(out, base, U),
        "runtime_s": {"replay": t_base, "forks": t_forks, "end_to_end": t_e2e,
                      "total": time.perf_counter() - t_start},
        "config": {
            "source": source if source is not None else str(workload.meta.get("source", "workload")),
            "requests": len(workload), "instances": config.n_instances,
            "policy": str(asked), "policy_resolved": str(base.spec),
            **_settings(base, flag, horizon_s, converge_k, min_harm_s, samples, seed, n_boot),
        },
    }
    return CounterfactualStudy(
        forks=tuple(out.forks), flagged_decisions=tuple(int(x) for x in base.sample.flagged),
        control_decisions=tuple(int(x) for x in base.sample.control),
        harm_threshold_s=out.threshold, summary=summary)


def _population(out: _Outcomes, base: _Base, U: int) -> dict[str, Any]:
    """Decision counts of the run and the sample (``U``: unflagged decisions)."""
    F, phase = out.forks, base.phase
    return {
        "decisions": len(base.log), "flagged": int(base.flagged.sum()), "unflagged": U,
        "hotspot_phase_1": int(np.count_nonzero(phase == 1)),
        "hotspot_phase_2": int(np.count_nonzero(phase == 2)),
        "sampled_flagged": int(out.kf.size), "sampled_control": int(out.kc.size),
        "converged": int(sum(f.converged for f in F)),
        "mean_affected": float(np.mean([f.affected for f in F])) if F else math.nan,
        "aa_nonzero": int(np.count_nonzero(out.aa)),
    }


def _settings(base: _Base, flag: str, horizon_s: float, converge_k: int, min_harm_s: float,
              samples: int, seed: int, n_boot: int) -> dict[str, Any]:
    """The study's settings as the results state them (score, flag, reference, rules)."""
    d, ref = base.definition, base.det.reference
    return {
        "score": {"P": d.p_definition.value, "B": d.b_definition.value,
                  "p0": _json_number(d.p0), "b0": _json_number(d.b0), "tie": base.tie},
        "flag": flag, "flag_definition": FLAG_TEXT[flag],
        "reference": {"lam": ref.lam, "lam_lo": ref.lam_lo, "lam_hi": ref.lam_hi,
                      "source": ref.source, "provenance": ref.provenance},
        "horizon_s": float(horizon_s), "converge_k": int(converge_k),
        "min_harm_s": float(min_harm_s), "samples": int(samples), "seed": int(seed),
        "n_boot": int(n_boot), "harm_rule": HARM_RULE,
        "matching": "controls drawn from the flagged decision's load decile (mean in-flight "
                    "requests per instance)",
    }


def _check_settings(flag: str, samples: int, horizon_s: float, converge_k: int,
                    min_harm_s: float, end_to_end_seeds: int) -> None:
    """``ValueError`` naming the first setting of the study out of its range."""
    if flag not in FLAG_DEFINITIONS:
        raise ValueError(f"flag: {flag!r} is not one of {', '.join(FLAG_DEFINITIONS)}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if not (math.isfinite(horizon_s) and horizon_s > 0):
        raise ValueError(f"horizon_s must be finite and > 0, got {horizon_s}")
    if converge_k < 0:
        raise ValueError(f"converge_k must be >= 0, got {converge_k}")
    if not (math.isfinite(min_harm_s) and min_harm_s >= 0):
        raise ValueError(f"min_harm_s must be finite and >= 0, got {min_harm_s}")
    if end_to_end_seeds < 0:
        raise ValueError(f"end_to_end_seeds must be >= 0, got {end_to_end_seeds}")


@dataclass(frozen=True, slots=True)
class _Base:
    """Step 1-2: the replay under the policy, its verdicts, flags and the sample.

    ``Pm``, ``Bm``, ``Um``: (D, N) signals under the policy's definitions; ``p0``, ``b0``: its
    offsets as the hot-spot monitor and the JSON take them (int, else float).
    """

    spec: PolicySpec
    definition: ScoreDefinition
    tie: str
    block: int
    det: Detector
    log: Any
    Pm: np.ndarray
    Bm: np.ndarray
    Um: np.ndarray
    verdicts: Verdicts
    phase: np.ndarray
    flagged: np.ndarray
    sample: Any
    chosen: np.ndarray
    p0: int | float
    b0: int | float
    arrival: np.ndarray | None = None  # closed loop: the replay's actual arrivals, seconds
    result: Any = None  # the replay's SimResult
    router: Any = None  # RouterStateDecisions of a router-state flag, else None


def _replay(workload: Workload, config: SimConfig, reference: LinearReference,
            asked: PolicySpec, flag: str, samples: int, seed: int, ex: Any) -> _Base:
    """Resolve the policy (tuning it if asked), replay the workload under it recording every
    decision, check them all with the detector and draw the matched sample."""
    from lmetric_theory.experiments.tuning import resolve_policy

    spec = resolve_policy(asked, workload, config, seed=seed, executor=ex)
    d, tie = policy_score(spec, seed)
    p0, b0 = _json_number(d.p0), _json_number(d.b0)
    block = int(getattr(workload, "block_size", 16) or 16)
    det = Detector(reference, d.p0, d.b0, block_tokens=block)
    cfg = dataclasses.replace(config, record_snapshots=True)
    res = Simulator(workload, cfg, spec, seed=seed).run()
    log = res.snapshots
    if log is None or len(log) == 0:
        raise ValueError("the replay recorded no routing decisions")
    Pm, Bm, Um = _signals(log, d)
    v: Verdicts = det.check_many(Pm, Bm, validate=False)
    phase = hotspot_phase(workload, log, d)
    router = None
    if flag in ROUTER_STATE_FLAGS:
        from lmetric_theory.experiments.router_state_log import (
            replay_router_state_settings,
            router_state_decisions,
        )

        router = router_state_decisions(log, res, d,
                                        settings=replay_router_state_settings(config, block))
        if router is None:
            raise ValueError(f"flag {flag}: the replay recorded no router-state fields")
    flagged = flag_mask(v, flag, phase, None if router is None else router.events)
    rng = np.random.default_rng([seed, 0xCF])
    smp = matched_sample(flagged, decision_load(log), samples, rng)
    return _Base(spec, d, tie, block, det, log, Pm, Bm, Um, v, phase, flagged, smp,
                 np.asarray(log.chosen, dtype=np.int64), p0, b0,
                 res.arrival_s if _closed(workload, config) else None, res, router)


def _closed(workload: Workload, config: SimConfig) -> bool:
    """Whether the replay schedules arrivals from completions (closed loop or a cap)."""
    return bool(workload.closed_loop) or config.concurrency is not None


def _run_forks(workload: Workload, config: SimConfig, base: _Base, horizon_s: float,
               converge_k: int, seed: int, ex: Any,
               progress: Callable[[int, int], None] | None) -> dict[int, DecisionForks]:
    """Step 3: every sampled decision's branches, in small tasks streamed through ``ex``."""
    smp = base.sample
    todo = np.unique(np.concatenate([smp.flagged, smp.control])).tolist()
    n_workers = _parallelism(ex)
    per_task = max(1, math.ceil(len(todo) / (_TASKS_PER_WORKER * n_workers)))
    chunks = [todo[i:i + per_task] for i in range(0, len(todo), per_task)]
    requests = np.asarray(base.log.request, dtype=np.int64)
    arrival = np.asarray(workload.arrival_s, dtype=np.float64)
    order = None
    if base.arrival is not None:  # closed loop: arrivals follow completions
        arrival = np.asarray(base.arrival, dtype=np.float64)
        order = requests
    chosen = base.chosen
    # The walker runs the same policy without recording snapshots (recording never changes a
    # decision) and is forked once per task, positioned at the task's first decision.
    walker = Simulator(workload, dataclasses.replace(config, record_snapshots=False), base.spec,
                       seed=seed)

    def tasks() -> Iterator[ForkTask]:
        for ch in chunks:
            walker.advance(until_decision=ch[0])
            yield ForkTask(
                sim=walker.fork(), decisions=tuple(ch),
                requests=tuple(int(requests[d]) for d in ch),
                chosen=tuple(int(chosen[d]) for d in ch), arrival_s=arrival,
                horizon_s=float(horizon_s), converge_k=int(converge_k), aa_seed=int(seed) + 1,
                decision_requests=order)

    forks: dict[int, DecisionForks] = {}
    if progress is not None:
        progress(0, len(todo))
    for res in _stream(ex, run_fork_task, tasks(), n_workers):
        for f in res:
            forks[f.decision] = f
        if progress is not None:
            progress(len(forks), len(todo))
    return forks


@dataclass(frozen=True, slots=True)
class _Outcomes:
    """Step 4: per sampled decision (in decision order) harm, regret and the threshold.

    ``kf``, ``kc``: positions of the flagged and control samples in ``forks``; ``order``:
    the sampled decisions, increasing.
    """

    forks: list[DecisionForks]
    order: list[int]
    harm: np.ndarray
    aa: np.ndarray
    noise: float
    threshold: float
    harmful: np.ndarray
    regret: np.ndarray
    tpot_harm: np.ndarray
    kf: np.ndarray
    kc: np.ndarray


def _outcomes(forks: dict[int, DecisionForks], base: _Base, min_harm_s: float) -> _Outcomes:
    """Harm, the noise floor and threshold, regret against the reference, TPOT harm."""
    order = sorted(forks)
    idx = {d: k for k, d in enumerate(order)}
    F = [forks[d] for d in order]
    harm = np.array([f.harm_s for f in F])
    aa = np.abs(np.array([f.aa_diff_s for f in F]))
    noise = float(np.quantile(aa, 0.95)) if aa.size else 0.0
    thr = max(noise, float(min_harm_s))
    lin = np.asarray(base.verdicts.linear_choice, dtype=np.int64)
    regret = np.array([f.cost_of(lin[f.decision]) for f in F])
    regret = np.array([f.ttft_cost_s[f.chosen] for f in F]) - regret
    tpot_harm = np.array([f.tpot_cost_s[f.chosen] - f.tpot_cost_s[int(np.argmin(f.ttft_cost_s))]
                          for f in F])
    kf = np.array([idx[d] for d in base.sample.flagged.tolist()], dtype=np.int64)
    kc = np.array([idx[d] for d in base.sample.control.tolist()], dtype=np.int64)
    return _Outcomes(F, order, harm, aa, noise, thr, harm > thr, regret, tpot_harm, kf, kc)


def _harm_sensitivity(out: _Outcomes, n_boot: int, seed: int) -> dict[str, Any]:
    """How the harm rates depend on the threshold (the floor is 0 for a deterministic
    policy, so any difference counts; these show how much of the rate is small differences)."""
    sensitivity: dict[str, Any] = {}
    for g, t_ in enumerate(HARM_SENSITIVITY_S):
        t_eff = max(out.threshold, t_)
        row: dict[str, Any] = {"threshold_s": t_eff}
        for name, k in (("flagged", out.kf), ("control", out.kc)):
            e = stats.bootstrap_ci((out.harm[k] > t_eff).astype(np.float64), n_boot=n_boot,
                                   seed=[seed, 400 + 2 * g + (name == "control")])
            row[name] = {"harm_rate": e.value, "harm_rate_ci95": list(e.ci95)}
        sensitivity[f"{t_:g}"] = row
    return sensitivity


def _auroc_table(out: _Outcomes, base: _Base, flag: str, n_boot: int,
                 seed: int) -> tuple[dict[str, Any], dict[str, str]]:
    """AUROC of each signal over both groups pooled, and why a signal was left out."""
    pool = np.concatenate([out.kf, out.kc])
    dpool = np.array([out.order[k] for k in pool.tolist()], dtype=np.int64)
    y = out.harmful[pool]
    v, ref = base.verdicts, base.det.reference
    sig: dict[str, np.ndarray] = {
        "disagreement": v.disagrees[dpool].astype(np.float64),
        "regret_tokens": v.regret_tokens[dpool],
        "lam_star_band_distance": _band_distance(v.lam_star[dpool], float(ref.lam_lo),
                                                 float(ref.lam_hi)),
        "lam_eff": v.lam_eff[dpool],
    }
    if flag != "disagreement":
        sig[f"flag:{flag}"] = base.flagged[dpool].astype(np.float64)
    sig["hotspot_phase"] = base.phase[dpool].astype(np.float64)
    omitted: dict[str, str] = {}
    auroc: dict[str, Any] = {}
    for g, (name, s) in enumerate(sig.items()):
        ok = ~np.isnan(s)
        if np.unique(s[ok]).size < 2:  # a constant ranks nothing: AUROC 0.5 by construction
            omitted[name] = (
                "the hot-spot monitor raised no phase at any sampled decision"
                if name == "hotspot_phase" else
                f"constant over the {int(ok.sum())} sampled decisions (no ranking to score)")
            continue
        e = stats.auroc_ci(s[ok], y[ok], n_boot=n_boot, seed=[seed, 100 + g])
        auroc[name] = {"value": e.value, "ci95": list(e.ci95), "n": int(ok.sum()),
                       "positives": int(y[ok].sum())}
    return auroc, omitted


def _flag_precision_recall(out: _Outcomes, base: _Base, n_boot: int,
                           seed: int) -> tuple[dict, dict, int]:
    """Precision and recall of the flag (step 5), and the unflagged decision count."""
    smp, flagged = base.sample, base.flagged
    dec = smp.decile
    u_mask = ~flagged
    U = int(u_mask.sum())
    u_share = np.array([np.count_nonzero(u_mask & (dec == q)) for q in range(10)],
                       dtype=np.float64) / max(U, 1)
    precision, recall = _precision_recall(out.harmful[out.kf], out.harmful[out.kc],
                                          dec[smp.control], int(flagged.sum()), U, u_share,
                                          n_boot, seed)
    return precision, recall, U


def _gain(out: _Outcomes, base: _Base, choices: np.ndarray, n_boot: int, seed: list[int],
          description: str) -> dict[str, Any]:
    """One mitigation's entry: its choice at every sampled flagged decision, read off the
    same forks; gain = cost(policy's choice) - cost(mitigated choice), seconds (positive:
    the mitigation helps), with a bootstrap interval."""
    kf = out.kf.tolist()
    base_cost = np.array([out.forks[k].ttft_cost_s[out.forks[k].chosen] for k in kf])
    gain = base_cost - np.array([out.forks[k].cost_of(c)
                                 for k, c in zip(kf, choices.tolist(), strict=True)])
    e = stats.bootstrap_ci(gain, n_boot=n_boot, seed=seed)
    return {"n": int(gain.size), "mean_gain_s": e.value, "ci95": list(e.ci95),
            "changed": int(np.count_nonzero(choices != base.chosen[base.sample.flagged])),
            "description": description}


def _mitigation_gains(out: _Outcomes, base: _Base, n_boot: int, seed: int) -> dict[str, Any]:
    """Step 6: every mitigation the detector proposes, ``auto`` (each decision's most severe
    finding) and, where the hot-spot monitor is in phase 2, the hot-spot exclusion."""
    det, v, dfl = base.det, base.verdicts, base.sample.flagged
    Pf, Bf = base.Pm[dfl], base.Bm[dfl]
    cands: list[Mitigation] = []
    for m in det.mitigations.values():
        if m not in cands and m.kind.value != "none":
            cands.append(m)
    gains: dict[str, Any] = {}
    for g, m in enumerate(cands):
        ch = det.mitigated_choices(Pf, Bf, m, uncached_tokens=base.Um[dfl], validate=False)
        gains[_mitigation_name(m)] = _gain(out, base, ch, n_boot, [seed, 200 + g], m.message)
    ch = np.array([det.mitigated_choice(v.snapshot(int(d)), verdict=v[int(d)]) for d in dfl])
    gains["auto"] = _gain(out, base, ch, n_boot, [seed, 299],
                          "the mitigation of each decision's most severe finding")
    # The hot-spot monitor's mitigation where it applies (phase 2): the product's argmin
    # among the instances that do not hold the request's class.
    hot = base.phase[dfl] == 2
    if hot.any():
        log = base.log
        hits = log.uncached[dfl] < np.asarray(log.input_tokens)[dfl][:, None]
        S = np.where(hits, np.inf, product_scores(Pf, Bf, base.p0, base.b0).astype(np.float64))
        cold = np.isfinite(S).any(axis=1)
        ch = np.where(hot & cold, np.argmin(S, axis=1), base.chosen[dfl])
        gains["hotspot_exclude"] = _gain(
            out, base, ch, n_boot, [seed, 298],
            "hot-spot monitor, phase 2: the product's argmin among instances that do not hold "
            "the request's prefix class")
    return gains
