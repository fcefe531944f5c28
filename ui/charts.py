"""Charts shared by the pages: drawn by ``cbm_core.report.figures`` (the one place a chart is drawn,
for the pages and the reports alike); this module only puts them on a Streamlit page.

Two kinds: plotly figures for the analysis pages (Evaluate, Build, Compare), and light HTML bar charts
for Inspect, whose first render has a budget of one second (see ``cbm_core.report.figures``). The HTML
charts are styled by ``cbm_core/report/charts.css``, which ``use_html_charts`` adds to the page.
"""
from __future__ import annotations

import streamlit as st

from cbm_core.report.figures import (  # noqa: F401 (the pages' names for the charts)
    BLUE, CHARTS_CSS, DIRECTION_STYLE, GREY, RED, TEAL, contribution_bars, direction_legend, heatmap, lambda_path,
    nec_curves, probabilities, probability_bars, waterfall_bars)


def use_html_charts() -> None:
    """Add the HTML charts' stylesheet to the page (once per run; Streamlit puts a style-only st.html out of the flow)."""
    st.html(CHARTS_CSS)
