"""The policies as the routers ship them: ``llm-d`` (its EndpointPickerConfig profiles and a
user's config file), ``predictor`` and ``dynamo-deterministic``.

Each scorer, the filter and the picker get a small snapshot whose choice is worked out by hand
in the comments; the ``gie-default`` profile is checked against the formula written out in
exact fractions on random views; bad config files get one line naming the file, the line and
the key, and exit 2 from the CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_baselines import rview, views

from lmetric_theory.policies.registry import make_policy, parse_spec
from lmetric_theory.policies.shipped import EPP_PROFILES, EPP_SUPPORTED_PLUGINS
from lmetric_theory.sim import LatencyModel


def kv_view(hit, *, T=64, s=16, rq=None, waiting=None, kv=None, running=None, tok=None):
    """``rview`` with a KV-usage column (the queue and KV-utilisation scorers read it)."""
    v = rview(hit, T=T, s=s, rq=rq, waiting=waiting, running=running, tok=tok)
    if kv is not None:
        object.__setattr__(v, "kv_usage", np.asarray(kv, np.float32))
    return v


def write(tmp_path, text, name="epp.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


# ------------------------------------------------------------------- hand-computed choices


def test_gie_default_hand_computed() -> None:
    # T = 64, s = 16: 4 full blocks. hit [4, 3, 0] -> prefix ratio [1, 3/4, 0];
    # waiting [4, 0, 0] -> queue (4 - w) / 4 = [0, 1, 1]; kv [3/4, 0, 0] -> [1/4, 1, 1].
    # 2 q + 2 kv + 3 p = [0 + 1/2 + 3, 2 + 2 + 9/4, 2 + 2 + 0] = [7/2, 25/4, 4] -> instance 1.
    v = kv_view([4, 3, 0], waiting=[4, 0, 0], kv=[0.75, 0, 0])
    p = make_policy("llm-d:profile=gie-default")
    assert p.scores(v) == [Fraction(7, 2), Fraction(25, 4), Fraction(4)]
    assert p.choose(v) == 1


def test_queue_scorer_all_equal_scores_one() -> None:
    # every instance waits 2: the queue scorer gives 1 to all (not 0/0); kv and prefix tie too
    v = kv_view([0, 0], waiting=[2, 2], kv=[0.5, 0.5])
    assert make_policy("llm-d:profile=gie-default").scores(v) == [Fraction(3), Fraction(3)]


def test_optimized_baseline_keeps_the_sticky_instances() -> None:
    # hit [4, 3, 4, 0] of 4 blocks -> ratio [1, 3/4, 1, 0]; threshold 4/5 keeps {0, 2}.
    # TTFT gate: best sticky queue 3000 tokens = 188 ms at 15928 tok/s, best other 0 ms:
    # 188 < 18000, so the filter keeps {0, 2}; token load q + new = [5000, -, 3000, -] -> 2.
    v = kv_view([4, 3, 4, 0], rq=[5000, 0, 3000, 0])
    p = make_policy("llm-d")
    assert p.candidates(v) == [0, 2]
    assert p.choose(v) == 2


def test_optimized_baseline_ttft_gate_breaks_stickiness() -> None:
    # sticky {0, 2} with queues 300000 and 400000 tokens: best sticky 1000 * 300000 / 15928 =
    # 18835 ms, best other 0 ms: 18835 > 18000, so every instance is kept; token load
    # [300000, 0 + 16, 400000, 0 + 64] -> instance 1.
    v = kv_view([4, 3, 4, 0], rq=[300000, 0, 400000, 0])
    p = make_policy("llm-d")
    assert p.candidates(v) == [0, 1, 2, 3]
    assert p.choose(v) == 1
    # at exactly the penalty the gate holds: 1000 * 286704 / 15928 = 18000 ms, not > 18000
    v = kv_view([4, 3, 4, 0], rq=[286704, 0, 400000, 0])
    assert p.candidates(v) == [0, 2]


def test_optimized_baseline_without_a_sticky_instance_keeps_all() -> None:
    # ratio [3/4, 1/2, 0] < 4/5 everywhere: no filtering; token load [0 + 16, 10 + 32, 0 + 64]
    v = kv_view([3, 2, 0], rq=[0, 10, 0])
    p = make_policy("llm-d")
    assert p.candidates(v) == [0, 1, 2]
    assert p.choose(v) == 0


def test_no_hit_lru_spreads_cold_requests_and_ignores_warm_ones() -> None:
    p = make_policy("llm-d:profile=no-hit-lru")
    cold = kv_view([0, 0, 0])
    # 1st cold: never used, ranks [0, 1, 2] -> lru [1, 1/2, 0]; queue, kv equal -> instance 0
    # 2nd: never used [1, 2] rank 0, 1, used 0 rank 2 -> [0, 1, 1/2] -> 1; 3rd -> 2;
    # 4th: used in order 0, 1, 2 -> [1, 1/2, 0] -> 0
    assert [p.choose(cold) for _ in range(4)] == [0, 1, 2, 0]
    # a warm request: lru 1/2 everywhere, prefix ratio [0, 0, 1] -> 2, and the LRU is untouched
    warm = kv_view([0, 0, 4])
    assert p.scores(warm)[0] == 2 + 2 + Fraction(1)  # 2 q + 2 kv + 3 * 0 + 2 * 1/2
    assert p.choose(warm) == 2
    # so the next cold request goes to the least recently used: order is 1, 2, 0 -> 1
    assert p.choose(cold) == 1


def test_max_score_picker_breaks_ties_at_random_by_default() -> None:
    v = kv_view([0, 0, 0])
    assert {make_policy("llm-d", seed=k).choose(v) for k in range(60)} == {0, 1, 2}
    assert make_policy("llm-d:tie=lowest").choose(v) == 0
    assert make_policy("llm-d:tie=highest").choose(v) == 2


def test_user_config_with_its_own_parameters(tmp_path) -> None:
    # hit [2, 1, 4] blocks of 16 of T = 64 (4 blocks): new tokens [32, 48, 0]; queued
    # [118, 2, 0] -> token load [150, 50, 0], threshold 100 -> [0, 1/2, 1]. The prefix scorer
    # with matchLengthWeight 1/2, scale 32 tokens: ratio [1/2, 1/4, 1], length
    # min(1, 16 h / 32)^2 = [1, 1/4, 1] -> [3/4, 1/4, 1]; weights 1 and 2:
    # [0 + 3/2, 1/2 + 1/2, 1 + 2] -> instance 2 (and 0 beats 1).
    cfg = write(tmp_path, """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: token-load-scorer
  name: tl
  parameters: {queueThresholdTokens: 100}
- type: prefix-cache-scorer
  parameters:
    matchLengthWeight: 0.5
    matchLengthScaleTokens: 32
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: tl
  - pluginRef: prefix-cache-scorer
    weight: 2
  - pluginRef: max-score-picker
""")
    v = kv_view([2, 1, 4], rq=[118, 2, 0])
    p = make_policy(f"llm-d:config={cfg}")
    assert p.scores(v) == [Fraction(3, 2), Fraction(1), Fraction(3)]
    assert p.choose(v) == 2


def test_builtin_profiles_read_back_from_files(tmp_path) -> None:
    for name, text in EPP_PROFILES.items():
        cfg = write(tmp_path, text, f"{name}.yaml")
        assert make_policy(f"llm-d:config={cfg}").config == make_policy(f"llm-d:profile={name}").config


@settings(max_examples=150, deadline=None)
@given(v=views(), kv=st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), min_size=5, max_size=5))
def test_gie_default_matches_exact_formula(v, kv) -> None:
    n, T, s = len(v.hit_blocks), int(v.input_tokens), int(v.block_size)
    object.__setattr__(v, "kv_usage", np.asarray(kv[:n], np.float32))
    w = [max(int(x), 0) for x in v.waiting]
    full = T // s
    q = [Fraction(1) if max(w) == min(w) else Fraction(max(w) - x, max(w) - min(w)) for x in w]
    k = [1 - Fraction(x) for x in kv[:n]]
    pre = [Fraction(min(int(h), full), full) if full else Fraction(0) for h in v.hit_blocks]
    total = [2 * a + 2 * b + 3 * c for a, b, c in zip(q, k, pre, strict=True)]
    best = max(total)
    assert make_policy("llm-d:profile=gie-default,tie=lowest").choose(v) == total.index(best)


@settings(max_examples=150, deadline=None)
@given(v=views())
def test_optimized_baseline_matches_exact_formula(v) -> None:
    T, s = int(v.input_tokens), int(v.block_size)
    full = T // s
    hit = [int(h) for h in v.hit_blocks]
    q = [max(int(x), 0) for x in v.router_queued]
    ratio = [Fraction(min(h, full), full) if full else Fraction(0) for h in hit]
    cand = list(range(len(hit)))
    sticky = [i for i in cand if ratio[i] >= Fraction(4, 5)]
    rest = [i for i in cand if ratio[i] < Fraction(4, 5)]
    if len(cand) > 1 and sticky:
        gate = rest and Fraction(1000 * (min(q[i] for i in sticky) - min(q[i] for i in rest)),
                                 15928) > 18000
        cand = cand if gate else sticky
    load = [q[i] + max(T - hit[i] * s, 0) for i in range(len(hit))]
    score = {i: 1 - Fraction(min(load[i], 4194304), 4194304) for i in cand}
    best = max(score.values())
    want = min(i for i in cand if score[i] == best)
    assert make_policy("llm-d:tie=lowest").choose(v) == want


def test_most_hit_load_as_specified_ignores_a_full_queue() -> None:
    # The authors' scorer: 10 * (hit - min) / (max - min) + load_aware(waiting), load <= 1/2.
    # hit [1, 0], waiting [128, 0]: instance 0 scores 10 + 0, instance 1 0 + 1/2 -> 0, even
    # with 128 requests waiting there (the pile-up of docs/policies.md).
    v = rview([1, 0], waiting=[128, 0])
    p = make_policy("most-hit-load")
    assert p.scores(v) == [10000, 500]
    assert p.choose(v) == 0


# ------------------------------------------------------------------------------ predictor


LAT = LatencyModel(c0=0.01, c_pf=1e-4, c_dec=1e-3, c_kv=0.0)


def test_predictor_hand_computed() -> None:
    # budget 100 tokens. Instance 0: W = 150 queued + 64 new = 214, d = 0: 2 chunks of 100
    # (0.01 + 0.01 s each) + one of 14 (0.01 + 0.0014) = 0.0514 s -> 51 ms.
    # Instance 1: W = 64, d = 90 running: chunks of 10: 6 x (0.01 + 0.001 + 0.09) + one of 4
    # (0.01 + 0.0004 + 0.09) = 0.7064 s -> 706 ms. Least: instance 0.
    v = rview([0, 0], T=64, rq=[150, 0], running=[0, 90])
    p = make_policy("predictor")
    p.bind_cluster(LAT, 100)
    assert p.ttft(v) == pytest.approx([0.0514, 0.7064], rel=1e-12)
    assert p.choose(v) == 0
    # a hit of 4 blocks on instance 0 leaves W = 150 (1 chunk of 100 + 1 of 50 = 0.035 s);
    # with instance 1 idle (d = 0) its 64 tokens take 0.0164 s -> instance 1
    v = rview([4, 0], T=64, rq=[150, 0], running=[0, 0])
    assert p.ttft(v) == pytest.approx([0.035, 0.0164], rel=1e-12)
    assert p.choose(v) == 1


def test_predictor_ties_in_whole_milliseconds_go_to_the_first() -> None:
    # 0.0164 s and 0.0165 s are both 16 ms (ttft as u32): first minimum (tie=rust) -> 0
    v = rview([0, 0], T=64, rq=[1, 0], running=[0, 0])
    p = make_policy("predictor")
    p.bind_cluster(LAT, 100)
    assert [int(1000 * x) for x in p.ttft(v)] == [16, 16]
    assert p.choose(v) == 0
    exact = make_policy("predictor:scale=0")
    exact.bind_cluster(LAT, 100)
    assert exact.choose(v) == 1


def test_predictor_refuses_to_route_unbound() -> None:
    with pytest.raises(RuntimeError, match="bind_cluster"):
        make_policy("predictor").choose(rview([0, 0]))


def test_dynamo_deterministic_is_dynamo_with_first_minimum() -> None:
    v = rview([0, 4, 6], T=100, rq=[0, 40, 50])
    assert make_policy("dynamo-deterministic").choose(v) == make_policy("dynamo:tie=rust").choose(v)
    tie = rview([0, 0], T=32)
    assert make_policy("dynamo-deterministic").choose(tie) == 0


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("text, match", [
    ("plugins: [\n  - type: queue-scorer\n", r"epp\.yaml:\d+: malformed YAML"),
    ("kind: EndpointPickerConfig\nplugins: []\nschedulingProfiles: []\nextra: 1\n",
     r"epp\.yaml:4: unknown key 'extra'"),
    ("plugins:\n- type: session-affinity-scorer\nschedulingProfiles: []\n",
     r"epp\.yaml:2: key 'type': unsupported plugin 'session-affinity-scorer'; supported plugins: "
     + ", ".join(EPP_SUPPORTED_PLUGINS)),
    ("plugins:\n- type: queue-scorer\nschedulingProfiles:\n- name: d\n  plugins:\n"
     "  - pluginRef: queue-scorer\n    weight: -1\n", r"epp\.yaml:7: key 'weight' must be >= 0"),
    ("plugins:\n- type: queue-scorer\nschedulingProfiles:\n- name: d\n  plugins:\n"
     "  - pluginRef: queue-scorer\n    weight: .inf\n", r"epp\.yaml:7: key 'weight' must be finite"),
    ("plugins:\n- type: prefix-cache-affinity-filter\n  parameters:\n    affinityThreshold: 1.5\n"
     "schedulingProfiles: []\n", r"epp\.yaml:4: key 'affinityThreshold' must be <= 1"),
    ("plugins:\n- type: token-load-scorer\n  parameters:\n    queueThreshold: 5\n"
     "schedulingProfiles: []\n", r"epp\.yaml:4: unknown key 'queueThreshold'"),
    ("plugins:\n- type: queue-scorer\nschedulingProfiles:\n- name: d\n  plugins:\n"
     "  - pluginRef: kv\n", r"epp\.yaml:6: key 'pluginRef': 'kv' is not a plugin"),
    ("plugins: []\n", r"epp\.yaml:1: key 'schedulingProfiles' is missing"),
])
def test_bad_config_names_file_line_and_key(tmp_path, text, match) -> None:
    cfg = write(tmp_path, text)
    with pytest.raises(ValueError, match=match):
        parse_spec(f"llm-d:config={cfg}")


def test_missing_config_file_and_unknown_profile_are_refused(tmp_path) -> None:
    missing = str(tmp_path / "none.yaml")
    with pytest.raises(ValueError, match=f"{missing}: cannot read the config"):
        parse_spec(f"llm-d:config={missing}")
    with pytest.raises(ValueError, match="is not one of optimized-baseline, gie-default, no-hit-lru"):
        parse_spec("llm-d:profile=precise")


def test_exploration_probability_one_skips_the_filter(tmp_path) -> None:
    # the sticky set would be {0} (ratio 1 against 0); with explorationProbability 1 every
    # instance stays, and the token load [5000 + 0, 0 + 64] sends the request to 1
    cfg = write(tmp_path, """\
plugins:
- type: prefix-cache-affinity-filter
  parameters: {explorationProbability: 1}
- type: token-load-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: prefix-cache-affinity-filter
  - pluginRef: token-load-scorer
""")
    v = kv_view([4, 0], rq=[5000, 0])
    assert make_policy("llm-d").choose(v) == 0
    assert make_policy(f"llm-d:config={cfg}").choose(v) == 1


def test_cli_bad_config_one_line_exit_2_nothing_written(tmp_path) -> None:
    cfg = write(tmp_path, "plugins:\n- type: queue-scorer\nschedulingProfiles:\n- name: d\n"
                          "  plugins:\n  - pluginRef: queue-scorer\n    weight: -2\n")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "lmetric_theory", "simulate", "synthetic:chat:count=20",
                        "--policy", f"llm-d:config={cfg}", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"{cfg}:7: key 'weight' must be >= 0" in lines[0]
    assert not out.exists()


def test_cli_runs_the_shipped_policies() -> None:
    r = subprocess.run([sys.executable, "-m", "lmetric_theory", "simulate", "synthetic:chat:count=40",
                        "-n", "3", "--json", "--policy", "llm-d", "--policy",
                        "llm-d:profile=gie-default", "--policy", "predictor"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["policies"]
    assert {"llm-d", "llm-d:profile=gie-default", "predictor"} <= set(rows)
    for row in rows.values():
        assert row["completed"] == 40


# ------------------------------------------------------------------ every policy, both engines


def _small_run():
    from lmetric_theory.sim import SimConfig, load_preset
    from lmetric_theory.workload.spec import synthetic_from_spec

    w = synthetic_from_spec("synthetic:chat:count=30", seed=0)
    cfg = SimConfig.from_preset(load_preset("h100-llama3-8b-calibrated"), 3)
    return w, cfg


def _every_policy(engine) -> None:
    from lmetric_theory.experiments.tuning import resolve_policy
    from lmetric_theory.policies.registry import policy_names

    w, cfg = _small_run()
    for name in policy_names():
        spec = resolve_policy(parse_spec(name), w, cfg, seed=0)
        r = engine(w, cfg, spec)
        assert r.completed.all(), name
        assert ((r.instance >= 0) & (r.instance < 3)).all(), name


def test_every_registered_policy_runs_on_the_fast_engine() -> None:
    from lmetric_theory.sim import simulate

    _every_policy(simulate)


@pytest.mark.slow
def test_every_registered_policy_runs_on_the_vllm_engine() -> None:
    from conftest import vllm_availability

    ok, why = vllm_availability()
    if not ok:
        pytest.skip(why)
    from lmetric_theory.sim.vllm_engine import simulate_vllm

    _every_policy(simulate_vllm)


def test_shipped_policies_are_registered_and_documented() -> None:
    from pathlib import Path

    from lmetric_theory.policies.baselines import BASELINE_POLICIES
    from lmetric_theory.policies.registry import policy_names
    from lmetric_theory.policies.shipped import SHIPPED_POLICIES

    doc = (Path(__file__).resolve().parents[1] / "docs" / "policies.md").read_text()
    for cls in (*BASELINE_POLICIES, *SHIPPED_POLICIES):
        assert cls.name in policy_names()
        assert cls.formula and cls.source and cls.signals, cls.name
        assert f"### `{cls.name}`" in doc or f"| `{cls.name}` |" in doc, cls.name
