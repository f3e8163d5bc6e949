"""The Streamlit page scripts (run by ``lmetric_theory.app.main``, never imported)."""
