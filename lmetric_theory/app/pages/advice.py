"""Advice report: a saved ``lmetric-theory advise`` report (advice.json), with the verdict
and the same plots as advice.html."""

from __future__ import annotations

import streamlit as st

from lmetric_theory.app.support import MAX_UPLOAD_MB, advice_from_upload, advice_rows
from lmetric_theory.io.advise import figures, verdict_headline

st.title("Advice report")
st.caption(
    "Should this workload be routed by LMetric? Upload the advice.json written by "
    "`lmetric-theory advise TRACE --out DIR` to see its verdict and plots (the file is read "
    f"as data only; at most {MAX_UPLOAD_MB} MB)."
)
up = st.file_uploader("advice.json", type=["json"], max_upload_size=MAX_UPLOAD_MB, key="advice")
if up is None:
    st.info("Upload an advice.json to see its report.")
    st.stop()
try:
    doc = advice_from_upload(up.name, up.getvalue())
except ValueError as exc:
    st.error(f"Cannot read this report: {exc}")
    st.stop()

v, wl, cfg = doc["verdict"], doc["workload"], doc["config"]
st.subheader(verdict_headline(doc))
for a in v["against"]:
    st.markdown(f"- {a['text']}")
st.caption(f"{v['rule']}. Workload {wl['source']} ({wl['requests']:,} requests, {wl['mode']}), "
           f"{cfg['instances']} instances, {cfg['preset']}, {len(cfg['seeds'])} seeds.")
m1, m2, m3 = st.columns(3)
m1.metric("Hot prefix classes", doc["hotspots"]["classes_found"])
m2.metric("Harm detectable", "yes" if doc["harm"].get("detectable") else "no")
sat = doc["saturation"]
m3.metric("Saturation point", "-" if sat is None else f"{sat['scale']:g}")
st.caption(f"Hot-prefix risk: {doc['hotspots']['text']}")
st.caption(f"Harm: {doc['harm']['text']}")
st.caption(f"Router replicas and KV-event lag: {doc['router_state'].get('text', 'not run')}")
st.dataframe(advice_rows(doc), hide_index=True)
figs = figures(doc)
for k in range(0, len(figs), 2):
    cols = st.columns(2)
    for col, (fid, fig) in zip(cols, figs[k:k + 2], strict=False):
        col.plotly_chart(fig, key=fid)
