"""``lmetric-theory results`` and the study library: saturation finder, claims, JSON keys, errors."""

from __future__ import annotations

import json
import math

import pytest

from lmetric_theory.cli import main
from lmetric_theory.experiments.study import (
    CLAIMS,
    COMPANY_X,
    PAPER_V1,
    SHIPPED_DEFAULTS,
    Claim,
    LoadPoint,
    aggregate,
    claim_best,
    claim_changes,
    find_saturation,
    simulator_evaluator,
)
from lmetric_theory.sim import SimConfig, Simulator, load_preset
from lmetric_theory.workload import scale_rate
from lmetric_theory.workload.spec import synthetic_from_spec

PRESET = "h100-llama3-8b-calibrated"
TINY = "synthetic:chat:count=60"
ARGS = ["results", TINY, "--instances", "2", "--points", "2", "--workers", "1", "--preset", PRESET,
        "--no-progress"]


# --- saturation finder: answers known by construction -------------------------------------


def _step(threshold: float, calls: list[float] | None = None):
    """TTFT 1 s below ``threshold``, 100 s at or above it (monotone)."""

    def ev(k: float) -> LoadPoint:
        if calls is not None:
            calls.append(k)
        return LoadPoint(1.0 if k < threshold else 100.0)

    return ev


def test_saturation_step_bracket_and_bisection():
    calls: list[float] = []
    r = find_saturation(_step(3.0, calls), start=0.25, refine=3)
    # doublings 0.25, 0.5, 1, 2, 4 (first saturated), then log-bisection in [2, 4]
    assert calls[:5] == [0.25, 0.5, 1.0, 2.0, 4.0]
    assert r.found and r.base_ttft_s == 1.0
    assert 3.0 <= r.scale < 4.0
    # every evaluated scale is classified by the known rule
    assert all(sat == (k >= 3.0) for k, _, sat in r.evaluations)
    # the answer is the smallest saturated scale evaluated
    assert r.scale == min(k for k, _, s in r.evaluations if s)


def test_saturation_refines_toward_threshold():
    coarse = find_saturation(_step(3.0), refine=0)
    fine = find_saturation(_step(3.0), refine=8)
    assert coarse.scale == 4.0
    assert 3.0 <= fine.scale < 3.02


def test_saturation_lag_criterion_and_not_found():
    # TTFT never grows; the drain after the last arrival grows with k beyond 0.25 x span at k >= 5
    def ev(k: float) -> LoadPoint:
        return LoadPoint(1.0, drain_s=2.0 + (50.0 if k >= 5 else 0.0), span_s=100.0)

    r = find_saturation(ev, start=1.0, refine=6)
    assert r.found and 5.0 <= r.scale < 5.2
    flat = find_saturation(lambda k: LoadPoint(1.0, 2.0, 100.0), start=1.0, max_doublings=3)
    assert not flat.found and math.isnan(flat.scale) and len(flat.evaluations) == 4
    with pytest.raises(ValueError):
        find_saturation(_step(1.0), factor=1.0)


def test_saturation_real_tiny_simulation():
    """Tiny chat workload, 2 instances: mean TTFT at the found point is saturated by the rule,
    the last unsaturated scale evaluated is not, and the evaluator agrees with a direct run."""
    w = synthetic_from_spec(TINY, seed=0)
    cfg = SimConfig.from_preset(load_preset(PRESET), 2, record_snapshots=False)
    r = find_saturation(simulator_evaluator(w, cfg), start=0.25, refine=2, max_doublings=10)
    assert r.found
    k, p, s = next(e for e in r.evaluations if e[0] == r.scale)
    assert s and (p.ttft_mean_s > 10 * r.base_ttft_s or r.lag(p) > 0.25)
    direct = Simulator(scale_rate(w, k), cfg, "round-robin").run().summary()
    assert direct["ttft_mean_s"] == p.ttft_mean_s
    below = [e for e in r.evaluations if e[0] < r.scale]
    assert below and not max(below)[2]


# --- claims: hand-computed percentages ------------------------------------------------------


def _row(name: str, seed: int, ttft: float, tpot: float = 0.01, wl: str = "w", load: str = "L") -> dict:
    return {"workload": wl, "load": load, "rate_scale": 1.0, "name": name, "seed": seed,
            "ttft_mean_s": ttft, "tpot_mean_s": tpot}


def test_claim_changes_by_hand():
    rows = [_row("lmetric", 0, 1.0, 0.008), _row("vllm-v1", 0, 4.0, 0.010),
            _row("lmetric", 1, 3.0, 0.010), _row("vllm-v1", 1, 2.0, 0.010)]
    claims = (Claim("TTFT", "ttft_mean_s", "lmetric", "vllm-v1", -92.0),
              Claim("TPOT", "tpot_mean_s", "lmetric", "vllm-v1", -21.0),
              Claim("none", "ttft_mean_s", "lmetric", "bailian", None))
    out = {c["claim"]: c for c in claim_changes(rows, claims)}
    # seed 0: (1-4)/4 = -75%; seed 1: (3-2)/2 = +50%; mean -12.5%
    assert out["TTFT"]["pct"] == pytest.approx(-12.5)
    assert out["TTFT"]["pct_min"] == pytest.approx(-75.0) and out["TTFT"]["pct_max"] == pytest.approx(50.0)
    assert out["TTFT"]["seeds"] == 2 and out["TTFT"]["paper_pct"] == -92.0
    # seed 0: -20%, seed 1: 0%
    assert out["TPOT"]["pct"] == pytest.approx(-10.0)
    assert out["none"]["pct"] is None and out["none"]["seeds"] == 0


def test_claims_follow_the_v1_abstract():
    # "reduce TTFT by 92% and 52%, and TPOT by 21% and 20%, compared to vLLM-v1 and a
    # production scheduler": respectively, so TTFT and TPOT against each of the two.
    cited = {(c.metric, c.baseline): c.paper_pct for c in CLAIMS if c.paper_pct is not None}
    assert cited == {("ttft_mean_s", "vllm-v1"): -92.0, ("tpot_mean_s", "vllm-v1"): -21.0,
                     ("ttft_mean_s", COMPANY_X): -52.0, ("tpot_mean_s", COMPANY_X): -20.0}
    assert COMPANY_X == "bailian:alpha=tuned"
    assert all(c.source == PAPER_V1 for c in CLAIMS if c.paper_pct is not None)
    # this project's own comparisons carry no paper figure and no source
    assert all(c.source is None for c in CLAIMS if c.paper_pct is None)
    assert {c.baseline for c in CLAIMS if c.paper_pct is None} == {"dynamo", "tuned-linear", *SHIPPED_DEFAULTS}


def test_claim_best_is_the_most_negative_cell_by_hand():
    rows = []
    # cell A: seeds -50%, -30% (mean -40%); cell B: -10%, +10% (mean 0%); cell C: -60% alone
    for wl, pairs in (("A", [(1.0, 2.0), (0.7, 1.0)]), ("B", [(0.9, 1.0), (1.1, 1.0)]),
                      ("C", [(0.4, 1.0)])):
        for seed, (t, b) in enumerate(pairs):
            rows += [_row("lmetric", seed, t, wl=wl), _row("vllm-v1", seed, b, wl=wl)]
    claims = (Claim("TTFT", "ttft_mean_s", "lmetric", "vllm-v1", -92.0, "v1"),
              Claim("none", "ttft_mean_s", "lmetric", "bailian", None))
    best = {b["claim"]: b for b in claim_best(claim_changes(rows, claims))}
    t = best["TTFT"]
    assert (t["workload"], t["pct"], t["cells"]) == ("C", pytest.approx(-60.0), 3)
    assert t["worst_pct"] == pytest.approx(0.0) and t["paper_pct"] == -92.0 and t["source"] == "v1"
    assert t["pct_min"] == pytest.approx(-60.0) == t["pct_max"]
    assert best["none"]["pct"] is None and best["none"]["cells"] == 0


def test_claims_default_set_and_aggregate():
    assert {c.baseline for c in CLAIMS} == {"vllm-v1", COMPANY_X, "dynamo", "tuned-linear", *SHIPPED_DEFAULTS}
    rows = [_row("a", 0, 1.0), _row("a", 1, 3.0), _row("a", 2, float("nan"))]
    (a,) = aggregate(rows, metrics=("ttft_mean_s",))
    assert a["ttft_mean_s"] == 2.0 and a["ttft_mean_s_min"] == 1.0 and a["ttft_mean_s_max"] == 3.0
    assert a["seeds"] == 3


# --- CLI -----------------------------------------------------------------------------------


def test_json_keys_and_rows_match_direct_runs(capsys):
    pols = "lmetric,vllm-v1,round-robin"
    assert main([*ARGS, "--policies", pols, "--seeds", "2", "--rate-scales", "1,2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) >= {"workloads", "config", "saturation", "rows", "summary", "claims", "elapsed_s"}
    rows = doc["rows"]
    assert len(rows) == 2 * 2 * 3  # seeds x loads x policies
    for key in ("workload", "load", "rate_scale", "name", "seed", "ttft_mean_s", "ttft_p50_s", "ttft_p90_s",
                "ttft_p99_s", "tpot_mean_s", "prefix_hit_rate", "preemptions", "completed"):
        assert key in rows[0]
    assert {r["name"] for r in rows} == {"lmetric", "vllm-v1", "round-robin"}
    # seed 1 row equals a direct run of the seed-1 workload at x2
    w = scale_rate(synthetic_from_spec(TINY, seed=1), 2.0)
    cfg = SimConfig.from_preset(load_preset(PRESET), 2, record_snapshots=False)
    direct = Simulator(w, cfg, "vllm-v1", seed=1).run().summary()
    row = next(r for r in rows if r["seed"] == 1 and r["rate_scale"] == 2.0 and r["name"] == "vllm-v1")
    assert row["ttft_mean_s"] == direct["ttft_mean_s"]
    assert len(doc["summary"]) == 2 * 3 and doc["summary"][0]["seeds"] == 2
    c = next(c for c in doc["claims"] if c["claim"] == "TTFT vs vLLM-v1" and c["load"] == "x1")
    assert c["seeds"] == 2 and c["pct"] is not None


def test_saturation_markdown_and_render(capsys, tmp_path):
    pols = "lmetric;vllm-v1;tuned-linear"
    assert main([*ARGS, "--policies", pols, "--seeds", "1", "--saturation", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    sat = doc["saturation"][TINY]
    assert sat["found"] and doc["workloads"][0]["loads"] == ["0.5x sat", "0.9x sat"]
    assert doc["workloads"][0]["scales"] == pytest.approx([0.5 * sat["scale"], 0.9 * sat["scale"]])
    tuned = next(r for r in doc["rows"] if r["name"] == "tuned-linear")
    assert tuned["policy_resolved"].startswith("linear:lam=")
    f = tmp_path / "doc.json"
    f.write_text(json.dumps(doc))
    assert main(["results", "--render", str(f), "--markdown"]) == 0
    out = capsys.readouterr().out
    # per load: a row in the comparison table and one in the deployers' metrics table
    assert out.count("| lmetric |") == 4 and "saturation search under round-robin" in out
    assert out.count("deployers' metrics (mean of seeds)") == 2
    assert "| TTFT vs vLLM-v1 |" in out
    assert main(["results", "--render", str(f), "--markdown", "--compact"]) == 0
    out = capsys.readouterr().out
    assert "| policy | chat 0.5x sat | chat 0.9x sat |" in out and "| TTFT vs vLLM-v1 | -92% (v1) |" in out
    assert "Best case over workloads and loads" in out


def test_company_x_is_tuned_per_cell_and_is_the_production_baseline(capsys):
    assert main([*ARGS, "--policies", f"lmetric;{COMPANY_X}", "--seeds", "1", "--rate-scales", "1",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    row = next(r for r in doc["rows"] if r["name"] == COMPANY_X)
    resolved = row["policy_resolved"]
    assert resolved.startswith("bailian:alpha=") and "tuned" not in resolved
    # the row is the run of the resolved weights themselves
    w = synthetic_from_spec(TINY, seed=0)
    cfg = SimConfig.from_preset(load_preset(PRESET), 2, record_snapshots=False)
    direct = Simulator(w, cfg, resolved, seed=0).run().summary()
    assert row["ttft_mean_s"] == direct["ttft_mean_s"]
    c = next(c for c in doc["claims"] if c["claim"] == "TTFT vs Company-X (tuned bailian)")
    lm = next(r for r in doc["rows"] if r["name"] == "lmetric")
    assert c["pct"] == pytest.approx(100 * (lm["ttft_mean_s"] - direct["ttft_mean_s"]) / direct["ttft_mean_s"])
    assert c["source"] == PAPER_V1
    assert {b["claim"] for b in doc["claims_best"]} == {c.label for c in CLAIMS}


def test_paper_setup_is_16_instances_on_an_uncalibrated_h20_preset(capsys):
    base = ["results", "synthetic:chat:count=40", "--points", "2", "--workers", "1", "--seeds", "1",
            "--rate-scales", "1", "--policies", "lmetric,vllm-v1", "--no-progress", "--paper-setup"]
    assert main([*base, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    cfg = doc["config"]
    assert (cfg["instances"], cfg["preset"], cfg["paper_setup"]) == (16, "h20-qwen3-30b-a3b", True)
    assert cfg["preset_description"].startswith("UNCALIBRATED")
    # the rows are 16-instance runs of that preset
    w = synthetic_from_spec("synthetic:chat:count=40", seed=0)
    sim_cfg = SimConfig.from_preset(load_preset("h20-qwen3-30b-a3b"), 16, record_snapshots=False)
    direct = Simulator(w, sim_cfg, "vllm-v1", seed=0).run().summary()
    row = next(r for r in doc["rows"] if r["name"] == "vllm-v1")
    assert row["ttft_mean_s"] == direct["ttft_mean_s"]
    assert main([*base, "--preset", "h20-qwen2.5-7b", "--markdown", "--compact"]) == 0
    out = capsys.readouterr().out
    assert "16 instances, h20-qwen2.5-7b" in out and "uncalibrated" in out
    assert main([*base, "--instances", "8"]) == 2
    assert "--paper-setup runs 16 instances" in capsys.readouterr().err
    assert main([*base, "--preset", "h100-llama3-8b"]) == 2
    assert "--preset must be one of" in capsys.readouterr().err


def test_usage_errors(capsys, tmp_path):
    assert main(["results", "--rate-scales", "1,x"]) == 2
    assert main(["results", "--rate-scales", "0"]) == 2
    assert main(["results", "--instances", "0"]) == 2
    assert main(["results", "--seeds", "0"]) == 2
    assert main(["results", "--loads", "-1", "--saturation"]) == 2
    assert main(["results", "--policies", "no-such-policy"]) == 2
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    assert main(["results", "--render", str(bad)]) == 2
    assert "error" in capsys.readouterr().err


def test_policy_list_splitting():
    from lmetric_theory.cli.results import _split_policies

    assert _split_policies("lmetric:variant=llm-d,tie=random,vllm-v1") == ["lmetric:variant=llm-d,tie=random",
                                                                           "vllm-v1"]
    assert _split_policies("a:x=1;b") == ["a:x=1", "b"]


def test_engine_vllm_runs_the_study_or_says_how_to_install(capsys) -> None:
    import importlib.util
    import json

    from lmetric_theory.cli import main

    argv = ["results", "synthetic:chat:count=40", "--engine", "vllm", "--instances", "2",
            "--seeds", "1", "--policies", "lmetric,round-robin", "--rate-scales", "1",
            "--workers", "1", "--json"]
    if importlib.util.find_spec("vllm") is None:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and 'pip install -e ".[vllm]"' in err[0]
        return
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["config"]["engine"] == "vllm" and doc["config"]["vllm_version"]
    assert {r["name"] for r in doc["rows"]} == {"lmetric", "round-robin"}
