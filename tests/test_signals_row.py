"""The one-decision path of the signals (``score_row``) against the array definitions."""

from __future__ import annotations

import itertools
import zlib

import numpy as np
import pytest

from lmetric_theory.core.definitions import BDefinition, PDefinition, ScoreDefinition
from lmetric_theory.core.signals import batch_row, prefill_row, score_inputs, score_row
from lmetric_theory.policies.base import DecisionView


def _view(rng: np.random.Generator, n: int) -> DecisionView:
    def col(lo: int, hi: int) -> np.ndarray:
        return rng.integers(lo, hi, size=n).astype(np.int32)

    bs = int(rng.choice([1, 16, 512]))
    inp = int(rng.integers(1, 40_000))
    hit = col(-2, inp // bs + 3)  # negatives and hits past the prompt: the clamps matter
    return DecisionView(int(rng.integers(0, 100)), 0.0, inp, (inp - hit * bs).astype(np.int32),
                        col(0, 50_000), col(0, 300), col(0, 300),
                        rng.random(n).astype(np.float32), hit, bs, col(-50, 50_000), col(-3, 300),
                        col(-100, 900_000), prefix_class=-1,
                        router_inflight_new_tokens=col(-50, 50_000))


@pytest.mark.parametrize(("p", "b"), list(itertools.product(PDefinition, BDefinition)))
def test_score_row_equals_the_array_definitions(p: PDefinition, b: BDefinition) -> None:
    rng = np.random.default_rng(zlib.crc32(f"{p.value} {b.value}".encode()))
    d = ScoreDefinition(p, b, 0, 1)
    for _ in range(200):
        v = _view(rng, int(rng.integers(1, 17)))
        P, B = score_inputs(v, d)
        rp, rb = score_row(v, d)
        assert rp == P.tolist() and rb == B.tolist()
        # Python numbers (ints; Fractions for prefill-blocks), not numpy scalars
        assert all(type(x) is type(y) for x, y in zip(rp, P.tolist(), strict=True))
        assert all(type(x) is int for x in rb)


def test_views_that_are_not_one_integer_decision_take_the_array_path() -> None:
    rng = np.random.default_rng(5)
    v = _view(rng, 6)
    floats = DecisionView(v.decision, v.time_s, v.input_tokens, v.uncached.astype(np.float64),
                          v.queued, v.running.astype(np.float64), v.waiting, v.kv_usage,
                          v.hit_blocks, v.block_size, v.router_queued, v.router_inflight,
                          v.router_all_tokens)
    # float signals: truncated to int64 as the array definitions do
    assert prefill_row(floats, PDefinition.UNCACHED) == v.uncached.tolist()
    assert batch_row(floats, BDefinition.RUNNING) == v.running.tolist()
    np_prompt = DecisionView(v.decision, v.time_s, np.int64(v.input_tokens), v.uncached, v.queued,
                             v.running, v.waiting, v.kv_usage, v.hit_blocks, v.block_size,
                             v.router_queued, v.router_inflight, v.router_all_tokens)
    d = ScoreDefinition(PDefinition.ROUTER_QUEUED_PLUS_NEW, BDefinition.ROUTER_IN_FLIGHT, 0, 1)
    P, B = score_inputs(v, d)
    assert score_row(np_prompt, d) == (P.tolist(), B.tolist())
