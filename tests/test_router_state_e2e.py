"""End to end: ``lmetric-theory audit TRACE --router-replicas R --kv-event-lag S`` replays a
planted trace on the fast engine with the simulator's router-state options and reports the
detector's router-state findings from the replay's own log (``SimResult.replica``,
``predicted_cached_tokens``, the snapshot's ``true_batch`` / ``true_queued_tokens``), in
JSON, the terminal table and ``audit.html`` (checked in headless Chromium).

The planted trace: every 2 s a burst of 8 requests with fresh 6-block prefixes arrives at
one instant, and 0.3 s later 8 follow-ups each extend one of them by a block. The heads'
prefill ends before the follow-ups arrive, so the follow-ups can hit; a KV event lag of
0.5 s hides those blocks from the index (``stale_index``); replicas with their own counters
decide the burst from the same state (``herding``) and count a share of the batch
(``replica_skew``). One router with exact state reports none.
"""

from __future__ import annotations

import json

import pytest
from test_audit_router_state import _chromium

from lmetric_theory.cli import main

BLOCK = 512


def _trace(path, bursts: int = 40):
    lines, h = [], 0
    for k in range(bursts):
        t = k * 2000  # ms
        heads = []
        for _ in range(8):
            ids = list(range(h, h + 6))
            h += 6
            heads.append(ids)
            lines.append({"timestamp": t, "input_length": 6 * BLOCK, "output_length": 20,
                          "hash_ids": ids})
        for ids in heads:
            lines.append({"timestamp": t + 300, "input_length": 7 * BLOCK, "output_length": 20,
                          "hash_ids": ids + [h]})
            h += 1
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    return _trace(tmp_path_factory.mktemp("rs") / "burst.jsonl")


def _audit_json(capsys, trace, *opts) -> dict:
    assert main(["audit", str(trace), "--instances", "4", "--json", *opts]) == 0
    return json.loads(capsys.readouterr().out)


def _kinds(doc) -> list[str]:
    return [e["kind"] for e in doc["router_state"]]


def test_one_exact_router_reports_none(capsys, trace):
    doc = _audit_json(capsys, trace, "--router-replicas", "1")
    assert doc["router_state"] == []


def test_lag_alone_is_a_stale_index(capsys, trace):
    """One router, 0.5 s KV event lag: the follow-ups' hits are hidden (predicted 0, actual
    6 blocks); no replica to skew or herd."""
    doc = _audit_json(capsys, trace, "--router-replicas", "1", "--kv-event-lag", "0.5")
    assert _kinds(doc) == ["stale_index"]
    e = doc["router_state"][0]
    assert "0 over-predicted" in e["message"] and "mean 6 blocks" in e["message"]


def test_four_replicas_skew_and_herd(capsys, trace):
    doc = _audit_json(capsys, trace, "--router-replicas", "4", "--kv-event-lag", "0.5")
    assert _kinds(doc) == ["replica_skew", "herding"]
    by = {e["kind"]: e for e in doc["router_state"]}
    assert by["replica_skew"]["mitigation"] == "counter_sync"
    assert by["replica_skew"]["mitigation_value"] == 4
    assert by["herding"]["mitigation"] == "random_near_ties"
    assert "0.5 s lag window" in by["herding"]["message"]


def test_two_replicas_all_three_json_table_html(capsys, trace, tmp_path, monkeypatch):
    opts = ["--router-replicas", "2", "--kv-event-lag", "0.5"]
    doc = _audit_json(capsys, trace, *opts)
    assert _kinds(doc) == ["replica_skew", "herding", "stale_index"]
    assert {e["mitigation"] for e in doc["router_state"]} == {"counter_sync",
                                                              "random_near_ties", "none"}
    monkeypatch.setenv("COLUMNS", "220")
    out = tmp_path / "out"
    assert main(["audit", str(trace), "--instances", "4", *opts, "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "Router state" in table
    for k in ("replica_skew", "herding", "stale_index", "counter_sync 2"):
        assert k in table
    written = json.loads((out / "audit.json").read_text())
    assert written["router_state"] == doc["router_state"]
    page = (out / "audit.html").read_text()
    assert "<h2>Router state</h2>" in page


@pytest.mark.browser
def test_replicated_replay_html_in_chromium(trace, tmp_path, capsys):
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium binary found (install the Debian package 'chromium')")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="the playwright Python package is not installed")
    out = tmp_path / "out"
    assert main(["audit", str(trace), "--instances", "4", "--router-replicas", "2",
                 "--kv-event-lag", "0.5", "--out", str(out)]) == 0
    capsys.readouterr()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, headless=True,
                                     args=["--no-sandbox", "--disable-gpu"])
        try:
            pg = browser.new_page(viewport={"width": 1400, "height": 1000})
            pg.goto((out / "audit.html").as_uri())
            head = pg.get_by_role("heading", name="Router state")
            assert head.count() == 1
            rows = head.locator("xpath=following-sibling::table[1]").locator("tr")
            assert rows.count() == 4  # header + three findings
            text = head.locator("xpath=following-sibling::table[1]").inner_text()
            for needle in ("replica_skew", "herding", "stale_index", "counter_sync",
                           "random_near_ties"):
                assert needle in text
        finally:
            browser.close()
