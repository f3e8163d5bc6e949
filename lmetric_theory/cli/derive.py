"""``lmetric-theory derive``: print the symbolic results (text, JSON, LaTeX, Markdown)
or native-router code (C, Rust).

Examples
--------
::

    lmetric-theory derive                      # readable summary
    lmetric-theory derive --format json        # one JSON object, sympy-parsable strings
    lmetric-theory derive --format markdown > docs/theory.md
    lmetric-theory derive --emit c > lmetric_theory.h
"""

from __future__ import annotations

import argparse
import sys

FORMATS: tuple[str, ...] = ("text", "json", "latex", "markdown")
EMIT_LANGUAGES: tuple[str, ...] = ("c", "rust")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``derive`` sub-command."""
    p = subparsers.add_parser(
        "derive",
        help="derive when the product score disagrees with a linear score",
        description=(
            "Derive (with sympy, from the score definitions) when the LMetric product "
            "score (P + p0)(B + b0) picks a different instance than a linear score "
            "P + lam*B, and print the results or generated C/Rust code."
        ),
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument(
        "--format",
        choices=FORMATS,
        default="text",
        help="output format of the results (default: text)",
    )
    out.add_argument(
        "--emit",
        choices=EMIT_LANGUAGES,
        default=None,
        help="print self-contained native code (lam_eff, lam_star, disagreement "
        "predicate) instead of the results",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handler: print the requested output to stdout; returns 0."""
    if args.emit is not None:
        from lmetric_theory.theory.codegen import emit

        sys.stdout.write(emit(args.emit))
        return 0
    from lmetric_theory.theory import render

    if args.format == "json":
        sys.stdout.write(render.to_json() + "\n")
    elif args.format == "markdown":
        sys.stdout.write(render.to_markdown())
    elif args.format == "latex":
        sys.stdout.write(render.to_latex())
    else:
        _print_text()
    return 0


def _print_text() -> None:
    """Readable summary with rich (plain text when stdout is not a terminal)."""
    import sympy as sp
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from lmetric_theory.theory import derive
    from lmetric_theory.theory.render import is_relation

    d = derive()
    console = Console(highlight=False, soft_wrap=False)
    console.print("[bold]lmetric-theory derive[/bold] — product score vs linear score "
                  "(lower score wins)")
    for r in d.results:
        console.rule(f"[bold]({r.item}) {escape(r.title)}[/bold]", align="left")
        console.print(escape(r.statement))
        for f in r.formulas:
            body = escape(sp.sstr(f.expr))
            if is_relation(f.expr):
                console.print(f"  [cyan]{escape(f.label)}[/cyan]: {body}")
            else:
                console.print(f"  [cyan]{escape(f.label)}[/cyan] = {body}")
        if r.key == "geometry":
            table = Table("part", "P_2 range", "B_2 range", "product", "linear")
            for g in d.regions:
                table.add_row(
                    g.name + (" (bounded)" if g.bounded else ""),
                    escape(f"({sp.sstr(g.P2_lower)}, {sp.sstr(g.P2_upper)})"),
                    escape(f"({sp.sstr(g.B2_lower)}, {sp.sstr(g.B2_upper)})"),
                    f"picks {g.product_favours}",
                    f"picks {g.linear_favours}",
                )
            console.print(table)
        if r.key == "degenerate_cases":
            for g in d.degenerate:
                extra = "" if g.removed_by is None else f"; removed by {sp.sstr(g.removed_by)}"
                console.print(
                    escape(f"  - {g.name}: {sp.sstr(g.value_of)} -> {sp.sstr(g.value)} "
                           f"when {sp.sstr(g.condition)}{extra}")
                )
    console.print(
        f"[dim]{len(d.identities)} identities derived; proofs run in the test suite. "
        "Other formats: --format json|latex|markdown; code: --emit c|rust.[/dim]"
    )
