"""Routing policies in an explicit registry, selected by ``NAME[:key=value,...]``.

Built-in (listed by :func:`register_all`): ``lmetric``, ``linear``, ``tuned-linear``,
``guarded-lmetric``, ``round-robin``, ``random``, ``least-loaded``, ``cache-affinity``,
``power-of-two``. :func:`make_policy` registers them on first use; importing a module never
registers anything. Add more with :func:`register_policy`.
"""

from lmetric_theory.policies.base import (
    TIE_RULES,
    DecisionView,
    Policy,
    parse_policy_spec,
    tie_field,
)
from lmetric_theory.policies.registry import (
    make_policy,
    policy_names,
    register_all,
    register_policy,
)

__all__ = [
    "TIE_RULES",
    "DecisionView",
    "Policy",
    "make_policy",
    "parse_policy_spec",
    "policy_names",
    "register_all",
    "register_policy",
    "tie_field",
]
