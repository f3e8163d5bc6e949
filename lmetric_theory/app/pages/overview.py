"""Overview (the landing page at ``/``): what each page shows, with links."""

from __future__ import annotations

import streamlit as st

from lmetric_theory.app.main import PAGES, PAGES_DIR

st.title("lmetric-theory")
st.markdown(
    "LMetric routes a request to the instance with the lowest product score "
    "$S_i = (P_i + p_0)(B_i + b_0)$ — $P_i$ the prefill tokens instance $i$ would compute, "
    "$B_i$ its batch size. Production routers use a linear score $C_i = P_i + \\lambda B_i$ "
    "with a tuned rate $\\lambda$ (prefill tokens per batch slot). For a pair of instances "
    "1 and 2 the product acts like the linear score with its own rate $\\lambda_{eff}$, and "
    "the two disagree exactly when the pair's break-even rate $\\lambda^*$ lies strictly "
    "between $\\lambda$ and $\\lambda_{eff}$."
)
ABOUT = {
    "decision_regions.py": "where, in the plane of a second instance's load, the product "
    "and the linear score pick different instances",
    "snapshot_checker.py": "the detector's verdict, findings and mitigations for one routing "
    "decision (a table or pasted JSON)",
    "trace_audit.py": "every decision of a replayed trace checked against the linear "
    "reference: disagreement rate, regret, worst decisions",
    "simulate.py": "a synthetic workload replayed under routing policies: TTFT, ITL, E2E, "
    "throughput, SLO attainment and goodput, load per instance",
    "advice.py": "a saved `lmetric-theory advise` report (advice.json): the verdict against "
    "the current policies and its plots",
}
for script, title, url in PAGES[1:]:
    st.page_link(str(PAGES_DIR / script), label=f"{title} (/{url})")
    st.caption(ABOUT[script])
