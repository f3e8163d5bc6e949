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
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

import numpy as np

__all__ = [
    "LatencyModel",
    "FitReport",
    "Preset",
    "fit_latency",
    "list_presets",
    "load_preset",
    "preset_from_dict",
    "roofline_preset",
]


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
        for name in ("c0", "c_pf", "c_dec", "c_kv", "c_att"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and np.isfinite(v) and v >= 0):
                raise ValueError(f"latency coefficient {name} must be a finite number >= 0, got {v!r}")

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
        return (
            self.c0
            + self.c_pf * pt
            + self.c_dec * np.asarray(decode_seqs, dtype=np.float64)
            + self.c_kv * kv
            + self.c_att * pt * (pc + pt / 2.0)
        )


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
    """

    name: str
    latency: LatencyModel
    kv_capacity_tokens: int
    token_budget: int = 8192
    max_batch: int = 256
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (inverse of :func:`preset_from_dict`)."""
        d = asdict(self)
        return d


def preset_from_dict(d: dict[str, Any], name: str | None = None) -> Preset:
    """Build a :class:`Preset` from its JSON dictionary; ``ValueError`` on a bad field."""
    try:
        lat = d["latency"]
        latency = LatencyModel(**{k: float(lat[k]) for k in ("c0", "c_pf", "c_dec", "c_kv")},
                               c_att=float(lat.get("c_att", 0.0)))
        return Preset(
            name=str(name if name is not None else d["name"]),
            latency=latency,
            kv_capacity_tokens=int(d["kv_capacity_tokens"]),
            token_budget=int(d.get("token_budget", 8192)),
            max_batch=int(d.get("max_batch", 256)),
            description=str(d.get("description", "")),
        )
    except KeyError as exc:
        raise ValueError(f"preset {name or d.get('name')!r}: missing field {exc.args[0]!r}") from None


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
) -> Preset:
    """Latency coefficients from a roofline of the model on the accelerator.

    - ``c0`` = weight bytes / (HBM bandwidth x ``bandwidth_efficiency``): every iteration
      reads all weights once;
    - ``c_pf`` = 2 x params FLOPs per token / (peak x ``compute_efficiency``);
    - ``c_kv`` = KV bytes per token (2 x layers x kv_heads x head_dim x 2 bytes) / effective
      bandwidth;
    - ``c_att`` = 4 x layers x heads x head_dim FLOPs per (query, key) pair / effective peak,
      halved by causality through the ``chunk/2`` in the model;
    - ``c_dec`` = a per-sequence overhead (sampling, bookkeeping): an assumption, not roofline;
    - KV capacity = (HBM x ``memory_utilization`` - weights) / KV bytes per token.
    """
    weights = params * bytes_per_param
    bw = hbm_bytes_per_s * bandwidth_efficiency
    flops = peak_flops * compute_efficiency
    kv_bytes = 2 * n_layers * n_kv_heads * head_dim * 2
    latency = LatencyModel(
        c0=weights / bw,
        c_pf=2.0 * params / flops,
        c_dec=per_sequence_overhead_s,
        c_kv=kv_bytes / bw,
        c_att=4.0 * n_layers * n_heads * head_dim / flops,
    )
    cap = int((hbm_capacity_bytes * memory_utilization - weights) // kv_bytes)
    desc = (
        f"roofline: {params / 1e9:.2f}B params x {bytes_per_param:g} B, HBM {hbm_bytes_per_s / 1e12:.3g} TB/s"
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


def fit_latency(
    prefill_tokens: np.ndarray,
    prefill_context: np.ndarray,
    decode_seqs: np.ndarray,
    decode_context: np.ndarray,
    iteration_s: np.ndarray,
    *,
    attention: bool = False,
) -> FitReport:
    """Fit the coefficients to measured iteration times by least squares on relative error.

    Parameters
    ----------
    prefill_tokens, prefill_context, decode_seqs, decode_context : np.ndarray, shape (n,)
        Iteration composition (tokens, tokens, sequences, tokens per sequence).
    iteration_s : np.ndarray, shape (n,)
        Measured iteration time, seconds (> 0).
    attention : bool
        Fit the prefill-attention coefficient ``c_att`` too (otherwise it is 0).

    Returns
    -------
    FitReport
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
    kv = np.where(pt > 0, pc + pt, 0.0) + ds * dc
    cols = [np.ones_like(y), pt, ds, kv]
    if attention:
        cols.append(pt * (pc + pt / 2.0))
    X = np.stack(cols, axis=1)
    # Scale columns so the solver works on numbers of order one.
    scale = 1.0 / np.maximum(np.abs(X / y[:, None]).max(axis=0), 1e-300)
    Xs = X * scale
    # Start from the non-negative least-squares solution of the relative problem.
    from scipy.optimize import nnls

    x0, _ = nnls(Xs / y[:, None], np.ones_like(y))

    def resid(z: np.ndarray) -> np.ndarray:
        return (Xs @ z - y) / y

    sol = least_squares(resid, x0 + 1e-12, bounds=(0.0, np.inf), method="trf", x_scale="jac")
    coef = sol.x * scale
    model = LatencyModel(
        c0=float(coef[0]), c_pf=float(coef[1]), c_dec=float(coef[2]), c_kv=float(coef[3]),
        c_att=float(coef[4]) if attention else 0.0,
    )
    rel = (X @ coef - y) / y
    return FitReport(model, float(np.mean(np.abs(rel))), float(np.max(np.abs(rel))), int(y.size), rel)
