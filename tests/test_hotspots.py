"""The shared hot-spot runner (``experiments/hotspots.py``) and the audit's ``hotspots`` list,
for every ``P`` x ``B`` definition, against a brute force over the snapshot log."""

from __future__ import annotations

import functools
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest

from lmetric_theory.audit import audit_workload
from lmetric_theory.core.definitions import BDefinition, PDefinition, ScoreDefinition
from lmetric_theory.detector import LinearReference
from lmetric_theory.detector.hotspot import HotspotMonitor
from lmetric_theory.experiments.counterfactual import hotspot_phase
from lmetric_theory.experiments.hotspots import run_hotspots
from lmetric_theory.sim import SimConfig, Simulator, load_preset
from lmetric_theory.workload.loaders import make_workload
from lmetric_theory.workload.spec import synthetic_from_spec

PRESET = "h100-llama3-8b"
N = 4
PAIRS = [(p, b) for p in PDefinition for b in BDefinition]


@functools.cache
def _workload():
    # a hot class that starts cached on one instance, so phase 1 and 2 are reached
    return synthetic_from_spec("synthetic:hotspot:share=0.8,count=240", seed=3)


@pytest.fixture(scope="module")
def workload():
    return _workload()


def _by_hand_P(log, d: int, i: int, p: PDefinition):
    """``P`` of instance ``i`` at decision ``d``, from the log's raw columns."""
    bs = int(log.meta["block_size"])
    T = int(log.input_tokens[d])
    h = max(int(log.hit_blocks[d, i]), 0)
    new = max(T - h * bs, 0)
    rq = max(int(log.router_queued[d, i]), 0)
    if p is PDefinition.UNCACHED:
        return int(log.uncached[d, i])
    if p is PDefinition.QUEUED_PLUS_UNCACHED:
        return int(log.queued[d, i]) + int(log.uncached[d, i])
    if p is PDefinition.ROUTER_QUEUED_PLUS_NEW:
        return rq + new
    if p is PDefinition.UNCACHED_FULL_BLOCKS:
        full = T // bs
        return (full - min(h, full)) * bs
    if p is PDefinition.PREFILL_BLOCKS:
        return Fraction(rq + new, bs)
    if p is PDefinition.INFLIGHT_NEW_PLUS_NEW:
        return max(int(log.router_inflight_new_tokens[d, i]), 0) + new
    raise AssertionError(p)


def _by_hand_B(log, d: int, i: int, b: BDefinition) -> int:
    bs = int(log.meta["block_size"])
    if b is BDefinition.RUNNING:
        return int(log.running[d, i])
    if b is BDefinition.IN_FLIGHT:
        return int(log.running[d, i]) + int(log.waiting[d, i])
    if b is BDefinition.ROUTER_IN_FLIGHT:
        return max(int(log.router_inflight[d, i]), 0)
    if b is BDefinition.DECODE_BLOCKS:
        return max(int(log.router_all_tokens[d, i]), 0) // bs
    raise AssertionError(b)


def _brute_force(w, log, p: PDefinition, b: BDefinition, p0=0, b0=1):
    """Findings (as tuples) and phases of a monitor fed by hand-built inputs."""
    D, n = log.uncached.shape
    mon = HotspotMonitor(n, p0=float(p0), b0=float(b0), mitigate=True)
    phase = []
    for d in range(D):
        r = int(log.request[d])
        blocks = w.blocks(r)
        c = int(blocks[0]) if len(blocks) else -1
        hit = np.array([int(log.input_tokens[d]) - int(log.uncached[d, i]) > 0
                        for i in range(n)])
        P = np.array([_by_hand_P(log, d, i, p) for i in range(n)],
                     dtype=object if p is PDefinition.PREFILL_BLOCKS else np.int64)
        B = np.array([_by_hand_B(log, d, i, b) for i in range(n)], dtype=np.int64)
        mon.observe(c, hit, P, B, decision=d)
        m = int(hit.sum())
        x = mon.share(c)
        if c < 0:
            phase.append(0)
        elif mon.active(c):
            phase.append(2)
        else:
            phase.append(int(d + 1 >= mon.min_decisions and 1 <= m < n
                             and x * (n - m) > (1 - x) * m))
    found = [(f.class_id, f.share, f.cached_instances, f.phase1_decision, f.phase2_decision,
              f.condition_holds, f.mitigation) for f in mon.findings]
    return found, np.array(phase)


def _entries(hs):
    return [(h.class_id, h.share, h.cached_instances, h.phase1_decision, h.phase2_decision,
             h.condition_holds, h.mitigation) for h in hs]


@functools.cache
def _case(p: PDefinition, b: BDefinition):
    """The audit of the workload replayed under P x B, the replay's log, the brute force."""
    w = _workload()
    res = audit_workload(w, instances=N, reference=LinearReference.fixed(256),
                         preset=PRESET, p_definition=p.value, b_definition=b.value, top=0)
    cfg = SimConfig.from_preset(load_preset(PRESET), N, record_snapshots=True)
    log = Simulator(w, cfg, res.report.config["policy"], seed=0).run().snapshots
    return res, log, *_brute_force(w, log, p, b)


@pytest.mark.parametrize(("p", "b"), PAIRS, ids=[f"{p.value}|{b.value}" for p, b in PAIRS])
def test_audit_hotspots_equal_a_brute_force_for_every_definition(p, b):
    """The audit replays under P x B; its hotspot entries are the monitor's findings over
    P and B built by hand from the same replay's log, and name P and B."""
    res, log, found, phase = _case(p, b)
    rep = res.report
    np.testing.assert_array_equal(log.chosen, res.verdicts.product_choice)  # the same replay
    assert _entries(rep.hotspots) == found
    assert all((h.p_definition, h.b_definition) == (rep.config["p_definition"],
                                                     rep.config["b_definition"])
               == (p.value, b.value) for h in rep.hotspots)
    assert all((h["p_definition"], h["b_definition"]) == (p.value, b.value)
               for h in rep.to_json()["hotspots"])
    # the counterfactual study's phase comes from the same runner
    np.testing.assert_array_equal(hotspot_phase(_workload(), log, ScoreDefinition(p, b)), phase)


def test_most_definitions_raise_the_planted_class():
    """The comparisons above are not empty: most replays raise phase 1 (under some
    definitions the product spreads the class before its share tells)."""
    raised = [pb for pb in PAIRS if _case(*pb)[2]]
    assert len(raised) >= len(PAIRS) // 2, raised


def _hand_log():
    """Two instances, every request of class 7 cached on instance 0 only. Instance 0 has
    the fewer uncached tokens and running requests, but the router counts a long queue and
    many requests in flight there."""
    D = 12
    w = make_workload(arrival_s=np.arange(D, dtype=float), input_tokens=np.full(D, 40),
                      output_tokens=np.ones(D, int), hash_ids=np.tile([7, 1, 2, 3], D),
                      hash_offsets=np.arange(0, 4 * D + 1, 4), block_size=10,
                      session_ids=None, meta={})
    two = np.ones((D, 2), dtype=np.int64)
    log = SimpleNamespace(
        request=np.arange(D), input_tokens=np.full(D, 40), meta={"block_size": 10},
        uncached=np.tile([10, 40], (D, 1)), queued=0 * two, running=np.tile([0, 3], (D, 1)),
        waiting=0 * two, hit_blocks=np.tile([3, 0], (D, 1)),
        router_queued=np.tile([5000, 0], (D, 1)), router_inflight=np.tile([9, 0], (D, 1)),
        router_all_tokens=np.tile([900, 0], (D, 1)),
        router_inflight_new_tokens=np.tile([5000, 0], (D, 1)))
    return w, log


def test_the_definition_decides_the_confirmation():
    """By hand: under uncached/running the hot instance keeps the lower product score and
    the class is confirmed; under the paper's router counters it does not, so the class
    raises phase 1 only. A runner that ignored the definition would give both the same."""
    w, log = _hand_log()
    kw = {"window": 6, "min_decisions": 3}
    legacy = run_hotspots(w, log, ScoreDefinition("uncached", "running"), **kw).entries
    paper = run_hotspots(w, log, ScoreDefinition(), **kw).entries
    # phase 1 at the 3rd decision (window long enough), 2|M| = 2 confirming decisions
    assert [(e.class_id, e.phase1_decision, e.phase2_decision) for e in legacy] == [(7, 2, 3)]
    assert [(e.class_id, e.phase1_decision, e.phase2_decision) for e in paper] == [(7, 2, None)]
    assert (paper[0].p_definition, paper[0].b_definition) == ("router-queued+new",
                                                              "router-in-flight")


def test_offsets_reach_the_monitor(workload):
    cfg = SimConfig.from_preset(load_preset(PRESET), N, record_snapshots=True)
    log = Simulator(workload, cfg, "lmetric", seed=0).run().snapshots
    d = ScoreDefinition(p0=512, b0=Fraction(1, 2))
    got = run_hotspots(workload, log, d)
    found, phase = _brute_force(workload, log, d.p_definition, d.b_definition, 512, 0.5)
    assert _entries(got.entries) == found
    np.testing.assert_array_equal(got.phase, phase)


def test_fewer_than_two_instances_or_no_log_gives_nothing(workload):
    cfg = SimConfig.from_preset(load_preset(PRESET), 1, record_snapshots=True)
    log = Simulator(workload, cfg, "lmetric", seed=0).run().snapshots
    run = run_hotspots(workload, log, ScoreDefinition())
    assert run.entries == () and run.phase.shape == (len(log),) and not run.phase.any()
