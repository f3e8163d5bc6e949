"""lmetric-theory: when the LMetric routing score can be trusted.

LMetric routes a request to the instance with the lowest product score
``S_i = (P_i + p0) * (B_i + b0)``. This package derives (with sympy) exactly when
that choice differs from a linear score ``C_i = P_i + lam * B_i``, checks live or
trace-derived routing decisions for those conditions, and ships a reference
scheduler and cluster simulator to validate every claim.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
