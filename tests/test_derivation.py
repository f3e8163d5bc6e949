"""The symbolic derivation: identities proved, results checked by hand and exactly,
JSON round trip, generated docs up to date, CLI behaviour."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction as F
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

from lmetric_theory import cli
from lmetric_theory.core.definitions import (
    DEFAULT_B0,
    DEFAULT_P0,
    BDefinition,
    PDefinition,
    ScoreDefinition,
)
from lmetric_theory.theory import (
    SYMBOLS,
    derive,
    hyperbola_B2,
    line_B2,
    region_of,
    second_intersection,
    tangent_lam,
)
from lmetric_theory.theory.geometry import REGION_LEFT, REGION_LENS, REGION_RIGHT
from lmetric_theory.theory.render import to_json_dict, to_latex, to_markdown

ROOT = Path(__file__).resolve().parents[1]
P_1, P_2, B_1, B_2 = (SYMBOLS[n] for n in ("P_1", "P_2", "B_1", "B_2"))
p_0, b_0, lam = SYMBOLS["p_0"], SYMBOLS["b_0"], SYMBOLS["lam"]
lam_lo, lam_hi = SYMBOLS["lam_lo"], SYMBOLS["lam_hi"]
S1 = (P_1 + p_0) * (B_1 + b_0)
S2 = (P_2 + p_0) * (B_2 + b_0)
C1 = P_1 + lam * B_1
C2 = P_2 + lam * B_2


@pytest.fixture(scope="module")
def d():
    return derive()


# -------------------------------------------------------------------- identities


@pytest.mark.parametrize("name", [i.name for i in derive().identities])
def test_identity_holds(d, name):
    (ident,) = [i for i in d.identities if i.name == name]
    assert sp.simplify(ident.lhs - ident.rhs) == 0


def test_derive_is_cached(d):
    assert derive() is d


def test_old_rate_attributes_are_aliases(d):
    """``lambda_*`` attributes of the first layout return the ``lam_*`` expressions."""
    assert d.lambda_eff is d.lam_eff and d.lambda_star is d.lam_star
    assert d.lambda_eff_ratio_after_prefill_rescale is d.lam_eff_ratio_after_prefill_rescale
    assert sp.simplify(d.lam_star - (P_2 - P_1) / (B_1 - B_2)) == 0


def test_definitions_match_the_scores(d):
    assert sp.expand(d.S_1 - S1) == 0 and sp.expand(d.S_2 - S2) == 0
    assert sp.expand(d.C_1 - C1) == 0 and sp.expand(d.C_2 - C2) == 0
    assert d.p_definitions == ("uncached", "queued+uncached", "router-queued+new",
                               "uncached-full-blocks", "prefill-blocks", "inflight-new+new")
    assert d.b_definitions == ("running", "in-flight", "router-in-flight", "decode-blocks")
    assert (d.default_p0, d.default_b0) == (0, 1)


# ------------------------------------------------------------ results, by hand


def test_pairwise_identity_and_lambda_eff(d):
    mean_B, mean_P = (B_1 + B_2) / 2, (P_1 + P_2) / 2
    rhs = (mean_B + b_0) * (P_1 - P_2) + (mean_P + p_0) * (B_1 - B_2)
    assert sp.simplify(d.pairwise_rhs - rhs) == 0
    assert sp.simplify(S1 - S2 - rhs) == 0
    assert sp.simplify(d.lambda_eff - (mean_P + p_0) / (mean_B + b_0)) == 0


def test_lambda_star_is_break_even(d):
    assert sp.simplify(d.lambda_star - (P_2 - P_1) / (B_1 - B_2)) == 0
    assert sp.simplify((C1 - C2).subs(lam, d.lambda_star)) == 0
    # conflicting <=> lambda_star > 0, on a hand example: P1 < P2, B1 > B2
    vals = {P_1: 100, P_2: 300, B_1: 5, B_2: 1}
    assert d.lambda_star.subs(vals) == 50
    assert bool(d.conflict_condition.subs(vals))


def test_disagreement_on_hand_example(d):
    # Instance 1: 100 uncached tokens, batch 5; instance 2: 300 tokens, batch 1.
    # b0 = 1: S = 600 vs 600 -> tie ... use batch 4 instead: S1 = 500 < S2 = 600.
    vals = {P_1: 100, B_1: 4, P_2: 300, B_2: 1, p_0: 0, b_0: 1}
    assert d.lambda_eff.subs(vals) == sp.Rational(400, 7)  # (100+300)/(4+1+2)
    assert d.lambda_star.subs(vals) == sp.Rational(200, 3)
    # lam = 80 > lambda_star > lambda_eff: linear picks 2, product picks 1
    assert bool(d.disagreement_condition.subs({**vals, lam: 80}))
    assert bool(d.disagreement_between.subs({**vals, lam: 80}))
    # lam = 60 < lambda_star: both pick 1
    assert not bool(d.disagreement_condition.subs({**vals, lam: 60}))
    # lam = lambda_star: linear tie, not a disagreement
    assert not bool(d.disagreement_condition.subs({**vals, lam: sp.Rational(200, 3)}))


def test_scale_invariance(d):
    kP, kB = SYMBOLS["k_P"], SYMBOLS["k_B"]
    assert d.prefill_offset_for_invariance == 0 and d.batch_offset_for_invariance == 0
    assert sp.simplify(d.prefill_rescale_equivalent_p0 - p_0 / kP) == 0
    assert sp.simplify(d.batch_rescale_equivalent_b0 - b_0 / kB) == 0
    assert sp.simplify(d.linear_lam_after_prefill_rescale - lam / kP) == 0
    assert d.lambda_eff_ratio_after_prefill_rescale == kP
    # with b0 = 1 (the default), rescaling B flips a choice: a witness
    def choice(P, B, b0):
        s = [(F(p)) * (F(b) + b0) for p, b in zip(P, B, strict=True)]
        return s.index(min(s))

    found = False
    for p2 in range(1, 40):
        P, B = [10, p2], [2, 1]
        if choice(P, B, 1) != choice(P, [4 * b for b in B], 1):
            found = True
            # rescaled choice equals the original with b0 / 4
            assert choice(P, [4 * b for b in B], 1) == choice(P, B, F(1, 4))
    assert found
    # with b0 = 0 nothing ever flips
    for p2 in range(0, 40):
        P, B = [10, p2], [2, 1]
        s = [p * b for p, b in zip(P, B, strict=True)]
        s4 = [p * 4 * b for p, b in zip(P, B, strict=True)]
        assert np.argmin(s) == np.argmin(s4)


def test_degenerate_cases(d):
    by = {g.name: g for g in d.degenerate}
    assert set(by) >= {"prefill_zero", "batch_zero", "product_tie", "linear_tie"}
    assert by["prefill_zero"].value == 0 and by["batch_zero"].value == 0
    assert by["prefill_zero"].removed_by == sp.StrictGreaterThan(p_0, 0)
    assert by["batch_zero"].removed_by == sp.StrictGreaterThan(b_0, 0)
    assert by["prefill_zero"].reachable_when == sp.LessThan(p_0, 0)
    assert by["product_tie"].value == 0 and by["linear_tie"].value == 0
    assert by["product_tie"].removed_by is None
    # hot-spot: p0 = 0, fully cached request on a loaded instance still wins
    assert S1.subs({P_1: 0, p_0: 0, B_1: 1000, b_0: 1}) == 0
    # idle instances tie at 0 with b0 = 0 whatever their cache
    assert S1.subs({B_1: 0, b_0: 0, P_1: 5}) == S2.subs({B_2: 0, b_0: 0, P_2: 5000}) == 0
    # the tie example in the statement: (100, 1) vs (50, 3) with b0 = 1
    assert S1.subs({P_1: 100, B_1: 1, p_0: 0, b_0: 1}) == S2.subs(
        {P_2: 50, B_2: 3, p_0: 0, b_0: 1}
    )


def test_regret_forms(d):
    assert sp.expand(d.regret - (P_1 - P_2) - lam * (B_1 - B_2)) == 0
    assert sp.simplify(d.regret - d.regret_via_star) == 0
    vals = {P_1: 100, B_1: 4, P_2: 300, B_2: 1, p_0: 0, b_0: 1, lam: 80}
    # product picks 1, linear(80) picks 2: regret 100 - 300 + 80*3 = 40 tokens
    assert d.regret.subs(vals) == 40
    assert d.regret.subs(vals) <= d.regret_bound.subs(vals)


# -------------------------------------------------------------------- geometry


def test_second_intersection(d):
    assert sp.simplify(d.second_P2 - (lam * (B_1 + b_0) - p_0)) == 0
    assert sp.simplify(d.second_B2 - ((P_1 + p_0) / lam - b_0)) == 0
    assert d.intersections[0] == (P_1, B_1)
    assert sp.simplify(d.tangent_lam - (P_1 + p_0) / (B_1 + b_0)) == 0


def test_regions_exact(d):
    """Random rational points inside each region favour the instances it says."""
    rng = np.random.default_rng(7)
    checked = 0
    for _ in range(60):
        P1, B1 = F(int(rng.integers(1, 500))), F(int(rng.integers(0, 20)))
        p0, b0 = F(int(rng.integers(0, 2))), F(int(rng.integers(0, 2)) or 1)
        lamv = F(int(rng.integers(1, 400)), int(rng.integers(1, 5)))
        base = {P_1: P1, B_1: B1, p_0: p0, b_0: b0, lam: lamv}
        for reg in d.regions:
            lo = F(str(reg.P2_lower.subs(base)))
            hi_e = reg.P2_upper.subs(base)
            hi = lo + 50 if hi_e == sp.oo else F(str(hi_e))
            if hi <= lo:
                continue
            for t in (F(1, 4), F(1, 2), F(3, 4)):
                x = lo + (hi - lo) * t
                ylo = F(str(reg.B2_lower.subs({**base, P_2: x})))
                yhi = F(str(reg.B2_upper.subs({**base, P_2: x})))
                assert ylo < yhi, (reg.name, base, x)
                y = (ylo + yhi) / 2
                s1, s2 = (P1 + p0) * (B1 + b0), (x + p0) * (y + b0)
                c1, c2 = P1 + lamv * B1, x + lamv * y
                assert (1 if s1 < s2 else 2) == reg.product_favours
                assert (1 if c1 < c2 else 2) == reg.linear_favours
                checked += 1
    assert checked > 200


def test_numeric_geometry_helpers(d):
    P2 = np.array([10.0, 50.0, 100.0, 400.0])
    np.testing.assert_allclose(hyperbola_B2(P2, 100, 1), 200 / P2 - 1)
    np.testing.assert_allclose(hyperbola_B2(P2, 100, 1, 5, 2), 105 * 3 / (P2 + 5) - 2)
    np.testing.assert_allclose(line_B2(P2, 100, 1, 40), 1 + (100 - P2) / 40)
    x, y = second_intersection(100, 1, 40)
    assert (float(x), float(y)) == (80.0, 1.5)
    x, y = second_intersection(np.array([100, 300]), np.array([1, 2]), 40, 0, 1)
    np.testing.assert_allclose(x, [80, 120])
    np.testing.assert_allclose(y, [1.5, 6.5])
    assert float(tangent_lam(100, 1)) == 50.0
    # the lens: between P2 = 80 and 100, between hyperbola and line
    assert region_of(90, 1.24, 100, 1, 40) == REGION_LENS  # 1.222 < 1.24 < 1.25
    assert region_of(0, 4, 100, 1, 40) == REGION_LEFT
    assert region_of(150, 0, 100, 1, 40) == REGION_RIGHT
    grid = region_of(np.linspace(0, 400, 41)[:, None], np.linspace(0, 8, 33)[None, :],
                     100, 1, 40)
    assert grid.shape == (41, 33)
    # agrees with the exact predicates on every grid point off the curves
    from lmetric_theory.core import kernel as pr

    Pg, Bg = np.meshgrid(np.linspace(0, 400, 41), np.linspace(0, 8, 33), indexing="ij")
    dis = pr.disagrees(100.0, 1.0, Pg, Bg, 40, 0, 1)
    np.testing.assert_array_equal(grid != 0, dis)


# --------------------------------------------------------------- definitions


def test_score_definition():
    sd = ScoreDefinition()
    assert (sd.p0, sd.b0) == (DEFAULT_P0, DEFAULT_B0) == (0, 1)
    # the paper's router (policy lmetric-q) by default
    assert sd.p_definition is PDefinition.ROUTER_QUEUED_PLUS_NEW
    assert sd.b_definition is BDefinition.ROUTER_IN_FLIGHT
    sd2 = ScoreDefinition("queued+uncached", "in-flight", F(1, 2), 0)
    assert sd2.p_definition is PDefinition.QUEUED_PLUS_UNCACHED
    assert sd2.as_dict() == {
        "P_definition": "queued+uncached", "B_definition": "in-flight",
        "p_0": "1/2", "b_0": "0",
    }
    with pytest.raises(ValueError, match="p_definition.*'cached'.*valid"):
        ScoreDefinition("cached")
    with pytest.raises(ValueError, match="b_definition"):
        ScoreDefinition(b_definition="waiting")
    with pytest.raises(ValueError, match="b0"):
        ScoreDefinition(b0=0.5)


# --------------------------------------------------------------------- output


PROSE_KEYS = {"statement", "boundary_rule", "ties_statement", "name", "schema", "conventions"}


def _expression_strings(obj, path=""):
    """(path, string) of every expression string in the JSON object."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in PROSE_KEYS or k in {"symbols", "statements", "P_definitions",
                                        "B_definitions", "key_aliases"}:
                continue
            yield from _expression_strings(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _expression_strings(v, f"{path}[{i}]")
    elif isinstance(obj, str):
        yield path, obj


def test_json_old_keys_are_aliases(d):
    """The ``lambda_*`` keys of the first layout repeat the ``lam_*`` values."""
    data = to_json_dict(d)
    assert data["key_aliases"] == {"lambda_eff": "lam_eff", "lambda_star": "lam_star",
                                   "scale_invariance.lambda_eff_ratio_after_prefill_rescale":
                                   "scale_invariance.lam_eff_ratio_after_prefill_rescale",
                                   "regret_forms.via_lambda_star": "regret_forms.via_lam_star"}
    for old, new in data["key_aliases"].items():
        def at(path: str) -> object:
            obj = data
            for part in path.split("."):
                obj = obj[part]
            return obj

        assert at(old) == at(new) is not None


def test_json_round_trip(d):
    data = json.loads(json.dumps(to_json_dict(d)))
    for key in ("pairwise_identity", "lam_eff", "lam_star", "second_intersection",
                "regret", "scale_invariance", "degenerate_cases", "robust_band"):
        assert key in data
    assert set(data["pairwise_identity"]) >= {"lhs", "rhs"}
    assert set(data["second_intersection"]) == {"P_2", "B_2"}
    from lmetric_theory.theory.hotspot import HOTSPOT_SYMBOLS
    from lmetric_theory.theory.replicas import REPLICA_SYMBOLS

    allowed = set(SYMBOLS) | set(HOTSPOT_SYMBOLS) | set(REPLICA_SYMBOLS)
    n = 0
    for path, text in _expression_strings(data):
        plain = sp.parse_expr(text)  # readable without any local names
        assert {s.name for s in plain.free_symbols} <= allowed, path
        n += 1
    assert n > 50
    parse = lambda s: sp.parse_expr(s, local_dict=SYMBOLS)  # noqa: E731
    assert sp.simplify(parse(data["lam_eff"]) - d.lam_eff) == 0
    assert sp.simplify(parse(data["lam_star"]) - d.lam_star) == 0
    assert sp.simplify(parse(data["regret"]) - d.regret) == 0
    assert sp.simplify(
        parse(data["pairwise_identity"]["lhs"]) - parse(data["pairwise_identity"]["rhs"])
    ) == 0
    assert sp.simplify(parse(data["second_intersection"]["P_2"]) - d.second_P2) == 0
    assert sp.simplify(parse(data["second_intersection"]["B_2"]) - d.second_B2) == 0
    # relations: same truth value as the in-process ones on random rational states
    rng = np.random.default_rng(3)
    rel_pairs = [
        (parse(data["robust_band"]["disagrees"]), d.band_disagrees_condition),
        (parse(data["robust_band"]["agrees_strictly"]), d.band_agrees_strictly_condition),
        (parse(data["disagreement"]["condition"]), d.disagreement_condition),
        (parse(data["disagreement"]["conflict_condition"]), d.conflict_condition),
    ]
    for _ in range(50):
        vals = {SYMBOLS[n]: sp.Integer(int(rng.integers(0, 6)))
                for n in ("P_1", "P_2", "B_1", "B_2", "p_0", "b_0", "lam")}
        lo = sp.Rational(int(rng.integers(0, 8)), int(rng.integers(1, 3)))
        vals |= {lam_lo: lo, lam_hi: lo + int(rng.integers(0, 4))}
        for parsed, orig in rel_pairs:
            assert bool(parsed.subs(vals)) == bool(orig.subs(vals))
    for item in data["identities"]:
        assert sp.simplify(parse(item["lhs"]) - parse(item["rhs"])) == 0, item["name"]


def test_markdown_and_latex_cover_every_result(d):
    md, tex = to_markdown(d), to_latex(d)
    for r in d.results:
        assert f"## ({r.item}) {r.title}" in md
        assert f"({r.item}) " in tex
    assert tex.count(r"\begin{align*}") == len(d.results)
    assert r"\lambda" in md


def test_docs_theory_md_is_up_to_date(d):
    """docs/theory.md must equal `lmetric-theory derive --format markdown`."""
    path = ROOT / "docs" / "theory.md"
    assert path.is_file(), "docs/theory.md missing; regenerate it"
    assert path.read_text(encoding="utf-8") == to_markdown(d), (
        "docs/theory.md is stale: run `lmetric-theory derive --format markdown > "
        "docs/theory.md`"
    )


# ------------------------------------------------------------------------ CLI


@pytest.mark.parametrize("fmt", ["text", "json", "latex", "markdown"])
def test_cli_formats(capsys, fmt):
    assert cli.main(["derive", "--format", fmt]) == 0
    out = capsys.readouterr().out
    if fmt == "json":
        data = json.loads(out)
        assert data["lam_eff"] and data["lam_eff"] == data["lambda_eff"]
    elif fmt == "markdown":
        assert out == to_markdown()
    elif fmt == "latex":
        assert r"\lambda" in out
    else:  # the prose renders the rates as λ, λ_eff, λ*
        assert "λ_eff" in out and "λ*" in out
        assert "lambda_eff" not in out and "lambda_star" not in out


def test_cli_emit(capsys):
    assert cli.main(["derive", "--emit", "c"]) == 0
    assert "lmetric_disagrees" in capsys.readouterr().out
    assert cli.main(["derive", "--emit", "rust"]) == 0
    assert "pub fn lmetric_disagrees" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["derive", "--format", "yaml"], "invalid choice: 'yaml'"),
        (["derive", "--emit", "go"], "invalid choice: 'go'"),
        (["derive", "--format", "json", "--emit", "c"], "not allowed with"),
        (["derive", "--frobnicate"], "unrecognized arguments"),
        (["derive", "lam**2"], "unrecognized arguments"),
    ],
)
def test_cli_usage_errors_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_subprocess_json():
    """The real entry point in a fresh interpreter: valid JSON, exit 0."""
    proc = subprocess.run(
        [sys.executable, "-m", "lmetric_theory", "derive", "--format", "json"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads(proc.stdout)) >= {"pairwise_identity", "robust_band"}
