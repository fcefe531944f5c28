"""Model overview: which bundle is loaded, what it knows, how well it does."""
from pathlib import Path

import pandas as pd
import streamlit as st

from cbm_core import BundleError, load_bundle

DEMO_BUNDLE = Path(__file__).resolve().parent.parent / "assets" / "demo_bundle"


@st.cache_resource(show_spinner="Loading bundle…")
def _load(path: str):
    return load_bundle(path)


st.title("Model overview")
path = st.sidebar.text_input("Bundle (folder or .zip)", value=str(DEMO_BUNDLE) if DEMO_BUNDLE.exists() else "")
if not path:
    st.info("No bundle loaded yet. Build one with `python -m cbm_core build ...` and enter its path in the sidebar.")
    st.stop()
try:
    model = _load(path)
except BundleError as exc:
    st.error(str(exc))
    st.stop()

sparsity = model.sparsity()
cols = st.columns(4)
cols[0].metric("Classes", len(model.classes))
cols[1].metric("Concepts", model.n_concepts)
cols[2].metric("Concepts per class (NEC)", f"{sparsity['nec']:.1f}")
cols[3].metric("Validation accuracy", f"{model.metrics.get('val_accuracy', float('nan')):.1%}")
st.caption(f"Backbone `{model.backbone_spec}` · recipe `{model.recipe.get('name', '?')}`")
st.subheader("Concepts")
st.dataframe(pd.DataFrame(model.concepts.to_records()), hide_index=True, use_container_width=True)
if model.edit_log:
    st.subheader("Edit log")
    st.dataframe(pd.DataFrame(model.edit_log), hide_index=True)
