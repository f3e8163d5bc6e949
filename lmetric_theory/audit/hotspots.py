"""Hot prefix classes in a replayed workload: the audit report's ``hotspots`` list.

The replay's snapshot log goes through the shared hot-spot runner
(:func:`lmetric_theory.experiments.hotspots.run_hotspots`) under the audit's own score
definition, so ``P`` and ``B`` are the replayed policy's signals (any ``P`` and ``B``
definition). Each class that raised phase 1 becomes one
:class:`~lmetric_theory.experiments.hotspots.HotspotEntry`, written to JSON with the keys
``class``, ``share``, ``cached_instances``, ``phase1_decision``, ``phase2_decision``,
``condition_holds``, ``mitigation``, ``p_definition`` and ``b_definition``.
"""

from __future__ import annotations

from typing import Any

from lmetric_theory.core.definitions import ScoreDefinition
from lmetric_theory.experiments.hotspots import HotspotEntry, class_ids, run_hotspots

__all__ = ["HotspotEntry", "class_ids", "hotspot_findings"]


def hotspot_findings(
    workload: Any,
    log: Any,
    definition: ScoreDefinition | None = None,
    *,
    window: int = 200,
    min_decisions: int = 50,
    confirm_factor: int = 2,
    lead_blocks: int = 1,
) -> tuple[HotspotEntry, ...]:
    """The hot prefix classes of a replay, one entry per class that raised phase 1.

    Parameters
    ----------
    workload : Workload
        The replayed requests (block hashes give the classes).
    log : SnapshotLog
        The replay's per-decision log.
    definition : ScoreDefinition, optional
        ``P``, ``B`` definitions and offsets of the replayed product score; default
        ``ScoreDefinition()``: the paper's (``router-queued+new``, ``router-in-flight``,
        ``p0 = 0``, ``b0 = 1``), as ``lmetric`` routes by default.
    window, min_decisions, confirm_factor : int
        Monitor settings (see :class:`~lmetric_theory.detector.hotspot.HotspotMonitor`).
    lead_blocks : int
        Leading blocks that define a class (1: the first block hash). An instance holds the
        class when it has at least ``lead_blocks`` of the prompt's blocks cached.

    Returns
    -------
    tuple of HotspotEntry
        In order of first alarm; each names the ``P`` and ``B`` definitions it used.
    """
    return run_hotspots(workload, log, definition if definition is not None
                        else ScoreDefinition(), window=window, min_decisions=min_decisions,
                        confirm_factor=confirm_factor, lead_blocks=lead_blocks).entries
