"""Sweeps of simulator runs through an executor: local processes or a Dask cluster.

A sweep is a list of :class:`SimTask` (workload, cluster config, policy spec, seed, tags);
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

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from lmetric_theory.sim import SimConfig, Simulator
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


class Executor(Protocol):
    """Anything that maps a picklable function over items, keeping item order."""

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:  # pragma: no cover
        ...


@dataclass(frozen=True, slots=True)
class SimTask:
    """One simulator run of a sweep.

    Attributes
    ----------
    workload : Workload
        Requests to replay (already rate-scaled / selected).
    config : SimConfig
        Cluster settings.
    policy : str
        Policy spec ``NAME[:key=value,...]``. ``tuned-linear`` specs are resolved to a
        ``linear`` spec by tuning on ``workload`` first (see :mod:`lmetric_theory.experiments.tuning`).
    seed : int
        Policy seed.
    tags : dict
        Labels copied into the result row (e.g. ``{"rate_scale": 2.0}``).
    """

    workload: Workload
    config: SimConfig
    policy: str
    seed: int = 0
    tags: dict[str, Any] = field(default_factory=dict)


def run_task(task: SimTask) -> dict[str, Any]:
    """Run one task; return its tidy row (tags, policy, instances, requests, summary figures).

    Returns
    -------
    dict
        ``tags`` merged with ``policy`` (the spec asked for), ``policy_resolved`` (the
        canonical spec run), ``instances``, ``requests`` and the keys of
        :meth:`SimResult.summary` (seconds / fractions).
    """
    import lmetric_theory.policies.guarded  # noqa: F401  (registers guarded-lmetric in workers)
    from lmetric_theory.experiments.tuning import resolve_policy  # registers tuned-linear

    policy = resolve_policy(task.policy, task.workload, task.config, seed=task.seed)
    res = Simulator(task.workload, task.config, policy, seed=task.seed).run()
    row: dict[str, Any] = dict(task.tags)
    row.update(policy=task.policy, policy_resolved=res.policy, instances=task.config.n_instances,
               requests=len(task.workload))
    row.update(res.summary())
    return row


class LocalExecutor:
    """Local processes (``ProcessPoolExecutor``); results in item order.

    Parameters
    ----------
    workers : int, optional
        Worker processes (default: CPU count). ``1`` runs sequentially in this process.
    """

    def __init__(self, workers: int | None = None) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers or os.cpu_count() or 1

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """``[fn(x) for x in items]``, computed in up to ``workers`` processes."""
        items = list(items)
        n = min(self.workers, len(items))
        if n <= 1:
            return [fn(x) for x in items]
        with ProcessPoolExecutor(max_workers=n) as pool:
            return list(pool.map(fn, items))


class DaskExecutor:
    """A ``dask.distributed`` client; results in item order.

    Parameters
    ----------
    address : str, optional
        Scheduler address (``tcp://host:8786``). Ignored when ``client`` is given.
    client : dask.distributed.Client, optional
        An existing client (e.g. on a ``LocalCluster``).

    Raises
    ------
    ImportError
        When ``dask.distributed`` is not installed, naming the ``dask`` extra.
    """

    def __init__(self, address: str | None = None, *, client: Any = None) -> None:
        try:
            from dask.distributed import Client
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "the Dask executor needs dask.distributed: pip install 'lmetric-theory[dask]'"
            ) from exc
        self._own = client is None
        self.client = client if client is not None else Client(address)

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """``[fn(x) for x in items]`` on the cluster (``pure=False``: every item runs)."""
        items = list(items)
        if not items:
            return []
        futures = self.client.map(fn, items, pure=False)
        return list(self.client.gather(futures))

    def close(self) -> None:
        """Close the client if this executor created it."""
        if self._own:
            self.client.close()


def get_executor(executor: Executor | str | None = None, *, workers: int | None = None) -> Executor:
    """Executor from a name (``"local"``, ``"dask"``), an executor object or ``None`` (local)."""
    if executor is None or executor == "local":
        return LocalExecutor(workers)
    if executor == "dask":
        return DaskExecutor()
    if isinstance(executor, str):
        raise ValueError(f"executor: {executor!r} is not one of local, dask (or an executor object)")
    if not callable(getattr(executor, "map", None)):
        raise ValueError("executor must have a map(fn, items) method")
    return executor


def run_sweep(tasks: Iterable[SimTask], executor: Executor | str | None = None, *,
              workers: int | None = None) -> list[dict[str, Any]]:
    """Run every task; one row per task, in task order (see :func:`run_task`)."""
    tasks = list(tasks)
    return list(get_executor(executor, workers=workers).map(run_task, tasks))


def load_sweep(workload: Workload, config: SimConfig, policies: Sequence[str],
               rate_scales: Sequence[float], *, seed: int = 0,
               executor: Executor | str | None = None, workers: int | None = None) -> list[dict[str, Any]]:
    """Every policy at every arrival-rate scale; rows tagged ``rate_scale`` (policy order inner)."""
    tasks = []
    for k in rate_scales:
        w = scale_rate(workload, float(k))
        tasks += [SimTask(w, config, p, seed, {"rate_scale": float(k)}) for p in policies]
    return run_sweep(tasks, executor, workers=workers)


def instance_sweep(workload: Workload, config: SimConfig, policies: Sequence[str],
                   instances: Sequence[int], *, seed: int = 0,
                   executor: Executor | str | None = None, workers: int | None = None) -> list[dict[str, Any]]:
    """Every policy at every instance count; rows tagged ``instances`` (policy order inner)."""
    tasks = [SimTask(workload, replace(config, n_instances=int(n)), p, seed) for n in instances for p in policies]
    return run_sweep(tasks, executor, workers=workers)
