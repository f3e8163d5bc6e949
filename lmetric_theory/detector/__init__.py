"""Failure-condition detector: checks routing decisions of the product score
``(P + p0)(B + b0)`` against a linear reference ``P + lam * B``.

Public API: :class:`Snapshot`, :class:`LinearReference`, :class:`Detector`,
:class:`Verdict`, :class:`Verdicts`, :class:`Finding`, :class:`Mitigation`,
:class:`MitigationKind`, :class:`Severity`, :class:`DetectorSettings` (a detector's settings,
``Detector.settings``).
"""

from lmetric_theory.detector.detector import Detector
from lmetric_theory.detector.findings import (
    DEGENERATE_KINDS,
    FINDING_KINDS,
    Finding,
    Mitigation,
    MitigationKind,
    Severity,
)
from lmetric_theory.detector.reference import LinearReference
from lmetric_theory.detector.settings import DetectorSettings
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
    "Severity",
    "Snapshot",
    "Verdict",
    "Verdicts",
]
