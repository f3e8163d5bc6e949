"""Sweeps: local executor order and determinism, Dask local cluster equals local, tidy rows."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lmetric_theory.experiments.sweep import (
    LocalExecutor,
    SimTask,
    get_executor,
    instance_sweep,
    load_sweep,
    run_sweep,
    run_task,
)
from lmetric_theory.sim import SimConfig, Simulator, load_preset
from lmetric_theory.workload import scale_rate, synthetic

POLICIES = ["lmetric", "round-robin", "least-loaded"]


@pytest.fixture(scope="module")
def small():
    w = synthetic("mixed", n_requests=150, rate_rps=6.0, seed=3)
    cfg = SimConfig.from_preset(load_preset("h100-llama3-8b"), 3)
    return w, cfg


def test_run_task_matches_direct_simulation(small):
    w, cfg = small
    row = run_task(SimTask(w, cfg, "lmetric", 0, {"k": 1}))
    direct = Simulator(w, cfg, "lmetric", seed=0).run().summary()
    assert row["k"] == 1 and row["instances"] == 3 and row["requests"] == 150
    for key, v in direct.items():
        assert row[key] == v


def test_load_sweep_order_and_processes_equal_sequential(small):
    w, cfg = small
    seq = load_sweep(w, cfg, POLICIES, [1.0, 2.0], workers=1)
    par = load_sweep(w, cfg, POLICIES, [1.0, 2.0], workers=2)
    assert seq == par
    assert [(r["rate_scale"], r["policy"]) for r in seq] == [(k, p) for k in (1.0, 2.0) for p in POLICIES]
    # The rate-2 row is the run on the rate-scaled workload.
    direct = Simulator(scale_rate(w, 2.0), cfg, "round-robin").run().summary()
    assert seq[4]["ttft_mean_s"] == direct["ttft_mean_s"]


def test_instance_sweep_tags(small):
    w, cfg = small
    rows = instance_sweep(w, cfg, ["lmetric"], [1, 2, 4], workers=2)
    assert [r["instances"] for r in rows] == [1, 2, 4]
    one = Simulator(w, dataclasses.replace(cfg, n_instances=1), "lmetric").run().summary()
    assert rows[0]["ttft_mean_s"] == one["ttft_mean_s"]


def test_bad_executor_and_workers():
    with pytest.raises(ValueError, match="local, dask"):
        get_executor("ray")
    with pytest.raises(ValueError, match="workers"):
        LocalExecutor(0)
    with pytest.raises(ValueError, match="map"):
        get_executor(object())


def test_dask_local_cluster_equals_local(small):
    distributed = pytest.importorskip("dask.distributed", reason="optional extra 'dask' not installed")
    from lmetric_theory.experiments.sweep import DaskExecutor

    w, cfg = small
    tasks = [SimTask(w, cfg, p, 0, {"i": i}) for i, p in enumerate(POLICIES + ["guarded-lmetric"])]
    local = run_sweep(tasks, workers=1)
    with distributed.LocalCluster(n_workers=2, processes=False, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        ex = DaskExecutor(client=client)
        rows = run_sweep(tasks, ex)
    assert rows == local
    assert np.isfinite([r["ttft_mean_s"] for r in rows]).all()


def _square(x: int) -> int:
    if x < 0:
        raise ValueError(f"negative item {x}")
    return x * x


@pytest.mark.parametrize("workers", [1, 2])
def test_imap_streams_every_item_once_with_a_bounded_window(workers: int) -> None:
    drawn: list[int] = []
    pending_max = 0

    def items():
        nonlocal pending_max
        for k in range(12):
            drawn.append(k)
            yield k

    got: dict[int, int] = {}
    for k, r in LocalExecutor(workers).imap(_square, items(), window=3):
        got[k] = r
        pending_max = max(pending_max, len(drawn) - len(got))
    assert got == {k: k * k for k in range(12)}
    assert pending_max <= 3  # never more than `window` items drawn ahead of the results


@pytest.mark.parametrize("workers", [1, 2])
def test_imap_raises_the_item_error(workers: int) -> None:
    with pytest.raises(ValueError, match="negative item -1"):
        list(LocalExecutor(workers).imap(_square, [1, 2, -1, 3], window=2))


def test_dask_imap_streams_and_raises():
    distributed = pytest.importorskip("dask.distributed", reason="optional extra 'dask' not installed")
    from lmetric_theory.experiments.sweep import DaskExecutor

    with distributed.LocalCluster(n_workers=2, processes=False, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        ex = DaskExecutor(client=client)
        got = dict(ex.imap(_square, iter(range(9)), window=2))
        assert got == {k: k * k for k in range(9)}
        with pytest.raises(ValueError, match="negative item -2"):
            list(ex.imap(_square, [3, -2, 5], window=2))


def _slow_first(x: int) -> dict[str, int]:
    """A row; the first items take longest (completion order differs from task order)."""
    import time

    time.sleep(0.02 * max(0, 4 - x))
    return {"x": x, "sq": x * x}


class _MapOnly:
    """An executor with ``map`` and no ``imap`` (the chunked path)."""

    workers = 2

    def map(self, fn, items):  # noqa: ANN001
        return [fn(x) for x in items]


@pytest.mark.parametrize("executor", [LocalExecutor(1), LocalExecutor(2), _MapOnly()])
def test_run_chunked_rows_in_task_order_and_progress_for_every_task(executor) -> None:
    from lmetric_theory.experiments.study import run_chunked

    seen: list[int] = []
    rows = run_chunked(list(range(9)), executor, seen.append, 4, fn=_slow_first)
    assert rows == [{"x": x, "sq": x * x} for x in range(9)]
    assert sum(seen) == 9
