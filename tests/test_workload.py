"""Workloads: trace loaders, bad-input rules, synthetic generator invariants, scale/select."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmetric_theory.workload import (
    KINDS,
    AgentParams,
    ApiParams,
    ChatParams,
    LengthDist,
    SyntheticParams,
    TraceError,
    TraceOrderWarning,
    Workload,
    default_workload,
    detect_format,
    load_trace,
    parse_trace,
    scale_rate,
    select,
    synthetic,
)
from lmetric_theory.workload.synthetic import _generate

# --------------------------------------------------------------------------- helpers


def _mc(ts: float, inp: int, out: int, hashes: list[int] | None = None, **extra) -> dict:
    if hashes is None:
        hashes = list(range(math.ceil(inp / 512)))
    return {"timestamp": ts, "input_length": inp, "output_length": out, "hash_ids": hashes, **extra}


def _write(tmp_path: Path, name: str, lines: list[str]) -> Path:
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def _jsonl(tmp_path: Path, rows: list, name: str = "t.jsonl") -> Path:
    return _write(tmp_path, name, [r if isinstance(r, str) else json.dumps(r) for r in rows])


def _check_csr(w: Workload) -> None:
    assert w.hash_offsets[0] == 0 and w.hash_offsets[-1] == w.hash_ids.shape[0]
    need = -(-w.input_tokens // w.block_size)
    np.testing.assert_array_equal(np.diff(w.hash_offsets), need)
    assert np.all(np.diff(w.arrival_s) >= 0)


# --------------------------------------------------------------------------- loaders


def test_mooncake_fixture(tmp_path):
    rows = [
        _mc(0, 1000, 10, [0, 1]),
        _mc(1500, 512, 3, [0]),
        _mc(2500, 1025, 7, [0, 1, 2]),
    ]
    w = load_trace(_jsonl(tmp_path, rows))
    assert w.meta["format"] == "mooncake" and w.block_size == 512
    np.testing.assert_allclose(w.arrival_s, [0.0, 1.5, 2.5])  # milliseconds -> seconds
    np.testing.assert_array_equal(w.input_tokens, [1000, 512, 1025])
    np.testing.assert_array_equal(w.output_tokens, [10, 3, 7])
    np.testing.assert_array_equal(w.blocks(2), [0, 1, 2])
    assert w.session_ids is None
    assert w.meta["skipped_lines"] == 0 and w.meta["reordered_lines"] == 0
    _check_csr(w)
    assert not w.arrival_s.flags.writeable  # shared safely by scale/select


def test_mooncake_rebases_time_origin(tmp_path):
    w = load_trace(_jsonl(tmp_path, [_mc(4000, 10, 1), _mc(6000, 10, 1)]))
    np.testing.assert_allclose(w.arrival_s, [0.0, 2.0])
    assert w.meta["time_origin_s"] == 4.0


def _bl(chat, parent, ts, inp, out, turn=1, typ="text", hashes=None):
    if hashes is None:
        hashes = [chat * 1000 + k for k in range(math.ceil(inp / 16))]
    return {
        "chat_id": chat,
        "parent_chat_id": parent,
        "timestamp": ts,
        "input_length": inp,
        "output_length": out,
        "type": typ,
        "turn": turn,
        "hash_ids": hashes,
    }


def test_bailian_fixture_sessions_from_chains(tmp_path):
    rows = [
        _bl(1, -1, 10.0, 40, 5),
        _bl(2, -1, 10.5, 16, 2, typ="search"),
        _bl(5, 1, 11.25, 70, 3, turn=2),
        _bl(7, 100, 12.0, 17, 1, turn=3),  # parent 100 is not in the file
        _bl(9, 5, 13.0, 90, 4, turn=3),
        _bl(8, 100, 14.0, 33, 2, turn=3),
    ]
    w = load_trace(_jsonl(tmp_path, rows, "qwen.jsonl"))
    assert w.meta["format"] == "bailian" and w.block_size == 16
    np.testing.assert_allclose(w.arrival_s, [0.0, 0.5, 1.25, 2.0, 3.0, 4.0])  # seconds
    # the root of each parent chain; unseen parent 100 names its session
    np.testing.assert_array_equal(w.session_ids, [1, 2, 1, 100, 1, 100])
    assert w.meta["request_types"] == {"text": 5, "search": 1}
    np.testing.assert_array_equal(w.blocks(1), [2000])
    _check_csr(w)


def test_bailian_block_size_override(tmp_path):
    rows = [_bl(1, -1, 0.0, 40, 5, hashes=[11])]  # one 64-token block
    w = load_trace(_jsonl(tmp_path, rows), block_size=64)
    assert w.block_size == 64 and w.meta["block_size"] == 64
    with pytest.raises(TraceError, match="ceil"):
        load_trace(_jsonl(tmp_path, rows))  # default 16 -> needs 3 ids


def test_generic_jsonl_optional_fields(tmp_path):
    rows = [
        {
            "arrival_s": 0.5,
            "input_tokens": 40,
            "output_tokens": 3,
            "hash_ids": [5, 6, 7],
            "session_id": "a",
        },
        {"arrival_s": 1.0, "input_tokens": 20, "output_tokens": 1, "session_id": "b"},
        {
            "arrival_s": 2.0,
            "input_tokens": 33,
            "output_tokens": 2,
            "hash_ids": [5, 6, 9],
            "session_id": "a",
        },
        {"arrival_s": 2.5, "input_tokens": 16, "output_tokens": 2},
    ]
    w = load_trace(_jsonl(tmp_path, rows))
    assert w.meta["format"] == "jsonl" and w.block_size == 16
    np.testing.assert_allclose(w.arrival_s, [0.0, 0.5, 1.5, 2.0])
    np.testing.assert_array_equal(w.session_ids, [0, 1, 0, -1])
    _check_csr(w)
    # requests without hash_ids get fresh ids that nobody else uses
    fresh = np.concatenate([w.blocks(1), w.blocks(3)])
    assert len(set(fresh.tolist())) == 3
    assert not set(fresh.tolist()) & {5, 6, 7, 9}
    np.testing.assert_array_equal(w.blocks(2), [5, 6, 9])


def test_generic_csv(tmp_path):
    p = _write(
        tmp_path,
        "t.csv",
        [
            "arrival_s,input_tokens,output_tokens,hash_ids,session_id",
            "0,32,4,1 2,7",
            "0.25,17,1,1 2,7",
            "1.5,5,2,,",
        ],
    )
    w = load_trace(p)
    assert w.meta["format"] == "csv"
    np.testing.assert_allclose(w.arrival_s, [0.0, 0.25, 1.5])
    np.testing.assert_array_equal(w.input_tokens, [32, 17, 5])
    np.testing.assert_array_equal(w.blocks(0), [1, 2])
    np.testing.assert_array_equal(w.session_ids, [7, 7, -1])
    assert w.blocks(2)[0] not in (1, 2)
    _check_csr(w)


def test_csv_detected_without_suffix(tmp_path):
    p = _write(tmp_path, "trace.txt", ["arrival_s,input_tokens,output_tokens", "0,3,1"])
    assert load_trace(p).meta["format"] == "csv"


def test_explicit_format_and_unknown_format(tmp_path):
    p = _jsonl(tmp_path, [_mc(0, 10, 1)])
    assert load_trace(p, format="mooncake").meta["format"] == "mooncake"
    with pytest.raises(ValueError, match="mooncake, bailian, jsonl, csv"):
        load_trace(p, format="parquet")
    with pytest.raises(TraceError, match="line 1: field 'arrival_s': missing"):
        load_trace(p, format="jsonl")


def test_undetectable_format(tmp_path):
    p = _jsonl(tmp_path, [{"foo": 1}])
    with pytest.raises(TraceError, match="cannot detect"):
        load_trace(p)


def test_blank_lines_and_crlf(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_bytes(
        (json.dumps(_mc(0, 10, 1)) + "\r\n\r\n" + json.dumps(_mc(5, 10, -1)) + "\r\n").encode()
    )
    with pytest.raises(TraceError) as exc:
        load_trace(p)
    assert exc.value.line == 3  # physical line numbers survive the blank line
    assert exc.value.field == "output_length"


def test_parse_trace_in_memory():
    w = parse_trace([json.dumps(_mc(0, 600, 2, [3, 4]))], source="mem")
    assert len(w) == 1 and w.meta["source"] == "mem"


# --------------------------------------------------------------------------- bad input

_GOOD = json.dumps(_mc(0, 1000, 10, [0, 1]))

BAD_LINES = [
    ('{"timestamp": 1, "input_length": 10', None, "invalid JSON"),
    ("[1, 2, 3]", None, "expected a JSON object, got array"),
    (json.dumps({"timestamp": 1, "output_length": 1, "hash_ids": [0]}), "input_length", "missing"),
    (json.dumps(_mc(1, -5, 1, [])), "input_length", "integer in [1, 16777216]"),
    (json.dumps(_mc(1, 0, 1, [])), "input_length", "in [1, 16777216], got 0"),
    (json.dumps(_mc(1, 12.5, 1, [0])), "input_length", "integer"),
    (json.dumps(_mc(1, 12.0, 1, [0])), "input_length", "integer"),
    (json.dumps(_mc(1, True, 1, [0])), "input_length", "integer"),
    (json.dumps(_mc(1, 10, 0, [0])), "output_length", "in [1, 16777216], got 0"),
    (json.dumps(_mc(1, 10, "7", [0])), "output_length", "integer"),
    (json.dumps(_mc(1, 10, 1, [0, 1])), "hash_ids", "ceil(10/512) = 1"),
    (json.dumps(_mc(1, 1025, 1, [0, 1])), "hash_ids", "has 2 block ids"),
    (json.dumps(_mc(1, 10, 1, ["a"])), "hash_ids", "list of integers"),
    (json.dumps(_mc(1, 10, 1, 5)), "hash_ids", "list of integers"),
    (json.dumps(_mc(1, 10, 1, [2**70])), "hash_ids", "64-bit"),
    (json.dumps(_mc(-1, 10, 1, [0])), "timestamp", "in [0, 1e+13] ms, got -1"),
    (json.dumps(_mc("soon", 10, 1, [0])), "timestamp", "number"),
    (json.dumps(_mc(1, 2**70, 1, [0])), "input_length", "in [1, 16777216], got 1.181e+21"),
    (json.dumps(_mc(1, 2**24 + 1, 1, [0])), "input_length", "got 16777217"),
    (json.dumps(_mc(1, 10, 2**24 + 1, [0])), "output_length", "in [1, 16777216]"),
    (json.dumps(_mc(1e30, 10, 1, [0])), "timestamp", "in [0, 1e+13] ms, got 1e+30"),
    (json.dumps(_mc(1e13 + 1, 10, 1, [0])), "timestamp", "in [0, 1e+13] ms"),
    (json.dumps(_mc(True, 10, 1, [0])), "timestamp", "got true (boolean)"),
    (json.dumps(_mc(None, 10, 1, [0])), "timestamp", "got null (null)"),
    ('{"timestamp": NaN, "input_length": 10, "output_length": 1, "hash_ids": [0]}', "timestamp",
     "got nan"),
    ('{"timestamp": Infinity, "input_length": 10, "output_length": 1, "hash_ids": [0]}',
     "timestamp", "got inf"),
    ('{"timestamp": 1e400, "input_length": 10, "output_length": 1, "hash_ids": [0]}',
     "timestamp", "got inf"),
    ('{"timestamp": 1, "input_length": ' + "9" * 5000 + ', "output_length": 1, "hash_ids": [0]}',
     None, "invalid JSON: Exceeds the limit"),
    (json.dumps(_mc(1, 10, 1, [True])), "hash_ids", "contains true (boolean)"),
]


@pytest.mark.parametrize(("line", "field", "reason"), BAD_LINES)
def test_bad_line_names_file_line_field(tmp_path, line, field, reason):
    p = _jsonl(tmp_path, [_GOOD, _GOOD, line, _GOOD], name="bad.jsonl")
    with pytest.raises(TraceError) as exc:
        load_trace(p, format="mooncake")
    err = exc.value
    assert isinstance(err, ValueError)
    assert err.line == 3 and err.field == field and err.source == str(p)
    msg = str(err)
    assert "bad.jsonl" in msg and "line 3" in msg and reason in msg
    if field:
        assert f"field '{field}'" in msg


@pytest.mark.parametrize(("line", "field", "reason"), BAD_LINES)
def test_skip_bad_lines_counts(tmp_path, line, field, reason):
    p = _jsonl(tmp_path, [_GOOD, line, _GOOD, line], name="bad.jsonl")
    w = load_trace(p, format="mooncake", skip_bad_lines=True)
    assert len(w) == 2
    assert w.meta["skipped_lines"] == 2 and w.meta["n_lines"] == 4
    assert len(w.meta["skipped_reasons"]) == 2
    assert "line 2" in w.meta["skipped_reasons"][0] and reason in w.meta["skipped_reasons"][0]
    _check_csr(w)


def test_skip_keeps_hashes_aligned(tmp_path):
    rows = [_mc(0, 600, 1, [1, 2]), json.dumps(_mc(1, 600, 1, [9])), _mc(2, 1100, 1, [1, 2, 3])]
    w = load_trace(_jsonl(tmp_path, rows), skip_bad_lines=True)
    np.testing.assert_array_equal(w.blocks(0), [1, 2])
    np.testing.assert_array_equal(w.blocks(1), [1, 2, 3])


def test_reasons_capped(tmp_path):
    rows = [_GOOD] + ["{oops"] * 9
    w = load_trace(_jsonl(tmp_path, rows), skip_bad_lines=True)
    assert w.meta["skipped_lines"] == 9 and len(w.meta["skipped_reasons"]) == 5


def test_all_lines_bad_is_an_error(tmp_path):
    with pytest.raises(TraceError, match="no valid requests"):
        load_trace(_jsonl(tmp_path, ["{oops", "{oops"]), format="mooncake", skip_bad_lines=True)


@pytest.mark.parametrize("content", ["", "\n\n", "   \n"])
def test_empty_trace(tmp_path, content):
    p = tmp_path / "empty.jsonl"
    p.write_text(content)
    with pytest.raises(TraceError, match="empty.jsonl: trace is empty"):
        load_trace(p)


def test_csv_header_only_and_bad_rows(tmp_path):
    with pytest.raises(TraceError, match="header only"):
        load_trace(_write(tmp_path, "h.csv", ["arrival_s,input_tokens,output_tokens"]))
    p = _write(tmp_path, "b.csv", ["arrival_s,input_tokens,output_tokens", "0,3,1", "1,3"])
    with pytest.raises(TraceError, match=r"b\.csv, line 3: expected 3 CSV columns"):
        load_trace(p)
    p = _write(tmp_path, "c.csv", ["arrival_s,input_tokens,output_tokens", "0,3.5,1"])
    with pytest.raises(TraceError, match=r"line 2: field 'input_tokens': must be an integer"):
        load_trace(p)
    p = _write(tmp_path, "d.csv", ["arrival_s,input_tokens", "0,3"])
    with pytest.raises(TraceError, match="field 'output_tokens': required CSV column missing"):
        load_trace(p)
    p = _write(tmp_path, "e.csv", ["arrival_s,input_tokens,output_tokens,hash_ids", "0,3,1,x y"])
    with pytest.raises(TraceError, match="field 'hash_ids'"):
        load_trace(p)


def test_bad_session_id(tmp_path):
    rows = [{"arrival_s": 0, "input_tokens": 3, "output_tokens": 1, "session_id": -4}]
    with pytest.raises(TraceError, match="field 'session_id'"):
        load_trace(_jsonl(tmp_path, rows))


def test_non_utf8(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_bytes(_GOOD.encode() + b"\n" + b'{"x": "\xff"}\n')
    with pytest.raises(TraceError, match="line 2: not valid UTF-8"):
        load_trace(p)


def test_out_of_order_sorted_with_warning(tmp_path):
    rows = [_mc(0, 600, 1, [1, 2]), _mc(3000, 10, 2, [3]), _mc(1000, 1100, 3, [1, 2, 4])]
    with pytest.warns(TraceOrderWarning, match="1 line"):
        w = load_trace(_jsonl(tmp_path, rows))
    np.testing.assert_allclose(w.arrival_s, [0.0, 1.0, 3.0])
    np.testing.assert_array_equal(w.output_tokens, [1, 3, 2])  # stable sort, rows move whole
    np.testing.assert_array_equal(w.blocks(1), [1, 2, 4])
    np.testing.assert_array_equal(w.blocks(2), [3])
    assert w.meta["reordered_lines"] == 1
    _check_csr(w)


def test_sorted_trace_does_not_warn(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_trace(_jsonl(tmp_path, [_mc(0, 10, 1), _mc(0, 10, 1), _mc(1, 10, 1)]))


# --------------------------------------------------------------------------- real trace


def test_real_mooncake_trace(mooncake_path):
    w = load_trace(mooncake_path)
    assert len(w) == 12031
    assert w.meta["format"] == "mooncake" and w.block_size == 512
    assert w.meta["skipped_lines"] == 0 and w.meta["reordered_lines"] == 0
    assert w.arrival_s[-1] == pytest.approx(3537.0, abs=1.0)
    assert w.input_tokens.mean() == pytest.approx(12035, abs=1)
    assert w.output_tokens.mean() == pytest.approx(343, abs=1)
    assert w.input_tokens.max() == 126195
    _check_csr(w)


# --------------------------------------------------------------------------- synthetic


@pytest.mark.parametrize("kind", KINDS)
def test_synthetic_shape_and_determinism(kind):
    a = synthetic(kind, n_requests=300, rate_rps=10.0, seed=7)
    b = synthetic(kind, n_requests=300, rate_rps=10.0, seed=7)
    c = synthetic(kind, n_requests=300, rate_rps=10.0, seed=8)
    assert len(a) == 300
    for f in (
        "arrival_s",
        "input_tokens",
        "output_tokens",
        "hash_ids",
        "hash_offsets",
        "session_ids",
    ):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert not np.array_equal(a.input_tokens, c.input_tokens)
    _check_csr(a)
    assert a.arrival_s[0] >= 0 and np.all(a.output_tokens >= 1) and np.all(a.input_tokens >= 1)
    assert a.meta["kind"] == kind and a.meta["seed"] == 7
    # dense ids in order of first appearance
    first = np.unique(a.hash_ids, return_index=True)[1]
    np.testing.assert_array_equal(np.sort(first), first)
    np.testing.assert_array_equal(np.unique(a.hash_ids), np.arange(first.shape[0]))


def _tokens(trail) -> list[tuple[int, int]]:
    return [(seg, j) for seg, n in trail for j in range(n)]


#: Small lengths so the exact token-level check stays fast.
_SMALL = SyntheticParams(
    chat=ChatParams(
        system_tokens=(20, 45),
        system_weights=(0.5, 0.5),
        user_tokens=LengthDist(10, 0.8, 1, 60),
        output_tokens=LengthDist(12, 0.8, 1, 60),
    ),
    api=ApiParams(
        n_templates=3,
        template_tokens=LengthDist(40, 0.5, 5, 90),
        suffix_tokens=LengthDist(8, 0.8, 1, 40),
        output_tokens=LengthDist(5, 0.5, 1, 20),
    ),
    agent=AgentParams(
        system_tokens=(50, 70),
        task_tokens=LengthDist(30, 0.7, 1, 100),
        output_tokens=LengthDist(10, 0.9, 1, 50),
        tool_tokens=LengthDist(20, 1.0, 1, 80),
    ),
)


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    seed=st.integers(0, 10_000),
    block_size=st.sampled_from([1, 2, 7, 16, 64]),
)
def test_prefix_identity_brute_force(kind, seed, block_size):
    """Equal hash at position k iff equal token prefix through block k (exact check)."""
    w, trails = _generate(
        kind,
        n_requests=80,
        rate_rps=5.0,
        seed=seed,
        block_size=block_size,
        params=_SMALL,
        track_segments=True,
    )
    # intern each token prefix ending at a block boundary: id = (id of previous, block tokens)
    intern: dict[tuple, int] = {}
    prefix_of: dict[int, int] = {}
    hash_of: dict[int, int] = {}
    for i in range(len(w)):
        toks = _tokens(trails[i])
        blocks = w.blocks(i).tolist()
        if kind == "agent":
            # the trail is the session's whole context (append-only): one id per block
            # position, the prompt's blocks followed by the output's
            assert len(toks) >= w.input_tokens[i]
            assert len(blocks) == math.ceil(w.input_tokens[i] / block_size)
            blocks += w.output_blocks(i).tolist()
        else:
            assert len(toks) == w.input_tokens[i]
            assert len(blocks) == math.ceil(len(toks) / block_size)
        prev = -1
        for k, h in enumerate(blocks):
            key = (prev, tuple(toks[k * block_size : (k + 1) * block_size]))
            pid = intern.setdefault(key, len(intern))
            assert prefix_of.setdefault(h, pid) == pid
            assert hash_of.setdefault(pid, h) == h
            prev = pid


def test_chat_sessions_grow_by_previous_answer():
    w, trails = _generate(
        "chat",
        n_requests=400,
        rate_rps=10.0,
        seed=1,
        block_size=16,
        params=SyntheticParams(),
        track_segments=True,
    )
    last: dict[int, int] = {}
    grown = 0
    for i, s in enumerate(w.session_ids.tolist()):
        if s in last:
            j = last[s]
            # next prompt = previous prompt + previous answer + new user text
            assert trails[i][: len(trails[j])] == trails[j]
            assert trails[i][len(trails[j])][1] == w.output_tokens[j]
            assert len(trails[i]) == len(trails[j]) + 2
            full = w.input_tokens[j] // 16
            np.testing.assert_array_equal(w.blocks(i)[:full], w.blocks(j)[:full])
            assert w.arrival_s[i] - w.arrival_s[j] >= SyntheticParams().chat.think_min_s
            grown += 1
        last[s] = i
    assert grown > 50


def test_api_calls_share_templates():
    w = synthetic("api", n_requests=500, rate_rps=20.0, seed=2)
    assert np.all(w.session_ids == -1)
    first_blocks = w.hash_ids[w.hash_offsets[:-1]]
    assert len(np.unique(first_blocks)) <= SyntheticParams().api.n_templates
    # interarrival times of a Poisson process: mean 1/rate
    assert np.mean(np.diff(w.arrival_s)) == pytest.approx(1 / 20.0, rel=0.15)


def test_agent_contexts_are_long_and_growing():
    w = synthetic("agent", n_requests=400, rate_rps=5.0, seed=3)
    assert w.input_tokens.mean() > 15_000
    for s in np.unique(w.session_ids)[:20]:
        lengths = w.input_tokens[w.session_ids == s]
        assert np.all(np.diff(lengths) > 0)


def test_agent_is_closed_loop_sessions_in_the_delta_convention():
    p = AgentParams()
    w = synthetic("agent", n_requests=400, rate_rps=5.0, seed=3)
    ses = w.sessions
    assert ses is not None and ses.closed_loop and len(w) == 400
    ses.validate(len(w))
    np.testing.assert_array_equal(ses.session, w.session_ids)
    np.testing.assert_allclose(ses.nominal_arrivals(), w.arrival_s)
    later = np.flatnonzero(ses.prev >= 0)
    assert later.size > 300
    assert np.all(ses.delay_s[later] >= p.think_min_s)
    bs = w.block_size
    for i in later.tolist():
        j = int(ses.prev[i])
        # next prompt = previous prompt + previous output + tool result
        assert w.input_tokens[i] - w.input_tokens[j] - w.output_tokens[j] >= p.tool_tokens.lo
        head = np.concatenate([w.blocks(j), w.output_blocks(j)])
        np.testing.assert_array_equal(w.blocks(i)[: head.size], head)
        assert head.size == math.ceil((w.input_tokens[j] + w.output_tokens[j]) / bs)
    # first turns share the system prompt's full blocks; nothing else is shared
    firsts = w.hash_ids[w.hash_offsets[ses.first]]
    assert len(np.unique(firsts)) <= len(p.system_tokens)
    v = synthetic("agent", n_requests=400, rate_rps=5.0, seed=3)
    for name in ("arrival_s", "input_tokens", "output_tokens", "hash_ids", "output_hash_ids"):
        np.testing.assert_array_equal(getattr(v, name), getattr(w, name))
    np.testing.assert_array_equal(v.sessions.prev, ses.prev)
    u = synthetic("agent", n_requests=400, rate_rps=5.0, seed=4)
    assert not np.array_equal(u.input_tokens, w.input_tokens)
    # count means turns, and a smaller count is the head of the same workload
    h = synthetic("agent", n_requests=150, rate_rps=5.0, seed=3)
    np.testing.assert_array_equal(h.input_tokens, w.input_tokens[:150])
    np.testing.assert_array_equal(h.sessions.prev, ses.prev[:150])


def test_mixed_rate_and_composition():
    w = synthetic("mixed", n_requests=3000, rate_rps=12.0, seed=0)
    assert len(w) / w.arrival_s[-1] == pytest.approx(12.0, rel=0.15)
    api_share = np.mean(w.session_ids == -1)
    assert api_share == pytest.approx(0.3, abs=0.05)


def test_default_workload():
    w = default_workload()
    assert len(w) == 6000 and w.block_size == 128
    assert w.meta["kind"] == "mixed"
    _check_csr(w)
    np.testing.assert_array_equal(w.input_tokens, default_workload(seed=0).input_tokens)


def test_synthetic_rejects_bad_arguments():
    with pytest.raises(ValueError, match="chat, api, agent, mixed"):
        synthetic("batch")
    with pytest.raises(ValueError, match="rate_rps"):
        synthetic("chat", rate_rps=0)
    with pytest.raises(ValueError, match="n_requests"):
        synthetic("chat", n_requests=0)


# --------------------------------------------------------------------------- scale / select


@pytest.fixture(scope="module")
def small() -> Workload:
    return synthetic("mixed", n_requests=400, rate_rps=10.0, seed=5)


def test_scale_rate(small):
    w = scale_rate(small, 2.0)
    np.testing.assert_allclose(w.arrival_s, small.arrival_s / 2.0)
    np.testing.assert_array_equal(w.hash_ids, small.hash_ids)
    np.testing.assert_array_equal(w.session_ids, small.session_ids)
    assert w.meta["rate_scale"] == 2.0 and w.meta["source"] == "synthetic"
    w2 = scale_rate(w, 1.5)
    assert w2.meta["rate_scale"] == 3.0
    assert [t["op"] for t in w2.meta["transforms"]] == ["scale_rate", "scale_rate"]
    assert small.meta["transforms"] == []  # the input is untouched
    for k in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite number > 0"):
            scale_rate(small, k)


def test_select_count(small):
    w = select(small, count=50)
    assert len(w) == 50
    np.testing.assert_array_equal(w.arrival_s, small.arrival_s[:50])
    for i in (0, 17, 49):
        np.testing.assert_array_equal(w.blocks(i), small.blocks(i))
    _check_csr(w)
    assert w.meta["transforms"][-1]["n"] == 50


def test_select_window_rebase(small):
    lo_t, hi_t = 5.0, 15.0
    mask = (small.arrival_s >= lo_t) & (small.arrival_s < hi_t)
    idx = np.flatnonzero(mask)
    w = select(small, start_s=lo_t, end_s=hi_t)
    assert len(w) == idx.shape[0]
    np.testing.assert_allclose(w.arrival_s, small.arrival_s[idx] - lo_t)
    for k in (0, len(w) - 1):
        np.testing.assert_array_equal(w.blocks(k), small.blocks(int(idx[k])))
    np.testing.assert_array_equal(w.session_ids, small.session_ids[idx])
    _check_csr(w)
    kept = select(small, start_s=lo_t, end_s=hi_t, rebase=False)
    np.testing.assert_allclose(kept.arrival_s, small.arrival_s[idx])
    both = select(small, start_s=lo_t, count=3)
    np.testing.assert_allclose(both.arrival_s, small.arrival_s[idx[:3]] - lo_t)
    step = w.meta["transforms"][-1]
    assert step["op"] == "select" and step["first"] == int(idx[0]) and step["start_s"] == lo_t


def test_select_rejects(small):
    with pytest.raises(ValueError, match="selection is empty"):
        select(small, start_s=1e9)
    with pytest.raises(ValueError, match="count"):
        select(small, count=0)
    with pytest.raises(ValueError, match="empty window"):
        select(small, start_s=3.0, end_s=2.0)


def test_select_on_loaded_trace_keeps_provenance(tmp_path):
    rows = [_mc(1000 * i, 600, 1, [i, 100 + i]) for i in range(10)]
    w = select(scale_rate(load_trace(_jsonl(tmp_path, rows)), 2.0), start_s=1.0, end_s=3.0)
    np.testing.assert_allclose(w.arrival_s, [0.0, 0.5, 1.0, 1.5])
    np.testing.assert_array_equal(w.blocks(0), [2, 102])
    assert w.meta["format"] == "mooncake" and w.meta["rate_scale"] == 2.0
    assert [t["op"] for t in w.meta["transforms"]] == ["scale_rate", "select"]


# --------------------------------------------------------------------------- detection and limits


@pytest.mark.parametrize(("first", "suffix", "fmt", "reason"), [
    ('{"timestamp": 0}', ".jsonl", "mooncake", "the file name ends in .jsonl"),
    ('{"arrival_s": 0}', "", "jsonl", "its first line starts with '{'"),
    ('{"chat_id": 1}', ".txt", "bailian", "its first line starts with '{'"),
    ("arrival_s,input_tokens,output_tokens", "", "csv", "its first line is not JSON"),
    ('{"timestamp": 0}', ".csv", "csv", "the file name ends in .csv"),
])
def test_detect_format_by_suffix_then_content(first, suffix, fmt, reason):
    assert detect_format(first, suffix=suffix) == fmt
    from lmetric_theory.workload.loaders import _detect

    assert reason in _detect(first, source="x", line=1, suffix=suffix)[1]


@pytest.mark.parametrize(("first", "got"), [("5", "number"), ('"text"', "string"),
                                             ("null", "null"), ("[1, 2]", "array")])
def test_json_values_that_are_not_objects(first, got):
    with pytest.raises(TraceError, match=f"line 1: expected a JSON object, got {got} "):
        detect_format(first)


def test_format_reason_in_meta(tmp_path):
    p = _jsonl(tmp_path, [_mc(0, 600, 2)], name="t.log")
    w = load_trace(p)
    assert w.meta["format"] == "mooncake"
    assert w.meta["format_reason"] == ("read as JSON Lines because its first line starts with "
                                       "'{'; the first object has a 'timestamp' field")
    assert load_trace(p, format="mooncake").meta["format_reason"] == "format given"


def test_limits_at_the_edges(tmp_path):
    ok = _jsonl(tmp_path, [_mc(0, 2**24, 1, list(range(2**24 // 512))), _mc(1e13, 1, 2**24)],
                name="edge.jsonl")
    w = load_trace(ok)
    assert w.arrival_s[-1] == 1e10 and w.input_tokens[0] == 2**24 and w.output_tokens[1] == 2**24
    generic = _write(tmp_path, "g.jsonl", [json.dumps({"arrival_s": 1e10 + 1, "input_tokens": 1,
                                                       "output_tokens": 1})])
    with pytest.raises(TraceError, match=r"field 'arrival_s': must be a finite number in "
                       r"\[0, 1e\+10\] s, got 10000000001.0"):
        load_trace(generic)


def test_fresh_hash_ids_never_overflow(tmp_path):
    top = 2**63 - 1
    p = _write(tmp_path, "h.jsonl", [
        json.dumps({"arrival_s": 0, "input_tokens": 16, "output_tokens": 1, "hash_ids": [top]}),
        json.dumps({"arrival_s": 1, "input_tokens": 40, "output_tokens": 1}),
    ])
    w = load_trace(p)
    assert w.blocks(0).tolist() == [top]
    fresh = w.blocks(1).tolist()
    assert len(fresh) == 3 and len(set(fresh)) == 3 and top not in fresh


def test_scale_rate_keeps_times_within_the_limit():
    w = parse_trace([json.dumps(_mc(0, 10, 1)), json.dumps(_mc(5000, 10, 1))])
    assert scale_rate(w, 1e-6).arrival_s[-1] == pytest.approx(5e6)
    with pytest.raises(ValueError, match="beyond the 1e\\+10 s limit"):
        scale_rate(w, 1e-300)
    with pytest.raises(ValueError, match="start_s must be a finite number"):
        select(w, start_s=True)


def test_open_loop_at_replays_a_closed_loop_run_at_its_own_arrivals(tmp_path):
    """The same policy at its own closed-loop arrivals gives the same run; another policy at
    those arrivals keeps the offered load (no feedback)."""
    from lmetric_theory.cli import main
    from lmetric_theory.sim import SimConfig, simulate
    from lmetric_theory.sim.latency import load_preset
    from lmetric_theory.workload import open_loop_at
    from lmetric_theory.workload.spec import synthetic_from_spec

    w = synthetic_from_spec("synthetic:agent:count=120", seed=3)
    assert w.closed_loop
    cfg = SimConfig.from_preset(load_preset("h100-llama3-8b-calibrated"), 3, concurrency=4)
    closed = simulate(w, cfg, "round-robin")
    o = open_loop_at(w, closed.arrival_s)
    assert not o.closed_loop and o.sessions is not None
    assert np.all(np.diff(o.arrival_s) >= 0)
    opened = simulate(o, SimConfig.from_preset(load_preset("h100-llama3-8b-calibrated"), 3),
                      "round-robin")
    # rows re-sorted by arrival: compare per request through the sort order
    order = np.argsort(closed.arrival_s, kind="stable")
    np.testing.assert_array_equal(opened.arrival_s, closed.arrival_s[order])
    np.testing.assert_array_equal(opened.ttft_s, closed.ttft_s[order])
    np.testing.assert_array_equal(opened.cached_tokens, closed.cached_tokens[order])
    with pytest.raises(ValueError, match="expected 120 arrival times"):
        open_loop_at(w, closed.arrival_s[:5])
    bad = closed.arrival_s.copy()
    bad[7] = np.nan
    with pytest.raises(ValueError, match="request 7"):
        open_loop_at(w, bad)
    later = np.flatnonzero(w.sessions.prev >= 0)[0]
    early = closed.arrival_s.copy()
    early[later] = 0.0
    early[w.sessions.prev[later]] = 1.0
    with pytest.raises(ValueError, match="before the turn it follows"):
        open_loop_at(w, early)
    # The CLI reads the arrivals from simulate --out's per-request file.
    out = tmp_path / "cl"
    spec = "synthetic:agent:count=120"
    assert main(["simulate", spec, "--seed", "3", "--instances", "3", "--concurrency", "4",
                 "--policy", "round-robin", "--out", str(out), "--json"]) == 0
    parquet = out / "round-robin.requests.parquet"
    assert main(["simulate", spec, "--seed", "3", "--instances", "3", "--replay-arrivals",
                 str(parquet), "--policy", "round-robin", "--json"]) == 0
    assert main(["simulate", spec, "--seed", "3", "--count", "100", "--replay-arrivals",
                 str(parquet)]) == 2
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet")
    assert main(["simulate", spec, "--replay-arrivals", str(junk)]) == 2
