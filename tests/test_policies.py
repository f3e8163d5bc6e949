"""Tests of the routing policies and their registry."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmetric_theory.core.kernel import argmin_linear, argmin_product
from lmetric_theory.policies import (
    DecisionView,
    Policy,
    make_policy,
    parse_policy_spec,
    policy_names,
    register_policy,
    tie_field,
)

BUILTIN = {"lmetric", "linear", "round-robin", "random", "least-loaded", "cache-affinity", "power-of-two"}


def view(uncached, queued=None, running=None, waiting=None, input_tokens=1000, decision=0) -> DecisionView:
    n = len(uncached)
    z = [0] * n
    return DecisionView(
        decision=decision, time_s=0.0, input_tokens=input_tokens,
        uncached=np.asarray(uncached, np.int32), queued=np.asarray(queued or z, np.int32),
        running=np.asarray(running or z, np.int32), waiting=np.asarray(waiting or z, np.int32),
        kv_usage=np.zeros(n, np.float32),
    )


def test_registry_lists_builtins() -> None:
    assert BUILTIN <= set(policy_names())


def test_unknown_policy_lists_valid_names() -> None:
    with pytest.raises(ValueError) as e:
        make_policy("lmetrik")
    for name in BUILTIN:
        assert name in str(e.value)


@pytest.mark.parametrize("spec, match", [
    ("lmetric:lam=3", "unknown parameter 'lam'; valid parameters: variant, P, B, p0, b0, tie"),
    ("lmetric:P=everything", "P: .everything. is not one of uncached, queued\\+uncached"),
    ("lmetric:B=all", "B: .all. is not one of running, in-flight"),
    ("linear:lam=fast", "cannot read 'fast'"),
    ("linear:lam=-1", "lam must be >= 0"),
    ("random:tie=first", "is not one of lowest, random"),
    ("cache-affinity:abs_threshold=1.5", "cannot read '1.5' as int"),
    ("cache-affinity:cache_threshold=2", "cache_threshold must be in"),
    ("lmetric:P", "expected key=value"),
    ("lmetric:b0=1,b0=2", "given twice"),
])
def test_bad_parameters_are_rejected(spec: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_policy(spec)


def test_parameters_are_typed() -> None:
    p = make_policy("lmetric:P=queued+uncached,B=in-flight,p0=1/2,b0=2,tie=random", seed=1)
    assert p.params.p0 == Fraction(1, 2) and p.params.b0 == Fraction(2)
    assert p.params.P == "queued+uncached" and p.params.tie == "random"
    assert make_policy(p.spec).params == p.params  # the canonical spec round-trips
    assert parse_policy_spec("linear: lam = 8 ") == ("linear", {"lam": "8"})
    c = make_policy("cache-affinity:abs_threshold=4,rel_threshold=1.25")
    assert c.params.abs_threshold == 4 and c.params.rel_threshold == 1.25


ints = st.integers(0, 5000)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), n=st.integers(1, 6))
def test_lmetric_and_linear_agree_with_exact_predicates(data, n: int) -> None:
    unc = data.draw(st.lists(ints, min_size=n, max_size=n))
    q = data.draw(st.lists(ints, min_size=n, max_size=n))
    r = data.draw(st.lists(st.integers(0, 50), min_size=n, max_size=n))
    w = data.draw(st.lists(st.integers(0, 50), min_size=n, max_size=n))
    b0 = data.draw(st.sampled_from(["1", "0", "1/3", "5/2"]))
    v = view(unc, q, r, w)
    P = np.array(q) + np.array(unc)
    B = np.array(r) + np.array(w)
    got = make_policy(f"lmetric:P=queued+uncached,B=in-flight,b0={b0}").choose(v)
    exact = [Fraction(int(p)) * (int(b) + Fraction(b0)) for p, b in zip(P, B, strict=True)]
    assert got == exact.index(min(exact))  # brute force, lowest index on ties
    if "/" not in b0:
        assert got == argmin_product(P, B, 0, int(b0))
    got = make_policy("lmetric:variant=legacy").choose(v)
    assert got == argmin_product(np.array(unc), np.array(r), 0, 1)
    lam = data.draw(st.sampled_from(["0", "7", "1024", "3/4"]))
    got = make_policy(f"linear:lam={lam},variant=legacy").choose(v)
    exact = [u + Fraction(lam) * b for u, b in zip(unc, r, strict=True)]
    assert got == exact.index(min(exact))
    if "/" not in lam:
        assert got == argmin_linear(np.array(unc), np.array(r), int(lam))


def test_lmetric_hand_example() -> None:
    # (P + 0)(B + 1): 1000*3 = 3000, 2000*1 = 2000, 500*5 = 2500 -> instance 1.
    v = view([1000, 2000, 500], running=[2, 0, 4])
    assert make_policy("lmetric:variant=legacy").choose(v) == 1
    # queued+uncached: (1000+0)*3, (2000+5000)*1, (500+0)*5 -> instance 2.
    v = view([1000, 2000, 500], queued=[0, 5000, 0], running=[2, 0, 4])
    assert make_policy("lmetric:P=queued+uncached").choose(v) == 2
    # linear with lam=1000: 1000+2000, 2000+0, 500+4000 -> instance 1.
    assert make_policy("linear:lam=1000,variant=legacy").choose(v) == 1


def test_tie_breaking_lowest_and_seeded_random() -> None:
    v = view([100, 100, 100, 100])
    assert make_policy("lmetric:variant=legacy").choose(v) == 0
    assert make_policy("least-loaded").choose(v) == 0
    picks = [make_policy("lmetric:tie=random", seed=s).choose(v) for s in range(40)]
    assert set(picks) == {0, 1, 2, 3}
    a = make_policy("least-loaded:tie=random", seed=9)
    b = make_policy("least-loaded:tie=random", seed=9)
    assert [a.choose(v) for _ in range(20)] == [b.choose(v) for _ in range(20)]
    # A strict minimum is never broken by the tie rule.
    assert all(make_policy("lmetric:tie=random", seed=s).choose(view([100, 50, 100])) == 1 for s in range(10))


def test_round_robin_random_and_power_of_two() -> None:
    v = view([0, 0, 0])
    rr = make_policy("round-robin")
    assert [rr.choose(v) for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    r1 = make_policy("random", seed=4)
    r2 = make_policy("random", seed=4)
    s1 = [r1.choose(v) for _ in range(50)]
    assert s1 == [r2.choose(v) for _ in range(50)] and set(s1) == {0, 1, 2}
    # Power of two never picks the strictly most loaded of three... unless it is drawn twice (impossible).
    p2 = make_policy("power-of-two", seed=1)
    loaded = view([0, 0, 0], running=[9, 1, 5])
    assert all(p2.choose(loaded) != 0 for _ in range(100))
    assert make_policy("power-of-two").choose(view([5])) == 0


def test_least_loaded_uses_vllm_score() -> None:
    # 4*waiting + running: 4*1+0 = 4, 4*0+3 = 3, 4*0+5 = 5 -> instance 1.
    assert make_policy("least-loaded").choose(view([0, 0, 0], running=[0, 3, 5], waiting=[1, 0, 0])) == 1


def test_cache_affinity_follows_cache_then_falls_back() -> None:
    # Longest hit (instance 2) when balanced.
    v = view([900, 600, 100], running=[3, 3, 4], input_tokens=1000)
    assert make_policy("cache-affinity").choose(v) == 2
    # Imbalance beyond both thresholds (|80 - 3| > 64 and 80 > 1.5*3): least loaded.
    v = view([900, 600, 100], running=[3, 10, 80], input_tokens=1000)
    assert make_policy("cache-affinity").choose(v) == 0
    # Best match below cache_threshold (0.3 of 1000): least loaded.
    v = view([900, 800, 950], running=[3, 1, 4], input_tokens=1000)
    assert make_policy("cache-affinity").choose(v) == 1
    # Equal longest hits: the less loaded of them.
    v = view([100, 100, 900], running=[5, 2, 0], input_tokens=1000)
    assert make_policy("cache-affinity").choose(v) == 1


def test_register_policy_from_another_module() -> None:
    @dataclass(frozen=True, slots=True)
    class FixedParams:
        k: int = 0
        tie: str = tie_field()

    @register_policy
    class Fixed(Policy):
        name = "test-fixed"
        Params = FixedParams

        def choose(self, view: DecisionView) -> int:
            return self.params.k

    assert "test-fixed" in policy_names()
    assert make_policy("test-fixed:k=2").choose(view([0, 0, 0])) == 2
    with pytest.raises(ValueError, match="valid parameters: k, tie"):
        make_policy("test-fixed:j=1")

    @dataclass(frozen=True)
    class NoTie:
        k: int = 0

    class Bad(Policy):
        name = "test-bad"
        Params = NoTie

    with pytest.raises(ValueError, match="'tie' field"):
        register_policy(Bad)
    assert dataclasses.is_dataclass(FixedParams)


def test_lmetric_default_is_the_papers_score() -> None:
    # T=100, block 16, hits (0, 2, 4) blocks -> new tokens 100, 68, 36; router queued tokens
    # 50, 0, 200; router bs 1, 5, 2: (150)(2)=300, (68)(6)=408, (236)(3)=708 -> instance 0.
    # The legacy pair (uncached x (running + 1)) picks instance 2 on the same view.
    v = DecisionView(
        0, 0.0, 100, np.array([100, 68, 36]), np.zeros(3, np.int32), np.array([1, 2, 0]),
        np.zeros(3, np.int32), np.zeros(3, np.float32), hit_blocks=np.array([0, 2, 4]),
        block_size=16, router_queued=np.array([50, 0, 200]), router_inflight=np.array([1, 5, 2]),
        router_all_tokens=np.array([300, 900, 100]),
    )
    pol = make_policy("lmetric")
    assert pol.definition.p_definition.value == "router-queued+new"
    assert pol.definition.b_definition.value == "router-in-flight"
    assert pol.choose(v) == 0
    assert make_policy("lmetric:variant=legacy").choose(v) == 2
    # llm-d counts full uncached blocks only: 96, 64, 32 tokens x (bs + 1) -> 192, 384, 96.
    assert make_policy("lmetric:variant=llm-d,tie=lowest").choose(v) == 2
    # Explicit P= / B= override the variant; the spec records the resolved definitions.
    spec = make_policy("lmetric:variant=llm-d,B=running").spec
    assert "P=uncached-full-blocks,B=running" in spec and "tie=random" in spec
    # linear scores the same signals as lmetric by default.
    assert make_policy("linear").params.P == pol.params.P
