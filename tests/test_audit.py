"""Tests for the audit library, snapshot files, the report writer and the ``audit`` command."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from lmetric_theory.audit import (
    audit_snapshot_file,
    audit_snapshots,
    audit_workload,
    default_reference,
    load_snapshots,
)
from lmetric_theory.cli import main
from lmetric_theory.detector import Detector, LinearReference
from lmetric_theory.io.report import atomic_write, atomic_write_text, write_report
from lmetric_theory.sim import SimConfig, Simulator, load_preset
from lmetric_theory.workload import default_workload, select

REPORT_KEYS = {"decisions", "disagreements", "disagreement_rate", "fragile", "degenerate",
               "regret_tokens", "lam_reference", "lam_eff", "lam_eff_in_band", "worst",
               "mitigations", "config", "trace", "skipped_lines"}
#: The former spellings, still written beside the keys above (documented aliases).
ALIASES = {"lambda_reference": "lam_reference", "lambda_eff": "lam_eff",
           "lambda_eff_in_band": "lam_eff_in_band"}


@pytest.fixture(scope="module")
def small():
    return select(default_workload(0), count=1500)


@pytest.fixture(scope="module")
def small_audit(small):
    ref = LinearReference.band(128, 1024, lam=512)
    return audit_workload(small, instances=4, reference=ref, top=5, preset="h100-llama3-8b")


# ----------------------------------------------------------------------- library: replay


def test_report_numbers_equal_an_independent_check_of_the_same_replay(small, small_audit):
    """Replay the same workload independently, build P and B by hand, check, compare."""
    res = small_audit
    cfg = SimConfig.from_preset(load_preset("h100-llama3-8b"), 4)
    log = Simulator(small, cfg, "lmetric", seed=0).run().snapshots
    # The paper's definitions, by hand: router-queued tokens + new tokens (hits in whole
    # blocks of the engine's block size), router-counted in-flight requests.
    T = log.input_tokens.astype(np.int64)[:, None]
    new = np.maximum(T - log.hit_blocks.astype(np.int64) * int(log.meta["block_size"]), 0)
    P = log.router_queued.astype(np.int64) + new
    B = log.router_inflight.astype(np.int64)
    det = Detector(LinearReference.band(128, 1024, lam=512), 0, 1)
    v = det.check_many(P, B)
    rep = res.report
    assert rep.decisions == len(small) == len(v)
    assert rep.disagreements == int(v.disagrees.sum())
    assert rep.disagreement_rate == pytest.approx(v.disagrees.mean())
    assert rep.fragile == int(v.fragile.sum())
    assert rep.degenerate == {k: int(v.mask(k).sum())
                              for k in ("zero_prefill", "idle_tie", "exact_tie")}
    assert rep.regret_tokens["mean"] == pytest.approx(v.regret_tokens.mean())
    assert rep.regret_tokens["max"] == pytest.approx(v.regret_tokens.max())
    assert rep.regret_tokens["p99"] == pytest.approx(np.percentile(v.regret_tokens, 99))
    le = v.lam_eff[np.isfinite(v.lam_eff)]
    assert rep.lam_eff["p50"] == pytest.approx(np.percentile(le, 50))
    np.testing.assert_array_equal(res.time_s, log.time_s)
    # The product's choice is where the replay actually sent each request.
    np.testing.assert_array_equal(res.verdicts.product_choice, log.chosen)
    assert rep.config["p_definition"] == "router-queued+new" and rep.config["instances"] == 4
    assert rep.lam_reference["lam"] == 512 and rep.lam_reference["source"] == "band"
    doc = rep.to_json()
    json.dumps(doc, allow_nan=False)  # strict JSON
    # the former spellings are aliases of the same values, in the JSON only
    assert all(doc[old] == doc[new] for old, new in ALIASES.items())
    assert all(w["lambda_eff"] == w["lam_eff"] and w["lambda_star"] == w["lam_star"]
               for w in doc["worst"])
    assert not any(k.startswith("lambda") for w in rep.worst for k in w)


def test_worst_decisions_are_sorted_and_hand_checkable(small_audit):
    rep, v = small_audit.report, small_audit.verdicts
    worst = rep.worst
    assert len(worst) == min(5, rep.disagreements) > 0
    regrets = [w["regret_tokens"] for w in worst]
    assert regrets == sorted(regrets, reverse=True)
    assert regrets[0] == pytest.approx(rep.regret_tokens["max"])
    for w in worst:
        P, B, i, j = w["P"], w["B"], w["product_choice"], w["linear_choice"]
        assert w["regret_tokens"] == pytest.approx((P[i] - P[j]) + 512 * (B[i] - B[j]))
        # i minimises the product, j the linear score, exactly
        assert min(p * (b + 1) for p, b in zip(P, B, strict=True)) == P[i] * (B[i] + 1)
        assert min(p + 512 * b for p, b in zip(P, B, strict=True)) == P[j] + 512 * B[j]
        assert "disagreement" in [f["kind"] for f in w["findings"]]
        assert v.disagrees[w["decision"]]


def test_mitigations_ranked_with_evidence(small_audit):
    rep, v = small_audit.report, small_audit.verdicts
    mits = rep.mitigations
    fixes = [m["fixes"] for m in mits]
    assert fixes == sorted(fixes, reverse=True)
    fb = next(m for m in mits if m["mitigation"] == "fallback_reference")
    # falling back to the reference fixes every disagreement and agrees on every flagged one
    assert fb["fixes"] == rep.disagreements and fb["agree_share"] == 1.0
    assert fb["breaks"] == 0 and fb["flagged"] == int(v.flagged.sum())
    F = v.flagged
    assert fb["mean_regret_removed_tokens"] == pytest.approx(v.regret_tokens[F].mean())


def test_queued_definition_and_offsets_are_used(small):
    ref = LinearReference.fixed(256)
    res = audit_workload(small, instances=4, reference=ref, p_definition="queued+uncached",
                         b_definition="in-flight", prefill_offset=16, batch_offset=2, top=0,
                         preset="h100-llama3-8b")
    cfg = SimConfig.from_preset(load_preset("h100-llama3-8b"), 4)
    spec = "lmetric:variant=paper,P=queued+uncached,B=in-flight,p0=16,b0=2"
    log = Simulator(small, cfg, spec, seed=0).run().snapshots
    P = log.uncached.astype(np.int64) + log.queued
    B = log.running.astype(np.int64) + log.waiting
    v = Detector(ref, 16, 2).check_many(P, B)
    assert res.report.disagreements == int(v.disagrees.sum())
    np.testing.assert_array_equal(res.verdicts.product_choice, log.chosen)
    assert res.report.config["policy"] == spec and res.report.worst == ()


@pytest.mark.parametrize("kw, needle", [
    ({"instances": 0}, "instances"),
    ({"p_definition": "cached"}, "p_definition"),
    ({"prefill_offset": -1}, "prefill_offset"),
])
def test_bad_settings_raise(small, kw, needle):
    args = {"instances": 2, "reference": LinearReference.fixed(100), **kw}
    with pytest.raises(ValueError, match=needle):
        audit_workload(select(small, count=10), **args)


def test_default_reference_states_its_derivation():
    w = select(default_workload(0), count=500)
    ref = default_reference("h100-llama3-8b", w)
    lat = load_preset("h100-llama3-8b").latency
    out = float(np.mean(w.output_tokens))
    ctx = float(np.mean(w.input_tokens)) + out / 2
    assert ref.lam == pytest.approx(out * (lat.c_dec + lat.c_kv * ctx) / lat.c_pf)
    assert ref.lam_lo == pytest.approx(ref.lam / 2) and ref.lam_hi == pytest.approx(ref.lam * 2)
    assert ref.source == "latency_model" and "h100-llama3-8b" in ref.provenance


# -------------------------------------------------------------------- snapshot files


def _write(tmp_path: Path, lines: list[str], name: str = "snaps.jsonl") -> Path:
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return p


GOOD = [
    '{"prefill_tokens": [100, 0, 50], "batch_size": [1, 4, 2], "time_s": 0.5, '
    '"instance_ids": ["a", "b", "c"]}',
    '{"prefill_tokens": [10, 900, 20], "batch_size": [9, 0, 7], "time_s": 1.0}',
    '',
    '{"prefill_tokens": [300, 300, 30], "batch_size": [0, 0, 1], "time_s": 2.0}',
]


def test_snapshot_file_good_lines_match_direct_check(tmp_path):
    p = _write(tmp_path, GOOD)
    b = load_snapshots(p)
    assert len(b) == 3 and b.lines == [1, 2, 4] and b.skipped_lines == 0
    assert b.instance_ids[0] == ("a", "b", "c") and b.instance_ids[1] is None
    ref = LinearReference.fixed(100)
    res = audit_snapshot_file(p, ref)
    v = Detector(ref).check_many(b.prefill_tokens, b.batch_size)
    assert res.report.disagreements == int(v.disagrees.sum())
    np.testing.assert_array_equal(res.time_s, [0.5, 1.0, 2.0])
    assert res.report.skipped_lines == 0 and res.report.trace["requests"] == 3
    # decision 1: product 10*10=100, 900*1=900, 20*8=160 -> #0; linear(100): 910, 900, 720
    # -> #2: a disagreement with regret (10 - 20) + 100*(9 - 7) = 190
    assert res.verdicts.product_choice[1] == 0 and res.verdicts.linear_choice[1] == 2
    assert res.verdicts.regret_tokens[1] == pytest.approx(190.0)
    w = next(x for x in res.report.worst if x["decision"] == 1)
    assert w["line"] == 2


@pytest.mark.parametrize("bad, field", [
    ('{"prefill_tokens": [1, -2, 3], "batch_size": [1, 1, 1]}', "prefill_tokens"),
    ('{"prefill_tokens": [1, 2, 3], "batch_size": [1, 1]}', "batch_size"),
    ('{"prefill_tokens": [1, 2, 3]}', "batch_size"),
    ('{"prefill_tokens": [1, 2, 3], "batch_size": [1, 1, 1], "colour": 1}', "colour"),
    ('{"prefill_tokens": [1, 2], "batch_size": [1, 1]}', "prefill_tokens"),  # N differs
    ('{"prefill_tokens": [1, 2, 3], "batch_size": [1, 1, 1], "time_s": "x"}', "time_s"),
    ('{"prefill_tokens": [1, 2, 3', "not valid JSON"),
])
def test_snapshot_bad_line_names_file_line_and_field(tmp_path, bad, field):
    p = _write(tmp_path, [GOOD[0], bad, GOOD[1]])
    with pytest.raises(ValueError) as ei:
        load_snapshots(p)
    msg = str(ei.value)
    assert str(p) in msg and "line 2" in msg and field in msg
    b = load_snapshots(p, skip_bad_lines=True)
    assert len(b) == 2 and b.skipped_lines == 1 and b.lines == [1, 3]


def test_skipped_lines_reach_the_report(tmp_path):
    p = _write(tmp_path, [GOOD[0], '{"nope": 1}', GOOD[1], "[1, 2]"])
    res = audit_snapshot_file(p, LinearReference.fixed(10), skip_bad_lines=True)
    assert res.report.skipped_lines == 2 == res.report.trace["skipped_lines"]
    assert len(res.report.trace["skipped_reasons"]) == 2


def test_empty_snapshot_file_is_an_error(tmp_path):
    p = _write(tmp_path, ["", ""])
    with pytest.raises(ValueError, match="no decisions"):
        load_snapshots(p)


def test_audit_snapshots_without_times_uses_decision_index():
    res = audit_snapshots([[5, 1], [0, 3]], [[0, 3], [2, 2]], None, ["x", "y"],
                          LinearReference.fixed(4))
    assert res.report.time_axis == "decision index"
    np.testing.assert_array_equal(res.time_s, [0.0, 1.0])
    with pytest.raises(ValueError, match="times"):
        audit_snapshots([[5, 1]], [[0, 3]], [1.0, 2.0], None, LinearReference.fixed(4))
    with pytest.raises(ValueError, match="reference"):
        audit_snapshots([[5, 1]], [[0, 3]])


# ------------------------------------------------------------------------ report files


def test_write_report_json_and_self_contained_html(tmp_path, small_audit):
    j, h = write_report(small_audit, tmp_path / "out")
    doc = json.loads(j.read_text())
    assert REPORT_KEYS | set(ALIASES) <= set(doc)
    assert doc == json.loads(json.dumps(small_audit.report.to_json()))
    page = h.read_text()
    assert page.startswith("<!DOCTYPE html>") and "Disagreement rate over time" in page
    assert "<script src=" not in page  # plotly.js inline: viewable offline
    assert page.count("Plotly.newPlot") == 3
    assert sorted(os.listdir(tmp_path / "out")) == ["audit.html", "audit.json"]


def test_atomic_write_leaves_no_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "r.json"

    def half(f):
        f.write(b'{"decisions": ')
        raise KeyboardInterrupt  # interrupted mid-way

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half)
    assert os.listdir(tmp_path) == []  # neither target nor temporary file
    atomic_write_text(target, '{"a": 1}')
    with pytest.raises(RuntimeError):
        atomic_write(target, lambda f: (f.write(b"{"), (_ for _ in ()).throw(RuntimeError()))[1])
    assert target.read_text() == '{"a": 1}' and os.listdir(tmp_path) == ["r.json"]


# -------------------------------------------------------------------------------- CLI


def test_cli_json_keys_on_a_snapshot_file(tmp_path, capsys):
    p = _write(tmp_path, GOOD + ["{bad"])
    assert main(["audit", "--snapshots", str(p), "--lambda", "100", "--json",
                 "--skip-bad-lines"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert REPORT_KEYS | set(ALIASES) <= set(doc) and "hotspots" not in doc
    assert doc["decisions"] == 3 and doc["skipped_lines"] == 1
    assert set(doc["degenerate"]) == {"zero_prefill", "idle_tie", "exact_tie"}
    assert set(doc["regret_tokens"]) >= {"mean", "p50", "p99", "max"}
    assert set(doc["lam_eff"]) == {"p1", "p50", "p99"} and doc["lambda_eff"] == doc["lam_eff"]


def test_cli_out_writes_json_and_html(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["audit", "--count", "400", "--instances", "4", "--lambda-band", "100,400",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "disagreements" in text and "audit.html" in text
    doc = json.loads((out / "audit.json").read_text())
    assert doc["decisions"] == 400 and doc["lam_reference"]["lam"] == 200  # geometric centre of 100..400
    assert (out / "audit.html").stat().st_size > 100_000


def test_cli_default_reference_is_stated(capsys):
    assert main(["audit", "--count", "300", "--instances", "2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    lr = doc["lam_reference"]
    assert lr["source"] == "latency_model" and lr["provenance"].startswith("default:")
    assert doc["trace"]["source"] == "synthetic default"


@pytest.mark.parametrize("argv, needle", [
    (["--lambda", "1", "--lambda-band", "1,2"], "not allowed with"),
    (["--lambda-band", "5,1"], "HI must be >= LO"),
    (["--lambda", "-1"], "negative"),
    (["--instances", "0"], "--instances"),
    (["--preset", "nope"], "nope"),
    (["missing.jsonl"], "missing.jsonl"),
])
def test_cli_usage_errors_exit_2(argv, needle, capsys):
    try:
        rc = main(["audit", *argv])
    except SystemExit as exc:  # argparse group conflicts
        rc = exc.code
    assert rc == 2
    assert needle in capsys.readouterr().err


def test_cli_bad_snapshot_line_exit_2(tmp_path, capsys):
    p = _write(tmp_path, [GOOD[0], '{"prefill_tokens": [1, 2, NaN], "batch_size": [1, 1, 1]}'])
    assert main(["audit", "--snapshots", str(p), "--lambda", "10"]) == 2
    err = capsys.readouterr().err
    assert str(p) in err and "line 2" in err and "prefill_tokens" in err


# ----------------------------------------------------------------------- shared trace


def test_shared_trace_audit(mooncake_path, capsys):
    assert main(["audit", str(mooncake_path), "--instances", "8", "--lambda", "512",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["decisions"] == doc["trace"]["requests"] > 10_000
    assert doc["trace"]["skipped_lines"] == 0 and doc["config"]["instances"] == 8
    assert 0 <= doc["disagreement_rate"] <= 1


def test_loader_fast_path_equals_per_line_snapshots(tmp_path):
    """Plain integer lines take a fast path; the result must equal Snapshot.from_dict."""
    from lmetric_theory.detector import Snapshot

    rng = np.random.default_rng(3)
    lines = []
    for k in range(200):
        obj = {"prefill_tokens": rng.integers(0, 5000, 4).tolist(),
               "batch_size": rng.integers(0, 30, 4).tolist()}
        if k % 3 == 0:
            obj["time_s"] = k * 0.5
        if k % 5 == 0:
            obj["waiting"] = [0, 1, 2, 3]  # slow path
        if k % 7 == 0:
            obj["prefill_tokens"][0] = 2.5  # float: slow path
        lines.append(json.dumps(obj))
    p = _write(tmp_path, lines)
    b = load_snapshots(p)
    for k, line in enumerate(lines):
        s = Snapshot.from_dict(json.loads(line))
        np.testing.assert_array_equal(b.prefill_tokens[k], s.prefill_tokens)
        np.testing.assert_array_equal(b.batch_size[k], s.batch_size)
        assert (np.isnan(b.time_s[k]) if s.time_s is None else b.time_s[k] == s.time_s)
    assert b.prefill_tokens.dtype == np.float64 and b.uncached_tokens is None


def test_tune_without_workload_falls_back_and_says_so():
    from lmetric_theory.audit import tuned_reference

    ref = tuned_reference(None, instances=4)
    assert ref.source == "latency_model" and "--tune requested" in ref.provenance


def test_cli_engine_vllm_is_refused_with_the_reason(capsys) -> None:
    from lmetric_theory.cli import main

    assert main(["audit", "--engine", "vllm"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "snapshot log" in err[0] and "simulate --engine vllm" in err[0]
