"""The router's own state in an audit: the report's ``router_state`` list (``replica_skew``,
``herding``, ``stale_index``; :mod:`lmetric_theory.detector.router_state`).

A replay whose snapshot log carries the router-state fields (per decision ``replica``,
``true_batch`` and ``true_queued_tokens``: the engines' counters beside the router view) and
whose result carries ``predicted_cached_tokens`` and ``cached_tokens`` per request goes
through one :class:`~lmetric_theory.detector.RouterStateMonitor`. The engines' ``P`` and
``B`` are the audit's own signal definitions evaluated on the log with the router's
counters replaced by the engines' ones, so ``replica_skew`` compares like with like.
Without the fields there is no ``router_state`` key; with one replica, no lag and a precise
index the list is empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lmetric_theory.core.definitions import ScoreDefinition
from lmetric_theory.core.signals import score_inputs
from lmetric_theory.detector import RouterStateSettings, router_state_findings
from lmetric_theory.detector.findings import ROUTER_STATE_KINDS

__all__ = ["RouterStateDecisions", "RouterStateEntry", "replay_router_state_settings",
           "router_state_decisions", "router_state_entries", "router_state_from_log"]


@dataclass(frozen=True, slots=True)
class RouterStateEntry:
    """One router-state finding of an audit.

    Attributes
    ----------
    kind : str
        ``replica_skew``, ``herding`` or ``stale_index``.
    severity : str
        ``info``, ``warning`` or ``critical``.
    message : str
        The finding with its counts.
    mitigation : str
        The mitigation's kind (``counter_sync``, ``random_near_ties``, ``shorter_ttl``,
        ``none``).
    mitigation_value : float or None
        Its value (replicas, relative tolerance, seconds).
    first_decision : int
        Decision index at which it was first raised.
    """

    kind: str
    severity: str
    message: str
    mitigation: str
    mitigation_value: float | None
    first_decision: int

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict with the keys of ``docs/audit.md``."""
        return {"kind": self.kind, "severity": self.severity, "message": self.message,
                "mitigation": self.mitigation, "mitigation_value": self.mitigation_value,
                "first_decision": self.first_decision}


def router_state_entries(
    time_s: Any,
    chosen: Any,
    prefill_tokens: Any,
    batch_size: Any,
    *,
    replica: Any = None,
    true_prefill: Any = None,
    true_batch: Any = None,
    predicted_cached: Any = None,
    actual_cached: Any = None,
    settings: RouterStateSettings | None = None,
    p0: Any = 0,
    b0: Any = 1,
) -> tuple[RouterStateEntry, ...]:
    """The audit entries of :func:`~lmetric_theory.detector.router_state_findings` (same
    parameters)."""
    findings, mon = router_state_findings(
        time_s, chosen, prefill_tokens, batch_size, replica=replica,
        true_prefill=true_prefill, true_batch=true_batch, predicted_cached=predicted_cached,
        actual_cached=actual_cached, settings=settings, p0=p0, b0=b0,
    )
    out = []
    for f in findings:
        first = mon.first_decision(f.kind)
        assert first is not None  # a finding exists only once raised
        out.append(RouterStateEntry(f.kind, str(f.severity), f.message, f.mitigation.kind.value,
                                    f.mitigation.value, first))
    return tuple(out)


class _EngineView:
    """The log with the router's counters replaced by the engines' ones."""

    _SWAP = {"router_inflight": "true_batch", "router_queued": "true_queued_tokens"}

    def __init__(self, log: Any) -> None:
        self._log = log

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, self._SWAP.get(name, name))


def replay_router_state_settings(config: Any, block_tokens: int) -> RouterStateSettings:
    """The finding thresholds that fit a replay's router state.

    Parameters
    ----------
    config : SimConfig
        The replay's configuration: ``router_replicas`` is ``R``; the lag window is the
        larger of ``signal_delay_s`` and ``kv_event_lag_s`` (seconds; 0: only decisions
        at the same instant herd); an approximate index's ``ttl_s`` is the TTL the
        ``shorter_ttl`` mitigation halves.
    block_tokens : int
        Tokens per KV block of the workload (the unit of ``stale_blocks``).

    Returns
    -------
    RouterStateSettings
        Default thresholds with those four values.
    """
    index = getattr(config, "index", None)
    lag = max(float(getattr(config, "signal_delay_s", 0.0) or 0.0),
              float(getattr(config, "kv_event_lag_s", 0.0) or 0.0))
    return RouterStateSettings(replicas=max(1, int(getattr(config, "router_replicas", 1))),
                               lag_s=lag, block_tokens=max(1, int(block_tokens)),
                               ttl_s=getattr(index, "ttl_s", None))


def router_state_from_log(
    log: Any,
    result: Any,
    score: ScoreDefinition,
    *,
    settings: RouterStateSettings | None = None,
) -> tuple[RouterStateEntry, ...] | None:
    """The router-state entries of a replay, or None when its log lacks the fields.

    Parameters
    ----------
    log : SnapshotLog
        The replay's decisions (``replica``, ``true_batch``, ``true_queued_tokens`` needed).
    result : SimResult or None
        For ``predicted_cached_tokens`` and ``cached_tokens`` per request (optional: without
        them ``stale_index`` is not checked).
    score : ScoreDefinition
        The audit's signal definitions and offsets.
    settings : RouterStateSettings, optional
        Thresholds; by default ``replicas`` is the number of distinct replicas in the log.
    """
    inputs = _log_inputs(log, result, score, settings)
    if inputs is None:
        return None
    return router_state_entries(**inputs)


def _log_inputs(log: Any, result: Any, score: ScoreDefinition,
                settings: RouterStateSettings | None) -> dict[str, Any] | None:
    """Keyword arguments of :func:`router_state_entries` for a replay's log (None when the
    log lacks the router-state fields); parameters as in :func:`router_state_from_log`."""
    fields = ("replica", "true_batch", "true_queued_tokens")
    if any(getattr(log, f, None) is None for f in fields):
        return None
    replica = np.asarray(log.replica, dtype=np.int64)
    if settings is None:
        settings = RouterStateSettings(replicas=max(1, int(np.unique(replica).size)))
    P, B = score_inputs(log, score)
    TP, TB = score_inputs(_EngineView(log), score)
    pred = actual = None
    if result is not None and getattr(result, "predicted_cached_tokens", None) is not None:
        req = np.asarray(log.request, dtype=np.int64)
        pred = np.asarray(result.predicted_cached_tokens, dtype=np.float64)[req]
        actual = np.asarray(result.cached_tokens, dtype=np.float64)[req]
        actual[actual < 0] = np.nan  # never admitted: no hit to compare
        pred[~np.isfinite(actual)] = np.nan
    return {"time_s": log.time_s, "chosen": log.chosen, "prefill_tokens": P, "batch_size": B,
            "replica": replica, "true_prefill": TP, "true_batch": TB,
            "predicted_cached": pred, "actual_cached": actual, "settings": settings,
            "p0": score.p0, "b0": score.b0}


@dataclass(frozen=True, slots=True)
class RouterStateDecisions:
    """Per-decision router-state conditions of a replay (the counterfactual study's flags).

    Attributes
    ----------
    events : dict of str to np.ndarray of bool, shape (D,)
        Per kind, the decisions that meet the kind's condition by themselves
        (:attr:`RouterStateMonitor.last_events
        <lmetric_theory.detector.RouterStateMonitor.last_events>`).
    active : dict of str to np.ndarray of bool, shape (D,)
        Per kind, the decisions after which the kind's finding is active (its share over
        the window reached).
    first_decision : dict of str to int or None
        Per kind, the decision at which the finding was first raised.
    """

    events: dict[str, np.ndarray]
    active: dict[str, np.ndarray]
    first_decision: dict[str, int | None]


def router_state_decisions(
    log: Any, result: Any, score: ScoreDefinition, *,
    settings: RouterStateSettings | None = None,
) -> RouterStateDecisions | None:
    """Per-decision conditions and active findings of a replay (None when its log lacks
    the router-state fields); parameters as in :func:`router_state_from_log`."""
    inputs = _log_inputs(log, result, score, settings)
    if inputs is None:
        return None
    D = len(np.asarray(log.chosen))
    events = {k: np.zeros(D, dtype=bool) for k in ROUTER_STATE_KINDS}
    active = {k: np.zeros(D, dtype=bool) for k in ROUTER_STATE_KINDS}

    def note(d: int, act: tuple[str, ...], mon: Any) -> None:
        for k in mon.last_events:
            events[k][d] = True
        for k in act:
            active[k][d] = True

    _, mon = router_state_findings(**inputs, on_decision=note)
    return RouterStateDecisions(events, active,
                                {k: mon.first_decision(k) for k in ROUTER_STATE_KINDS})
