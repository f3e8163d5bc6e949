"""Router state as deployed (docs/router_state.md): router replicas with their own counters,
a KV index fed by late block events, approximate indexes with a TTL or an LRU bound.

Hand-computable cases, the exactness of the default (one router, no lag, precise index)
against runs without the options, and the one-line errors of bad options.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from conftest import requests_workload

from lmetric_theory.cli import main
from lmetric_theory.policies import parse_spec
from lmetric_theory.sim import LatencyModel, SimConfig, Simulator, load_preset
from lmetric_theory.sim.routerstate import (
    IndexSpec,
    ReplicaAssignment,
    ReplicatedRouterView,
    parse_index,
)
from lmetric_theory.workload import default_workload, select

LAT = LatencyModel(c0=0.01, c_pf=1e-4, c_dec=1e-3, c_kv=1e-6, c_att=1e-8)
BS = 100
SCHEDULERS = ("vllm-v1", "reserve")


def _cfg(n: int, scheduler: str = "reserve", **kw) -> SimConfig:
    block = {"block_size": BS} if scheduler == "vllm-v1" else {}
    return SimConfig(n_instances=n, latency=LAT, kv_capacity_tokens=100_000, scheduler=scheduler,
                     **block, **kw)


# ---------------------------------------------------------------------------- exactness


def _arrays(r) -> dict[str, np.ndarray]:
    out = {}
    for f in dataclasses.fields(r):
        v = getattr(r, f.name)
        if isinstance(v, np.ndarray):
            out[f.name] = v
    for c in r.snapshots._columns():
        out[f"snap.{c}"] = getattr(r.snapshots, c)
    return out


def _equal(a, b) -> None:
    xa, xb = _arrays(a), _arrays(b)
    assert xa.keys() == xb.keys()
    for k in xa:
        assert np.array_equal(xa[k], xb[k], equal_nan=True), k
    assert (a.iterations, a.events, a.end_time_s) == (b.iterations, b.events, b.end_time_s)


@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize("closed", [False, True])
@pytest.mark.parametrize("policy", ["lmetric", "least-bs", "round-robin", "power-of-two",
                                    "dynamo"])
def test_defaults_reproduce_runs_without_the_options(scheduler, closed, policy):
    """R = 1, lag 0, precise index, given at the CLI edge, reproduce every array of a run
    without the options (open loop, and closed loop under a session cap)."""
    import argparse

    from lmetric_theory.cli.common import add_router_state_arguments, check_router_state_arguments

    p = argparse.ArgumentParser()
    add_router_state_arguments(p)
    args = p.parse_args(["--router-replicas", "1", "--kv-event-lag", "0", "--index", "precise",
                         "--replica-assignment", "random"])
    assert check_router_state_arguments(args) is None
    w = select(default_workload(seed=3), count=300)
    pre = load_preset("h100-llama3-8b")
    conc = {"concurrency": 12} if closed else {}
    base = SimConfig.from_preset(pre, 4, scheduler=scheduler, **conc)
    given = SimConfig.from_preset(pre, 4, scheduler=scheduler, **conc, **args.router_state)
    assert given.to_dict() == base.to_dict()
    a = Simulator(w, base, policy, seed=5).run()
    b = Simulator(w, given, policy, seed=5).run()
    _equal(a, b)
    # one router: replica 0, the true counters are the router's own
    assert (a.replica == 0).all()
    assert np.array_equal(a.snapshots.true_batch, a.snapshots.router_inflight)
    assert np.array_equal(a.snapshots.true_queued_tokens, a.snapshots.router_queued)


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_event_fed_index_with_a_vanishing_lag_is_the_precise_index(scheduler):
    """The lagged index is a mirror fed by the engines' block stored/removed events: with a
    lag far below any step time it holds what the caches hold at every decision."""
    w = select(default_workload(seed=1), count=500)
    pre = load_preset("h100-llama3-8b")
    a = Simulator(w, SimConfig.from_preset(pre, 4, scheduler=scheduler), "lmetric").run()
    sim = Simulator(w, SimConfig.from_preset(pre, 4, scheduler=scheduler, kv_event_lag_s=1e-12),
                    "lmetric")
    assert isinstance(sim._router, ReplicatedRouterView)
    b = sim.run()
    sim.check_invariants()
    assert b.snapshots.hit_blocks.any()
    assert np.array_equal(a.snapshots.hit_blocks, b.snapshots.hit_blocks)
    assert np.array_equal(a.instance, b.instance)
    assert np.array_equal(a.ttft_s, b.ttft_s, equal_nan=True)


@pytest.mark.parametrize(("seed", "pool"), [(1, 120_000), (2, 100_000), (3, 150_000)])
def test_event_fed_index_under_preemption_is_the_precise_index(seed, pool):
    """The same mirror through the preemption path (a KV pool small enough to preempt):
    a preempted request's blocks are registered back as events, and the mirror still holds
    what the caches hold (whole private blocks travel as ranges inside the pool). A decode
    stretch allocates lazily; its evictions must be stamped at the iterations that made
    them, not when the stretch is next read (on seed 1 one decision saw 193 hit blocks
    where the cache held 160 while they were stamped late)."""
    w = select(default_workload(seed=seed), count=400)
    pre = load_preset("h100-llama3-8b")
    cfg = dataclasses.replace(SimConfig.from_preset(pre, 2), kv_capacity_tokens=pool)
    a = Simulator(w, cfg, "lmetric").run()
    assert int(np.sum(a.preemptions)) > 0
    sim = Simulator(w, dataclasses.replace(cfg, kv_event_lag_s=1e-12), "lmetric")
    b = sim.run()
    sim.check_invariants()
    assert np.array_equal(a.snapshots.hit_blocks, b.snapshots.hit_blocks)
    assert np.array_equal(a.instance, b.instance)
    assert np.array_equal(a.ttft_s, b.ttft_s, equal_nan=True)


def test_event_fed_index_keeps_dynamo_active_blocks():
    """``dynamo-kv`` reads the router's active prompt blocks; the router-state view must
    feed that counter at dispatch as the plain view does (a vanishing lag changes nothing)."""
    w = select(default_workload(seed=1), count=500)
    cfg = SimConfig.from_preset(load_preset("h100-llama3-8b"), 4)
    a = Simulator(w, cfg, "dynamo-kv").run()
    b = Simulator(w, dataclasses.replace(cfg, kv_event_lag_s=1e-12), "dynamo-kv").run()
    assert np.array_equal(a.instance, b.instance)
    assert np.array_equal(a.ttft_s, b.ttft_s, equal_nan=True)


@pytest.mark.parametrize("replicas", [2, 4])
def test_replicas_track_their_own_dynamo_active_sequences(replicas):
    """Under R replicas each ``dynamo-kv`` replica's active prompt blocks and prefill tokens
    are those of the requests it routed itself and has not seen finish (Dynamo without
    replica sync), recounted here from the result at every decision."""
    from lmetric_theory.policies import make_policy
    from lmetric_theory.sim.active_blocks import ActivePromptBlocks

    w = select(default_workload(seed=1), count=300)
    cfg = dataclasses.replace(SimConfig.from_preset(load_preset("h100-llama3-8b"), 4),
                              router_replicas=replicas)
    pol = make_policy("dynamo-kv")
    seen = []
    choose = pol.choose

    def record(view):
        seen.append((view.decision, view.time_s, view.router_active_prompt_blocks.copy(),
                     view.router_active_prefill_tokens.copy()))
        return choose(view)

    pol.choose = record
    res = Simulator(w, cfg, pol).run()
    ratio = int(w.block_size) // int(cfg.block_size)
    bs = int(cfg.block_size)
    done = res.arrival_s + res.e2e_s
    first = res.arrival_s + res.ttft_s
    est = res.input_tokens - res.predicted_cached_tokens
    assert len(seen) == len(w)
    for d, t, active, prefill in seen:  # open loop: decision d routes request d
        r = int(res.replica[d])
        fresh = ActivePromptBlocks(cfg.n_instances)
        for x in range(d):
            if res.replica[x] == r and done[x] > t:
                fresh.add(int(res.instance[x]), x, w.blocks(x).tolist(), ratio,
                          int(res.input_tokens[x]) // bs,
                          int(est[x]) if first[x] > t else 0)
        assert active.tolist() == fresh.unique, d
        assert prefill.tolist() == fresh.prefill_tokens(), d


# ---------------------------------------------------------------------------- replicas


def _long_at_zero(k: int) -> object:
    """``k`` requests at t = 0 with distinct prompts, none finishing soon."""
    return requests_workload([(0.0, 200, 500, [10 * j + 1, 10 * j + 2]) for j in range(k)], BS)


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_replicas_round_robin_herd_on_least_bs(scheduler):
    """2 instances, least-bs (ties to the lowest index), 4 requests at once.

    One router alternates 0, 1, 0, 1. Two replicas, round-robin: replica 0 takes decisions
    0 and 2, replica 1 decisions 1 and 3; each sees only its own dispatches, so d0 -> 0,
    d1 (replica 1 sees none) -> 0, d2 (replica 0 has one on 0) -> 1, d3 -> 1. Four replicas
    each see nothing: all four herd onto instance 0."""
    w = _long_at_zero(4)
    one = Simulator(w, _cfg(2, scheduler), "least-bs").run()
    assert one.instance.tolist() == [0, 1, 0, 1]
    two = Simulator(w, _cfg(2, scheduler, router_replicas=2), "least-bs").run()
    assert two.instance.tolist() == [0, 0, 1, 1]
    assert two.replica.tolist() == [0, 1, 0, 1]
    s = two.snapshots
    assert s.router_inflight.tolist() == [[0, 0], [0, 0], [1, 0], [1, 0]]
    assert s.true_batch.tolist() == [[0, 0], [1, 0], [2, 0], [2, 1]]
    assert s.replica.tolist() == [0, 1, 0, 1]
    four = Simulator(w, _cfg(2, scheduler, router_replicas=4), "least-bs").run()
    assert four.instance.tolist() == [0, 0, 0, 0]
    assert four.snapshots.router_inflight.tolist() == [[0, 0]] * 4
    assert four.snapshots.true_batch[:, 0].tolist() == [0, 1, 2, 3]


def test_replica_counters_add_up_to_the_true_counters():
    """Each request is counted by exactly one replica: the replicas' in-flight requests and
    in-flight new tokens add up to one all-seeing router's, at every stop."""
    w = select(default_workload(seed=2), count=400)
    cfg = SimConfig.from_preset(load_preset("h100-llama3-8b"), 4, router_replicas=3,
                                replica_assignment=ReplicaAssignment.RANDOM)
    sim = Simulator(w, cfg, "lmetric", seed=1)
    for d in (50, 150, 300):
        sim.advance(until_decision=d)
        own = [sim._router._own_counters(r) for r in range(3)]
        c = sim.router_counters()
        assert [sum(o[1][i] for o in own) for i in range(4)] == c["inflight"]
        assert [sum(o[3][i] for o in own) for i in range(4)] == c["inflight_new"]
        assert sum(c["inflight"]) > 0
    r = sim.run()
    assert sorted(set(r.replica.tolist())) == [0, 1, 2]


def test_session_assignment_keeps_a_session_on_one_replica():
    rows = [(0.0, 200, 5, [1, 2]), (0.0, 200, 5, [3, 4]), (1.0, 200, 5, [5, 6]),
            (1.0, 200, 5, [7, 8])]
    from lmetric_theory.workload.base import Sessions

    w = requests_workload(rows, BS)
    ses = Sessions(session=np.array([0, 1, 1, 0]), turn=np.array([0, 0, 1, 1]),
                   prev=np.full(4, -1), delay_s=np.zeros(4), first=np.array([0, 1]),
                   start_s=np.zeros(2), closed_loop=False)
    w = dataclasses.replace(w, sessions=ses)
    r = Simulator(w, _cfg(2, router_replicas=2,
                          replica_assignment=ReplicaAssignment.SESSION), "lmetric").run()
    assert r.replica.tolist() == [0, 1, 1, 0]


# ---------------------------------------------------------------------------- indexes


def _shared_prefix(times: list[float]) -> object:
    """Requests with the same two-block prefix and a private third block."""
    return requests_workload([(t, 300, 2, [1, 2, 100 + j]) for j, t in enumerate(times)], BS)


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_lagged_index_misses_a_block_stored_less_than_lag_ago(scheduler):
    """Request 0 (t = 0) computes the prefix by about 0.04 s; request 1 arrives at 1 s.
    With a 0.5 s lag its router sees the prefix on request 0's instance; with a 2 s lag the
    stored events are not in yet: no hit anywhere, though the engine then finds it."""
    w = _shared_prefix([0.0, 1.0])
    seen = Simulator(w, _cfg(2, scheduler, kv_event_lag_s=0.5), "lmetric").run()
    target = seen.instance[0]
    assert seen.snapshots.hit_blocks[1, target] > 0
    assert seen.predicted_cached_tokens[1] == seen.cached_tokens[1] == 200
    late = Simulator(w, _cfg(2, scheduler, kv_event_lag_s=2.0), "lmetric").run()
    assert late.snapshots.hit_blocks[1].tolist() == [0, 0]
    assert late.predicted_cached_tokens[1] == 0
    assert late.snapshots.true_batch is not None


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_approximate_ttl_index_forgets_after_the_ttl(scheduler):
    """ttl = 1 s: request 1 (0.5 s after request 0 was sent) is predicted the prefix on
    request 0's instance; request 2 (5 s after) is predicted nothing, while the engine still
    holds the blocks."""
    w = _shared_prefix([0.0, 0.5, 5.5])
    idx = IndexSpec("approximate", ttl_s=1.0)
    r = Simulator(w, _cfg(2, scheduler, index=idx), "lmetric").run()
    i0 = r.instance[0]
    hb = r.snapshots.hit_blocks
    assert hb[1, i0] > 0 and hb[1, 1 - i0] == 0
    assert r.instance[1] == i0
    assert hb[2].tolist() == [0, 0]
    assert r.predicted_cached_tokens[2] == 0
    # the unbounded approximate index still remembers it
    u = Simulator(w, _cfg(2, scheduler, index=IndexSpec("approximate")), "lmetric").run()
    assert u.snapshots.hit_blocks[2, u.instance[0]] > 0


def test_approximate_lru_index_keeps_the_most_recent_blocks():
    """lru = 2 blocks: request 0 sends blocks 1, 2, 100; the index keeps 2 and 100, so the
    prefix (block 1 first) is forgotten; lru = 3 keeps it."""
    w = _shared_prefix([0.0, 0.5])
    r2 = Simulator(w, _cfg(2, index=IndexSpec("approximate", lru_blocks=2)), "lmetric").run()
    assert r2.snapshots.hit_blocks[1].tolist() == [0, 0]
    r3 = Simulator(w, _cfg(2, index=IndexSpec("approximate", lru_blocks=3)), "lmetric").run()
    assert r3.snapshots.hit_blocks[1, r3.instance[0]] == 2


def test_each_replica_has_its_own_approximate_index():
    """Two replicas, round-robin: request 1 is routed by replica 1, which never sent the
    prefix, so it predicts no hit; request 2 (replica 0) does."""
    w = _shared_prefix([0.0, 0.5, 1.0])
    r = Simulator(w, _cfg(2, router_replicas=2, index=IndexSpec("approximate")), "lmetric").run()
    hb = r.snapshots.hit_blocks
    assert hb[1].tolist() == [0, 0]
    assert hb[2, r.instance[0]] == 2


def test_view_approximate_with_replicas_is_the_unbounded_approximate_index():
    w = _shared_prefix([0.0, 0.5, 1.0])
    a = Simulator(w, _cfg(2, router_replicas=2, view="approximate"), "lmetric").run()
    b = Simulator(w, _cfg(2, router_replicas=2, index=IndexSpec("approximate")), "lmetric").run()
    assert np.array_equal(a.snapshots.hit_blocks, b.snapshots.hit_blocks)
    assert a.snapshots.hit_blocks[1].tolist() == [0, 0]  # replica 1 never sent the prefix


def test_forks_of_a_replicated_lagged_run_continue_identically():
    w = select(default_workload(seed=4), count=400)
    for sched in SCHEDULERS:
        cfg = SimConfig.from_preset(load_preset("h100-llama3-8b"), 4, scheduler=sched,
                                    router_replicas=2, kv_event_lag_s=0.2,
                                    replica_assignment=ReplicaAssignment.RANDOM)
        whole = Simulator(w, cfg, "lmetric", seed=2).run()
        sim = Simulator(w, cfg, "lmetric", seed=2)
        sim.run(until_decision=200)
        fork = sim.fork()
        _equal(fork.run(), whole)
        _equal(sim.run(), whole)


# ---------------------------------------------------------------------------- bad input


def test_parse_index():
    assert parse_index("precise") == IndexSpec()
    assert parse_index("approximate:ttl=2.5") == IndexSpec("approximate", ttl_s=2.5)
    assert parse_index("approximate:lru=64") == IndexSpec("approximate", lru_blocks=64)
    for bad in ("exact", "approximate:ttl=0", "approximate:ttl=-1", "approximate:ttl=inf",
                "approximate:lru=0", "approximate:lru=1.5", "precise:ttl=1", "approximate:x=1"):
        with pytest.raises(ValueError, match="^index: "):
            parse_index(bad)


@pytest.mark.parametrize("command", ["simulate", "audit", "results", "counterfactual"])
@pytest.mark.parametrize("flags,needle", [
    (["--router-replicas", "0"], "--router-replicas must be an integer >= 1"),
    (["--kv-event-lag", "-0.1"], "--kv-event-lag must be a finite number"),
    (["--kv-event-lag", "nan"], "--kv-event-lag must be a finite number"),
    (["--signal-delay", "inf"], "--signal-delay must be a finite number"),
    (["--index", "exact"], "--index: unknown kind 'exact'"),
    (["--index", "approximate:ttl=0"], "--index: ttl must be a finite number > 0"),
    (["--index", "approximate:lru=0"], "--index: lru must be an integer > 0"),
])
def test_bad_router_state_options_exit_2_with_one_line(command, flags, needle, capsys, tmp_path):
    out = tmp_path / "out"
    rc = main([command, "--count", "20", "-n", "2", *flags, "--json", "--out", str(out)]
              if command in ("simulate", "counterfactual") else
              [command, "--count", "20", "-n", "2", *flags, "--json"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and needle in err[0], err
    assert not out.exists()


def test_router_state_options_are_read_the_same_for_the_vllm_engine():
    """The vLLM engine expresses replicas, lags and approximate indexes too
    (tests/test_vllm_router_state.py): the options are checked, not refused."""
    import argparse

    from lmetric_theory.cli.common import check_router_state_arguments

    args = argparse.Namespace(router_replicas=4, replica_assignment="random", signal_delay=0.0,
                              kv_event_lag=0.05, index="approximate:lru=8", engine="vllm")
    assert check_router_state_arguments(args) is None
    assert args.router_state["router_replicas"] == 4
    assert args.router_state["index"] == IndexSpec("approximate", lru_blocks=8)
    args.router_replicas = 0
    assert check_router_state_arguments(args).startswith("--router-replicas")


def test_simulate_cli_writes_the_router_state(capsys, tmp_path):
    rc = main(["simulate", "--count", "120", "-n", "2", "--policy", "lmetric", "--router-replicas",
               "2", "--kv-event-lag", "0.05", "--index", "precise", "--json", "--out",
               str(tmp_path)])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["config"]["router_replicas"] == 2
    assert doc["config"]["kv_event_lag_s"] == 0.05
    import pyarrow.parquet as pq

    t = pq.read_table(tmp_path / "lmetric.requests.parquet")
    assert sorted(set(t.column("replica").to_pylist())) == [0, 1]
    from lmetric_theory.sim import SnapshotLog

    log = SnapshotLog.load_npz(tmp_path / "lmetric.snapshots.npz")
    assert log.replica is not None and log.true_batch.shape == log.router_inflight.shape


# ---------------------------------------------------------------------------- the study


def test_router_state_settings_axes_and_corner():
    from lmetric_theory.experiments.router_state import router_state_settings

    assert router_state_settings([1, 2, 4], [0, 0.2]) == [(1, 0.0), (2, 0.0), (4, 0.0),
                                                          (1, 0.2), (4, 0.2)]
    assert len(router_state_settings([1, 2], [0, 0.05, 1], full=True)) == 6
    assert router_state_settings([1], [0]) == [(1, 0.0)]


def test_router_state_study_rows_and_changes():
    """Round-robin ignores router state, so its cells are the same at every setting; the
    percent changes are the rows' paired ratios."""
    from lmetric_theory.experiments.router_state import StudyWorkload, router_state_study
    from lmetric_theory.sim.metrics import Slo

    w = default_workload(seed=0)
    cfg = SimConfig.from_preset(load_preset("h100-llama3-8b"), 4)
    st = router_state_study([StudyWorkload("syn", w, 150)], cfg, ["lmetric", "round-robin"],
                            replicas=(1, 4), lags_s=(0.0, 0.2), seeds=(0, 1),
                            slo=Slo.parse("ttft=2"), executor="local")
    assert st.settings == [(1, 0.0), (4, 0.0), (1, 0.2), (4, 0.2)]
    assert len(st.rows) == 4 * 2 * 2  # settings x policies x seeds
    rr = [r for r in st.rows if r["policy"] == "round-robin" and r["seed"] == 0]
    assert len({r["ttft_mean_s"] for r in rr}) == 1
    lm = {(r["replicas"], r["lag_s"]): r["ttft_mean_s"] for r in st.rows
          if r["policy"] == "lmetric" and r["seed"] == 0}
    assert len(set(lm.values())) > 1  # router state moves lmetric
    by = {(r["policy"], r["replicas"], r["lag_s"], r["seed"]): r["ttft_mean_s"] for r in st.rows}
    for c in st.changes("ttft_mean_s"):
        pcs = [100 * (by["lmetric", c["replicas"], c["lag_s"], s]
                      / by["round-robin", c["replicas"], c["lag_s"], s] - 1) for s in (0, 1)]
        assert c["pct"] == pytest.approx(np.mean(pcs))
        assert c["range"] == [pytest.approx(min(pcs)), pytest.approx(max(pcs))]
    agg = st.aggregate()
    assert all(a["ttft_mean_s"]["n"] == 2 for a in agg)
    json.dumps(st.to_json())  # JSON-ready


def test_results_router_study_cli_and_render(tmp_path, capsys):
    rc = main(["results", "--router-study", "--count", "100", "--seeds", "1", "--replicas", "1,2",
               "--lags", "0", "--instances", "2", "--policies", "lmetric,round-robin",
               "--workers", "1", "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["settings"] == [[1, 0.0], [2, 0.0]]
    p = tmp_path / "s.json"
    p.write_text(json.dumps(doc))
    png = tmp_path / "fig.png"
    pytest.importorskip("matplotlib")
    assert main(["results", "--render-router-study", str(p), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "| R=2, lag 0 ms | lmetric |" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("flags,needle", [
    (["--replicas", "0,2"], "--replicas must be integers >= 1"),
    (["--lags", "-1"], "--lags must be finite"),
    (["--lags", "x"], "--lags: expected comma-separated floats"),
])
def test_router_study_bad_lists_exit_2(flags, needle, capsys):
    rc = main(["results", "--router-study", "--count", "50", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0], err


def test_study_windows_are_request_index_slices_even_when_arrivals_tie():
    from lmetric_theory.experiments.router_state import window

    reqs = [(0.0, 50 + j, 2, [j + 1]) for j in range(6)] + [(1.0, 70 + j, 2, [j + 50])
                                                            for j in range(4)]
    w = requests_workload(reqs, BS)
    assert window(w, 3, 1).input_tokens.tolist() == [53, 54, 55]
    assert window(w, 3, 2).input_tokens.tolist() == [70, 71, 72]
    assert window(w, 3, 2).arrival_s.tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="window: seed 3"):
        window(w, 3, 3)


def test_study_replicas_placeholder_runs_each_setting_with_its_r():
    """``replicas=R`` in a policy text takes each setting's R: the templated
    ``counter_sync`` row at R = 4 equals the explicit ``replicas=4`` policy's run, and at
    R = 1 it routes like ``lmetric`` (one replica: the counters are not scaled)."""
    from lmetric_theory.experiments.router_state import StudyWorkload, router_state_study

    w = default_workload(seed=0)
    cfg = SimConfig.from_preset(load_preset("h100-llama3-8b"), 4)
    tmpl = "guarded-lmetric:mitigation=counter_sync,replicas=R"
    st = router_state_study([StudyWorkload("syn", w, 150)], cfg, ["lmetric", tmpl],
                            replicas=(1, 4), lags_s=(0.0,), seeds=(0,), executor="local")
    got = {(r["policy"], r["replicas"]): r for r in st.rows}
    assert ",replicas=4," in got[tmpl, 4]["policy_resolved"]
    w0 = select(w, count=150)
    ref = Simulator(w0, dataclasses.replace(cfg, router_replicas=4),
                    parse_spec("guarded-lmetric:mitigation=counter_sync,replicas=4")).run()
    from lmetric_theory.sim.metrics import compute_metrics

    assert got[tmpl, 4]["ttft_mean_s"] == compute_metrics(ref, None, w0).ttft_mean_s
    assert got[tmpl, 1]["ttft_mean_s"] == got["lmetric", 1]["ttft_mean_s"]


@pytest.mark.parametrize("fmt", ["parquet", "npz"])
def test_snapshot_files_carry_the_router_state_columns(tmp_path, fmt):
    """A replicated run's snapshot log round-trips ``replica``, ``true_batch`` and
    ``true_queued_tokens`` through both file formats; a log without them stays without."""
    pytest.importorskip("pyarrow")
    from lmetric_theory.sim.snapshots import SnapshotLog

    w = select(default_workload(seed=2), count=200)
    pre = load_preset("h100-llama3-8b")
    for r in (1, 3):
        cfg = SimConfig.from_preset(pre, 4, record_snapshots=True, router_replicas=r)
        log = Simulator(w, cfg, parse_spec("lmetric")).run().snapshots
        p = tmp_path / f"s{r}.{fmt}"
        getattr(log, f"save_{fmt}")(p)
        back = getattr(SnapshotLog, f"load_{fmt}")(p)
        assert back.optional_columns().keys() == log.optional_columns().keys()
        for c, a in log.optional_columns().items():
            np.testing.assert_array_equal(getattr(back, c), a)
        if r == 3:
            assert set(np.unique(back.replica)) == {0, 1, 2}
            assert (back.true_batch != back.router_inflight).any()
