"""Counterfactual evidence for the detector: replay flagged decisions both ways and measure harm.

Procedure (:func:`counterfactual`):

1. Replay the workload under ``lmetric`` (offsets ``p0``, ``b0``, prefill definition ``P``)
   and check every decision with a :class:`~lmetric_theory.detector.Detector` against the
   linear reference ``lam``.
2. Draw a seeded sample of flagged decisions and a control sample of unflagged ones.
3. For each sampled decision ``d`` (request arriving at ``t_d``): fork the simulator right
   before ``d`` and replay two branches, one forcing the product's choice, one forcing the
   *alternative*: the reference's choice when it differs from the product's, otherwise the
   product's runner-up (the instance with the second-lowest product score; so unflagged
   decisions, where the reference agrees, can still turn out harmful). Both branches keep
   routing later requests with ``lmetric`` and run until every *affected* request — the routed
   one plus those arriving in ``(t_d, t_d + window_s]`` — has finished.
4. Harm: the mean TTFT of the affected requests is higher in the product's branch than in the
   alternative's by more than ``threshold_s``.

Estimators (stated honestly: everything comes from the samples)

* ``precision`` = harmful / sampled among flagged decisions (estimates P(harm | flagged)).
* ``recall`` = ``F h_f / (F h_f + U h_u)`` where ``F``, ``U`` are the numbers of flagged and
  unflagged decisions in the run and ``h_f``, ``h_u`` the harm rates in the two samples (a
  stratified estimate of P(flagged | harm)); ``nan`` when no sampled decision was harmful.
  The two strata use different alternatives (see step 3), so "harm" in the control stratum
  means "the runner-up would have been better".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lmetric_theory.detector import Detector, LinearReference
from lmetric_theory.sim import SimConfig, Simulator
from lmetric_theory.workload import Workload

__all__ = ["CounterfactualCase", "CounterfactualReport", "counterfactual"]


@dataclass(frozen=True, slots=True)
class CounterfactualCase:
    """One sampled decision replayed both ways.

    Attributes
    ----------
    decision : int
        Decision index (= request index; requests are routed in arrival order).
    time_s : float
        Decision time, seconds.
    flagged : bool
        Whether the detector flagged it.
    product_choice, alternative_choice : int
        Instances of the two branches.
    alternative : str
        ``"reference"`` or ``"runner_up"``.
    affected : int
        Requests compared (the routed one plus arrivals in the window).
    ttft_product_s, ttft_alternative_s : float
        Mean TTFT of the affected requests in each branch, seconds.
    tpot_product_s, tpot_alternative_s : float
        Mean TPOT of the affected multi-token requests in each branch, seconds (nan if none).
    harmful : bool
        ``ttft_product_s - ttft_alternative_s > threshold_s``.
    """

    decision: int
    time_s: float
    flagged: bool
    product_choice: int
    alternative_choice: int
    alternative: str
    affected: int
    ttft_product_s: float
    ttft_alternative_s: float
    tpot_product_s: float
    tpot_alternative_s: float
    harmful: bool

    @property
    def ttft_delta_s(self) -> float:
        """Product minus alternative mean TTFT, seconds (> 0: the product's choice was worse)."""
        return self.ttft_product_s - self.ttft_alternative_s

    @property
    def tpot_delta_s(self) -> float:
        """Product minus alternative mean TPOT, seconds."""
        return self.tpot_product_s - self.tpot_alternative_s


@dataclass(frozen=True, slots=True)
class CounterfactualReport:
    """Sampled counterfactual replays and the precision / recall estimates (see module doc).

    Attributes
    ----------
    cases : tuple of CounterfactualCase
        Flagged sample first, then control sample, each in decision order.
    decisions, flagged, unflagged : int
        Population counts in the run.
    precision : float
        Share of sampled flagged decisions that were harmful (nan if none sampled).
    recall : float
        Stratified estimate of the share of harmful decisions that were flagged.
    harm_rate_flagged, harm_rate_control : float
        Harm rates in the two samples.
    lam, window_s, threshold_s : float
        Reference rate (tokens per slot), window and harm threshold (seconds).
    flag : str
        What counted as flagged (``"any"`` finding or ``"disagreement"`` only).
    seed : int
        Sampling seed.
    """

    cases: tuple[CounterfactualCase, ...]
    decisions: int
    flagged: int
    unflagged: int
    precision: float
    recall: float
    harm_rate_flagged: float
    harm_rate_control: float
    lam: float
    window_s: float
    threshold_s: float
    seed: int
    flag: str = "any"

    def to_dict(self) -> dict:
        """JSON-ready summary (without the per-case list)."""
        return {k: getattr(self, k) for k in ("decisions", "flagged", "unflagged", "precision", "recall",
                                               "harm_rate_flagged", "harm_rate_control", "lam", "window_s",
                                               "threshold_s", "seed", "flag")} | {
            "sampled_flagged": sum(c.flagged for c in self.cases),
            "sampled_control": sum(not c.flagged for c in self.cases),
        }


def _run_until_finished(sim: Simulator, idx: np.ndarray, t0: float) -> tuple[np.ndarray, np.ndarray]:
    """Advance ``sim`` until requests ``idx`` have finished; their TTFT and TPOT (s)."""
    step = 1.0
    t = t0
    while True:
        t += step
        res = sim.run(until_time=t)
        if np.all(np.isfinite(res.e2e_s[idx])) or not sim._heap:  # noqa: SLF001 (no public "done" probe)
            return res.ttft_s[idx], res.tpot_s[idx]
        step *= 2


def _mean(a: np.ndarray) -> float:
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else math.nan


def counterfactual(
    workload: Workload,
    config: SimConfig,
    *,
    lam: float,
    P: str = "uncached",
    p0: int = 0,
    b0: int = 1,
    window_s: float = 5.0,
    threshold_s: float = 0.0,
    n_flagged: int = 20,
    n_control: int = 20,
    seed: int = 0,
    flag: str = "any",
) -> CounterfactualReport:
    """Replay sampled flagged and unflagged decisions both ways (see the module docstring).

    Parameters
    ----------
    workload : Workload
        Requests (arrival order).
    config : SimConfig
        Cluster settings.
    lam : float
        Reference exchange rate, tokens per batch slot (>= 0).
    P : {"uncached", "queued+uncached"}
        Prefill definition of the product (and the detector's ``P``).
    p0, b0 : int
        Product offsets (tokens, slots).
    window_s : float
        Window after the decision whose arrivals count as affected, seconds (>= 0).
    threshold_s : float
        Mean-TTFT difference above which the product's branch counts as harmful, seconds.
    n_flagged, n_control : int
        Sample sizes (capped at the population sizes).
    seed : int
        Sampling seed.
    flag : {"any", "disagreement"}
        What counts as flagged: any finding, or only a disagreement with the reference
        (the other findings — degenerate cases, fragile, extreme — then fall in the control
        stratum).

    Returns
    -------
    CounterfactualReport
    """
    if not (math.isfinite(window_s) and window_s >= 0):
        raise ValueError(f"window_s must be finite and >= 0, got {window_s}")
    if not math.isfinite(threshold_s) or threshold_s < 0:
        raise ValueError(f"threshold_s must be finite and >= 0, got {threshold_s}")
    if flag not in ("any", "disagreement"):
        raise ValueError(f"flag: {flag!r} is not one of any, disagreement")
    if n_flagged < 0 or n_control < 0:
        raise ValueError("n_flagged and n_control must be >= 0")
    spec = f"lmetric:P={P},p0={p0},b0={b0}"
    cfg = config if config.record_snapshots else SimConfig(**{**config.to_dict(), "record_snapshots": True})
    base = Simulator(workload, cfg, spec)
    log = base.fork().run().snapshots
    assert log is not None
    unc = log.uncached.astype(np.int64)
    Pm = unc + log.queued.astype(np.int64) if P == "queued+uncached" else unc
    Bm = log.running.astype(np.int64)
    det = Detector(LinearReference.fixed(lam), p0, b0)
    ver = det.check_many(Pm, Bm, validate=False)
    flagged = np.asarray(ver.flagged if flag == "any" else ver.disagrees, dtype=bool)
    D = len(log)
    rng = np.random.default_rng([seed, 0xCF])
    fl = np.flatnonzero(flagged)
    un = np.flatnonzero(~flagged)
    s_f = np.sort(rng.choice(fl, size=min(n_flagged, fl.size), replace=False)) if fl.size else fl
    s_u = np.sort(rng.choice(un, size=min(n_control, un.size), replace=False)) if un.size else un
    arrival = np.asarray(workload.arrival_s, dtype=np.float64)
    score = (Pm + p0) * (Bm + b0)

    cases: dict[int, CounterfactualCase] = {}
    for d in np.sort(np.concatenate([s_f, s_u])).tolist():
        prod = int(log.chosen[d])
        lin = int(ver.linear_choice[d])
        if lin != prod:
            alt, kind = lin, "reference"
        else:
            order = [int(i) for i in np.lexsort((np.arange(score.shape[1]), score[d])) if i != prod]
            if not order:
                continue  # one instance: nothing to compare
            alt, kind = order[0], "runner_up"
        t_d = float(log.time_s[d])
        req = int(log.request[d])
        hi = int(np.searchsorted(arrival, t_d + window_s, side="right"))
        idx = np.arange(req, max(hi, req + 1))
        base.advance(until_decision=d)
        out = []
        for c in (prod, alt):
            f = base.fork()
            f.force(d, c)
            out.append(_run_until_finished(f, idx, t_d + window_s))
        (tt_p, tp_p), (tt_a, tp_a) = out
        mp, ma = _mean(tt_p), _mean(tt_a)
        cases[d] = CounterfactualCase(
            decision=d, time_s=t_d, flagged=bool(flagged[d]), product_choice=prod, alternative_choice=alt,
            alternative=kind, affected=int(idx.size), ttft_product_s=mp, ttft_alternative_s=ma,
            tpot_product_s=_mean(tp_p), tpot_alternative_s=_mean(tp_a), harmful=bool(mp - ma > threshold_s),
        )
    cf = [cases[d] for d in s_f.tolist() if d in cases]
    cu = [cases[d] for d in s_u.tolist() if d in cases]
    h_f = sum(c.harmful for c in cf) / len(cf) if cf else math.nan
    h_u = sum(c.harmful for c in cu) / len(cu) if cu else math.nan
    F, U = int(fl.size), int(un.size)
    num = F * (h_f if cf else 0.0)
    den = num + U * (h_u if cu else 0.0)
    recall = num / den if den > 0 else math.nan
    return CounterfactualReport(
        cases=tuple(cf + cu), decisions=D, flagged=F, unflagged=U, precision=h_f, recall=recall,
        harm_rate_flagged=h_f, harm_rate_control=h_u, lam=float(lam), window_s=float(window_s),
        threshold_s=float(threshold_s), seed=int(seed), flag=flag,
    )
