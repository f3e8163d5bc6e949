"""The advice report: strict JSON and a self-contained HTML page with plots.

Everything here works from the advice document (the dict of
:func:`lmetric_theory.experiments.advise.advise`, or the same document read back from
``advice.json``), so the HTML report and the app page draw the same figures from a saved
file. The page embeds plotly.js inline once (no network needed to view it) and puts the
verdict at the top. Both files are built before either is written, each atomically
(:func:`lmetric_theory.core.fileio.atomic_write_text`).

Figures
-------
* :func:`cdf_figure` - TTFT or TPOT CDF per policy at the focus load (as the paper's
  Figure 21);
* :func:`load_figure` - a metric's mean over seeds against load, one line per policy,
  with the seed range as error bars (as the paper's Figure 22);
* :func:`instance_figure` - requests (or prefill tokens) per instance per policy at the
  focus load.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lmetric_theory.core.fileio import atomic_write_text, json_safe

__all__ = [
    "ADVICE_KEYS",
    "HTML_NAME",
    "JSON_NAME",
    "advice_json",
    "cdf_figure",
    "check_advice",
    "figures",
    "instance_figure",
    "load_figure",
    "router_state_figure",
    "render_html",
    "verdict_headline",
    "write_advice",
]

JSON_NAME = "advice.json"
HTML_NAME = "advice.html"

#: Top-level keys every advice document has (docs/advise.md).
ADVICE_KEYS: tuple[str, ...] = ("schema", "workload", "config", "saturation", "loads",
                                "focus_load", "verdict", "summary", "comparisons",
                                "distributions", "per_instance", "hotspots", "harm",
                                "confirm_vllm", "router_state", "rows", "runtime_s")

#: (summary key, axis title, scale) of the load plots.
LOAD_PLOTS: tuple[tuple[str, str, float], ...] = (
    ("ttft_mean_s", "mean TTFT (s)", 1.0), ("ttft_p99_s", "p99 TTFT (s)", 1.0),
    ("tpot_mean_s", "mean TPOT (ms)", 1e3), ("tpot_p99_s", "p99 TPOT (ms)", 1e3),
    ("goodput_rps", "goodput (req/s)", 1.0),
)


def check_advice(doc: Any) -> dict[str, Any]:
    """``doc`` if it is an advice document, else ``ValueError`` naming what is missing."""
    if not isinstance(doc, Mapping):
        raise ValueError("not an advice document: expected a JSON object")
    if not str(doc.get("schema", "")).startswith("lmetric-theory/advice/"):
        raise ValueError("not an advice document: no 'schema' key of lmetric-theory/advice")
    missing = [k for k in ADVICE_KEYS if k not in doc]
    if missing:
        raise ValueError(f"advice document lacks the keys {', '.join(missing)}")
    return dict(doc)


def verdict_headline(doc: Mapping[str, Any]) -> str:
    """``"Verdict: LMetric wins"`` (``ties``, ``loses``; ``is mixed`` when loads disagree)."""
    o = doc["verdict"]["outcome"]
    word = {"win": "wins", "tie": "ties", "lose": "loses", "mixed": "is mixed"}.get(o, o)
    return f"Verdict: LMetric {word}"


def advice_json(doc: Mapping[str, Any]) -> str:
    """Strict JSON text (NaN and infinities as null)."""
    return json.dumps(json_safe(dict(doc)), indent=2, allow_nan=False) + "\n"


def _policies(doc: Mapping[str, Any]) -> list[str]:
    return list(doc["config"]["policies"])


def _layout(fig: Any, title: str, x: str, y: str) -> Any:
    fig.update_layout(height=380, margin={"l": 10, "r": 10, "t": 50, "b": 10}, title=title,
                      template="plotly_white", xaxis_title=x, yaxis_title=y,
                      legend={"font": {"size": 11}})
    return fig


def cdf_figure(doc: Mapping[str, Any], metric: str = "ttft") -> Any:
    """CDF of TTFT (``metric="ttft"``, seconds) or TPOT (``"tpot"``, ms) per policy."""
    import plotly.graph_objects as go

    d = doc["distributions"]
    probs = d["probabilities"]
    key, scale, unit = ("ttft_q_s", 1.0, "s") if metric == "ttft" else ("tpot_q_s", 1e3, "ms")
    fig = go.Figure()
    for name in _policies(doc):
        q = (d["policies"].get(name) or {}).get(key)
        if not q:
            continue
        fig.add_trace(go.Scatter(x=[v * scale for v in q], y=probs, mode="lines", name=name))
    label = "TTFT" if metric == "ttft" else "TPOT"
    return _layout(fig, f"{label} CDF at {d['load']} (seed {d['seed']})", f"{label} ({unit})",
                   "fraction of requests")


def load_figure(doc: Mapping[str, Any], key: str = "ttft_mean_s") -> Any:
    """A metric's mean over seeds against load, per policy; error bars: the seed range."""
    import plotly.graph_objects as go

    title, scale = next(((t, s) for k, t, s in LOAD_PLOTS if k == key), (key, 1.0))
    order = [ld["label"] for ld in doc["loads"]]
    xs = {ld["label"]: ld["value"] for ld in doc["loads"]}
    fig = go.Figure()
    for name in _policies(doc):
        pts = sorted((r for r in doc["summary"] if r["policy"] == name and key in r
                      and r[key]["mean"] is not None), key=lambda r: order.index(r["load"]))
        if not pts:
            continue
        y = [r[key]["mean"] * scale for r in pts]
        hi = [(r[key]["max"] - r[key]["mean"]) * scale for r in pts]
        lo = [(r[key]["mean"] - r[key]["min"]) * scale for r in pts]
        fig.add_trace(go.Scatter(x=[xs[r["load"]] for r in pts], y=y, mode="lines+markers", name=name,
                                 text=[r["load"] for r in pts],
                                 error_y={"type": "data", "array": hi, "arrayminus": lo,
                                          "visible": True, "thickness": 1}))
    axis = "rate scale" if doc["workload"]["mode"] == "rate" else "session concurrency"
    return _layout(fig, f"{title} against load", axis, title)


def instance_figure(doc: Mapping[str, Any], key: str = "requests") -> Any:
    """Requests (``key="requests"``) or prefill tokens computed (``"prefill_tokens_computed"``)
    per instance, grouped bars per policy, at the focus load."""
    import plotly.graph_objects as go

    d = doc["per_instance"]
    fig = go.Figure()
    for name in _policies(doc):
        per = (d["policies"].get(name) or {}).get(key)
        if not per:
            continue
        fig.add_trace(go.Bar(x=[f"#{i}" for i in range(len(per))], y=per, name=name))
    fig.update_layout(barmode="group")
    label = "requests routed" if key == "requests" else "prefill tokens computed"
    return _layout(fig, f"Per-instance load at {d['load']}: {label}", "instance", label)


def router_state_figure(doc: Mapping[str, Any]) -> Any:
    """Mean TTFT (s, mean over seeds) per policy at each router-state setting of the
    sensitivity (``R, lag`` on the x axis, in the document's order)."""
    import plotly.graph_objects as go

    rs = doc["router_state"]
    fig = go.Figure()
    labels = [f"R={r}, lag={lag:g}s" for r, lag in rs["settings"]]
    by = {(e["replicas"], e["lag_s"], e["policy"]): e for e in rs["summary"]}
    for name in rs["policies"]:
        ys = [by[(r, lag, name)]["ttft_mean_s"]["mean"] for r, lag in rs["settings"]]
        fig.add_trace(go.Bar(x=labels, y=ys, name=name))
    fig.update_layout(barmode="group")
    return _layout(fig, f"Mean TTFT against router replicas and KV-event lag at {rs['load']}",
                   "router replicas R, KV-event lag", "mean TTFT (s)")


def figures(doc: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """Every figure of the report, ``(id, figure)``, in page order."""
    figs: list[tuple[str, Any]] = [("cdf-ttft", cdf_figure(doc, "ttft")),
                                   ("cdf-tpot", cdf_figure(doc, "tpot"))]
    has_slo = doc["config"].get("slo") is not None
    for key, _, _ in LOAD_PLOTS:
        if key == "goodput_rps" and not has_slo:
            continue
        figs.append((f"load-{key}", load_figure(doc, key)))
    figs += [("instances-requests", instance_figure(doc, "requests")),
             ("instances-prefill", instance_figure(doc, "prefill_tokens_computed"))]
    if doc["router_state"].get("run"):
        figs.append(("router-state", router_state_figure(doc)))
    return figs


def _fmt(x: Any, fmt: str = "{:.3g}") -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return fmt.format(x)
    return str(x)


def _grid(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _ci(e: Mapping[str, Any], scale: float = 1.0) -> str:
    if e["mean"] is None:
        return "-"
    lo, hi = e["min"], e["max"]
    band = "" if lo is None or hi is None or lo == hi else f" [{lo * scale:.3g}, {hi * scale:.3g}]"
    return f"{e['mean'] * scale:.3g}{band}"


def render_html(doc: Mapping[str, Any]) -> str:
    """The self-contained page: verdict, settings, per-load table, plots, hot-prefix risk,
    harm detectability, vLLM confirmation and router-state sensitivity."""
    doc = check_advice(doc)
    v, wl, cfg = doc["verdict"], doc["workload"], doc["config"]
    cls = {"win": "win", "lose": "lose", "tie": "tie"}.get(v["outcome"], "mixed")
    verdict = (f"<div id=\"verdict\" class=\"verdict {cls}\"><h2>"
               f"{html.escape(verdict_headline(doc))}</h2><ul>"
               + "".join(f"<li>{html.escape(a['text'])}</li>" for a in v["against"])
               + f"</ul><p class=\"rule\">{html.escape(v['rule'])}; metric {html.escape(v['metric'])}"
               f", {v['seeds']} seeds.</p></div>")
    sat = doc["saturation"]
    settings = _grid(["setting", "value"], [
        ["workload", f"{wl['source']} ({wl['requests']} requests, {wl['mode']})"],
        ["instances / preset", f"{cfg['instances']} / {cfg['preset']}"],
        ["engine", cfg["engine"]],
        ["current policies", ", ".join(cfg["current"])],
        ["policies run", ", ".join(f"{n} = {cfg['policies_resolved'][n]}" for n in cfg["policies"])],
        ["SLO", "none" if cfg["slo"] is None else ", ".join(
            f"{k}={x:g}" for k, x in cfg["slo"].items() if x is not None)],
        ["saturation", "-" if sat is None else f"{sat['axis']} {sat['scale']:g} under "
                                                f"{cfg['saturation_policy']}"],
        ["loads", ", ".join(f"{ld['label']} = {ld['value']:.3g}" for ld in doc["loads"])],
        ["runtime (s)", f"{doc['runtime_s']['total']:.1f}"],
    ])
    has_slo = cfg["slo"] is not None
    head = ["load", "policy", "TTFT mean (s)", "TTFT p99 (s)", "TPOT mean (ms)", "ITL p99 (ms)"]
    if has_slo:
        head += ["goodput (req/s)", "SLO attainment"]
    body = []
    for r in doc["summary"]:
        row = [r["load"], r["policy"], _ci(r["ttft_mean_s"]), _ci(r["ttft_p99_s"]),
               _ci(r["tpot_mean_s"], 1e3), _ci(r["itl_p99_s"], 1e3)]
        if has_slo:
            row += [_ci(r["goodput_rps"]), _ci(r["slo_attainment"])]
        body.append(row)
    table = _grid(head, body)
    comp = _grid(["load", "vs", "metric", "change (mean)", "seed range", "outcome"],
                 [[c["load"], c["other"], c["metric"], None if c["pct"] is None else f"{c['pct']:+.1f}%",
                   "-" if c["pct_min"] is None else f"{c['pct_min']:+.1f}% .. {c['pct_max']:+.1f}%",
                   c["outcome"]] for c in doc["comparisons"]])
    plots = "".join(
        f"<div class=\"plot\" id=\"{fid}\">"
        + f.to_html(full_html=False, include_plotlyjs=(k == 0), config={"displaylogo": False},
                    div_id=f"{fid}-figure")
        + "</div>" for k, (fid, f) in enumerate(figures(doc)))
    hot = doc["hotspots"]
    hot_html = f"<p>{html.escape(hot['text'])}</p>" + (_grid(
        ["class", "share", "cached instances", "phase 1", "phase 2", "condition (l)", "mitigation"],
        [[h["class"], h["share"], ", ".join(map(str, h["cached_instances"])), h["phase1_decision"],
          h["phase2_decision"], h["condition_holds"], h["mitigation"]] for h in hot["classes"]])
        if hot["classes"] else "")
    harm = doc["harm"]
    harm_html = f"<p>{html.escape(harm['text'])}</p>"
    if harm.get("run"):
        harm_html += _grid(["signal", "AUROC", "95% interval", "n"],
                           [[k, a["value"], "-" if not a.get("ci95") or a["ci95"][0] is None
                             else f"[{a['ci95'][0]:.2f}, {a['ci95'][1]:.2f}]", a["n"]]
                            for k, a in harm["auroc"].items()])
    c = doc["confirm_vllm"]
    conf = "<p>Not run (use --confirm-vllm N).</p>" if c is None else (
        f"<p>First {c['requests']} requests at {html.escape(c['load'])}, seed 0.</p>"
        + _grid(["policy", "fast TTFT mean (s)", "vLLM TTFT mean (s)", "fast TPOT mean (s)",
                 "vLLM TPOT mean (s)"],
                [[p["policy"], p["fast_ttft_mean_s"], p["vllm_ttft_mean_s"], p["fast_tpot_mean_s"],
                  p["vllm_tpot_mean_s"]] for p in c["policies"]])
        + _grid(["lmetric vs", "fast engine", "vLLM engine"],
                [[ch["other"], None if ch["fast_pct"] is None else f"{ch['fast_pct']:+.1f}%",
                  None if ch["vllm_pct"] is None else f"{ch['vllm_pct']:+.1f}%"]
                 for ch in c["changes"]]))
    rs = doc["router_state"]
    su = rs["setup"]
    router = (f"<p>The sweep ran with R = {su['router_replicas']} router replica(s) "
              f"({html.escape(su['replica_assignment'])}), KV-event lag {su['kv_event_lag_s']:g} s, "
              f"signal delay {su['signal_delay_s']:g} s, index {html.escape(su['index'])}.</p>"
              f"<p>{html.escape(rs.get('text', ''))}</p>")
    if rs.get("run"):
        router += _grid(["setting", "vs", "metric", "change (mean)", "seed range", "outcome"],
                        [[x["load"], x["other"], x["metric"],
                          None if x["pct"] is None else f"{x['pct']:+.1f}%",
                          "-" if x["pct_min"] is None else
                          f"{x['pct_min']:+.1f}% .. {x['pct_max']:+.1f}%", x["outcome"]]
                         for x in rs["comparisons"]])
    style = ("body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
             "th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}"
             "th{background:#f4f4f4}.verdict{padding:0.6em 1.2em;border-radius:6px;"
             "border:2px solid #888}.win{background:#e8f6e8;border-color:#3a3}"
             ".lose{background:#fbeaea;border-color:#c33}.tie,.mixed{background:#f6f3e6;"
             "border-color:#b93}.rule{font-size:12px;color:#555}")
    title = f"Should this workload use LMetric? {html.escape(str(wl['source']))}"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{title}</title><style>{style}</style></head><body>"
            f"<h1>{title}</h1>{verdict}<h2>Settings</h2>{settings}"
            f"<h2>Per load (mean over seeds [min, max]; 95% t intervals in advice.json)</h2>{table}"
            f"<h2>Plots</h2>{plots}"
            f"<h2>LMetric against each policy, paired by seed</h2>{comp}"
            f"<h2>Hot-prefix risk at {html.escape(hot['load'])}</h2>{hot_html}"
            f"<h2>Is harm detectable at {html.escape(harm['load'])}?</h2>{harm_html}"
            f"<h2>vLLM confirmation</h2>{conf}"
            f"<h2>Router replicas and KV-event lag</h2>{router}"
            "</body></html>\n")


def write_advice(doc: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``advice.json`` and ``advice.html`` into ``out_dir`` (created if needed); both
    contents are built before either file is touched, each written atomically.

    Returns
    -------
    (Path, Path)
        The JSON and HTML paths.
    """
    out = Path(out_dir)
    text = advice_json(doc)
    page = render_html(json.loads(text))
    return atomic_write_text(out / JSON_NAME, text), atomic_write_text(out / HTML_NAME, page)
