"""Sweeps of simulator runs through an executor: local processes or a Dask cluster.

A sweep is a list of :class:`SimTask` (workload, cluster config, typed policy spec, seed, tags);
:func:`run_sweep` runs them through an executor and returns one tidy row per task, in task
order whatever the executor. :func:`load_sweep` and :func:`instance_sweep` build the usual
grids (arrival-rate scales, instance counts).

Executors
---------
``"local"`` (default)
    :class:`LocalExecutor`: ``concurrent.futures.ProcessPoolExecutor`` with ``workers``
    processes (``workers=1`` runs in this process, no pool).
``"dask"``
    :class:`DaskExecutor`: a ``dask.distributed`` client (optional extra ``dask``:
    ``pip install 'lmetric-theory[dask]'``); pass ``address=`` for an existing scheduler or
    ``client=`` for an existing client.

Any object with ``map(fn, items) -> list`` (results in item order) is accepted too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from lmetric_theory.experiments.tasks import (
    DaskExecutor,
    Executor,
    LocalExecutor,
    SimTask,
    get_executor,
    simulate_task,
)
from lmetric_theory.experiments.tuning import resolve_policy
from lmetric_theory.policies import PolicySpec, parse_spec
from lmetric_theory.sim import SimConfig
from lmetric_theory.workload import Workload, scale_rate

__all__ = [
    "DaskExecutor",
    "Executor",
    "LocalExecutor",
    "SimTask",
    "get_executor",
    "instance_sweep",
    "load_sweep",
    "run_sweep",
    "run_task",
]


def run_task(task: SimTask) -> dict[str, Any]:
    """Run one task; return its tidy row (tags, policy, instances, requests, summary figures).

    A ``tuned-linear`` spec is tuned on the task's workload first (in this process).

    Returns
    -------
    dict
        ``tags`` merged with ``policy`` (the spec asked for), ``policy_resolved`` (the
        canonical spec run), ``instances``, ``requests`` and the keys of
        :meth:`SimResult.summary` (seconds / fractions).
    """
    policy = resolve_policy(task.policy, task.workload, task.config, seed=task.seed)
    return simulate_task(task, policy)


def run_sweep(tasks: Iterable[SimTask], executor: Executor | str | None = None, *,
              workers: int | None = None) -> list[dict[str, Any]]:
    """Run every task; one row per task, in task order (see :func:`run_task`)."""
    tasks = list(tasks)
    return list(get_executor(executor, workers=workers).map(run_task, tasks))


def load_sweep(workload: Workload, config: SimConfig, policies: Sequence[PolicySpec | str],
               rate_scales: Sequence[float], *, seed: int = 0,
               executor: Executor | str | None = None, workers: int | None = None) -> list[dict[str, Any]]:
    """Every policy at every arrival-rate scale; rows tagged ``rate_scale`` (policy order inner).
    Spec text is read once per policy."""
    policies = [parse_spec(p) for p in policies]
    tasks = []
    for k in rate_scales:
        w = scale_rate(workload, float(k))
        tasks += [SimTask(w, config, p, seed, {"rate_scale": float(k)}) for p in policies]
    return run_sweep(tasks, executor, workers=workers)


def instance_sweep(workload: Workload, config: SimConfig, policies: Sequence[PolicySpec | str],
                   instances: Sequence[int], *, seed: int = 0,
                   executor: Executor | str | None = None, workers: int | None = None) -> list[dict[str, Any]]:
    """Every policy at every instance count; rows tagged ``instances`` (policy order inner).
    Spec text is read once per policy."""
    policies = [parse_spec(p) for p in policies]
    tasks = [SimTask(workload, replace(config, n_instances=int(n)), p, seed) for n in instances for p in policies]
    return run_sweep(tasks, executor, workers=workers)
