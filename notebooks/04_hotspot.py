# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 — Hot prefix classes: derived, detected in two phases, mitigated
#
# A cluster-level failure condition of the product, derived in this project (not taken from
# a section of the paper). Requests are grouped by prefix class `c`
# (here: the hash of the prompt's first block); `M` is the set of instances caching the
# class, `x` its share of arrivals. The product keeps class `c` on `M` while the hot batch
# stays below a tolerance, and the hot batch outgrows the others when
# `x/xbar > |M|/|Mbar|`. This notebook shows the derived results (j)-(l), the condition
# on the adversarial `hotspot` workload across shares, the two-phase monitor's
# confirmation, the `guarded-lmetric:mitigation=hotspot` policy, and how often the
# condition holds on the other synthetic workloads (and the shared trace, when present).
# Every number below is computed here.

# %%
import os

import numpy as np

# The one switch: LMETRIC_NOTEBOOK_FULL=1 runs the full-size experiment; the default small
# mode (CI) runs in well under a minute.
FULL = os.environ.get("LMETRIC_NOTEBOOK_FULL") == "1"
SEED = 0
rng = np.random.default_rng(SEED)
print("mode:", "FULL" if FULL else "small (set LMETRIC_NOTEBOOK_FULL=1 for the full run)")

# %% [markdown]
# ## Theory: results (j)-(l)

# %%
import sympy as sp
from IPython.display import Markdown, display

from lmetric_theory.theory.hotspot import HOTSPOT_SYMBOLS, derive_hotspot, spill_batch

h = derive_hotspot()
for r in h.results:
    display(Markdown(f"**({r.item}) {r.title}** — {r.statement}"))
    for f in r.formulas:
        display(Markdown(f"${sp.latex(f.expr)}$  ({f.label})"))
print(len(h.identities), "identities, each simplify(lhs - rhs) == 0:",
      all(sp.simplify(i.lhs - i.rhs) == 0 for i in h.identities))

# %% [markdown]
# With the default `hotspot` workload (8,192-token shared prefix, about 256 new tokens per
# request) the product tolerates a hot batch about 30 times the cold one (plus offsets):

# %%
S = HOTSPOT_SYMBOLS
state = {S["P_hit"]: 8192 + 256 - 8192, S["P_miss"]: 8192 + 256, S["p_0"]: 0, S["b_0"]: 1}
print("tolerated ratio (B_h + 1)/(B_o + 1):", h.product_tolerance.subs(state))
print("spill batch on the hot instance for a cold batch of 0, 1, 2, 4:",
      [spill_batch(256, 8448, b) for b in (0, 1, 2, 4)])

# %% [markdown]
# ## The condition on the adversarial workload, across shares
#
# `synthetic:hotspot:share=x`: class 0 (share `x`) shares an 8,192-token prefix; its first
# request warms one instance's cache before the rest arrive (`|M| = 1` when the class turns
# hot); the other requests share nothing. Both policies are replayed on 8 instances; the
# monitor runs over lmetric's replay (detect only).

# %%
import pandas as pd
import plotly.express as px

from lmetric_theory.audit.hotspots import hotspot_findings
from lmetric_theory.sim import SimConfig, Simulator, load_preset
from lmetric_theory.workload.hotspot import HotspotParams, hotspot

N = 8
COUNT = 2000 if FULL else 600
SHARES = (0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.95) if FULL else (0.05, 0.2, 0.6)
POLICIES = ("lmetric", "guarded-lmetric:mitigation=hotspot")
cfg = SimConfig.from_preset(load_preset("h100-llama3-8b"), N)
rows, replays = [], {}
for share in SHARES:
    w = hotspot(HotspotParams(share=share, count=COUNT, seed=SEED))
    hot = w.session_ids == 0
    for pol in POLICIES:
        res = Simulator(w, cfg, pol, seed=SEED).run()
        if pol == "lmetric":
            replays[share] = (w, res)
        rows.append({
            "share": share, "policy": pol,
            "ttft_mean_s": float(np.nanmean(res.ttft_s)),
            "tpot_mean_s": float(np.nanmean(res.tpot_s)),
            "hot_ttft_mean_s": float(np.nanmean(res.ttft_s[hot])),
            "hot_tpot_mean_s": float(np.nanmean(res.tpot_s[hot])),
        })
table = pd.DataFrame(rows)
table

# %%
found = []
for share, (w, res) in replays.items():
    fs = [f for f in hotspot_findings(w, res.snapshots) if f.class_id == 0]
    f = fs[0] if fs else None
    found.append({
        "share": share, "x/xbar": share / (1 - share) if share < 1 else float("inf"),
        "|M|/|Mbar| at phase 1": (len(f.cached_instances) / (N - len(f.cached_instances))
                                  if f else None),
        "phase 1": f.phase1_decision if f else None,
        "phase 2": f.phase2_decision if f else None,
        "(l) holds at phase 1": f.condition_holds if f else None,
    })
pd.DataFrame(found)

# %%
fig = px.line(table, x="share", y="hot_tpot_mean_s", color="policy", markers=True,
              title="mean TPOT of the hot class (s) vs its share")
fig.add_vline(x=1 / N, line_dash="dot", annotation_text="x = |M|/N with |M| = 1")
fig

# %% [markdown]
# ## Does the monitor confirm before the hot class's TTFT doubles?
#
# Rolling mean TTFT of the hot class in lmetric's replay at the largest share, against the
# decision at which phase 2 confirmed.

# %%
share = max(SHARES)
w, res = replays[share]
order = np.asarray(res.snapshots.request)
hot_d = np.flatnonzero(w.session_ids[order] == 0)
ttft = res.ttft_s[order][hot_d]
k = 20
roll = np.convolve(ttft, np.ones(k) / k, mode="valid")
first = float(roll[0])
doubled = hot_d[k - 1:][np.flatnonzero(roll >= 2 * first)]
f0 = next((f for f in hotspot_findings(w, res.snapshots) if f.class_id == 0), None)
print(f"share {share}: phase 2 at decision {f0.phase2_decision if f0 else None}; "
      f"first decision where the hot class's rolling TTFT ({k} requests) doubles: "
      f"{int(doubled[0]) if doubled.size else 'never'}")
px.line(x=hot_d[k - 1:], y=roll, labels={"x": "decision", "y": "rolling mean TTFT (s)"},
        title="hot class TTFT under lmetric")

# %% [markdown]
# ## How often does the condition hold elsewhere?
#
# Class = the prompt's first block hash. The monitor runs over lmetric's replay of each
# workload (8 instances); a class counts once.

# %%
import nbsupport as ns

from lmetric_theory.workload import synthetic

n_req = 6000 if FULL else 800
workloads = {kind: synthetic(kind, n_requests=n_req, rate_rps=16.0, seed=SEED)
             for kind in ("chat", "api", "agent")}
trace, label = ns.trace_or_synthetic(count=None if FULL else 800, seed=SEED, kind="mixed",
                                     rate_rps=16.0)
workloads[label] = trace
freq = []
for name, w in workloads.items():
    res = Simulator(w, cfg, "lmetric", seed=SEED).run()
    fs = hotspot_findings(w, res.snapshots)
    firsts = {int(w.blocks(i)[0]) for i in range(len(w)) if len(w.blocks(i))}
    freq.append({"workload": name, "classes": len(firsts), "phase 1": len(fs),
                 "confirmed": sum(f.phase2_decision is not None for f in fs),
                 "max share at phase 1": max((f.share for f in fs), default=None)})
pd.DataFrame(freq)
