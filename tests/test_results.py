"""``lmetric-theory results``: rows per policy and load level, JSON and Markdown, usage errors."""

from __future__ import annotations

import json

from lmetric_theory.cli import main
from lmetric_theory.cli.results import POLICIES
from lmetric_theory.sim import SimConfig, Simulator, load_preset
from lmetric_theory.workload import default_workload, scale_rate, select

ARGS = ["results", "--count", "150", "--instances", "3", "--points", "3", "--workers", "1"]


def test_json_rows_match_direct_runs(capsys):
    assert main([*ARGS, "--rate-scales", "1,2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = doc["rows"]
    assert [(r["rate_scale"], r["name"]) for r in rows] == [(k, p) for k in (1.0, 2.0) for p in POLICIES]
    w = scale_rate(select(default_workload(seed=0), count=150), 2.0)
    cfg = SimConfig.from_preset(load_preset("h100-llama3-8b"), 3, record_snapshots=False)
    rr = Simulator(w, cfg, "round-robin").run().summary()
    assert rows[-1]["name"] == "round-robin" and rows[-1]["ttft_mean_s"] == rr["ttft_mean_s"]
    lam = doc["tuned_lam"]["2.0"]
    tuned = next(r for r in rows if r["rate_scale"] == 2.0 and r["name"] == "tuned-linear")
    assert tuned["policy"] == f"linear:lam={lam!r}"


def test_markdown(capsys):
    assert main([*ARGS, "--rate-scales", "1", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert out.count("| lmetric |") == 1 and "|---|---:|" in out and "tuned-linear (lam=" in out


def test_usage_errors(capsys):
    assert main(["results", "--rate-scales", "1,x"]) == 2
    assert main(["results", "--rate-scales", "0"]) == 2
    assert main(["results", "--instances", "0"]) == 2
    assert "error" in capsys.readouterr().err
