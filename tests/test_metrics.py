"""The deployers' metrics (``sim/metrics.py``): every metric on a hand-built result, the
weighted ITL percentiles against ``np.percentile``, ``Slo`` parsing, Jain's index, and the
metrics in ``simulate --json`` and the per-request Parquet."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmetric_theory.sim.config import SimResult
from lmetric_theory.sim.metrics import Slo, compute_metrics, jain_index, weighted_percentile

NAN = math.nan


def _result(**over) -> SimResult:
    """Three requests on two instances; request 2 is routed to instance 0 but not admitted.

    ==  =======  ====  ====  ===  =====  ======  ========  =======
    i   arrival  ttft  e2e   out  input  cached  instance  session
    ==  =======  ====  ====  ===  =====  ======  ========  =======
    0   0        0.5   2.5   5    100    20      0         0
    1   1        1.0   4.0   1    200    0       1         0
    2   2        NaN   NaN   3    50     -1      0         1
    ==  =======  ====  ====  ===  =====  ======  ========  =======

    Request 0's four gaps are 0.4, 0.4, 0.6, 0.6 s (sum 2.0 = e2e - ttft).
    """
    arrival = np.array([0.0, 1.0, 2.0])
    ttft = np.array([0.5, 1.0, NAN])
    e2e = np.array([2.5, 4.0, NAN])
    kw = dict(
        arrival_s=arrival, instance=np.array([0, 1, 0], dtype=np.int32),
        input_tokens=np.array([100, 200, 50], dtype=np.int64),
        output_tokens=np.array([5, 1, 3], dtype=np.int64),
        cached_tokens=np.array([20, 0, -1], dtype=np.int64),
        ttft_s=ttft, tpot_s=np.array([0.5, NAN, NAN]), e2e_s=e2e, snapshots=None,
        iterations=0, events=0, peak_kv_tokens=np.zeros(2, dtype=np.int64),
        prefill_tokens_computed=np.array([80, 200], dtype=np.int64),
        output_tokens_produced=np.array([5, 1], dtype=np.int64), end_time_s=5.0, policy="x",
        first_token_s=arrival + ttft, finish_s=arrival + e2e,
        session=np.array([0, 0, 1], dtype=np.int64), turn=np.array([0, 1, 0], dtype=np.int64),
        itl_gap_s=np.array([0.6, 0.4]), itl_count=np.array([2, 2], dtype=np.int64),
        batch_integral=np.array([3.0, 4.0]), busy_s=np.array([2.0, 4.0]),
    )
    kw.update(over)
    return SimResult(**kw)


def test_every_metric_of_a_hand_built_result() -> None:
    m = compute_metrics(_result())
    assert (m.requests, m.completed) == (3, 2)
    # duration: first arrival (0) to last finish (1 + 4 = 5)
    assert (m.first_arrival_s, m.last_finish_s, m.duration_s) == (0.0, 5.0, 5.0)
    # TTFT over the finished [0.5, 1.0], linear interpolation at (n - 1) q / 100
    assert m.ttft_mean_s == pytest.approx(0.75)
    assert (m.ttft_p50_s, m.ttft_p90_s, m.ttft_p95_s, m.ttft_p99_s) == pytest.approx(
        (0.75, 0.95, 0.975, 0.995))
    # ITL: [0.4, 0.4, 0.6, 0.6]; p50 at h = 1.5 -> 0.5; p95 at 2.85 and p99 at 2.97 -> 0.6
    assert (m.itl_p50_s, m.itl_p95_s, m.itl_p99_s) == pytest.approx((0.5, 0.6, 0.6))
    assert m.itl_mean_s == pytest.approx(0.5) and m.itl_gaps == 4
    # TPOT only over finished requests with n_out > 1: request 0's (2.5 - 0.5) / 4
    assert (m.tpot_mean_s, m.tpot_p99_s) == pytest.approx((0.5, 0.5))
    assert (m.e2e_p50_s, m.e2e_p99_s) == pytest.approx((3.25, 2.5 + 0.99 * 1.5))
    # 2 requests and 5 + 1 output tokens over 5 s
    assert m.request_throughput_rps == pytest.approx(0.4)
    assert m.output_throughput_tok_s == pytest.approx(1.2)
    # cached 20 of the admitted requests' 300 prompt tokens
    assert m.prefix_hit_rate == pytest.approx(20 / 300)
    assert m.instance_requests == (2, 1) and m.instance_prefill_tokens == (80, 200)
    assert m.instance_mean_batch_busy == pytest.approx((1.5, 1.0))
    assert m.instance_mean_batch == pytest.approx((0.6, 0.8))
    assert m.requests_max_over_mean == pytest.approx(2 / 1.5)
    assert m.requests_jain == pytest.approx(9 / (2 * 5))
    assert m.prefill_max_over_mean == pytest.approx(200 / 140)
    assert m.prefill_jain == pytest.approx(280**2 / (2 * (80**2 + 200**2)))
    # no SLO: nothing about goodput
    assert m.slo is None and m.good_requests == -1 and math.isnan(m.goodput_rps)
    # session 0 finished (0 -> 5 s, waits 0.5 + 1.0); session 1 did not and is left out
    assert m.sessions == 1
    assert (m.session_duration_p50_s, m.session_duration_p99_s) == (5.0, 5.0)
    assert (m.session_wait_p50_s, m.session_wait_p99_s) == pytest.approx((1.5, 1.5))


@pytest.mark.parametrize(("text", "good"), [
    ("ttft=0.8", 1),          # request 1's TTFT 1.0 > 0.8
    ("itl=0.4", 1),           # request 0's TPOT 0.5 > 0.4; request 1 has one token: met
    ("itl=0.5", 2),           # bounds are inclusive
    ("e2e=3", 1),             # request 1's 4.0 > 3
    ("ttft=2,itl=0.4,e2e=3", 0),
    ("ttft=2,e2e=30", 2),     # the unfinished request never counts
])
def test_slo_attainment_and_goodput(text: str, good: int) -> None:
    m = compute_metrics(_result(), Slo.parse(text))
    assert m.good_requests == good
    assert m.slo_attainment == pytest.approx(good / 2)  # of the finished requests
    assert m.goodput_rps == pytest.approx(good / 5.0)   # per second of duration
    doc = m.to_json()
    assert doc["slo"] == Slo.parse(text).to_json() and doc["good_requests"] == good


def test_sessions_from_the_workload_and_derived_times() -> None:
    """A result without the optional fields: times from arrival + ttft/e2e, sessions from
    the workload, ITL and batch entries empty."""
    from types import SimpleNamespace

    r = _result(first_token_s=None, finish_s=None, session=None, turn=None, itl_gap_s=None,
                itl_count=None, batch_integral=None, busy_s=None)
    m = compute_metrics(r)
    assert m.sessions == 0 and m.duration_s == 5.0 and m.itl_gaps == -1
    assert math.isnan(m.itl_p99_s) and m.instance_mean_batch == ()
    doc = m.to_json()
    assert doc["itl_s"]["gaps"] is None and doc["per_instance"]["mean_batch"] is None
    w = SimpleNamespace(sessions=SimpleNamespace(session=np.array([0, 0, 1])))
    assert compute_metrics(r, workload=w).session_wait_p50_s == pytest.approx(1.5)


def test_metrics_json_keys_are_stable() -> None:
    doc = compute_metrics(_result(), Slo(ttft_s=1.0)).to_json()
    assert list(doc) == ["requests", "completed", "duration_s", "first_arrival_s",
                         "last_finish_s", "ttft_s", "itl_s", "tpot_s", "e2e_s",
                         "request_throughput_rps", "output_throughput_tok_s", "slo",
                         "good_requests", "slo_attainment", "goodput_rps", "prefix_hit_rate",
                         "per_instance", "load_spread", "sessions"]
    assert list(doc["ttft_s"]) == ["mean", "p50", "p90", "p95", "p99"]
    assert list(doc["itl_s"]) == ["mean", "p50", "p95", "p99", "gaps"]
    assert list(doc["sessions"]) == ["count", "duration_s", "wait_s"]


def test_nothing_finished_gives_nan_not_errors() -> None:
    nan3 = np.full(3, NAN)
    m = compute_metrics(_result(ttft_s=nan3, e2e_s=nan3, tpot_s=nan3, finish_s=nan3,
                                itl_gap_s=np.zeros(0), itl_count=np.zeros(0, np.int64)),
                        Slo(e2e_s=1.0))
    assert m.completed == 0 and math.isnan(m.duration_s) and math.isnan(m.ttft_p99_s)
    assert math.isnan(m.slo_attainment) and math.isnan(m.itl_p50_s) and m.itl_gaps == 0
    assert m.sessions == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 10, allow_nan=False, width=32), st.integers(0, 6)),
                min_size=1, max_size=30),
       st.lists(st.floats(0, 100), min_size=1, max_size=5))
def test_weighted_percentile_equals_expanded(pairs, qs) -> None:
    v = np.array([p[0] for p in pairs], dtype=np.float64)
    c = np.array([p[1] for p in pairs], dtype=np.int64)
    got = weighted_percentile(v, c, qs)
    if c.sum() == 0:
        assert np.all(np.isnan(got))
        return
    want = np.percentile(np.repeat(v, c), qs)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", ["uniform", "ties", "long-tail", "one-outlier", "constant"])
def test_weighted_percentile_of_many_values_equals_expanded(shape: str) -> None:
    # above 65,536 values only the buckets holding the wanted positions are sorted
    rng = np.random.default_rng(["uniform", "ties", "long-tail", "one-outlier", "constant"].index(shape))
    n = 200_000
    v = 0.007 + 0.008 * rng.random(n)
    if shape == "ties":
        v = np.round(v, 4)
    elif shape == "long-tail":
        tail = rng.random(n) < 0.02
        v[tail] = 3.0 * rng.random(int(tail.sum()))
    elif shape == "one-outlier":
        v[123] = 1e9
    elif shape == "constant":
        v[:] = 0.01
    c = rng.integers(0, 40, size=n)
    qs = [0.0, 0.5, 50.0, 95.0, 99.0, 99.9, 100.0]
    assert np.array_equal(weighted_percentile(v, c, qs), np.percentile(np.repeat(v, c), qs))


def test_weighted_percentile_by_hand() -> None:
    # expanded [1, 1, 1, 5]: p50 at h = 1.5 -> 1; p90 at h = 2.7 -> 1 + 0.7 * 4
    assert weighted_percentile(np.array([5.0, 1.0]), np.array([1, 3]), [0, 50, 90, 100]) == \
        pytest.approx([1.0, 1.0, 3.8, 5.0])
    with pytest.raises(ValueError, match="counts must be >= 0"):
        weighted_percentile(np.array([1.0]), np.array([-1]), 50)


@pytest.mark.parametrize("x", [[1, 1, 1], [3, 0, 0], [1, 2, 3, 4], [0, 5], [7]])
def test_jain_index_brute_force(x) -> None:
    # Jain's index equals 1 - (normalised variance) form: mean^2 / mean of squares,
    # and by pairs: 1 - sum_{i<j} (x_i - x_j)^2 / (n * sum x^2)
    n = len(x)
    pairs = sum((a - b) ** 2 for a, b in itertools.combinations(x, 2))
    sq = sum(a * a for a in x)
    assert jain_index(np.array(x)) == pytest.approx(1 - pairs / (n * sq))
    assert jain_index(np.array(x)) == pytest.approx(sum(x) ** 2 / (n * sq))


def test_jain_index_edges() -> None:
    assert jain_index(np.array([4, 0, 0, 0])) == pytest.approx(0.25)  # 1 / n
    assert math.isnan(jain_index(np.zeros(3))) and math.isnan(jain_index(np.zeros(0)))


def test_slo_parse() -> None:
    assert Slo.parse("ttft=2,itl=0.05,e2e=30") == Slo(2.0, 0.05, 30.0)
    assert Slo.parse(" itl = 0.05 ") == Slo(itl_s=0.05)
    assert str(Slo.parse("e2e=30,ttft=2")) == "ttft=2,e2e=30"


@pytest.mark.parametrize(("text", "match"), [
    ("", "empty SLO"),
    ("tpot=1", "unknown key 'tpot'"),
    ("ttft", "expected KEY=SECONDS"),
    ("ttft=2,ttft=3", "'ttft' given twice"),
    ("ttft=x", "ttft='x'"),
    ("itl=-1", "itl='-1'"),
    ("e2e=0", "e2e='0'"),
    ("e2e=inf", "e2e='inf'"),
    ("ttft=nan", "ttft='nan'"),
])
def test_slo_parse_bad(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Slo.parse(text)


def test_slo_cli_errors(capsys) -> None:
    from lmetric_theory.cli import main

    for cmd in ("simulate", "results"):
        assert main([cmd, "--slo", "ttft=2,foo=1"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--slo" in err[0] and "'foo'" in err[0]


def test_simulate_json_has_the_metrics(tmp_path: Path, capsys) -> None:
    """The synthetic default: every policy carries its metrics; they equal compute_metrics of
    a direct run; the Parquet has the five per-request columns."""
    import pyarrow.parquet as pq

    from lmetric_theory.cli import main
    from lmetric_theory.core.fileio import json_safe
    from lmetric_theory.sim import SimConfig, Simulator, load_preset
    from lmetric_theory.workload import default_workload, select

    out = tmp_path / "res"
    assert main(["simulate", "--count", "200", "-n", "2", "--slo", "ttft=2,itl=0.05",
                 "--json", "--out", str(out)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["config"]["slo"] == {"ttft_s": 2.0, "itl_s": 0.05, "e2e_s": None}
    w = select(default_workload(0), count=200)
    cfg = SimConfig.from_preset(load_preset("h100-llama3-8b-calibrated"), 2)
    for spec in ("lmetric", "round-robin"):
        m = doc["policies"][spec]["metrics"]
        r = Simulator(w, cfg, spec).run()
        assert m == json_safe(compute_metrics(r, Slo(2.0, 0.05), w).to_json())
        assert m["completed"] == 200 and 0 <= m["slo_attainment"] <= 1
        assert m["ttft_s"]["p50"] == pytest.approx(doc["policies"][spec]["ttft_p50_s"])
        assert sum(m["per_instance"]["requests"]) == 200
        table = pq.read_table(out / f"{spec}.requests.parquet")
        cols = table.column_names
        for c in ("session", "turn", "arrival_s", "first_token_s", "finish_s"):
            assert c in cols
        t = table.to_pydict()
        assert t["session"] == [-1] * 200 and t["turn"] == [0] * 200
        np.testing.assert_allclose(t["first_token_s"], np.asarray(t["arrival_s"]) + t["ttft_s"])
        np.testing.assert_allclose(t["finish_s"], np.asarray(t["arrival_s"]) + t["e2e_s"])


def test_simulate_table_has_the_metrics(capsys) -> None:
    from lmetric_theory.cli import main

    assert main(["simulate", "--count", "100", "-n", "2", "--slo", "e2e=30"]) == 0
    text = capsys.readouterr().out
    assert "deployers' metrics, SLO e2e=30" in text and "goodput" in text
    block = text[text.index("deployers' metrics"):]
    assert max(len(line) for line in block.splitlines()) <= 100


def test_parquet_session_columns_of_a_session_workload(tmp_path: Path) -> None:
    """A session workload (closed-loop synthetic agent) writes each request's session and
    turn from the workload."""
    import pyarrow.parquet as pq

    from lmetric_theory.cli import main
    from lmetric_theory.workload.spec import synthetic_from_spec

    spec = "synthetic:agent:count=60"
    w = synthetic_from_spec(spec, seed=0)
    assert w.sessions is not None
    out = tmp_path / "res"
    assert main(["simulate", spec, "-n", "2", "--policy", "round-robin", "--json",
                 "--out", str(out)]) == 0
    t = pq.read_table(out / "round-robin.requests.parquet").to_pydict()
    assert t["session"] == w.sessions.session.tolist() and t["turn"] == w.sessions.turn.tolist()


def test_results_rows_carry_the_headline_metrics(capsys) -> None:
    """``results --json --slo``: every row has the headline metrics of compute_metrics, the
    aggregates their means; without --slo the SLO entries are None."""
    from lmetric_theory.cli import main
    from lmetric_theory.core.fileio import json_safe
    from lmetric_theory.experiments.study import HEADLINE, headline
    from lmetric_theory.sim import SimConfig, Simulator, load_preset
    from lmetric_theory.workload import default_workload, select

    base = ["results", "--count", "120", "-n", "2", "--seeds", "1", "--rate-scales", "1",
            "--policies", "lmetric,round-robin", "--workers", "1", "--no-progress", "--json"]
    assert main([*base, "--slo", "ttft=1,e2e=20"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["config"]["slo"] == {"ttft_s": 1.0, "itl_s": None, "e2e_s": 20.0}
    w = select(default_workload(0), count=120)
    cfg = SimConfig.from_preset(load_preset("h100-llama3-8b-calibrated"), 2, record_snapshots=False)
    slo = Slo(ttft_s=1.0, e2e_s=20.0)
    for row in doc["rows"]:
        r = Simulator(w, cfg, row["name"], seed=0).run()
        want = json_safe(headline(compute_metrics(r, slo, w).to_json()))
        assert {k: row[k] for k in HEADLINE} == want
        assert row["slo_attainment"] is not None and row["goodput_rps"] is not None
        agg = next(a for a in doc["summary"] if a["name"] == row["name"])
        assert agg["e2e_p99_s"] == pytest.approx(row["e2e_p99_s"])
    assert main(base) == 0
    doc = json.loads(capsys.readouterr().out)
    assert all(r["slo_attainment"] is None and r["goodput_rps"] is None for r in doc["rows"])
    assert doc["config"]["slo"] is None
