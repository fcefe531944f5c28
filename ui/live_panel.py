"""The Intervene page's live panel, a Streamlit component that recomputes the prediction in the
browser (see live_panel.js): moving a slider costs a few milliseconds instead of a server round
trip. The numbers it draws come from ``cbm_core.HeadSlice``; Python keeps the history."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from cbm_core import HeadSlice

_HERE = Path(__file__).parent
_HTML = """
<div class="live">
  <div class="controls"></div>
  <div class="result">
    <div class="headline"></div>
    <div class="probs"></div>
    <div class="legend"><span style="background:#9aa5b1;opacity:.6"></span>original
      <span style="background:var(--st-primary-color,#2f6f9f)"></span>with changes (change in points)</div>
    <div class="contrib"></div>
    <div class="keys"><span class="key"><i style="background:#2f6f9f"></i>present, pushing for</span>
      <span class="key"><i class="hatch-for"></i>absent, pushing for</span>
      <span class="key"><i style="background:#c8553d"></i>present, pushing against</span>
      <span class="key"><i class="hatch-against"></i>absent, pushing against</span></div>
  </div>
</div>
"""
_component = st.components.v2.component(
    "cbm.live_intervention", html=_HTML, css=(_HERE / "live_panel.css").read_text(),
    js=(_HERE / "live_panel.js").read_text())


def pending_edit(key: str, done: int) -> tuple[int, dict] | None:
    """The browser's latest finished change if Python has not applied it yet: (seq, settings),
    settings as ``HeadSlice.intervention_with`` takes them."""
    edit = (st.session_state.get(key) or {}).get("edit")
    if not edit or int(edit.get("seq", 0)) <= done:
        return None
    return int(edit["seq"]), dict(edit.get("settings") or {})


def live_panel(head: HeadSlice, ack: int, key: str) -> None:
    """Mount the panel; ``ack`` is the last browser edit already folded into ``head``."""
    _component(data={**head.to_dict(), "ack": ack}, key=key, default={"edit": None},
               on_edit_change=lambda: None)
