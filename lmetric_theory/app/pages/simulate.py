"""Simulate: replay a synthetic workload under routing policies and show the deployers'
metrics (TTFT, ITL, TPOT, E2E, throughput, SLO attainment and goodput, load spread)."""

from __future__ import annotations

import streamlit as st

from lmetric_theory.app.support import (
    SIM_PRESET,
    instance_rows,
    metrics_rows,
    router_state_for_app,
    simulate_for_app,
)
from lmetric_theory.policies.registry import policy_names
from lmetric_theory.sim.metrics import Slo
from lmetric_theory.workload import Workload, default_workload, select
from lmetric_theory.workload.spec import SYNTHETIC_KINDS, synthetic_from_spec

DEFAULT = "synthetic default"


@st.cache_data(max_entries=4, show_spinner=False)
def load(kind: str, count: int) -> Workload:
    """The chosen synthetic workload, its first ``count`` requests (thin cached loader)."""
    w = default_workload(0) if kind == DEFAULT else synthetic_from_spec(f"synthetic:{kind}", seed=0)
    return select(w, count=count) if count else w


@st.cache_data(max_entries=8, show_spinner="Simulating ...")
def run(kind: str, count: int, instances: int, policies: tuple[str, ...], slo: Slo | None,
        replicas: int = 1, lag_s: float = 0.0, index: str = "precise"):
    """Thin cached call of :func:`simulate_for_app` (router state from
    :func:`router_state_for_app`)."""
    rs = router_state_for_app(replicas, lag_s, index)
    return simulate_for_app(load(kind, count), instances=instances, policies=policies, slo=slo,
                            router_state=rs)


st.title("Simulate")
st.caption(
    "Replays a synthetic workload on a simulated cluster under each routing policy and shows "
    "the metrics deployers read, named as vLLM's benchmark, AIPerf and DynoSim name them "
    f"(docs/metrics.md). The defaults are those of `lmetric-theory simulate`: preset "
    f"{SIM_PRESET}, vLLM v1's scheduler, precise view."
)
c1, c2, c3 = st.columns(3)
kind = c1.selectbox("workload", [DEFAULT, *SYNTHETIC_KINDS], key="kind")
count = c2.number_input("first N requests (0 = all)", 0, 1_000_000, 1000, 500, key="count")
instances = c3.number_input("instances", 1, 64, 8, 1, key="instances")
r1, r2, r3 = st.columns(3)
replicas = r1.number_input("router replicas", 1, 64, 1, 1, key="replicas")
lag_s = r2.number_input("KV event lag (s)", 0.0, 60.0, 0.0, 0.05, key="lag")
index = r3.text_input("index (precise, approximate[:ttl=S|:lru=N])", "precise", key="index")
names = list(policy_names())
policies = st.multiselect("policies", names, default=["lmetric", "round-robin"], key="policies")
slo_text = st.text_input("SLO (seconds; any of ttft, itl, e2e; empty: none)",
                         "ttft=2,itl=0.05", key="slo")
try:
    slo = Slo.parse(slo_text) if slo_text.strip() else None
except ValueError as exc:
    st.error(f"SLO: {exc}")
    st.stop()
if not policies:
    st.info("Choose at least one policy.")
    st.stop()
try:
    by_policy = run(kind, int(count), int(instances), tuple(policies), slo, int(replicas),
                    float(lag_s), index)
except ValueError as exc:
    st.error(f"Cannot simulate with these settings: {exc}")
    st.stop()

first = next(iter(by_policy.values()))
m1, m2, m3, m4 = st.columns(4)
m1.metric("Requests", f"{first.requests:,}")
m2.metric("Duration (s)", f"{first.duration_s:.4g}")
best = min(by_policy, key=lambda s: by_policy[s].ttft_p99_s)
m3.metric("Lowest TTFT p99", best)
if slo is not None:
    top = max(by_policy, key=lambda s: by_policy[s].goodput_rps)
    m4.metric("Highest goodput", top)
st.subheader("Deployers' metrics")
st.dataframe(metrics_rows(by_policy), key="metrics_table", hide_index=True)
st.caption("Duration: first arrival to last finish; throughputs and goodput per second of it. "
           "Percentiles interpolate linearly (numpy's default). ITL pools every gap between "
           "tokens (empty until the engine records the gaps); TPOT is per request.")
st.subheader("Per instance")
st.dataframe(instance_rows(by_policy), key="instance_table", hide_index=True)
