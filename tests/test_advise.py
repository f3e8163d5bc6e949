"""``advise``: the verdict rule, the study on a small synthetic workload (every figure of the
document re-derived from its own rows), the closed-loop path, the report files and the CLI's
bad-input lines."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest

from lmetric_theory.cli import main
from lmetric_theory.experiments import advise as A
from lmetric_theory.io.advise import (
    ADVICE_KEYS,
    check_advice,
    figures,
    render_html,
    write_advice,
)
from lmetric_theory.policies import parse_spec, policy_names
from lmetric_theory.sim import SimConfig, load_preset

PRESET = "h100-llama3-8b-calibrated"


# ------------------------------------------------------------------------ the verdict rule


def test_outcome_rule_by_hand() -> None:
    # latency: lower is better; every seed beyond the tolerance on one side decides
    assert A.outcome([-5.0, -3.0], True, 1.0) == "win"
    assert A.outcome([2.0, 5.0], True, 1.0) == "lose"
    assert A.outcome([-5.0, 0.5], True, 1.0) == "tie"      # one seed inside the tie zone
    assert A.outcome([-5.0, 4.0], True, 1.0) == "tie"      # seeds disagree
    assert A.outcome([-0.9, -0.5], True, 1.0) == "tie"     # all within the tolerance
    assert A.outcome([-0.9, -0.5], True, 0.0) == "win"
    # goodput: higher is better, the same changes read the other way
    assert A.outcome([-5.0, -3.0], False, 1.0) == "lose"
    assert A.outcome([2.0, 5.0], False, 1.0) == "win"
    assert A.outcome([], True, 1.0) == "n/a"


def test_verdict_text_names_loads_that_are_not_neighbours() -> None:
    def cell(load: str, pct: float) -> dict:
        return {"load": load, "metric": "ttft_mean_s", "other": "x", "pct": pct, "pct_min": pct,
                "pct_max": pct, "per_seed_pct": [pct], "seeds": 1,
                "outcome": A.outcome([pct], True, 1.0)}

    loads = [{"label": f"L{i}"} for i in range(4)]
    comps = [cell("L0", -5.0), cell("L1", 0.0), cell("L2", 0.5), cell("L3", -3.0)]
    text = A._verdict(comps, loads, ["x"], 1.0, 1)["against"][0]["text"]
    assert "wins at L0 and L3" in text and "ties at L1 to L2" in text
    comps = [cell("L0", -5.0), cell("L1", -4.0), cell("L2", -2.0), cell("L3", 0.0)]
    text = A._verdict(comps, loads, ["x"], 1.0, 1)["against"][0]["text"]
    assert "wins at L0 to L2" in text and "ties at L3" in text


def test_default_current_follows_the_registry() -> None:
    cur = A.default_current()
    names = set(policy_names())
    shipped = all(parse_spec(s).name in names for s in A.DEFAULT_CURRENT) if \
        {"dynamo-kv"} <= names else False
    assert cur == (A.DEFAULT_CURRENT if shipped else A.FALLBACK_CURRENT)
    for s in cur:  # whichever set, every default parses
        parse_spec(s)


# ----------------------------------------------------------------- the study, small workload


def test_document_has_the_documented_keys(advice_doc) -> None:
    assert set(ADVICE_KEYS) <= set(advice_doc)
    assert advice_doc["schema"] == A.ADVICE_SCHEMA
    check_advice(advice_doc)  # does not raise
    assert advice_doc["_stages"][0] == "saturation" and advice_doc["_stages"][-1] == "done"
    json.dumps(advice_doc, allow_nan=False)  # strict JSON


def test_saturation_point_meets_its_criterion(advice_doc) -> None:
    sat = advice_doc["saturation"]
    ev = sat["evaluations"]
    base = ev[0]["ttft_mean_s"]
    at = next(e for e in ev if e["scale"] == sat["scale"])
    assert at["saturated"]
    assert at["ttft_mean_s"] > 10 * base or at["lag"] > 0.25
    # every unsaturated scale tried lies below the saturation point
    assert all(e["scale"] < sat["scale"] for e in ev if not e["saturated"])
    loads = advice_doc["loads"]
    assert [ld["value"] for ld in loads] == pytest.approx([0.5 * sat["scale"], sat["scale"]])


def test_every_policy_ran_at_every_load_and_seed(advice_doc) -> None:
    rows = advice_doc["rows"]
    names = advice_doc["config"]["policies"]
    assert names[:3] == ["lmetric", "guarded-lmetric", "tuned-linear"]
    assert {"round-robin", "vllm-v1"} <= set(names)
    cells = {(r["load"], r["name"], r["seed"]) for r in rows}
    assert len(cells) == len(rows) == len(names) * 2 * 2
    assert all(r["completed"] == 240 for r in rows)


def test_summary_is_the_seed_mean_of_the_rows(advice_doc) -> None:
    rows = advice_doc["rows"]
    for e in advice_doc["summary"]:
        vals = [r["ttft_mean_s"] for r in rows if r["load"] == e["load"] and r["name"] == e["policy"]]
        assert e["ttft_mean_s"]["mean"] == pytest.approx(np.mean(vals))
        assert e["ttft_mean_s"]["min"] == pytest.approx(min(vals))
        assert e["ttft_mean_s"]["max"] == pytest.approx(max(vals))
        lo, hi = e["ttft_mean_s"]["ci95"]
        assert lo <= np.mean(vals) <= hi
        assert e["goodput_rps"]["mean"] is not None  # the SLO was given


def test_verdict_recomputed_from_the_rows(advice_doc) -> None:
    rows = advice_doc["rows"]
    tol = advice_doc["verdict"]["tolerance_pct"]
    by = {(r["load"], r["name"], r["seed"]): r for r in rows}
    for a in advice_doc["verdict"]["against"]:
        cells = a["metrics"]["ttft_mean_s"]["by_load"]
        outs = []
        for c in cells:
            pcts = [100 * (by[(c["load"], "lmetric", s)]["ttft_mean_s"]
                           - by[(c["load"], a["policy"], s)]["ttft_mean_s"])
                    / by[(c["load"], a["policy"], s)]["ttft_mean_s"] for s in (0, 1)]
            assert c["pct"] == pytest.approx(np.mean(pcts))
            assert c["pct_min"] == pytest.approx(min(pcts))
            better = [-p for p in pcts]
            expect = "win" if min(better) > tol else "lose" if max(better) < -tol else "tie"
            assert c["outcome"] == expect
            outs.append(expect)
        overall = outs[0] if len(set(outs)) == 1 else "mixed"
        assert a["outcome"] == overall
        assert a["policy"] in a["text"]


def test_distributions_and_per_instance_loads(advice_doc) -> None:
    d = advice_doc["distributions"]
    assert d["load"] == advice_doc["focus_load"] == "0.5x sat"
    assert len(d["probabilities"]) == A.CDF_POINTS
    for name in advice_doc["config"]["policies"]:
        q = d["policies"][name]["ttft_q_s"]
        assert len(q) == A.CDF_POINTS and all(np.diff(q) >= 0)
        row = next(r for r in advice_doc["rows"] if r["load"] == d["load"] and r["name"] == name
                   and r["seed"] == 0)
        assert q[50] == pytest.approx(row["ttft_p50_s"])  # the median is the p50 of the row
        per = advice_doc["per_instance"]["policies"][name]
        assert sum(per["requests"]) == 240 and len(per["requests"]) == 4


def test_hotspots_and_harm_sections(advice_doc) -> None:
    hot = advice_doc["hotspots"]
    assert hot["classes_found"] == len(hot["classes"])
    if hot["classes"]:
        m = hot["mitigation"]
        assert m["policy"] == "guarded-lmetric:mitigation=hotspot"
        gains = [100 * (b - x) / b for x, b in zip(m["ttft_mean_s"], m["lmetric_ttft_mean_s"],
                                                   strict=True)]
        assert m["gain_pct"] == pytest.approx(np.mean(gains))
    harm = advice_doc["harm"]
    if harm["run"]:
        assert harm["flagged"]["n"] <= 2 and isinstance(harm["detectable"], bool)


def test_parallel_saturation_search_matches_the_serial_one(advice_doc) -> None:
    from conftest import _advice_workload

    from lmetric_theory.experiments.study import LoadPoint, find_saturation, study_task
    from lmetric_theory.experiments.tasks import SimTask
    from lmetric_theory.workload import scale_rate

    w = _advice_workload(0)
    cfg = SimConfig.from_preset(load_preset(PRESET), 4, record_snapshots=False)

    def serial(k: float) -> LoadPoint:  # one run per asked scale, in this process
        row = study_task(SimTask(scale_rate(w, k), cfg, parse_spec("round-robin"), 0))
        return LoadPoint(row["ttft_mean_s"], row["drain_s"], row["span_s"])

    ref = find_saturation(serial, start=0.25)
    sat = advice_doc["saturation"]  # the fixture ran with 1 worker: check 2 as well
    assert sat["scale"] == ref.scale
    assert [e["scale"] for e in sat["evaluations"]] == [k for k, _, _ in ref.evaluations]
    from lmetric_theory.experiments.tasks import get_executor

    ev = A._evaluator(w, cfg, "rate", parse_spec("round-robin"), 0, 0.25,
                      get_executor(None, workers=2))
    two = find_saturation(ev, start=0.25)
    assert two.scale == ref.scale
    assert [p.ttft_mean_s for _, p, _ in two.evaluations] == [p.ttft_mean_s for _, p, _ in
                                                              ref.evaluations]


def test_router_state_sensitivity_reuses_the_sweep_and_reruns_the_rest(advice_doc) -> None:
    from conftest import _advice_workload

    from lmetric_theory.experiments.study import study_task
    from lmetric_theory.experiments.tasks import SimTask
    from lmetric_theory.workload import scale_rate

    rs = advice_doc["router_state"]
    assert rs["run"] is True and rs["load"] == advice_doc["focus_load"]
    assert rs["setup"]["router_replicas"] == 1 and rs["setup"]["kv_event_lag_s"] == 0
    # the two axes through (1, 0) and the corner (8, 1 s)
    assert rs["settings"] == [[1, 0.0], [2, 0.0], [4, 0.0], [8, 0.0], [1, 0.2], [1, 1.0], [8, 1.0]]
    assert rs["policies"] == ["lmetric", "round-robin", "vllm-v1"]
    by = {(e["replicas"], e["lag_s"], e["policy"]): e for e in rs["summary"]}
    assert len(by) == 7 * 3
    assert rs["seeds"] == [0]  # one seed by default
    # the sweep's own setting is the sweep's focus-load rows of seed 0
    sweep = {r["name"]: r for r in advice_doc["rows"] if r["load"] == rs["load"] and r["seed"] == 0}
    for p in rs["policies"]:
        e = by[(1, 0.0, p)]["ttft_mean_s"]
        assert e["mean"] == e["min"] == e["max"] == sweep[p]["ttft_mean_s"]
    # another setting is a fresh run: seed 0 of lmetric at R = 8 replayed here is one of the
    # two seeds' values
    value = advice_doc["loads"][0]["value"]
    cfg = SimConfig.from_preset(load_preset(PRESET), 4, record_snapshots=False, router_replicas=8)
    row = study_task(SimTask(scale_rate(_advice_workload(0), value), cfg, parse_spec("lmetric"), 0))
    e = by[(8, 0.0, "lmetric")]["ttft_mean_s"]
    assert row["ttft_mean_s"] == pytest.approx(e["mean"])
    # round-robin does not read router state: its cells are the same at every setting
    rr = {(r, lag): by[(r, lag, "round-robin")]["ttft_mean_s"]["mean"] for r, lag in rs["settings"]}
    assert len({round(v, 12) for v in rr.values()}) == 1
    # comparisons: mean of the paired per-seed changes, recomputed from the cells
    for c in rs["comparisons"]:
        assert c["pct"] == pytest.approx(np.mean(c["per_seed_pct"]))
        assert c["outcome"] == A.outcome(c["per_seed_pct"], A.METRICS[c["metric"]], 1.0)


def test_html_report_is_self_contained_with_the_verdict_first(advice_doc, tmp_path) -> None:
    page = render_html(advice_doc)
    assert page.startswith("<!DOCTYPE html>")
    assert page.index('id="verdict"') < page.index('class="plot"')
    # every script is inline (plotly.js included once), no stylesheet or image is linked
    assert re.findall(r"<script[^>]*>", page) == ["<script>"] * len(re.findall(r"<script[^>]*>", page))
    assert page.count("<script>") >= 2
    assert not re.search(r"<(link|img|iframe)\b", page)
    ids = [fid for fid, _ in figures(advice_doc)]
    assert {"cdf-ttft", "cdf-tpot", "load-ttft_mean_s", "load-goodput_rps",
            "instances-requests"} <= set(ids)
    for fid in ids:
        assert f'id="{fid}"' in page
    j, h = write_advice(advice_doc, tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ["advice.html", "advice.json"]
    back = json.loads(j.read_text())
    assert back["verdict"] == json.loads(json.dumps(advice_doc["verdict"]))
    assert render_html(back) == h.read_text()  # the saved JSON renders the same page


def test_check_advice_rejects_other_documents() -> None:
    with pytest.raises(ValueError, match="not an advice document"):
        check_advice({"workloads": []})
    with pytest.raises(ValueError, match="lacks the keys"):
        check_advice({"schema": A.ADVICE_SCHEMA})


# ------------------------------------------------------------------------------ closed loop


def _sessions_trace(path: Path, sessions: int, turns: int) -> Path:
    lines = []
    for s in range(sessions):
        for t in range(turns):
            base = {"input_length": 600, "output_length": 40, "hash_ids": [s * 100 + t, 7 + t]}
            base.update({"timestamp": 0} if t == 0 else {"delay": 500})
            base["session_id"] = f"s{s}"
            lines.append(json.dumps(base))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_closed_loop_sweeps_concurrency(tmp_path) -> None:
    from lmetric_theory import audit as AU
    from lmetric_theory.workload import load_trace

    w = load_trace(_sessions_trace(tmp_path / "s.jsonl", 40, 3), trace_format="mooncake-delta")
    assert w.closed_loop
    preset = load_preset(PRESET)
    cfg = SimConfig.from_preset(preset, 2, record_snapshots=False)
    s = A.AdviseSettings(current=(parse_spec("round-robin"),), reference=AU.default_reference(preset, w),
                         loads=(0.5, 1.0), focus=0.5, seeds=1, points=2, cf_samples=0,
                         concurrency=(2, 8))
    doc = A.advise(w, cfg, s, source="s", workers=1)
    assert doc["workload"]["mode"] == "concurrency" and doc["saturation"] is None
    assert [ld["value"] for ld in doc["loads"]] == [2.0, 8.0]
    # a higher session cap never lowers round-robin's mean TTFT on this workload
    rr = {r["load"]: r["ttft_mean_s"] for r in doc["rows"] if r["name"] == "round-robin"}
    assert rr["c=8"] >= rr["c=2"]
    assert doc["harm"]["run"] is False


def test_too_few_sessions_cannot_saturate(tmp_path) -> None:
    from lmetric_theory import audit as AU
    from lmetric_theory.workload import load_trace

    w = load_trace(_sessions_trace(tmp_path / "s.jsonl", 3, 8), trace_format="mooncake-delta")
    preset = load_preset(PRESET)
    cfg = SimConfig.from_preset(preset, 2, record_snapshots=False)
    s = A.AdviseSettings(current=(parse_spec("round-robin"),), reference=AU.default_reference(preset, w))
    with pytest.raises(A.SaturationNotFound, match="too few to find a saturation point"):
        A.advise(w, cfg, s, source="three-sessions", workers=1)


# --------------------------------------------------------------------------- CLI bad input


def _trace(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"timestamp": 100 * k, "input_length": 600,
                                        "output_length": 5, "hash_ids": [k % 3, 1000 + k]}) + "\n"
                            for k in range(n)))
    return path


@pytest.mark.parametrize("argv, needle", [
    (["--current", "no-such-policy"], "--current: unknown policy 'no-such-policy'"),
    (["--slo", "ttfx=1"], "--slo: unknown key 'ttfx'"),
    (["--slo", "ttft=0"], "--slo: ttft='0': need a finite number of seconds > 0"),
    (["--slo", "itl=-1"], "--slo: itl='-1': need a finite number of seconds > 0"),
    (["--loads", "0.5,0"], "--loads: need finite numbers > 0"),
    (["--focus", "0.3"], "--focus: 0.3 is not one of --loads"),
])
def test_cli_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, argv, needle) -> None:
    out = tmp_path / "out"
    code = main(["advise", str(_trace(tmp_path / "t.jsonl", 50)), "--out", str(out), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("lmetric-theory advise: error: ")
    assert needle in err
    assert not out.exists()


def test_cli_trace_too_short(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code = main(["advise", str(_trace(tmp_path / "t.jsonl", 9)), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "t.jsonl: 9 requests are too few to find a saturation point" in err
    assert not out.exists()


def test_cli_sessions_that_never_saturate(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    trace = _sessions_trace(tmp_path / "s.jsonl", 3, 8)
    code = main(["advise", str(trace), "--trace-format", "mooncake-delta", "-n", "2",
                 "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "too few to find a saturation point" in err and "concurrency" in err
    assert not out.exists()


@pytest.mark.parametrize(("flags", "words"), [
    (["--router-replicas", "0"], "--router-replicas"),
    (["--kv-event-lag", "-1"], "--kv-event-lag"),
    (["--index", "bogus"], "index"),
    (["--sensitivity-lags", "0,-0.2"], "--sensitivity-lags"),
    (["--sensitivity-replicas", "0,2"], "--sensitivity-replicas"),
    (["--sensitivity-seeds", "3"], "--sensitivity-seeds"),
])
def test_cli_router_state_flags_bad_values(tmp_path, capsys, flags, words) -> None:
    out = tmp_path / "out"
    code = main(["advise", str(_trace(tmp_path / "t.jsonl", 50)), "--out", str(out), *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and words in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_cli_sweep_runs_under_the_router_set_up(capsys) -> None:
    code = main(["advise", "synthetic:api:count=120", "-n", "2", "--seeds", "1", "--points", "2",
                 "--samples", "0", "--current", "round-robin", "--workers", "1", "--loads", "1",
                 "--router-replicas", "2", "--replica-assignment", "random",
                 "--kv-event-lag", "0.2", "--sensitivity-replicas", "1,2",
                 "--sensitivity-lags", "0.2", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0
    rs = doc["router_state"]
    assert rs["setup"] == {"router_replicas": 2, "replica_assignment": "random",
                           "kv_event_lag_s": 0.2, "signal_delay_s": 0.0, "index": "precise"}
    assert rs["settings"] == [[1, 0.2], [2, 0.2]]
    # (2, 0.2 s) is the sweep's own set-up: the sweep's rows; (1, 0.2 s) a separate run
    sweep = {e["policy"]: e["ttft_mean_s"] for e in doc["summary"]}
    by = {(e["replicas"], e["policy"]): e["ttft_mean_s"] for e in rs["summary"]}
    assert by[(2, "lmetric")] == sweep["lmetric"]
    assert by[(1, "round-robin")]["mean"] == pytest.approx(sweep["round-robin"]["mean"])


def test_cli_bad_trace_line_names_file_line_field(tmp_path, capsys) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text('{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [1]}\n'
                 '{"timestamp": 1, "input_length": "x", "output_length": 1, "hash_ids": [2]}\n')
    code = main(["advise", str(p)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "bad.jsonl" in err and "line 2" in err and "input_length" in err


@pytest.mark.slow
def test_cli_writes_both_files_and_prints_a_verdict(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code = main(["advise", "synthetic:api:count=240", "-n", "4", "--seeds", "2", "--points", "2",
                 "--samples", "2", "--current", "round-robin", "--workers", "1", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    assert text.startswith("Verdict: LMetric ") and "on synthetic:api:count=240" in text.splitlines()[0]
    assert "Against round-robin: LMetric" in text
    doc = json.loads((out / "advice.json").read_text())
    assert doc["verdict"]["against"][0]["policy"] == "round-robin"
    assert math.isfinite(doc["runtime_s"]["total"])
    assert (out / "advice.html").stat().st_size > 100_000  # plotly.js inline



def test_trace_seeds_replay_consecutive_windows(tmp_path) -> None:
    from lmetric_theory.cli.advise import _trace_replicates
    from lmetric_theory.workload import load_trace, select

    full = load_trace(_trace(tmp_path / "t.jsonl", 50))
    make = _trace_replicates(full, 20, 2, select)
    assert make.replicates == "trace windows"
    w0, w1 = make(0), make(1)
    assert len(w0) == len(w1) == 20
    assert w0.arrival_s[0] == w1.arrival_s[0] == 0.0  # each window rebased
    # window 1 holds requests 20..39: their hash ids are 1000 + k
    assert list(w1.hash_ids[1::2][:3]) == [1020, 1021, 1022]
    assert list(w0.hash_ids[1::2][:3]) == [1000, 1001, 1002]
    # three windows of 20 do not fit in 50 requests: every seed replays the first 20
    same = _trace_replicates(full, 20, 3, select)
    assert same.replicates == "same requests" and same(2) is same(0)
    # a closed-loop session trace is never cut into windows
    s = load_trace(_sessions_trace(tmp_path / "s.jsonl", 10, 4), trace_format="mooncake-delta")
    assert _trace_replicates(s, 10, 2, select).replicates == "same requests"


@pytest.mark.slow
def test_confirm_vllm_side_by_side() -> None:
    from conftest import vllm_availability

    ok, why = vllm_availability()
    if not ok:
        pytest.skip(why)
    from lmetric_theory import audit as AU
    from lmetric_theory.experiments.study import study_task
    from lmetric_theory.experiments.tasks import SimTask
    from lmetric_theory.workload import scale_rate, select
    from lmetric_theory.workload.spec import synthetic_from_spec

    w = synthetic_from_spec("synthetic:api:count=160", seed=0)
    preset = load_preset(PRESET)
    cfg = SimConfig.from_preset(preset, 2, record_snapshots=False)
    s = A.AdviseSettings(current=(parse_spec("round-robin"),), reference=AU.default_reference(preset, w),
                         loads=(1.0,), focus=1.0, seeds=1, points=2, cf_samples=0, confirm_vllm=30)
    doc = A.advise(w, cfg, s, source="api-160", workers=1)
    c = doc["confirm_vllm"]
    assert c["requests"] == 30 and [p["policy"] for p in c["policies"]] == ["lmetric", "round-robin"]
    k = doc["loads"][0]["value"]
    for p in c["policies"]:  # the fast column is the fast engine on the same 30 requests
        row = study_task(SimTask(scale_rate(select(w, count=30), k), cfg, parse_spec(p["policy"]), 0))
        assert p["fast_ttft_mean_s"] == pytest.approx(row["ttft_mean_s"])
        assert math.isfinite(p["vllm_ttft_mean_s"]) and p["vllm_ttft_mean_s"] > 0
    lm, rr = c["policies"]
    ch = c["changes"][0]
    assert ch["vllm_pct"] == pytest.approx(100 * (lm["vllm_ttft_mean_s"] - rr["vllm_ttft_mean_s"])
                                           / rr["vllm_ttft_mean_s"])


def test_app_reads_an_uploaded_report(advice_doc) -> None:
    from lmetric_theory.app.support import advice_from_upload, advice_rows
    from lmetric_theory.io.advise import advice_json

    doc = advice_from_upload("advice.json", advice_json(advice_doc).encode())
    assert doc["verdict"] == json.loads(json.dumps(advice_doc["verdict"]))
    rows = advice_rows(doc)
    assert len(rows) == len(doc["summary"])
    for r, s in zip(rows, doc["summary"], strict=True):
        assert r["TTFT mean (s)"] == pytest.approx(s["ttft_mean_s"]["mean"], rel=1e-3)
        assert r["TPOT mean (ms)"] == pytest.approx(1e3 * s["tpot_mean_s"]["mean"], rel=1e-3)
    for data, needle in ((b"\xff\xfe", "not UTF-8"), (b"{", "not JSON (line 1"),
                         (b'{"rows": []}', "not an advice document")):
        with pytest.raises(ValueError, match=re.escape(needle)):
            advice_from_upload("x.json", data)
    with pytest.raises(ValueError, match="exceeds the upload limit"):
        advice_from_upload("x.json", b" " * 2048, max_mb=0.001)
