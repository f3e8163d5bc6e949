"""Tests of the latency model fit and the ``calibrate`` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lmetric_theory.cli import main
from lmetric_theory.sim import LatencyModel, fit_latency, load_preset, preset_from_dict

HEADER = "prefill_tokens,prefill_context,decode_seqs,decode_context,kv_tokens_read,iteration_s_median\n"


def synthetic_rows(model: LatencyModel) -> np.ndarray:
    rows = []
    for pt, pc, ds, dc in [(0, 0, 1, 512), (0, 0, 64, 2048), (0, 0, 256, 8192), (512, 0, 0, 0),
                           (2048, 4096, 0, 0), (8192, 0, 0, 0), (8192, 16384, 0, 0),
                           (512, 0, 32, 2048), (2048, 8192, 128, 2048), (128, 0, 8, 512)]:
        t = model.iteration_time(pt, pc, ds, ds * dc)
        rows.append((pt, pc, ds, dc, float(t)))
    return np.array(rows)


def test_fit_recovers_exact_coefficients() -> None:
    true = LatencyModel(c0=0.007, c_pf=3e-5, c_dec=1e-5, c_kv=4e-8, c_att=2e-9)
    r = synthetic_rows(true)
    rep = fit_latency(r[:, 0], r[:, 1], r[:, 2], r[:, 3], r[:, 4], attention=True)
    assert rep.worst_rel_error < 1e-6
    for k in ("c0", "c_pf", "c_dec", "c_kv", "c_att"):
        assert getattr(rep.model, k) == pytest.approx(getattr(true, k), rel=1e-4)


def test_fit_rejects_bad_times() -> None:
    with pytest.raises(ValueError, match="> 0"):
        fit_latency(np.ones(3), np.zeros(3), np.zeros(3), np.zeros(3), np.array([0.1, 0.0, 0.2]))


def test_fit_on_measured_h100_beats_the_readme_figures(calibration_path: Path) -> None:
    d = np.genfromtxt(calibration_path, delimiter=",", names=True)
    rep = fit_latency(d["prefill_tokens"], d["prefill_context"], d["decode_seqs"], d["decode_context"],
                      d["iteration_s_median"], attention=True)
    # The data README reports about 7% mean and 31% worst for this model form.
    assert rep.mean_rel_error <= 0.07 and rep.worst_rel_error <= 0.31
    # The shipped calibrated preset is this fit.
    shipped = load_preset("h100-llama3-8b-calibrated").latency
    assert shipped.c_pf == pytest.approx(rep.model.c_pf, rel=1e-3)


def test_calibrate_command_writes_preset_atomically(calibration_path: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "sub" / "mine.json"
    assert main(["calibrate", str(calibration_path), "--attention", "--out", str(out), "--json"]) == 0
    doc = json.loads(out.read_text())
    printed = json.loads(capsys.readouterr().out)
    assert printed == doc
    assert doc["name"] == "mine" and doc["fit"]["rows"] == 44
    preset = preset_from_dict(doc)
    assert preset.latency.c_att > 0
    assert [p.name for p in out.parent.iterdir()] == ["mine.json"]
    # The simulator accepts the file as a preset.
    assert main(["simulate", "--count", "50", "--preset", str(out), "--policy", "round-robin", "--json"]) == 0


def test_calibrate_command_bad_csv(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "0,0,1,512,512,0.007\n0,0,1,x,512,0.007\n")
    assert main(["calibrate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.csv: line 3: field 'decode_context'" in err
    missing = tmp_path / "missing.csv"
    missing.write_text("prefill_tokens,iteration_s_median\n1,0.1\n")
    assert main(["calibrate", str(missing)]) == 2
    assert "missing column(s)" in capsys.readouterr().err


# --------------------------------------------------------------------------- identifiability


def _rows(model: LatencyModel, shapes: list[tuple[int, int, int, int]]) -> np.ndarray:
    return np.array([(pt, pc, ds, dc, float(model.iteration_time(pt, pc, ds, ds * dc)))
                     for pt, pc, ds, dc in shapes])


TRUE = LatencyModel(c0=0.007, c_pf=3e-5, c_dec=1e-5, c_kv=4e-8)


def test_fit_refuses_what_the_rows_cannot_determine() -> None:
    from lmetric_theory.sim import latency

    decode = _rows(TRUE, [(0, 0, 1, 512), (0, 0, 64, 2048), (0, 0, 256, 8192), (0, 0, 8, 100)])
    with pytest.raises(latency.UnidentifiableError, match="no rows with prefill_tokens > 0"):
        fit_latency(*decode.T)
    with pytest.raises(latency.UnidentifiableError) as exc:
        fit_latency(*decode.T, attention=True)
    assert exc.value.coefficients == ("c_pf", "c_att")
    prefill = _rows(TRUE, [(512, 0, 0, 0), (2048, 0, 0, 0), (4096, 512, 0, 0)])
    with pytest.raises(latency.UnidentifiableError, match="c_dec: no rows with decode_seqs > 0"):
        fit_latency(*prefill.T)
    # c0 and c_dec are indistinguishable when every row decodes exactly one sequence
    one_seq = _rows(TRUE, [(0, 0, 1, 512), (512, 0, 1, 512), (2048, 0, 1, 100),
                           (0, 0, 1, 8192), (128, 64, 1, 2048)])
    with pytest.raises(latency.UnidentifiableError) as exc:
        fit_latency(*one_seq.T)
    assert set(exc.value.coefficients) == {"c0", "c_dec"} and "cannot separate" in str(exc.value)
    with pytest.raises(latency.UnidentifiableError, match="from 2 row"):
        fit_latency(*_rows(TRUE, [(512, 0, 4, 100), (0, 0, 8, 512)]).T)


def test_pinned_coefficient_is_held_and_the_rest_recovered() -> None:
    decode = _rows(TRUE, [(0, 0, 1, 512), (0, 0, 64, 2048), (0, 0, 256, 8192), (0, 0, 8, 100)])
    rep = fit_latency(*decode.T, pin={"c_pf": 2e-5})
    assert rep.model.c_pf == 2e-5 and rep.worst_rel_error < 1e-6
    for k in ("c0", "c_dec", "c_kv"):
        assert getattr(rep.model, k) == pytest.approx(getattr(TRUE, k), rel=1e-4)
    with pytest.raises(ValueError, match="pin: unknown coefficient 'c_x'"):
        fit_latency(*decode.T, pin={"c_x": 1.0})


def test_fit_in_wrong_units_is_refused() -> None:
    r = synthetic_rows(TRUE)
    with pytest.raises(ValueError, match=r"c0 = 7e\+03 s, outside the stated range \[0, 60\] s"):
        fit_latency(r[:, 0], r[:, 1], r[:, 2], r[:, 3], r[:, 4] * 1e6)


def test_calibrate_pin_flag_and_bad_pins(tmp_path: Path, capsys) -> None:
    path = tmp_path / "decode.csv"
    rows = _rows(TRUE, [(0, 0, 1, 512), (0, 0, 64, 2048), (0, 0, 256, 8192), (0, 0, 8, 100)])
    path.write_text(HEADER + "".join(f"{int(a)},{int(b)},{int(c)},{int(d)},0,{t!r}\n"
                                     for a, b, c, d, t in rows.tolist()))
    out = tmp_path / "pinned.json"
    assert main(["calibrate", str(path), "--pin", "c_pf=3e-5", "--out", str(out), "--json"]) == 0
    doc = json.loads(out.read_text())
    assert doc["fit"]["pinned"] == {"c_pf": 3e-5} and "c_pf pinned at 3e-05" in doc["description"]
    capsys.readouterr()
    for bad, needle in [("c_pf", "expected NAME=VALUE"), ("c_q=1", "expected NAME=VALUE"),
                        ("c_pf=abc", "expected a number"), ("c_pf=nan", "got NaN"),
                        ("c_pf=5", "in [0, 1]")]:
        assert main(["calibrate", str(path), "--pin", bad]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err, err


@pytest.mark.parametrize(("cell", "needle"), [("1e400", "got '1e400'"), ("nan", "got 'nan'"),
                                              ("-3", "got '-3'"), ("true", "got 'true'"),
                                              ("3601", "(0, 3600]")])
def test_calibration_cells_out_of_range(tmp_path: Path, capsys, cell: str, needle: str) -> None:
    path = tmp_path / "c.csv"
    path.write_text(HEADER + f"0,0,1,512,512,{cell}\n")
    assert main(["calibrate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "c.csv: line 2: field 'iteration_s_median': expected a number in (0, 3600]" in err
    assert needle in err
