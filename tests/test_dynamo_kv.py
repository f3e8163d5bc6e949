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


# ---------------------------------------------------------------- Dynamo's active sequences


def _brute_unique(active: dict[int, tuple[int, list[int], int, int]], i: int) -> set:
    """The set of complete prompt blocks of the requests active on worker ``i``: block ``j``
    under key ``k`` is ``(k, j)``; blocks past the last key are the request's own."""
    out: set = set()
    for rid, (w, keys, ratio, nb) in active.items():
        if w != i:
            continue
        for b in range(nb):
            q = b // ratio
            out.add((keys[q], b % ratio) if q < len(keys) else ("own", rid, b))
    return out


def test_active_prompt_blocks_against_brute_force() -> None:
    """Random dispatches and finishes on 3 workers: the refcounted counter equals the size of
    the set of blocks held, and the request's new blocks equal the set difference."""
    from lmetric_theory.sim.active_blocks import ActivePromptBlocks

    rng = np.random.default_rng(3)
    ratio = 4
    tr = ActivePromptBlocks(3)
    active: dict[int, tuple[int, list[int], int, int]] = {}
    for rid in range(400):
        if active and rng.random() < 0.45:
            gone = int(rng.choice(list(active)))
            del active[gone]
            tr.remove(gone)
        # keys drawn from a small prefix tree: shared prefixes, partial last keys, keyless tails
        depth = int(rng.integers(1, 5))
        keys = [int(rng.integers(1, 4))]
        for _ in range(depth - 1):
            keys.append(keys[-1] * 10 + int(rng.integers(1, 3)))
        nb = int(rng.integers(0, ratio * depth + 3))
        i = int(rng.integers(0, 3))
        new = tr.new_blocks(keys, ratio, nb)
        for w in range(3):
            mine = _brute_unique({-1: (w, keys, ratio, nb)}, w)
            mine = {b if b[0] != "own" else ("own", rid, b[2]) for b in mine}
            assert new[w] == len(mine - _brute_unique(active, w))
        tr.add(i, rid, keys, ratio, nb, 0)
        active[rid] = (i, keys, ratio, nb)
        for w in range(3):
            assert tr.unique[w] == len(_brute_unique(active, w))
        tr.check()


def test_prefill_tokens_released_at_first_token() -> None:
    from lmetric_theory.sim.active_blocks import ActivePromptBlocks

    tr = ActivePromptBlocks(2)
    tr.add(0, 0, [1], 2, 2, 30)
    tr.add(0, 1, [1], 2, 1, 5)
    tr.add(1, 2, [9], 2, 2, 7)
    first = [0.5, math.nan, math.nan]
    tr.release_started(first, 0.4)
    assert tr.prefill_tokens() == [35, 7]
    tr.release_started(first, 0.5)  # request 0's first token: its 30 tokens, not its blocks
    assert tr.prefill_tokens() == [5, 7]
    assert tr.unique == [2, 2]
    tr.remove(1)  # finishing releases blocks and unreleased prefill
    assert tr.prefill_tokens() == [0, 7]
    assert tr.unique == [2, 2]
    tr.remove(0)
    assert tr.unique == [0, 2]


def test_cost_with_active_sequences_by_hand() -> None:
    # T = 64 (4 blocks). Worker 0: 10 unique active blocks, 3 of the request's 4 already
    # active, 48 active prefill tokens, 2 cached blocks; worker 1: empty.
    # w0: max(0, (48 + 64)/16 - 2) + 10 + 1 = 5 + 11 = 16;  w1: 64/16 + 0 + 4 = 8
    p = make_policy("dynamo-kv")
    v = view(hit=[2, 0], queued=[999, 999], all_tokens=[999, 999], inflight=[3, 0])
    import dataclasses
    v = dataclasses.replace(v, router_active_prompt_blocks=np.array([10, 0]),
                            router_new_prompt_blocks=np.array([1, 4]),
                            router_active_prefill_tokens=np.array([48, 0]))
    assert p.costs(v).tolist() == [16.0, 8.0]


def _hand_workload():
    """Trace blocks of 32 tokens = 2 engine blocks of 16 (keys are prefix-chained ids)."""
    from lmetric_theory.workload.loaders import make_workload

    hashes = [[1, 2, 3, 4], [1, 2, 5], [1, 2], [1, 2, 3], [7]]
    lens = [len(h) for h in hashes]
    return make_workload(
        arrival_s=np.array([0.0, 0.001, 0.002, 0.015, 100.0]),
        input_tokens=np.array([100, 80, 64, 96, 20]),
        output_tokens=np.array([50, 50, 50, 50, 2]),
        hash_ids=np.array([x for h in hashes for x in h]),
        hash_offsets=np.concatenate([[0], np.cumsum(lens)]), block_size=32, session_ids=None,
        meta={})


# (active prompt blocks, the request's new blocks, active prefill tokens) per decision,
# everything sent to worker 0, one 10 ms step per pass, budget 128 tokens:
# d0  t=0:     nothing active; the request's 100 tokens hold 6 complete blocks
# d1  t=1 ms:  request 0's 6 blocks; request 1 (keys 1, 2, 5: 5 blocks) adds the 1 under key 5;
#              request 0's 100 prefill tokens (its first token comes at 10 ms)
# d2  t=2 ms:  6 + 1 = 7; request 2's 4 blocks (keys 1, 2) are all active; 100 + 16 (request
#              1's blocks of keys 1, 2 were scheduled with request 0: 80 - 64 new)
# d3  t=15 ms: request 0's prefill released at its first token; requests 1 and 2 (16 new
#              tokens each, 64 - 48 for request 2: the last prompt token is recomputed)
#              are in the step ending at 20 ms; request 3's 6 blocks are all active
# d4  t=100 s: everything finished; a 20-token prompt has 1 complete block
HAND = [([0, 0], [6, 6], [0, 0]), ([6, 0], [1, 5], [100, 0]), ([7, 0], [0, 4], [116, 0]),
        ([7, 0], [0, 6], [32, 0]), ([0, 0], [1, 1], [0, 0])]


class _Record:
    """A policy sending everything to worker 0 and recording dynamo-kv's active sequences."""

    @staticmethod
    def make():
        from lmetric_theory.policies.base import Policy

        class Record(Policy):
            name = "record"
            active_sequences = True

            def __init__(self) -> None:
                super().__init__(make_policy("dynamo-kv").params, 0)
                self.rows: list = []

            def choose(self, v: DecisionView) -> int:
                self.rows.append((v.router_active_prompt_blocks.tolist(),
                                  v.router_new_prompt_blocks.tolist(),
                                  v.router_active_prefill_tokens.tolist()))
                return 0

        return Record()


def _hand_config():
    from lmetric_theory.sim import LatencyModel, SimConfig

    return SimConfig(n_instances=2, latency=LatencyModel(c0=0.01, c_pf=0.0, c_dec=0.0,
                                                         c_kv=0.0, c_att=0.0),
                     kv_capacity_tokens=16 * 200, token_budget=128, max_batch=8)


def test_active_sequences_by_hand_fast_engine() -> None:
    from lmetric_theory.sim import Simulator

    p = _Record.make()
    Simulator(_hand_workload(), _hand_config(), p).run()
    assert p.rows == HAND


def test_active_sequences_by_hand_vllm_engine() -> None:
    """The same hand case under vLLM's own scheduler (the router counters are the same code)."""
    from conftest import vllm_availability

    ok, why = vllm_availability()
    if not ok:
        pytest.skip(why)
    from lmetric_theory.sim.vllm_engine import simulate_vllm

    p = _Record.make()
    simulate_vllm(_hand_workload(), _hand_config(), p)
    assert p.rows == HAND


def test_other_policies_keep_no_active_sequences() -> None:
    """The default path: only a policy that asks gets the block counter."""
    from lmetric_theory.sim import Simulator

    sim = Simulator(_hand_workload(), _hand_config(), "round-robin")
    assert sim._counters.blocks is None
    sim = Simulator(_hand_workload(), _hand_config(), "dynamo-kv")
    assert sim._counters.blocks is not None
