"""Write audit reports: strict JSON and a self-contained HTML page with plots.

Every file is written atomically: the content goes to a temporary file in the target's
directory, which then replaces the target with :func:`os.replace`; an interruption leaves
either the old file or the new one, never half of one. The HTML embeds plotly.js inline
(no network needed to view it).
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lmetric_theory.audit import AuditReport, AuditResult, HotspotEntry, json_safe
from lmetric_theory.core.fileio import atomic_write, atomic_write_text

__all__ = [
    "atomic_write",
    "atomic_write_text",
    "disagreement_rate_figure",
    "hotspot_figure",
    "lam_eff_figure",
    "regret_figure",
    "render_html",
    "report_json",
    "write_report",
]

JSON_NAME = "audit.json"
HTML_NAME = "audit.html"


# ``atomic_write`` and ``atomic_write_text`` live in ``core.fileio`` (shared with the
# simulator's snapshot logs and the CLI); they are re-exported here.


# ===================================================================================== JSON


def report_json(report: AuditReport | dict[str, Any]) -> str:
    """A report as strict JSON text (NaN and infinities become null): an
    :class:`AuditReport` through its ``to_json()`` (documented keys and aliases), or any
    JSON-like dict."""
    doc = report.to_json() if isinstance(report, AuditReport) else report
    return json.dumps(json_safe(doc), indent=2, allow_nan=False) + "\n"


# ==================================================================================== plots


def _layout(fig: Any, title: str) -> None:
    fig.update_layout(height=360, margin={"l": 10, "r": 10, "t": 40, "b": 10}, title=title,
                      template="plotly_white")


def disagreement_rate_figure(time_s: np.ndarray, disagrees: np.ndarray, bins: int = 60,
                             time_axis: str = "seconds") -> Any:
    """Share of decisions that disagree per time bin (x: decision time, y: rate in [0, 1])."""
    import plotly.graph_objects as go

    t = np.asarray(time_s, dtype=np.float64)
    d = np.asarray(disagrees, dtype=bool)
    ok = np.isfinite(t)
    t, d = t[ok], d[ok]
    lo, hi = (float(t.min()), float(t.max())) if t.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    k = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, bins - 1)
    n = np.bincount(k, minlength=bins)
    m = np.bincount(k, weights=d.astype(np.float64), minlength=bins)
    rate = np.where(n > 0, m / np.maximum(n, 1), np.nan)
    mid = 0.5 * (edges[:-1] + edges[1:])
    fig = go.Figure(go.Scatter(x=mid, y=rate, mode="lines+markers", name="disagreement rate",
                               customdata=n, hovertemplate="t=%{x:.1f}<br>rate=%{y:.3f}"
                               "<br>%{customdata} decisions<extra></extra>"))
    fig.update_xaxes(title="decision time (s)" if time_axis == "seconds" else "decision index")
    fig.update_yaxes(title="share of decisions that disagree", rangemode="tozero")
    _layout(fig, "Disagreement rate over time")
    return fig


def regret_figure(regret_tokens: np.ndarray, disagrees: np.ndarray) -> Any:
    """Histogram of the regret of disagreeing decisions, prefill-token equivalents."""
    import plotly.graph_objects as go

    r = np.asarray(regret_tokens, dtype=np.float64)[np.asarray(disagrees, dtype=bool)]
    fig = go.Figure(go.Histogram(x=r, nbinsx=50, name="regret"))
    fig.update_xaxes(title="regret (prefill-token equivalents)")
    fig.update_yaxes(title="disagreeing decisions")
    _layout(fig, f"Regret distribution of the {r.size} disagreeing decisions")
    return fig


def lam_eff_figure(time_s: np.ndarray, lam_eff: np.ndarray, lam: float, lam_lo: float,
                   lam_hi: float, max_points: int = 5000, time_axis: str = "seconds") -> Any:
    """``lam_eff`` per decision over time (log y) against the reference rate and band.

    ``time_s`` (seconds, or decision indices) and ``lam_eff`` (tokens per batch slot) have
    shape (D,); ``lam``, ``lam_lo``, ``lam_hi`` are the reference rate and band.
    """
    import plotly.graph_objects as go

    t = np.asarray(time_s, dtype=np.float64)
    le = np.asarray(lam_eff, dtype=np.float64)
    idx = np.flatnonzero(np.isfinite(le) & (le > 0) & np.isfinite(t))
    if idx.size > max_points:  # even thinning keeps the picture, bounds the file size
        idx = idx[np.linspace(0, idx.size - 1, max_points).astype(np.int64)]
    fig = go.Figure(go.Scatter(x=t[idx], y=le[idx], mode="markers", name="λ_eff",
                               marker={"size": 3, "opacity": 0.5}))
    tt = t[np.isfinite(t)]
    x_ends = [float(tt.min()), float(tt.max())] if tt.size else [0.0, 1.0]
    if lam_hi > lam_lo > 0:
        fig.add_trace(go.Scatter(x=x_ends, y=[lam_lo, lam_lo], mode="lines", showlegend=False,
                                 line={"color": "#2ca02c", "width": 1}, hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=x_ends, y=[lam_hi, lam_hi], mode="lines", fill="tonexty",
                                 fillcolor="rgba(44,160,44,0.2)", name="reference band",
                                 line={"color": "#2ca02c", "width": 1}, hoverinfo="skip"))
    if lam > 0:
        fig.add_trace(go.Scatter(x=x_ends, y=[lam, lam], mode="lines", name=f"λ = {lam:g}",
                                 line={"color": "#2ca02c", "width": 2, "dash": "dash"}))
    vals = [x for x in (*le[idx].tolist(), lam_lo, lam_hi, lam) if x > 0]
    rng = [math.log10(min(vals)) - 0.2, math.log10(max(vals)) + 0.2] if vals else None
    fig.update_xaxes(title="decision time (s)" if time_axis == "seconds" else "decision index")
    fig.update_yaxes(title="λ_eff (tokens per batch slot)", type="log", range=rng)
    _layout(fig, "λ_eff against the reference band")
    return fig


# ===================================================================================== HTML


def hotspot_figure(time_s: np.ndarray, hotspots: Sequence[HotspotEntry],
                   time_axis: str = "seconds") -> Any:
    """Hot prefix classes over time: one row per class (x: decision time), phase 1 (alarm)
    and phase 2 (confirmed) marked; the label gives the share and cached instances."""
    import plotly.graph_objects as go

    fig = go.Figure()
    end = float(time_s[-1]) if len(time_s) else 0.0
    for kind, key, symbol in (("phase 1 (alarm)", "phase1_decision", "circle-open"),
                              ("phase 2 (confirmed)", "phase2_decision", "x")):
        xs, ys = [], []
        for h in hotspots:
            at = getattr(h, key)
            if at is not None:
                xs.append(float(time_s[at]))
                ys.append(f"class {h.class_id} (x={h.share:.2f}, |M|={len(h.cached_instances)})")
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name=kind,
                                 marker={"symbol": symbol, "size": 11}))
    fig.update_xaxes(title="decision" if time_axis == "decision" else "time (s)",
                     range=[0, max(end, 1e-9)])
    _layout(fig, "Hot prefix classes over time")
    return fig


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(v))}</td></tr>"
                   for k, v in rows)
    return f"<table>{body}</table>"


def _grid(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(result: AuditResult) -> str:
    """A self-contained HTML page: summary tables, mitigations, worst decisions and three
    plots (plotly.js embedded inline once)."""
    rep = result.report
    v = result.verdicts
    ref = result.reference
    axis = rep.time_axis
    figs = [
        disagreement_rate_figure(result.time_s, v.disagrees, time_axis=axis),
        regret_figure(v.regret_tokens, v.disagrees),
        lam_eff_figure(result.time_s, v.lam_eff, ref.lam, ref.lam_lo, ref.lam_hi,
                       time_axis=axis),
    ]
    plots = "".join(
        f.to_html(full_html=False, include_plotlyjs=(k == 0), config={"displaylogo": False})
        for k, f in enumerate(figs)
    )
    tr, cfg, lr = rep.trace, rep.config, rep.lam_reference
    summary = _table([
        ("trace", tr.get("source")),
        ("requests / decisions", f"{tr.get('requests')} / {rep.decisions}"),
        ("skipped lines", rep.skipped_lines),
        ("instances", rep.instances),
        ("definitions", f"P={cfg.get('p_definition')}, B={cfg.get('b_definition')}, "
                        f"p0={cfg.get('prefill_offset')}, b0={cfg.get('batch_offset')}"),
        ("disagreements", f"{rep.disagreements} ({rep.disagreement_rate:.3%})"),
        ("fragile", rep.fragile),
        ("zero-prefill / idle tie / exact tie",
         " / ".join(str(rep.degenerate[k]) for k in ("zero_prefill", "idle_tie", "exact_tie"))),
        ("extreme operating point", rep.extreme_operating_point),
        ("regret mean / p50 / p99 / max (tokens)",
         " / ".join(_fmt(rep.regret_tokens[k]) for k in ("mean", "p50", "p99", "max"))),
        ("λ_eff p1 / p50 / p99",
         " / ".join(_fmt(rep.lam_eff[k]) for k in ("p1", "p50", "p99"))),
        ("reference λ [band]", f"{_fmt(lr['lam'])} [{_fmt(lr['lam_lo'])}, {_fmt(lr['lam_hi'])}]"),
        ("reference source", f"{lr['source']}: {lr.get('provenance') or ''}"),
    ])
    mit = _grid(
        ["rank", "mitigation", "fixes", "breaks", "agree share", "mean regret removed",
         "recommended for"],
        [[m["rank"], m["description"], m["fixes"], m["breaks"], m["agree_share"],
          m["mean_regret_removed_tokens"],
          ", ".join(f"{k} ({n})" for k, n in m["recommended_for"].items())]
         for m in rep.mitigations],
    )
    hot = rep.hotspots or ()
    hot_html = ("<p>No prefix class raised phase 1 (x/xbar &gt; |M|/|Mbar|).</p>" if not hot else
                hotspot_figure(result.time_s, hot, axis).to_html(
                    full_html=False, include_plotlyjs=False, config={"displaylogo": False})
                + _grid(["class", "share", "cached instances", "phase 1 (decision)",
                         "phase 2 (decision)", "condition (l)", "mitigation"],
                        [[h.class_id, h.share, ", ".join(map(str, h.cached_instances)),
                          h.phase1_decision, h.phase2_decision, h.condition_holds,
                          h.mitigation] for h in hot]))
    rs = rep.router_state or ()
    rs_html = ("<p>No router-state finding (replica skew, herding, stale index).</p>"
               if not rs else
               _grid(["finding", "severity", "first decision", "mitigation", "value",
                      "what was found"],
                     [[e.kind, e.severity, e.first_decision, e.mitigation,
                       e.mitigation_value, e.message] for e in rs]))
    worst = _grid(
        ["decision", "time", "product", "linear", "regret", "λ_eff", "λ*", "P", "B"],
        [[w["decision"], w["time_s"], w["product_choice"], w["linear_choice"],
          w["regret_tokens"], w["lam_eff"], w["lam_star"], w["P"], w["B"]]
         for w in rep.worst],
    )
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;"
             "color:#222}table{border-collapse:collapse;margin:1em 0;font-size:14px}"
             "th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;"
             "vertical-align:top}th{background:#f4f4f4}")
    title = f"LMetric audit - {html.escape(str(tr.get('source')))}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{title}</title><style>{style}</style></head><body>"
        f"<h1>{title}</h1><h2>Summary</h2>{summary}"
        f"<h2>Plots</h2>{plots}"
        f"<h2>Mitigations (ranked by flagged decisions fixed)</h2>{mit}"
        f"<h2>Worst decisions (by regret)</h2>{worst}"
        + (f"<h2>Hot prefix classes</h2>{hot_html}" if rep.hotspots is not None else "")
        + (f"<h2>Router state</h2>{rs_html}" if rep.router_state is not None else "")
        + "</body></html>\n"
    )


def write_report(result: AuditResult, out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``audit.json`` and ``audit.html`` into ``out_dir`` (created if needed), each
    atomically; both contents are built before either file is touched.

    Returns
    -------
    (Path, Path)
        The JSON and HTML paths.
    """
    out = Path(out_dir)
    text = report_json(result.report)
    page = render_html(result)
    j = atomic_write_text(out / JSON_NAME, text)
    h = atomic_write_text(out / HTML_NAME, page)
    return j, h
