"""Routing policies in a registry, selected by ``NAME[:key=value,...]``.

Built-in: ``lmetric``, ``linear``, ``round-robin``, ``random``, ``least-loaded``,
``cache-affinity``, ``power-of-two``, ``guarded-lmetric``; ``tuned-linear`` is
registered by :mod:`lmetric_theory.experiments.tuning` (it tunes on the workload before a run). Add more with :func:`register_policy`.
"""

from lmetric_theory.policies import builtin as _builtin  # noqa: F401  (registers built-ins)
from lmetric_theory.policies import guarded as _guarded  # noqa: F401  (registers guarded-lmetric)
from lmetric_theory.policies.base import (
    TIE_RULES,
    DecisionView,
    Policy,
    make_policy,
    parse_policy_spec,
    policy_names,
    register_policy,
    tie_field,
)
from lmetric_theory.policies.baselines import register_baselines as _register_baselines

_register_baselines()  # the paper's baseline catalog (vllm-v1, dynamo, bailian, ...)

__all__ = [
    "TIE_RULES",
    "DecisionView",
    "Policy",
    "make_policy",
    "parse_policy_spec",
    "policy_names",
    "register_policy",
    "tie_field",
]
