"""The explicit policy registry: :func:`register_all` lists every built-in policy class.

Nothing registers itself on import. :func:`parse_spec`, :func:`policy_spec`,
:func:`make_policy` and :func:`policy_names` call :func:`register_all` on first use, so every listed name works in a fresh interpreter
whatever has been imported before. To add a policy, write its class (``name``, frozen
``Params`` with a ``tie`` field, ``choose``) and add it to the tuple in :func:`register_all`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lmetric_theory.policies.base import _REGISTRY, Policy, parse_policy_spec, register_policy
from lmetric_theory.policies.spec import PolicySpec, field_types, format_value, typed_param

__all__ = ["PolicySpec", "make_policy", "parse_spec", "policy_names", "policy_spec",
           "register_all", "register_policy", "with_values"]

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
    from lmetric_theory.policies.dynamo_kv import DynamoKv
    from lmetric_theory.policies.guarded import GuardedLMetric
    from lmetric_theory.policies.shipped import SHIPPED_POLICIES
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
        *SHIPPED_POLICIES,  # as the routers ship them (llm-d, predictor)
        DynamoKv,  # Dynamo 1.6.1's own KV router with its shipped defaults
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


#: Built-in policies that live outside the baseline catalog: name -> (module, class). A
#: run of one of them imports only its module (``guarded-lmetric`` brings the detector,
#: the catalog its own module); listing the names imports them all.
_BUILTIN_HOMES: dict[str, tuple[str, str]] = {
    "lmetric": ("lmetric_theory.policies.builtin", "LMetric"),
    "linear": ("lmetric_theory.policies.builtin", "Linear"),
    "round-robin": ("lmetric_theory.policies.builtin", "RoundRobin"),
    "random": ("lmetric_theory.policies.builtin", "Random"),
    "least-loaded": ("lmetric_theory.policies.builtin", "LeastLoaded"),
    "cache-affinity": ("lmetric_theory.policies.builtin", "CacheAffinity"),
    "power-of-two": ("lmetric_theory.policies.builtin", "PowerOfTwo"),
    "tuned-linear": ("lmetric_theory.policies.tuned", "TunedLinear"),
    "guarded-lmetric": ("lmetric_theory.policies.guarded", "GuardedLMetric"),
    "dynamo-kv": ("lmetric_theory.policies.dynamo_kv", "DynamoKv"),
}


def _policy_class(name: str) -> type[Policy]:
    cls = _REGISTRY.get(name)
    if cls is not None:
        return cls
    if not _registered and name in _BUILTIN_HOMES:
        # the same class register_all would register (a name registered by the caller
        # beforehand is kept, as there)
        import importlib

        module, attr = _BUILTIN_HOMES[name]
        cls = getattr(importlib.import_module(module), attr)
        return _REGISTRY.setdefault(name, cls)
    _ensure_registered()
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ValueError(f"unknown policy {name!r}; valid policies: {', '.join(sorted(_REGISTRY))}")
    return cls


def _build_spec(name: str, values: dict[str, Any], *, text: bool) -> PolicySpec:
    """Validate ``values`` (spec text when ``text``, else typed) against policy ``name``."""
    cls = _policy_class(name)
    kinds = field_types(cls.Params)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in kinds:
            raise ValueError(
                f"policy {name!r}: unknown parameter {key!r}; valid parameters: {', '.join(kinds)}"
            )
        kwargs[key] = typed_param(name, key, value, kinds[key], text=text)
    try:
        params = cls.Params(**kwargs)
    except ValueError as exc:
        raise ValueError(f"policy {name!r}: {exc}") from None
    return PolicySpec(name, params, tuple((k, format_value(v)) for k, v in kwargs.items()))


def parse_spec(text: str | PolicySpec) -> PolicySpec:
    """Read ``NAME[:key=value,...]`` into a typed :class:`PolicySpec` (once, at the edges).

    Parameters
    ----------
    text : str or PolicySpec
        Spec text, e.g. ``"lmetric:p0=1/3,tie=random"``; a :class:`PolicySpec` is returned
        as it is.

    Returns
    -------
    PolicySpec
        Validated; ``str()`` of it is the canonical text (``parse_spec(str(s)) == s``).

    Raises
    ------
    ValueError
        Unknown name (lists the valid names), unknown key (lists the valid keys), a value of
        the wrong type, outside its range or choices, or refused by the policy's parameter
        checks (e.g. ``lmetric:p0=-1``); the message names the policy and the parameter.
    """
    if isinstance(text, PolicySpec):
        return text
    name, raw = parse_policy_spec(text)
    return _build_spec(name, raw, text=True)


def policy_spec(name: str, **values: Any) -> PolicySpec:
    """A :class:`PolicySpec` from typed values, e.g. ``policy_spec("lmetric", p0=Fraction(1, 3))``.

    Values are checked and converted as :func:`~lmetric_theory.policies.spec.coerce_value`
    states (a ``float`` for an exact parameter is the decimal number it prints as); the
    parameters are set in keyword order, which ``str()`` of the spec keeps.

    Raises
    ------
    ValueError
        As :func:`parse_spec`.
    """
    return _build_spec(name, values, text=False)


def with_values(spec: PolicySpec, **values: Any) -> PolicySpec:
    """``spec`` with some parameters set to typed ``values`` (a parameter already set keeps
    its place in the text; new ones are appended)."""
    current = {k: spec.value(k) for k in spec.keys}
    current.update(values)
    return _build_spec(spec.name, current, text=False)


def make_policy(spec: PolicySpec | str, seed: int = 0) -> Policy:
    """Build the policy a :class:`PolicySpec` names.

    Parameters
    ----------
    spec : PolicySpec or str
        The typed spec. Spec text (e.g. ``"lmetric:p0=1/3,tie=random"``) is accepted as a
        convenience for callers at the edges (scripts, notebooks, tests) and read once with
        :func:`parse_spec`; library code passes a :class:`PolicySpec`.
    seed : int
        Seed of the policy's generator (random policies and ``tie=random``).

    Raises
    ------
    ValueError
        As :func:`parse_spec`, or a check inside the policy (e.g. its detector's settings),
        naming the policy.
    """
    spec = parse_spec(spec)
    cls = _policy_class(spec.name)
    try:
        return cls(spec.params, seed=seed)
    except ValueError as exc:  # a check inside the policy (e.g. its detector's offsets)
        raise ValueError(f"policy {spec.name!r}: {exc}") from None
