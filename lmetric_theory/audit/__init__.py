"""Audit layer: replay a workload or read captured snapshots and judge every decision."""

from lmetric_theory.audit.core import (
    DEFAULT_BAND_FACTOR,
    DEFAULT_PRESET,
    AuditResult,
    SnapshotBatch,
    audit_snapshot_file,
    audit_snapshots,
    audit_workload,
    candidate_mitigations,
    default_reference,
    json_safe,
    load_snapshots,
    mitigation_evidence,
    reference_from_tuning,
    tuned_reference,
    worst_decisions,
)

__all__ = [
    "DEFAULT_BAND_FACTOR",
    "DEFAULT_PRESET",
    "AuditResult",
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
