"""Guard: wrapping routers, acting on flags, counters, Prometheus metrics."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

from lmetric_theory import (
    Detector,
    Guard,
    LinearReference,
    Mitigation,
    PrometheusMetrics,
    Snapshot,
)


def lmetric_router(snap: Snapshot) -> int:
    """A plain LMetric router: argmin of P * (B + 1)."""
    return int(np.argmin(snap.prefill_tokens * (snap.batch_size + 1)))


CLEAN = Snapshot([100, 300, 500], [2, 1, 4])  # product and linear(100) agree on 0
DISAGREE = Snapshot([100, 40], [0, 1])  # product picks 1, linear(100) picks 0
HOTSPOT = Snapshot([0, 500, 800], [40, 0, 1])  # zero prefill on loaded instance 0


def test_fallback_replaces_flagged_picks_only():
    g = Guard(Detector(100), lmetric_router, on_flag="fallback")
    assert g(CLEAN) == 0
    assert g(DISAGREE) == 0  # router said 1; the linear reference says 0
    st = g.stats()
    assert (st.checks, st.flagged, st.disagreements, st.overridden) == (2, 1, 1, 1)
    assert st.by_kind["disagreement"] == 1 and g.last_verdict.disagrees


def test_mitigate_uses_the_verdicts_mitigation():
    g = Guard(Detector(50), lmetric_router, on_flag="mitigate")
    # the hot-spot's critical finding asks for one block of prefill offset -> instance 1
    assert g(HOTSPOT) == 1
    assert g.stats().by_kind["zero_prefill"] == 1 and g.stats().overridden == 1


def test_log_keeps_the_pick_and_warns(caplog):
    g = Guard(Detector(100), lmetric_router, on_flag="log")
    with caplog.at_level(logging.WARNING, logger="lmetric_theory.detector.guard"):
        assert g(DISAGREE) == 1
    assert "disagreement" in caplog.text
    assert g.stats().overridden == 0 and g.stats().flagged == 1


def test_count_only_and_kind_filter():
    g = Guard(Detector(100), lmetric_router, on_flag="fallback", kinds=["zero_prefill"])
    assert g(DISAGREE) == 1  # disagreement is counted but not acted on
    st = g.stats()
    assert (st.flagged, st.disagreements, st.overridden) == (0, 1, 0)
    g2 = Guard(Detector(100), lmetric_router, on_flag="count")
    assert g2(DISAGREE) == 1 and g2.stats().flagged == 1
    g2.reset()
    assert g2.stats().checks == 0


def test_ids_and_custom_signature():
    pool = {"a": (100, 0), "b": (40, 1)}

    def to_snapshot(request, pool):
        ids = sorted(pool)
        return Snapshot([pool[k][0] for k in ids], [pool[k][1] for k in ids], instance_ids=ids)

    def route(request, pool):
        return min(pool, key=lambda k: pool[k][0] * (pool[k][1] + 1))

    g = Guard(Detector(100), route, snapshot_fn=to_snapshot)
    assert route("req", pool) == "b"
    assert g("req", pool) == "a"  # guard answers with an id, like the router


def test_router_mismatch_is_counted():
    g = Guard(Detector(100), lambda s: 2, on_flag="count")
    g(CLEAN)
    assert g.stats().router_mismatch == 1


def test_guard_bad_input():
    det = Detector(10)
    with pytest.raises(ValueError, match="on_flag: unknown 'panic'"):
        Guard(det, lmetric_router, on_flag="panic")
    with pytest.raises(ValueError, match="kinds: unknown 'oops'"):
        Guard(det, lmetric_router, kinds=["oops"])
    with pytest.raises(ValueError, match="route_fn: returned index 7 outside 0..2"):
        Guard(det, lambda s: 7)(CLEAN)
    with pytest.raises(ValueError, match="route_fn: returned 'x', not an index"):
        Guard(det, lambda s: "x")(CLEAN)
    with pytest.raises(ValueError, match="expects exactly one Snapshot"):
        Guard(det, lmetric_router)([1, 2])


def _value(reg: Any, name: str, **labels: str) -> float:
    v = reg.get_sample_value(name, labels or None)
    return 0.0 if v is None else v


def test_prometheus_counters():
    prometheus_client = pytest.importorskip(
        "prometheus_client", reason="PrometheusMetrics needs the prometheus extra"
    )
    reg = prometheus_client.CollectorRegistry()
    metrics = PrometheusMetrics(reg)
    det = Detector(LinearReference.fixed(50), 0, 0)
    g = Guard(det, lmetric_router, on_flag="mitigate", metrics=metrics)
    g(CLEAN)
    g(HOTSPOT)
    g(Snapshot([900, 10, 500], [0, 3, 0]))  # idle tie (b0 = 0)
    g(Snapshot([100, 40], [0, 1]))
    st = g.stats()
    assert _value(reg, "lmetric_guard_checks_total") == st.checks == 4
    assert _value(reg, "lmetric_guard_disagreements_total") == st.disagreements
    assert _value(reg, "lmetric_guard_overrides_total") == st.overridden
    for kind, n in st.by_kind.items():
        assert _value(reg, "lmetric_guard_findings_total", kind=kind) == n
    assert _value(reg, "lmetric_guard_degenerate_total", kind="zero_prefill") == 1
    assert _value(reg, "lmetric_guard_degenerate_total", kind="idle_tie") == 1
    assert _value(reg, "lmetric_guard_degenerate_total", kind="exact_tie") == st.by_kind[
        "exact_tie"
    ]


def test_mitigation_override_reaches_the_guard():
    det = Detector(100, mitigation=Mitigation.load_cap(1))
    g = Guard(det, lmetric_router, on_flag="mitigate")
    # load cap 1 excludes instance 1 (B=1): instance 0
    assert g(DISAGREE) == 0
