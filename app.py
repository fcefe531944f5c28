"""Concept debugger — the dashboard's entry point: `streamlit run app.py`.

Declares the pages once (st.navigation); the shared sidebar lives in ui/sidebar.py.
"""
import streamlit as st

from ui import sidebar

sidebar.configure_page()

PAGES = [st.Page(path, title=title, icon=icon, default=i == 0) for i, (path, title, icon) in enumerate(sidebar.PAGES)]
sidebar.run_page(st.navigation(PAGES, position="hidden"))  # the sidebar draws the menu (ui/sidebar.py)
