"""Edit the model for every image: prune concepts, adjust weights — see the impact before applying."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from cbm_core import BundleError, CBMError, compare, prune_concepts, set_weight
from ui import common, sidebar
from ui.data_source import evaluation_features

pipe = sidebar.open_page("Edit the model",
                         "Global edits change the model for every image. Preview their effect on validation data — "
                         "overall, per class and on the worst group — then apply them to this session's model and save a new bundle.")
model = st.session_state["model"]
feats = evaluation_features("edit")

st.subheader("1 · Propose an edit")
kind = st.radio("Edit", ["Prune concepts", "Adjust one weight"], horizontal=True, key="edit_kind")
try:
    if kind == "Prune concepts":
        cols = st.columns([3, 2])
        suggested = [c for c in model.concepts.names if "background" in c] if common.is_demo() else []
        concepts = cols[0].multiselect("Concepts to prune", list(model.concepts.names), default=suggested,
                                       key="prune_concepts",
                                       help="A pruned concept no longer counts towards the chosen classes.")
        scope = cols[1].multiselect("For classes (empty = all classes)", list(model.classes), key="prune_scope")
        proposal = prune_concepts(model, concepts, scope or None) if concepts else None
    else:
        cols = st.columns(3)
        concept = cols[0].selectbox("Concept", list(model.concepts.names), key="w_concept")
        cls = cols[1].selectbox("Class", list(model.classes), key="w_class")
        current = float(model.weight[model.class_index(cls), model.concepts.index(concept)])
        value = cols[2].number_input(f"Weight (now {current:+.3f})", value=current, step=0.1, format="%.3f",
                                     key=f"w_value_{concept}_{cls}")
        proposal = set_weight(model, concept, cls, value) if value != current else None
except CBMError as exc:
    st.error(str(exc))
    proposal = None

st.subheader("2 · Preview the impact")
if proposal is None:
    st.info("Choose concepts to prune (or change a weight) to see what the edit would do.")
elif feats is None:
    st.warning("No evaluation data: the edit can still be applied, but its impact is unknown.")
else:
    table = compare(model, proposal.model, feats.embeddings, feats.labels, feats.groups)
    head = table.iloc[: 2 if feats.groups else 1]
    cols = st.columns(len(head))
    for col, (_, row) in zip(cols, head.iterrows()):
        col.metric(row.metric.capitalize(), f"{row.after:.1%}", f"{row.change * 100:+.1f} pts")
    st.dataframe(table.style.format({"before": "{:.1%}", "after": "{:.1%}", "change": "{:+.1%}"}, na_rep="–"),
                 hide_index=True, width="stretch")
if proposal is not None and st.button("Apply this edit to the session's model", type="primary"):
    st.session_state["model"] = proposal.model
    st.toast("Edit applied. The Inspect and Intervene pages now use the edited model.")
    st.rerun()

st.subheader("3 · Edit log and saving")
if model.edit_log:
    st.dataframe([{k: (", ".join(v) if isinstance(v, list) else v) for k, v in e.items()} for e in model.edit_log],
                 width="stretch")
    cols = st.columns([3, 1, 1])
    target = cols[0].text_input("Save as (a new folder or .zip under ./models, or a full path)",
                                value=f"models/{Path(st.session_state['bundle_path']).stem}-edited", key="save_path")
    if cols[1].button("Save bundle", width="stretch"):
        path = Path(target) if Path(target).is_absolute() else common.ROOT / target
        try:
            model.save(path)
            st.success(f"Saved to {path}. It now appears in the sidebar's bundle list.")
        except BundleError as exc:
            st.error(str(exc))
        except OSError as exc:
            st.error(f"Could not write '{path}': {exc.strerror or exc}.")
    if cols[2].button("Undo all edits", width="stretch"):
        common.reload_bundle()
        st.rerun()
else:
    st.caption("No edits applied yet in this session.")
