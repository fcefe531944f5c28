"""Concept debugger — the dashboard's entry point: `streamlit run app.py`.

Declares the pages once (st.navigation); the shared sidebar lives in ui/sidebar.py.
"""
import streamlit as st

from ui import sidebar

st.set_page_config(page_title="Concept debugger", page_icon=":material/troubleshoot:", layout="wide")

PAGES = [
    st.Page("pages/inspect.py", title="Inspect", icon=":material/image_search:", default=True),
    st.Page("pages/intervene.py", title="Intervene", icon=":material/tune:"),
    st.Page("pages/edit.py", title="Edit model", icon=":material/content_cut:"),
    st.Page("pages/evaluate.py", title="Evaluate", icon=":material/monitoring:"),
    st.Page("pages/build.py", title="Build", icon=":material/construction:"),
]
sidebar.run_page(st.navigation(PAGES))
