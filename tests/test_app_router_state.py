"""The app's router-state settings (simulate and trace-audit pages): the package logic
behind the widgets, on real replays."""

from __future__ import annotations

import json

import pytest

from lmetric_theory.app.support import audit_for_app, router_state_for_app, simulate_for_app
from lmetric_theory.sim.routerstate import IndexSpec
from lmetric_theory.workload import default_workload, load_trace, select


def test_router_state_for_app_parses_once_and_rejects_bad_settings():
    rs = router_state_for_app(4, 0.2, "approximate:ttl=30")
    assert rs == {"router_replicas": 4, "kv_event_lag_s": 0.2,
                  "index": IndexSpec("approximate", ttl_s=30.0)}
    assert router_state_for_app(1, 0.0, "")["index"] == IndexSpec()
    for args, word in (((0, 0.0, "precise"), "router replicas"),
                       ((1, -1.0, "precise"), "KV event lag"),
                       ((1, float("nan"), "precise"), "KV event lag"),
                       ((1, 0.0, "fuzzy"), "index"),
                       ((1, 0.0, "approximate:ttl=0"), "ttl")):
        with pytest.raises(ValueError, match=word):
            router_state_for_app(*args)


def test_simulate_for_app_with_replicas_changes_lmetric_not_round_robin():
    w = select(default_workload(seed=0), count=300)
    one = simulate_for_app(w, instances=4, policies=["lmetric", "round-robin"])
    four = simulate_for_app(w, instances=4, policies=["lmetric", "round-robin"],
                            router_state=router_state_for_app(4, 0.0, "precise"))
    assert one["round-robin"].ttft_mean_s == four["round-robin"].ttft_mean_s
    assert one["lmetric"].ttft_mean_s != four["lmetric"].ttft_mean_s


def test_audit_for_app_reports_router_state_of_a_replicated_replay(tmp_path):
    from test_router_state_e2e import _trace

    w = load_trace(_trace(tmp_path / "b.jsonl"))
    kw = dict(source="b", instances=4, lam=256.0, lam_lo=128.0, lam_hi=512.0)
    assert audit_for_app(w, **kw).report.router_state == ()
    rep = audit_for_app(w, **kw, router_state=router_state_for_app(2, 0.5, "precise")).report
    assert [e.kind for e in rep.router_state] == ["replica_skew", "herding", "stale_index"]
    json.dumps(rep.to_json())
