"""Concept-debugging dashboard: the entry point. Run with `streamlit run app.py`."""
import streamlit as st

st.set_page_config(page_title="Concept debugger", page_icon="🔎", layout="wide")

pages = [st.Page("pages/overview.py", title="Model overview", icon="📋", default=True)]
st.navigation(pages).run()
