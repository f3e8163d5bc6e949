"""Symbolic theory: when the product score disagrees with a linear combination.

Every result is derived by sympy from the two score definitions

- product (LMetric): ``S_i = (P_i + p_0) * (B_i + b_0)``
- linear:            ``C_i = P_i + lam * B_i``

(lower score wins) and comes with a plain-language statement of what it means for
routing. :func:`derive` computes everything once per process (cached); the numeric
helpers in :mod:`lmetric_theory.theory.geometry` are generated from the same
expressions with ``sympy.lambdify``.

Parse the expression strings this package emits with
``sympy.parse_expr(text, local_dict=SYMBOLS)`` to get back the very same objects
(same assumptions); plain ``parse_expr(text)`` gives assumption-free symbols of the
same names.
"""

from lmetric_theory.theory.base import (
    SYMBOLS,
    Degenerate,
    Derivation,
    Formula,
    Identity,
    Region,
    Result,
)
from lmetric_theory.theory.derivation import derive
from lmetric_theory.theory.geometry import (
    REGION_NAMES,
    hyperbola_B2,
    line_B2,
    region_of,
    second_intersection,
    tangent_lam,
)

__all__ = [
    "REGION_NAMES",
    "SYMBOLS",
    "Degenerate",
    "Derivation",
    "Formula",
    "Identity",
    "Region",
    "Result",
    "derive",
    "hyperbola_B2",
    "line_B2",
    "region_of",
    "second_intersection",
    "tangent_lam",
]
