"""AppTest tests of every page of the app (``lmetric_theory/app/main.py``, which ``app.py``
and ``lmetric-theory app`` run): no exception, and the numbers shown equal the library's (and
the CLI's) for the same inputs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

# The app needs the app extra (streamlit, plotly); without it these tests skip, saying so.
AppTest = pytest.importorskip(
    "streamlit.testing.v1", reason="the app tests need streamlit (the app extra)"
).AppTest
pytest.importorskip("plotly", reason="the app tests need plotly (the app extra)")

from lmetric_theory.app.support import EXAMPLE_SNAPSHOTS, check_table  # noqa: E402
from lmetric_theory.detector import Detector, LinearReference, Snapshot  # noqa: E402
from lmetric_theory.experiments.regions import compute_regions  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "lmetric_theory" / "app" / "main.py")
TOP_APP = str(ROOT / "app.py")
TIMEOUT = 60


def _app(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    if page is not None:
        at.switch_page(page).run()
        assert not at.exception, at.exception
    return at


REGIONS = "pages/decision_regions.py"
SNAPSHOT = "pages/snapshot_checker.py"


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


# ------------------------------------------------------------------ decision regions


def test_regions_default_share_equals_library():
    at = _app(REGIONS)
    shown = _metrics(at)["Disagreement share of the plotted area"]
    rm = compute_regions(1024.0, 8.0, lam=300.0, p0=0.0, b0=1.0, p_range=(0.0, 4096.0),
                         b_range=(0.0, 32.0), resolution=(400, 400))
    assert shown == f"{rm.disagreement_share:.4%}"
    assert 0 < rm.disagreement_share < 1
    assert len(at.get("plotly_chart")) == 1
    assert len(at.latex) > 0  # the theory module's formulas


def test_regions_controls_change_the_numbers():
    at = _app(REGIONS)
    at.number_input(key="lam").set_value(50.0)
    at.number_input(key="b0").set_value(2.0)
    at.checkbox(key="log_b").check()
    at.number_input(key="b_lo").set_value(0.5)
    at.select_slider(key="res").set_value(200)
    at.run()
    assert not at.exception and not at.error
    rm = compute_regions(1024.0, 8.0, lam=50.0, p0=0.0, b0=2.0, p_range=(0.0, 4096.0),
                         b_range=(0.5, 32.0), log_b=True, resolution=(200, 200))
    m = _metrics(at)
    assert m["Disagreement share of the plotted area"] == f"{rm.disagreement_share:.4%}"
    assert m["Grid points with an exact tie"] == str(rm.n_ties)


def test_top_level_app_py_runs_the_same_app():
    at = AppTest.from_file(TOP_APP, default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    assert at.title[0].value == "lmetric-theory"
    at.switch_page("lmetric_theory/app/pages/decision_regions.py").run()
    assert not at.exception and at.title[0].value == "Decision regions"


def test_overview_links_every_page():
    at = _app()
    assert not at.error
    assert at.title[0].value == "lmetric-theory"


def test_regions_log_axis_with_the_default_range_draws():
    """The default P range starts at 0; the log axis then starts at 1 token and says so."""
    at = _app(REGIONS)
    at.checkbox(key="log_p").check().run()
    assert not at.exception and not at.error
    assert any("log P axis starts at 1" in c.value for c in at.caption)
    rm = compute_regions(1024.0, 8.0, lam=300.0, p0=0.0, b0=1.0, p_range=(1.0, 4096.0),
                         b_range=(0.0, 32.0), log_p=True, resolution=(400, 400))
    assert _metrics(at)["Disagreement share of the plotted area"] == (
        f"{rm.disagreement_share:.4%}")


def test_regions_page_speaks_of_instances_1_and_2():
    at = _app(REGIONS)
    text = " ".join([c.value for c in at.caption] + [n.label for n in at.number_input])
    assert "instance 2" in text and "P_2" in text and "B_1" in text
    assert "B_B" not in text and "instance B" not in text and "P_A" not in text


def test_regions_widget_bounds_keep_values_in_range():
    at = _app(REGIONS)
    before = _metrics(at)["Disagreement share of the plotted area"]
    at.number_input(key="lam").set_value(-5.0).run()  # below min_value: rejected
    assert not at.exception and not at.error
    assert at.number_input(key="lam").value == 300.0
    assert _metrics(at)["Disagreement share of the plotted area"] == before


# ------------------------------------------------------------------ snapshot checker


@pytest.mark.parametrize("name", list(EXAMPLE_SNAPSHOTS))
def test_snapshot_examples_match_detector(name):
    at = _app(SNAPSHOT)
    if name != next(iter(EXAMPLE_SNAPSHOTS)):
        at.selectbox(key="example").select(name).run()
    assert not at.exception and not at.error
    ex = EXAMPLE_SNAPSHOTS[name]
    det = Detector(LinearReference(ex["lam"], ex["lam_lo"], ex["lam_hi"]), ex["p0"], ex["b0"])
    v = det.check(Snapshot(ex["P"], ex["B"]))
    m = _metrics(at)
    assert m["Product picks"] == f"#{v.product_choice}"
    assert m["Linear picks"] == f"#{v.linear_choice}"
    assert m["λ_eff"] == f"{v.lam_eff:.6g}"
    assert m["λ*"] == f"{v.lam_star:.6g}"
    assert m["Regret (token equiv.)"] == f"{v.regret_tokens:.6g}"
    verdict = [e.value for e in (*at.warning, *at.info, *at.success)
               if e.value.startswith("Verdict")]
    assert len(verdict) == 1
    assert ("DISAGREE" in verdict[0]) == v.disagrees
    # Every finding of the detector is listed on the page in full (message and mitigation).
    text = " ".join(md.value for md in at.markdown)
    for f in v.findings:
        assert f.kind.replace("_", " ") in text
        assert f.message in text and f.mitigation.message in text
    assert len(at.get("plotly_chart")) == 1


def test_examples_exercise_the_advertised_findings():
    kinds = {}
    for name, ex in EXAMPLE_SNAPSHOTS.items():
        pairs = zip(ex["P"], ex["B"], strict=True)
        rec = [{"instance": f"#{i}", "P": p, "B": b} for i, (p, b) in enumerate(pairs)]
        res = check_table(rec, lam=ex["lam"], lam_lo=ex["lam_lo"], lam_hi=ex["lam_hi"],
                          p0=ex["p0"], b0=ex["b0"])
        kinds[name] = {f["kind"] for f in res.findings}
    assert "disagreement" in kinds["Plain disagreement"]
    assert "zero_prefill" in kinds["Zero-prefill hot-spot"]
    assert "idle_tie" in kinds["Idle tie"]


@pytest.mark.parametrize(
    ("records", "needle"),
    [
        ([{"instance": "a", "P": None, "B": 1}], "row 1, column P: empty"),
        ([{"instance": "a", "P": 5, "B": 1}, {"instance": "b", "P": 3, "B": -2}],
         "row 2, column B: negative"),
        ([{"instance": "a", "P": "__import__('os')", "B": 1}], "not a number"),
        ([{"instance": "a", "P": math.inf, "B": 1}], "infinite"),
        ([{"instance": None, "P": None, "B": None}], "no instances"),
    ],
)
def test_check_table_bad_cells_name_row_and_column(records, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        check_table(records, lam=10.0)


def test_check_table_band_below_lam_is_a_value_error():
    with pytest.raises(ValueError, match="band"):
        check_table([{"P": 1, "B": 1}, {"P": 2, "B": 0}], lam=10.0, lam_lo=20.0, lam_hi=30.0)


def test_snapshot_bad_band_is_a_message_on_the_page():
    at = _app(SNAPSHOT)
    name = next(iter(EXAMPLE_SNAPSHOTS))
    at.checkbox(key=f"band_{name}").check().run()
    at.number_input(key=f"lo_{name}").set_value(500.0).run()  # lo > lam
    assert not at.exception
    assert len(at.error) == 1 and "Cannot check this snapshot" in at.error[0].value


def test_snapshot_lam_alone_is_editable():
    """Without the band, λ can be moved past the example's band and the page follows."""
    at = _app(SNAPSHOT)
    name = next(iter(EXAMPLE_SNAPSHOTS))
    ex = EXAMPLE_SNAPSHOTS[name]
    at.checkbox(key=f"band_{name}").uncheck().run()
    at.number_input(key=f"lam_{name}").set_value(150.0).run()
    assert not at.exception and not at.error
    v = Detector(LinearReference.fixed(150.0), ex["p0"], ex["b0"]).check(
        Snapshot(ex["P"], ex["B"]))
    assert _metrics(at)["Linear picks"] == f"#{v.linear_choice}"
    assert _metrics(at)["Regret (token equiv.)"] == f"{v.regret_tokens:.6g}"


def test_snapshot_pasted_json_replaces_the_table():
    at = _app(SNAPSHOT)
    name = next(iter(EXAMPLE_SNAPSHOTS))
    ex = EXAMPLE_SNAPSHOTS[name]
    at.text_area(key="paste_json").input(
        '{"prefill_tokens": [0, 300, 2000], "batch_size": [60, 1, 0], '
        '"instance_ids": ["x", "y", "z"]}').run()
    assert not at.exception and not at.error
    ref = LinearReference(ex["lam"], ex["lam_lo"], ex["lam_hi"])
    v = Detector(ref, ex["p0"], ex["b0"]).check(Snapshot([0, 300, 2000], [60, 1, 0]))
    assert _metrics(at)["Product picks"] == "xyz"[v.product_choice]
    assert _metrics(at)["Linear picks"] == "xyz"[v.linear_choice]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{", "line 1"),
        ("[1, 2]", "expected an object"),
        ('{"prefill_tokens": [1, 2]}', "'batch_size' missing"),
        ('{"prefill_tokens": [1, 2], "batch_size": [1]}', "has 2 values"),
        ('{"prefill_tokens": [1], "batch_size": [1], "instance_ids": [3]}', "instance_ids"),
    ],
)
def test_pasted_json_errors_name_the_field(text, needle):
    from lmetric_theory.app.support import records_from_json

    with pytest.raises(ValueError, match=needle):
        records_from_json(text)


def test_pasted_json_error_is_a_message_on_the_page():
    at = _app(SNAPSHOT)
    at.text_area(key="paste_json").input('{"prefill_tokens": [1, 2]}').run()
    assert not at.exception
    assert len(at.error) == 1 and "'batch_size' missing" in at.error[0].value


# ----------------------------------------------------------------------- trace audit

AUDIT_PAGE = "pages/trace_audit.py"


def test_audit_default_matches_the_cli(capsys):
    """Same workload, same defaults: the page shows the CLI's disagreement rate."""
    import json

    from lmetric_theory import cli

    at = _app(AUDIT_PAGE)
    assert not at.error
    assert cli.main(["audit", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    m = _metrics(at)
    assert m["Decisions"] == f"{rep['decisions']:,}"
    assert m["Disagreement rate"] == f"{rep['disagreement_rate']:.3%}"
    assert m["Fragile"] == f"{rep['fragile']:,}"
    lam = rep["lam_reference"]["lam"]
    assert any(f"Reference λ = {lam:.4g}" in c.value for c in at.caption)
    # Worst decisions: readable headers, values rounded to 4 significant figures.
    table = at.dataframe[0].value
    assert list(table.columns) == ["decision", "time (s)", "product picks", "linear picks",
                                   "regret (tokens)", "λ_eff (tokens/slot)", "λ* (tokens/slot)"]
    for x in table["λ* (tokens/slot)"]:
        assert float(f"{x:.4g}") == x
    # Three charts plus the selected worst decision on the region view (and the hot prefix
    # classes over time when the replay raised any).
    assert len(at.get("plotly_chart")) == 4 + bool(rep["hotspots"])
    assert len(at.get("download_button")) == 1
    # Selecting another worst decision redraws the region view without re-auditing.
    at.selectbox(key="worst_pick").select(2).run()
    assert not at.exception
    assert at.session_state["audit_view"] is not None


def test_audit_bad_band_is_a_message_on_the_page():
    at = _app(AUDIT_PAGE)
    at.radio(key="ref_mode").set_value("my own λ and band").run()
    at.number_input(key="lam_lo").set_value(1000.0).run()  # band low above lam
    assert not at.exception
    assert len(at.error) == 1 and "Cannot audit with these settings" in at.error[0].value


def test_audit_upload_mode_waits_for_a_file():
    at = _app(AUDIT_PAGE)
    at.radio(key="source").set_value("Upload a JSONL trace").run()
    assert not at.exception and not at.error
    assert any("Upload a trace" in i.value for i in at.info)
    assert any("25 MB" in c.value for c in at.caption)


MOONCAKE_LINES = [
    '{"timestamp": 0, "input_length": 1000, "output_length": 20, "hash_ids": [0, 1]}',
    '{"timestamp": 5, "input_length": 600, "output_length": 10, "hash_ids": [0, 2]}',
    '{"timestamp": 9, "input_length": 512, "output_length": 5, "hash_ids": [3]}',
]


def test_read_upload_accepts_mooncake_jsonl():
    from lmetric_theory.app.support import read_jsonl_upload

    w = read_jsonl_upload("t.jsonl", ("\n".join(MOONCAKE_LINES) + "\n").encode())
    assert len(w) == 3
    assert w.input_tokens.tolist() == [1000, 600, 512]
    assert w.meta["format"] == "mooncake"


@pytest.mark.parametrize(
    ("data", "kwargs", "needle"),
    [
        (b"arrival_s,input_tokens,output_tokens\n0,10,1\n", {}, "line 1: not JSON Lines"),
        (b"\n\n", {}, "empty"),
        (b"\xff\xfe{}", {}, "not UTF-8"),
        (("\n".join(MOONCAKE_LINES)).encode(), {"max_mb": 1e-5}, "exceeds the upload limit"),
        ((MOONCAKE_LINES[0] + "\n{not json\n").encode(), {}, "line 2"),
        ((MOONCAKE_LINES[0] + '\n{"timestamp": "__import__(\'os\')", "input_length": 5, '
          '"output_length": 1, "hash_ids": [9]}\n').encode(), {}, "timestamp"),
    ],
)
def test_read_upload_rejects_bad_input_with_a_clear_message(data, kwargs, needle):
    from lmetric_theory.app.support import read_jsonl_upload

    with pytest.raises(ValueError, match=needle):
        read_jsonl_upload("t.jsonl", data, **kwargs)


def test_read_upload_skips_and_counts_bad_lines_when_asked():
    from lmetric_theory.app.support import read_jsonl_upload

    data = (MOONCAKE_LINES[0] + "\n{oops\n" + MOONCAKE_LINES[1] + "\n").encode()
    w = read_jsonl_upload("t.jsonl", data, skip_bad_lines=True)
    assert len(w) == 2 and w.meta["skipped_lines"] == 1


def test_report_json_of_the_page_is_strict():
    """The page's download serialises the report with ``report.report_json``: NaN and
    infinities are written as null."""
    import json

    from lmetric_theory.io.report import report_json

    assert json.loads(report_json({"a": float("inf"), "b": [float("nan"), 1.5]})) == {
        "a": None, "b": [None, 1.5]}


SIM_PAGE = "pages/simulate.py"


def test_simulate_page_shows_the_library_metrics():
    """The simulate page's table equals compute_metrics of the same runs (the CLI's defaults);
    a bad SLO is a message, not a traceback."""
    from lmetric_theory.app.support import metrics_rows
    from lmetric_theory.sim import SimConfig, Simulator, load_preset
    from lmetric_theory.sim.metrics import Slo, compute_metrics
    from lmetric_theory.workload import default_workload, select

    at = _app(SIM_PAGE)
    at.number_input(key="count").set_value(300).run()
    at.number_input(key="instances").set_value(4).run()
    assert not at.exception and not at.error
    assert at.title[0].value == "Simulate"
    w = select(default_workload(0), count=300)
    cfg = SimConfig.from_preset(load_preset("h100-llama3-8b-calibrated"), 4, record_snapshots=False)
    slo = Slo(ttft_s=2.0, itl_s=0.05)
    want = metrics_rows({p: compute_metrics(Simulator(w, cfg, p).run(), slo, w)
                         for p in ("lmetric", "round-robin")})
    table = at.dataframe[0].value
    assert list(table.columns) == list(want[0])
    assert table.to_dict("records") == want
    assert "SLO attainment" in table.columns and "goodput (req/s)" in table.columns
    inst = at.dataframe[1].value
    assert inst["requests"].sum() == 2 * 300
    m = _metrics(at)
    assert m["Requests"] == "300"
    at.text_input(key="slo").set_value("ttft=2,tpot=1").run()
    assert not at.exception
    assert len(at.error) == 1 and "unknown key 'tpot'" in at.error[0].value
    at.text_input(key="slo").set_value("").run()
    assert not at.exception and "SLO attainment" not in at.dataframe[0].value.columns


def test_router_state_rows_read_the_audit_entries():
    from lmetric_theory.app.support import router_state_rows
    from lmetric_theory.experiments.router_state_log import RouterStateEntry

    rows = router_state_rows([
        RouterStateEntry("replica_skew", "warning", "12 of 80 decisions", "counter_sync", 4.0,
                         31),
        RouterStateEntry("stale_index", "warning", "9 of 40 hits", "none", None, 7),
    ])
    assert rows == [
        {"finding": "replica skew", "first decision": 31, "mitigation": "counter sync (4)",
         "what was found": "12 of 80 decisions"},
        {"finding": "stale index", "first decision": 7, "mitigation": "none",
         "what was found": "9 of 40 hits"},
    ]
