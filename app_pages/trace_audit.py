"""Trace audit (placeholder until the audit library lands)."""

from __future__ import annotations

import streamlit as st

st.title("Trace audit")
st.info("The trace audit is not available in this build yet.")
