"""Streamlit app: decision regions, snapshot checker and trace audit.

Run with ``streamlit run app.py`` from a source checkout, or ``lmetric-theory app`` from an
installed package (needs the ``app`` extra). The pages live in ``lmetric_theory/app/pages/``.
"""

from lmetric_theory.app.main import run

run()
