"""Decision regions: where the product and linear(λ) pick different instances of a pair."""

from __future__ import annotations

import streamlit as st

from lmetric_theory.app.support import REGION_LABELS, region_figure, theory_latex
from lmetric_theory.experiments.regions import compute_regions

st.title("Decision regions")
st.caption(
    "Instance 1 is fixed at (P_1, B_1). Every point of the plane is a state (P_2, B_2) of a "
    "second instance 2, coloured by which instance the product score (P + p0)(B + b0) and the "
    "linear score P + λB pick (lower score wins; an exact tie keeps instance 1)."
)

c1, c2, c3, c4, c5 = st.columns(5)
P_1 = c1.number_input("P_1: prefill tokens of instance 1", 0.0, 1e7, 1024.0, 64.0, key="P_1")
B_1 = c2.number_input("B_1: batch size of instance 1", 0.0, 1e5, 8.0, 1.0, key="B_1")
lam = c3.number_input("λ: tokens per batch slot", 0.0, 1e7, 300.0, 10.0, key="lam")
p0 = c4.number_input("p0: prefill offset", 0.0, 1e6, 0.0, 1.0, key="p0")
b0 = c5.number_input("b0: batch offset", 0.0, 1e4, 1.0, 1.0, key="b0")

d1, d2, d3, d4, d5, d6 = st.columns(6)
p_lo = d1.number_input("P_2 from", 0.0, 1e7, 0.0, 64.0, key="p_lo")
p_hi = d2.number_input("P_2 to", 1.0, 1e7, 4096.0, 64.0, key="p_hi")
b_lo = d3.number_input("B_2 from", 0.0, 1e5, 0.0, 1.0, key="b_lo")
b_hi = d4.number_input("B_2 to", 0.01, 1e5, 32.0, 1.0, key="b_hi")
log_p = d5.checkbox("log P axis", key="log_p")
log_b = d6.checkbox("log B axis", key="log_b")
res = st.select_slider("grid resolution (points per axis)", [100, 200, 400, 800], 400,
                       key="res")

# A log axis cannot start at 0: start it three decades below its upper end (at most 1).
notes = []
if log_p and p_lo <= 0 < p_hi:
    p_lo = min(1.0, p_hi / 1000.0)
    unit = "token" if p_lo == 1 else "tokens"
    notes.append(f"the log P axis starts at {p_lo:g} {unit} (it cannot include 0)")
if log_b and b_lo <= 0 < b_hi:
    b_lo = min(0.1, b_hi / 1000.0)
    notes.append(f"the log B axis starts at {b_lo:g} (it cannot include 0)")
if notes:
    st.caption("Note: " + "; ".join(notes) + ".")
if p_lo >= p_hi or b_lo >= b_hi:
    st.error("Cannot draw these settings: each axis needs 'from' below 'to'.")
    st.stop()

try:
    rm = compute_regions(P_1, B_1, lam=lam, p0=p0, b0=b0, p_range=(p_lo, p_hi),
                         b_range=(b_lo, b_hi), log_p=log_p, log_b=log_b,
                         resolution=(res, res))
except ValueError as exc:
    st.error(f"Cannot draw these settings: {exc}")
    st.stop()

m1, m2, m3 = st.columns(3)
m1.metric("Disagreement share of the plotted area", f"{rm.disagreement_share:.4%}")
m2.metric("λ_eff at instance 1: (P_1 + p0)/(B_1 + b0)", f"{rm.lam_eff_at_A:.4g}")
m3.metric("Grid points with an exact tie", f"{rm.n_ties}")
st.plotly_chart(region_figure(rm), key="regions_plot")
st.caption(
    " · ".join(f"{label}: {share:.2%}" for label, share in zip(REGION_LABELS, rm.region_shares,
                                                             strict=True))
    + ". Intersections (P_2, B_2): "
    + ", ".join(f"({p:.4g}, {b:.4g})" for p, b in rm.intersections)
)

with st.expander("Formulas (derived by the theory module)", expanded=False):
    for title, statement, formulas in theory_latex():
        st.markdown(f"**{title}** — {statement}")
        for tex in formulas:
            st.latex(tex)
