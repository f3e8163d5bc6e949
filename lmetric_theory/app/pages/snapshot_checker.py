"""Snapshot checker: the detector's verdict on one routing decision typed as a table."""

from __future__ import annotations

import streamlit as st

from lmetric_theory.app.support import (
    EXAMPLE_SNAPSHOTS,
    MAX_INSTANCES,
    SNAPSHOT_JSON_EXAMPLE,
    check_table,
    pair_view_ranges,
    records_from_json,
    region_figure,
)
from lmetric_theory.experiments.regions import compute_regions

st.title("Snapshot checker")
st.caption(
    "One routing decision: the load of every candidate instance. The detector compares the "
    "product score (P + p0)(B + b0) with the linear reference P + λB and explains what it "
    f"finds. Up to {MAX_INSTANCES} instances; P in prefill tokens, B in requests."
)

name = st.selectbox("Example", list(EXAMPLE_SNAPSHOTS), key="example")
ex = EXAMPLE_SNAPSHOTS[name]
st.caption(ex["note"])

c1, c2, c3, c4, c5, c6 = st.columns(6)
# Widget keys carry the example name so picking another example loads its settings.
lam = c1.number_input("λ: reference rate (tokens per slot)", 0.0, 1e7, float(ex["lam"]), 10.0,
                      key=f"lam_{name}")
use_band = c2.checkbox("use a band", value=ex["lam_lo"] < ex["lam_hi"],
                       key=f"band_{name}",
                       help="Off: λ alone is the reference. On: also flag decisions that "
                       "disagree with part of the band [low, high] (which must contain λ).")
lam_lo = c3.number_input("band low", 0.0, 1e7, float(ex["lam_lo"]), 10.0, key=f"lo_{name}",
                         disabled=not use_band)
lam_hi = c4.number_input("band high", 0.0, 1e7, float(ex["lam_hi"]), 10.0, key=f"hi_{name}",
                         disabled=not use_band)
p0 = c5.number_input("p0: prefill offset", 0.0, 1e6, float(ex["p0"]), 1.0, key=f"p0_{name}")
b0 = c6.number_input("b0: batch offset", 0.0, 1e4, float(ex["b0"]), 1.0, key=f"b0_{name}")
if not use_band:
    lam_lo = lam_hi = lam

initial = [
    {"instance": f"#{i}", "P": p, "B": b} for i, (p, b) in enumerate(zip(ex["P"], ex["B"],
                                                                         strict=True))
]
edited = st.data_editor(
    initial,
    num_rows="dynamic",
    key=f"table_{name}",
    column_config={
        "instance": st.column_config.TextColumn("instance", max_chars=40),
        "P": st.column_config.NumberColumn("P (prefill tokens)", min_value=0, max_value=2**31 - 1,
                                           step=1, required=True),
        "B": st.column_config.NumberColumn("B (batch size)", min_value=0, max_value=2**31 - 1,
                                           required=True),
    },
)

pasted = st.text_area(
    "…or paste one snapshot as JSON (one line of a snapshot file; replaces the table)",
    key="paste_json", placeholder=SNAPSHOT_JSON_EXAMPLE, height=80,
)
try:
    records = records_from_json(pasted) if pasted.strip() else edited
    result = check_table(records, lam=lam, lam_lo=lam_lo, lam_hi=lam_hi, p0=p0, b0=b0)
except ValueError as exc:
    st.error(f"Cannot check this snapshot: {exc}")
    st.stop()

v = result.verdict
ids = result.instance_ids
m1, m2, m3, m4, m5 = st.columns(5)
m1.metric("Product picks", ids[v.product_choice])
m2.metric("Linear picks", ids[v.linear_choice])
m3.metric("λ_eff", f"{v.lam_eff:.6g}")
m4.metric("λ*", f"{v.lam_star:.6g}")
m5.metric("Regret (token equiv.)", f"{v.regret_tokens:.6g}")

if v.disagrees:
    st.warning(f"Verdict: DISAGREE — the product picks {ids[v.product_choice]}, "
             f"linear(λ={lam:g}) picks {ids[v.linear_choice]}.")
elif v.flagged:
    st.info(f"Verdict: AGREE, with findings — both pick {ids[v.product_choice]}.")
else:
    st.success(f"Verdict: AGREE — both pick {ids[v.product_choice]}; nothing flagged.")

st.subheader("Findings and mitigations")
if result.findings:
    # Full sentences, wrapped (a table would cut them off).
    for f in result.findings:
        st.markdown(f"- **{f['kind'].replace('_', ' ')}** ({f['severity']}): {f['message']}  \n"
                    f"  *Mitigation:* {f['mitigation']}")
else:
    st.write("No findings.")

st.subheader("Instances")
st.dataframe(list(result.rows), key="instances", hide_index=True)

if v.rival >= 0:
    i, r = v.product_choice, v.rival
    a, b = (result.P[i], result.B[i]), (result.P[r], result.B[r])
    p_rng, b_rng = pair_view_ranges([a, b])
    try:
        rm = compute_regions(a[0], a[1], lam=lam, p0=p0, b0=b0, p_range=p_rng, b_range=b_rng,
                             resolution=(300, 300))
    except ValueError as exc:
        st.error(f"Cannot draw the decision regions of this pair: {exc}")
    else:
        st.subheader(f"Decision regions: instance 1 = {ids[i]} (product's choice), "
                     f"instance 2 = {ids[r]} (rival, the star)")
        st.plotly_chart(region_figure(rm, marker=b, marker_label=f"{ids[r]} (rival)"),
                        key="pair_plot")
