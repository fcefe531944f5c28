"""The sidebar every page shares: which bundle is loaded, on which backbone / device / precision,
and a short "what am I looking at"."""
from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import streamlit as st

from ui import common

_state = threading.local()

# The pages, declared once: app.py turns them into st.navigation; the sidebar links to them itself,
# so the menu looks the same when a deep link makes Streamlit run a page file without app.py
# (its auto-discovered pages/ list is hidden in .streamlit/config.toml).
PAGES = (
    ("pages/inspect.py", "Inspect", ":material/image_search:"),
    ("pages/intervene.py", "Intervene", ":material/tune:"),
    ("pages/edit.py", "Edit model", ":material/content_cut:"),
    ("pages/evaluate.py", "Evaluate", ":material/monitoring:"),
    ("pages/build.py", "Build", ":material/construction:"),
    ("pages/compare.py", "Compare", ":material/compare_arrows:"),
)


def _open_upload() -> None:
    upload = st.session_state.get("bundle_upload")
    if upload is None:
        return
    target = Path(tempfile.gettempdir()) / f"cbm_upload_{upload.file_id}.zip"
    target.write_bytes(upload.getvalue())
    common.open_bundle(str(target))


def draw() -> None:
    common.ensure_session()
    with st.sidebar:
        for path, title, icon in PAGES:
            st.page_link(path, label=title, icon=icon)
        st.divider()
        st.markdown("### Concept debugger")
        choices = common.bundle_choices()
        current = st.session_state.get("bundle_path")
        labels = list(choices)
        # The picker always names the loaded bundle, however it was opened (the widget's own state
        # would otherwise keep the previous choice when the options change under it).
        st.session_state["bundle_choice"] = next((label for label in labels if choices[label] == current), labels[0])
        st.selectbox("Model bundle", labels, key="bundle_choice", help="Bundles in ./models appear here too.",
                     on_change=lambda: common.open_bundle(choices[st.session_state["bundle_choice"]]))
        with st.expander("Open another bundle"):
            path = st.text_input("Folder or .zip path", key="bundle_path_input")
            if path:  # a callback, so the picker above already shows the new bundle on this rerun
                st.button("Open bundle", key="open_path", on_click=common.open_bundle, args=(path,))
            st.file_uploader("…or upload a bundle .zip", type=["zip"], key="bundle_upload", on_change=_open_upload)
        if st.session_state.get("bundle_error"):
            st.error(st.session_state["bundle_error"])
        pending = st.session_state.get("pending_trust")
        if pending:
            with st.container(border=True):
                st.warning(f"**{Path(pending['path']).name}** wants to load its backbone `{pending['spec']}`: "
                           f"{pending['reason']}. A bundle's author chose this, not you. Load it only if you trust "
                           f"where the bundle came from.")
                go, cancel = st.columns(2)
                go.button("Load it", key="trust_backbone", type="primary", width="stretch",
                          on_click=common.open_bundle, args=(pending["path"], True))
                cancel.button("Cancel", key="trust_cancel", width="stretch",
                              on_click=lambda: st.session_state.pop("pending_trust", None))
        model = st.session_state.get("model")
        if model is not None:
            edits = len(model.edit_log)
            st.caption(
                f"**{len(model.classes)} classes · {model.n_concepts} concepts** · recipe `{model.recipe.get('name', '?')}`"
                + (f" · **{edits} edit{'s' * (edits != 1)} this session**" if edits else ""))
            st.caption(f"Backbone `{model.backbone_spec}`")
            pipe = common.pipeline()
            if pipe is not None:
                st.caption(f"Device `{pipe.backbone.device}` · precision `{pipe.backbone.precision}`"
                           + (" · compiled" if pipe.backbone.compiled else ""))
        with st.expander("What am I looking at?"):
            st.markdown(common.HELP)


def run_page(page) -> None:
    """Draw the sidebar, then the page; pages opened without app.py (a deep link Streamlit routes
    straight to the file) draw the sidebar themselves via ``ensure_drawn``."""
    draw()
    _state.drawn = True
    try:
        page.run()
    finally:
        _state.drawn = False


def configure_page() -> None:
    st.set_page_config(page_title="Concept debugger", page_icon=":material/troubleshoot:", layout="wide")


def ensure_drawn() -> None:
    if not getattr(_state, "drawn", False):
        configure_page()
        draw()


def open_page(title: str, caption: str | None = None):
    """Every page's first lines: the sidebar (if app.py has not drawn it), the title, and the
    session's pipeline — or the reason there is none, and the page stops."""
    ensure_drawn()
    st.title(title)
    if caption:
        st.caption(caption)
    pipe = common.pipeline()
    if pipe is None:
        st.stop()
    return pipe
