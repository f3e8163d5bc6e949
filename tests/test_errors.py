"""Bad input never gives a wrong answer: each case reported by a new user, with the message
it now gets (one line naming file, line and field; exit code 2 from the command line)."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from lmetric_theory.audit import load_snapshots
from lmetric_theory.cli import main
from lmetric_theory.core.limits import (
    COUNT_MAX,
    TIME_MAX_S,
    TOKENS_MAX,
    check_int,
    check_number,
)
from lmetric_theory.detector import Detector, Snapshot
from lmetric_theory.sim.latency import UnidentifiableError, fit_latency, load_preset_file
from lmetric_theory.workload import TraceError, TraceOrderWarning, load_trace, parse_trace

MC = '{{"timestamp": {t}, "input_length": 10, "output_length": 1, "hash_ids": [0]}}'


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


# ------------------------------------------------------------------------- limits module


def test_limits_refuse_bools_text_nan_and_out_of_range() -> None:
    assert check_number("t", 5) == 5.0 and check_int("n", 7, lo=1) == 7
    for bad, what in [(True, "True (a boolean)"), ("5", "'5' (a string)"), (None, "None"),
                      (math.nan, "NaN"), (math.inf, "infinity"), (-1, "-1")]:
        with pytest.raises(ValueError, match=r"^t: expected a finite number >= 0, got "
                           + what.replace("(", r"\(").replace(")", r"\)")):
            check_number("t", bad)
    with pytest.raises(ValueError, match=r"^n: expected an integer in \[1, 16777216\], got 12.0"):
        check_int("n", 12.0, lo=1, hi=TOKENS_MAX)
    with pytest.raises(ValueError, match=r"got 1180591620717411303424$"):
        check_int("n", 2**70, hi=TOKENS_MAX)
    with pytest.raises(ValueError, match=r"got 1\.000e\+30$"):
        check_int("n", 10**30, hi=TOKENS_MAX)
    assert TIME_MAX_S == 1e10 and COUNT_MAX == 2**31 - 1


# ------------------------------------------------------------------------- traces


def test_timestamp_1e30_is_refused_not_run_at_1e27_s(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "t.jsonl"
    p.write_text(MC.format(t=0) + "\n" + MC.format(t="1e30") + "\n")
    with pytest.raises(TraceError) as exc:
        load_trace(p)
    assert (exc.value.line, exc.value.field) == (2, "timestamp")
    assert str(exc.value) == (f"{p}, line 2: field 'timestamp': must be a finite number in "
                              "[0, 1e+13] ms, got 1e+30")
    assert main(["simulate", str(p), "--policy", "round-robin"]) == 2
    assert one_line_error(capsys).endswith("got 1e+30")


def test_epoch_timestamps_still_load(tmp_path: Path) -> None:
    """The limit leaves room for Unix-epoch seconds and milliseconds."""
    p = tmp_path / "epoch.jsonl"
    p.write_text(MC.format(t=1.8e12) + "\n" + MC.format(t=1.8e12 + 1500) + "\n")
    w = load_trace(p)
    assert w.arrival_s.tolist() == [0.0, 1.5] and w.meta["time_origin_s"] == 1.8e9


def test_jsonl_array_line_is_not_misread_as_csv(tmp_path: Path) -> None:
    for name, why in [("a.jsonl", "the file name ends in .jsonl"),
                      ("a.txt", "its first line starts with '['")]:
        p = tmp_path / name
        p.write_text("[1,2,3]\n")
        with pytest.raises(TraceError) as exc:
            load_trace(p)
        assert str(exc.value) == (f"{p}, line 1: expected a JSON object, got array "
                                  f"(read as JSON Lines because {why})")


def test_csv_detection_states_its_reason(tmp_path: Path) -> None:
    p = tmp_path / "a.txt"
    p.write_text("time,in,out\n1,2,3\n")
    with pytest.raises(TraceError, match=r"line 1: field 'arrival_s': required CSV column "
                       r"missing; header is \['time', 'in', 'out'\] \(read as CSV because its "
                       r"first line is not JSON\)"):
        load_trace(p)
    q = tmp_path / "b.csv"
    q.write_text("arrival_s,input_tokens,output_tokens\n0,5,1\n")
    assert load_trace(q).meta["format_reason"] == "the file name ends in .csv"


def test_binary_trace_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "blob.jsonl"
    p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(TraceError, match=r"blob\.jsonl, line 3: contains a NUL byte"):
        load_trace(p)


def test_out_of_order_warning_is_one_clean_line(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "o.jsonl"
    p.write_text(MC.format(t=5) + "\n" + MC.format(t=1) + "\n")
    with pytest.warns(TraceOrderWarning):
        load_trace(p)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["simulate", str(p), "--policy", "round-robin", "--json"]) == 0
    err = capsys.readouterr().err
    assert err == (f"lmetric-theory simulate: warning: {p}: 1 line(s) arrive earlier than a "
                   "line above them; requests were stable-sorted by timestamp\n")


def test_parse_trace_names_json_types() -> None:
    with pytest.raises(TraceError, match=r"line 2: field 'input_length': must be an integer "
                       r"in \[1, 16777216\], got true \(boolean\)"):
        parse_trace([MC.format(t=0),
                     '{"timestamp": 1, "input_length": true, "output_length": 1, '
                     '"hash_ids": [0]}'], source="mem")


# ------------------------------------------------------------------------- snapshots


def test_true_in_prefill_tokens_is_refused_by_file_and_api(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "snaps.jsonl"
    p.write_text('{"prefill_tokens": [3, 4], "batch_size": [1, 2]}\n'
                 '{"prefill_tokens": [true, 4], "batch_size": [1, 2]}\n')
    expected = ("prefill_tokens[0]: expected a finite number in [0, 2147483647] (int, float "
                "or Fraction), got True (a boolean)")
    with pytest.raises(ValueError) as exc:
        load_snapshots(p)
    assert str(exc.value) == f"{p}, line 2: {expected}"
    with pytest.raises(ValueError) as exc:
        Snapshot([True, 4], [1, 2])
    assert str(exc.value) == expected
    assert main(["audit", "--snapshots", str(p), "--lam", "100"]) == 2
    assert one_line_error(capsys).endswith(f"line 2: {expected}")


@pytest.mark.parametrize(("value", "shown"), [(None, "None"), (2**70, "1180591620717411303424"),
                                               ("7", "'7' (a str)")])
def test_snapshot_api_says_what_was_expected(value: object, shown: str) -> None:
    with pytest.raises(ValueError) as exc:
        Snapshot([1, 2], [0, value])
    assert str(exc.value) == ("batch_size[1]: expected a finite number in [0, 2147483647] "
                              f"(int, float or Fraction), got {shown}")


def test_snapshot_arrays_are_read_only_and_private() -> None:
    mine = np.array([100, 5000])
    snap = Snapshot(mine, [3, 0])
    det = Detector(256.0)
    before = det.check(snap).product_choice
    with pytest.raises(ValueError, match="read-only"):
        snap.prefill_tokens[0] = 5000
    mine[1] = 0  # the caller's own array stays writable and does not reach the snapshot
    assert snap.prefill_tokens.tolist() == [100, 5000]
    assert det.check(snap).product_choice == before
    for name in ("prefill_tokens", "batch_size"):
        assert not getattr(snap, name).flags.writeable


def test_snapshot_accepts_fractions() -> None:
    from fractions import Fraction

    s = Snapshot([Fraction(6, 2), 4], [1, Fraction(1, 2)])
    assert s.prefill_tokens.dtype == np.int64 and s.prefill_tokens.tolist() == [3, 4]
    assert s.batch_size.tolist() == [1.0, 0.5]


def test_check_says_a_snapshot_was_expected() -> None:
    det = Detector(256.0)
    with pytest.raises(TypeError, match=r"^check: expected a Snapshot, got list; build one with "
                       r"Snapshot\(prefill_tokens, batch_size\)"):
        det.check([[100, 200], [1, 2]])
    with pytest.raises(TypeError, match=r"check_many: expected arrays .* got a Snapshot"):
        det.check_many(Snapshot([1, 2], [1, 2]), [1, 2])


# ------------------------------------------------------------------------- calibration


def _decode_only_csv(path: Path) -> Path:
    path.write_text("prefill_tokens,prefill_context,decode_seqs,decode_context,"
                    "iteration_s_median\n0,0,1,512,0.00712\n0,0,8,2048,0.00790\n"
                    "0,0,64,512,0.00850\n0,0,16,8192,0.00990\n")
    return path


def test_decode_only_rows_do_not_fit_c_pf(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    d = np.array([[0, 0, 1, 512], [0, 0, 8, 2048], [0, 0, 64, 512], [0, 0, 16, 8192]], float)
    with pytest.raises(UnidentifiableError) as exc:
        fit_latency(d[:, 0], d[:, 1], d[:, 2], d[:, 3], np.array([7.1e-3, 7.9e-3, 8.5e-3, 9.9e-3]))
    assert exc.value.coefficients == ("c_pf",)
    assert "no rows with prefill_tokens > 0" in str(exc.value)
    csv_path = _decode_only_csv(tmp_path / "decode.csv")
    out = tmp_path / "preset.json"
    assert main(["calibrate", str(csv_path), "--out", str(out)]) == 2
    assert one_line_error(capsys) == (
        f"lmetric-theory calibrate: error: {csv_path}: cannot fit c_pf: no rows with "
        "prefill_tokens > 0; add such rows, or pin it (e.g. --pin c_pf=VALUE)")
    assert not out.exists()


def test_calibrate_unwritable_out_and_binary_input(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    csv_path = _decode_only_csv(tmp_path / "decode.csv")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["calibrate", str(csv_path), "--pin", "c_pf=2e-5", "--out",
                 str(blocker / "p.json")]) == 2
    assert one_line_error(capsys).startswith(f"lmetric-theory calibrate: error: cannot write "
                                             f"{blocker / 'p.json'}: ")
    blob = tmp_path / "blob.csv"
    blob.write_bytes(bytes(range(256)))
    assert main(["calibrate", str(blob)]) == 2
    assert one_line_error(capsys) == (f"lmetric-theory calibrate: error: {blob}: line 1: "
                                      "contains a NUL byte: a binary file, not a CSV")


def test_calibrate_help_documents_the_columns(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["calibrate", "--help"])
    out = capsys.readouterr().out
    for col in ("prefill_tokens", "prefill_context", "decode_seqs", "decode_context",
                "iteration_s_median", "--pin"):
        assert col in out


def test_preset_with_absurd_coefficient_is_refused(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "absurd.json"
    p.write_text(json.dumps({"name": "absurd", "latency": {"c0": 0.007, "c_pf": 1e290,
                                                           "c_dec": 1e-5, "c_kv": 4e-8},
                             "kv_capacity_tokens": 400000}, indent=2))
    with pytest.raises(ValueError) as exc:
        load_preset_file(p)
    assert str(exc.value) == (f"{p}, line 5: field 'latency.c_pf': expected a finite number in "
                              "[0, 1] s/token, got 1e+290")
    assert main(["simulate", "--count", "5", "--preset", str(p)]) == 2
    assert one_line_error(capsys).endswith("got 1e+290")


# ------------------------------------------------------------------------- policy specs


def test_policy_parameter_range() -> None:
    from lmetric_theory.policies import make_policy

    with pytest.raises(ValueError, match=r"parameter 'b0': '1e30' is outside the valid range "
                       r"\[-2147483647, 2147483647\]"):
        make_policy("lmetric:b0=1e30")
    with pytest.raises(ValueError, match="cannot read 'nan'"):
        make_policy("linear:lam=nan")


def test_absurd_instance_count_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--count", "5", "--instances", "1000000000"]) == 2
    assert one_line_error(capsys).endswith(
        "n_instances must be an integer in [1, 4096], got 1000000000")


@pytest.mark.parametrize(("ids", "shown"), [("5", "5"), ('"ab"', "'ab' (a str)"),
                                             ("true", "True (a boolean)")])
def test_instance_ids_must_be_an_array(tmp_path: Path, ids: str, shown: str) -> None:
    p = tmp_path / "ids.jsonl"
    p.write_text('{"prefill_tokens": [1, 2], "batch_size": [1, 2], "instance_ids": ' + ids
                 + "}\n")
    with pytest.raises(ValueError) as exc:
        load_snapshots(p)
    assert str(exc.value) == f"{p}, line 1: instance_ids: expected an array of names, got {shown}"
    with pytest.raises(ValueError, match="instance_ids: expected a list of 2 names"):
        Snapshot([1, 2], [1, 2], instance_ids="ab")
