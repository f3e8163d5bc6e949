"""Audit routing decisions of the product score against a linear reference.

Two entry points build the same report:

- :func:`audit_workload` replays a workload under the ``lmetric`` policy in the reference
  simulator, turns every recorded router view into ``P`` and ``B`` (per the chosen
  definitions) and checks all decisions at once with :meth:`Detector.check_many`.
- :func:`audit_snapshots` checks decisions captured from a live router: arrays of ``P`` and
  ``B`` of shape (D, N), e.g. read by :func:`load_snapshots` from a snapshot JSON Lines file
  (schema in ``docs/audit.md``).

The report (:attr:`AuditResult.report`) is a JSON-ready dict (strict JSON: non-finite
numbers are ``None``) with the keys of ``lmetric-theory audit --json``. This module reads
snapshot files but never prints; :mod:`lmetric_theory.io.report` writes the JSON and HTML.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from lmetric_theory.core.definitions import BDefinition, PDefinition
from lmetric_theory.detector import (
    DEGENERATE_KINDS,
    FINDING_KINDS,
    Detector,
    LinearReference,
    Mitigation,
    Snapshot,
    Verdicts,
)

__all__ = [
    "AuditResult",
    "SnapshotBatch",
    "audit_snapshots",
    "audit_workload",
    "default_reference",
    "json_safe",
    "load_snapshots",
    "reference_from_tuning",
    "tuned_reference",
]

#: Preset the audit replays on unless told otherwise.
DEFAULT_PRESET = "h100-llama3-8b"
#: Multiplicative half-width of the default latency-model band.
DEFAULT_BAND_FACTOR = 2.0
#: Nominal request shape used for the default reference when no workload is known
#: (snapshot files): mean context tokens of a running sequence, and output tokens.
NOMINAL_CONTEXT_TOKENS = 2048.0
NOMINAL_OUTPUT_TOKENS = 256.0
_PROGRESS_STEPS = 20


# ================================================================================ results


@dataclass(frozen=True, slots=True, eq=False)
class AuditResult:
    """Outcome of an audit.

    Attributes
    ----------
    time_s : np.ndarray, shape (D,), float64
        Decision times, seconds (the decision index when the input has no times).
    verdicts : Verdicts
        The detector's verdict on every decision (``D`` decisions over ``N`` instances).
    report : dict
        JSON-ready summary (keys as ``lmetric-theory audit --json``; see module docs).
    reference : LinearReference
        The reference the decisions were checked against.
    """

    time_s: np.ndarray
    verdicts: Verdicts
    report: dict[str, Any]
    reference: LinearReference


@dataclass(frozen=True, slots=True, eq=False)
class SnapshotBatch:
    """Decisions read from a snapshot JSON Lines file (see :func:`load_snapshots`).

    Attributes
    ----------
    prefill_tokens : np.ndarray, shape (D, N)
        ``P`` per decision and instance, tokens (int64 when all integral, else float64).
    batch_size : np.ndarray, shape (D, N)
        ``B`` per decision and instance, requests.
    time_s : np.ndarray, shape (D,), float64
        Decision times, seconds; NaN where a line has no ``time_s``.
    instance_ids : list of tuple of str or None, length D
        Per-decision instance ids (None where a line has none).
    uncached_tokens : np.ndarray or None, shape (D, N)
        The request's uncached tokens, when every kept line has them.
    source : str
        File name.
    lines : list of int, length D
        1-based line number of each decision in the file.
    skipped_lines : int
        Bad lines skipped (only with ``skip_bad_lines=True``).
    skipped_reasons : list of str
        The first few skip messages (file, line, field, reason).
    """

    prefill_tokens: np.ndarray
    batch_size: np.ndarray
    time_s: np.ndarray
    instance_ids: list[tuple[str, ...] | None]
    uncached_tokens: np.ndarray | None
    source: str
    lines: list[int]
    skipped_lines: int = 0
    skipped_reasons: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.prefill_tokens.shape[0])


# ============================================================================= references


def _load_preset(preset: Any) -> Any:
    from lmetric_theory.sim import Preset, load_preset

    if isinstance(preset, Preset):
        return preset
    return load_preset(str(preset))


def default_reference(
    preset: Any = DEFAULT_PRESET,
    workload: Any = None,
    *,
    band_factor: float = DEFAULT_BAND_FACTOR,
) -> LinearReference:
    """The reference used when none is given: a band derived from the preset's latency model.

    ``lam = iterations * (c_dec + c_kv * context_tokens) / c_pf``
    (:meth:`LinearReference.from_latency_model`) with ``iterations`` the workload's mean
    output tokens (a batch slot is paid for on every iteration of the request's lifetime)
    and ``context_tokens`` its mean prompt plus half its mean output (mean context of a
    running sequence); the band is ``[lam / band_factor, lam * band_factor]``. Without a
    workload the nominal ``NOMINAL_OUTPUT_TOKENS`` and ``NOMINAL_CONTEXT_TOKENS`` are used.

    Parameters
    ----------
    preset : str or Preset
        Hardware preset (name or object).
    workload : Workload, optional
        Requests whose mean shape sets ``iterations`` and ``context_tokens``.
    band_factor : float
        Multiplicative half-width of the band (>= 1).
    """
    p = _load_preset(preset)
    lat = p.latency
    if workload is not None and len(workload):
        out = float(np.mean(workload.output_tokens))
        ctx = float(np.mean(workload.input_tokens)) + 0.5 * out
        shape = "the workload's mean output tokens and mean context"
    else:
        out, ctx = NOMINAL_OUTPUT_TOKENS, NOMINAL_CONTEXT_TOKENS
        shape = "nominal request shape (no workload)"
    ref = LinearReference.from_latency_model(
        c_pf=lat.c_pf, c_dec=lat.c_dec, c_kv=lat.c_kv, context_tokens=ctx, iterations=out,
        band_factor=band_factor,
    )
    prov = (f"default: derived from preset {p.name!r} latency model with {shape}; "
            f"band x/{band_factor:g}..x{band_factor:g}; {ref.provenance}")
    return LinearReference(ref.lam, ref.lam_lo, ref.lam_hi, source="latency_model",
                           provenance=prov)


def reference_from_tuning(res: Any, *, tolerance: float = 0.05) -> LinearReference:
    """The tuned reference of a finished :func:`lmetric_theory.experiments.tuning.tune_linear` run.

    ``lam`` is the best rate; the band holds every evaluated rate whose objective is
    within ``tolerance`` (relative) of the best, so a flat objective gives a wide band.
    """
    best = float(res.lam)
    ok = [lam for lam, obj in res.evaluations
          if math.isfinite(obj) and obj <= res.objective * (1 + tolerance)]
    lo, hi = min([best, *ok]), max([best, *ok])
    prov = (f"tune_linear: {len(res.evaluations)} simulated rates in "
            f"[{float(res.grid.min()):g}, {float(res.grid.max()):g}], best {best:g} with "
            f"{res.objective_name} = {res.objective:.4g} s; band: rates within "
            f"{tolerance:.0%} of the best")
    return LinearReference.tuned(best, objective=res.objective_name, source=prov,
                                 lam_lo=lo, lam_hi=hi)


def tuned_reference(
    workload: Any,
    *,
    instances: int,
    preset: Any = DEFAULT_PRESET,
    seed: int = 0,
    p_definition: str = "uncached",
    b_definition: str = "running",
    tolerance: float = 0.05,
) -> LinearReference:
    """A reference tuned with the simulator, for ``--tune``.

    Runs :func:`lmetric_theory.experiments.tuning.tune_linear` (``linear`` replayed over a
    log-spaced grid of ``lam``, mean TTFT minimised) and turns it into a reference with
    :func:`reference_from_tuning`. With no workload to tune on (snapshot audits), falls
    back to :func:`default_reference` and says so in the provenance.
    """
    if workload is not None:
        from lmetric_theory.experiments.tuning import tune_linear

        res = tune_linear(workload, instances=int(instances), preset=_load_preset(preset),
                          seed=seed, P=str(p_definition), B=str(b_definition))
        return reference_from_tuning(res, tolerance=tolerance)
    ref = default_reference(preset, workload)
    why = "no workload to tune on (snapshot audit)"
    return LinearReference(ref.lam, ref.lam_lo, ref.lam_hi, source="latency_model",
                           provenance=f"--tune requested but {why}; lam {ref.provenance}")


# ============================================================================ snapshots in


def load_snapshots(path: str | os.PathLike[str], *, skip_bad_lines: bool = False) -> SnapshotBatch:
    """Read a snapshot JSON Lines file: one JSON object per routing decision.

    Each object has ``prefill_tokens`` and ``batch_size`` (arrays of N numbers) and
    optionally ``instance_ids``, ``time_s``, ``uncached_tokens``,
    ``queued_prefill_tokens``, ``waiting``, ``kv_usage`` (see ``docs/audit.md``). Every
    decision of a file must have the same number of instances N (the first good line sets
    it). Blank lines are ignored.

    Parameters
    ----------
    path : path-like
        The file.
    skip_bad_lines : bool
        Skip bad lines and count them (``skipped_lines``) instead of failing.

    Raises
    ------
    ValueError
        ``"<file>, line <k>: <field>: <reason>"`` for the first bad line (without
        ``skip_bad_lines``), or when the file holds no valid decision.
    OSError
        The file cannot be read.
    """
    p = Path(path)
    name = str(path)
    P_rows: list[Any] = []
    B_rows: list[Any] = []
    U_rows: list[Any] = []
    times: list[float] = []
    ids: list[tuple[str, ...] | None] = []
    lines: list[int] = []
    skipped = 0
    reasons: list[str] = []
    n_inst: int | None = None
    n_line = 0
    all_unc = True
    with contextlib.nullcontext(_decoded_lines(p, name)) as f:
        for k, raw in enumerate(f, start=1):
            n_line = k
            if not raw.strip():
                continue
            try:
                try:
                    obj = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"line: not valid JSON ({exc.msg})") from None
                except RecursionError:
                    raise ValueError("line: not valid JSON (nested too deeply)") from None
                fast = _fast_row(obj, n_inst)
                if fast is not None:
                    P_rows.append(fast[0])
                    B_rows.append(fast[1])
                    all_unc = False
                    times.append(fast[2])
                    ids.append(fast[3])
                    lines.append(k)
                    continue
                snap = Snapshot.from_dict(obj)
                if n_inst is None:
                    n_inst = snap.n_instances
                elif snap.n_instances != n_inst:
                    raise ValueError(
                        f"prefill_tokens: {snap.n_instances} instances, but earlier decisions "
                        f"have {n_inst} (every decision of a file must have the same N)"
                    )
            except ValueError as exc:
                msg = f"{name}, line {k}: {exc}"
                if not skip_bad_lines:
                    raise ValueError(msg) from None
                skipped += 1
                if len(reasons) < 10:
                    reasons.append(msg)
                continue
            P_rows.append(snap.prefill_tokens)
            B_rows.append(snap.batch_size)
            if snap.uncached_tokens is None:
                all_unc = False
            else:
                U_rows.append(snap.uncached_tokens)
            times.append(math.nan if snap.time_s is None else snap.time_s)
            ids.append(snap.instance_ids)
            lines.append(k)
    if not P_rows:
        extra = f" ({skipped} bad lines skipped)" if skipped else ""
        raise ValueError(f"{name}: no decisions in the file ({n_line} lines){extra}")
    return SnapshotBatch(
        prefill_tokens=_stack(P_rows),
        batch_size=_stack(B_rows),
        time_s=np.asarray(times, dtype=np.float64),
        instance_ids=ids,
        uncached_tokens=_stack(U_rows) if all_unc else None,
        source=name,
        lines=lines,
        skipped_lines=skipped,
        skipped_reasons=tuple(reasons),
    )


def _decoded_lines(p: Path, name: str) -> list[str]:
    """The lines of a UTF-8 text file; ``ValueError`` naming the file and line for a
    binary file (NUL byte) or invalid UTF-8."""
    data = p.read_bytes()
    nul = data.find(b"\0")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise ValueError(f"{name}, line {line}: contains a NUL byte: a binary file, not JSON Lines")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ValueError(f"{name}, line {line}: not valid UTF-8 ({exc.reason})") from None
    lines = text.split("\n")
    return lines[:-1] if lines and not lines[-1] else lines


_FAST_KEYS = frozenset(("prefill_tokens", "batch_size", "time_s", "instance_ids"))
_INT_LIMIT = 2**31


def _fast_row(obj: Any, n: int | None) -> tuple[list, list, float, tuple | None] | None:
    """The common line (integer P and B of the file's N, optional time and ids) checked in
    plain Python; ``None`` sends the line through :meth:`Snapshot.from_dict` (which
    validates everything else and words the errors)."""
    if n is None or type(obj) is not dict or not _FAST_KEYS.issuperset(obj):
        return None
    P = obj.get("prefill_tokens")
    B = obj.get("batch_size")
    if type(P) is not list or type(B) is not list or len(P) != n or len(B) != n:
        return None
    for row in (P, B):
        for x in row:
            if type(x) is not int:
                return None
        if min(row) < 0 or max(row) >= _INT_LIMIT:
            return None
    t = obj.get("time_s")
    if t is None:
        t = math.nan
    elif type(t) not in (int, float) or not math.isfinite(t):
        return None
    ids = obj.get("instance_ids")
    if ids is not None:
        if type(ids) is not list or len(ids) != n:
            return None
        ids = tuple(str(x) for x in ids)
    return P, B, float(t), ids


def _stack(rows: list[Any]) -> np.ndarray:
    if all(type(r) is list or r.dtype.kind == "i" for r in rows):
        return np.array(rows, dtype=np.int64)
    return np.array([np.asarray(r, dtype=np.float64) for r in rows])


# ================================================================================= audits


def _signals(log: Any, p_definition: PDefinition, b_definition: BDefinition
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``P``, ``B`` and the uncached tokens (each (D, N) int64) from a SnapshotLog."""
    U = log.uncached.astype(np.int64)
    P = U + log.queued.astype(np.int64) if p_definition is PDefinition.QUEUED_PLUS_UNCACHED else U
    B = log.running.astype(np.int64)
    if b_definition is BDefinition.IN_FLIGHT:
        B = B + log.waiting.astype(np.int64)
    return P, B, U


def _spec_number(x: float) -> str:
    f = Fraction(x).limit_denominator(1 << 20) if isinstance(x, float) else Fraction(x)
    if float(f) != float(x):
        f = Fraction(x)
    return str(f.numerator) if f.denominator == 1 else f"{f.numerator}/{f.denominator}"


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
    p_definition: str = "uncached",
    b_definition: str = "running",
    seed: int = 0,
    source: str | None = None,
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
    p_definition : {"uncached", "queued+uncached"}
        What ``P`` counts.
    b_definition : {"running", "in-flight"}
        What ``B`` counts.
    seed : int
        Simulator / policy seed.
    source : str, optional
        Name of the trace in the report (default: ``workload.meta["source"]``).

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
    pdef = _definition(PDefinition, "p_definition", p_definition)
    bdef = _definition(BDefinition, "b_definition", b_definition)
    block = int(getattr(workload, "block_size", 16) or 16)
    # validates the offsets; the prefill-block mitigation adds one of the workload's blocks
    det = Detector(reference, prefill_offset, batch_offset, block_tokens=block)
    pre = _load_preset(preset)
    spec = (f"lmetric:P={pdef.value},B={bdef.value},p0={_spec_number(det.prefill_offset)},"
            f"b0={_spec_number(det.batch_offset)}")
    cfg = SimConfig.from_preset(pre, int(instances), record_snapshots=True)
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
    P, B, U = _signals(log, pdef, bdef)
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
        "policy": spec,
        "p_definition": pdef.value,
        "b_definition": bdef.value,
        "prefill_offset": det.prefill_offset,
        "batch_offset": det.batch_offset,
        "instances": int(instances),
        "preset": pre.name,
        "seed": seed,
    }
    report = _build_report(det, v, time_s, U, None, top=top, trace=trace, config=config,
                           skipped=skipped, time_axis="seconds")
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
    report = _build_report(det, v, t, U, per_ids, top=top, trace=trace, config=config,
                           skipped=int(skipped_lines), time_axis=axis)
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
        progress=progress,
    )
    if b.skipped_reasons:
        res.report["trace"]["skipped_reasons"] = list(b.skipped_reasons)
    for w in res.report["worst"]:
        w["line"] = b.lines[w["decision"]]
    return res


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


# ================================================================================= report


def _pct(x: np.ndarray, qs: Sequence[float], names: Sequence[str]) -> dict[str, float | None]:
    x = x[np.isfinite(x)]
    if x.size == 0:
        return dict.fromkeys(names)
    return {n: float(v) for n, v in zip(names, np.percentile(x, qs), strict=True)}


def candidate_mitigations(det: Detector) -> list[Mitigation]:
    """Mitigations the audit weighs: the theory's standard set plus the detector's own."""
    out = [
        Mitigation.fallback(),
        Mitigation.prefill_block(det.block_tokens),
        Mitigation.batch_offset(1),
        Mitigation.tie_break("load"),
        Mitigation.tie_break("cache"),
    ]
    if det.load_cap is not None:
        out.append(Mitigation.load_cap(det.load_cap))
    for m in det.mitigations.values():
        if m not in out and m.kind.value != "none":
            out.append(m)
    return out


def mitigation_evidence(
    det: Detector, v: Verdicts, uncached_tokens: np.ndarray | None = None
) -> list[dict[str, Any]]:
    """Rank mitigations by how many flagged decisions each fixes.

    For every candidate mitigation ``m`` and the flagged decisions ``F``:
    ``fixes`` counts decisions in ``F`` that disagree with the reference and whose
    mitigated choice (:meth:`Detector.mitigated_choices`) is the reference's choice;
    ``breaks`` counts decisions in ``F`` that agreed and no longer do; ``agree_share`` is
    the share of ``F`` whose mitigated choice equals the reference's choice; and
    ``mean_regret_removed_tokens`` the mean over ``F`` of the regret before minus after
    (prefill-token equivalents, under the reference rate). Sorted by ``fixes``, then
    ``breaks`` (fewer first), then regret removed.
    """
    F = np.flatnonzero(v.flagged)
    lam = float(det.reference.lam)
    kinds_of: dict[Mitigation, list[str]] = {}
    for kind in FINDING_KINDS:
        kinds_of.setdefault(det.mitigations[kind], []).append(kind)
    counts = v.counts()
    out = []
    if F.size:
        P, B = v.prefill_tokens[F], v.batch_size[F]
        i, j = v.product_choice[F], v.linear_choice[F]
        dis = v.disagrees[F]
        rows = np.arange(F.size)
        before = v.regret_tokens[F]
        U = uncached_tokens[F] if uncached_tokens is not None else None
    for m in candidate_mitigations(det):
        rec = {
            "mitigation": m.kind.value,
            "value": m.value,
            "description": m.message,
            "recommended_for": {k: counts[k] for k in kinds_of.get(m, [])},
            "flagged": int(F.size),
        }
        if F.size:
            c = det.mitigated_choices(P, B, m, uncached_tokens=U, validate=False)
            agree = c == j
            after = (P[rows, c] - P[rows, j]).astype(np.float64) + lam * (
                B[rows, c] - B[rows, j]).astype(np.float64)
            rec.update(
                fixes=int(np.count_nonzero(agree & dis)),
                breaks=int(np.count_nonzero(~agree & ~dis)),
                changed=int(np.count_nonzero(c != i)),
                agree_share=float(agree.mean()),
                mean_regret_removed_tokens=float(np.mean(before - after)),
            )
        else:
            rec.update(fixes=0, breaks=0, changed=0, agree_share=None,
                       mean_regret_removed_tokens=0.0)
        out.append(rec)
    out.sort(key=lambda r: (-r["fixes"], r["breaks"], -r["mean_regret_removed_tokens"]))
    for rank, r in enumerate(out, start=1):
        r["rank"] = rank
    return out


def worst_decisions(
    v: Verdicts,
    time_s: np.ndarray,
    top: int,
    ids: list[tuple[str, ...] | None] | None = None,
) -> list[dict[str, Any]]:
    """The ``top`` disagreeing decisions with the largest regret, worst first (ties: earlier
    decision first), each with its snapshot ``P``/``B`` and findings."""
    idx = np.flatnonzero(v.disagrees)
    if idx.size == 0 or top <= 0:
        return []
    order = idx[np.argsort(-v.regret_tokens[idx], kind="stable")][:top]
    out = []
    for k in order.tolist():
        verdict = v[k]
        entry: dict[str, Any] = {
            "decision": int(k),
            "time_s": float(time_s[k]),
            "product_choice": verdict.product_choice,
            "linear_choice": verdict.linear_choice,
            "regret_tokens": verdict.regret_tokens,
            "lambda_eff": verdict.lambda_eff,
            "lambda_star": verdict.lambda_star,
            "P": v.prefill_tokens[k].tolist(),
            "B": v.batch_size[k].tolist(),
            "findings": [
                {"kind": f.kind, "severity": str(f.severity), "message": f.message,
                 "mitigation": f.mitigation.kind.value, "mitigation_value": f.mitigation.value,
                 "instances": list(f.instances)}
                for f in verdict.findings
            ],
        }
        if ids is not None and ids[k] is not None:
            entry["instance_ids"] = list(ids[k])
        out.append(entry)
    return out


def _build_report(
    det: Detector,
    v: Verdicts,
    time_s: np.ndarray,
    U: np.ndarray | None,
    ids: list[tuple[str, ...] | None] | None,
    *,
    top: int,
    trace: dict[str, Any],
    config: dict[str, Any],
    skipped: int,
    time_axis: str,
) -> dict[str, Any]:
    D = len(v)
    counts = v.counts()
    ref = det.reference
    dis = int(counts["disagreement"])
    regret = v.regret_tokens
    config = {**config, "extreme_factor": det.extreme_factor, "block_tokens": det.block_tokens,
              "tie_break": det.tie_break}
    report: dict[str, Any] = {
        "decisions": D,
        "instances": int(v.prefill_tokens.shape[1]),
        "disagreements": dis,
        "disagreement_rate": dis / D if D else 0.0,
        "fragile": int(counts["fragile"]),
        "degenerate": {k: int(counts[k]) for k in DEGENERATE_KINDS},
        "extreme_operating_point": int(counts["extreme_operating_point"]),
        "flagged": int(np.count_nonzero(v.flagged)),
        "regret_tokens": {
            "mean": float(regret.mean()) if D else 0.0,
            **_pct(regret, (50, 99, 100), ("p50", "p99", "max")),
            "total": float(regret.sum()),
            "mean_when_disagreeing": float(regret[v.disagrees].mean()) if dis else 0.0,
        },
        "lambda_reference": {
            "lam": ref.lam, "lam_lo": ref.lam_lo, "lam_hi": ref.lam_hi,
            "source": ref.source, "objective": ref.objective, "provenance": ref.provenance,
        },
        "lambda_eff": _pct(v.lambda_eff, (1, 50, 99), ("p1", "p50", "p99")),
        "lambda_eff_in_band": _in_band(v.lambda_eff, ref),
        "worst": worst_decisions(v, time_s, int(top), ids),
        "mitigations": mitigation_evidence(det, v, U),
        "time_axis": time_axis,
        "skipped_lines": int(skipped),
        "config": config,
        "trace": trace,
    }
    return json_safe(report)


def _in_band(le: np.ndarray, ref: LinearReference) -> float | None:
    ok = np.isfinite(le)
    if not ok.any():
        return None
    x = le[ok]
    return float(np.mean((x >= ref.lam_lo) & (x <= ref.lam_hi)))


def json_safe(x: Any) -> Any:
    """Strict-JSON copy: non-finite floats become None, numpy values Python ones."""
    if isinstance(x, dict):
        return {str(k): json_safe(val) for k, val in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(val) for val in x]
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, Fraction):
        x = float(x)
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
