"""Trace audit: replay a trace, check every routing decision, show where the product and the
linear reference disagree and what it costs."""

from __future__ import annotations

import warnings

import streamlit as st

from lmetric_theory.app.support import (
    MAX_UPLOAD_MB,
    audit_for_app,
    pair_view_ranges,
    read_jsonl_upload,
    region_figure,
    router_state_for_app,
    router_state_rows,
    worst_rows,
)
from lmetric_theory.audit import default_reference
from lmetric_theory.experiments.regions import compute_regions
from lmetric_theory.io.report import (
    disagreement_rate_figure,
    hotspot_figure,
    lam_eff_figure,
    regret_figure,
    report_json,
)
from lmetric_theory.workload import TraceOrderWarning, Workload, default_workload, select

SYNTHETIC = "Synthetic default workload"
UPLOAD = "Upload a JSONL trace"
DEFAULT_REF = "latency-model default (as the CLI)"
CUSTOM_REF = "my own λ and band"
#: The CLI's defaults: `lmetric-theory audit` replays every request on 8 instances with the
#: h100-llama3-8b-calibrated preset and the reference band derived from its latency model.
PRESET = "h100-llama3-8b-calibrated"


@st.cache_data(max_entries=2, show_spinner=False)
def load_default(seed: int) -> Workload:
    """The embedded synthetic workload (thin cached loader)."""
    return default_workload(seed)


@st.cache_data(max_entries=4, show_spinner="Reading the trace ...")
def load_upload(name: str, data: bytes, skip_bad_lines: bool) -> tuple[Workload, int]:
    """Parse an uploaded trace (thin cached loader); returns it and the reordered-line count."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TraceOrderWarning)
        w = read_jsonl_upload(name, data, skip_bad_lines=skip_bad_lines)
    return w, int(w.meta.get("reordered_lines", 0) or 0)


st.title("Trace audit")
st.caption(
    "Replays a trace on a simulated cluster routed by the product score, checks every routing "
    "decision against the linear reference P + λB and summarises where and how much they "
    "disagree. The defaults are those of `lmetric-theory audit`: every request, 8 instances, "
    f"preset {PRESET}, reference band from its latency model."
)

source = st.radio("Trace", [SYNTHETIC, UPLOAD], horizontal=True, key="source")
ref_mode = st.radio("Reference", [DEFAULT_REF, CUSTOM_REF], horizontal=True, key="ref_mode")
custom = ref_mode == CUSTOM_REF
c1, c2, c3, c4, c5, c6 = st.columns(6)
instances = c1.number_input("instances", 1, 64, 8, 1, key="instances")
n_req = c2.number_input("first N requests (0 = all)", 0, 10_000_000, 0, 500,
                        key="n_req")
lam = c3.number_input("λ: reference rate", 0.0, 1e7, 256.0, 16.0, key="lam", disabled=not custom)
lam_lo = c4.number_input("band low", 0.0, 1e7, 128.0, 16.0, key="lam_lo", disabled=not custom)
lam_hi = c5.number_input("band high", 0.0, 1e7, 512.0, 16.0, key="lam_hi", disabled=not custom)
c7, c8 = c6.columns(2)
p0 = c7.number_input("p0", 0.0, 1e6, 0.0, 1.0, key="p0")
b0 = c8.number_input("b0", 0.0, 1e4, 1.0, 1.0, key="b0")
r1, r2, r3 = st.columns(3)
replicas = r1.number_input("router replicas", 1, 64, 1, 1, key="replicas")
lag_s = r2.number_input("KV event lag (s)", 0.0, 60.0, 0.0, 0.05, key="lag")
index = r3.text_input("index (precise, approximate[:ttl=S|:lru=N])", "precise", key="index")
try:
    router_state = router_state_for_app(int(replicas), float(lag_s), index)
except ValueError as exc:
    st.error(f"Router state: {exc}")
    st.stop()

if source == UPLOAD:
    st.caption(
        f"Mooncake, Alibaba Bailian or generic JSON Lines (one request per line); at most "
        f"{MAX_UPLOAD_MB} MB. The file is parsed as data only."
    )
    up = st.file_uploader("JSONL trace", type=["jsonl", "json", "txt"],
                          max_upload_size=MAX_UPLOAD_MB, key="upload")
    skip = st.checkbox("skip bad lines (they are counted)", key="skip")
    if up is None:
        st.info("Upload a trace to audit it.")
        st.stop()
    try:
        workload, reordered = load_upload(up.name, up.getvalue(), skip)
    except ValueError as exc:
        st.error(f"Cannot read this trace: {exc}")
        st.stop()
    name = up.name
    if reordered:
        st.warning(f"{reordered} lines arrived earlier than a line above them; the requests "
                   "were sorted by time.")
    if workload.meta.get("skipped_lines"):
        st.warning(f"Skipped {workload.meta['skipped_lines']} bad lines.")
else:
    workload, name = load_default(0), "synthetic default"

if n_req:
    workload = select(workload, count=int(n_req))
reference = None if custom else default_reference(PRESET, workload)
settings = (name, len(workload), instances, custom, lam, lam_lo, lam_hi, p0, b0,
            int(replicas), float(lag_s), index,
            source == UPLOAD and st.session_state.get("skip", False))
if st.session_state.get("audit_key") != settings:
    bar = st.progress(0.0, text=f"Auditing {len(workload)} requests on {instances} instances ...")
    try:
        view = audit_for_app(
            workload, source=name, instances=int(instances), lam=lam, lam_lo=lam_lo,
            lam_hi=lam_hi, p0=p0, b0=b0, reference=reference,
            progress=lambda f: bar.progress(min(max(f, 0.0), 1.0)),
            router_state=router_state,
        )
    except ValueError as exc:
        bar.empty()
        st.error(f"Cannot audit with these settings: {exc}")
        st.stop()
    bar.empty()
    st.session_state["audit_key"] = settings
    st.session_state["audit_view"] = view
view = st.session_state["audit_view"]
rep = view.report

m1, m2, m3, m4, m5 = st.columns(5)
m1.metric("Decisions", f"{rep.decisions:,}")
m2.metric("Disagreement rate", f"{rep.disagreement_rate:.3%}")
m3.metric("Fragile", f"{rep.fragile:,}")
m4.metric("Mean regret (token equiv.)", f"{rep.regret_tokens['mean']:.4g}")
le = rep.lam_eff
m5.metric("λ_eff p50", f"{le['p50']:.4g}" if le["p50"] is not None else "n/a")
st.caption(f"Reference λ = {view.lam:.4g} tokens per slot, band [{view.lam_lo:.4g}, "
           f"{view.lam_hi:.4g}]" + ("" if custom else f", derived from the {PRESET} latency "
                                     "model and the workload's mean request shape") + ".")
deg = rep.degenerate
st.caption(f"Degenerate decisions — zero-prefill hot-spots: {deg['zero_prefill']}, idle ties: "
           f"{deg['idle_tie']}, exact ties: {deg['exact_tie']}.")

v = view.verdicts
# Two columns (three would clip the plot titles at 1400 px); titles sized to fit.
figs = (disagreement_rate_figure(view.time_s, v.disagrees),
        regret_figure(v.regret_tokens, v.disagrees),
        lam_eff_figure(view.time_s, v.lam_eff, view.lam, view.lam_lo, view.lam_hi))
for f in figs:
    f.update_layout(title_font_size=15, margin={"t": 50})
figs[2].update_layout(title_text="λ_eff of each decision against the reference band")
figs[2].update_yaxes(title="λ_eff (tokens per batch slot)")
g1, g2 = st.columns(2)
g1.plotly_chart(figs[0], key="rate_plot")
g2.plotly_chart(figs[1], key="regret_plot")
st.plotly_chart(figs[2], key="lam_plot")

st.subheader("Worst decisions")
worst = rep.worst
if not worst:
    st.write("No decision disagrees with the reference.")
else:
    st.dataframe(worst_rows(worst), key="worst_table", hide_index=True)
    labels = [f"{k + 1}. decision {w['decision']} at {w['time_s']:.2f} s — regret "
              f"{w['regret_tokens']:,.0f} tokens" for k, w in enumerate(worst)]
    pick = st.selectbox("Show on the decision-region view", range(len(worst)),
                        format_func=labels.__getitem__, key="worst_pick")
    w = worst[pick]
    i, j = w["product_choice"], w["linear_choice"]
    a, b = (w["P"][i], w["B"][i]), (w["P"][j], w["B"][j])
    p_rng, b_rng = pair_view_ranges([a, b])
    rm = compute_regions(a[0], a[1], lam=view.lam, p0=view.p0, b0=view.b0, p_range=p_rng,
                         b_range=b_rng, resolution=(300, 300))
    st.caption(f"Instance 1 of the plot = instance {i} (the product's choice, P={a[0]:.4g}, "
               f"B={a[1]:.4g}); the star, instance 2 of the plot = instance {j} (the linear "
               f"choice, P={b[0]:.4g}, B={b[1]:.4g}).")
    st.plotly_chart(region_figure(rm, marker=b, marker_label=f"instance {j} (linear choice)"),
                    key="worst_plot")

st.subheader("Hot prefix classes")
hot = rep.hotspots
if hot is None:
    st.write("Hot prefix classes need the requests' block hashes (a replay).")
elif not hot:
    st.write("No prefix class raised phase 1 (x/x̄ > |M|/|M̄|).")
else:
    st.plotly_chart(hotspot_figure(view.time_s, hot), key="hot_plot")
    st.dataframe([{**h.to_json(), "cached_instances": ", ".join(map(str, h.cached_instances))}
                  for h in hot], key="hot_table", hide_index=True)

rstate = rep.router_state
if rstate is not None:
    st.subheader("Router state")
    if not rstate:
        st.write("No router-state finding (replica skew, herding, stale index).")
    else:
        st.dataframe(router_state_rows(rstate), key="router_state_table", hide_index=True)

st.download_button("Download the JSON report", report_json(view.report),
                   file_name="audit_report.json", mime="application/json", key="download")
