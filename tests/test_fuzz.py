"""Fuzz tests: malformed input to every loader and every command-line entry.

Each input ends in either a correct result or a clear error: a ``ValueError`` (a
``TraceError`` for traces) whose message is one line naming the file, the line and the field;
from the command line, exit code 2 with one such line on stderr. Never a traceback, never a
non-finite figure in a report, never a half-written output file.

Where the validity of an input is easy to state, an oracle written here (from the documented
rules, not from the loader's code) decides it, and the test checks the loader agrees: a
valid file must load to exactly the expected requests, an invalid one must fail at its
first bad line.

The default run keeps the example counts small. ``LMETRIC_FUZZ_SCALE=20`` (or any factor)
multiplies every count; the tests marked ``slow`` run the large profile regardless.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmetric_theory.audit import load_snapshots
from lmetric_theory.cli import main
from lmetric_theory.cli.calibrate import read_calibration_csv
from lmetric_theory.core.limits import COEF_MAX, COUNT_MAX, TIME_MAX_S, TOKENS_MAX
from lmetric_theory.detector import Detector, Snapshot
from lmetric_theory.sim.latency import load_preset_file
from lmetric_theory.workload import TraceError, load_trace

SCALE = max(1, int(os.environ.get("LMETRIC_FUZZ_SCALE", "1")))
ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "lmetric_theory" / "presets"


def fuzz(n: int, **kw: Any) -> settings:
    """Hypothesis settings: ``n`` examples (times ``LMETRIC_FUZZ_SCALE``), no deadline."""
    return settings(
        max_examples=n * SCALE,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
        **kw,
    )


# ============================================================================ shared values

NAN, INF = float("nan"), float("inf")
#: Values that are wrong for any numeric field.
JUNK: list[Any] = [None, True, False, "5", "", "abc", [], [1], {}, {"a": 1}, NAN, INF, -INF,
                   -1, -0.5, 2**63, 2**70, -(2**70), 1e30, 1e300]
#: Cells that are wrong in a CSV number column (no commas: one record per line).
JUNK_CELLS = ["", "abc", "True", "true", "None", "nan", "NaN", "inf", "-inf", "-1", "1e30",
              "1e400", str(2**70), "0x10", "1/2", " ", "+-1", "\u0661"]


def junk_of(values: list[Any]) -> st.SearchStrategy[Any]:
    """One of ``values``, deep-copied (a drawn list or dict may be mutated by the test)."""
    return st.sampled_from(values).map(copy.deepcopy)


def is_int(v: Any) -> bool:
    return type(v) is int


def is_num(v: Any) -> bool:
    return type(v) in (int, float)


def one_line(msg: str) -> bool:
    return "\n" not in msg.strip() and "Traceback" not in msg


def finite_everywhere(obj: Any) -> bool:
    """True when every number in a JSON document is finite."""
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, dict):
        return all(finite_everywhere(v) for v in obj.values())
    if isinstance(obj, list):
        return all(finite_everywhere(v) for v in obj)
    return True


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``main(argv)`` in-process: (exit code, stdout, stderr); argparse exits become codes."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean_error(code: int, err: str, name: str) -> None:
    """Exit 2 with one line on stderr that names the file."""
    assert code == 2, err
    assert one_line(err), err
    assert name in err, err


# ============================================================================ traces

# --- oracle ------------------------------------------------------------------------------

MOONCAKE_BLOCK = 512
GENERIC_BLOCK = 16


def _tokens_ok(v: Any) -> bool:
    return is_int(v) and 1 <= v <= TOKENS_MAX


def _time_ok(v: Any, to_s: float) -> bool:
    if not is_num(v):
        return False
    try:
        x = float(v)
    except OverflowError:
        return False
    return math.isfinite(x) and 0 <= x <= TIME_MAX_S / to_s  # 1e13 ms, 1e10 s


def _hashes_ok(h: Any, inp: Any, block: int, required: bool) -> bool:
    if h is None or h is _ABSENT:
        return not required
    if type(h) is not list or not all(is_int(x) and -(2**63) <= x < 2**63 for x in h):
        return False
    return len(h) == -(-inp // block)


class _Absent:
    pass


_ABSENT: Any = _Absent()


def mooncake_bad_fields(rec: dict[str, Any]) -> list[str]:
    """Fields of a Mooncake record that break the documented rules, in the loader's order."""
    bad = []
    if not _time_ok(rec.get("timestamp", _ABSENT), 1e-3):
        bad.append("timestamp")
    if not _tokens_ok(rec.get("input_length", _ABSENT)):
        bad.append("input_length")
    if not _tokens_ok(rec.get("output_length", _ABSENT)):
        bad.append("output_length")
    if not bad and not _hashes_ok(rec.get("hash_ids", _ABSENT), rec["input_length"],
                                  MOONCAKE_BLOCK, True):
        bad.append("hash_ids")
    elif "input_length" in bad or "timestamp" in bad or "output_length" in bad:
        h = rec.get("hash_ids", _ABSENT)
        if h is _ABSENT or h is None or type(h) is not list or not all(is_int(x) for x in h):
            bad.append("hash_ids")
    return bad


def generic_bad_fields(rec: dict[str, Any]) -> list[str]:
    """Same for the generic JSON Lines format (``arrival_s`` in seconds)."""
    bad = []
    if not _time_ok(rec.get("arrival_s", _ABSENT), 1.0):
        bad.append("arrival_s")
    if not _tokens_ok(rec.get("input_tokens", _ABSENT)):
        bad.append("input_tokens")
    if not _tokens_ok(rec.get("output_tokens", _ABSENT)):
        bad.append("output_tokens")
    h = rec.get("hash_ids", _ABSENT)
    if bad:
        if h is not _ABSENT and h is not None and (
            type(h) is not list or not all(is_int(x) for x in h)
        ):
            bad.append("hash_ids")
    elif not _hashes_ok(h, rec["input_tokens"], GENERIC_BLOCK, False):
        bad.append("hash_ids")
    s = rec.get("session_id", _ABSENT)
    if s is not _ABSENT and s is not None and not (
        (is_int(s) and 0 <= s < 2**63) or (type(s) is str and s)
    ):
        bad.append("session_id")
    return bad


def bailian_bad_fields(rec: dict[str, Any]) -> list[str]:
    """Same for Bailian (``timestamp`` in seconds, 16-token blocks, int64 chat ids)."""
    bad = []
    if not _time_ok(rec.get("timestamp", _ABSENT), 1.0):
        bad.append("timestamp")
    if not _tokens_ok(rec.get("input_length", _ABSENT)):
        bad.append("input_length")
    if not _tokens_ok(rec.get("output_length", _ABSENT)):
        bad.append("output_length")
    h = rec.get("hash_ids", _ABSENT)
    if bad:
        if h is _ABSENT or h is None or type(h) is not list or not all(is_int(x) for x in h):
            bad.append("hash_ids")
    elif not _hashes_ok(h, rec["input_length"], GENERIC_BLOCK, True):
        bad.append("hash_ids")
    for k in ("chat_id", "parent_chat_id"):
        v = rec.get(k, _ABSENT)
        if not (is_int(v) and -(2**63) <= v < 2**63):
            bad.append(k)
    return bad


# --- strategies --------------------------------------------------------------------------


def _maybe_junk(valid: st.SearchStrategy[Any], p_junk: int = 6) -> st.SearchStrategy[Any]:
    """Mostly valid values, sometimes junk (about one in ``p_junk``)."""
    return st.one_of(*([valid] * (p_junk - 1)), junk_of(JUNK))


@st.composite
def mooncake_record(draw: st.DrawFn) -> dict[str, Any]:
    ts = draw(_maybe_junk(st.one_of(st.integers(0, 10**7), st.floats(0, 1e7),
                                    st.sampled_from([0, 1e13, 1e13 + 2048, 1e12]))))
    inp = draw(_maybe_junk(st.one_of(st.integers(1, 3000), st.sampled_from([TOKENS_MAX,
                                                                             TOKENS_MAX + 1, 0]))))
    out = draw(_maybe_junk(st.integers(1, 50)))
    rec: dict[str, Any] = {"timestamp": ts, "input_length": inp, "output_length": out}
    n = -(-inp // MOONCAKE_BLOCK) if is_int(inp) and 0 < inp <= 3000 else 1
    hashes = draw(st.one_of(
        st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n),
        st.lists(st.integers(0, 9), max_size=4),
        junk_of(JUNK + [[True], [1.5], [2**64]]),
    ))
    rec["hash_ids"] = hashes
    drop = draw(st.sampled_from([None, None, None, None, "timestamp", "input_length",
                                 "hash_ids"]))
    if drop:
        rec.pop(drop)
    return rec


@st.composite
def generic_record(draw: st.DrawFn) -> dict[str, Any]:
    t = draw(_maybe_junk(st.one_of(st.floats(0, 1e4), st.integers(0, 10**4),
                                   st.sampled_from([TIME_MAX_S, 1.8e9, TIME_MAX_S * 2]))))
    inp = draw(_maybe_junk(st.integers(1, 200)))
    out = draw(_maybe_junk(st.integers(1, 50)))
    rec: dict[str, Any] = {"arrival_s": t, "input_tokens": inp, "output_tokens": out}
    if draw(st.booleans()):
        n = -(-inp // GENERIC_BLOCK) if is_int(inp) and 0 < inp <= 200 else 1
        rec["hash_ids"] = draw(st.one_of(st.lists(st.integers(0, 20), min_size=n, max_size=n),
                                         junk_of(JUNK)))
    if draw(st.booleans()):
        rec["session_id"] = draw(st.one_of(st.integers(0, 5), st.text(max_size=3),
                                           junk_of(JUNK)))
    return rec


@st.composite
def bailian_record(draw: st.DrawFn) -> dict[str, Any]:
    t = draw(_maybe_junk(st.one_of(st.floats(0, 1e4), st.sampled_from([TIME_MAX_S,
                                                                       TIME_MAX_S + 1]))))
    inp = draw(_maybe_junk(st.integers(1, 100)))
    out = draw(_maybe_junk(st.integers(1, 20)))
    n = -(-inp // GENERIC_BLOCK) if is_int(inp) and 0 < inp <= 100 else 1
    return {
        "chat_id": draw(_maybe_junk(st.integers(-(2**63), 2**63 - 1))),
        "parent_chat_id": draw(_maybe_junk(st.integers(-1, 5))),
        "timestamp": t, "input_length": inp, "output_length": out,
        "hash_ids": draw(st.one_of(st.lists(st.integers(0, 9), min_size=n, max_size=n),
                                   junk_of(JUNK))),
        "type": draw(st.sampled_from(["text", "image", 5, None])),
    }


# --- checks ------------------------------------------------------------------------------


def check_workload_invariants(w: Any) -> None:
    n = len(w)
    assert n >= 1
    t = w.arrival_s
    assert np.all(np.isfinite(t)) and t[0] == 0 and np.all(np.diff(t) >= 0)
    assert float(t[-1]) <= TIME_MAX_S
    for a in (w.input_tokens, w.output_tokens):
        assert a.dtype == np.int64 and a.min() >= 1 and a.max() <= TOKENS_MAX
    lens = np.diff(w.hash_offsets)
    assert np.array_equal(lens, -(-w.input_tokens // w.block_size))
    assert int(w.hash_offsets[-1]) == w.hash_ids.shape[0]
    for a in (w.arrival_s, w.input_tokens, w.output_tokens, w.hash_ids):
        assert not a.flags.writeable


def expected_requests(records: list[dict[str, Any]], tf: str, inf: str, outf: str,
                      to_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = np.array([float(r[tf]) for r in records], dtype=np.float64) * to_s
    order = np.argsort(t, kind="stable")
    t = t[order]
    inp = np.array([r[inf] for r in records], dtype=np.int64)[order]
    out = np.array([r[outf] for r in records], dtype=np.int64)[order]
    return t - t[0], inp, out


def check_against_oracle(path: Path, records: list[dict[str, Any]], bad_of: Any, fmt: str,
                         skip: bool) -> None:
    spec = {"mooncake": ("timestamp", "input_length", "output_length", 1e-3),
            "bailian": ("timestamp", "input_length", "output_length", 1.0),
            "jsonl": ("arrival_s", "input_tokens", "output_tokens", 1.0)}[fmt]
    bad = [bad_of(r) for r in records]
    first_bad = next((i for i, b in enumerate(bad) if b), None)
    good = [r for r, b in zip(records, bad, strict=True) if not b]
    try:
        w = load_trace(path, format=fmt, skip_bad_lines=skip)
    except TraceError as exc:
        msg = str(exc)
        assert one_line(msg) and str(path) in msg
        if skip:
            assert not good, msg
            assert "no valid requests" in msg
        else:
            assert first_bad is not None, f"valid file refused: {msg}"
            assert exc.line == first_bad + 1, msg
            assert f"line {first_bad + 1}" in msg
            assert exc.field is None or exc.field in bad[first_bad], (msg, bad[first_bad])
        return
    if not skip:
        assert first_bad is None, f"line {first_bad + 1} accepted: {records[first_bad]}"
    assert w.meta["skipped_lines"] == len(records) - len(good)
    check_workload_invariants(w)
    t, inp, out = expected_requests(good, *spec)
    assert np.array_equal(w.arrival_s, t)
    assert np.array_equal(w.input_tokens, inp) and np.array_equal(w.output_tokens, out)


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.mark.filterwarnings("ignore::lmetric_theory.workload.TraceOrderWarning")
@fuzz(100)
@given(records=st.lists(mooncake_record(), min_size=1, max_size=6), skip=st.booleans())
def test_mooncake_trace_matches_oracle(tmp_path_factory: Any, records: list[dict[str, Any]],
                                       skip: bool) -> None:
    path = tmp_path_factory.mktemp("mc") / "trace.jsonl"
    _write_jsonl(path, records)
    check_against_oracle(path, records, mooncake_bad_fields, "mooncake", skip)


@pytest.mark.filterwarnings("ignore::lmetric_theory.workload.TraceOrderWarning")
@fuzz(100)
@given(records=st.lists(generic_record(), min_size=1, max_size=6), skip=st.booleans())
def test_generic_jsonl_trace_matches_oracle(tmp_path_factory: Any,
                                            records: list[dict[str, Any]], skip: bool) -> None:
    path = tmp_path_factory.mktemp("gj") / "trace.jsonl"
    _write_jsonl(path, records)
    check_against_oracle(path, records, generic_bad_fields, "jsonl", skip)


@pytest.mark.filterwarnings("ignore::lmetric_theory.workload.TraceOrderWarning")
@fuzz(80)
@given(records=st.lists(bailian_record(), min_size=1, max_size=6), skip=st.booleans())
def test_bailian_trace_matches_oracle(tmp_path_factory: Any, records: list[dict[str, Any]],
                                      skip: bool) -> None:
    path = tmp_path_factory.mktemp("bl") / "trace.jsonl"
    _write_jsonl(path, records)
    check_against_oracle(path, records, bailian_bad_fields, "bailian", skip)


def _cell_ok_number(cell: str) -> float | None:
    c = cell.strip()
    try:
        v: float = int(c)
    except ValueError:
        try:
            v = float(c)
        except ValueError:
            return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) and 0 <= f <= TIME_MAX_S else None


def _cell_ok_tokens(cell: str) -> int | None:
    try:
        v = int(cell.strip())
    except ValueError:
        return None
    return v if 1 <= v <= TOKENS_MAX else None


@pytest.mark.filterwarnings("ignore::lmetric_theory.workload.TraceOrderWarning")
@fuzz(100)
@given(
    rows=st.lists(
        st.tuples(
            st.one_of(st.floats(0, 1e4).map(repr), st.integers(0, 99).map(str),
                      st.sampled_from(JUNK_CELLS + ["1e10", "10000000001"])),
            st.one_of(st.integers(1, 99).map(str), st.sampled_from(JUNK_CELLS + ["16777217"])),
            st.one_of(st.integers(1, 99).map(str), st.sampled_from(JUNK_CELLS)),
        ),
        min_size=1,
        max_size=6,
    ),
    suffix=st.sampled_from([".csv", ".txt", ""]),
)
def test_csv_trace_matches_oracle(tmp_path_factory: Any, rows: list[tuple[str, str, str]],
                                  suffix: str) -> None:
    path = tmp_path_factory.mktemp("csv") / f"trace{suffix}"
    path.write_text("arrival_s,input_tokens,output_tokens\n"
                    + "".join(",".join(r) + "\n" for r in rows))
    parsed = [(_cell_ok_number(a), _cell_ok_tokens(b), _cell_ok_tokens(c)) for a, b, c in rows]
    first_bad = next((i for i, p in enumerate(parsed) if None in p), None)
    try:
        w = load_trace(path)
    except TraceError as exc:
        msg = str(exc)
        assert one_line(msg) and str(path) in msg
        assert first_bad is not None, f"valid CSV refused: {msg}"
        assert exc.line == first_bad + 2, msg  # the header is line 1
        names = ("arrival_s", "input_tokens", "output_tokens")
        assert exc.field == names[parsed[first_bad].index(None)], msg
        return
    assert first_bad is None, f"line {first_bad + 2} accepted: {rows[first_bad]}"
    check_workload_invariants(w)
    t = np.array([p[0] for p in parsed])
    order = np.argsort(t, kind="stable")
    assert np.array_equal(w.arrival_s, t[order] - t[order][0])
    assert w.input_tokens.tolist() == [parsed[i][1] for i in order]


# --- anything at all ---------------------------------------------------------------------

_FRAGMENTS = ['{"timestamp": 1, "input_length": 10, "output_length": 1, "hash_ids": [0]}',
              '{"arrival_s": 0, "input_tokens": 5, "output_tokens": 1}',
              '{"chat_id": 1, "parent_chat_id": -1, "timestamp": 0.5, "input_length": 20, '
              '"output_length": 2, "hash_ids": [1, 2]}',
              "arrival_s,input_tokens,output_tokens", "0,5,1", "[1,2,3]", "{", "}", "null",
              '"text"', "1e999", "NaN", "\ufeff", "\x00", "  ", "", "0.5,7,2,extra",
              '{"timestamp": 1e30, "input_length": 10, "output_length": 1, "hash_ids": [0]}',
              "[" * 3000, '{"timestamp": ' + "9" * 5000 + "}"]

def _as_bytes(lines: list[str]) -> bytes:
    """Lines joined as a file; a lone surrogate becomes bytes that are not valid UTF-8."""
    return "\n".join(lines).encode("utf-8", "surrogatepass")


any_line = st.one_of(st.sampled_from(_FRAGMENTS),
                     st.text(alphabet=st.characters(blacklist_characters="\n\r"), max_size=30))


@pytest.mark.filterwarnings("ignore::lmetric_theory.workload.TraceOrderWarning")
@fuzz(150)
@given(
    content=st.one_of(
        st.lists(any_line, min_size=0, max_size=6).map(_as_bytes),
        st.binary(max_size=200),
    ),
    suffix=st.sampled_from([".jsonl", ".csv", ".json", ".txt", ""]),
    skip=st.booleans(),
)
def test_any_trace_file_loads_or_fails_cleanly(tmp_path_factory: Any, content: bytes,
                                               suffix: str, skip: bool) -> None:
    path = tmp_path_factory.mktemp("any") / f"t{suffix}"
    path.write_bytes(content)
    try:
        w = load_trace(path, skip_bad_lines=skip)
    except TraceError as exc:
        msg = str(exc)
        assert one_line(msg) and msg.startswith(str(path)), msg
        if exc.line is not None:
            assert f"line {exc.line}" in msg
        if exc.field is not None:
            assert f"'{exc.field}'" in msg
        return
    check_workload_invariants(w)


# ============================================================================ snapshots

snap_value = st.one_of(
    st.integers(0, 10**6), st.integers(0, 10**6), st.floats(0, 1e6),
    junk_of(JUNK + [COUNT_MAX, COUNT_MAX + 1, 2**31 + 0.5, -0.0]),
)


def _value_ok(v: Any) -> bool:
    if type(v) not in (int, float):
        return False
    try:
        f = float(v)
    except OverflowError:
        return False
    return math.isfinite(f) and 0 <= f <= COUNT_MAX


@st.composite
def snapshot_object(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 3))
    obj: dict[str, Any] = {
        "prefill_tokens": draw(st.lists(snap_value, min_size=n, max_size=n)),
        "batch_size": draw(st.lists(snap_value, min_size=n, max_size=n)),
    }
    if draw(st.integers(0, 5)) == 0:
        obj["batch_size"] = draw(junk_of(JUNK + [[1] * (n + 1)]))
    if draw(st.booleans()):
        obj["time_s"] = draw(st.one_of(st.floats(0, 100), junk_of(JUNK)))
    if draw(st.integers(0, 3)) == 0:
        obj["instance_ids"] = draw(st.one_of(
            st.lists(st.one_of(st.text(max_size=3), st.integers()), min_size=n, max_size=n),
            junk_of(JUNK + ["ab", [1] * (n + 1)])))
    return obj


def snapshot_ok(obj: dict[str, Any], n_first: int | None) -> bool:
    P, B = obj.get("prefill_tokens"), obj.get("batch_size")
    if type(P) is not list or type(B) is not list or not P or len(P) != len(B):
        return False
    if n_first is not None and len(P) != n_first:
        return False
    if not all(_value_ok(v) for v in P + B):
        return False
    if obj.get("time_s") is not None:  # null means absent
        t = obj["time_s"]
        if type(t) not in (int, float) or not math.isfinite(float(t)):
            return False
    ids = obj.get("instance_ids")
    return ids is None or (type(ids) is list and len(ids) == len(P))


@fuzz(100)
@given(objs=st.lists(snapshot_object(), min_size=1, max_size=5))
def test_snapshot_jsonl_matches_oracle(tmp_path_factory: Any, objs: list[dict[str, Any]]) -> None:
    path = tmp_path_factory.mktemp("snap") / "decisions.jsonl"
    _write_jsonl(path, objs)
    n_first: int | None = None
    first_bad = None
    for i, o in enumerate(objs):
        if not snapshot_ok(o, n_first):
            first_bad = i
            break
        n_first = len(o["prefill_tokens"]) if n_first is None else n_first
    try:
        batch = load_snapshots(path)
    except ValueError as exc:
        msg = str(exc)
        assert one_line(msg) and msg.startswith(f"{path}, line "), msg
        assert first_bad is not None, f"valid file refused: {msg}"
        assert msg.startswith(f"{path}, line {first_bad + 1}: "), msg
        return
    assert first_bad is None, f"line {first_bad + 1} accepted: {objs[first_bad]}"
    P = np.array([[float(v) for v in o["prefill_tokens"]] for o in objs])
    assert np.array_equal(np.asarray(batch.prefill_tokens, dtype=np.float64), P)


@fuzz(200)
@given(P=st.one_of(st.lists(snap_value, min_size=0, max_size=4),
                   st.lists(st.one_of(snap_value, st.fractions(0, 100)), min_size=1,
                            max_size=3),
                   junk_of(JUNK)),
       B=st.lists(snap_value, min_size=1, max_size=4))
def test_snapshot_python_api(P: Any, B: Any) -> None:
    try:
        s = Snapshot(P, B)
    except ValueError as exc:
        msg = str(exc)
        assert one_line(msg) and msg.split("[")[0].split(":")[0] in (
            "prefill_tokens", "batch_size"), msg
        return
    assert type(P) is list and len(P) == len(B) >= 1
    assert all(isinstance(v, Fraction) or _value_ok(v) for v in P) and all(map(_value_ok, B))
    for arr, src in ((s.prefill_tokens, P), (s.batch_size, B)):
        assert not arr.flags.writeable
        assert np.array_equal(arr.astype(np.float64), np.array([float(v) for v in src]))
        with pytest.raises(ValueError):
            arr[0] = 0
    v = Detector(100.0).check(s)
    assert 0 <= v.product_choice < len(P)


# ============================================================================ calibration

calib_cell = st.one_of(st.integers(0, 4096).map(str), st.sampled_from(JUNK_CELLS))
time_cell = st.one_of(st.floats(1e-3, 0.2).map(repr), st.sampled_from(JUNK_CELLS + ["0",
                                                                                    "3601"]))


@fuzz(50)
@given(rows=st.lists(st.tuples(calib_cell, calib_cell, calib_cell, calib_cell, time_cell),
                     min_size=0, max_size=8))
def test_calibration_csv_reader(tmp_path_factory: Any, rows: list[tuple[str, ...]]) -> None:
    path = tmp_path_factory.mktemp("cal") / "iters.csv"
    header = "prefill_tokens,prefill_context,decode_seqs,decode_context,iteration_s_median\n"
    path.write_text(header + "".join(",".join(r) + "\n" for r in rows))
    try:
        cols = read_calibration_csv(path)
    except ValueError as exc:
        msg = str(exc)
        assert one_line(msg) and msg.startswith(f"{path}: "), msg
        return
    for k, v in cols.items():
        assert all(math.isfinite(x) and x >= 0 for x in v), k
    assert all(x > 0 for x in cols["iteration_s_median"])


@st.composite
def calibration_rows(draw: st.DrawFn) -> list[tuple[float, ...]]:
    """Rows from a true model, some columns zeroed (so some coefficients vanish), sometimes
    noisy, sometimes scaled to absurd units."""
    true = dict(c0=7e-3, c_pf=3e-5, c_dec=1e-5, c_kv=4e-8)
    n = draw(st.integers(1, 10))
    zero_pf = draw(st.booleans())
    zero_dec = draw(st.booleans())
    unit = draw(st.sampled_from([1.0, 1.0, 1.0, 1e6, 1e-9]))
    rows = []
    for _ in range(n):
        pt = 0 if zero_pf else draw(st.integers(0, 8192))
        pc = draw(st.integers(0, 8192))
        ds = 0 if zero_dec else draw(st.integers(0, 256))
        dc = draw(st.integers(0, 8192))
        kv = (pc + pt if pt else 0) + ds * dc
        t = (true["c0"] + true["c_pf"] * pt + true["c_dec"] * ds + true["c_kv"] * kv) * unit
        t *= draw(st.floats(0.9, 1.1))
        rows.append((pt, pc, ds, dc, t))
    return rows


@fuzz(30)
@given(rows=calibration_rows(), attention=st.booleans())
def test_calibrate_command(tmp_path_factory: Any, capsys: pytest.CaptureFixture[str],
                           rows: list[tuple[float, ...]], attention: bool) -> None:
    d = tmp_path_factory.mktemp("calcli")
    path = d / "iters.csv"
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["prefill_tokens", "prefill_context", "decode_seqs", "decode_context",
                "iteration_s_median"])
    w.writerows([(a, b, c, e, repr(t)) for a, b, c, e, t in rows])
    path.write_text(buf.getvalue())
    out = d / "out" / "fitted.json"
    argv = ["calibrate", str(path), "--out", str(out), "--json"]
    code, stdout, err = run_cli(argv + (["--attention"] if attention else []), capsys)
    if code != 0:
        assert_clean_error(code, err, str(path))
        assert not out.exists()
        assert not out.parent.exists() or not list(out.parent.iterdir())  # no temp file left
        return
    doc = json.loads(stdout)
    assert finite_everywhere(doc)
    assert json.loads(out.read_text()) == doc
    assert [p.name for p in out.parent.iterdir()] == ["fitted.json"]
    preset = load_preset_file(out)  # what calibrate writes, simulate accepts
    for k, hi in COEF_MAX.items():
        assert 0 <= getattr(preset.latency, k) <= hi
    assert math.isfinite(doc["fit"]["mean_rel_error"])


def test_calibrate_decode_only_rows_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                           ) -> None:
    path = tmp_path / "decode.csv"
    path.write_text("prefill_tokens,prefill_context,decode_seqs,decode_context,"
                    "iteration_s_median\n0,0,1,512,0.0071\n0,0,8,2048,0.0079\n"
                    "0,0,64,512,0.0085\n0,0,16,8192,0.0099\n")
    out = tmp_path / "p.json"
    code, _, err = run_cli(["calibrate", str(path), "--out", str(out)], capsys)
    assert_clean_error(code, err, str(path))
    assert "c_pf" in err and "no rows with prefill_tokens > 0" in err
    assert not out.exists()
    code, stdout, err = run_cli(["calibrate", str(path), "--pin", "c_pf=2e-5", "--out",
                                 str(out), "--json"], capsys)
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["latency"]["c_pf"] == 2e-5 and doc["fit"]["pinned"] == {"c_pf": 2e-5}


# ============================================================================ presets


@st.composite
def preset_doc(draw: st.DrawFn) -> dict[str, Any]:
    doc = json.loads((PRESETS / "h100-llama3-8b.json").read_text())
    for _ in range(draw(st.integers(0, 2))):
        where = draw(st.sampled_from(["c0", "c_pf", "c_dec", "c_kv", "c_att",
                                      "kv_capacity_tokens", "token_budget", "max_batch",
                                      "description", "latency"]))
        value = draw(st.one_of(junk_of(JUNK), st.floats(0, 2), st.integers(0, 10**6)))
        if where.startswith("c") and isinstance(doc["latency"], dict):
            doc["latency"][where] = value
        elif not where.startswith("c"):
            doc[where] = value
    return doc


def preset_ok(doc: dict[str, Any]) -> bool:
    lat = doc.get("latency")
    if type(lat) is not dict:
        return False
    for k, hi in COEF_MAX.items():
        if k not in lat and k != "c_att":
            return False
        v = lat.get(k, 0.0)
        if type(v) not in (int, float) or not (0 <= float(v) <= hi):
            return False
    for k, hi in (("kv_capacity_tokens", 2**40), ("token_budget", TOKENS_MAX),
                  ("max_batch", 2**20)):
        v = doc.get(k)
        if type(v) is not int or not 1 <= v <= hi:
            return False
    if doc["max_batch"] > doc["token_budget"]:
        return False
    return type(doc.get("description", "")) is str


@fuzz(100)
@given(doc=preset_doc())
def test_preset_file(tmp_path_factory: Any, doc: dict[str, Any]) -> None:
    path = tmp_path_factory.mktemp("preset") / "mine.json"
    path.write_text(json.dumps(doc, indent=2))
    try:
        p = load_preset_file(path)
    except ValueError as exc:
        msg = str(exc)
        assert one_line(msg) and msg.startswith(f"{path}"), msg
        assert not preset_ok(doc), f"valid preset refused: {msg}"
        assert "field '" in msg or "expected a JSON object" in msg, msg
        return
    assert preset_ok(doc), f"invalid preset accepted: {doc}"
    assert p.name == "mine"


@fuzz(40)
@given(content=st.one_of(st.binary(max_size=100),
                         st.sampled_from(["", "[]", "{", "null", '{"latency": 5}',
                                          "[" * 5000, '{"name": "x"}'])))
def test_preset_file_any_content(tmp_path_factory: Any, content: Any) -> None:
    path = tmp_path_factory.mktemp("presetany") / "any.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError) as exc:
        load_preset_file(path)
    assert one_line(str(exc.value)) and str(exc.value).startswith(str(path))


# ============================================================================ policy specs

spec_value = st.one_of(st.sampled_from(["nan", "inf", "-inf", "1e400", "true", "", "1/0",
                                        "-1", "0", "1", "1e30", str(2**70), "0.5", "abc",
                                        "lowest", "random", "uncached"]),
                       st.text(alphabet="0123456789.-e/", max_size=6))


@fuzz(150)
@given(name=st.sampled_from(["lmetric", "linear", "round-robin", "least-loaded",
                             "guarded-lmetric", "nope", ""]),
       params=st.lists(st.tuples(st.sampled_from(["p0", "b0", "lam", "tie", "P", "B", "x",
                                                  "block", "cap"]), spec_value), max_size=3))
def test_policy_spec(name: str, params: list[tuple[str, str]]) -> None:
    from lmetric_theory.policies import make_policy

    spec = name + (":" + ",".join(f"{k}={v}" for k, v in params) if params else "")
    try:
        make_policy(spec)
    except ValueError as exc:
        assert one_line(str(exc)), str(exc)


# ============================================================================ CLI entries

TRACE_CASES = [
    ('{"timestamp": 1e30, "input_length": 10, "output_length": 1, "hash_ids": [0]}\n',
     "trace.jsonl", "line 1: field 'timestamp'"),
    ("[1,2,3]\n", "trace.jsonl", "line 1: expected a JSON object, got array"),
    ('{"timestamp": 0, "input_length": true, "output_length": 1, "hash_ids": [0]}\n',
     "trace.jsonl", "line 1: field 'input_length'"),
    ("arrival_s,input_tokens,output_tokens\n0,5,1\nnan,5,1\n", "trace.csv",
     "line 3: field 'arrival_s'"),
    ("\x00\x01\x02", "trace.jsonl", "binary"),
    ("\xff\xfe", "trace.csv", "UTF-8"),
]


@pytest.mark.parametrize(("text", "name", "needle"), TRACE_CASES)
@pytest.mark.parametrize("command", ["simulate", "audit"])
def test_cli_bad_traces(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
                        name: str, needle: str, command: str) -> None:
    path = tmp_path / name
    path.write_bytes(text.encode("latin-1") if "\xff" in text else text.encode())
    out = tmp_path / "out"
    code, _, err = run_cli([command, str(path), "--json", "--out", str(out)], capsys)
    assert_clean_error(code, err, str(path))
    assert needle in err
    assert not out.exists()


@fuzz(20)
@given(records=st.lists(mooncake_record(), min_size=1, max_size=4))
def test_cli_simulate_fuzzed_trace(tmp_path_factory: Any, capsys: pytest.CaptureFixture[str],
                                   records: list[dict[str, Any]]) -> None:
    path = tmp_path_factory.mktemp("clitrace") / "trace.jsonl"
    _write_jsonl(path, records)
    code, out, err = run_cli(["simulate", str(path), "--policy", "round-robin",
                              "--instances", "2", "--json"], capsys)
    if any(mooncake_bad_fields(r) for r in records):
        assert_clean_error(code, err, str(path))
        return
    assert code == 0, err
    doc = json.loads(out)
    assert finite_everywhere(doc)
    assert doc["trace"]["requests"] == len(records)


@fuzz(30)
@given(objs=st.lists(snapshot_object(), min_size=1, max_size=4))
def test_cli_audit_fuzzed_snapshots(tmp_path_factory: Any, capsys: pytest.CaptureFixture[str],
                                    objs: list[dict[str, Any]]) -> None:
    path = tmp_path_factory.mktemp("clisnap") / "decisions.jsonl"
    _write_jsonl(path, objs)
    code, out, err = run_cli(["audit", "--snapshots", str(path), "--lam", "256", "--json"],
                             capsys)
    if code == 2:
        assert_clean_error(code, err, str(path))
        return
    assert code == 0, err
    assert finite_everywhere(json.loads(out))


@fuzz(15)
@given(doc=preset_doc())
def test_cli_simulate_fuzzed_preset(tmp_path_factory: Any, capsys: pytest.CaptureFixture[str],
                                    doc: dict[str, Any]) -> None:
    d = tmp_path_factory.mktemp("clipreset")
    path = d / "mine.json"
    path.write_text(json.dumps(doc, indent=2))
    trace = d / "small.jsonl"
    _write_jsonl(trace, [{"arrival_s": i * 0.5, "input_tokens": 40 * (i + 1),
                          "output_tokens": 5} for i in range(4)])
    code, out, err = run_cli(["simulate", str(trace), "--instances", "2", "--policy",
                              "round-robin", "--preset", str(path), "--json"], capsys)
    if not preset_ok(doc):
        assert_clean_error(code, err, str(path))
        return
    if code == 2:  # a valid preset too small for the requests: said in one line
        assert one_line(err) and "KV capacity" in err, err
        return
    assert code == 0, err
    assert finite_everywhere(json.loads(out))


@fuzz(20)
@given(spec=st.builds(lambda n, k, v: f"{n}:{k}={v}",
                      st.sampled_from(["lmetric", "linear", "guarded-lmetric"]),
                      st.sampled_from(["p0", "b0", "lam", "tie"]), spec_value))
def test_cli_policy_specs(tmp_path_factory: Any, capsys: pytest.CaptureFixture[str],
                          spec: str) -> None:
    trace = tmp_path_factory.mktemp("clipol") / "small.jsonl"
    _write_jsonl(trace, [{"arrival_s": i * 0.2, "input_tokens": 30 * (i + 1),
                          "output_tokens": 3} for i in range(5)])
    code, out, err = run_cli(["simulate", str(trace), "--instances", "2", "--policy", spec,
                              "--json"], capsys)
    if code == 2:
        assert one_line(err) and "policy" in err, err
        return
    assert code == 0, err
    assert finite_everywhere(json.loads(out))


# ============================================================================ app uploads


@pytest.mark.filterwarnings("ignore::lmetric_theory.workload.TraceOrderWarning")
@fuzz(60)
@given(content=st.one_of(
    st.lists(any_line, min_size=0, max_size=5).map(_as_bytes),
    st.binary(max_size=120),
))
def test_app_trace_upload(content: bytes) -> None:
    support = pytest.importorskip("lmetric_theory.app.support")
    try:
        w = support.read_jsonl_upload("upload.jsonl", content)
    except ValueError as exc:
        assert one_line(str(exc)) and str(exc).startswith("upload.jsonl"), str(exc)
        return
    check_workload_invariants(w)


@fuzz(60)
@given(obj=st.one_of(snapshot_object(), junk_of(JUNK)),
       raw=st.one_of(st.none(), st.text(max_size=20)))
def test_app_pasted_snapshot(obj: Any, raw: str | None) -> None:
    support = pytest.importorskip("lmetric_theory.app.support")
    text = raw if raw is not None else json.dumps(obj)
    try:
        records = support.records_from_json(text)
        res = support.check_table(records, lam=256.0)
    except ValueError as exc:
        assert one_line(str(exc)), str(exc)
        return
    assert isinstance(obj, dict) and raw is None
    assert snapshot_ok({k: v for k, v in obj.items() if k != "time_s"}, None), obj
    assert res is not None


# ============================================================================ large profile


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::lmetric_theory.workload.TraceOrderWarning")
@settings(max_examples=1500 * SCALE, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(records=st.lists(mooncake_record(), min_size=1, max_size=8), skip=st.booleans())
def test_mooncake_trace_matches_oracle_large(tmp_path_factory: Any,
                                             records: list[dict[str, Any]], skip: bool) -> None:
    path = tmp_path_factory.mktemp("mcl") / "trace.jsonl"
    _write_jsonl(path, records)
    check_against_oracle(path, records, mooncake_bad_fields, "mooncake", skip)


@pytest.mark.slow
@settings(max_examples=1500 * SCALE, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(objs=st.lists(snapshot_object(), min_size=1, max_size=6))
def test_snapshot_jsonl_matches_oracle_large(tmp_path_factory: Any,
                                             objs: list[dict[str, Any]]) -> None:
    test_snapshot_jsonl_matches_oracle.hypothesis.inner_test(tmp_path_factory, objs)


# ============================================================================ real processes


def _run(args: list[str], stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "lmetric_theory", *args], input=stdin,
                          capture_output=True, timeout=300, cwd=ROOT)


def test_process_exit_code_and_no_traceback(tmp_path: Path) -> None:
    trace = tmp_path / "big_time.jsonl"
    trace.write_text('{"timestamp": 1e30, "input_length": 10, "output_length": 1, '
                     '"hash_ids": [0]}\n')
    r = _run(["simulate", str(trace)])
    err = r.stderr.decode()
    assert r.returncode == 2 and one_line(err) and "field 'timestamp'" in err, err


@pytest.mark.slow
def test_process_exit_codes_calibrate_and_audit(tmp_path: Path) -> None:
    binary = tmp_path / "blob.csv"
    binary.write_bytes(bytes(range(256)))
    r = _run(["calibrate", str(binary)])
    err = r.stderr.decode()
    assert r.returncode == 2 and one_line(err) and "blob.csv" in err, err
    snaps = tmp_path / "snaps.jsonl"
    snaps.write_text('{"prefill_tokens": [true, 5], "batch_size": [1, 2]}\n')
    r = _run(["audit", "--snapshots", str(snaps), "--lam", "100"])
    err = r.stderr.decode()
    assert r.returncode == 2 and one_line(err) and "line 1: prefill_tokens[0]" in err, err


class _ClosedPipe:
    """A stdout whose reader has gone: every write raises ``BrokenPipeError``; its file
    descriptor is the null device's (what the command redirects it to)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    def fileno(self) -> int:
        return self.fd

    def isatty(self) -> bool:
        return False


@pytest.mark.parametrize("argv", [["derive"], ["derive", "--format", "json"]])
def test_closed_stdout_ends_quietly_in_process(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str],
                                               argv: list[str]) -> None:
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        monkeypatch.setattr(sys, "stdout", _ClosedPipe(fd))
        assert main(argv) == 0
    finally:
        os.close(fd)
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_process_broken_pipe_exits_quietly() -> None:
    # the reader closes the pipe before the command writes (it is still importing sympy)
    code = ("import subprocess, sys\n"
            "p = subprocess.Popen([sys.executable, '-m', 'lmetric_theory', 'derive'],"
            " stdout=subprocess.PIPE, stderr=subprocess.PIPE)\n"
            "p.stdout.close()\n"
            "err = p.stderr.read(); rc = p.wait()\n"
            "print(rc, len(err))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300, cwd=ROOT)
    rc, nerr = r.stdout.decode().split()
    assert (int(rc), int(nerr)) == (0, 0), r.stdout
