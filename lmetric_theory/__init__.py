"""lmetric-theory: when the LMetric routing score can be trusted.

LMetric routes a request to the instance with the lowest product score
``S_i = (P_i + p0) * (B_i + b0)``. This package derives (with sympy) exactly when
that choice differs from a linear score ``C_i = P_i + lam * B_i``, checks live or
trace-derived routing decisions for those conditions, and ships a reference
scheduler and cluster simulator to validate every claim.
"""

__version__ = "0.1.0"

from lmetric_theory.detector import (  # noqa: E402
    Detector,
    Finding,
    LinearReference,
    Mitigation,
    MitigationKind,
    Severity,
    Snapshot,
    Verdict,
    Verdicts,
)
from lmetric_theory.detector.guard import Guard, PrometheusMetrics  # noqa: E402

__all__ = [
    "Detector",
    "Finding",
    "Guard",
    "LinearReference",
    "Mitigation",
    "MitigationKind",
    "PrometheusMetrics",
    "Severity",
    "Snapshot",
    "Verdict",
    "Verdicts",
    "__version__",
]
