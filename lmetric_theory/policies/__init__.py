"""Routing policies in an explicit registry, selected by ``NAME[:key=value,...]``.

Built-in (listed by :func:`register_all`): ``lmetric``, ``linear``, ``tuned-linear``,
``guarded-lmetric``, ``round-robin``, ``random``, ``least-loaded``, ``cache-affinity``,
``power-of-two``, and the paper's baseline catalog. :func:`parse_spec` reads spec text once
into a typed :class:`PolicySpec` (:func:`policy_spec` builds one from values) and
:func:`make_policy` builds the policy it names; both register the built-ins on first use;
importing a module never registers anything. Add more with :func:`register_policy`.
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
    parse_spec,
    policy_names,
    policy_spec,
    register_all,
    register_policy,
    with_values,
)
from lmetric_theory.policies.spec import PolicySpec

__all__ = [
    "TIE_RULES",
    "DecisionView",
    "Policy",
    "PolicySpec",
    "make_policy",
    "parse_policy_spec",
    "parse_spec",
    "policy_names",
    "policy_spec",
    "register_all",
    "register_policy",
    "tie_field",
    "with_values",
]
