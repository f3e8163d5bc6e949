"""The linear reference an audit compares with: the latency model's band, or a tuned rate."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from lmetric_theory.detector import (
    LinearReference,
)

__all__ = ["DEFAULT_BAND_FACTOR", "DEFAULT_PRESET", "NOMINAL_CONTEXT_TOKENS", "NOMINAL_OUTPUT_TOKENS", "default_reference", "reference_from_tuning", "tuned_reference"]


#: Preset the audit replays on unless told otherwise.
DEFAULT_PRESET = "h100-llama3-8b-calibrated"
#: Multiplicative half-width of the default latency-model band.
DEFAULT_BAND_FACTOR = 2.0
#: Nominal request shape used for the default reference when no workload is known
#: (snapshot files): mean context tokens of a running sequence, and output tokens.
NOMINAL_CONTEXT_TOKENS = 2048.0
NOMINAL_OUTPUT_TOKENS = 256.0


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
    p_definition: str = "router-queued+new",
    b_definition: str = "router-in-flight",
    tolerance: float = 0.05,
    config: Any = None,
) -> LinearReference:
    """A reference tuned with the simulator, for ``--tune``.

    Runs :func:`lmetric_theory.experiments.tuning.tune_linear` (``linear`` replayed over a
    log-spaced grid of ``lam``, mean TTFT minimised) and turns it into a reference with
    :func:`reference_from_tuning`. With no workload to tune on (snapshot audits), falls
    back to :func:`default_reference` and says so in the provenance. ``config`` (a
    :class:`~lmetric_theory.sim.SimConfig`), when given, is the cluster the tuning simulates
    (scheduler included) instead of ``instances`` instances of ``preset``.
    """
    if workload is not None:
        from lmetric_theory.experiments.tuning import tune_linear

        res = tune_linear(workload, instances=int(instances), preset=_load_preset(preset),
                          config=config, seed=seed, P=str(p_definition), B=str(b_definition))
        ref = reference_from_tuning(res, tolerance=tolerance)
        return dataclasses.replace(
            ref, provenance=f"{ref.provenance}; linear scored with P={p_definition}, "
                            f"B={b_definition}")
    ref = default_reference(preset, workload)
    why = "no workload to tune on (snapshot audit)"
    return LinearReference(ref.lam, ref.lam_lo, ref.lam_hi, source="latency_model",
                           provenance=f"--tune requested but {why}; lam {ref.provenance}")
