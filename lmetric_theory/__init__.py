"""lmetric-theory: when the LMetric routing score can be trusted.

LMetric routes a request to the instance with the lowest product score
``S_i = (P_i + p0) * (B_i + b0)``. This package derives (with sympy) exactly when
that choice differs from a linear score ``C_i = P_i + lam * B_i``, checks live or
trace-derived routing decisions for those conditions, and ships a reference
scheduler and cluster simulator to validate every claim.
"""

__version__ = "0.1.0"

from typing import Any

#: Re-exported names -> the module that defines them, imported on first access (PEP 562), so
#: that ``import lmetric_theory`` (and the CLI's start-up) does not load numpy and the detector.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        ("Detector", "Finding", "LinearReference", "Mitigation", "MitigationKind", "Severity",
         "Snapshot", "Verdict", "Verdicts"),
        "lmetric_theory.detector",
    ),
    "Guard": "lmetric_theory.detector.guard",
    "PrometheusMetrics": "lmetric_theory.detector.guard",
}

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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lmetric_theory' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
