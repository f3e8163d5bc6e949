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
# # 01 — The theory: product score vs linear score
#
# LMetric routes a request to the instance with the lowest **product** score
# $S_i = (P_i + p_0)(B_i + b_0)$; production routers use a **linear** score
# $C_i = P_i + \lambda B_i$. Everything below comes from `lmetric_theory.theory.derive()`
# (sympy derivations from the two definitions) and the numeric predicates generated from them;
# this notebook only displays and plots.

# %%
import os

import numpy as np

# The one switch: LMETRIC_NOTEBOOK_FULL=1 runs the full-size experiment; the default
# small mode (CI) runs in well under a minute.
FULL = os.environ.get("LMETRIC_NOTEBOOK_FULL") == "1"
SEED = 0
rng = np.random.default_rng(SEED)
print("mode:", "FULL" if FULL else "small (set LMETRIC_NOTEBOOK_FULL=1 for the full run)")

# %%
import plotly.graph_objects as go
import sympy as sp
from IPython.display import Markdown, display

from lmetric_theory.core import kernel as predicates
from lmetric_theory.experiments.regions import compute_regions
from lmetric_theory.theory import derive, second_intersection, tangent_lam

d = derive()

# %% [markdown]
# ## The pairwise identity
#
# For two instances the product difference splits into a prefill term and a batch term, each
# weighted by the *other* quantity's pair mean. Each identity is proved with
# `simplify(lhs - rhs) == 0` (the test suite does the same).

# %%
for ident in d.identities:
    ok = sp.simplify(ident.lhs - ident.rhs) == 0
    display(Markdown(f"**{ident.name}** (proved: {ok}) — {ident.statement}"))
display(Markdown(f"$${sp.latex(d.pairwise_lhs)} = {sp.latex(d.pairwise_rhs)}$$"))

# %% [markdown]
# ## λ_eff and λ*
#
# The product ranks a pair like a linear score with the pair's own rate
# $\lambda_\text{eff} = (\bar P + p_0)/(\bar B + b_0)$; a linear score with rate $\lambda$ flips its
# choice at the break-even rate $\lambda^* = -(P_1 - P_2)/(B_1 - B_2)$. The two disagree exactly
# when $\lambda$ and $\lambda_\text{eff}$ lie on opposite sides of $\lambda^*$.

# %%
display(Markdown(f"$$\\lambda_{{eff}} = {sp.latex(d.lambda_eff)}, \\qquad "
                 f"\\lambda^* = {sp.latex(d.lambda_star)}$$"))
display(Markdown(f"Disagreement: ${sp.latex(d.disagreement_condition)}$"))

# One concrete pair: instance 1 has a long uncached prompt and a small batch,
# instance 2 a short one and a big batch.
P1, B1, P2, B2 = 6000, 2, 1000, 12
le = float(predicates.lambda_eff(P1, B1, P2, B2, 0, 1))
ls = float(predicates.lambda_star(P1, B1, P2, B2))
lams = np.linspace(0, 2 * max(le, ls), 400)
lin_diff = (P1 + lams * B1) - (P2 + lams * B2)
prod_diff = (P1 + 0) * (B1 + 1) - (P2 + 0) * (B2 + 1)
fig = go.Figure()
fig.add_scatter(x=lams, y=lin_diff, name="C_1 - C_2 (linear)")
fig.add_hline(y=0, line_dash="dot")
fig.add_vline(x=ls, line_dash="dash", annotation_text=f"λ* = {ls:.0f}")
fig.add_vline(x=le, line_color="red", annotation_text=f"λ_eff = {le:.0f}")
fig.update_layout(title=f"Pair (P,B) = ({P1},{B1}) vs ({P2},{B2}); product picks "
                  f"instance {1 if prod_diff < 0 else 2}; linear picks 2 below λ*, 1 above",
                  xaxis_title="lam (tokens per batch slot)", yaxis_title="score difference (tokens)")
fig

# %%
# λ_eff over the plane of instance 2's state, instance 1 fixed.
P2g = np.linspace(0, 8000, 161)
B2g = np.arange(0, 33)
LE = predicates.lambda_eff(P1, B1, P2g[None, :], B2g[:, None], 0, 1)
go.Figure(go.Heatmap(x=P2g, y=B2g, z=LE, colorbar_title="λ_eff")).update_layout(
    title=f"λ_eff of the pair with instance 1 = ({P1}, {B1})",
    xaxis_title="P_2 (tokens)", yaxis_title="B_2 (requests)")

# %% [markdown]
# ## Regions of disagreement
#
# Fix instance 1. In the plane of instance 2's state the product's iso-curve is a hyperbola,
# linear's a line; they meet at instance 1 and at a second point. Between them lie the **lens**
# (bounded) and two unbounded parts where the two scores pick different instances.

# %%
for r in d.regions:
    display(Markdown(f"**{r.name}** — {r.statement}"))

P_1, B_1, LAM = 2000.0, 4.0, 1024.0
rm = compute_regions(P_1, B_1, lam=LAM, p_range=(0, 8192), b_range=(0, 32), resolution=(300, 200))
p2s, b2s = second_intersection(P_1, B_1, LAM)
fig = go.Figure(go.Heatmap(x=rm.P, y=rm.B, z=rm.region, colorscale="Viridis", showscale=False))
fig.add_scatter(x=rm.P, y=rm.product_curve, name="product iso-curve", line_color="white")
fig.add_scatter(x=rm.P, y=rm.linear_curve, name="linear iso-line", line_color="red")
fig.add_scatter(x=[P_1, float(p2s)], y=[B_1, float(b2s)], mode="markers", name="instance 1 and 2nd intersection",
                marker_size=10)
fig.update_yaxes(range=[0, 32])
fig.update_layout(title=f"Regions (codes 0 both 1, 1 both 2, 2 only product 2, 3 only linear 2); "
                  f"disagreement share {rm.disagreement_share:.1%}",
                  xaxis_title="P_2 (tokens)", yaxis_title="B_2 (requests)")
fig

# %%
# How the disagreement area depends on λ: empty when λ equals the tangent rate at instance 1.
lam_grid = np.geomspace(16, 65536, 40 if not FULL else 160)
share = [compute_regions(P_1, B_1, lam=float(x), p_range=(0, 8192), b_range=(0, 32),
                         resolution=(200, 120)).disagreement_share for x in lam_grid]
lt = float(tangent_lam(P_1, B_1))
fig = go.Figure(go.Scatter(x=lam_grid, y=share, mode="lines+markers"))
fig.add_vline(x=lt, line_dash="dash", annotation_text=f"tangent λ = λ_eff at instance 1 = {lt:.0f}")
fig.update_xaxes(type="log", title="lam (tokens per batch slot)")
fig.update_yaxes(title="share of the plotted plane where the scores disagree")
fig

# %% [markdown]
# ## Degenerate cases
#
# The product has corner cases a linear score does not: with $p_0 = 0$ a fully cached prompt
# ($P_i = 0$) scores 0 however loaded the instance is; with $b_0 = 0$ idle instances tie.
# The table comes straight from the derivation; the demo below uses the exact argmin.

# %%
display(Markdown("| case | reachable when | removed by | meaning |\n|---|---|---|---|\n" + "\n".join(
    f"| {g.name} | {g.reachable_when} | {g.removed_by} | {g.statement} |" for g in d.degenerate)))

# Zero-prefill hot-spot: instance 0 holds the whole prompt in cache but runs 60 requests;
# instance 1 is idle with nothing cached (P = 4,000 tokens).
P = np.array([0, 4000])
B = np.array([60, 0])
for p0 in (0, 128):
    i = int(predicates.argmin_product(P, B, p0, 1))
    print(f"p0 = {p0:>3}: product routes to instance {i}; linear(lam=1024) routes to "
          f"{int(predicates.argmin_linear(P, B, 1024))}")
