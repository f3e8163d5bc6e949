"""Turn a :class:`~lmetric_theory.theory.derivation.Derivation` into JSON, Markdown or LaTeX.

Pure functions returning strings or JSON-ready dicts; printing happens in the CLI.
Every expression is written with ``sympy.sstr``, which ``sympy.parse_expr`` reads back
(use ``local_dict=SYMBOLS`` to recover the assumptions).
"""

from __future__ import annotations

import json
from typing import Any

import sympy as sp

from lmetric_theory.theory.derivation import SYMBOLS, Derivation, Formula, derive

__all__ = [
    "KEY_ALIASES",
    "MARKDOWN_COMMAND",
    "SCHEMA",
    "expr_str",
    "formula_latex",
    "is_relation",
    "tex",
    "to_json",
    "to_json_dict",
    "to_latex",
    "to_markdown",
]

#: Identifies the layout of the JSON object; bump when keys change meaning.
SCHEMA = "lmetric-theory.derive/1"
#: Older JSON key -> current key; both are emitted (same value) so readers of the first
#: layout keep working.
KEY_ALIASES: tuple[tuple[str, str], ...] = (
    ("lambda_eff", "lam_eff"),
    ("lambda_star", "lam_star"),
    ("scale_invariance.lambda_eff_ratio_after_prefill_rescale",
     "scale_invariance.lam_eff_ratio_after_prefill_rescale"),
    ("regret_forms.via_lambda_star", "regret_forms.via_lam_star"),
)
#: The command that regenerates ``docs/theory.md``.
MARKDOWN_COMMAND = "lmetric-theory derive --format markdown > docs/theory.md"

_SYMBOL_MEANING = {
    "P_1": "prefill tokens if routed to instance 1 (tokens, >= 0)",
    "P_2": "prefill tokens if routed to instance 2 (tokens, >= 0)",
    "B_1": "batch size of instance 1 (requests, >= 0)",
    "B_2": "batch size of instance 2 (requests, >= 0)",
    "p_0": "prefill offset (tokens, real; default 0)",
    "b_0": "batch offset (requests, real; default 1)",
    "lam": "linear exchange rate (prefill tokens per batch slot, >= 0)",
    "lam_lo": "low end of a band of exchange rates (>= 0)",
    "lam_hi": "high end of a band of exchange rates (>= lam_lo)",
    "k_P": "positive rescaling factor of P (e.g. tokens -> KV blocks)",
    "k_B": "positive rescaling factor of B (e.g. requests -> KV blocks)",
}


#: LaTeX names of the rate symbols (the others print well by default).
LATEX_NAMES: dict[sp.Symbol, str] = {
    SYMBOLS["lam"]: r"\lambda",
    SYMBOLS["lam_lo"]: r"\lambda_{\mathrm{lo}}",
    SYMBOLS["lam_hi"]: r"\lambda_{\mathrm{hi}}",
}


def tex(expr: sp.Basic) -> str:
    """LaTeX of an expression, with ``lam`` shown as ``\\lambda``."""
    return sp.latex(expr, symbol_names=LATEX_NAMES)


def expr_str(expr: sp.Basic | None) -> str | None:
    """The ``parse_expr``-readable string of an expression (``None`` stays ``None``)."""
    return None if expr is None else sp.sstr(expr)


def is_relation(expr: sp.Basic) -> bool:
    """True for relations and logical combinations (``<``, ``Eq``, ``&``, ...), which are
    displayed bare rather than as ``label = expr``."""
    return isinstance(expr, sp.logic.boolalg.Boolean) and not isinstance(expr, sp.Expr)


def formula_latex(f: Formula) -> str:
    """LaTeX of one formula: ``label = expr``, or the bare relation."""
    body = tex(f.expr)
    if is_relation(f.expr) or not f.latex_label:
        return body
    return f"{f.latex_label} = {body}"


def to_json_dict(d: Derivation | None = None) -> dict[str, Any]:
    """The JSON object of ``lmetric-theory derive --format json``.

    Keys named ``statement``, ``boundary_rule``, ``ties_statement``, ``name``, the
    lists of definition names and ``key_aliases`` (old key -> current key, both emitted)
    are prose/labels; ``bounded`` is a bool and
    ``*_favours`` an instance number; every other string value is a sympy expression.
    """
    d = derive() if d is None else d
    e = expr_str
    st = {r.key: r.statement for r in d.results}
    geometry_st = d.result("geometry").statement
    return {
        "schema": SCHEMA,
        "conventions": (
            "Lower score wins. S_i = (P_i + p_0)(B_i + b_0) is the product (LMetric) "
            "score, C_i = P_i + lam*B_i the linear score. Parse expressions with "
            "sympy.parse_expr; keys named statement/boundary_rule/ties_statement/name "
            "hold prose. Keys spell the rates lam, lam_eff, lam_star (rendered λ, λ_eff, "
            "λ*); the keys listed under key_aliases repeat a value under its older name."
        ),
        "key_aliases": dict(KEY_ALIASES),
        "symbols": {name: _SYMBOL_MEANING[name] for name in SYMBOLS},
        "definitions": {
            "S_1": e(d.S_1),
            "S_2": e(d.S_2),
            "C_1": e(d.C_1),
            "C_2": e(d.C_2),
            "P_definitions": list(d.p_definitions),
            "B_definitions": list(d.b_definitions),
            "defaults": {"p_0": str(d.default_p0), "b_0": str(d.default_b0)},
            "statement": st["definitions"],
        },
        "scale_invariance": {
            "prefill_rescale_remainder": e(d.prefill_rescale_remainder),
            "prefill_offset_for_invariance": e(d.prefill_offset_for_invariance),
            "prefill_rescale_equivalent_p0": e(d.prefill_rescale_equivalent_p0),
            "batch_rescale_remainder": e(d.batch_rescale_remainder),
            "batch_offset_for_invariance": e(d.batch_offset_for_invariance),
            "batch_rescale_equivalent_b0": e(d.batch_rescale_equivalent_b0),
            "linear_lam_after_prefill_rescale": e(d.linear_lam_after_prefill_rescale),
            "lam_eff_ratio_after_prefill_rescale": e(d.lam_eff_ratio_after_prefill_rescale),
            "lambda_eff_ratio_after_prefill_rescale": e(
                d.lam_eff_ratio_after_prefill_rescale
            ),
            "statement": st["scale_invariance"],
        },
        "pairwise_identity": {
            "lhs": e(d.pairwise_lhs),
            "rhs": e(d.pairwise_rhs),
            "statement": st["pairwise_identity"],
        },
        "lam_eff": e(d.lam_eff),
        "lam_star": e(d.lam_star),
        "lambda_eff": e(d.lam_eff),
        "lambda_star": e(d.lam_star),
        "disagreement": {
            "conflict_condition": e(d.conflict_condition),
            "lhs": e(d.disagreement_lhs),
            "rhs": e(d.disagreement_rhs),
            "condition": e(d.disagreement_condition),
            "between": e(d.disagreement_between),
            "statement": st["disagreement"],
        },
        "second_intersection": {"P_2": e(d.second_P2), "B_2": e(d.second_B2)},
        "geometry": {
            "hyperbola_B2": e(d.hyperbola_B2),
            "line_B2": e(d.line_B2),
            "intersections": [{"P_2": e(x), "B_2": e(y)} for x, y in d.intersections],
            "gap": e(d.gap),
            "tangent_lam": e(d.tangent_lam),
            "regions": [
                {
                    "name": r.name,
                    "bounded": r.bounded,
                    "P_2_lower": e(r.P2_lower),
                    "P_2_upper": e(r.P2_upper),
                    "B_2_lower": e(r.B2_lower),
                    "B_2_upper": e(r.B2_upper),
                    "product_favours": r.product_favours,
                    "linear_favours": r.linear_favours,
                    "statement": r.statement,
                }
                for r in d.regions
            ],
            "statement": geometry_st,
        },
        "n_instances": {
            "pair_condition": e(d.n_pair_condition),
            "statement": d.n_statement,
            "ties_statement": d.n_ties_statement,
        },
        "degenerate_cases": [
            {
                "name": g.name,
                "condition": e(g.condition),
                "value_of": e(g.value_of),
                "value": e(g.value),
                "reachable_when": e(g.reachable_when),
                "removed_by": e(g.removed_by),
                "statement": g.statement,
            }
            for g in d.degenerate
        ],
        "regret": e(d.regret),
        "regret_forms": {
            "via_lam_star": e(d.regret_via_star),
            "via_lambda_star": e(d.regret_via_star),
            "decomposition": e(d.regret_decomposition),
            "bound": e(d.regret_bound),
            "statement": st["regret"],
        },
        "robust_band": {
            "hull_lo": e(d.band_hull_lo),
            "hull_hi": e(d.band_hull_hi),
            "disagrees": e(d.band_disagrees_condition),
            "hull_rule": e(d.band_hull_condition),
            "agrees_strictly": e(d.band_agrees_strictly_condition),
            "boundary_rule": d.band_boundary_rule,
            "statement": st["robust_band"],
        },
        "identities": [
            {"name": i.name, "lhs": e(i.lhs), "rhs": e(i.rhs), "statement": i.statement}
            for i in d.identities
        ],
        "statements": st,
        "hot_prefix_classes": _hotspot_json(d),
        "router_state": _replicas_json(d),
    }


def _hotspot_json(d: Derivation) -> dict[str, Any]:
    """Results (j)-(l): per result its formulas by key and its statement; the symbols
    (parse with ``local_dict=HOTSPOT_SYMBOLS`` from :mod:`lmetric_theory.theory.hotspot`)."""
    from lmetric_theory.theory.hotspot import SYMBOL_MEANING

    out: dict[str, Any] = {"symbols": dict(SYMBOL_MEANING)}
    for r in d.results:
        if r.key.startswith("hotspot_"):
            out[r.key.removeprefix("hotspot_")] = {
                **{f.key: expr_str(f.expr) for f in r.formulas}, "statement": r.statement,
            }
    return out


def _replicas_json(d: Derivation) -> dict[str, Any]:
    """Results (m)-(o): per result its formulas by key and its statement; the symbols
    (parse with ``local_dict=REPLICA_SYMBOLS`` from :mod:`lmetric_theory.theory.replicas`)."""
    from lmetric_theory.theory.replicas import SYMBOL_MEANING

    out: dict[str, Any] = {"symbols": dict(SYMBOL_MEANING)}
    for r in d.results:
        if r.key.startswith("replica_"):
            out[r.key.removeprefix("replica_")] = {
                **{f.key: expr_str(f.expr) for f in r.formulas}, "statement": r.statement,
            }
    return out


def to_json(d: Derivation | None = None) -> str:
    """``to_json_dict`` as indented JSON text (no trailing newline)."""
    return json.dumps(to_json_dict(d), indent=2, ensure_ascii=False)


def _md_escape(text: str) -> str:
    return text.replace("*", r"\*").replace("_", r"\_")


def to_markdown(d: Derivation | None = None) -> str:
    """The Markdown document kept as ``docs/theory.md`` (ends with a newline)."""
    d = derive() if d is None else d
    out: list[str] = [
        "# The product score vs linear scores: derived results",
        "",
        "<!-- Generated file: do not edit by hand. Regenerate with",
        f"     {MARKDOWN_COMMAND}",
        "     (a test fails when this file is stale). -->",
        "",
        f"Regenerate with `{MARKDOWN_COMMAND}`. Every formula below is derived by sympy "
        "from the two score definitions (`lmetric_theory.theory.derive()`); every "
        "identity is proved in the test suite with `simplify(lhs - rhs) == 0`. Lower "
        "score wins; instance 1 and instance 2 form a pair.",
        "",
        "| symbol | meaning |",
        "| --- | --- |",
    ]
    out += [f"| `{name}` | {meaning} |" for name, meaning in _SYMBOL_MEANING.items()]
    from lmetric_theory.theory.hotspot import SYMBOL_MEANING as HOT_MEANING  # results (j)-(l)

    out += [f"| `{name}` | {meaning} |" for name, meaning in HOT_MEANING.items()]
    from lmetric_theory.theory.replicas import SYMBOL_MEANING as REP_MEANING  # (m)-(o)

    out += [f"| `{name}` | {meaning} |" for name, meaning in REP_MEANING.items()]
    for r in d.results:
        out += ["", f"## ({r.item}) {r.title}", "", _md_escape(r.statement), ""]
        for f in r.formulas:
            if is_relation(f.expr) or not f.latex_label:
                out += [f"{_md_escape(f.label)}:", ""]
            out += ["$$", formula_latex(f), "$$", ""]
        if r.key == "geometry":
            out += [
                "| part | bounded | P_2 from | P_2 to | B_2 from | B_2 to | product picks "
                "| linear picks |",
                "| --- | --- | --- | --- | --- | --- | --- | --- |",
            ]
            for g in d.regions:
                cells = [tex(x) for x in (g.P2_lower, g.P2_upper, g.B2_lower, g.B2_upper)]
                out.append(
                    f"| {g.name} | {'yes' if g.bounded else 'no'} | "
                    + " | ".join(f"${c}$" for c in cells)
                    + f" | {g.product_favours} | {g.linear_favours} |"
                )
            out.append("")
            out += [f"- **{g.name}**: {_md_escape(g.statement)}" for g in d.regions]
        if r.key == "degenerate_cases":
            out += [
                "| case | condition | value of | becomes | reachable when | removed by |",
                "| --- | --- | --- | --- | --- | --- |",
            ]
            for g in d.degenerate:
                cells = [
                    "—" if x is None else f"${tex(x)}$"
                    for x in (g.condition, g.value_of, g.value, g.reachable_when, g.removed_by)
                ]
                out.append(f"| {g.name.replace('_', ' ')} | " + " | ".join(cells) + " |")
            out.append("")
    out += ["", "## Identities proved in the tests", ""]
    for i in d.identities:
        out += [
            f"- **{i.name.replace('_', ' ')}** — {_md_escape(i.statement)}",
            "",
            "$$",
            f"{tex(i.lhs)} = {tex(i.rhs)}",
            "$$",
            "",
        ]
    return "\n".join(out).rstrip("\n") + "\n"


def _tex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("&", r"\&"), ("%", r"\%"),
                 ("#", r"\#"), ("$", r"\$"), ("{", r"\{"), ("}", r"\}")):
        text = text.replace(a, b)
    return text


def to_latex(d: Derivation | None = None) -> str:
    """A LaTeX fragment (sections with statements and ``align*`` blocks; needs amsmath)."""
    d = derive() if d is None else d
    out: list[str] = [
        "% Generated by: lmetric-theory derive --format latex (requires amsmath)",
    ]
    for r in d.results:
        out += [
            rf"\section*{{({r.item}) {_tex_escape(r.title)}}}",
            _tex_escape(r.statement),
            r"\begin{align*}",
            " \\\\\n".join(formula_latex(f) for f in r.formulas),
            r"\end{align*}",
            "",
        ]
    return "\n".join(out).rstrip("\n") + "\n"
