"""``lmetric-theory simulate``: the policy listing and the SGLang-fork variant end to end."""

from __future__ import annotations

import json

import pytest

from lmetric_theory.cli import main
from lmetric_theory.policies.lmetric_variants import LMETRIC_VARIANTS
from lmetric_theory.policies.registry import make_policy, policy_names, register_all


def builtin_names() -> set[str]:
    """Names of the built-in policies (other tests may register more, without a formula)."""
    names: set[str] = set()
    register_all(lambda cls: names.add(cls.name))
    return names


def test_list_policies_plain_text_names_every_policy_and_variant(capsys) -> None:
    assert main(["simulate", "--list-policies"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "name\tformula\tsource"
    rows = [line.split("\t") for line in lines[1:]]
    assert all(len(r) == 3 for r in rows)
    assert all(r[1] and r[2] for r in rows if r[0] in builtin_names() or ":" in r[0])
    names = [r[0] for r in rows]
    assert names == policy_names() + [f"lmetric:variant={v}" for v in LMETRIC_VARIANTS]


def test_list_policies_json_parameters_rebuild_each_policy(capsys) -> None:
    assert main(["simulate", "--list-policies", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} >= set(policy_names())
    for r in rows:
        assert set(r) == {"name", "formula", "source", "parameters"}
        if r["name"] in builtin_names() or ":" in r["name"]:
            assert r["formula"] and r["source"]
        name = r["name"].partition(":")[0]
        spec = ",".join(f"{k}={v}" for k, v in r["parameters"].items())
        # the listed defaults are valid values: the spec they spell builds the same parameters
        built = make_policy(f"{name}:{spec}" if spec else name)
        assert {k: str(v) for k, v in r["parameters"].items()} == {
            k: str(getattr(built.params, k)) for k in r["parameters"]}
    fork = next(r for r in rows if r["name"] == "lmetric:variant=sglang-fork")
    assert fork["parameters"]["P"] == "inflight-new+new"
    assert fork["formula"] == LMETRIC_VARIANTS["sglang-fork"].formula


@pytest.mark.parametrize("scheduler", ["vllm-v1", "reserve"])
def test_simulate_sglang_fork_on_a_short_synthetic_workload(capsys, scheduler: str) -> None:
    code = main(["simulate", "synthetic:chat", "--count", "150", "-n", "3", "--scheduler",
                 scheduler, "--policy", "lmetric:variant=sglang-fork", "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    res = doc["policies"]["lmetric:variant=sglang-fork"]
    assert res["completed"] == 150
    assert sum(res["requests_per_instance"]) == 150
