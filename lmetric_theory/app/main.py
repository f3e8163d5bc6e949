"""The Streamlit app's entry script: overview, decision regions, snapshot checker, trace audit,
simulate, advice report.

Started by ``lmetric-theory app`` (from an installed package) or ``streamlit run app.py``
(from a source checkout; ``app.py`` calls :func:`run`). Each page is a thin script under
``lmetric_theory/app/pages/``: it reads its widgets, calls one library function and renders
the result.
"""

from __future__ import annotations

from pathlib import Path

#: Folder of the page scripts (installed with the package).
PAGES_DIR = Path(__file__).resolve().parent / "pages"

#: (script, title, short URL) of every page. The first is the landing page, served at ``/``
#: (Streamlit serves the default page only there, so it is an overview rather than a page
#: whose short URL would then not resolve).
PAGES: tuple[tuple[str, str, str], ...] = (
    ("overview.py", "Overview", "overview"),
    ("decision_regions.py", "Decision regions", "regions"),
    ("snapshot_checker.py", "Snapshot checker", "snapshot"),
    ("trace_audit.py", "Trace audit", "audit"),
    ("simulate.py", "Simulate", "simulate"),
    ("advice.py", "Advice report", "advice"),
)


#: Page-wide style fixes: KaTeX display formulas get room above and below (their fraction
#: numerators were cut off by the box's hidden vertical overflow).
CSS = ".katex-display { padding: 0.5em 0 0.4em; overflow-y: visible; }"


def run() -> None:
    """Configure the page and run the navigation (call once per Streamlit script run)."""
    import streamlit as st

    st.set_page_config(page_title="lmetric-theory", layout="wide")
    st.html(f"<style>{CSS}</style>")
    pages = [
        st.Page(PAGES_DIR / script, title=title, url_path=url, default=(k == 0))
        for k, (script, title, url) in enumerate(PAGES)
    ]
    st.navigation(pages).run()


if __name__ == "__main__":  # Streamlit runs the entry script as __main__
    run()
