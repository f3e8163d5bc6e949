"""Session traces: delta and cumulative Mooncake conventions, auto-detection, bad input,
the shared AIPerf agentic trace, Bailian closed loop, and transforms keeping sessions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lmetric_theory.workload import TraceError, TraceOrderWarning, load_trace, scale_rate, select

AIPERF = Path(__file__).resolve().parents[1] / ".." / "shared" / "traces" / (
    "aiperf_agentic_code_sessions.jsonl"
)


def _write(tmp_path: Path, rows: list[dict], name: str = "s.jsonl") -> Path:
    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return p


def _row(sid, inp, out, ids, **kw) -> dict:
    return {"session_id": sid, "input_length": inp, "output_length": out, "hash_ids": ids, **kw}


#: 2 sessions x 3 turns, block size 4, interleaved in the file. Session B's turn-0 tail
#: id 12 also occurs in session A (its turn-1 segment), so B replaces it from turn 1 on.
DELTA = [
    _row("A", 6, 3, [10, 11], timestamp=0),       # line 1
    _row("B", 5, 6, [10, 12], timestamp=1000),    # line 2
    _row("A", 2, 4, [12], delay=500),             # line 3
    _row("B", 7, 1, [30, 31], delay_ms=0),        # line 4
    _row("A", 3, 2, [40], delay=250),             # line 5
    _row("B", 4, 5, [50], delay=100),             # line 6
]


def _lists(w, i):
    return w.blocks(i).tolist(), w.output_blocks(i).tolist()


def test_delta_trace_materialised_by_hand(tmp_path):
    w = load_trace(_write(tmp_path, DELTA), block_size=4, trace_format="mooncake-delta")
    # rows by nominal arrival: A0 0 s, A1 0.5, A2 0.75, B0 1.0, B1 1.0 (line 4), B2 1.1
    np.testing.assert_allclose(w.arrival_s, [0, 0.5, 0.75, 1.0, 1.0, 1.1])
    ses = w.sessions
    assert ses is not None and ses.closed_loop
    assert ses.prev.tolist() == [-1, 0, 1, -1, 3, 4]
    assert ses.turn.tolist() == [0, 1, 2, 0, 1, 2]
    assert ses.session.tolist() == [0, 0, 0, 1, 1, 1]
    np.testing.assert_allclose(ses.delay_s, [0, 0.5, 0.25, 0, 0, 0.1])
    assert ses.first.tolist() == [0, 3] and ses.start_s.tolist() == [0.0, 1.0]
    # T_k = T_{k-1} + out_{k-1} + seg_k: A 6, 11, 18; B 5, 18, 23
    assert w.input_tokens.tolist() == [6, 11, 18, 5, 18, 23]
    # fresh ids from 51 (max trace id 50 + 1): A's positions 2-4, then B's positions 1-5
    # A: tail 11 is A's alone, kept; context [10, 11, 51, 52, 53]
    assert _lists(w, 0) == ([10, 11], [51])          # output blocks [ceil(6/4), ceil(9/4))
    assert _lists(w, 1) == ([10, 11, 51], [52])      # [0, 3) and [3, ceil(15/4))
    assert _lists(w, 2) == ([10, 11, 51, 52, 53], [])  # last turn: output never reused
    # B: tail 12 also in A, replaced; context [10, 54, 55, 56, 57, 58]
    # B0's output would sit at position 2 after its trace id 12, B1's prompt holds 55 there
    # after the fresh 54: no output list, or 55 would name two prefix chains.
    assert _lists(w, 3) == ([10, 12], [])
    assert _lists(w, 4) == ([10, 54, 55, 56, 57], [])  # ceil(19/4) = 5: no new block
    assert _lists(w, 5) == ([10, 54, 55, 56, 57, 58], [])
    assert w.meta["trace_format"] == "mooncake-delta" and w.meta["trace_format_reason"] == "given"
    assert w.meta["fresh_ids"] == 8 and w.meta["shared_turn0_tails"] == 1
    assert w.meta["n_sessions"] == 2 and w.session_ids.tolist() == [0, 0, 0, 1, 1, 1]


def _chains(w):
    """(id, position, previous id) of every block of every request's context (prompt, then
    output list), deduplicated: the prefix chain each occurrence of an id names."""
    p_len = np.diff(w.hash_offsets)
    o_len = np.diff(w.output_hash_offsets)
    n = len(w)
    lens = p_len + o_len
    # context of request i: its prompt ids, then its output ids
    src = np.concatenate([np.stack([np.repeat(np.arange(n), p_len), np.zeros(p_len.sum(), int),
                                    np.arange(p_len.sum())]),
                          np.stack([np.repeat(np.arange(n), o_len), np.ones(o_len.sum(), int),
                                    np.arange(o_len.sum())])], axis=1)
    order = np.lexsort((src[2], src[1], src[0]))
    ids = np.concatenate([w.hash_ids, w.output_hash_ids])[
        np.where(src[1] == 0, src[2], src[2] + p_len.sum())][order]
    start = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lens, out=start[1:])
    pos = np.arange(ids.size) - np.repeat(start[:-1], lens)
    prev = np.where(pos > 0, np.roll(ids, 1), -1)
    return np.unique(np.stack([ids, pos, prev]), axis=1)


def test_delta_ids_name_one_prefix_chain(tmp_path):
    # The engines key cached blocks by id (the fast engine) or by the chained hash of the
    # ids (vLLM): they agree only if an id always follows the same ids at the same position.
    w = load_trace(_write(tmp_path, DELTA), block_size=4, trace_format="mooncake-delta")
    u = _chains(w)
    assert u.shape[1] == np.unique(u[0]).size == 11  # ids 10, 11, 12 and 51-58
    # 55 sits after 54 at position 2 (B1, B2) only; with B0's output list it also sat
    # there after 12 (the replaced tail).
    assert u[:, u[0] == 55].ravel().tolist() == [55, 2, 54]


def test_same_trace_cumulative_convention(tmp_path):
    w = load_trace(_write(tmp_path, DELTA), block_size=4, trace_format="mooncake")
    assert w.output_hash_ids is None and w.output_hash_offsets is None
    assert w.input_tokens.tolist() == [6, 2, 3, 5, 7, 4]
    assert [w.blocks(i).tolist() for i in range(6)] == [[10, 11], [12], [40], [10, 12],
                                                        [30, 31], [50]]
    assert w.sessions.prev.tolist() == [-1, 0, 1, -1, 3, 4]
    assert w.sessions.closed_loop and w.meta["trace_format"] == "mooncake"
    np.testing.assert_allclose(w.arrival_s, [0, 0.5, 0.75, 1.0, 1.0, 1.1])


def test_auto_detect(tmp_path):
    w = load_trace(_write(tmp_path, DELTA), block_size=4)
    assert w.meta["trace_format"] == "mooncake-delta"
    assert "none of the 3 later turns" in w.meta["trace_format_reason"]
    cumul = [
        _row("A", 6, 3, [1, 2], timestamp=0),
        _row("A", 11, 4, [1, 3, 4], delay=10),
        _row("B", 9, 1, [1, 5, 6], timestamp=0),
        _row("B", 13, 1, [1, 5, 7, 8], delay=10),
    ]
    w = load_trace(_write(tmp_path, cumul), block_size=4)
    assert w.meta["trace_format"] == "mooncake"
    assert "all 2 later turns" in w.meta["trace_format_reason"]
    assert w.input_tokens.tolist() == [6, 9, 11, 13]
    mixed = [*cumul[:2], _row("B", 9, 1, [1, 5, 6], timestamp=0), _row("B", 4, 1, [9], delay=1)]
    with pytest.raises(TraceError, match="1 of 2 later turns.*pass trace_format"):
        load_trace(_write(tmp_path, mixed), block_size=4)
    w = load_trace(_write(tmp_path, [_row("A", 6, 3, [1, 2], timestamp=0)]), block_size=4)
    assert w.meta["trace_format"] == "mooncake" and "no session has a later turn" in \
        w.meta["trace_format_reason"]


@pytest.mark.parametrize(
    ("rows", "line", "field", "text"),
    [
        ([{"timestamp": 0, "input_length": 4, "output_length": 1, "hash_ids": [1]},
          {"input_length": 4, "output_length": 1, "hash_ids": [2], "delay": 5}],
         2, "delay", "a delay needs a session"),
        ([_row("A", 4, 1, [1], timestamp=0), _row("B", 4, 1, [2], delay=3)],
         2, "timestamp", "first row of session 'B' needs a timestamp"),
        ([_row("A", 4, 1, [1], timestamp=0), _row("A", 4, 1, [2], timestamp=9, delay=3)],
         2, "delay", "both 'timestamp' and a delay"),
        ([_row("A", 4, 1, [1], timestamp=0), _row("A", 4, 1, [2], delay=-1)],
         2, "delay", "must be a finite number in [0,"),
        ([_row("A", 4, 1, [1], timestamp=0), _row("A", 4, 1, [2], delay_ms=float("inf"))],
         2, "delay_ms", "must be a finite number in [0,"),
        ([_row("A", 4, 1, [1], timestamp=0), _row("A", 4, 1, [2, 3], delay=1)],
         2, "hash_ids", "has 2 block ids but the prompt of 4 tokens needs"),
    ],
)
def test_bad_session_input(tmp_path, rows, line, field, text):
    p = _write(tmp_path, rows)
    with pytest.raises(TraceError) as exc:
        load_trace(p, block_size=4)
    e = exc.value
    assert (e.source, e.line, e.field) == (str(p), line, field)
    msg = str(e)
    assert "\n" not in msg and msg.startswith(f"{p}, line {line}: field '{field}': ")
    assert text in msg


def test_delta_convention_needs_sessions(tmp_path):
    p = _write(tmp_path, [{"timestamp": 0, "input_length": 4, "output_length": 1,
                           "hash_ids": [1]}])
    with pytest.raises(TraceError, match=r"line 1: field 'session_id': missing: the "
                                         "mooncake-delta convention needs a session trace"):
        load_trace(p, trace_format="mooncake-delta")


def test_skip_bad_lines_drops_the_whole_session(tmp_path):
    rows = [*DELTA[:4], _row("A", 3, 2, [40], delay=-5), DELTA[5]]
    w = load_trace(_write(tmp_path, rows), block_size=4, trace_format="mooncake-delta",
                   skip_bad_lines=True)
    assert len(w) == 3 and w.meta["skipped_lines"] == 1
    assert w.input_tokens.tolist() == [5, 18, 23] and w.sessions.n_sessions == 1


def test_open_loop_traces_unchanged(tmp_path):
    rows = [{"timestamp": 5, "input_length": 4, "output_length": 1, "hash_ids": [1]},
            {"timestamp": 9, "input_length": 4, "output_length": 1, "hash_ids": [1],
             "delayed": 3}]
    w = load_trace(_write(tmp_path, rows), block_size=4)
    assert w.sessions is None and w.output_hash_ids is None and w.session_ids is None
    assert w.meta["trace_format"] == "mooncake"


# ------------------------------------------------------------------------- transforms


def test_select_and_scale_keep_sessions(tmp_path):
    w = load_trace(_write(tmp_path, DELTA), block_size=4, trace_format="mooncake-delta")
    h = select(w, count=4)
    assert h.sessions.prev.tolist() == [-1, 0, 1, -1] and h.sessions.n_sessions == 2
    assert h.output_blocks(1).tolist() == [52] and h.output_blocks(3).tolist() == []
    cut = select(w, start_s=0.6)  # A2, B0, B1, B2: A2 loses its prev and starts a session
    assert cut.sessions.prev.tolist() == [-1, -1, 1, 2]
    assert cut.sessions.turn.tolist() == [0, 0, 1, 2]
    assert cut.sessions.session.tolist() == [0, 1, 1, 1]
    np.testing.assert_allclose(cut.sessions.start_s, [0.15, 0.4])
    assert cut.blocks(0).tolist() == [10, 11, 51, 52, 53]
    s = scale_rate(w, 4.0)  # starts 0 and 0.25 s; think times unchanged
    np.testing.assert_allclose(s.arrival_s, [0, 0.25, 0.25, 0.35, 0.5, 0.75])
    assert s.sessions.session.tolist() == [0, 1, 1, 1, 0, 0]
    assert s.sessions.prev.tolist() == [-1, -1, 1, 2, 0, 4]
    assert s.input_tokens.tolist() == [6, 5, 18, 23, 11, 18]
    assert s.output_blocks(4).tolist() == [52] and s.meta["rate_scale"] == 4.0


# ------------------------------------------------------------------------- Bailian


def test_bailian_closed_loop_on_request(tmp_path):
    rows = [
        {"chat_id": 1, "parent_chat_id": -1, "timestamp": 10.0, "input_length": 16,
         "output_length": 4, "hash_ids": [1], "type": "text", "turn": 1},
        {"chat_id": 2, "parent_chat_id": -1, "timestamp": 11.0, "input_length": 16,
         "output_length": 4, "hash_ids": [5], "type": "text", "turn": 1},
        {"chat_id": 3, "parent_chat_id": 1, "timestamp": 14.5, "input_length": 32,
         "output_length": 4, "hash_ids": [1, 2], "type": "text", "turn": 2},
        {"chat_id": 4, "parent_chat_id": 3, "timestamp": 20.0, "input_length": 48,
         "output_length": 4, "hash_ids": [1, 2, 3], "type": "text", "turn": 3},
    ]
    p = _write(tmp_path, rows)
    assert load_trace(p).sessions is None  # default: open loop, unchanged
    w = load_trace(p, closed_loop=True)
    ses = w.sessions
    assert ses.closed_loop and ses.prev.tolist() == [-1, -1, 0, 2]
    assert ses.turn.tolist() == [0, 0, 1, 2] and ses.session.tolist() == [0, 1, 0, 0]
    np.testing.assert_allclose(ses.delay_s, [0, 0, 4.5, 5.5])
    np.testing.assert_allclose(ses.nominal_arrivals(), w.arrival_s)
    assert w.output_hash_ids is None
    bad = [rows[0], {**rows[2], "timestamp": 9.0}]
    with pytest.raises(TraceError, match="line 2: field 'parent_chat_id': parent chat 1"), \
            pytest.warns(TraceOrderWarning):
        load_trace(_write(tmp_path, bad, "b.jsonl"), closed_loop=True)


# ------------------------------------------------------------------------- the AIPerf trace


@pytest.fixture(scope="module")
def aiperf():
    if not AIPERF.exists():
        pytest.skip(f"shared AIPerf trace not found at ../shared/traces ({AIPERF.name})")
    return load_trace(AIPERF)


def test_aiperf_trace_loads_as_delta_sessions(aiperf):
    w = aiperf
    ses = w.sessions
    assert len(w) == 12_571 and ses.n_sessions == 1_061 and ses.closed_loop
    assert w.meta["trace_format"] == "mooncake-delta" and w.meta["restart_sessions"] == 61
    ses.validate(len(w))
    assert np.all(ses.prev < np.arange(len(w)))
    assert np.all(np.diff(w.arrival_s) >= 0)
    np.testing.assert_allclose(ses.nominal_arrivals(), w.arrival_s, rtol=0, atol=1e-6)
    bs = w.block_size
    need = -(-w.input_tokens // bs)
    np.testing.assert_array_equal(np.diff(w.hash_offsets), need)
    later = np.flatnonzero(ses.prev >= 0)
    for i in later.tolist():
        j = int(ses.prev[i])
        head = np.concatenate([w.blocks(j), w.output_blocks(j)])
        if w.meta["shared_turn0_tails"] and ses.turn[j] == 0 and \
                w.blocks(i)[w.blocks(j).size - 1] != w.blocks(j)[-1]:
            head = head[: w.blocks(j).size - 1]  # a shared turn-0 tail was replaced
        np.testing.assert_array_equal(w.blocks(i)[: head.size], head)
    # ids of different sessions coincide only at turn-0 trace positions
    first_ids = np.concatenate([w.blocks(int(f)) for f in ses.first])
    later_ids = np.concatenate([w.blocks(i) for i in later] + [w.output_hash_ids])
    fresh = np.setdiff1d(later_ids, first_ids)
    assert fresh.min() >= w.meta["first_fresh_id"]
    owner = np.repeat(ses.session, np.diff(w.hash_offsets))
    o_owner = np.repeat(ses.session, np.diff(w.output_hash_offsets))
    ids = np.concatenate([w.hash_ids, w.output_hash_ids])
    own = np.concatenate([owner, o_owner])
    pairs = np.unique(np.stack([ids, own]), axis=1)
    u, c = np.unique(pairs[0], return_counts=True)
    assert np.all(np.isin(u[c > 1], first_ids))
    assert not np.any(np.isin(u[c > 1], fresh))
    # every id names one prefix chain (same position, same predecessor) wherever it occurs
    chains = _chains(w)
    assert chains.shape[1] == np.unique(chains[0]).size


def test_aiperf_head_selection(aiperf):
    h = select(aiperf, count=2000)
    assert len(h) == 2000 and h.sessions.closed_loop
    np.testing.assert_array_equal(h.sessions.prev, aiperf.sessions.prev[:2000])
    np.testing.assert_array_equal(h.output_hash_ids,
                                  aiperf.output_hash_ids[: aiperf.output_hash_offsets[2000]])
