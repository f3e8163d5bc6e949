"""Tune the linear score's exchange rate ``lam`` with the simulator, and the ``tuned-linear`` policy.

:func:`tune_linear` replays a workload under ``linear:lam=X`` for log-spaced ``X`` (through a
sweep executor), optionally refines around the best grid point with
``scipy.optimize.minimize_scalar`` (bounded, in ``log(lam)``), and returns the best ``lam``.

``tuned-linear`` (:class:`lmetric_theory.policies.tuned.TunedLinear`) is the linear policy whose
``lam`` is tuned on the very workload it is about to route. The simulator has no hook that hands
a policy the workload, so the tuning happens *before* the run: call :func:`prepare_tuned` or,
with a typed spec, :func:`resolve_policy` (the sweep functions do this), which turns
``tuned-linear:...`` into the equivalent ``linear:lam=X,...`` spec. An unprepared
``tuned-linear`` raises ``RuntimeError`` on its first decision.

The same holds for Dynamo's overlap weight: ``dynamo:w=tuned`` (and ``dynamo-po:w=tuned``),
the paper's "Dynamo with ``w`` tuned per workload", is resolved by :func:`tune_dynamo_w`
to the weight of :data:`DYNAMO_W_GRID` with the lowest mean TTFT on the workload; and for
Company-X: ``bailian:alpha=tuned``, Bailian's weighted draw with its hit weight ``alpha`` tuned
per workload as the paper's authors did (their artefact sweeps ``bailian-impl-00`` to
``bailian-impl-10``, alpha = 0, 0.1, ..., 1, and plots a per-workload choice as Company-X), is
resolved by :func:`tune_bailian_alpha` over :data:`BAILIAN_ALPHA_GRID`, ``beta`` and ``gamma``
sharing ``1 - alpha``. Both are optimistic in the way ``tuned-linear`` is: tuned on the very
workload, load and seed they are evaluated on.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from lmetric_theory.experiments.tasks import LocalExecutor, SimTask, get_executor, simulate_task
from lmetric_theory.policies import PolicySpec, make_policy, with_values
from lmetric_theory.policies.base import TUNED
from lmetric_theory.policies.tuned import OBJECTIVES, TunedLinear, TunedLinearParams
from lmetric_theory.policies.tuned import linear_spec as _linear_spec
from lmetric_theory.sim import SimConfig
from lmetric_theory.workload import Workload

__all__ = ["BAILIAN_ALPHA_GRID", "DYNAMO_W_GRID", "OBJECTIVES", "TuneResult", "TunedLinear", "TunedLinearParams",
           "bailian_weights", "prepare_tuned", "resolve_policy", "tune_bailian_alpha", "tune_dynamo_w",
           "tune_linear"]

#: Overlap weights tried by ``dynamo:w=tuned`` (Dynamo's default is 1; 0 ignores the prefix
#: term's weight, larger values favour cache hits more).
DYNAMO_W_GRID: tuple[Fraction, ...] = tuple(
    Fraction(w) for w in ("0", "1/4", "1/2", "1", "2", "4", "8", "16"))

#: Policies whose ``w`` can be tuned.
_DYNAMO_NAMES = ("dynamo", "dynamo-deterministic", "dynamo-po")

#: Hit weights tried by ``bailian:alpha=tuned``: the authors' sweep ``bailian-impl-00`` ...
#: ``bailian-impl-10`` (blitz-serving/MetricsTestRunner, scripts/multi_node/*tune_bailian*.sh;
#: the plotting scripts read ``bailian-impl-XX`` as alpha = XX / 10).
BAILIAN_ALPHA_GRID: tuple[Fraction, ...] = tuple(Fraction(k, 10) for k in range(11))


@dataclass(frozen=True, slots=True)
class TuneResult:
    """Outcome of :func:`tune_linear`.

    Attributes
    ----------
    lam : float
        Best exchange rate found (tokens per batch slot).
    objective : float
        Its objective value, seconds.
    objective_name : str
        Which objective (e.g. ``"ttft_mean"``).
    grid : np.ndarray, shape (G,), float64
        Grid ``lam`` values, tokens per batch slot.
    grid_objective : np.ndarray, shape (G,), float64
        Objective per grid point, seconds (``inf`` when no request completed).
    evaluations : tuple of (float, float)
        Every ``(lam, objective)`` evaluated (grid first, then refinement), in order.
    refined : bool
        Whether scipy refinement ran.
    """

    lam: float
    objective: float
    objective_name: str
    grid: np.ndarray
    grid_objective: np.ndarray
    evaluations: tuple[tuple[float, float], ...]
    refined: bool


def _six_digits(x: float) -> float:
    """``x`` at 6 significant digits: a grid rate as reports print it (``geomspace`` gives
    ``63.999999999999986`` where 64 is meant). The rate runs as the decimal number it prints
    as (:func:`~lmetric_theory.policies.tuned.linear_spec`), so reported = evaluated."""
    return float(f"{x:.6g}")


def tune_linear(
    workload: Workload,
    *,
    instances: int | None = None,
    preset: Any = "h100-llama3-8b-calibrated",
    config: SimConfig | None = None,
    objective: str = "ttft_mean",
    lam_min: float = 1.0,
    lam_max: float = 65536.0,
    points: int = 9,
    grid: Any = None,
    refine: bool = False,
    refine_evals: int = 6,
    P: str = "router-queued+new",
    B: str = "router-in-flight",
    tie: str = "lowest",
    seed: int = 0,
    executor: Any = None,
    workers: int | None = None,
) -> TuneResult:
    """Choose ``lam`` for ``linear`` by simulating ``workload`` over a log-spaced grid.

    Parameters
    ----------
    workload : Workload
        Requests to replay.
    instances : int, optional
        Number of instances (with ``preset``); ignored when ``config`` is given.
    preset : str or Preset
        Hardware preset name or object (default ``h100-llama3-8b-calibrated``).
    config : SimConfig, optional
        Full cluster settings (overrides ``instances`` / ``preset``).
    objective : str
        One of :data:`OBJECTIVES` (minimised).
    lam_min, lam_max, points : float, float, int
        Log-spaced grid bounds (tokens per batch slot, > 0) and size (>= 2), when ``grid``
        is not given.
    grid : array-like, optional
        Explicit grid of ``lam`` values (> 0).
    refine : bool
        Refine with ``scipy.optimize.minimize_scalar`` (bounded, in ``log lam``) between the
        best grid point's neighbours, at most ``refine_evals`` extra runs (sequential).
    P, B, tie : str
        Definitions and tie rule of the linear score.
    seed : int
        Policy seed.
    executor, workers
        Sweep executor (see :func:`lmetric_theory.experiments.tasks.get_executor`).

    Returns
    -------
    TuneResult
        The best of all evaluated points, so ``objective <= min(grid_objective)``.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective: {objective!r} is not one of {', '.join(OBJECTIVES)}")
    if config is None:
        if instances is None or instances < 1:
            raise ValueError(f"instances must be >= 1, got {instances}")
        if isinstance(preset, str):
            from lmetric_theory.sim import load_preset

            preset = load_preset(preset)
        config = SimConfig.from_preset(preset, instances)
    if grid is None:
        if not (math.isfinite(lam_min) and math.isfinite(lam_max) and 0 < lam_min < lam_max):
            raise ValueError(f"need 0 < lam_min < lam_max (finite), got {lam_min}, {lam_max}")
        if points < 2:
            raise ValueError(f"points must be >= 2, got {points}")
        grid = np.geomspace(lam_min, lam_max, int(points))
    g = np.array(sorted({_six_digits(float(x)) for x in np.asarray(grid, dtype=np.float64).ravel()}))
    if g.size == 0 or not np.all(np.isfinite(g)) or np.any(g <= 0):
        raise ValueError("grid: lam values must be finite and > 0 (at least one)")
    key = f"{objective}_s"
    cfg = dataclasses.replace(config, record_snapshots=False)

    def value(row: dict[str, Any]) -> float:
        v = float(row[key])
        return v if math.isfinite(v) else math.inf

    tasks = [SimTask(workload, cfg, _linear_spec(float(x), P, B, tie), seed) for x in g]
    rows = get_executor(executor, workers=workers).map(simulate_task, tasks)
    gobj = np.array([value(r) for r in rows], dtype=np.float64)
    evals: list[tuple[float, float]] = list(zip(g.tolist(), gobj.tolist(), strict=True))
    cache = dict(evals)
    refined = False
    if refine and g.size >= 2:
        from scipy.optimize import minimize_scalar

        i = int(np.argmin(gobj))
        lo, hi = g[max(i - 1, 0)], g[min(i + 1, g.size - 1)]

        def f(loglam: float) -> float:
            lam = _six_digits(math.exp(loglam))
            if lam not in cache:
                cache[lam] = value(simulate_task(SimTask(workload, cfg, _linear_spec(lam, P, B, tie), seed)))
                evals.append((lam, cache[lam]))
            return cache[lam]

        minimize_scalar(f, bounds=(math.log(lo), math.log(hi)), method="bounded",
                        options={"maxiter": int(refine_evals), "xatol": 1e-3})
        refined = True
    # Best of everything evaluated; ties go to the smallest lam (deterministic).
    best_lam, best_obj = min(evals, key=lambda e: (e[1], e[0]))
    return TuneResult(lam=best_lam, objective=best_obj, objective_name=objective, grid=g,
                      grid_objective=gobj, evaluations=tuple(evals), refined=refined)


def prepare_tuned(policy: TunedLinear, workload: Workload, config: SimConfig, *,
                  executor: Any = None) -> TuneResult:
    """Tune ``policy``'s ``lam`` on ``workload`` / ``config`` and bind it; afterwards
    ``policy.choose`` routes with it.

    Parameters
    ----------
    policy : TunedLinear
        A ``tuned-linear`` policy (from ``make_policy("tuned-linear:...")``).
    workload, config
        What to tune on.
    executor
        Sweep executor for the grid (see :func:`lmetric_theory.experiments.tasks.get_executor`).

    Returns
    -------
    TuneResult
    """
    p = policy.params
    result = tune_linear(workload, config=config, objective=p.objective, lam_min=p.lam_min,
                         lam_max=p.lam_max, points=p.points, refine=p.refine, P=p.P, B=p.B,
                         tie=p.tie, seed=policy.seed, executor=executor)
    policy.bind(result)
    return result


def _tune_over(specs: Sequence[PolicySpec], workload: Workload, config: SimConfig, seed: int,
               objective: str, executor: Any) -> tuple[int, list[float]]:
    """Replay ``workload`` once per spec; the index of the lowest objective (ties: the first)
    and every objective value, seconds (``inf`` when no request completed)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r} is not one of {', '.join(OBJECTIVES)}")
    cfg = dataclasses.replace(config, record_snapshots=False)
    rows = get_executor(executor).map(simulate_task, [SimTask(workload, cfg, sp, seed) for sp in specs])
    key = f"{objective}_s"
    vals = [float(r[key]) if math.isfinite(float(r[key])) else math.inf for r in rows]
    return min(range(len(specs)), key=lambda k: (vals[k], k)), vals


def tune_dynamo_w(spec: PolicySpec, workload: Workload, config: SimConfig, *, seed: int = 0,
                  grid: Sequence[Fraction | int] = DYNAMO_W_GRID, objective: str = "ttft_mean",
                  executor: Any = None) -> tuple[PolicySpec, list[tuple[Fraction | int, float]]]:
    """Tune the overlap weight of a ``dynamo[-po]:w=tuned,...`` spec on ``workload``.

    Replays the workload once per weight of ``grid`` (the spec's other parameters kept) and
    keeps the weight with the lowest objective; ties go to the weight listed first.

    Returns
    -------
    spec : PolicySpec
        ``spec`` with ``w`` set to the best weight (in ``w``'s place in the text).
    evaluations : list of (weight, float)
        Every weight and its objective, seconds (``inf`` when no request completed).
    """
    if spec.name not in _DYNAMO_NAMES:
        raise ValueError(f"{str(spec)!r}: only {', '.join(_DYNAMO_NAMES)} have a tunable w")
    if not grid:
        raise ValueError("grid: at least one weight")
    specs = [with_values(spec, w=w) for w in grid]  # every weight valid before any run
    best, vals = _tune_over(specs, workload, config, seed, objective, executor)
    return specs[best], list(zip(grid, vals, strict=True))


def bailian_weights(alpha: Fraction, beta: Fraction, gamma: Fraction) -> tuple[Fraction, Fraction, Fraction]:
    """The weights ``bailian:alpha=tuned`` runs with for hit weight ``alpha``: ``beta`` and
    ``gamma`` rescaled to share ``1 - alpha`` in their ratio (``(1 - alpha) / 2`` each for the
    default 1:1), exact."""
    a, b, g = Fraction(alpha), Fraction(beta), Fraction(gamma)
    if not (0 <= a <= 1 and b >= 0 and g >= 0 and b + g > 0):
        raise ValueError(f"need 0 <= alpha <= 1, beta, gamma >= 0 and beta + gamma > 0, got {a}, {b}, {g}")
    rest = 1 - a
    return a, rest * b / (b + g), rest * g / (b + g)


def tune_bailian_alpha(spec: PolicySpec, workload: Workload, config: SimConfig, *, seed: int = 0,
                       grid: Sequence[Fraction] = BAILIAN_ALPHA_GRID, objective: str = "ttft_mean",
                       executor: Any = None) -> tuple[PolicySpec, list[tuple[Fraction, float]]]:
    """Tune the hit weight of a ``bailian:alpha=tuned,...`` spec (Company-X) on ``workload``.

    Replays the workload once per ``alpha`` of ``grid`` with the weights of
    :func:`bailian_weights` (the spec's other parameters kept; the draws use the policy seed
    ``seed``) and keeps the lowest objective; ties go to the weight listed first.

    Returns
    -------
    spec : PolicySpec
        ``spec`` with ``alpha``, ``beta`` and ``gamma`` set.
    evaluations : list of (alpha, float)
        Every hit weight and its objective, seconds (``inf`` when no request completed).
    """
    if spec.name != "bailian":
        raise ValueError(f"{str(spec)!r}: only bailian has a tunable alpha")
    if not grid:
        raise ValueError("grid: at least one weight")
    b, g = spec.value("beta"), spec.value("gamma")
    specs = []
    for a in grid:
        wa, wb, wg = bailian_weights(a, b, g)
        specs.append(with_values(spec, alpha=wa, beta=wb, gamma=wg))
    best, vals = _tune_over(specs, workload, config, seed, objective, executor)
    return specs[best], list(zip(grid, vals, strict=True))


def resolve_policy(spec: PolicySpec, workload: Workload, config: SimConfig, *, seed: int = 0,
                   executor: Any = None) -> PolicySpec:
    """``spec`` itself; for ``tuned-linear[:...]`` the equivalent tuned ``linear`` spec; for
    ``dynamo[-po]:w=tuned,...`` the spec with the tuned weight (:func:`tune_dynamo_w`); for
    ``bailian:alpha=tuned,...`` the spec with the tuned weights (:func:`tune_bailian_alpha`).

    Tuning runs through ``executor`` (default: sequential in this process when called from a
    sweep worker would nest pools, so pass one explicitly for parallel tuning).
    """
    if spec.name in _DYNAMO_NAMES and spec.value("w") == TUNED:
        return tune_dynamo_w(spec, workload, config, seed=seed,
                             executor=executor if executor is not None else LocalExecutor(1))[0]
    if spec.name == "bailian" and spec.value("alpha") == TUNED:
        return tune_bailian_alpha(spec, workload, config, seed=seed,
                                  executor=executor if executor is not None else LocalExecutor(1))[0]
    if spec.name != TunedLinear.name:
        return spec
    pol = make_policy(spec, seed=seed)
    assert isinstance(pol, TunedLinear)
    if executor is None:
        executor = LocalExecutor(1)
    prepare_tuned(pol, workload, config, executor=executor)
    return pol.linear_spec
