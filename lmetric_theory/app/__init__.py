"""App layer: view models the Streamlit pages render (no Streamlit import here)."""
