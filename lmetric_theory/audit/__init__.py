"""Audit layer: replay a workload or read captured snapshots and judge every decision.

Modules by job: :mod:`~lmetric_theory.audit.references` (the linear reference),
:mod:`~lmetric_theory.audit.snapshots` (snapshot files in), :mod:`~lmetric_theory.audit.replay`
(the audits), :mod:`~lmetric_theory.audit.evidence` (mitigation evidence, worst decisions),
:mod:`~lmetric_theory.audit.hotspots` (hot prefix classes of a replay),
:mod:`~lmetric_theory.audit.results` (the result and its typed report).
"""

from lmetric_theory.audit.evidence import (
    candidate_mitigations,
    mitigation_evidence,
    worst_decisions,
)
from lmetric_theory.audit.hotspots import HotspotEntry
from lmetric_theory.audit.references import (
    DEFAULT_BAND_FACTOR,
    DEFAULT_PRESET,
    default_reference,
    reference_from_tuning,
    tuned_reference,
)
from lmetric_theory.audit.replay import audit_snapshot_file, audit_snapshots, audit_workload
from lmetric_theory.audit.results import (
    REPORT_ALIASES,
    WORST_ALIASES,
    AuditReport,
    AuditResult,
    json_safe,
)
from lmetric_theory.audit.snapshots import SnapshotBatch, load_snapshots

__all__ = [
    "DEFAULT_BAND_FACTOR",
    "DEFAULT_PRESET",
    "REPORT_ALIASES",
    "WORST_ALIASES",
    "AuditReport",
    "AuditResult",
    "HotspotEntry",
    "SnapshotBatch",
    "audit_snapshot_file",
    "audit_snapshots",
    "audit_workload",
    "candidate_mitigations",
    "default_reference",
    "json_safe",
    "load_snapshots",
    "mitigation_evidence",
    "reference_from_tuning",
    "tuned_reference",
    "worst_decisions",
]
