"""Typed policy specs: a policy name with its validated, frozen parameters.

A :class:`PolicySpec` is what a spec text ``NAME[:key=value,...]`` means once read: the
policy's name, its ``Params`` object (typed, validated, frozen) and which parameters were
set. The text is read once, at the edges (CLI arguments, app widgets, a string handed to a
public entry point), by :func:`lmetric_theory.policies.registry.parse_spec`; inside the
library specs travel as :class:`PolicySpec` values and are never turned into text to be
read again. :func:`lmetric_theory.policies.registry.policy_spec` builds one from typed values
(``policy_spec("lmetric", p0=Fraction(1, 3))``).

``str(spec)`` is the canonical spec text: the name, then every parameter that was set, in the
order it was set, each value printed as :attr:`Policy.spec <lmetric_theory.policies.base.Policy.spec>`
prints it (``str`` of the typed value: ``1/3`` for an exact offset, ``1024.0`` for a float
rate, ``True`` for a flag). Reading it back gives an equal spec. This module holds the
value conversions; the registry module holds the functions that look a name up.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from lmetric_theory.policies.base import TUNED

__all__ = ["PolicySpec", "coerce_value", "convert_text", "field_types", "format_value",
           "typed_param"]


@dataclass(frozen=True, slots=True)
class PolicySpec:
    """A policy name and its typed parameters (hashable, picklable).

    Attributes
    ----------
    name : str
        Registered policy name (``lmetric``, ``linear``, ...).
    params : frozen dataclass
        The policy's validated ``Params`` (every field, defaults filled in).
    given : tuple of (str, str)
        The parameters that were set, in order, with their canonical text
        (:func:`format_value` of the typed value); ``str(spec)`` prints them.

    Notes
    -----
    Build specs with :func:`lmetric_theory.policies.registry.parse_spec` (from text) or
    :func:`lmetric_theory.policies.registry.policy_spec` (from values), not by hand: they
    validate the parameters and keep ``given`` consistent with ``params``. Two specs are
    equal when name, parameters and the set of written parameters (in order) are equal.
    """

    name: str
    params: Any
    given: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        if not self.given:
            return self.name
        return self.name + ":" + ",".join(f"{k}={t}" for k, t in self.given)

    def __repr__(self) -> str:
        return f"PolicySpec({str(self)!r})"

    @property
    def keys(self) -> tuple[str, ...]:
        """Names of the parameters that were set, in order."""
        return tuple(k for k, _ in self.given)

    def value(self, key: str) -> Any:
        """The typed value of parameter ``key`` (its default when not set)."""
        return getattr(self.params, key)


def format_value(value: Any) -> str:
    """Canonical text of a typed parameter value: ``str(value)`` (an exact number prints
    as ``n`` or ``n/d``, a float as its shortest round-trip decimal, a flag as ``True``)."""
    return str(value)


def _in_range(where: str, shown: Any, v: Any) -> Any:
    """``v`` if ``|v| <= POLICY_NUMBER_MAX`` (the exact kernel's limit on offsets and rates),
    else ``ValueError`` stating the range."""
    from lmetric_theory.core.limits import POLICY_NUMBER_MAX

    if abs(v) > POLICY_NUMBER_MAX:
        raise ValueError(
            f"{where}: {shown!r} is outside the valid range "
            f"[-{POLICY_NUMBER_MAX}, {POLICY_NUMBER_MAX}]"
        )
    return v


def _where(policy: str, key: str) -> str:
    return f"policy {policy!r}, parameter {key!r}"


def _check_choice(where: str, value: str, choices: tuple[str, ...] | None) -> str:
    if choices is not None and value not in choices:
        raise ValueError(f"{where}: {value!r} is not one of {', '.join(choices)}")
    return value


def convert_text(policy: str, key: str, raw: str, tp: Any,
                 choices: tuple[str, ...] | None = None) -> Any:
    """Read the text ``raw`` of parameter ``key`` as type ``tp`` (bool, int, float,
    Fraction or str), within the valid range and ``choices``.

    Raises
    ------
    ValueError
        Naming the policy and the parameter: unreadable, out of range or not a choice.
    """
    where = _where(policy, key)
    try:
        if tp is bool:
            low = raw.strip().lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return low in ("true", "1", "yes")
        if tp is int:
            return _in_range(where, raw, int(raw))
        if tp is float:
            v = float(raw)
            if not math.isfinite(v):
                raise ValueError
            return _in_range(where, raw, v)
        if tp is Fraction:
            return _in_range(where, raw, Fraction(raw.strip()))
        value = str(raw)
    except (ValueError, ZeroDivisionError) as exc:
        if str(exc).startswith(where):  # out of range: already worded
            raise
        name = getattr(tp, "__name__", str(tp))
        raise ValueError(f"{where}: cannot read {raw!r} as {name}") from None
    return _check_choice(where, value, choices)


def coerce_value(policy: str, key: str, value: Any, tp: Any,
                 choices: tuple[str, ...] | None = None) -> Any:
    """A typed ``value`` of parameter ``key`` as type ``tp``, checked as
    :func:`convert_text` checks text (a ``str`` value is read as spec text).

    Numbers convert without loss where the type allows: ``int`` and :class:`Fraction` to
    ``Fraction`` exactly; a ``float`` to ``Fraction`` as the decimal number it prints as
    (``0.3`` is ``3/10``, as the text ``0.3`` reads), so ``str`` of the spec reads back equal;
    any real number to ``float``.
    """
    if isinstance(value, str):
        return convert_text(policy, key, value, tp, choices)
    where = _where(policy, key)
    bad = ValueError(f"{where}: cannot use {value!r} as {getattr(tp, '__name__', str(tp))}")
    if tp is bool:
        if not isinstance(value, bool | int) or value not in (0, 1):
            raise bad
        return bool(value)
    if isinstance(value, bool):
        raise bad
    if tp is int:
        if isinstance(value, Fraction) and value.denominator == 1:
            value = int(value)
        if not isinstance(value, int):
            raise bad
        return _in_range(where, value, value)
    if tp is float:
        if not isinstance(value, int | float | Fraction):
            raise bad
        v = float(value)
        if not math.isfinite(v):
            raise ValueError(f"{where}: {value!r} is not finite")
        return _in_range(where, value, v)
    if tp is Fraction:
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError(f"{where}: {value!r} is not finite")
            value = Fraction(repr(value))
        if not isinstance(value, int | Fraction):
            raise bad
        return _in_range(where, value, Fraction(value))
    raise bad


def field_types(params_cls: type) -> dict[str, tuple[Any, tuple[str, ...] | None, bool]]:
    """``{field: (type, choices, tunable)}`` of a ``Params`` dataclass (a tunable field's type
    is its non-``str`` member; it also accepts the value ``tuned``)."""
    hints = typing.get_type_hints(params_cls)
    out = {}
    for f in dataclasses.fields(params_cls):
        tp = hints[f.name]
        tunable = bool(f.metadata.get("tunable"))
        if tunable:
            tp = next(t for t in typing.get_args(tp) if t is not str)
        out[f.name] = (tp, f.metadata.get("choices"), tunable)
    return out


def typed_param(policy: str, key: str, value: Any, kind: tuple[Any, Any, bool], *,
                text: bool) -> Any:
    """One parameter's typed value (``value`` is spec text when ``text``), ``tuned`` kept
    for a tunable field."""
    tp, choices, tunable = kind
    if tunable and isinstance(value, str) and value.strip() == TUNED:
        return TUNED  # resolved later by tuning on a workload
    if text:
        return convert_text(policy, key, value, tp, choices)
    return coerce_value(policy, key, value, tp, choices)
