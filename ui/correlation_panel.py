"""Evaluate's "concepts the model cannot tell apart" as one browser component (correlation_panel.js):
the pairs above the lowest threshold come from ``cbm_core.cooccurrence_warnings`` once, and the
threshold slider filters them in the browser, so moving it shows the new table in a frame instead of a
server round trip (Streamlit's own slider commits a key press only after a pause)."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

_HERE = Path(__file__).parent
_component = st.components.v2.component(
    "cbm.correlated_pairs", html='<div class="pairs"></div>', css=(_HERE / "correlation_panel.css").read_text(),
    js=(_HERE / "correlation_panel.js").read_text())


def correlation_panel(pairs, lowest: float, threshold: float, key: str) -> None:
    """pairs: ``cooccurrence_warnings(model, embeddings, lowest)`` (concept_a, concept_b, correlation),
    strongest first; threshold: where the slider starts."""
    _component(data={"pairs": [[a, b, float(c)] for a, b, c in pairs.itertuples(index=False)],
                     "lowest": lowest, "highest": 0.99, "threshold": threshold}, key=key)
