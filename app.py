"""Concept debugger — the dashboard's entry point: `streamlit run app.py`.

Declares the pages once (st.navigation) and draws the sidebar every page shares: which bundle
is loaded, on which backbone / device / precision, and a short "what am I looking at".
"""
import tempfile
from pathlib import Path

import streamlit as st

from ui import common

st.set_page_config(page_title="Concept debugger", page_icon=":material/troubleshoot:", layout="wide")

PAGES = [
    st.Page("pages/inspect.py", title="Inspect", icon=":material/image_search:", default=True),
    st.Page("pages/intervene.py", title="Intervene", icon=":material/tune:"),
    st.Page("pages/edit.py", title="Edit model", icon=":material/content_cut:"),
    st.Page("pages/evaluate.py", title="Evaluate", icon=":material/monitoring:"),
    st.Page("pages/build.py", title="Build", icon=":material/construction:"),
]
page = st.navigation(PAGES)

common.ensure_session()
with st.sidebar:
    st.markdown("### Concept debugger")
    choices = common.bundle_choices()
    current = st.session_state.get("bundle_path")
    labels = list(choices)
    index = next((i for i, label in enumerate(labels) if choices[label] == current), 0)
    st.selectbox("Model bundle", labels, index=index, key="bundle_choice", help="Bundles in ./models appear here too.",
                 on_change=lambda: common.open_bundle(choices[st.session_state["bundle_choice"]]))
    with st.expander("Open another bundle"):
        path = st.text_input("Folder or .zip path", key="bundle_path_input")
        if path and st.button("Open bundle", key="open_path"):
            common.open_bundle(path)
        upload = st.file_uploader("…or upload a bundle .zip", type=["zip"], key="bundle_upload")
        if upload is not None:
            target = Path(tempfile.gettempdir()) / f"cbm_upload_{upload.file_id}.zip"
            target.write_bytes(upload.getvalue())
            common.open_bundle(str(target))
    if st.session_state.get("bundle_error"):
        st.error(st.session_state["bundle_error"])
    model = st.session_state.get("model")
    if model is not None:
        edits = len(model.edit_log)
        st.caption(
            f"**{len(model.classes)} classes · {model.n_concepts} concepts** · recipe `{model.recipe.get('name', '?')}`"
            + (f" · **{edits} edit{'s' * (edits != 1)} this session**" if edits else ""))
        st.caption(f"Backbone `{model.backbone_spec}`")
        pipe = common.pipeline()
        if pipe is not None:
            st.caption(f"Device `{pipe.backbone.device}` · precision `{pipe.backbone.precision}`")
    with st.expander("What am I looking at?"):
        st.markdown(common.HELP)

page.run()
