"""``dynamo-kv``: Dynamo 1.6.1's KV-router cost by hand, its softmax, its config file and CLI errors.

Runs without the ``dynamo`` extra; the one comparison with the wheel's own
``KvRouterConfig.from_json`` skips, saying why, when the wheel is missing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lmetric_theory.cli import main
from lmetric_theory.policies.base import DecisionView
from lmetric_theory.policies.dynamo_kv import (
    kv_router_settings,
    read_kv_router_config,
    softmax_pick,
)
from lmetric_theory.policies.registry import make_policy


def view(hit: list[int], queued: list[int], all_tokens: list[int], inflight: list[int],
         t: int = 64, bs: int = 16) -> DecisionView:
    n = len(hit)
    z = np.zeros(n, dtype=np.int32)
    return DecisionView(
        decision=0, time_s=0.0, input_tokens=t,
        uncached=np.asarray([t - h * bs for h in hit], dtype=np.int32), queued=z, running=z,
        waiting=z, kv_usage=np.zeros(n, dtype=np.float32),
        hit_blocks=np.asarray(hit, dtype=np.int32), block_size=bs,
        router_queued=np.asarray(queued, dtype=np.int32),
        router_inflight=np.asarray(inflight, dtype=np.int32),
        router_all_tokens=np.asarray(all_tokens, dtype=np.int32))


def write(tmp_path: Path, obj: object, name: str = "kv.json") -> str:
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return str(p)


def test_default_cost_by_hand() -> None:
    # T = 64 tokens = 4 blocks of 16. Worker 0: 4 cached blocks, no queued prefill, 160 active
    # tokens; worker 1: nothing cached, 32 queued prefill tokens, idle otherwise.
    # w0: max(0, (0 + 64)/16 - 1*4) + 160//16 + 4 = 0 + 10 + 4 = 14
    # w1: max(0, (32 + 64)/16 - 0) + 0 + 4 = 6 + 4 = 10
    p = make_policy("dynamo-kv")
    v = view(hit=[4, 0], queued=[0, 32], all_tokens=[160, 0], inflight=[2, 0])
    assert p.costs(v).tolist() == [14.0, 10.0]
    assert p.choose(v) == 1


def test_credit_decay_and_request_weight_by_hand(tmp_path: Path) -> None:
    cfg = write(tmp_path, {"overlap_score_credit_decay": 1.0, "decode_active_request_weight": 0.5,
                           "prefill_load_scale": 2.0})
    p = make_policy(f"dynamo-kv:config={cfg}")
    v = view(hit=[4, 0], queued=[32, 0], all_tokens=[160, 0], inflight=[2, 1])
    # w0: raw 6, excess (32-0)/16/4 = 1/2, decay 2/3, credit 8/3 -> 2*(6 - 8/3) + 14 + 0.5*2
    # (T = 64 is 4 whole blocks: floor and ceil agree)
    # w1: raw 4, excess 0 -> 2*4 + 4 + 0.5*1
    c = p.costs(v)
    assert math.isclose(c[0], 2 * (6 - 8 / 3) + 14 + 1.0)
    assert math.isclose(c[1], 2 * 4 + 4 + 0.5)


def test_overlap_score_weight_alias() -> None:
    s = kv_router_settings({"overlap_score_weight": 2.5}, "x.json")
    assert (s.prefill_load_scale, s.overlap_score_credit) == (2.5, 1.0)
    s = kv_router_settings({"overlap_score_weight": 0}, "x.json")
    assert (s.prefill_load_scale, s.overlap_score_credit) == (0.0, 0.0)


def test_softmax_pick_against_exact_probabilities() -> None:
    costs = np.array([0.0, 1.0, 1.0])
    # normalised by the range 1: weights exp(0), exp(-1/t), exp(-1/t)
    t = 0.5
    w = np.array([1.0, math.exp(-2.0), math.exp(-2.0)])
    cum = np.cumsum(w / w.sum())
    for u in (0.0, cum[0] - 1e-9, cum[0] + 1e-9, cum[1] + 1e-9, 0.999999):
        assert softmax_pick(costs, t, u) == int(np.flatnonzero(u <= cum)[0])
    assert softmax_pick(np.array([3.0, 3.0]), t, 0.6) == 1  # equal costs: uniform


def test_temperature_draws_follow_the_softmax(tmp_path: Path) -> None:
    cfg = write(tmp_path, {"router_temperature": 1.0})
    p = make_policy(f"dynamo-kv:config={cfg}", seed=3)
    v = view(hit=[0, 0], queued=[0, 16], all_tokens=[0, 0], inflight=[0, 0])
    # costs 8 and 9 (range 1): P(worker 0) = 1 / (1 + e^-1)
    picks = np.array([p.choose(v) for _ in range(4000)])
    expect = 1 / (1 + math.exp(-1))
    assert abs(np.mean(picks == 0) - expect) < 4 * math.sqrt(expect * (1 - expect) / 4000)


@pytest.mark.parametrize("obj, key", [
    ({"overlap_score_credit": 1, "bogus": 1}, "'bogus'"),
    ({"prefill_load_scale": -1}, "'prefill_load_scale'"),
    ({"router_temperature": "hot"}, "'router_temperature'"),
    ({"use_kv_events": False}, "'use_kv_events'"),
    ({"router_track_prefill_tokens": 1}, "'router_track_prefill_tokens'"),
])
def test_bad_config_names_file_and_key(tmp_path: Path, obj: dict, key: str) -> None:
    path = write(tmp_path, obj)
    with pytest.raises(ValueError) as exc:
        read_kv_router_config(path)
    assert path in str(exc.value) and key in str(exc.value)


def test_cli_bad_config_one_line_exit_2(tmp_path: Path, capsys) -> None:
    path = write(tmp_path, '{"overlap_score_credit": ', "broken.json")
    assert main(["simulate", "--count", "20", "--policy", f"dynamo-kv:config={path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and path in err[0] and "line 1" in err[0]


def test_cli_queue_threshold_only_on_dynosim(tmp_path: Path, capsys) -> None:
    path = write(tmp_path, {"router_queue_threshold": 0.5})
    assert main(["simulate", "--count", "20", "--policy", f"dynamo-kv:config={path}"]) == 2
    assert "router_queue_threshold" in capsys.readouterr().err


def test_runs_on_the_fast_engine(capsys) -> None:
    assert main(["simulate", "--count", "200", "--policy", "dynamo-kv", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["policies"]["dynamo-kv"]["completed"] == 200


def test_settings_agree_with_the_wheel(tmp_path: Path) -> None:
    core = pytest.importorskip("dynamo._core", reason="the dynamo extra (ai-dynamo-runtime) is "
                               "not installed: pip install -e '.[dynamo]'")
    for obj in ({}, {"overlap_score_weight": 2.0}, {"overlap_score_weight": 0},
                {"overlap_score_credit": 0.5, "overlap_score_credit_decay": 2.0,
                 "prefill_load_scale": 3.0, "decode_active_request_weight": 1.5}):
        ours = kv_router_settings(obj, "x.json")
        theirs = core.KvRouterConfig.from_json(json.dumps(obj))
        assert ours.overlap_score_credit == theirs.overlap_score_credit
        assert ours.overlap_score_credit_decay == theirs.overlap_score_credit_decay
        assert ours.prefill_load_scale == theirs.prefill_load_scale
        assert ours.decode_active_request_weight == theirs.decode_active_request_weight


def test_partial_block_adds_prefill_not_decode() -> None:
    # T = 70: 4 whole blocks + 6 tokens. Decode counts the 4 whole blocks, prefill all 70/16.
    p = make_policy("dynamo-kv")
    v = view(hit=[0, 0], queued=[0, 0], all_tokens=[0, 0], inflight=[0, 0], t=70)
    assert p.costs(v).tolist() == [70 / 16 + 4, 70 / 16 + 4]
