"""The audit's router-state findings (``router_state`` in JSON, HTML, table) on arrays built
by hand: none without the fields, none on one replica with exact state, the three kinds on a
replicated stream. A replicated replay through the simulator comes with its replica
options (then ``audit_workload`` reports from the log's fields)."""

from __future__ import annotations

import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from lmetric_theory.audit import audit_snapshots
from lmetric_theory.core.definitions import ScoreDefinition
from lmetric_theory.detector import LinearReference
from lmetric_theory.experiments.router_state_log import router_state_from_log
from lmetric_theory.io.report import render_html, write_report

REF = LinearReference.fixed(100)


def _replicated(r: int, steps: int, seed: int):
    """``r`` replicas, each deciding once per step from its own 1/r share of the counters
    (the same state for all: they herd); the index over-predicts by 8 blocks when r > 1."""
    rng = np.random.default_rng(seed)
    n = 4
    out = {k: [] for k in ("t", "chosen", "replica", "P", "B", "TP", "TB", "U", "pred",
                           "actual")}
    for s in range(steps):
        q = rng.integers(0, 800, n) * r
        b = rng.integers(0, 6, n) * r
        u = rng.integers(0, 1500, n)
        P, B = q // r + u, b // r
        c = int(np.argmin(P * (B + 1)))
        for k in range(r):
            out["t"].append(float(s))
            out["chosen"].append(c)
            out["replica"].append(k)
            out["P"].append(P)
            out["B"].append(B)
            out["TP"].append(q + u)
            out["TB"].append(b)
            out["U"].append(u)
            out["actual"].append(320.0)
            out["pred"].append(320.0 + (128.0 if r > 1 else 0.0))
    return {k: np.array(v) for k, v in out.items()}


def _audit(a, **kw):
    return audit_snapshots(a["P"], a["B"], a["t"], reference=REF, uncached_tokens=a["U"],
                           chosen=a["chosen"], replica=a["replica"], true_prefill=a["TP"],
                           true_batch=a["TB"], predicted_cached=a["pred"],
                           actual_cached=a["actual"], **kw)


def test_no_fields_no_key():
    a = _replicated(1, 50, 0)
    res = audit_snapshots(a["P"], a["B"], a["t"], reference=REF)
    assert res.report.router_state is None
    assert "router_state" not in res.report.to_json()
    assert "Router state" not in render_html(res)


def test_one_replica_exact_state_reports_none():
    res = _audit(_replicated(1, 200, 1))
    assert res.report.router_state == ()
    doc = json.loads(json.dumps(res.report.to_json()))
    assert doc["router_state"] == []
    assert "No router-state finding" in render_html(res)


def test_replicated_stream_reports_the_three_kinds(tmp_path):
    res = _audit(_replicated(4, 100, 2))
    rs = res.report.router_state
    assert [e.kind for e in rs] == ["replica_skew", "herding", "stale_index"]
    by = {e.kind: e for e in rs}
    assert by["replica_skew"].mitigation == "counter_sync"
    assert by["replica_skew"].mitigation_value == 4
    assert by["herding"].mitigation == "random_near_ties"
    assert by["stale_index"].mitigation == "none"  # no TTL known: nothing to shorten
    assert all(e.first_decision >= 0 and e.severity == "warning" for e in rs)
    j, h = write_report(res, tmp_path / "out")
    doc = json.loads(j.read_text())
    assert [e["kind"] for e in doc["router_state"]] == ["replica_skew", "herding",
                                                       "stale_index"]
    assert set(doc["router_state"][0]) == {"kind", "severity", "message", "mitigation",
                                           "mitigation_value", "first_decision"}
    page = h.read_text()
    assert "<h2>Router state</h2>" in page and "counter_sync" in page


def test_cli_table_prints_router_state(capsys, monkeypatch):
    from lmetric_theory.cli import audit as cli_audit

    monkeypatch.setenv("COLUMNS", "200")
    cli_audit._print(_audit(_replicated(4, 60, 3)).report)
    out = capsys.readouterr().out
    assert "Router state" in out and "herding" in out and "counter_sync 4" in out
    cli_audit._print(_audit(_replicated(1, 60, 3)).report)
    assert "no replica skew, herding or stale index found" in capsys.readouterr().out


def _log(a, *, swap_fields=True):
    """A hand-built snapshot log with the contract's fields (paper P and B: router-queued
    tokens + new tokens, router in-flight)."""
    D, N = a["P"].shape
    req = np.arange(D)
    log = SimpleNamespace(
        request=req, time_s=a["t"], chosen=a["chosen"], input_tokens=a["U"].max(axis=1),
        hit_blocks=np.zeros((D, N), dtype=np.int64), block_size=16,
        router_queued=a["P"] - a["U"], router_inflight=a["B"],
    )
    if swap_fields:
        log.replica = a["replica"]
        log.true_batch = a["TB"]
        log.true_queued_tokens = a["TP"] - a["U"]
    return log


def test_router_state_from_a_hand_built_log():
    a = _replicated(4, 80, 4)
    # new tokens = input_tokens (no hits): make the request's own prefill the same on every
    # instance so the log's P is router_queued + input_tokens
    a["U"] = np.repeat(a["U"].max(axis=1, keepdims=True), a["U"].shape[1], axis=1)
    res = SimpleNamespace(predicted_cached_tokens=a["pred"], cached_tokens=a["actual"])
    score = ScoreDefinition()
    assert router_state_from_log(_log(a, swap_fields=False), res, score) is None
    kinds = [e.kind for e in router_state_from_log(_log(a), res, score)]
    assert kinds == ["replica_skew", "herding", "stale_index"]
    one = _replicated(1, 80, 4)
    one["U"] = np.repeat(one["U"].max(axis=1, keepdims=True), one["U"].shape[1], axis=1)
    res1 = SimpleNamespace(predicted_cached_tokens=one["pred"], cached_tokens=one["actual"])
    assert router_state_from_log(_log(one), res1, score) == ()
    # never-admitted requests (cached_tokens -1) are not compared
    res1.cached_tokens = np.full(one["actual"].shape, -1.0)
    assert router_state_from_log(_log(one), res1, score) == ()


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return next((p for p in ("/usr/bin/chromium",) if os.access(p, os.X_OK)), None)


@pytest.mark.browser
def test_html_router_state_table_in_chromium(tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium binary found (install the Debian package 'chromium')")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="the playwright Python package is not installed")
    _, h = write_report(_audit(_replicated(4, 60, 5)), tmp_path / "out")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, headless=True,
                                     args=["--no-sandbox", "--disable-gpu"])
        try:
            pg = browser.new_page(viewport={"width": 1400, "height": 1000})
            pg.goto(h.as_uri())
            head = pg.get_by_role("heading", name="Router state")
            assert head.count() == 1
            table = head.locator("xpath=following-sibling::table[1]")
            rows = table.locator("tr")
            assert rows.count() == 4  # header + three findings
            text = table.inner_text()
            for needle in ("replica_skew", "herding", "stale_index", "counter_sync",
                           "random_near_ties"):
                assert needle in text
        finally:
            browser.close()


def _jsonl(tmp_path, a, n_lines=None, override=None):
    override = override or {}
    lines = []
    for d in range(a["t"].size if n_lines is None else n_lines):
        obj = {"prefill_tokens": a["P"][d].tolist(), "batch_size": a["B"][d].tolist(),
               "time_s": float(a["t"][d]), "uncached_tokens": a["U"][d].tolist(),
               "replica": int(a["replica"][d]), "chosen": int(a["chosen"][d]),
               "true_prefill_tokens": a["TP"][d].tolist(),
               "true_batch_size": a["TB"][d].tolist(),
               "predicted_cached_tokens": float(a["pred"][d]),
               "cached_tokens": float(a["actual"][d])}
        obj.update(override.get(d, {}))
        lines.append(json.dumps(obj))
    p = tmp_path / "snaps.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_snapshot_file_with_router_state_fields(tmp_path, capsys):
    from lmetric_theory.audit import audit_snapshot_file
    from lmetric_theory.audit.snapshots import load_snapshots
    from lmetric_theory.cli import main

    a = _replicated(4, 60, 6)
    p = _jsonl(tmp_path, a)
    b = load_snapshots(p)
    assert set(b.router_state) == {"replica", "chosen", "true_prefill_tokens",
                                   "true_batch_size", "predicted_cached_tokens",
                                   "cached_tokens"}
    np.testing.assert_array_equal(b.router_state["true_batch_size"], a["TB"])
    from_file = audit_snapshot_file(p, REF).report.router_state
    assert from_file == _audit(a).report.router_state
    assert [e.kind for e in from_file] == ["replica_skew", "herding", "stale_index"]
    assert main(["audit", "--snapshots", str(p), "--lambda", "100", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [e["kind"] for e in doc["router_state"]] == ["replica_skew", "herding",
                                                       "stale_index"]
    # a file without the fields: no router_state key (as before)
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"prefill_tokens": [1, 2], "batch_size": [0, 1]}) + "\n")
    assert load_snapshots(plain).router_state == {}
    assert main(["audit", "--snapshots", str(plain), "--lambda", "100", "--json"]) == 0
    assert "router_state" not in json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("override,field", [
    ({"replica": -1}, "replica"), ({"chosen": 4}, "chosen"),
    ({"true_batch_size": [1, 2]}, "true_batch_size"),
    ({"true_prefill_tokens": [1, 2, -3, 4]}, "true_prefill_tokens"),
    ({"predicted_cached_tokens": "many"}, "predicted_cached_tokens"),
])
def test_bad_router_state_field_names_file_line_field(tmp_path, capsys, override, field):
    from lmetric_theory.cli import main

    p = _jsonl(tmp_path, _replicated(2, 3, 7), override={2: override})
    out = tmp_path / "o"
    assert main(["audit", "--snapshots", str(p), "--lambda", "10", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(p) in err and "line 3" in err and f"{field}:" in err
    assert not out.exists()  # nothing half written
