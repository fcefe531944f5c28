"""Evaluate: how accurate, how sparse, which concepts it uses, and what cannot be told apart."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from cbm_core import baseline_verdict, confusion_matrix, cooccurrence_warnings, evaluate, random_concept_baseline
from ui import charts, sidebar, tti_panel
from ui.correlation_panel import correlation_panel
from ui.data_source import baseline_splits, evaluation_features
from ui import reliability_panel

pipe = sidebar.open_page("Evaluate")
model = st.session_state["model"]
feats = evaluation_features("evaluate", default_split="test")
if feats is None:
    st.stop()

m = evaluate(model, feats.embeddings, feats.labels, feats.groups)
sp = model.sparsity()
cols = st.columns(5)
cols[0].metric("Accuracy", f"{m.accuracy:.1%}")
cols[1].metric("Worst-group accuracy", "–" if m.worst_group is None else f"{m.worst_group:.1%}",
               help="The lowest accuracy over the groups in the data (e.g. waterbirds on land).")
cols[2].metric("Concepts per class (NEC)", f"{sp['nec']:.1f}")
cols[3].metric("Non-zero weights", f"{sp['nonzero_fraction']:.0%}")
cols[4].metric("Concepts used", f"{sp['concepts_used']} / {model.n_concepts}")
reliability_panel.audit_badge(model)  # does it really use its concepts? (the audit is at the bottom)

left, right = st.columns(2)
with left:
    per_class = sorted(m.per_class.items(), key=lambda kv: kv[1])
    frame = pd.DataFrame({"class": [k for k, _ in per_class][::-1], "probability": [v for _, v in per_class][::-1]})
    st.plotly_chart(charts.probabilities(frame, "Accuracy per class"), width="stretch")
with right:
    if m.per_group:
        st.markdown("**Accuracy per group**")
        st.dataframe({"group": list(m.per_group), "accuracy": [f"{v:.1%}" for v in m.per_group.values()]},
                     hide_index=True, width="stretch")
# Full width: eight class names under eight columns need the room.
cm = confusion_matrix(model, feats.embeddings, feats.labels)
st.plotly_chart(charts.heatmap(cm.numpy(), list(model.classes), list(model.classes), "Confusion: images per cell",
                               colorscale="Blues", zmid=None, fmt="d", x_title="predicted class", y_title="true class",
                               show_values=True, hide_zeros=True), width="stretch")

st.subheader("Which concepts each class uses")
used = [k for k in range(model.n_concepts) if bool((model.weight[:, k] != 0).any())]
st.plotly_chart(charts.heatmap(model.weight[:, used].T.numpy(), list(model.classes), [model.concepts.names[k] for k in used],
                               "Head weights: blue, the concept's presence is evidence for the class; red, against "
                               "(on the standardised score)", x_title="class", show_values=True, hide_zeros=True,
                               fmt=".2f"), width="stretch")
st.caption(f"Only the {len(used)} concepts with a non-zero weight for some class are shown; empty cells are zero.")
tti_panel.evaluate_section(model, feats)  # concept-supervised models: concept AUROC, intervention curves, co-occurrence


LOWEST_THRESHOLD = 0.80


def correlated_pairs():
    """Every pair above the slider's lowest threshold, computed once per model and data: a higher
    threshold keeps fewer of the same rows, so the browser filters this table as the slider moves."""
    cached = st.session_state.get("cooccurrence")
    if cached is None or cached[0] is not model or cached[1] is not feats:
        cached = (model, feats, cooccurrence_warnings(model, feats.embeddings, LOWEST_THRESHOLD))
        st.session_state["cooccurrence"] = cached
    return cached[2]


st.subheader("Concepts the model cannot tell apart")
correlation_panel(correlated_pairs(), LOWEST_THRESHOLD, 0.95, key="correlated_pairs")

st.subheader("Do the named concepts beat random directions?")
splits = baseline_splits(model)
if splits is None:
    st.caption("Needs labelled data to fit on and to test on: available here for the demo and for a model built in this "
               "session; for your own data, from Python (`random_concept_baseline`).")
else:
    fit_on, test_on, how = splits
    st.caption(f"A model with the same recipe, λ and number of concepts, but random directions in the embedding instead "
               f"of named concepts, {how}. If it does about as well, the accuracy says nothing about the concepts.")
    if st.button("Fit the random-concept baseline"):
        with st.spinner("Fitting…"):
            st.session_state["random_baseline"] = (model, random_concept_baseline(
                model, fit_on.embeddings, fit_on.labels, test_on.embeddings, test_on.labels))
    fitted_for, base = st.session_state.get("random_baseline", (None, None))
    if fitted_for is model:  # kept while the model is unchanged; an edit makes it stale
        c = st.columns(2)
        c[0].metric("Random concepts", f"{base['random_accuracy']:.1%}", help=f"NEC {base['random_nec']:.1f}")
        c[1].metric("Named concepts", f"{base['model_accuracy']:.1%}",
                    f"{(base['model_accuracy'] - base['random_accuracy']) * 100:+.1f} pts")
        st.info(baseline_verdict(base["model_accuracy"], base["random_accuracy"]))

reliability_panel.evaluate_section(pipe, model, feats)  # importance, existence, location; names; audit
