"""Streamlit app: decision regions, snapshot checker and trace audit.

Run with ``streamlit run app.py``. Each page lives in ``app_pages/`` and is thin: it reads
its widgets, calls one library function and renders the result.
"""

from __future__ import annotations

import streamlit as st

st.set_page_config(page_title="lmetric-theory", layout="wide")

PAGES = [
    st.Page("app_pages/decision_regions.py", title="Decision regions", url_path="regions",
            default=True),
    st.Page("app_pages/snapshot_checker.py", title="Snapshot checker", url_path="snapshot"),
    st.Page("app_pages/trace_audit.py", title="Trace audit", url_path="audit"),
]

st.navigation(PAGES).run()
