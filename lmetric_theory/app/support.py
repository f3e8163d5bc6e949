"""Presentation helpers for the Streamlit app (``lmetric_theory.app.pages``): figures, formulas,
examples.

Everything here is pure: it turns library results into plotly figures, LaTeX strings and
tables; no Streamlit calls, no files. The pages stay thin (read widgets, call the
library, render what these helpers return).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go

from lmetric_theory.audit import AuditReport, audit_workload
from lmetric_theory.core.kernel import linear_scores, product_scores
from lmetric_theory.detector import Detector, LinearReference, Snapshot, Verdict, Verdicts
from lmetric_theory.experiments.regions import RegionMap
from lmetric_theory.workload import Workload, parse_trace

__all__ = [
    "EXAMPLE_SNAPSHOTS",
    "MAX_INSTANCES",
    "MAX_UPLOAD_MB",
    "AuditView",
    "audit_for_app",
    "read_jsonl_upload",
    "REGION_COLOURS",
    "REGION_LABELS",
    "TableCheck",
    "check_table",
    "records_from_json",
    "router_state_rows",
    "worst_rows",
    "pair_view_ranges",
    "region_figure",
    "theory_latex",
]

#: Label of each region code (index = code) in the app's vocabulary: instance 1 is the fixed
#: one, instance 2 the plotted state.
REGION_LABELS: tuple[str, ...] = (
    "both prefer instance 1",
    "both prefer instance 2",
    "only the product prefers instance 2",
    "only the linear score prefers instance 2",
)

#: Colour of each region code (index = code): agree regions pale, disagreements strong.
REGION_COLOURS: tuple[str, ...] = ("#dbe9f6", "#e6f2df", "#d62728", "#ff7f0e")

#: Preloaded examples of the snapshot checker: name -> settings. ``P`` tokens, ``B``
#: requests, offsets ``p0``/``b0``, reference rate ``lam`` and band (tokens per slot).
EXAMPLE_SNAPSHOTS: dict[str, dict[str, Any]] = {
    "Plain disagreement": {
        "P": [1800, 300, 1500],
        "B": [1, 9, 6],
        "p0": 0,
        "b0": 1,
        "lam": 200.0,
        "lam_lo": 200.0,
        "lam_hi": 200.0,
        "note": "#0 needs 1500 more prefill tokens than #1 but has 8 fewer requests. The pair "
        "breaks even at λ* = 187.5; the product acts with λ_eff = 175, the reference "
        "with λ = 200, on the other side: they pick different instances.",
    },
    "Zero-prefill hot-spot": {
        "P": [0, 2048, 1536],
        "B": [14, 1, 2],
        "p0": 0,
        "b0": 1,
        "lam": 100.0,
        "lam_lo": 50.0,
        "lam_hi": 200.0,
        "note": "#0 holds the whole prompt in cache: with p0 = 0 its product score is 0 however "
        "loaded it is, so every such request piles onto it.",
    },
    "Idle tie": {
        "P": [4096, 128, 2048],
        "B": [0, 0, 3],
        "p0": 0,
        "b0": 0,
        "lam": 100.0,
        "lam_lo": 100.0,
        "lam_hi": 100.0,
        "note": "With b0 = 0 every idle instance scores 0: the product cannot tell the idle "
        "instance with 4096 uncached tokens from the one with 128; the index decides.",
    },
}

#: Largest table the snapshot checker accepts (instances).
MAX_INSTANCES = 256


@dataclass(frozen=True, slots=True)
class TableCheck:
    """The detector's verdict on a table of instances, ready to display.

    Attributes
    ----------
    verdict : Verdict
        From :meth:`lmetric_theory.detector.Detector.check`.
    instance_ids : tuple of str
        Instance names, table order.
    P, B : tuple of int or float
        Prefill tokens and batch sizes as checked.
    rows : tuple of dict
        Per instance: id, P, B, product score, linear score, and which score picks it.
    findings : tuple of dict
        Per finding: kind, severity, message, mitigation.
    """

    verdict: Verdict
    instance_ids: tuple[str, ...]
    P: tuple[int | float, ...]
    B: tuple[int | float, ...]
    rows: tuple[dict[str, Any], ...]
    findings: tuple[dict[str, str], ...]


def _cell(value: object, row: int, column: str) -> int | float:
    """A table cell as a finite nonnegative number (never evaluated as code)."""
    if value is None or isinstance(value, str | bool):
        what = "empty" if value is None or value == "" else f"not a number ({value!r})"
        raise ValueError(f"row {row}, column {column}: {what}")
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"row {row}, column {column}: not a number ({value!r})") from None
    if math.isnan(v):
        raise ValueError(f"row {row}, column {column}: empty")
    if math.isinf(v):
        raise ValueError(f"row {row}, column {column}: infinite")
    if v < 0:
        raise ValueError(f"row {row}, column {column}: negative ({v:g})")
    return int(v) if v.is_integer() and abs(v) < 2**31 else v


def check_table(
    records: Sequence[Mapping[str, object]],
    *,
    lam: float,
    lam_lo: float | None = None,
    lam_hi: float | None = None,
    p0: float = 0,
    b0: float = 1,
) -> TableCheck:
    """Run the detector on a table of instances (the snapshot checker's one call).

    Parameters
    ----------
    records : sequence of mapping
        One row per instance with keys ``"instance"`` (name, optional), ``"P"`` (prefill
        tokens) and ``"B"`` (batch size, requests). Rows whose cells are all empty are
        ignored (an editor's blank new row).
    lam : float
        Reference rate, tokens per batch slot.
    lam_lo, lam_hi : float, optional
        Reference band (defaults: ``lam``).
    p0, b0 : float
        Product offsets.

    Returns
    -------
    TableCheck

    Raises
    ------
    ValueError
        Naming the row and column (1-based rows) or the setting that is wrong.
    """
    ids: list[str] = []
    P: list[int | float] = []
    B: list[int | float] = []
    for k, rec in enumerate(records, start=1):
        cells = [rec.get(c) for c in ("instance", "P", "B")]
        if all(c is None or c == "" or (isinstance(c, float) and math.isnan(c)) for c in cells):
            continue
        P.append(_cell(rec.get("P"), k, "P"))
        B.append(_cell(rec.get("B"), k, "B"))
        name = rec.get("instance")
        ok = name is not None and not (isinstance(name, float) and math.isnan(name))
        ids.append(str(name) if ok and str(name) else f"#{len(ids)}")
    if not P:
        raise ValueError("table: no instances (add at least one row with P and B)")
    if len(P) > MAX_INSTANCES:
        raise ValueError(f"table: {len(P)} instances; at most {MAX_INSTANCES} are accepted")
    ref = LinearReference(
        lam,
        lam if lam_lo is None else lam_lo,
        lam if lam_hi is None else lam_hi,
        source="band" if lam_lo is not None or lam_hi is not None else "fixed",
    )
    det = Detector(ref, p0, b0)
    verdict = det.check(Snapshot(P, B, instance_ids=tuple(ids)))
    s = product_scores(np.asarray(P), np.asarray(B), det.prefill_offset, det.batch_offset)
    c = linear_scores(np.asarray(P), np.asarray(B), ref.lam)
    rows = tuple(
        {
            "instance": ids[i],
            "P": P[i],
            "B": B[i],
            "product score": s[i].item(),
            "linear score": c[i].item(),
            "product picks": i == verdict.product_choice,
            "linear picks": i == verdict.linear_choice,
        }
        for i in range(len(P))
    )
    findings = tuple(
        {
            "kind": f.kind,
            "severity": str(f.severity),
            "message": f.message,
            "mitigation": f.mitigation.message,
        }
        for f in verdict.findings
    )
    return TableCheck(verdict, tuple(ids), tuple(P), tuple(B), rows, findings)


#: Placeholder of the paste-JSON box on the snapshot page (the snapshot-file schema).
SNAPSHOT_JSON_EXAMPLE = ('{"prefill_tokens": [1200, 0, 640], "batch_size": [3, 9, 4], '
                         '"instance_ids": ["a", "b", "c"]}')


def records_from_json(text: str) -> list[dict[str, Any]]:
    """Table rows of a snapshot pasted as JSON (one line of a snapshot file).

    Accepts an object with ``prefill_tokens`` and ``batch_size`` (arrays of the same length
    N >= 1) and optional ``instance_ids`` (N strings); other keys of the snapshot-file schema
    are ignored. Cell values are checked by :func:`check_table`.

    Raises
    ------
    ValueError
        One line naming the field: not JSON, not an object, a missing or non-array field,
        or arrays of different lengths.
    """
    import json

    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"pasted JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if not isinstance(obj, dict):
        raise ValueError("pasted JSON: expected an object like " + SNAPSHOT_JSON_EXAMPLE)
    cols = {}
    for key in ("prefill_tokens", "batch_size"):
        if key not in obj:
            raise ValueError(f"pasted JSON: field {key!r} missing (an array of N numbers >= 0)")
        if not isinstance(obj[key], list) or not obj[key]:
            raise ValueError(f"pasted JSON: field {key!r} must be a non-empty array of numbers")
        cols[key] = obj[key]
    n = len(cols["prefill_tokens"])
    if len(cols["batch_size"]) != n:
        raise ValueError(f"pasted JSON: 'prefill_tokens' has {n} values, 'batch_size' "
                         f"{len(cols['batch_size'])}")
    if n > MAX_INSTANCES:
        raise ValueError(f"pasted JSON: {n} instances, at most {MAX_INSTANCES}")
    ids = obj.get("instance_ids")
    if ids is None:
        ids = [f"#{i}" for i in range(n)]
    elif (not isinstance(ids, list) or len(ids) != n
          or not all(isinstance(x, str) for x in ids)):
        raise ValueError(f"pasted JSON: field 'instance_ids' must be an array of {n} strings")
    return [{"instance": ids[i], "P": cols["prefill_tokens"][i], "B": cols["batch_size"][i]}
            for i in range(n)]


def _sig(x: Any, digits: int = 4) -> Any:
    """A number rounded to ``digits`` significant figures for display (``None`` stays)."""
    if x is None or isinstance(x, bool) or not isinstance(x, int | float):
        return x
    if not math.isfinite(x) or x == 0:
        return x
    return float(f"{x:.{digits}g}")


def worst_rows(worst: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The report's worst decisions as table rows with readable headers and values rounded
    to 4 significant figures (time to 0.01 s)."""
    return [
        {
            "decision": w["decision"],
            "time (s)": round(float(w["time_s"]), 2) if w.get("time_s") is not None else None,
            "product picks": w["product_choice"],
            "linear picks": w["linear_choice"],
            "regret (tokens)": _sig(w["regret_tokens"]),
            "λ_eff (tokens/slot)": _sig(w["lam_eff"]),
            "λ* (tokens/slot)": _sig(w["lam_star"]),
        }
        for w in worst
    ]


def router_state_rows(entries: Sequence[Any]) -> list[dict[str, Any]]:
    """The report's router-state findings (``RouterStateEntry``) as table rows with
    readable headers."""
    return [
        {
            "finding": e.kind.replace("_", " "),
            "first decision": e.first_decision,
            "mitigation": e.mitigation.replace("_", " ")
            + ("" if e.mitigation_value is None else f" ({e.mitigation_value:g})"),
            "what was found": e.message,
        }
        for e in entries
    ]


@functools.cache
def theory_latex(keys: tuple[str, ...] = ("pairwise_identity", "disagreement", "geometry")) -> tuple[
    tuple[str, str, tuple[str, ...]], ...
]:
    """LaTeX of the named theory results, from :func:`lmetric_theory.theory.derive`.

    Returns
    -------
    tuple of (title, statement, latex formulas)
        One entry per key, in order. Cached per process (the derivation costs ~1 s once).
    """
    from lmetric_theory.theory import derive
    from lmetric_theory.theory.render import formula_latex

    d = derive()
    out = []
    for key in keys:
        r = d.result(key)
        out.append((f"({r.item}) {r.title}", r.statement,
                    tuple(formula_latex(f) for f in r.formulas)))
    return tuple(out)


def _finite_xy(x: np.ndarray, y: np.ndarray, y_lo: float, y_hi: float) -> tuple[list, list]:
    """Curve points with y clipped to a margin around the axis range (``None`` breaks the
    line where it leaves the view or is undefined)."""
    span = y_hi - y_lo
    lo, hi = y_lo - span, y_hi + span
    xs, ys = [], []
    for a, b in zip(x.tolist(), y.tolist(), strict=True):
        xs.append(a)
        ys.append(b if math.isfinite(b) and lo <= b <= hi else None)
    return xs, ys


def region_figure(
    rm: RegionMap,
    *,
    marker: tuple[float, float] | None = None,
    marker_label: str = "instance 2",
    height: int = 560,
) -> go.Figure:
    """Heatmap of the four regions with the hyperbola, the line and their intersections.

    Parameters
    ----------
    rm : RegionMap
        From :func:`lmetric_theory.experiments.regions.compute_regions`.
    marker : (float, float), optional
        A state ``(P, B)`` of instance 2 to mark (tokens, requests).
    marker_label : str
        Legend name of that marker.
    height : int
        Figure height, pixels.

    Returns
    -------
    plotly.graph_objects.Figure
    """
    n = len(REGION_LABELS)
    # Discrete colour scale: code k occupies [k/n, (k+1)/n].
    scale = []
    for k, c in enumerate(REGION_COLOURS):
        scale += [[k / n, c], [(k + 1) / n, c]]
    fig = go.Figure()
    fig.add_trace(
        go.Heatmap(
            x=rm.P,
            y=rm.B,
            z=rm.region,
            zmin=-0.5,
            zmax=n - 0.5,
            colorscale=scale,
            showscale=False,
            hovertemplate="P_2=%{x:.4g} tokens<br>B_2=%{y:.4g} requests<br>region %{z} "
            "(see legend order 0-3)<extra></extra>",
            name="regions",
        )
    )
    # Legend entries for the regions (heatmaps have no legend of their own).
    for k, label in enumerate(REGION_LABELS):
        fig.add_trace(
            go.Scatter(x=[None], y=[None], mode="markers", name=label,
                       marker={"color": REGION_COLOURS[k], "size": 12, "symbol": "square"})
        )
    b_lo, b_hi = float(rm.B[0]), float(rm.B[-1])
    xs, ys = _finite_xy(rm.P, rm.product_curve, b_lo, b_hi)
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name="product iso-curve through instance 1",
                             line={"color": "black", "width": 2}))
    if rm.lam > 0:
        xs, ys = _finite_xy(rm.P, rm.linear_curve, b_lo, b_hi)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name="linear iso-line through instance 1",
                                 line={"color": "black", "width": 2, "dash": "dash"}))
    else:  # lam = 0: the linear score is P alone, its iso-line is vertical at P_1
        fig.add_trace(go.Scatter(x=[rm.P_A, rm.P_A], y=[b_lo, b_hi], mode="lines",
                                 name="linear iso-line through instance 1",
                                 line={"color": "black", "width": 2, "dash": "dash"}))
    pts = rm.intersections
    fig.add_trace(go.Scatter(x=[pts[0][0]], y=[pts[0][1]], mode="markers", name="instance 1",
                             marker={"color": "black", "size": 11, "symbol": "circle"}))
    if len(pts) > 1:
        fig.add_trace(go.Scatter(x=[pts[1][0]], y=[pts[1][1]], mode="markers",
                                 name="second intersection",
                                 marker={"color": "black", "size": 11, "symbol": "x"}))
    if marker is not None:
        fig.add_trace(go.Scatter(x=[marker[0]], y=[marker[1]], mode="markers",
                                 name=marker_label,
                                 marker={"color": "#9467bd", "size": 13, "symbol": "star",
                                         "line": {"color": "black", "width": 1}}))
    fig.update_xaxes(title="P_2: prefill tokens of instance 2", range=_range(rm.P, rm.log_p),
                     type="log" if rm.log_p else "linear")
    fig.update_yaxes(title="B_2: batch size of instance 2 (requests)",
                     range=_range(rm.B, rm.log_b), type="log" if rm.log_b else "linear")
    fig.update_layout(height=height, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      legend={"orientation": "h", "y": -0.15})
    return fig


def _range(v: np.ndarray, log: bool) -> list[float]:
    lo, hi = float(v[0]), float(v[-1])
    return [math.log10(lo), math.log10(hi)] if log else [lo, hi]


def pair_view_ranges(
    points: Sequence[tuple[float, float]],
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Axis ranges (P tokens, B requests) that show the given ``(P, B)`` states with margin:
    from 0 to twice the largest coordinate (at least 16 tokens and 4 requests)."""
    p_hi = max(16.0, 2.0 * max(float(p) for p, _ in points))
    b_hi = max(4.0, 2.0 * max(float(b) for _, b in points))
    return (0.0, p_hi), (0.0, b_hi)


# ============================================================================ trace audit

#: Largest trace upload the app accepts, megabytes (the page states it).
MAX_UPLOAD_MB = 25


def read_jsonl_upload(
    name: str,
    data: bytes,
    *,
    skip_bad_lines: bool = False,
    max_mb: float = MAX_UPLOAD_MB,
) -> Workload:
    """Turn an uploaded Mooncake / Bailian / generic JSON Lines trace into a Workload.

    Parameters
    ----------
    name : str
        File name, used in messages.
    data : bytes
        The file content.
    skip_bad_lines : bool
        Skip and count invalid lines (``meta["skipped_lines"]``) instead of failing.
    max_mb : float
        Size limit, megabytes.

    Raises
    ------
    ValueError
        Too large, empty, not UTF-8, not JSON Lines (the first non-blank line is not a JSON
        object), or a bad line (:class:`~lmetric_theory.workload.TraceError`: file, line,
        field and reason).
    """
    limit = int(max_mb * 2**20)
    if len(data) > limit:
        raise ValueError(
            f"{name}: {len(data) / 2**20:.1f} MB exceeds the upload limit of {max_mb:g} MB"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ValueError(f"{name}, line {line}: not UTF-8 text ({exc.reason})") from None
    lines = text.replace("\r\n", "\n").split("\n")
    first = next(((k, ln) for k, ln in enumerate(lines, start=1) if ln.strip()), None)
    if first is None:
        raise ValueError(f"{name}: the file is empty")
    k, ln = first
    if not ln.lstrip().startswith("{"):
        snippet = ln.strip()[:60]
        raise ValueError(
            f"{name}, line {k}: not JSON Lines — expected one JSON object per line "
            f"(Mooncake, Bailian or generic JSONL), found {snippet!r}"
        )
    return parse_trace(lines, source=name, format="auto", skip_bad_lines=skip_bad_lines)


@dataclass(frozen=True, slots=True, eq=False)
class AuditView:
    """What the trace-audit page shows.

    Attributes
    ----------
    source : str
        Trace name.
    time_s : np.ndarray, shape (D,), float64
        Decision times, seconds.
    verdicts : Verdicts
        The detector's verdict on every decision (``D`` decisions over ``N`` instances).
    report : AuditReport or None
        The audit's report (``report.to_json()`` is ``lmetric-theory audit --json``).
    lam, lam_lo, lam_hi : float
        Reference rate and band, tokens per batch slot.
    p0, b0 : float
        Product offsets.
    """

    source: str
    time_s: np.ndarray
    verdicts: Verdicts
    report: AuditReport | None = None
    lam: float = 0.0
    lam_lo: float = 0.0
    lam_hi: float = 0.0
    p0: float = 0.0
    b0: float = 1.0


def audit_for_app(
    workload: Workload,
    *,
    source: str,
    instances: int,
    lam: float,
    lam_lo: float,
    lam_hi: float,
    p0: float = 0,
    b0: float = 1,
    top: int = 20,
    progress: Callable[[float], None] | None = None,
    reference: LinearReference | None = None,
    router_state: dict[str, Any] | None = None,
) -> AuditView:
    """Audit a workload for the trace-audit page (its one library call).

    Calls :func:`lmetric_theory.audit.audit_workload`: the workload is replayed under
    ``lmetric`` in the simulator and every routing decision is checked against the linear
    reference.

    Parameters
    ----------
    workload : Workload
        Requests to replay.
    source : str
        Trace name, shown on the page and recorded as the report's ``trace.source``.
    instances : int
        Number of serving instances, 1..64.
    lam, lam_lo, lam_hi : float
        Reference rate and band, tokens per batch slot.
    p0, b0 : float
        Product offsets.
    top : int
        Worst decisions to keep.
    progress : callable, optional
        Called with the fraction done, in [0, 1].
    reference : LinearReference, optional
        Use this reference instead of ``lam``/``lam_lo``/``lam_hi`` (the page passes the
        CLI's default, :func:`lmetric_theory.audit.default_reference`).
    router_state : dict, optional
        The replay's router replicas, KV event lag and index
        (:func:`router_state_for_app`); None: one router with exact state.

    Raises
    ------
    ValueError
        Bad settings (instances, band) or an unusable trace.
    """
    if not 1 <= int(instances) <= 64:
        raise ValueError(f"instances: must lie in [1, 64], got {instances}")
    ref = reference if reference is not None else LinearReference(
        lam, lam_lo, lam_hi, source="band" if lam_lo < lam_hi else "fixed")
    res = audit_workload(workload, instances=int(instances), reference=ref, prefill_offset=p0,
                         batch_offset=b0, top=top, progress=progress, source=source,
                         router_state=router_state)
    return AuditView(source, np.asarray(res.time_s, dtype=np.float64), res.verdicts,
                     res.report, ref.lam, ref.lam_lo, ref.lam_hi, p0, b0)


#: Preset of the simulate page (the CLI's default).
SIM_PRESET = "h100-llama3-8b-calibrated"


def router_state_for_app(replicas: int, kv_event_lag_s: float, index: str) -> dict[str, Any]:
    """The :class:`~lmetric_theory.sim.SimConfig` router-state settings of the app's pages
    (the CLI's ``--router-replicas``, ``--kv-event-lag``, ``--index``; docs/router_state.md).

    Parameters
    ----------
    replicas : int
        Router replicas, each counting only its own dispatches (>= 1).
    kv_event_lag_s : float
        How late the index sees block stored/removed events, seconds (finite, >= 0).
    index : str
        ``precise``, ``approximate``, ``approximate:ttl=S`` or ``approximate:lru=N``.

    Returns
    -------
    dict
        ``router_replicas``, ``kv_event_lag_s`` and ``index`` (typed).

    Raises
    ------
    ValueError
        One line naming the bad setting.
    """
    from lmetric_theory.sim.routerstate import parse_index

    if isinstance(replicas, bool) or int(replicas) != replicas or int(replicas) < 1:
        raise ValueError(f"router replicas: must be an integer >= 1, got {replicas}")
    lag = float(kv_event_lag_s)
    if not (math.isfinite(lag) and lag >= 0):
        raise ValueError(f"KV event lag: must be a finite number of seconds >= 0, got {lag}")
    return {"router_replicas": int(replicas), "kv_event_lag_s": lag,
            "index": parse_index(index.strip() or "precise")}


def simulate_for_app(workload: Workload, *, instances: int, policies: Sequence[str],
                     slo: Any = None, preset: str = SIM_PRESET, seed: int = 0,
                     router_state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Replay ``workload`` under each policy (the simulate page's one library call).

    Runs the fast engine with the CLI's defaults (``lmetric-theory simulate``: the preset,
    the ``vllm-v1`` scheduler, precise view) and reduces each run with
    :func:`lmetric_theory.sim.metrics.compute_metrics`.

    Parameters
    ----------
    workload : Workload
        Requests to replay.
    instances : int
        Number of serving instances, 1..64.
    policies : sequence of str
        Policy specs ``NAME[:key=value,...]``, read once here.
    slo : Slo or None
        Objective of the SLO attainment and goodput.
    preset : str
        Hardware preset name.
    seed : int
        Policy seed.
    router_state : dict, optional
        Router replicas, KV event lag and index (:func:`router_state_for_app`); None: one
        router with exact state.

    Returns
    -------
    dict
        Policy spec -> :class:`~lmetric_theory.sim.metrics.Metrics`, in the order given.

    Raises
    ------
    ValueError
        Bad settings, an unknown policy or no policy.
    """
    from lmetric_theory.experiments.tuning import resolve_policy
    from lmetric_theory.policies import parse_spec
    from lmetric_theory.sim import SimConfig, Simulator, load_preset
    from lmetric_theory.sim.metrics import compute_metrics

    if not 1 <= int(instances) <= 64:
        raise ValueError(f"instances: must lie in [1, 64], got {instances}")
    if not policies:
        raise ValueError("choose at least one policy")
    cfg = SimConfig.from_preset(load_preset(preset), int(instances), record_snapshots=False,
                                **(router_state or {}))
    out: dict[str, Any] = {}
    for spec in policies:
        typed = resolve_policy(parse_spec(spec), workload, cfg, seed=seed)
        res = Simulator(workload, cfg, typed, seed=seed).run()
        out[spec] = compute_metrics(res, slo, workload)
    return out


def metrics_rows(by_policy: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per policy of the deployers' metrics, readable headers, units in them
    (4 significant figures; ``None`` where undefined; SLO columns only with an SLO)."""
    rows = []
    for spec, m in by_policy.items():
        def s(x: float, scale: float = 1.0) -> Any:
            return _sig(x * scale) if math.isfinite(x) else None

        row = {"policy": spec, "done": m.completed, "TTFT p50 (s)": s(m.ttft_p50_s),
               "TTFT p90 (s)": s(m.ttft_p90_s), "TTFT p95 (s)": s(m.ttft_p95_s),
               "TTFT p99 (s)": s(m.ttft_p99_s), "ITL p50 (ms)": s(m.itl_p50_s, 1e3),
               "ITL p99 (ms)": s(m.itl_p99_s, 1e3), "TPOT mean (ms)": s(m.tpot_mean_s, 1e3),
               "TPOT p99 (ms)": s(m.tpot_p99_s, 1e3), "E2E p50 (s)": s(m.e2e_p50_s),
               "E2E p99 (s)": s(m.e2e_p99_s), "req/s": s(m.request_throughput_rps),
               "output tok/s": s(m.output_throughput_tok_s),
               "prefix hit": s(m.prefix_hit_rate), "Jain (requests)": s(m.requests_jain),
               "Jain (prefill)": s(m.prefill_jain),
               "max/mean (prefill)": s(m.prefill_max_over_mean)}
        if m.slo is not None:
            row["SLO attainment"] = s(m.slo_attainment)
            row["goodput (req/s)"] = s(m.goodput_rps)
        if m.sessions:
            row["sessions"] = m.sessions
            row["session p50 (s)"] = s(m.session_duration_p50_s)
            row["session wait p50 (s)"] = s(m.session_wait_p50_s)
        rows.append(row)
    return rows


def instance_rows(by_policy: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per policy and instance: requests routed and prefill tokens computed."""
    rows = []
    for spec, m in by_policy.items():
        for i, (r, p) in enumerate(zip(m.instance_requests, m.instance_prefill_tokens,
                                       strict=True)):
            rows.append({"policy": spec, "instance": i, "requests": r,
                         "prefill tokens computed": p})
    return rows


def advice_from_upload(name: str, data: bytes, *, max_mb: float = MAX_UPLOAD_MB) -> dict[str, Any]:
    """A saved advice report (``advice.json`` of ``lmetric-theory advise --out``) from an upload.

    Raises
    ------
    ValueError
        Too large, not UTF-8, not JSON, or not an advice document (naming what is missing).
    """
    import json

    from lmetric_theory.io.advise import check_advice

    if len(data) > int(max_mb * 2**20):
        raise ValueError(f"{name}: {len(data) / 2**20:.1f} MB exceeds the upload limit of {max_mb:g} MB")
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{name}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name}: not JSON (line {exc.lineno}: {exc.msg})") from None
    try:
        return check_advice(doc)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def advice_rows(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The per-load table of an advice document: mean over seeds of each metric (seconds,
    TPOT and ITL in milliseconds, goodput in requests per second)."""
    out = []
    for r in doc["summary"]:
        row: dict[str, Any] = {"load": r["load"], "policy": r["policy"],
                               "TTFT mean (s)": _sig(r["ttft_mean_s"]["mean"]),
                               "TTFT p99 (s)": _sig(r["ttft_p99_s"]["mean"]),
                               "TPOT mean (ms)": _sig(None if r["tpot_mean_s"]["mean"] is None
                                                      else 1e3 * r["tpot_mean_s"]["mean"]),
                               "ITL p99 (ms)": _sig(None if r["itl_p99_s"]["mean"] is None
                                                    else 1e3 * r["itl_p99_s"]["mean"])}
        if "goodput_rps" in r:
            row["goodput (req/s)"] = _sig(r["goodput_rps"]["mean"])
        out.append(row)
    return out
