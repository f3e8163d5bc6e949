"""Closed loop in the fast engine: arrivals from completions, the concurrency cap, output-block
caching, exact inter-token gaps, open-loop identity and counterfactual forks."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from lmetric_theory.cli import main
from lmetric_theory.sim import SimConfig, Simulator
from lmetric_theory.sim.latency import LatencyModel
from lmetric_theory.workload import Sessions, default_workload, load_trace
from lmetric_theory.workload.loaders import make_workload

AIPERF = Path(__file__).resolve().parents[1] / ".." / "shared" / "traces" / (
    "aiperf_agentic_code_sessions.jsonl"
)
SCHEDULERS = ("vllm-v1", "reserve")
#: c0 and a prefill cost only: every time below is a short sum.
FLAT = LatencyModel(c0=0.01, c_pf=0.001, c_dec=0.0, c_kv=0.0, c_att=0.0)
#: With a KV-read cost, decode iterations grow longer as contexts grow.
KV = LatencyModel(c0=0.01, c_pf=1e-4, c_dec=1e-3, c_kv=1e-5, c_att=0.0)


def _write(tmp_path: Path, rows: list[dict], name: str = "s.jsonl") -> Path:
    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return p


def _row(sid, inp, out, ids, **kw) -> dict:
    return {"session_id": sid, "input_length": inp, "output_length": out, "hash_ids": ids, **kw}


#: Two sessions of two turns (delta convention, block size 4). A's turn 0 (6 prompt + 3
#: output tokens) has context blocks [10, 11 | 51]: block 11 holds prompt tokens 4-5 and
#: output tokens 6-7, so it is full once A0 is done; A1's prompt (6 + 3 + 2 = 11 tokens)
#: starts with [10, 11, 51].
TWO = [
    _row("A", 6, 3, [10, 11], timestamp=0),
    _row("B", 5, 2, [20, 21], timestamp=0),
    _row("A", 2, 4, [12], delay=500),
    _row("B", 3, 2, [22], delay=100),
]


def _cfg(n=2, *, scheduler="vllm-v1", latency=FLAT, **kw) -> SimConfig:
    return SimConfig(n_instances=n, latency=latency, kv_capacity_tokens=4096, token_budget=512,
                     max_batch=64, scheduler=scheduler, block_size=4, **kw)


def _prev_rule(w, r) -> None:
    """Each later turn arrives exactly at its previous turn's finish plus its delay."""
    s = w.sessions
    has = s.prev >= 0
    assert np.all(r.arrival_s[has] == r.finish_s[s.prev[has]] + s.delay_s[has])


def _max_active(r) -> int:
    """Most sessions active at once: intervals [first arrival, last finish), ends first."""
    sess = r.session
    ids = np.unique(sess)
    start = np.array([r.arrival_s[sess == s].min() for s in ids])
    end = np.array([r.finish_s[sess == s].max() for s in ids])
    ev = sorted([(t, 1) for t in start] + [(t, -1) for t in end], key=lambda e: (e[0], e[1]))
    cur = best = 0
    for _, d in ev:
        cur += d
        best = max(best, cur)
    return best


# ---------------------------------------------------------------------------- arrivals


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_one_session_by_hand(tmp_path, scheduler):
    """One instance, session A alone: every time is a short sum (c0 = 10 ms, 1 ms/token)."""
    w = load_trace(_write(tmp_path, TWO[:1] + TWO[2:3]), block_size=4, trace_format="mooncake-delta")
    r = Simulator(w, _cfg(1, scheduler=scheduler), "round-robin").run()
    # A0: prefill 6 tokens (0.016), two decode iterations (0.026, 0.036)
    assert r.first_token_s[0] == pytest.approx(0.016) and r.finish_s[0] == pytest.approx(0.036)
    # A1 arrives 0.5 s later; blocks 10 and 11 (8 tokens, output included) are hits
    assert r.arrival_s[1] == r.finish_s[0] + 0.5
    assert r.cached_tokens.tolist() == [0, 8]
    assert r.first_token_s[1] == pytest.approx(r.arrival_s[1] + 0.013)
    assert r.finish_s[1] == pytest.approx(r.arrival_s[1] + 0.043)
    assert r.ttft_s[1] == pytest.approx(0.013)
    # ITL: 2 + 3 gaps of one decode iteration each
    gaps = np.repeat(r.itl_gap_s, r.itl_count)
    np.testing.assert_allclose(gaps, [0.01] * 5)
    assert r.session.tolist() == [0, 0] and r.turn.tolist() == [0, 1]
    # busy: A0 0.036 s, A1 0.043 s; batch of one throughout
    np.testing.assert_allclose(r.busy_s, [0.079])
    np.testing.assert_allclose(r.batch_integral, [0.079])


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_turn_arrival_is_previous_finish_plus_delay(tmp_path, scheduler):
    w = load_trace(_write(tmp_path, TWO), block_size=4, trace_format="mooncake-delta")
    for pol in ("round-robin", "lmetric"):
        r = Simulator(w, _cfg(2, scheduler=scheduler), pol).run()
        assert r.completed.all()
        _prev_rule(w, r)
        assert r.arrival_s[w.sessions.first].tolist() == [0.0, 0.0]
        assert np.all(r.first_token_s >= r.arrival_s) and np.all(r.finish_s >= r.first_token_s)
        np.testing.assert_array_equal(r.ttft_s, r.first_token_s - r.arrival_s)


# ---------------------------------------------------------------------------- output blocks


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_output_blocks_hit_where_the_previous_turn_ran(tmp_path, scheduler):
    w = load_trace(_write(tmp_path, TWO[:1] + TWO[2:3]), block_size=4, trace_format="mooncake-delta")
    cached = {}
    for target in (0, 1):
        sim = Simulator(w, _cfg(2, scheduler=scheduler), "round-robin")
        sim.force(0, 0)
        sim.force(1, target)
        r = sim.run()
        assert r.instance.tolist() == [0, target]
        cached[target] = int(r.cached_tokens[1])
    # same instance: blocks 10, 11 (11 filled by output tokens 6-7); elsewhere: nothing
    assert cached == {0: 8, 1: 0}


@pytest.mark.parametrize("view", ("precise", "approximate"))
def test_router_views_see_output_blocks(tmp_path, view):
    """The cache-aware policy sends the next turn where its context is (both views)."""
    w = load_trace(_write(tmp_path, TWO), block_size=4, trace_format="mooncake-delta")
    r = Simulator(w, _cfg(2, view=view), "lmetric").run()
    s = w.sessions
    later = np.flatnonzero(s.prev >= 0)
    assert np.all(r.instance[later] == r.instance[s.prev[later]])
    # later turns by nominal arrival: B1 (0.1 s), A1 (0.5 s). B0 computed 5 + 2 - 1 = 6
    # tokens: block 20 only is full (4 tokens); A0 computed 8: blocks 10 and 11
    assert later.tolist() == [2, 3] and w.sessions.session[later].tolist() == [1, 0]
    assert r.cached_tokens[later].tolist() == [4, 8]


# ---------------------------------------------------------------------------- concurrency


def _sessions_rows(k: int, turns: int = 3) -> list[dict]:
    rows = []
    for t in range(turns):
        for s in range(k):
            base = 100 * (s + 1)
            if t == 0:
                rows.append(_row(f"s{s}", 5 + s % 3, 2 + s, [base, base + 1], timestamp=5000 * s))
            else:
                rows.append(_row(f"s{s}", 3, 3, [base + 10 * t], delay=50 * t))
    return rows


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_concurrency_cap_and_admission_order(tmp_path, scheduler):
    w = load_trace(_write(tmp_path, _sessions_rows(5)), block_size=4, trace_format="mooncake-delta")
    s = w.sessions
    r = Simulator(w, _cfg(2, scheduler=scheduler, concurrency=2), "round-robin").run()
    assert r.completed.all()
    _prev_rule(w, r)
    assert _max_active(r) == 2
    ends = np.array([r.finish_s[s.session == k].max() for k in range(s.n_sessions)])
    starts = r.arrival_s[s.first]
    # the first two at t = 0 (their timestamps ignored); each later one when a slot frees
    assert starts[:2].tolist() == [0.0, 0.0]
    free = sorted(ends[:2].tolist())
    for k in range(2, s.n_sessions):
        assert starts[k] == free.pop(0)  # admitted in session order, at the earliest free slot
        free = sorted([*free, ends[k]])
    assert np.all(np.diff(starts) >= 0)


def test_concurrency_without_sessions_counts_requests():
    w = default_workload(seed=0)
    sim = Simulator(_head(w, 300), SimConfig.from_preset(_preset(), 4, concurrency=3), "round-robin")
    r = sim.run()
    assert r.completed.all() and r.session.tolist() == [-1] * 300
    # one-turn sessions in arrival order: at most 3 in flight, admitted in index order
    ev = sorted([(t, 1) for t in r.arrival_s] + [(t, -1) for t in r.finish_s])
    cur = best = 0
    for _, d in ev:
        cur += d
        best = max(best, cur)
    assert best == 3
    assert np.all(np.diff(r.arrival_s) >= 0) and r.arrival_s[:3].tolist() == [0.0] * 3


def test_concurrency_must_be_positive():
    with pytest.raises(ValueError, match="concurrency must be >= 1"):
        _cfg(1, concurrency=0)


def _preset():
    from lmetric_theory.sim import load_preset

    return load_preset("h100-llama3-8b-calibrated")


def _head(w, n):
    from lmetric_theory.workload import select

    return select(w, count=n)


# ---------------------------------------------------------------------------- ITL


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_itl_of_a_lone_request_equals_its_token_times(scheduler):
    """One request, 5 output tokens, KV-read cost: decode iteration j reads ctx + j tokens."""
    w = make_workload(arrival_s=np.array([0.0]), input_tokens=np.array([8]),
                      output_tokens=np.array([5]), hash_ids=np.array([1, 2]),
                      hash_offsets=np.array([0, 2]), block_size=4, session_ids=None, meta={})
    r = Simulator(w, _cfg(1, scheduler=scheduler, latency=KV), "round-robin").run()
    lat = KV
    t = lat.step_end(0.0, 8, 0, 8, 0.0)  # the prefill iteration
    times = [t]
    ctx = 9  # prompt + first token
    for j in range(4):
        t = lat.step_end(t, 0, 1, ctx + j, 0.0)
        times.append(t)
    assert r.first_token_s[0] == pytest.approx(times[0], rel=1e-12)
    assert r.finish_s[0] == pytest.approx(times[-1], rel=1e-12)
    gaps = np.repeat(r.itl_gap_s, r.itl_count)
    np.testing.assert_allclose(np.sort(gaps), np.sort(np.diff(times)), rtol=1e-9)


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_itl_pairs_sum_and_match_the_slow_reference(scheduler):
    w = _head(default_workload(seed=1), 400)
    fast = Simulator(w, SimConfig.from_preset(_preset(), 2, scheduler=scheduler), "round-robin").run()
    slow = Simulator(w, SimConfig.from_preset(_preset(), 2, scheduler=scheduler, fast_forward=False),
                     "round-robin").run()
    for r in (fast, slow):
        done = r.completed
        assert r.itl_count.sum() == (r.output_tokens[done] - 1).sum()
        assert np.all(r.itl_gap_s > 0)
        np.testing.assert_allclose(r.batch_integral / r.busy_s >= 1, True)
    a = np.sort(np.repeat(fast.itl_gap_s, fast.itl_count))
    b = np.sort(np.repeat(slow.itl_gap_s, slow.itl_count))
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fast.busy_s, slow.busy_s, rtol=1e-9)
    np.testing.assert_allclose(fast.batch_integral, slow.batch_integral, rtol=1e-9)


# ---------------------------------------------------------------------------- open loop


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_one_turn_closed_loop_sessions_replay_as_open_loop(scheduler):
    """The closed-loop path (arrivals pushed as sessions start, same-instant batching from
    the pending arrivals) gives the open-loop run bit for bit when no turn waits."""
    w = _head(default_workload(seed=0), 600)
    n = len(w)
    idx = np.arange(n, dtype=np.int64)
    ses = Sessions(session=idx, turn=np.zeros(n, dtype=np.int64), prev=np.full(n, -1, dtype=np.int64),
                   delay_s=np.zeros(n), first=idx, start_s=np.asarray(w.arrival_s, dtype=np.float64))
    wc = make_workload(arrival_s=w.arrival_s, input_tokens=w.input_tokens,
                       output_tokens=w.output_tokens, hash_ids=w.hash_ids,
                       hash_offsets=w.hash_offsets, block_size=w.block_size, session_ids=None,
                       meta={}, sessions=ses)
    assert wc.closed_loop
    cfg = SimConfig.from_preset(_preset(), 4, scheduler=scheduler)
    for pol in ("lmetric", "round-robin"):
        a = Simulator(w, cfg, pol).run()
        b = Simulator(wc, cfg, pol).run()
        for f in ("arrival_s", "instance", "cached_tokens", "ttft_s", "e2e_s", "itl_gap_s",
                  "itl_count", "busy_s"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
        assert (a.iterations, a.events, a.end_time_s) == (b.iterations, b.events, b.end_time_s)
        # informational sessions (closed_loop False) are open loop as well
        wi = make_workload(arrival_s=w.arrival_s, input_tokens=w.input_tokens,
                           output_tokens=w.output_tokens, hash_ids=w.hash_ids,
                           hash_offsets=w.hash_offsets, block_size=w.block_size, session_ids=None,
                           meta={}, sessions=Sessions(**{**{k: getattr(ses, k) for k in (
                               "session", "turn", "prev", "delay_s", "first", "start_s")},
                               "closed_loop": False}))
        c = Simulator(wi, cfg, pol).run()
        np.testing.assert_array_equal(a.ttft_s, c.ttft_s)


# ---------------------------------------------------------------------------- forks


def test_fork_branches_move_later_arrivals(tmp_path):
    """Forked at B0's decision: sharing A0's instance delays A0, and with it A1's arrival."""
    w = load_trace(_write(tmp_path, TWO), block_size=4, trace_format="mooncake-delta")
    base = Simulator(w, _cfg(2), "round-robin")
    base.advance(until_decision=1)
    assert base.decisions_made == 1
    runs = {}
    for c in (0, 1):
        f = base.fork()
        f.force(1, c)
        runs[c] = f
    # a pickled fork (what the counterfactual workers get) runs the same
    clone = pickle.loads(pickle.dumps(runs[0]))
    res = {c: f.run() for c, f in runs.items()}
    rc = clone.run()
    np.testing.assert_array_equal(rc.arrival_s, res[0].arrival_s)
    a0, a1 = 0, int(np.flatnonzero((w.sessions.session == 0) & (w.sessions.turn == 1))[0])
    for r in res.values():
        _prev_rule(w, r)
    assert res[0].finish_s[a0] > res[1].finish_s[a0]  # batched with B0's prefill
    assert res[0].arrival_s[a1] > res[1].arrival_s[a1]  # the branch moved A1's arrival
    # the original is untouched
    r = base.run()
    _prev_rule(w, r)


def test_counterfactual_affected_requests_follow_the_original_decision_order(tmp_path):
    from lmetric_theory.experiments.counterfactual.forks import fork_decision

    w = load_trace(_write(tmp_path, _sessions_rows(3)), block_size=4, trace_format="mooncake-delta")
    cfg = _cfg(2)
    full = Simulator(w, cfg, "round-robin").run()
    order = np.asarray(full.snapshots.request, dtype=np.int64)
    sim = Simulator(w, cfg, "round-robin")
    d = 3
    sim.advance(until_decision=d)
    out = fork_decision(sim, d, request=int(order[d]), chosen=int(full.instance[order[d]]),
                        arrival_s=full.arrival_s, horizon_s=10.0, decision_requests=order)
    # every later request arrives within 10 s in the original run
    assert out.affected == len(w) - d
    assert all(np.isfinite(out.ttft_cost_s))


# ---------------------------------------------------------------------------- CLI


def test_cli_bad_concurrency(capsys):
    assert main(["simulate", "--count", "10", "--concurrency", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--concurrency must be >= 1" in err[0]
    assert main(["simulate", "--count", "10", "--concurrency", "2", "--rate-scale", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--rate-scale cannot be combined with --concurrency" in err[0]
    assert main(["results", "--count", "10", "--concurrency", "2", "--rate-scales", "1"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_cli_concurrency_on_a_session_trace(tmp_path, capsys):
    rows = [_row(f"s{k}", 600, 20, [100 * k, 100 * k + 1], timestamp=0) for k in range(4)]
    rows += [_row(f"s{k}", 100, 20, [100 * k + 10 + t], delay=50) for t in range(2) for k in range(4)]
    p = _write(tmp_path, rows)  # 512-token blocks, the CLI's default
    assert main(["simulate", str(p), "--trace-format", "mooncake-delta", "--concurrency", "2",
                 "-n", "2", "--policy", "round-robin", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["policies"]["round-robin"]["completed"] == 12


@pytest.mark.slow
def test_aiperf_trace_end_to_end(capsys):
    argv = ["simulate", str(AIPERF), "--trace-format", "mooncake-delta", "--concurrency", "32",
            "--instances", "8", "--policy", "lmetric", "--policy", "round-robin", "--json"]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    for pol in ("lmetric", "round-robin"):
        assert doc["policies"][pol]["completed"] == 12571


@pytest.mark.slow
def test_aiperf_cap_and_arrival_rule():
    w = load_trace(AIPERF, trace_format="mooncake-delta")
    r = Simulator(w, SimConfig.from_preset(_preset(), 8, concurrency=32), "lmetric").run()
    assert r.completed.all()
    _prev_rule(w, r)
    assert _max_active(r) == 32
    assert r.itl_count.sum() == (r.output_tokens - 1).sum()
