"""Audit routing decisions of the product score against a linear reference.

Two entry points build the same report:

- :func:`audit_workload` replays a workload under the ``lmetric`` policy in the reference
  simulator, turns every recorded router view into ``P`` and ``B`` (per the chosen
  definitions) and checks all decisions at once with :meth:`Detector.check_many`.
- :func:`audit_snapshots` checks decisions captured from a live router: arrays of ``P`` and
  ``B`` of shape (D, N), e.g. read by :func:`load_snapshots` from a snapshot JSON Lines file
  (schema in ``docs/audit.md``).

The report (:attr:`AuditResult.report`) is an :class:`~lmetric_theory.audit.results.AuditReport`;
its ``to_json()`` (strict JSON: non-finite numbers are ``None``) has the keys of
``lmetric-theory audit --json``. The audit layer reads
snapshot files but never prints; :mod:`lmetric_theory.io.report` writes the JSON and HTML.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np

from lmetric_theory.audit.references import DEFAULT_PRESET, _load_preset
from lmetric_theory.audit.results import AuditResult, _build_report
from lmetric_theory.audit.snapshots import load_snapshots
from lmetric_theory.core.definitions import (
    LMETRIC_VARIANTS,
    BDefinition,
    PDefinition,
    ScoreDefinition,
)
from lmetric_theory.core.signals import score_inputs
from lmetric_theory.detector import (
    Detector,
    LinearReference,
)
from lmetric_theory.policies import policy_spec

__all__ = ["audit_snapshot_file", "audit_snapshots", "audit_workload"]


_PROGRESS_STEPS = 20


def audit_workload(
    workload: Any,
    *,
    instances: int,
    reference: LinearReference,
    prefill_offset: float = 0,
    batch_offset: float = 1,
    top: int = 10,
    progress: Callable[[float], None] | None = None,
    preset: Any = DEFAULT_PRESET,
    p_definition: str | None = None,
    b_definition: str | None = None,
    seed: int = 0,
    source: str | None = None,
    variant: str = "paper",
    concurrency: int | None = None,
    router_state: dict[str, Any] | None = None,
) -> AuditResult:
    """Replay ``workload`` under ``lmetric`` in the simulator and check every decision.

    The policy is ``lmetric`` with the given definitions and offsets, so the product's
    choice in the verdicts is the instance each request was actually sent to.

    Parameters
    ----------
    workload : Workload
        Requests to replay (``meta["source"]``, ``meta["skipped_lines"]`` go to the report).
    instances : int
        Number of serving instances ``N`` (>= 1).
    reference : LinearReference
        Linear score to compare with (rate and band, tokens per batch slot).
    prefill_offset, batch_offset : float
        ``p0`` (tokens) and ``b0`` (requests) of the product score (>= 0).
    top : int
        Number of worst decisions (by regret) in the report.
    progress : callable, optional
        Called with the fraction done, in [0, 1] (last call 1.0).
    preset : str or Preset
        Simulator hardware preset.
    p_definition : str, optional
        What ``P`` counts (a :class:`PDefinition` value); default: the variant's.
    b_definition : str, optional
        What ``B`` counts (a :class:`BDefinition` value); default: the variant's.
    seed : int
        Simulator / policy seed.
    source : str, optional
        Name of the trace in the report (default: ``workload.meta["source"]``).
    variant : str
        ``lmetric`` variant under audit (``paper`` = the authors' router, ``llm-d``,
        ``dynamo``, ``sglang-fork``, ``legacy``); it sets ``P``, ``B`` and the tie rule.
    concurrency : int, optional
        Session cap of the replay (:attr:`SimConfig.concurrency`; None: no cap).
    router_state : dict, optional
        :class:`SimConfig` router-state settings of the replay (``router_replicas``,
        ``replica_assignment``, ``signal_delay_s``, ``kv_event_lag_s``, ``index``; see
        docs/router_state.md); None: one router with exact state.

    Returns
    -------
    AuditResult

    Raises
    ------
    ValueError
        Bad settings (instances, offsets, definitions, preset) or an empty workload.
    """
    from lmetric_theory.sim import SimConfig, Simulator

    if not isinstance(reference, LinearReference):
        raise ValueError(f"reference: expected a LinearReference, got {type(reference).__name__}")
    if int(instances) < 1:
        raise ValueError(f"instances: must be >= 1, got {instances}")
    if len(workload) == 0:
        raise ValueError("workload: no requests to replay")
    if variant not in LMETRIC_VARIANTS:
        raise ValueError(f"variant: {variant!r} is not one of {', '.join(LMETRIC_VARIANTS)}")
    var = LMETRIC_VARIANTS[variant]
    pdef = _definition(PDefinition, "p_definition", p_definition or var.p_definition)
    bdef = _definition(BDefinition, "b_definition", b_definition or var.b_definition)
    block = int(getattr(workload, "block_size", 16) or 16)
    # validates the offsets; the prefill-block mitigation adds one of the workload's blocks
    det = Detector(reference, prefill_offset, batch_offset, block_tokens=block)
    pre = _load_preset(preset)
    spec = policy_spec("lmetric", variant=variant, P=pdef.value, B=bdef.value,
                       p0=det.prefill_offset, b0=det.batch_offset)
    cfg = SimConfig.from_preset(pre, int(instances), record_snapshots=True, concurrency=concurrency,
                                **(router_state or {}))
    sim = Simulator(workload, cfg, spec, seed=seed)
    n = len(workload)
    for step in range(1, _PROGRESS_STEPS):
        sim.advance(until_decision=n * step // _PROGRESS_STEPS)
        if progress is not None:
            progress(0.9 * step / _PROGRESS_STEPS)
    res = sim.run()
    log = res.snapshots
    if log is None or len(log) == 0:
        raise ValueError("the replay recorded no routing decisions")
    score = ScoreDefinition(pdef, bdef, Fraction(det.prefill_offset),
                            Fraction(det.batch_offset))
    P, B = score_inputs(log, score)
    U = log.uncached.astype(np.int64)
    v = det.check_many(P, B, validate=False)
    time_s = np.asarray(log.time_s, dtype=np.float64)
    meta = dict(getattr(workload, "meta", {}) or {})
    skipped = int(meta.get("skipped_lines", 0) or 0)
    trace = {
        "source": source if source is not None else str(meta.get("source", "workload")),
        "format": meta.get("format"),
        "requests": n,
        "skipped_lines": skipped,
        "rate_scale": meta.get("rate_scale", 1.0),
    }
    config = {
        "mode": "replay",
        "policy": str(spec),
        "p_definition": pdef.value,
        "b_definition": bdef.value,
        "prefill_offset": det.prefill_offset,
        "batch_offset": det.batch_offset,
        "instances": int(instances),
        "preset": pre.name,
        "seed": seed,
    }
    # hot prefix classes: the shared runner over the replay, under the audit's definition
    from lmetric_theory.experiments.hotspots import run_hotspots

    hot = run_hotspots(workload, log, score).entries
    # router replicas, lag, index: only when the log carries the router-state fields
    from lmetric_theory.experiments.router_state_log import (
        replay_router_state_settings,
        router_state_from_log,
    )

    rstate = router_state_from_log(log, res, score,
                                   settings=replay_router_state_settings(cfg, block))
    report = _build_report(det, v, time_s, U, None, top=top, trace=trace, config=config,
                           skipped=skipped, time_axis="seconds", hotspots=hot,
                           router_state=rstate)
    if progress is not None:
        progress(1.0)
    return AuditResult(time_s, v, report, reference)


def audit_snapshots(
    prefill_tokens: Any,
    batch_size: Any,
    times: Any = None,
    ids: Any = None,
    reference: LinearReference | None = None,
    *,
    prefill_offset: float = 0,
    batch_offset: float = 1,
    top: int = 10,
    uncached_tokens: Any = None,
    source: str = "snapshots",
    skipped_lines: int = 0,
    p_definition: str | None = None,
    b_definition: str | None = None,
    progress: Callable[[float], None] | None = None,
    chosen: Any = None,
    replica: Any = None,
    true_prefill: Any = None,
    true_batch: Any = None,
    predicted_cached: Any = None,
    actual_cached: Any = None,
) -> AuditResult:
    """Check decisions captured from a live router.

    Parameters
    ----------
    prefill_tokens, batch_size : array_like, shape (D, N)
        ``P`` (tokens) and ``B`` (requests) per decision and instance.
    times : array_like, shape (D,), optional
        Decision times, seconds (NaN for unknown). Without any finite time, the decision
        index is used as the time axis (the report says so in ``"time_axis"``).
    ids : sequence, optional
        Instance ids: one sequence of N ids for all decisions, or one per decision
        (entries may be None).
    reference : LinearReference
        Linear score to compare with (required).
    prefill_offset, batch_offset : float
        ``p0`` and ``b0`` of the router's product score.
    top : int
        Worst decisions in the report.
    uncached_tokens : array_like, shape (D, N), optional
        The request's uncached tokens, for the cache-hit tie-break evidence.
    source : str
        Name in the report.
    skipped_lines : int
        Bad input lines skipped upstream (reported).
    p_definition, b_definition : str, optional
        The router's definitions, recorded in the report only.
    progress : callable, optional
        Called with the fraction done (last call 1.0).
    chosen, replica : array_like of int, shape (D,), optional
        The instance each decision went to and the router replica that made it. With
        ``replica`` the report gets ``router_state`` (``herding``; ``chosen`` defaults to
        the product's choice).
    true_prefill, true_batch : array_like, shape (D, N), optional
        The engines' ``P`` and ``B`` beside the router's (``replica_skew``).
    predicted_cached, actual_cached : array_like, shape (D,), optional
        Cached tokens the router's index predicted on the chosen instance and the engine's
        hit (``stale_index``).

    Raises
    ------
    ValueError
        Bad arrays (NaN, infinite, negative, shape mismatch, empty), missing reference,
        ``times`` or ``ids`` of the wrong length.
    """
    if not isinstance(reference, LinearReference):
        raise ValueError("reference: a LinearReference is required")
    det = Detector(reference, prefill_offset, batch_offset)
    v = det.check_many(prefill_tokens, batch_size)
    D, N = v.prefill_tokens.shape
    if progress is not None:
        progress(0.5)
    if times is None:
        t = np.full(D, np.nan)
    else:
        t = np.asarray(times, dtype=np.float64).reshape(-1)
        if t.shape != (D,):
            raise ValueError(f"times: length {t.shape[0]} does not match {D} decisions")
    axis = "seconds"
    if not np.isfinite(t).any():
        t = np.arange(D, dtype=np.float64)
        axis = "decision index"
    per_ids = _per_decision_ids(ids, D, N)
    U = None
    if uncached_tokens is not None:
        U = np.atleast_2d(np.asarray(uncached_tokens))
        if U.shape != (D, N):
            raise ValueError(f"uncached_tokens: shape {U.shape} does not match ({D}, {N})")
    trace = {"source": source, "requests": D, "skipped_lines": int(skipped_lines)}
    config = {
        "mode": "snapshots",
        "p_definition": p_definition,
        "b_definition": b_definition,
        "prefill_offset": det.prefill_offset,
        "batch_offset": det.batch_offset,
        "instances": N,
        "preset": None,
    }
    rstate = None
    if replica is not None:
        from lmetric_theory.experiments.router_state_log import router_state_entries

        rstate = router_state_entries(
            t, v.product_choice if chosen is None else chosen, v.prefill_tokens,
            v.batch_size, replica=replica, true_prefill=true_prefill, true_batch=true_batch,
            predicted_cached=predicted_cached, actual_cached=actual_cached,
            p0=det.prefill_offset, b0=det.batch_offset,
        )
    report = _build_report(det, v, t, U, per_ids, top=top, trace=trace, config=config,
                           skipped=int(skipped_lines), time_axis=axis, router_state=rstate)
    if progress is not None:
        progress(1.0)
    return AuditResult(t, v, report, reference)


def audit_snapshot_file(
    path: str | os.PathLike[str],
    reference: LinearReference,
    *,
    skip_bad_lines: bool = False,
    prefill_offset: float = 0,
    batch_offset: float = 1,
    top: int = 10,
    progress: Callable[[float], None] | None = None,
) -> AuditResult:
    """:func:`load_snapshots` then :func:`audit_snapshots` (skipped lines reported)."""
    b = load_snapshots(path, skip_bad_lines=skip_bad_lines)
    res = audit_snapshots(
        b.prefill_tokens, b.batch_size, b.time_s, b.instance_ids, reference,
        prefill_offset=prefill_offset, batch_offset=batch_offset, top=top,
        uncached_tokens=b.uncached_tokens, source=b.source, skipped_lines=b.skipped_lines,
        progress=progress, **_router_state_kwargs(b.router_state),
    )
    rep = res.report
    trace = ({**rep.trace, "skipped_reasons": list(b.skipped_reasons)} if b.skipped_reasons
             else rep.trace)
    worst = tuple({**w, "line": b.lines[w["decision"]]} for w in rep.worst)
    return dataclasses.replace(res, report=dataclasses.replace(rep, trace=trace, worst=worst))


def _router_state_kwargs(rs: dict[str, np.ndarray]) -> dict[str, Any]:
    """:func:`audit_snapshots` keywords from a snapshot file's router-state fields (the
    findings need ``replica``; without it, none)."""
    if "replica" not in rs:
        return {}
    return {
        "replica": rs["replica"], "chosen": rs.get("chosen"),
        "true_prefill": rs.get("true_prefill_tokens"), "true_batch": rs.get("true_batch_size"),
        "predicted_cached": rs.get("predicted_cached_tokens"),
        "actual_cached": rs.get("cached_tokens"),
    }


def _definition(enum: Any, name: str, value: Any) -> Any:
    try:
        return enum(value)
    except ValueError:
        valid = ", ".join(repr(m.value) for m in enum)
        raise ValueError(f"{name}: unknown value {value!r}; valid: {valid}") from None


def _per_decision_ids(ids: Any, D: int, N: int) -> list[tuple[str, ...] | None] | None:
    if ids is None:
        return None
    ids = list(ids)
    if len(ids) == N and all(isinstance(x, str | int) for x in ids):
        shared = tuple(str(x) for x in ids)
        return [shared] * D
    if len(ids) != D:
        raise ValueError(f"ids: expected {N} instance ids or one entry per decision ({D}), "
                         f"got {len(ids)}")
    out: list[tuple[str, ...] | None] = []
    for k, row in enumerate(ids):
        if row is None:
            out.append(None)
            continue
        row = tuple(str(x) for x in row)
        if len(row) != N:
            raise ValueError(f"ids: decision {k} has {len(row)} ids for {N} instances")
        out.append(row)
    return out
