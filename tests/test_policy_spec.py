"""Typed policy specs (``lmetric_theory.policies.spec``): read once, canonical text, checks.

- ``str(parse_spec(s))`` is the canonical text and reads back to an equal spec (hashable,
  picklable);
- a bad value raises ``ValueError`` naming the parameter, and the CLI turns it into exit 2
  with one line (``lmetric:p0=-1`` among them: offsets are never negative);
- every registered policy exposes its ``ScoreDefinition``.
"""

from __future__ import annotations

import pickle
from fractions import Fraction

import pytest

from lmetric_theory.core.definitions import LMETRIC_VARIANTS, ScoreDefinition
from lmetric_theory.policies import (
    PolicySpec,
    make_policy,
    parse_spec,
    policy_names,
    policy_spec,
    with_values,
)

CANONICAL = [
    ("lmetric", "lmetric"),
    (" lmetric : p0 = 1/3 , tie = random ", "lmetric:p0=1/3,tie=random"),
    ("lmetric:p0=0.5,b0=2", "lmetric:p0=1/2,b0=2"),
    ("linear:lam=1024.0,variant=legacy", "linear:lam=1024,variant=legacy"),
    ("guarded-lmetric:lam=64,mitigation=fallback", "guarded-lmetric:lam=64.0,mitigation=fallback"),
    ("tuned-linear:points=3,refine=yes", "tuned-linear:points=3,refine=True"),
    ("dynamo:w=tuned,tie=lowest", "dynamo:w=tuned,tie=lowest"),
    ("cache-affinity:rel_threshold=1.25", "cache-affinity:rel_threshold=1.25"),
]


@pytest.mark.parametrize(("text", "canonical"), CANONICAL)
def test_str_of_a_parsed_spec_is_canonical_and_reads_back(text: str, canonical: str) -> None:
    spec = parse_spec(text)
    assert str(spec) == canonical
    again = parse_spec(str(spec))
    assert again == spec and hash(again) == hash(spec) and str(again) == canonical
    assert pickle.loads(pickle.dumps(spec)) == spec
    # the typed parameters are what the policy is built with
    assert make_policy(spec).params == spec.params == make_policy(text).params


def test_spec_values_are_typed() -> None:
    spec = parse_spec("lmetric:p0=1/3,variant=llm-d")
    assert spec.value("p0") == Fraction(1, 3) and isinstance(spec.value("b0"), Fraction)
    assert spec.keys == ("p0", "variant")
    assert spec.params.P == LMETRIC_VARIANTS["llm-d"].p_definition  # the variant resolved
    assert parse_spec(spec) is spec  # a typed spec passes through
    assert isinstance(spec, PolicySpec) and repr(spec) == "PolicySpec('lmetric:p0=1/3,variant=llm-d')"


def test_spec_from_values_equals_the_spec_its_text_reads() -> None:
    g = policy_spec("guarded-lmetric", lam=1024.0, p0=Fraction(1, 3), b0=1, block=16, tie="lowest")
    assert str(g) == "guarded-lmetric:lam=1024.0,p0=1/3,b0=1,block=16,tie=lowest"
    assert parse_spec(str(g)) == g
    # a float for an exact parameter is the decimal number it prints as
    assert policy_spec("linear", lam=0.3).params.lam == Fraction(3, 10)
    assert policy_spec("lmetric", p0=0.5) == parse_spec("lmetric:p0=1/2")
    # setting a value keeps the parameter's place in the text
    d = parse_spec("dynamo:w=tuned,tie=lowest")
    assert str(with_values(d, w=Fraction(1, 4))) == "dynamo:w=1/4,tie=lowest"
    assert str(with_values(d, scale=0)) == "dynamo:w=tuned,tie=lowest,scale=0"


@pytest.mark.parametrize(("text", "key"), [
    ("lmetric:p0=-1", "p0"),
    ("lmetric:b0=-1/2", "b0"),
    ("guarded-lmetric:p0=-1", "p0"),
    ("lmetric:p0=x", "p0"),
    ("linear:lam=nan", "lam"),
    ("linear:lam=-1", "lam"),
    ("lmetric:tie=sideways", "tie"),
    ("lmetric:variant=nope", "variant"),
    ("lmetric:q0=1", "q0"),
    ("dynamo:w=-1", "w"),
])
def test_bad_values_raise_naming_the_parameter(text: str, key: str) -> None:
    with pytest.raises(ValueError, match=rf"\b{key}\b") as err:
        parse_spec(text)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=rf"\b{key}\b"):
        policy_spec(*text.split(":")[0:1], **dict([text.split(":")[1].split("=")]))


def test_negative_offsets_are_refused_by_value_too() -> None:
    with pytest.raises(ValueError, match="p0 must be >= 0"):
        policy_spec("lmetric", p0=Fraction(-1))
    with pytest.raises(ValueError, match="b0 must be >= 0"):
        policy_spec("lmetric", b0=-1)
    assert policy_spec("lmetric", p0=0, b0=0).params.b0 == 0  # zero is allowed


@pytest.mark.parametrize("argv", [
    ["simulate", "--count", "20", "-n", "2", "--policy", "lmetric:p0=-1"],
    ["results", "--count", "20", "-n", "2", "--policies", "lmetric:p0=-1"],
    ["counterfactual", "--count", "20", "-n", "2", "--policy", "lmetric:p0=-1"],
])
def test_cli_refuses_a_negative_offset_with_one_line(argv, capsys) -> None:
    from lmetric_theory.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "'p0'" in err or "p0 must be >= 0" in err


def test_every_registered_policy_exposes_its_score_definition() -> None:
    for name in policy_names():
        d = make_policy(name).definition
        assert isinstance(d, ScoreDefinition), name
    assert make_policy("round-robin").definition == ScoreDefinition()  # the paper's defaults
    for v in LMETRIC_VARIANTS.values():
        d = make_policy(f"lmetric:variant={v.name},p0=1/3,b0=2").definition
        assert (d.p_definition.value, d.b_definition.value) == (v.p_definition, v.b_definition)
        assert (d.p0, d.b0) == (Fraction(1, 3), 2)
    g = make_policy("guarded-lmetric:variant=llm-d,p0=1/2").definition
    assert g == make_policy("lmetric:variant=llm-d,p0=1/2").definition
    lin = make_policy("linear:variant=dynamo").definition
    assert (lin.p_definition.value, lin.b_definition.value, lin.p0, lin.b0) == (
        LMETRIC_VARIANTS["dynamo"].p_definition, LMETRIC_VARIANTS["dynamo"].b_definition, 0, 1)
