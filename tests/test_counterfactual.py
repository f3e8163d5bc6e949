"""Counterfactual study: hand-computed harm on a tiny cluster, A-A zero, sampling, JSON, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lmetric_theory.cli import main
from lmetric_theory.core.definitions import ScoreDefinition
from lmetric_theory.detector import Detector, LinearReference
from lmetric_theory.experiments.counterfactual import (
    counterfactual_study,
    decision_load,
    flag_mask,
    fork_decision,
    hotspot_phase,
    load_deciles,
    matched_sample,
    reseed_policy,
)
from lmetric_theory.sim import LatencyModel, SimConfig, Simulator, load_preset
from lmetric_theory.workload import synthetic
from lmetric_theory.workload.base import Workload

BS = 100
# Prefill only: an iteration of p prefill tokens takes C0 + C_PF * p seconds.
C0, C_PF = 0.01, 1e-4
LAT = LatencyModel(c0=C0, c_pf=C_PF, c_dec=0.0, c_kv=0.0, c_att=0.0)


def tiny_workload(reqs: list[tuple[float, int]]) -> Workload:
    """One-token outputs, no shared blocks: (arrival s, prompt tokens) per request."""
    hashes: list[int] = []
    offs = [0]
    for _, inp in reqs:
        k = -(-inp // BS)
        hashes.extend(range(len(hashes), len(hashes) + k))
        offs.append(len(hashes))
    return Workload(
        arrival_s=np.array([r[0] for r in reqs], dtype=np.float64),
        input_tokens=np.array([r[1] for r in reqs], dtype=np.int64),
        output_tokens=np.ones(len(reqs), dtype=np.int64),
        hash_ids=np.array(hashes, dtype=np.int64),
        hash_offsets=np.array(offs, dtype=np.int64),
        block_size=BS,
    )


def tiny_config(n: int = 2) -> SimConfig:
    return SimConfig(n_instances=n, latency=LAT, kv_capacity_tokens=100_000, token_budget=4096,
                     max_batch=64, block_size=BS)


def test_harm_of_each_choice_computed_by_hand() -> None:
    # Policy: linear at lam=0 on the uncached tokens (P = uncached), ties to the lowest index.
    # r0 at 0 s (1000 tokens) goes to instance 0 (both instances idle, a tie) and
    # prefills over [0, 0.11]. r1 arrives at 0.05 s (1000 tokens), decision 1:
    #   instance 0: joins at the next iteration boundary 0.11, done 0.22 -> TTFT 0.17 s
    #   instance 1: idle, starts at 0.05, done 0.16 -> TTFT 0.11 s
    # r2 arrives at 5 s, beyond the 1 s horizon: not affected.
    t_pf = C0 + C_PF * 1000
    w = tiny_workload([(0.0, 1000), (0.05, 1000), (5.0, 1000)])
    sim = Simulator(w, tiny_config(), "linear:lam=0,P=uncached,B=running")
    original = sim.fork().run()
    assert original.instance.tolist()[:2] == [0, 0]
    sim.advance(until_decision=1)
    f = fork_decision(sim, 1, request=1, chosen=0, arrival_s=np.asarray(w.arrival_s),
                      horizon_s=1.0, converge_k=0)
    assert f.affected == 1 and not f.converged
    assert f.ttft_cost_s[0] == pytest.approx(2 * t_pf - 0.05, abs=1e-12)
    assert f.ttft_cost_s[1] == pytest.approx(t_pf, abs=1e-12)
    assert f.harm_s == pytest.approx(t_pf - 0.05, abs=1e-12)  # 0.06 s
    assert f.aa_diff_s == 0.0
    assert f.tpot_cost_s == (0.0, 0.0)  # one-token outputs have no TPOT
    # The chosen branch replays the original run exactly.
    assert f.ttft_cost_s[0] == original.ttft_s[1]
    assert sim.decisions_made == 1  # forks leave the simulator where it was


def test_affected_set_spans_the_horizon_and_sums_every_request() -> None:
    # As above, plus r2 at 0.3 s inside a 1 s horizon. Branch 0: r1 over [0.11, 0.22], then
    # r2 (arrives 0.3, instance 0 idle again; linear lam=0 ties -> instance 0) over
    # [0.3, 0.41]. Branch 1: r1 on instance 1 over [0.05, 0.16]; r2 -> instance 0 (idle,
    # lowest index) over [0.3, 0.41]. Costs: 0.17 + 0.11 and 0.11 + 0.11.
    t_pf = C0 + C_PF * 1000
    w = tiny_workload([(0.0, 1000), (0.05, 1000), (0.3, 1000)])
    sim = Simulator(w, tiny_config(), "linear:lam=0,P=uncached,B=running")
    sim.advance(until_decision=1)
    f = fork_decision(sim, 1, request=1, chosen=0, arrival_s=np.asarray(w.arrival_s),
                      horizon_s=1.0, converge_k=0)
    assert f.affected == 2
    assert f.ttft_cost_s[0] == pytest.approx((2 * t_pf - 0.05) + t_pf, abs=1e-12)
    assert f.ttft_cost_s[1] == pytest.approx(2 * t_pf, abs=1e-12)
    assert f.harm_s == pytest.approx(t_pf - 0.05, abs=1e-12)
    # With re-convergence after one agreeing request, r2 (same instance, same TTFT in both
    # branches) ends the affected set: only r1 counts.
    g = fork_decision(sim, 1, request=1, chosen=0, arrival_s=np.asarray(w.arrival_s),
                      horizon_s=1.0, converge_k=1)
    assert g.converged and g.affected == 1
    assert g.harm_s == pytest.approx(t_pf - 0.05, abs=1e-12)


@pytest.fixture(scope="module")
def small():
    w = synthetic("chat", n_requests=500, rate_rps=20.0, seed=3)
    cfg = SimConfig.from_preset(load_preset("h100-llama3-8b"), 3)
    return w, cfg


@pytest.fixture(scope="module")
def study(small):
    w, cfg = small
    ref = LinearReference.band(64, 1024, lam=256)
    return counterfactual_study(w, cfg, reference=ref, samples=8, horizon_s=5.0, seed=4,
                                end_to_end_seeds=2, n_boot=200, workers=1)


def test_aa_forks_give_exactly_zero_for_a_deterministic_policy(study) -> None:
    assert study.forks
    assert all(f.aa_diff_s == 0.0 for f in study.forks)
    d = study.to_dict()
    assert d["noise_floor_s"] == 0.0 and d["population"]["aa_nonzero"] == 0


def test_aa_forks_measure_random_tie_draws() -> None:
    # tie=random: the A-A branch re-seeds the policy's generator, so later ties may go
    # elsewhere; the difference is what randomness alone changes (deterministic per seed).
    w = synthetic("api", n_requests=300, rate_rps=6.0, seed=5)
    cfg = SimConfig.from_preset(load_preset("h100-llama3-8b"), 4)
    spec = "lmetric:tie=random"
    res = Simulator(w, cfg, spec, seed=3).run()
    arr = np.asarray(w.arrival_s)

    def diffs() -> list[float]:
        sim = Simulator(w, cfg, spec, seed=3)
        out = []
        for d in range(20, 300, 40):
            sim.advance(until_decision=d)
            out.append(fork_decision(sim, d, request=d, chosen=int(res.instance[d]), arrival_s=arr,
                                     horizon_s=5.0, aa_seed=9).aa_diff_s)
        return out

    a = diffs()
    assert a == diffs()
    assert any(x != 0.0 for x in a)


def test_reseed_policy_reaches_wrapped_policies() -> None:
    import lmetric_theory.policies.guarded  # noqa: F401
    from lmetric_theory.policies import make_policy

    pol = make_policy("guarded-lmetric:tie=random", seed=1)
    reseed_policy(pol, 7)
    wrapped = [v for v in vars(pol).values() if hasattr(v, "choose")]
    assert wrapped and all(v.rng is pol.rng for v in wrapped)
    assert pol.rng.integers(1 << 30) == np.random.default_rng([7, 0xAA]).integers(1 << 30)


def test_chosen_branch_replays_the_original_run(small, study) -> None:
    w, cfg = small
    res = Simulator(w, cfg, "lmetric").run()
    for f in study.forks:
        assert f.chosen == res.instance[f.decision]
        idx = np.arange(f.request, f.request + f.affected)
        assert f.ttft_cost_s[f.chosen] == pytest.approx(float(res.ttft_s[idx].sum()), rel=1e-12)
        assert f.harm_s >= 0.0 and min(f.ttft_cost_s) == f.ttft_cost_s[f.chosen] - f.harm_s


def test_json_stable_keys_and_consistency(study) -> None:
    d = study.to_dict()
    json.dumps(d)  # JSON-ready
    for g in ("flagged", "control"):
        assert set(d[g]) >= {"n", "harm_rate", "harm_rate_ci95", "mean_harm_s", "mean_harm_ci95"}
    assert d["flagged"]["n"] == len(study.flagged_decisions)
    assert d["control"]["n"] == len(study.control_decisions)
    assert set(study.flagged_decisions).isdisjoint(study.control_decisions)
    thr = study.harm_threshold_s
    harms = {f.decision: f.harm_s for f in study.forks}
    fl = [harms[k] for k in study.flagged_decisions]
    assert d["flagged"]["harm_rate"] == pytest.approx(np.mean([h > thr for h in fl]))
    assert d["flagged"]["mean_harm_s"] == pytest.approx(np.mean(fl))
    assert d["precision"]["value"] == d["flagged"]["harm_rate"]
    # the sensitivity table: the same harms against larger thresholds, never a larger rate
    prev = d["flagged"]["harm_rate"]
    for row in d["harm_rate_by_threshold"].values():
        t = row["threshold_s"]
        assert t >= thr
        assert row["flagged"]["harm_rate"] == pytest.approx(np.mean([h > t for h in fl]))
        assert row["flagged"]["harm_rate"] <= prev
        prev = row["flagged"]["harm_rate"]
    for name, x in d["auroc"].items():
        assert set(x) >= {"value", "ci95"}, name
    assert "hotspot_phase" in d["auroc"] or "hotspot_phase" in d["auroc_omitted"]
    for x in d["mitigations"].values():
        assert set(x) >= {"n", "mean_gain_s", "ci95"}
    assert set(d["config"]) >= {"policy", "flag", "flag_definition", "reference", "horizon_s",
                                "samples", "seed"}
    assert d["end_to_end"]["replicates"] == 2


def test_fallback_mitigation_gain_equals_regret_vs_reference(study) -> None:
    d = study.to_dict()
    if not study.flagged_decisions:
        pytest.skip("no disagreement at this setting")
    # gain = cost(policy's choice) - cost(reference's choice) = regret vs reference
    m = d["mitigations"]["fallback_reference"]
    assert m["mean_gain_s"] == pytest.approx(d["flagged"]["mean_regret_vs_reference_s"])


def test_study_is_deterministic(small, study) -> None:
    w, cfg = small
    again = counterfactual_study(w, cfg, reference=LinearReference.band(64, 1024, lam=256),
                                 samples=8, horizon_s=5.0, seed=4, end_to_end_seeds=2, n_boot=200,
                                 workers=1)
    assert again.forks == study.forks
    a, b = again.to_dict(), study.to_dict()
    a.pop("runtime_s"), b.pop("runtime_s")
    assert a == b


def test_any_executor_object_gives_the_same_forks(small, study) -> None:
    class InOrder:  # the sweep executors' protocol: map(fn, items) -> list in item order
        calls = 0

        def map(self, fn, items):
            InOrder.calls += 1
            return [fn(x) for x in reversed(items)][::-1]

    w, cfg = small
    other = counterfactual_study(w, cfg, reference=LinearReference.band(64, 1024, lam=256),
                                 samples=8, horizon_s=5.0, seed=4, end_to_end_seeds=0, n_boot=200,
                                 executor=InOrder())
    assert other.forks == study.forks and InOrder.calls >= 1


def test_worker_processes_give_the_same_forks(small, study, monkeypatch) -> None:
    # Two worker processes, several decisions per task: each task's simulator is pickled
    # to its worker and advanced there from decision to decision.
    import lmetric_theory.experiments.counterfactual.study as mod

    monkeypatch.setattr(mod, "_TASKS_PER_WORKER", 1)
    w, cfg = small
    seen: list[tuple[int, int]] = []
    other = counterfactual_study(w, cfg, reference=LinearReference.band(64, 1024, lam=256),
                                 samples=8, horizon_s=5.0, seed=4, end_to_end_seeds=0, n_boot=200,
                                 workers=2, progress=lambda d, t: seen.append((d, t)))
    assert other.forks == study.forks
    total = len(study.forks)
    assert seen[0] == (0, total) and seen[-1] == (total, total) and len(seen) >= 3


def test_controls_are_matched_on_load_decile() -> None:
    rng = np.random.default_rng(0)
    load = rng.gamma(2.0, 3.0, 2000)
    flagged = rng.random(2000) < 0.2 + 0.05 * (load > 8)
    s = matched_sample(flagged, load, 170, np.random.default_rng(1))
    assert s.flagged.size == 170 and s.control.size == 170
    assert flagged[s.flagged].all() and not flagged[s.control].any()
    assert np.unique(s.control).size == 170
    dec = load_deciles(load)
    assert np.array_equal(np.sort(dec[s.flagged]), np.sort(dec[s.control]))


def test_flag_definitions(small) -> None:
    w, cfg = small
    log = Simulator(w, cfg, "lmetric").run().snapshots
    v = Detector(LinearReference.band(64, 1024, lam=256)).check_many(
        log.uncached.astype(np.int64), log.running.astype(np.int64))
    assert np.array_equal(flag_mask(v, "disagreement"), v.disagrees)
    anyb = flag_mask(v, "any-but-ties")
    assert np.array_equal(anyb & ~(v.exact_tie | v.idle_tie), anyb & ~(v.exact_tie | v.idle_tie))
    assert not (anyb & ~(v.disagrees | v.fragile | v.zero_prefill | v.extreme_operating_point)).any()
    assert decision_load(log).shape == (len(log),)
    with pytest.raises(ValueError, match="flag"):
        flag_mask(v, "some")


def test_hotspot_phase_sees_the_planted_hot_class() -> None:
    from lmetric_theory.workload.spec import synthetic_from_spec

    w = synthetic_from_spec("synthetic:hotspot:share=0.6,count=600", seed=1)
    cfg = SimConfig.from_preset(load_preset("h100-llama3-8b"), 8)
    log = Simulator(w, cfg, "lmetric").run().snapshots
    P, B = log.uncached.astype(np.int64), log.running.astype(np.int64)
    phase = hotspot_phase(w, log, ScoreDefinition("uncached", "running", 0, 1))
    assert set(np.unique(phase).tolist()) <= {0, 1, 2}
    assert (phase >= 1).any()
    # Only requests of a shared-prefix class (a hit somewhere) can be in a phase.
    hit_any = (log.uncached < log.input_tokens[:, None]).any(axis=1)
    assert not (phase[~hit_any] >= 1).any()
    v = Detector(LinearReference.fixed(256)).check_many(P, B)
    assert np.array_equal(flag_mask(v, "hotspot", phase), v.zero_prefill | (phase >= 1))


def test_bad_arguments(small) -> None:
    w, cfg = small
    ref = LinearReference.fixed(256)
    for kw, what in (({"flag": "any"}, "flag"), ({"samples": 0}, "samples"),
                     ({"horizon_s": math.nan}, "horizon_s"), ({"converge_k": -1}, "converge_k"),
                     ({"min_harm_s": -1.0}, "min_harm_s")):
        with pytest.raises(ValueError, match=what):
            counterfactual_study(w, cfg, reference=ref, **kw)


def test_cli_json(capsys) -> None:
    code = main(["counterfactual", "synthetic:chat:count=300,rate=15", "-n", "3", "--samples", "4",
                 "--horizon", "3", "--e2e-seeds", "2", "--workers", "1", "--json"])
    assert code == 0
    d = json.loads(capsys.readouterr().out)
    assert d["config"]["samples"] == 4 and d["config"]["engine"] == "fast"
    assert d["end_to_end"]["how"] == "workload regenerated per seed"


@pytest.mark.parametrize("policy, P, B", [
    ("lmetric", "router-queued+new", "router-in-flight"),
    ("lmetric:variant=llm-d", "uncached-full-blocks", "router-in-flight"),
])
def test_cli_tuned_reference_scores_the_policys_own_signals(capsys, policy, P, B) -> None:
    code = main(["counterfactual", "synthetic:chat:count=150,rate=15", "-n", "2", "--samples", "2",
                 "--horizon", "2", "--e2e-seeds", "0", "--workers", "1", "--reference", "tuned",
                 "--policy", policy, "--json"])
    assert code == 0
    d = json.loads(capsys.readouterr().out)
    ref = d["config"]["reference"]
    assert ref["source"] == "tuned"
    assert ref["provenance"].endswith(f"linear scored with P={P}, B={B}")
    assert (d["config"]["score"]["P"], d["config"]["score"]["B"]) == (P, B)


@pytest.mark.parametrize("argv, msg", [
    (["--samples", "0"], "--samples"),
    (["--horizon", "-1"], "--horizon"),
    (["synthetic:nope"], "nope"),
    (["no/such/trace.jsonl"], "no/such/trace.jsonl"),
])
def test_cli_bad_input_exits_2_with_one_line(capsys, argv, msg) -> None:
    code = main(["counterfactual", *argv, "--json"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert msg in err and len(err.splitlines()) == 1


def test_the_study_scores_the_policy_by_its_own_exact_definition():
    """policy_score reads the policy's ScoreDefinition (a variant resolves, offsets stay
    exact) and the guarded comparator carries the same score, not a rounded copy."""
    from fractions import Fraction

    from lmetric_theory.detector import LinearReference
    from lmetric_theory.experiments.counterfactual import policy_score
    from lmetric_theory.experiments.counterfactual.study import _guard_spec
    from lmetric_theory.policies import make_policy, parse_spec

    d, tie = policy_score(parse_spec("lmetric:variant=llm-d,p0=1/3"))
    assert (d.p_definition.value, d.b_definition.value, d.p0, d.b0, tie) == (
        "uncached-full-blocks", "router-in-flight", Fraction(1, 3), 1, "random")
    g = _guard_spec(LinearReference.band(64, 1024, lam=256), d, tie, 16)
    assert make_policy(g).definition == d
    assert str(g) == ("guarded-lmetric:lam=256.0,lam_lo=64.0,lam_hi=1024.0,P=uncached-full-blocks,"
                      "B=router-in-flight,p0=1/3,b0=1,block=16,tie=random")
    # a policy that names no P and B is studied under the paper's defaults
    d, tie = policy_score("round-robin")
    assert (d.p_definition.value, d.b_definition.value, d.p0, d.b0, tie) == (
        "router-queued+new", "router-in-flight", 0, 1, "lowest")
