"""Edit the model for every image: prune concepts, adjust weights — see the impact before applying."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from cbm_core import BundleError, CBMError, compare, describe_edit, prune_concepts, set_weight
from ui import adapt_panel, common, report_button, sidebar
from ui.data_source import evaluation_features

pipe = sidebar.open_page("Edit the model",
                         "Global edits change the model for every image. Preview their effect on validation data — "
                         "overall, per class and on the worst group — then apply them to this session's model and save a new bundle.")
model = st.session_state["model"]
feats = evaluation_features("edit")
state = st.session_state


def apply_edit(proposal) -> None:
    """Runs before the page re-runs: the edited model replaces the session's, and the proposal is
    cleared, so the page never shows an applied edit as still 'proposed'."""
    state["model"] = proposal.model
    state["prune_concepts"] = []
    state["prune_scope"] = []
    state["edit_applied"] = describe_edit(model, proposal.model)


st.subheader("1 · Propose an edit")
kind = st.radio("Edit", ["Prune concepts", "Adjust one weight"], horizontal=True, key="edit_kind")
try:
    if kind == "Prune concepts":
        if "prune_concepts" not in state:
            # On the demo, suggest the spurious background concepts, unless they are pruned already.
            background = [c for c in model.concepts.names if "background" in c] if common.is_toy_birds(model) else []
            still_used = background and describe_edit(model, prune_concepts(model, background).model).changes_anything
            state["prune_concepts"] = background if still_used else []
        cols = st.columns([3, 2])
        # wrap=True: chips wrap onto new rows instead of scrolling out of sight in a column.
        concepts = cols[0].multiselect("Concepts to prune", list(model.concepts.names), key="prune_concepts", wrap=True,
                                       help="A pruned concept no longer counts towards the chosen classes.")
        scope = cols[1].multiselect("For classes (empty = all classes)", list(model.classes), key="prune_scope",
                                    wrap=True)
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

summary = describe_edit(model, proposal.model) if proposal is not None else None
applied = state.pop("edit_applied", None)
if applied is not None:
    st.success(f"Edit applied: {str(applied)[0].lower()}{str(applied)[1:]} The Inspect and Intervene pages now use "
               "the edited model; the log below lists it.")

st.subheader("2 · Preview the impact")
if proposal is None:
    st.info("Choose concepts to prune (or change a weight) to see what the edit would do.")
elif not summary.changes_anything:
    st.info(str(summary))
else:
    idle = [c for c in (concepts if kind == "Prune concepts" else []) if c not in summary.concepts]
    st.caption(str(summary) + (f" ({', '.join(idle)} carr{'ies' if len(idle) == 1 else 'y'} no weight there already.)"
                               if idle else ""))
    if feats is None:
        st.warning("No evaluation data: the edit can still be applied, but its impact is unknown.")
    else:
        table = compare(model, proposal.model, feats.embeddings, feats.labels, feats.groups)
        head = table.iloc[: 2 if feats.groups else 1]
        cols = st.columns(len(head))
        for col, (_, row) in zip(cols, head.iterrows()):
            col.metric(row.metric.capitalize(), f"{row.after:.1%}", f"{row.change * 100:+.1f} pts",
                       delta_color="normal" if abs(row.change) >= 0.0005 else "off")
        # Percentages for levels, percentage points for changes (as in the metrics above).
        st.dataframe(table.style.format({"before": "{:.1%}", "after": "{:.1%}", "change": lambda v: f"{v * 100:+.1f} pts"},
                                        na_rep="–"),
                     hide_index=True, width="stretch", height="content")
st.button("Apply this edit to the session's model", type="primary", on_click=apply_edit, args=(proposal,),
          disabled=summary is None or not summary.changes_anything,
          help="Replaces this session's model with the edited one (the saved bundle is not touched until you save).")

st.subheader("Or: adapt to new data")
adapt_panel.adapt_to_new_data(model, apply_edit)

st.subheader("3 · Edit log and saving")
def log_row(entry: dict) -> dict:
    """One edit-log entry as a table row a person reads (the full entry, metrics included, is in the bundle)."""
    if entry.get("op") == "set_weight":
        what, concepts, classes = f"weight {entry['old']:+.3f} → {entry['new']:+.3f}", entry["concept"], entry["class_name"]
    elif entry.get("op") == "adapt":
        what, classes = f"adapt (from {entry.get('n_images', '?')} images)", "all"
        concepts = ", ".join([f"mask {c}" for c in entry.get("mask", [])]
                             + [f"{c} ×{f:g}" for c, f in entry.get("amplify", {}).items()])
    else:
        what = "prune"
        concepts = ", ".join(entry.get("concepts", []))
        classes = entry.get("classes", "all")
        classes = ", ".join(classes) if isinstance(classes, list) else classes
    return {"edit": what, "concepts": concepts, "classes": classes, "when (UTC)": str(entry.get("time", "")).replace("T", " ")[:19]}


if model.edit_log:
    st.dataframe([log_row(e) for e in model.edit_log], width="stretch", height="content", hide_index=True)
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

# Share: the model card, measured on the data chosen above, each edit since the bundle was opened replayed on it.
report_button.model_card_section(model, key="edit_report", evaluation=feats, evaluation_name=report_button.data_label("edit"),
                                 base=report_button.session_base(model))
