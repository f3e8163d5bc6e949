"""The explicit policy registry: :func:`register_all` lists every built-in policy class.

Nothing registers itself on import. :func:`make_policy` and :func:`policy_names` call
:func:`register_all` on first use, so every listed name works in a fresh interpreter
whatever has been imported before. To add a policy, write its class (``name``, frozen
``Params`` with a ``tie`` field, ``choose``) and add it to the tuple in :func:`register_all`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lmetric_theory.policies.base import _REGISTRY, Policy, build_policy, register_policy

__all__ = ["make_policy", "policy_names", "register_all", "register_policy"]

_registered = False


def register_all(register: Callable[[type[Policy]], Any] = register_policy) -> None:
    """Register every built-in policy class with ``register`` (default: the shared table).

    Parameters
    ----------
    register : callable
        Called once per class; the default replaces a policy of the same name.
    """
    from lmetric_theory.policies.baselines import BASELINE_POLICIES
    from lmetric_theory.policies.builtin import (
        CacheAffinity,
        LeastLoaded,
        Linear,
        LMetric,
        PowerOfTwo,
        Random,
        RoundRobin,
    )
    from lmetric_theory.policies.guarded import GuardedLMetric
    from lmetric_theory.policies.tuned import TunedLinear

    for cls in (
        LMetric,
        Linear,
        TunedLinear,
        GuardedLMetric,
        RoundRobin,
        Random,
        LeastLoaded,
        CacheAffinity,
        PowerOfTwo,
        *BASELINE_POLICIES,  # the paper's baseline catalog (vllm-v1, dynamo, bailian, ...)
    ):
        register(cls)


def _ensure_registered() -> None:
    """Register the built-ins once; a name registered by the caller beforehand is kept."""
    global _registered
    if not _registered:
        register_all(lambda cls: cls.name in _REGISTRY or register_policy(cls))
        _registered = True


def policy_names() -> list[str]:
    """Registered policy names (built-ins and any added with :func:`register_policy`), sorted."""
    _ensure_registered()
    return sorted(_REGISTRY)


def make_policy(spec: str, seed: int = 0) -> Policy:
    """Build a policy from ``NAME[:key=value,...]``.

    Parameters
    ----------
    spec : str
        Policy name and optional parameters, e.g. ``"lmetric:p0=1/3,tie=random"``.
    seed : int
        Seed of the policy's generator (random policies and ``tie=random``).

    Raises
    ------
    ValueError
        Unknown name (lists the valid names), unknown key (lists the valid keys), or a value
        of the wrong type / outside its choices.
    """
    _ensure_registered()
    return build_policy(spec, seed=seed)
