"""Iteration latency model, hardware presets and least-squares calibration.

One serving iteration (continuous batching with chunked prefill) takes

    t = c0 + c_pf * prefill_tokens + c_dec * decode_seqs + c_kv * kv_tokens_read
        + c_att * sum_chunks chunk_tokens * (chunk_context + chunk_tokens / 2)

seconds, where ``prefill_tokens`` are the new prompt tokens computed in the iteration,
``decode_seqs`` the sequences generating one token each, ``kv_tokens_read`` the KV-cache
tokens the attention reads (each prefill chunk's context plus its own tokens, plus every
decoding sequence's context) and the last term the optional quadratic prefill-attention cost.

Presets are JSON files shipped in :mod:`lmetric_theory.presets` (see its README section in
the module docstring of :func:`roofline_preset` for how the numbers are derived).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from importlib import resources
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from lmetric_theory.core.fileio import TextFileError, read_text
from lmetric_theory.core.limits import (
    BATCH_MAX,
    COEF_MAX,
    KV_CAPACITY_MAX,
    TOKENS_MAX,
    check_int,
    check_number,
)

__all__ = [
    "COEFFICIENTS",
    "LatencyModel",
    "FitReport",
    "Preset",
    "UnidentifiableError",
    "fit_latency",
    "list_presets",
    "load_preset",
    "load_preset_file",
    "preset_from_dict",
    "roofline_preset",
]

#: Coefficient names, in the order of the model's terms, with their units.
COEFFICIENTS: dict[str, str] = {
    "c0": "s",
    "c_pf": "s/token",
    "c_dec": "s/sequence",
    "c_kv": "s/token read",
    "c_att": "s/token^2",
}


@dataclass(frozen=True, slots=True)
class LatencyModel:
    """Coefficients of the iteration-latency model (all >= 0).

    Attributes
    ----------
    c0 : float
        Fixed cost per iteration (weights read from HBM, launch), seconds.
    c_pf : float
        Cost per prefill token, seconds/token.
    c_dec : float
        Cost per decoding sequence, seconds/sequence.
    c_kv : float
        Cost per KV-cache token read, seconds/token.
    c_att : float
        Prefill-attention cost per (query token x context token), seconds/token^2; 0 disables it.
    """

    c0: float
    c_pf: float
    c_dec: float
    c_kv: float
    c_att: float = 0.0

    def __post_init__(self) -> None:
        for name, unit in COEFFICIENTS.items():
            v = getattr(self, name)
            try:
                check_number(name, v, lo=0.0, hi=COEF_MAX[name], unit=unit)
            except ValueError as exc:
                raise ValueError(f"latency coefficient {exc}") from None

    def step_end(self, start: float, prefill_tokens: int, decode_seqs: int, kv_tokens: int,
                 attention: float) -> float:
        """End of one iteration that starts at ``start``, seconds: the one place the step
        time is computed (both fast-engine schedulers, the vLLM engine and
        :meth:`iteration_time` call it).

        Parameters
        ----------
        start : float
            Start of the iteration, seconds (0 for its duration).
        prefill_tokens : int or array_like
            Tokens computed for requests that are not decoding (prompt chunks,
            recomputation), tokens.
        decode_seqs : int or array_like
            Sequences decoding one token, sequences.
        kv_tokens : int or array_like
            KV-cache tokens the attention reads: each chunk's context plus its tokens, plus
            each decoding sequence's context, tokens.
        attention : float or array_like
            ``sum over chunks of chunk * (chunk_context + chunk / 2)``, tokens^2.

        Returns
        -------
        float
            ``start + c0 + c_pf prefill_tokens + c_dec decode_seqs + c_kv kv_tokens
            + c_att attention``, summed left to right, seconds.
        """
        return (start + self.c0 + self.c_pf * prefill_tokens + self.c_dec * decode_seqs
                + self.c_kv * kv_tokens + self.c_att * attention)

    def decode_run(self, n: int, ctx: int, m: int) -> float:
        """Time of ``m`` decode-only iterations of ``n`` sequences of total context ``ctx``, s.

        Iteration ``j`` (0-based) reads ``ctx + j n`` tokens, so it takes
        ``c0 + c_dec n + c_kv (ctx + j n)`` (:meth:`step_end` with no prefill); the sum is
        ``m (c0 + c_dec n + c_kv ctx) + c_kv n m (m - 1) / 2``.
        """
        c_kv = self.c_kv
        return m * (self.c0 + self.c_dec * n + c_kv * ctx) + c_kv * n * (m * (m - 1) // 2)

    def decode_steps_started(self, elapsed: float, n: int, ctx: int, m: int) -> int:
        """Iterations of a decode stretch (``m`` iterations, ``n`` sequences, total context
        ``ctx`` tokens) that start at or before ``elapsed`` seconds after its start (>= 1)."""
        c_kv = self.c_kv
        a = c_kv * n / 2.0
        b = self.c0 + self.c_dec * n + c_kv * ctx - a
        # Largest j with T(j) <= elapsed, T(j) = a j^2 + b j = decode_run(n, ctx, j).
        if a > 0:
            j = int((-b + math.sqrt(b * b + 4 * a * max(elapsed, 0.0))) / (2 * a))
        else:
            j = int(elapsed / b) if b > 0 else m
        j = max(0, min(j, m))
        run = self.decode_run
        while j + 1 <= m and run(n, ctx, j + 1) <= elapsed:
            j += 1
        while j > 0 and run(n, ctx, j) > elapsed:
            j -= 1
        return min(j + 1, m)

    def iteration_time(
        self,
        prefill_tokens: np.ndarray | float,
        prefill_context: np.ndarray | float,
        decode_seqs: np.ndarray | float,
        decode_kv_tokens: np.ndarray | float,
    ) -> np.ndarray | float:
        """Time of iterations with one prefill chunk each, seconds (broadcasts).

        Parameters
        ----------
        prefill_tokens : array_like
            New prompt tokens computed in the iteration, tokens.
        prefill_context : array_like
            Tokens already in the KV cache of the prefilling sequence, tokens.
        decode_seqs : array_like
            Sequences decoding one token, sequences.
        decode_kv_tokens : array_like
            Sum of the decoding sequences' contexts, tokens.
        """
        pt = np.asarray(prefill_tokens, dtype=np.float64)
        pc = np.asarray(prefill_context, dtype=np.float64)
        kv = np.where(pt > 0, pc + pt, 0.0) + np.asarray(decode_kv_tokens, dtype=np.float64)
        return self.step_end(0.0, pt, np.asarray(decode_seqs, dtype=np.float64), kv,
                             pt * (pc + pt / 2.0))


@dataclass(frozen=True, slots=True)
class Preset:
    """A named hardware/model preset: latency coefficients plus instance limits.

    Attributes
    ----------
    name : str
        Preset name (the JSON file stem).
    latency : LatencyModel
        Iteration-latency coefficients.
    kv_capacity_tokens : int
        KV-cache capacity of one instance, tokens.
    token_budget : int
        Tokens scheduled per iteration (prefill chunk budget incl. decode tokens), tokens.
    max_batch : int
        Maximum running requests per instance.
    description : str
        How the numbers were obtained.
    fit_error : dict or None
        ``{"mean": ..., "max": ...}`` relative error of the latency model on the rows it was
        calibrated on; ``None`` for an uncalibrated (roofline) preset.
    """

    name: str
    latency: LatencyModel
    kv_capacity_tokens: int
    token_budget: int = 8192
    max_batch: int = 256
    description: str = ""
    fit_error: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (inverse of :func:`preset_from_dict`; the fit error is not
        written here, the calibrator writes its ``fit`` record)."""
        d = asdict(self)
        d.pop("fit_error", None)
        return d


class PresetFieldError(ValueError):
    """A preset field is missing or out of range; ``field`` is its dotted name
    (``"latency.c_pf"``), or ``None`` for the whole document."""

    def __init__(self, field: str | None, message: str) -> None:
        self.field = field
        super().__init__(message)


def preset_from_dict(d: Any, name: str | None = None) -> Preset:
    """Build a :class:`Preset` from its JSON dictionary.

    Every number is checked against its stated range (:mod:`lmetric_theory.core.limits`):
    coefficients ``latency.c0 .. latency.c_att`` finite, ``>= 0`` and at most
    ``COEF_MAX`` (seconds per unit), ``kv_capacity_tokens`` an integer in ``[1, 2**40]``,
    ``token_budget`` in ``[1, 2**24]``, ``max_batch`` in ``[1, 2**20]`` and at most
    ``token_budget``; booleans and text are refused. Other keys (such as a calibration's ``fit``) are ignored.

    Raises
    ------
    ValueError
        ``"preset 'NAME': field 'latency.c_pf': expected ..., got ..."`` (a
        :class:`PresetFieldError` whose ``field`` names the field).
    """
    label = repr(name) if name is not None else "document"
    if not isinstance(d, dict):
        raise PresetFieldError(None, f"preset {label}: expected a JSON object, got {_json_type(d)}")
    if name is None:
        if "name" not in d:
            raise PresetFieldError("name", "preset document: field 'name': missing")
        if not isinstance(d["name"], str) or not d["name"]:
            raise PresetFieldError("name", f"preset document: field 'name': expected a non-empty "
                                   f"string, got {_json_type(d['name'])}")
        name = d["name"]
        label = repr(name)

    def bad(field: str, msg: str) -> PresetFieldError:
        return PresetFieldError(field, f"preset {label}: field '{field}': {msg}")

    lat = d.get("latency")
    if not isinstance(lat, dict):
        raise bad("latency", "missing" if lat is None else
                  f"expected an object of coefficients, got {_json_type(lat)}")
    coef: dict[str, float] = {}
    for k, unit in COEFFICIENTS.items():
        if k not in lat:
            if k == "c_att":
                coef[k] = 0.0
                continue
            raise bad(f"latency.{k}", "missing")
        try:
            coef[k] = check_number(k, lat[k], lo=0.0, hi=COEF_MAX[k], unit=unit)
        except ValueError as exc:
            raise bad(f"latency.{k}", str(exc).partition(": ")[2]) from None
    limits = {
        "kv_capacity_tokens": (None, KV_CAPACITY_MAX),
        "token_budget": (8192, TOKENS_MAX),
        "max_batch": (256, BATCH_MAX),
    }
    ints: dict[str, int] = {}
    for k, (default, hi) in limits.items():
        if k not in d and default is None:
            raise bad(k, "missing")
        try:
            ints[k] = check_int(k, d.get(k, default), lo=1, hi=hi)
        except ValueError as exc:
            raise bad(k, str(exc).partition(": ")[2]) from None
    if ints["max_batch"] > ints["token_budget"]:
        raise bad("max_batch", f"{ints['max_batch']} exceeds token_budget {ints['token_budget']} "
                  "(every running sequence decodes one token per iteration)")
    desc = d.get("description", "")
    if not isinstance(desc, str):
        raise bad("description", f"expected a string, got {_json_type(desc)}")
    fit = d.get("fit")
    fit_error = None
    if isinstance(fit, dict) and "mean_rel_error" in fit and "worst_rel_error" in fit:
        try:
            fit_error = {"mean": check_number("fit.mean_rel_error", fit["mean_rel_error"], lo=0.0),
                         "max": check_number("fit.worst_rel_error", fit["worst_rel_error"], lo=0.0)}
        except ValueError as exc:
            raise bad("fit", str(exc).partition(": ")[2]) from None
    return Preset(
        name=str(name),
        latency=LatencyModel(**coef),
        kv_capacity_tokens=ints["kv_capacity_tokens"],
        token_budget=ints["token_budget"],
        max_batch=ints["max_batch"],
        description=desc,
        fit_error=fit_error,
    )


def _json_type(v: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null",
             int: "number", float: "number"}
    return names.get(type(v), type(v).__name__)


def load_preset_file(path: str | PathLike[str]) -> Preset:
    """Read a preset JSON file (as ``calibrate --out`` writes); its name is the file stem.

    Raises
    ------
    ValueError
        ``"FILE, line K: field 'latency.c_pf': expected ..."``: invalid UTF-8 or JSON, a
        missing field or a value out of range (see :func:`preset_from_dict`); the line is the
        one holding the field's key.
    OSError
        The file cannot be read.
    """
    p = Path(path)
    try:
        text = read_text(p, "a preset")
    except TextFileError as exc:
        raise ValueError(f"{p}, line {exc.line}: {exc.reason}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}, line {exc.lineno}: not valid JSON ({exc.msg})") from None
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{p}: not valid JSON ({str(exc)[:80] or 'nested too deeply'})") from None
    try:
        return preset_from_dict(doc, name=p.stem)
    except PresetFieldError as exc:
        line = _key_line(text, exc.field)
        where = f"{p}, line {line}" if line is not None else str(p)
        msg = str(exc).split(": ", 1)[1] if str(exc).startswith("preset ") else str(exc)
        raise ValueError(f"{where}: {msg}") from None


def _key_line(text: str, field: str | None) -> int | None:
    """1-based line of the first occurrence of the last key of a dotted field name."""
    if not field:
        return None
    m = re.search(r'"' + re.escape(field.rsplit(".", 1)[-1]) + r'"\s*:', text)
    return text.count("\n", 0, m.start()) + 1 if m else None


def list_presets() -> list[str]:
    """Names of the presets shipped with the package (sorted)."""
    root = resources.files("lmetric_theory.presets")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".json"))


def load_preset(name: str) -> Preset:
    """Load a shipped preset by name; ``ValueError`` listing the valid names otherwise."""
    valid = list_presets()
    if name not in valid:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(valid)}")
    text = resources.files("lmetric_theory.presets").joinpath(f"{name}.json").read_text()
    return preset_from_dict(json.loads(text), name=name)


def roofline_preset(
    name: str,
    *,
    params: float,
    n_layers: int,
    n_heads: int,
    n_kv_heads: int,
    head_dim: int,
    hbm_bytes_per_s: float,
    peak_flops: float,
    hbm_capacity_bytes: float,
    bytes_per_param: float = 2.0,
    bandwidth_efficiency: float = 0.7,
    compute_efficiency: float = 0.5,
    memory_utilization: float = 0.9,
    per_sequence_overhead_s: float = 1.0e-5,
    token_budget: int = 8192,
    max_batch: int = 256,
    active_params: float | None = None,
) -> Preset:
    """Latency coefficients from a roofline of the model on the accelerator.

    - ``c0`` = weight bytes / (HBM bandwidth x ``bandwidth_efficiency``): every iteration
      reads all weights once (for a mixture of experts, all expert weights: a batch of many
      tokens routes to most experts);
    - ``c_pf`` = 2 x ``active_params`` FLOPs per token / (peak x ``compute_efficiency``);
      ``active_params`` (the parameters one token passes through) defaults to ``params``
      (dense model);
    - ``c_kv`` = KV bytes per token (2 x layers x kv_heads x head_dim x 2 bytes) / effective
      bandwidth;
    - ``c_att`` = 4 x layers x heads x head_dim FLOPs per (query, key) pair / effective peak,
      halved by causality through the ``chunk/2`` in the model;
    - ``c_dec`` = a per-sequence overhead (sampling, bookkeeping): an assumption, not roofline;
    - KV capacity = (HBM x ``memory_utilization`` - weights) / KV bytes per token.
    """
    weights = params * bytes_per_param
    active = params if active_params is None else active_params
    if not 0 < active <= params:
        raise ValueError(f"active_params must be in (0, params], got {active_params}")
    bw = hbm_bytes_per_s * bandwidth_efficiency
    flops = peak_flops * compute_efficiency
    kv_bytes = 2 * n_layers * n_kv_heads * head_dim * 2
    latency = LatencyModel(
        c0=weights / bw,
        c_pf=2.0 * active / flops,
        c_dec=per_sequence_overhead_s,
        c_kv=kv_bytes / bw,
        c_att=4.0 * n_layers * n_heads * head_dim / flops,
    )
    cap = int((hbm_capacity_bytes * memory_utilization - weights) // kv_bytes)
    moe = "" if active == params else f" ({active / 1e9:.2f}B active per token for FLOPs)"
    desc = (
        f"roofline: {params / 1e9:.2f}B params{moe} x {bytes_per_param:g} B, HBM {hbm_bytes_per_s / 1e12:.3g} TB/s"
        f" x {bandwidth_efficiency:g}, peak {peak_flops / 1e12:.0f} TFLOP/s x {compute_efficiency:g},"
        f" KV {kv_bytes} B/token, {hbm_capacity_bytes / 1e9:.0f} GB x {memory_utilization:g};"
        f" c_dec = {per_sequence_overhead_s:g} s/sequence overhead (assumption)"
    )
    return Preset(name, latency, cap, token_budget, max_batch, desc)


@dataclass(frozen=True, slots=True)
class FitReport:
    """Result of :func:`fit_latency`.

    Attributes
    ----------
    model : LatencyModel
        Fitted coefficients.
    mean_rel_error, worst_rel_error : float
        Mean and maximum of ``|pred - measured| / measured`` over the rows.
    rows : int
        Rows fitted.
    rel_errors : np.ndarray, shape (rows,), float64
        Signed relative error per row.
    """

    model: LatencyModel
    mean_rel_error: float
    worst_rel_error: float
    rows: int
    rel_errors: np.ndarray


class UnidentifiableError(ValueError):
    """The calibration rows cannot determine some coefficients.

    Attributes
    ----------
    coefficients : tuple of str
        The coefficients the rows leave undetermined (``"c_pf"``, ...).
    """

    def __init__(self, coefficients: tuple[str, ...], message: str) -> None:
        self.coefficients = coefficients
        super().__init__(message)


#: What a coefficient needs in the rows, worded as what is missing when it is absent.
_MISSING_ROWS = {
    "c_pf": "no rows with prefill_tokens > 0",
    "c_dec": "no rows with decode_seqs > 0",
    "c_kv": "no rows that read the KV cache (prefill_tokens > 0, or decode_seqs > 0 with "
    "decode_context > 0)",
    "c_att": "no rows with prefill_tokens > 0",
}
#: Smallest singular value, relative to the largest, of the column-normalised relative
#: design matrix for the coefficients to count as separable.
_RANK_TOL = 1e-9


def fit_latency(
    prefill_tokens: np.ndarray,
    prefill_context: np.ndarray,
    decode_seqs: np.ndarray,
    decode_context: np.ndarray,
    iteration_s: np.ndarray,
    *,
    attention: bool = False,
    pin: dict[str, float] | None = None,
) -> FitReport:
    """Fit the coefficients to measured iteration times by least squares on relative error.

    Parameters
    ----------
    prefill_tokens, prefill_context, decode_seqs, decode_context : np.ndarray, shape (n,)
        Iteration composition (tokens, tokens, sequences, tokens per sequence), finite, >= 0.
    iteration_s : np.ndarray, shape (n,)
        Measured iteration time, seconds (finite, > 0).
    attention : bool
        Fit the prefill-attention coefficient ``c_att`` too (otherwise it is 0).
    pin : dict, optional
        Coefficients held at given values instead of fitted (``{"c_pf": 2.1e-5}``), e.g.
        one the rows cannot determine.

    Returns
    -------
    FitReport

    Raises
    ------
    UnidentifiableError
        A free coefficient is not determined by the rows: its term is zero in every row
        (the message names the rows that are missing, e.g. "no rows with prefill_tokens >
        0"), or two terms are proportional over the rows; also fewer rows than free
        coefficients. Nothing is fitted then: pin the coefficient or add rows.
    ValueError
        Invalid input, or a fit whose coefficients leave the stated ranges of
        :class:`LatencyModel` (the data are not iteration times in seconds).
    """
    from scipy.optimize import least_squares  # slow import; only the calibrator needs it

    pt = np.asarray(prefill_tokens, dtype=np.float64)
    pc = np.asarray(prefill_context, dtype=np.float64)
    ds = np.asarray(decode_seqs, dtype=np.float64)
    dc = np.asarray(decode_context, dtype=np.float64)
    y = np.asarray(iteration_s, dtype=np.float64)
    if y.ndim != 1 or y.size == 0 or not all(a.shape == y.shape for a in (pt, pc, ds, dc)):
        raise ValueError("calibration columns must be 1-d arrays of the same non-zero length")
    if np.any(~np.isfinite(y)) or np.any(y <= 0):
        raise ValueError("measured iteration times must be finite and > 0")
    for col, a in (("prefill_tokens", pt), ("prefill_context", pc), ("decode_seqs", ds),
                   ("decode_context", dc)):
        if not np.all(np.isfinite(a) & (a >= 0)):
            raise ValueError(f"{col}: every value must be finite and >= 0")
    pin = dict(pin or {})
    for k, v in pin.items():
        if k not in COEFFICIENTS:
            raise ValueError(f"pin: unknown coefficient {k!r}; valid: {', '.join(COEFFICIENTS)}")
        pin[k] = check_number(f"pin {k}", v, lo=0.0, hi=COEF_MAX[k])
    kv = np.where(pt > 0, pc + pt, 0.0) + ds * dc
    terms = {"c0": np.ones_like(y), "c_pf": pt, "c_dec": ds, "c_kv": kv}
    if attention or "c_att" in pin:
        terms["c_att"] = pt * (pc + pt / 2.0)
    free = [k for k in terms if k not in pin]
    fixed = sum((pin[k] * terms[k] for k in terms if k in pin), np.zeros_like(y))
    _check_identifiable(free, terms, y)
    X = np.stack([terms[k] for k in free], axis=1)
    target = y - fixed
    # Scale columns so the solver works on numbers of order one.
    scale = 1.0 / np.abs(X / y[:, None]).max(axis=0)
    Xs = X * scale
    # Start from the non-negative least-squares solution of the relative problem.
    from scipy.optimize import nnls

    x0, _ = nnls(Xs / y[:, None], target / y)

    def resid(z: np.ndarray) -> np.ndarray:
        return (Xs @ z - target) / y

    sol = least_squares(resid, x0 + 1e-12, bounds=(0.0, np.inf), method="trf", x_scale="jac")
    coef = dict(pin)
    coef.update({k: float(c) for k, c in zip(free, sol.x * scale, strict=True)})
    coef.setdefault("c_att", 0.0)
    for k, unit in COEFFICIENTS.items():
        if not (np.isfinite(coef[k]) and coef[k] <= COEF_MAX[k]):
            raise ValueError(
                f"the fit gives {k} = {coef[k]:.3g} {unit}, outside the stated range "
                f"[0, {COEF_MAX[k]:g}] {unit}: are iteration_s_median values in seconds?"
            )
    model = LatencyModel(**coef)
    pred = model.iteration_time(pt, pc, ds, ds * dc)
    rel = (np.asarray(pred) - y) / y
    return FitReport(model, float(np.mean(np.abs(rel))), float(np.max(np.abs(rel))), int(y.size), rel)


def _check_identifiable(free: list[str], terms: dict[str, np.ndarray], y: np.ndarray) -> None:
    """Raise :class:`UnidentifiableError` unless the rows determine every free coefficient."""
    zero = [k for k in free if not np.any(terms[k] > 0)]
    if zero:
        why = "; ".join(dict.fromkeys(_MISSING_ROWS[k] for k in zero))
        raise UnidentifiableError(
            tuple(zero),
            f"cannot fit {', '.join(zero)}: {why}; add such rows, or pin "
            f"{'it' if len(zero) == 1 else 'them'} (e.g. --pin {zero[0]}=VALUE)",
        )
    if y.size < len(free):
        raise UnidentifiableError(
            tuple(free),
            f"cannot fit {len(free)} coefficients ({', '.join(free)}) from {y.size} row(s); "
            "add rows or pin coefficients",
        )
    Z = np.stack([terms[k] for k in free], axis=1) / y[:, None]
    Z = Z / np.linalg.norm(Z, axis=0)
    _, sv, vt = np.linalg.svd(Z, full_matrices=False)
    if sv[-1] <= _RANK_TOL * sv[0]:
        null = np.abs(vt[-1])
        tied = tuple(k for k, w in zip(free, null, strict=True) if w > 0.05)
        raise UnidentifiableError(
            tied,
            f"cannot separate {', '.join(tied)}: over these rows their terms are linearly "
            "dependent, so only a combination of them is determined (e.g. decode_seqs is the "
            "same in every row); add rows where they vary independently, or pin one of them "
            "(--pin NAME=VALUE)",
        )
