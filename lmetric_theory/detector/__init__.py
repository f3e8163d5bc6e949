"""Failure-condition detector: checks routing decisions of the product score
``(P + p0)(B + b0)`` against a linear reference ``P + lam * B``.

Public API: :class:`Snapshot`, :class:`LinearReference`, :class:`Detector`,
:class:`Verdict`, :class:`Verdicts`, :class:`Finding`, :class:`Mitigation`,
:class:`MitigationKind`, :class:`Severity`, :class:`DetectorSettings` (a detector's settings,
``Detector.settings``), :class:`RouterStateMonitor` and :class:`RouterStateSettings` (the
streaming ``replica_skew``, ``herding`` and ``stale_index`` findings).
"""

from lmetric_theory.detector.detector import Detector
from lmetric_theory.detector.findings import (
    DEGENERATE_KINDS,
    FINDING_KINDS,
    ROUTER_STATE_KINDS,
    Finding,
    Mitigation,
    MitigationKind,
    Severity,
)
from lmetric_theory.detector.reference import LinearReference
from lmetric_theory.detector.router_state import RouterStateMonitor, router_state_findings
from lmetric_theory.detector.settings import DetectorSettings, RouterStateSettings
from lmetric_theory.detector.snapshot import Snapshot
from lmetric_theory.detector.verdict import Verdict, Verdicts

__all__ = [
    "DEGENERATE_KINDS",
    "FINDING_KINDS",
    "Detector",
    "DetectorSettings",
    "Finding",
    "LinearReference",
    "Mitigation",
    "MitigationKind",
    "ROUTER_STATE_KINDS",
    "RouterStateMonitor",
    "RouterStateSettings",
    "Severity",
    "Snapshot",
    "Verdict",
    "Verdicts",
    "router_state_findings",
]
