"""The one hot-spot runner: a replay's snapshot log through the two-phase hot-class monitor.

Both the audit's ``hotspots`` list (:mod:`lmetric_theory.audit.hotspots`) and the
counterfactual study's ``hotspot`` flag
(:func:`lmetric_theory.experiments.counterfactual.sampling.hotspot_phase`) come from
:func:`run_hotspots`. It turns the log into the monitor's inputs in one way:

- the class of a decision is the hash of the routed request's block ``lead_blocks``
  (1-based; :func:`class_ids`), -1 for a prompt with fewer blocks;
- an instance holds the class when it has at least ``lead_blocks`` of the prompt's blocks
  cached (``input_tokens - uncached > (lead_blocks - 1) * block_size``);
- ``P`` and ``B`` are the log's signals under the score definition, computed by
  :func:`lmetric_theory.core.signals.score_inputs` (every ``P`` and ``B`` definition), and
  ``p0``, ``b0`` are the definition's offsets.

The monitor (:class:`~lmetric_theory.detector.hotspot.HotspotMonitor`) observes the decisions
in order, detect only: the replay was routed by the policy, not by the monitor.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from lmetric_theory.core.definitions import ScoreDefinition
from lmetric_theory.core.signals import score_inputs
from lmetric_theory.detector.hotspot import HotspotFinding, HotspotMonitor

__all__ = ["HotspotEntry", "HotspotRun", "class_ids", "run_hotspots"]


def class_ids(workload: Any, requests: np.ndarray, lead_blocks: int = 1) -> np.ndarray:
    """Class of each routed request, shape (D,), int64.

    The hash of the request's block ``lead_blocks`` (1-based), which identifies its first
    ``lead_blocks`` blocks (hashes are prefix-consistent); -1 for a prompt with fewer blocks.

    Parameters
    ----------
    workload : Workload
        Its ``hash_offsets`` and ``hash_ids`` give each request's block hashes.
    requests : np.ndarray, shape (D,)
        Index of the routed request of each decision.
    lead_blocks : int
        Leading blocks that define a class (>= 1).
    """
    if lead_blocks < 1:
        raise ValueError(f"lead_blocks must be >= 1, got {lead_blocks}")
    offs = np.asarray(workload.hash_offsets)
    ids = np.asarray(workload.hash_ids)
    req = np.asarray(requests, dtype=np.int64)
    start, end = offs[req], offs[req + 1]
    out = np.full(req.shape[0], -1, dtype=np.int64)
    has = end - start >= lead_blocks
    out[has] = ids[start[has] + lead_blocks - 1]
    return out


@dataclass(frozen=True, slots=True)
class HotspotEntry(HotspotFinding):
    """One prefix class that raised phase 1, with the score definition it was found under.

    The fields before ``p_definition`` are the monitor's finding
    (:class:`~lmetric_theory.detector.hotspot.HotspotFinding`); ``class_id`` is the hash of
    the class's leading ``lead_blocks`` blocks.

    Attributes
    ----------
    p_definition, b_definition : str
        The ``P`` and ``B`` definitions (their values) the monitor's scores were computed with.
    """

    p_definition: str
    b_definition: str

    @classmethod
    def from_finding(cls, f: HotspotFinding, definition: ScoreDefinition) -> HotspotEntry:
        """The monitor's finding, labelled with the definition it was computed under."""
        return cls(*(getattr(f, fl.name) for fl in fields(HotspotFinding)),
                   definition.p_definition.value, definition.b_definition.value)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict with the audit report's keys (``class``, ``share``, ...,
        ``p_definition``, ``b_definition``)."""
        return {**self.to_dict(), "p_definition": self.p_definition,
                "b_definition": self.b_definition}


@dataclass(frozen=True, slots=True, eq=False)
class HotspotRun:
    """What :func:`run_hotspots` returns.

    Attributes
    ----------
    definition : ScoreDefinition
        ``P``, ``B`` definitions and offsets the monitor scored with.
    entries : tuple of HotspotEntry
        One per class that raised phase 1, in order of first alarm.
    phase : np.ndarray, shape (D,), int64
        Hot-spot phase of each decision's class after observing it: 2 while the class is
        confirmed (its mitigation would apply), 1 when the phase-1 condition
        ``x |Mbar| > (1 - x) |M|`` holds at the decision (``1 <= |M| < N``, window at least
        ``min_decisions`` long), else 0.
    """

    definition: ScoreDefinition
    entries: tuple[HotspotEntry, ...]
    phase: np.ndarray


def run_hotspots(
    workload: Any,
    log: Any,
    definition: ScoreDefinition,
    *,
    window: int = 200,
    min_decisions: int = 50,
    min_count: int = 2,
    confirm_factor: int = 2,
    lead_blocks: int = 1,
) -> HotspotRun:
    """Run the two-phase hot-class monitor over a replay's snapshot log.

    Parameters
    ----------
    workload : Workload
        The replayed requests (block hashes give the classes; ``block_size`` tokens per
        block).
    log : SnapshotLog
        The replay's per-decision log (shapes (D,) and (D, N)), with the signals the
        definition reads (see :mod:`lmetric_theory.core.signals`).
    definition : ScoreDefinition
        What ``P`` and ``B`` count, and the offsets ``p0`` (tokens), ``b0`` (requests).
    window, min_decisions, min_count, confirm_factor : int
        Monitor settings (see :class:`~lmetric_theory.detector.hotspot.HotspotMonitor`);
        ``min_decisions`` is capped at ``window``.
    lead_blocks : int
        Leading blocks that define a class (1: the first block hash).

    Returns
    -------
    HotspotRun
        The entries and the phase per decision (no entry and all zeros for fewer than two
        instances or an empty log).
    """
    unc = np.asarray(log.uncached, dtype=np.int64)
    if unc.ndim != 2 or unc.shape[0] == 0 or unc.shape[1] < 2:
        return HotspotRun(definition, (), np.zeros(unc.shape[0] if unc.ndim else 0, np.int64))
    D, N = unc.shape
    P, B = score_inputs(log, definition)
    bs = int(getattr(workload, "block_size", 1) or 1)
    cached = np.asarray(log.input_tokens, dtype=np.int64)[:, None] - unc
    hits = cached > (lead_blocks - 1) * bs
    cls = class_ids(workload, log.request, lead_blocks)
    # mitigate=True only so that active() reports a confirmed class; the masks are not used
    # (the findings are those of a detect-only monitor)
    mon = HotspotMonitor(N, window=window, min_decisions=min(min_decisions, window),
                         min_count=min_count, confirm_factor=confirm_factor,
                         p0=float(definition.p0), b0=float(definition.b0), mitigate=True)
    phase = np.zeros(D, dtype=np.int64)
    m_hits = np.count_nonzero(hits, axis=1)
    for d in range(D):
        c = int(cls[d])
        mon.observe(c, hits[d], P[d], B[d], decision=d)
        if c < 0:
            continue
        if mon.active(c):
            phase[d] = 2
            continue
        m = int(m_hits[d])
        x = mon.share(c)
        if mon.decisions >= mon.min_decisions and 1 <= m < N and x * (N - m) > (1 - x) * m:
            phase[d] = 1
    entries = tuple(HotspotEntry.from_finding(f, definition) for f in mon.findings)
    return HotspotRun(definition, entries, phase)
