"""Simulator tasks and the executors that run them (no policy resolution, no tuning).

A :class:`SimTask` is one simulator run (workload, cluster config, typed policy spec, seed,
tags); :func:`simulate_task` runs a task whose spec names a concrete policy and returns its
tidy row.
Executors map a picklable function over tasks, keeping task order:

``"local"`` (default)
    :class:`LocalExecutor`: ``concurrent.futures.ProcessPoolExecutor`` with ``workers``
    processes (``workers=1`` runs in this process, no pool).
``"dask"``
    :class:`DaskExecutor`: a ``dask.distributed`` client (optional extra ``dask``).

:mod:`lmetric_theory.experiments.tuning` builds on this module and
:mod:`lmetric_theory.experiments.sweep` on both (it resolves ``tuned-linear`` specs first).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from lmetric_theory.policies import PolicySpec, parse_spec
from lmetric_theory.sim import SimConfig, Simulator
from lmetric_theory.workload import Workload

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor
# concurrent.futures (threading, queues) is imported where a pool is used: a single
# simulation (``simulate``'s tuning check) never waits on futures

__all__ = [
    "DaskExecutor",
    "Executor",
    "LocalExecutor",
    "SimTask",
    "get_executor",
    "simulate_task",
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
    policy : PolicySpec
        The policy. Spec text ``NAME[:key=value,...]`` is accepted (a task is built at the
        edges too: scripts, notebooks) and read once, here. ``tuned-linear`` specs are
        resolved to a ``linear`` spec by tuning on ``workload`` first (see
        :mod:`lmetric_theory.experiments.tuning`).
    seed : int
        Policy seed.
    tags : dict
        Labels copied into the result row (e.g. ``{"rate_scale": 2.0}``).
    engine : str
        ``"fast"`` (this package's simulator) or ``"vllm"`` (vLLM's own scheduler per
        instance; needs the ``vllm`` extra).
    """

    workload: Workload
    config: SimConfig
    policy: PolicySpec
    seed: int = 0
    tags: dict[str, Any] = field(default_factory=dict)
    engine: str = "fast"

    def __post_init__(self) -> None:
        if not isinstance(self.policy, PolicySpec):
            object.__setattr__(self, "policy", parse_spec(self.policy))


def run_engine(task: SimTask, policy: Any) -> Any:
    """Run ``task`` on its engine with ``policy`` (a PolicySpec or a Policy); the ``SimResult``."""
    if task.engine == "vllm":
        from lmetric_theory.sim.vllm_engine import simulate_vllm

        return simulate_vllm(task.workload, task.config, policy, seed=task.seed)
    if task.engine != "fast":
        raise ValueError(f"engine: {task.engine!r} is not one of fast, vllm")
    return Simulator(task.workload, task.config, policy, seed=task.seed).run()


def simulate_task(task: SimTask, policy: PolicySpec | None = None) -> dict[str, Any]:
    """Run one task with ``policy`` (default ``task.policy``, a concrete spec); its tidy row.

    Returns
    -------
    dict
        ``tags`` merged with ``policy`` (``task.policy``'s text), ``policy_resolved`` (the
        canonical spec run, every parameter), ``instances``, ``requests`` and the keys of
        :meth:`SimResult.summary` (seconds / fractions).
    """
    res = run_engine(task, policy or task.policy)
    row: dict[str, Any] = dict(task.tags)
    row.update(policy=str(task.policy), policy_resolved=res.policy,
               instances=task.config.n_instances,
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
        with _process_pool(n) as pool:
            return list(pool.map(fn, items))

    def imap(self, fn: Callable[[Any], Any], items: Iterable[Any], *,
             window: int | None = None) -> Iterator[tuple[int, Any]]:
        """``(k, fn(items[k]))`` as each finishes, in completion order, with one pool.

        Items are drawn from ``items`` lazily: at most ``window`` (default ``2 * workers``)
        are pending at a time, so a generator of large tasks is never held whole in memory.
        With one worker everything runs in this process, in order.
        """
        if self.workers <= 1:
            for k, x in enumerate(items):
                yield k, fn(x)
            return
        yield from _bounded_imap(
            lambda pool, x: pool.submit(fn, x), items, window or 2 * self.workers,
            lambda: _process_pool(self.workers))


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

    def imap(self, fn: Callable[[Any], Any], items: Iterable[Any], *,
             window: int | None = None) -> Iterator[tuple[int, Any]]:
        """``(k, fn(items[k]))`` as each finishes; at most ``window`` pending (default: twice
        the cluster's worker count)."""
        if window is None:
            try:
                window = 2 * max(1, len(self.client.scheduler_info().get("workers", {})))
            except Exception:  # noqa: BLE001 - no scheduler info: a small window
                window = 2

        yield from _bounded_imap(lambda c, x: c.submit(fn, x, pure=False), items, window,
                                 lambda: nullcontext(self.client))

    def close(self) -> None:
        """Close the client if this executor created it."""
        if self._own:
            self.client.close()


def _process_pool(n: int) -> ProcessPoolExecutor:
    """``n`` worker processes; each freezes the heap it inherits out of the garbage collector
    (collections then walk only the worker's own objects)."""
    from concurrent.futures import ProcessPoolExecutor  # multiprocessing: only when used

    return ProcessPoolExecutor(max_workers=n, initializer=gc.freeze)


def _bounded_imap(submit: Callable[[Any, Any], Any], items: Iterable[Any], window: int,
                  open_pool: Callable[[], Any]) -> Iterator[tuple[int, Any]]:
    """Keep at most ``window`` futures pending; yield ``(k, result)`` as they complete.

    Works with ``concurrent.futures`` futures and Dask futures alike (both have ``done()``
    and ``result()``); a failed item raises its exception here, the others are cancelled.
    """
    window = max(1, int(window))
    it = iter(enumerate(items))
    pending: dict[Any, int] = {}
    with open_pool() as pool:
        try:
            exhausted = False
            while True:
                while not exhausted and len(pending) < window:
                    try:
                        k, x = next(it)
                    except StopIteration:
                        exhausted = True
                        break
                    pending[submit(pool, x)] = k
                if not pending:
                    return
                done = _wait_any(list(pending))
                for fut in done:
                    k = pending.pop(fut)
                    yield k, fut.result()
        finally:
            for fut in pending:
                fut.cancel()


def _wait_any(futures: list[Any]) -> list[Any]:
    """The finished ones among ``futures``, waiting for at least one."""
    from concurrent.futures import FIRST_COMPLETED, Future, wait

    if all(isinstance(f, Future) for f in futures):
        return list(wait(futures, return_when=FIRST_COMPLETED).done)
    from dask.distributed import wait as dask_wait  # Dask futures

    return list(dask_wait(futures, return_when="FIRST_COMPLETED").done)


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
