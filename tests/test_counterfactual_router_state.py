"""The counterfactual study with the router-state flags (``herding``, ``replica_skew``,
``stale_index``) and the precedence of the findings over the TTFT loss
(:mod:`lmetric_theory.experiments.counterfactual.precedence`), on a planted replicated run.

The planted run: 4 router replicas (round-robin assignment) on 4 idle-between-bursts
instances; every 2 s a burst of 8 simultaneous requests with fresh prefixes. The replicas
decide each burst from the same state, so decisions herd; the flags are checked against a
brute-force herding rule on the replay's own log, the loss onset against a brute force.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import requests_workload

from lmetric_theory.detector import LinearReference
from lmetric_theory.experiments.counterfactual import counterfactual_study, loss_onset
from lmetric_theory.policies import parse_spec
from lmetric_theory.sim import LatencyModel, SimConfig, Simulator

LAT = LatencyModel(c0=0.01, c_pf=1e-4, c_dec=1e-3, c_kv=1e-6, c_att=1e-8)
BS = 100


def _brute_onset(t, e):
    c = np.cumsum(np.nan_to_num(e))
    final = c[-1]
    if final <= 0:
        return None, None
    start = next(s for s in range(len(c)) if all(c[k] > 0 for k in range(s, len(c))))
    t10 = next(t[j] for j in range(len(c)) if c[j] >= 0.1 * final)
    return t[start], t10


def test_loss_onset_by_hand():
    # C = -1, 1, 0.5, 1.5: positive from the second request on; 10% of 1.5 reached there
    on = loss_onset([0, 1, 2, 3], [-1, 2, -0.5, 1])
    assert (on.onset_time_s, on.t10_time_s, on.t50_time_s) == (1, 1, 1)
    assert on.final_excess_s == 1.5 and on.mean_excess_s == 0.375
    # C = 1, -1, 2: back to negative at the second, so the loss starts at the third
    on = loss_onset([0, 5, 9], [1, -2, 3])
    assert (on.onset_time_s, on.t10_time_s, on.t50_time_s) == (9, 0, 0)  # C_0 = 1 = half of 2
    assert loss_onset([0, 1], [1, -1]).onset_time_s is None  # no loss: nothing starts
    with pytest.raises(ValueError, match="non-decreasing"):
        loss_onset([1, 0], [1, 1])


def test_loss_onset_matches_brute_force():
    rng = np.random.default_rng(7)
    for _ in range(300):
        n = int(rng.integers(1, 30))
        t = np.sort(rng.integers(0, 50, n)).astype(float)
        e = rng.integers(-3, 4, n).astype(float)
        on = loss_onset(t, e)
        assert (on.onset_time_s, on.t10_time_s) == _brute_onset(t, e)


def _bursts(bursts: int = 12):
    reqs, h = [], 0
    for k in range(bursts):
        for _ in range(8):
            reqs.append((2.0 * k, 6 * BS, 20, list(range(h, h + 6))))
            h += 6
    return requests_workload(reqs, BS)


def _config(r: int) -> SimConfig:
    return SimConfig(n_instances=4, latency=LAT, kv_capacity_tokens=100_000, scheduler="reserve",
                     router_replicas=r)


def _herds(log) -> np.ndarray:
    """Brute force of the herding condition with lag 0 and herd_size 3: at least 2 earlier
    decisions of other replicas at the same instant on the same instance."""
    t, c, r = np.asarray(log.time_s), np.asarray(log.chosen), np.asarray(log.replica)
    out = np.zeros(t.size, dtype=bool)
    for d in range(t.size):
        others = sum(1 for e in range(d) if t[e] == t[d] and c[e] == c[d] and r[e] != r[d])
        out[d] = others >= 2
    return out


@pytest.fixture(scope="module")
def study():
    return counterfactual_study(_bursts(), _config(4), reference=LinearReference.band(64, 1024, lam=256),
                                flag="herding", samples=6, horizon_s=3.0, seed=1,
                                end_to_end_seeds=0, n_boot=200, workers=1)


def test_herding_flags_are_the_decisions_that_herd(study):
    cfg = _config(4)
    log = Simulator(_bursts(), cfg, parse_spec("lmetric"), seed=1).run().snapshots
    herds = _herds(log)
    assert herds.any() and not herds.all()
    assert all(herds[d] for d in study.flagged_decisions)
    assert not any(herds[d] for d in study.control_decisions)
    s = study.summary
    assert s["population"]["flagged"] == int(herds.sum())
    assert s["flagged"]["n"] == len(study.flagged_decisions) == 6


def test_precedence_against_round_robin(study):
    cfg = _config(4)
    pol = Simulator(_bursts(), cfg, parse_spec("lmetric"), seed=1).run()
    rr = Simulator(_bursts(), cfg, parse_spec("round-robin"), seed=1).run()
    pr = study.summary["precedence"]
    assert pr["baseline"] == "round-robin"
    assert pr["baseline_ttft_mean_s"] == pytest.approx(float(np.nanmean(rr.ttft_s)), rel=0, abs=0)
    assert pr["policy_ttft_mean_s"] == pytest.approx(float(np.nanmean(pol.ttft_s)), rel=0, abs=0)
    on = loss_onset(pol.arrival_s, pol.ttft_s - rr.ttft_s)
    assert pr["onset_time_s"] == on.onset_time_s and pr["final_excess_s"] == on.final_excess_s
    # herding piles each burst on few instances: lmetric loses to round-robin from the start
    assert pr["final_excess_s"] > 0
    first = int(np.flatnonzero(_herds(pol.snapshots))[0])
    assert pr["first_flag_time_s"] == float(pol.snapshots.time_s[first])
    assert pr["flag_precedes_onset"] == (pr["first_flag_time_s"] <= pr["onset_time_s"])


def test_one_router_never_herds():
    res = counterfactual_study(_bursts(4), _config(1), reference=LinearReference.band(64, 1024, lam=256),
                               flag="herding", samples=4, horizon_s=3.0, end_to_end_seeds=0,
                               n_boot=50, workers=1)
    assert res.summary["population"]["flagged"] == 0 and res.flagged_decisions == ()
    assert res.summary["precedence"]["first_flag_time_s"] is None


def test_cli_flag_herding_reports_precedence(tmp_path, capsys):
    import json

    from lmetric_theory.cli import main

    lines, h = [], 0
    for k in range(6):
        for _ in range(8):
            lines.append({"timestamp": k * 2000, "input_length": 6 * 512, "output_length": 20,
                          "hash_ids": list(range(h, h + 6))})
            h += 6
    trace = tmp_path / "bursts.jsonl"
    trace.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    args = ["counterfactual", str(trace), "--instances", "4", "--flag", "herding", "--samples", "3",
            "--e2e-seeds", "0", "--workers", "1", "--json"]
    assert main([*args, "--router-replicas", "4"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["config"]["flag"] == "herding" and doc["config"]["router_replicas"] == 4
    assert doc["population"]["flagged"] > 0 and doc["precedence"]["first_flag_time_s"] == 0.0
    assert main([*args, "--router-replicas", "1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["population"]["flagged"] == 0  # one router never herds
