"""HotspotMonitor: the two phases, the mitigation mask and the window, on sequences small
enough to follow by hand."""

from __future__ import annotations

import numpy as np
import pytest

from lmetric_theory.detector.hotspot import HotspotFinding, HotspotMonitor

HOT0 = np.array([1, 0, 0, 0], dtype=bool)
CHEAP_ON_0 = np.array([100, 1000, 1000, 1000])
IDLE = np.zeros(4, dtype=np.int64)


def _mon(**kw):
    base = dict(window=10, min_decisions=4, min_count=2)
    base.update(kw)
    return HotspotMonitor(4, **base)


def test_two_phases_by_hand():
    m = _mon()
    for _ in range(3):  # decisions 0-2: requests of no class
        assert m.observe(-1, np.zeros(4, bool)) is None
    # d3: n = 4, class 7 count 1 < min_count
    assert m.observe(7, HOT0, CHEAP_ON_0, IDLE) is None and m.findings == ()
    # d4: n = 5, count 2: 2 * |Mbar|=3 = 6 > (5 - 2) * |M|=1 = 3 -> phase 1; hot scores
    # lower (100 < 1000): streak 1 of 2|M| = 2
    assert m.observe(7, HOT0, CHEAP_ON_0, IDLE) is None
    (f,) = m.findings
    assert (f.class_id, f.phase1_decision, f.phase2_decision) == (7, 4, None)
    assert f.share == pytest.approx(2 / 5) and f.cached_instances == (0,)
    # result (l): x|Mbar|(P_hit + p0) = 2*3*100 = 600 vs xbar|M|(P_miss + p0) = 3*1*1000
    assert f.condition_holds is False
    # d5: streak 2 -> confirmed, mask excludes instance 0
    mask = m.observe(7, HOT0, CHEAP_ON_0, IDLE)
    assert mask is not None and mask.tolist() == [False, True, True, True]
    assert not mask.flags.writeable and m.active(7)
    (f,) = m.findings
    assert f.phase2_decision == 5 and f.mitigation == "exclude instances 0 for this class"
    # d6: still hot -> the same mask, without re-confirming
    assert m.observe(7, HOT0, CHEAP_ON_0, IDLE) is mask
    # ten unrelated decisions push class 7 out of the window
    for _ in range(10):
        m.observe(-1, np.zeros(4, bool))
    assert m.share(7) == 0.0
    # d17: count 1 < min_count: the mitigation ends; the finding stays
    assert m.observe(7, HOT0, CHEAP_ON_0, IDLE) is None and not m.active(7)
    assert m.findings[0].phase2_decision == 5


def test_phase2_needs_consecutive_hot_wins():
    m = _mon()
    for _ in range(3):
        m.observe(-1, np.zeros(4, bool))
    busy = np.array([20, 0, 0, 0])  # S_0 = 100 * 21 = 2100 > 1000: the product spills
    for _ in range(5):
        assert m.observe(7, HOT0, CHEAP_ON_0, busy) is None
    (f,) = m.findings
    assert f.phase1_decision == 4 and f.phase2_decision is None and f.mitigation is None
    # one win, one loss, then two wins: confirmed only at the second consecutive win
    assert m.observe(7, HOT0, CHEAP_ON_0, IDLE) is None
    assert m.observe(7, HOT0, CHEAP_ON_0, busy) is None
    assert m.observe(7, HOT0, CHEAP_ON_0, IDLE) is None
    assert m.observe(7, HOT0, CHEAP_ON_0, IDLE) is not None
    assert m.findings[0].phase2_decision == 11


def test_condition_below_threshold_never_alarms():
    # |M| = 2 of 4: needs count * 2 > (n - count) * 2, i.e. x > 1/2
    m = _mon()
    hit = np.array([1, 1, 0, 0], bool)
    for d in range(20):
        cls = 7 if d % 2 else -1  # exactly half
        assert m.observe(cls, hit, CHEAP_ON_0, IDLE) is None
    assert m.findings == ()
    # all instances or none caching the class: no alarm either
    m2 = _mon()
    for _ in range(10):
        m2.observe(5, np.ones(4, bool), CHEAP_ON_0, IDLE)
        m2.observe(6, np.zeros(4, bool), CHEAP_ON_0, IDLE)
    assert m2.findings == ()


def test_sufficient_condition_and_wider_hot_set():
    m = _mon(confirm_factor=2)
    hit = np.array([1, 1, 0, 0], bool)
    P = np.array([50, 60, 1000, 1000])
    got = [m.observe(9, hit, P, IDLE) for _ in range(8)]
    # phase 1 at d3 (n = 4 = min_decisions, xbar = 0); 2|M| = 4 wins: confirmed at d6
    (f,) = m.findings
    assert (f.phase1_decision, f.phase2_decision) == (3, 6)
    assert f.condition_holds is True and f.cached_instances == (0, 1)
    assert [g is None for g in got] == [True] * 6 + [False] * 2
    assert got[-1].tolist() == [False, False, True, True]
    assert f.to_dict() == {
        "class": 9, "share": 1.0, "cached_instances": [0, 1], "phase1_decision": 3,
        "phase2_decision": 6, "condition_holds": True,
        "mitigation": "exclude instances 0, 1 for this class",
    }


def test_scores_from_kernel_equal_given_scores_and_fit():
    rng = np.random.default_rng(0)
    D, N = 300, 6
    classes = rng.choice([1, 2, -1], size=D, p=[0.6, 0.1, 0.3])
    hits = np.zeros((D, N), bool)
    hits[classes == 1, 0] = True
    hits[classes == 2, 1:3] = True
    P = rng.integers(0, 5000, size=(D, N))
    B = rng.integers(0, 30, size=(D, N))
    a = HotspotMonitor(N, window=50, min_decisions=10).fit(classes, hits, P, B)
    b = HotspotMonitor(N, window=50, min_decisions=10)
    for d in range(D):
        b.observe(int(classes[d]), hits[d], scores=(P[d] + 0) * (B[d] + 1), P=P[d])
    assert a.findings == b.findings and len(a.findings) >= 1
    assert all(isinstance(f, HotspotFinding) for f in a.findings)


def test_detect_only_and_settings_checked():
    m = _mon(mitigate=False)
    for _ in range(3):
        m.observe(-1, np.zeros(4, bool))
    assert all(m.observe(7, HOT0, CHEAP_ON_0, IDLE) is None for _ in range(4))
    (f,) = m.findings
    assert f.phase2_decision == 5 and f.mitigation == "exclude instances 0 for this class"
    for kw, text in [({"window": 1}, "window must be an integer >= 2"),
                     ({"min_decisions": 11}, "min_decisions must be <= window"),
                     ({"confirm_factor": 0}, "confirm_factor must be an integer >= 1")]:
        with pytest.raises(ValueError, match=text):
            _mon(**kw)
    with pytest.raises(ValueError, match="n_instances"):
        HotspotMonitor(1)


# ----------------------------------------------- guarded-lmetric:mitigation=hotspot


def _view(d, cls, hit0, running):
    from lmetric_theory.policies.base import DecisionView

    n = 4
    inp = 1000
    unc = np.full(n, inp, dtype=np.int32)
    if hit0:
        unc[0] = 100  # instance 0 holds the class's prefix
    z = np.zeros(n, dtype=np.int32)
    return DecisionView(d, float(d), inp, unc, z, np.asarray(running, np.int32), z,
                        np.zeros(n, np.float32), prefix_class=cls)


def test_guarded_hotspot_excludes_hot_instances_after_confirmation():
    from lmetric_theory.policies import make_policy

    pol = make_policy("guarded-lmetric:mitigation=hotspot,hot_window=10")
    lm = make_policy("lmetric")
    # min_decisions = min(50, window) = 10: ten unrelated decisions fill the window
    for d in range(10):
        v = _view(d, -1, False, [0, 0, 0, 0])
        assert pol.choose(v) == lm.choose(v)
    # class 7 cached on instance 0 only; the product prefers 0 (100 * 1 < 1000 * 1)
    got = [pol.choose(_view(d, 7, True, [0, 0, 0, 0])) for d in range(10, 16)]
    # d10: count 1 < min_count; d11: 2*3 = 6 <= 8*1; d12: phase 1 (3*3 = 9 > 7*1),
    # streak 1; d13: streak 2 = 2|M|: confirmed, instance 0 excluded from then on
    assert got == [0, 0, 0, 1, 1, 1]
    (f,) = pol.hotspot.findings
    assert (f.class_id, f.phase1_decision, f.phase2_decision) == (7, 12, 13)
    assert f.share == pytest.approx(0.3) and pol.flagged == 3
    # other classes are routed as lmetric routes them
    v = _view(16, 3, True, [0, 0, 0, 0])
    assert pol.choose(v) == lm.choose(v) == 0


def test_guarded_hotspot_parameters_checked():
    from lmetric_theory.policies import make_policy

    with pytest.raises(ValueError, match="hot_window must be >= 2"):
        make_policy("guarded-lmetric:mitigation=hotspot,hot_window=1")
    with pytest.raises(ValueError, match="hot_confirm must be >= 1"):
        make_policy("guarded-lmetric:mitigation=hotspot,hot_confirm=0")


# ------------------------------------------------------------------ audit --json


@pytest.mark.parametrize(("share", "confirmed"), [(0.6, True), (0.02, False)])
def test_audit_json_lists_hot_classes(capsys, share, confirmed):
    import json

    from lmetric_theory import cli

    spec = f"synthetic:hotspot:share={share},count=400"
    assert cli.main(["audit", spec, "--instances", "8", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    hs = doc["hotspots"]
    keys = {"class", "share", "cached_instances", "phase1_decision", "phase2_decision",
            "condition_holds", "mitigation", "p_definition", "b_definition"}
    assert all(set(h) == keys for h in hs)
    # each entry names the definitions it was computed with: the audit's own
    assert all((h["p_definition"], h["b_definition"])
               == (doc["config"]["p_definition"], doc["config"]["b_definition"]) for h in hs)
    got = [h for h in hs if h["phase2_decision"] is not None]
    if confirmed:
        (h,) = got
        assert h["class"] == 0  # the hot class's leading block is the workload's first hash
        assert h["phase1_decision"] <= h["phase2_decision"] and h["mitigation"]
        assert 1 <= len(h["cached_instances"]) < 8 and h["share"] > 0.4
    else:
        assert got == []


# ----------------------------------------------------------------- Guard


def test_guard_reports_hotspots_beside_pairwise_findings():
    from lmetric_theory.detector import Detector, Snapshot
    from lmetric_theory.detector.guard import Guard

    def route(req):
        s = (req["P"] + 0) * (req["B"] + 1)
        return int(np.argmin(s))

    g = Guard(Detector(1e9), route, on_flag="mitigate",
              snapshot_fn=lambda req: Snapshot(req["P"], req["B"]),
              hotspot=HotspotMonitor(4, window=10, min_decisions=4, min_count=2),
              class_fn=lambda req: (req["cls"], req["hit"]))
    other = {"P": np.array([500, 500, 500, 500]), "B": np.zeros(4, int), "cls": -1,
             "hit": np.zeros(4, bool)}
    hot = {"P": CHEAP_ON_0, "B": IDLE, "cls": 7, "hit": HOT0}
    assert [g(other) for _ in range(3)] == [0, 0, 0]
    # as in test_two_phases_by_hand: phase 1 at call 4, confirmed at call 5
    got = [g(hot) for _ in range(4)]
    assert got == [0, 0, 1, 1]
    (f,) = g.hotspot_findings
    assert (f.class_id, f.phase1_decision, f.phase2_decision) == (7, 4, 5)
    assert g.stats().overridden == 2
    with pytest.raises(ValueError, match="hotspot and class_fn"):
        Guard(Detector(1), route, hotspot=HotspotMonitor(4))


def test_class_ids_by_leading_blocks():
    from lmetric_theory.audit.hotspots import class_ids
    from lmetric_theory.workload.loaders import make_workload

    # three prompts: blocks [1, 2, 3], [1, 2, 4], [1, 5]; 10-token blocks
    w = make_workload(arrival_s=np.zeros(3), input_tokens=np.array([30, 30, 20]),
                      output_tokens=np.ones(3, int), hash_ids=np.array([1, 2, 3, 1, 2, 4, 1, 5]),
                      hash_offsets=np.array([0, 3, 6, 8]), block_size=10, session_ids=None,
                      meta={})
    req = np.array([2, 0, 1])
    assert class_ids(w, req).tolist() == [1, 1, 1]
    assert class_ids(w, req, 2).tolist() == [5, 2, 2]
    assert class_ids(w, req, 3).tolist() == [-1, 3, 4]
    with pytest.raises(ValueError, match="lead_blocks must be >= 1"):
        class_ids(w, req, 0)


# ------------------------------------------------------------- in the simulator


def test_simulator_views_carry_the_prefix_class_and_guarded_spreads_the_hot_class():
    from lmetric_theory.sim import SimConfig, Simulator, load_preset
    from lmetric_theory.workload.hotspot import HotspotParams, hotspot

    cfg = SimConfig.from_preset(load_preset("h100-llama3-8b"), 8)
    seen = []

    class Spy:
        def __init__(self, inner):
            self.inner, self.name, self.spec = inner, inner.name, inner.spec

        def choose(self, view):
            seen.append(view.prefix_class)
            return self.inner.choose(view)

    from lmetric_theory.policies import make_policy

    w = hotspot(HotspotParams(share=0.6, count=400))
    Simulator(w, cfg, Spy(make_policy("lmetric"))).run()
    assert seen == [int(w.blocks(i)[0]) for i in range(len(w))]
    hot = w.session_ids == 0
    a = Simulator(w, cfg, "lmetric").run()
    b = Simulator(w, cfg, "guarded-lmetric:mitigation=hotspot").run()
    assert len(set(b.instance[hot])) > len(set(a.instance[hot]))
    # below the condition nothing is raised and the routing is lmetric's
    w2 = hotspot(HotspotParams(share=0.02, count=400))
    a2 = Simulator(w2, cfg, "lmetric").run()
    b2 = Simulator(w2, cfg, "guarded-lmetric:mitigation=hotspot").run()
    assert np.array_equal(a2.instance, b2.instance)


def test_html_report_shows_hot_classes(tmp_path):
    pytest.importorskip("plotly")
    from lmetric_theory import cli

    out = tmp_path / "rep"
    assert cli.main(["audit", "synthetic:hotspot:share=0.6,count=400", "--instances", "8",
                     "--out", str(out)]) == 0
    page = (out / "audit.html").read_text()
    assert "<h2>Hot prefix classes</h2>" in page and "Hot prefix classes over time" in page
    assert "exclude instances" in page
