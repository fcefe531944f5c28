"""Evaluate: how accurate, how sparse, which concepts it uses, and what cannot be told apart."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from cbm_core import confusion_matrix, cooccurrence_warnings, evaluate, random_concept_baseline
from cbm_core.demo.paths import load_demo_features
from ui import charts, common, sidebar
from ui.data_source import evaluation_features

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

left, right = st.columns(2)
with left:
    per_class = sorted(m.per_class.items(), key=lambda kv: kv[1])
    frame = pd.DataFrame({"class": [k for k, _ in per_class][::-1], "probability": [v for _, v in per_class][::-1]})
    st.plotly_chart(charts.probabilities(frame, "Accuracy per class"), width="stretch")
    if m.per_group:
        st.dataframe({"group": list(m.per_group), "accuracy": [f"{v:.1%}" for v in m.per_group.values()]},
                     hide_index=True, width="stretch")
with right:
    cm = confusion_matrix(model, feats.embeddings, feats.labels)
    st.plotly_chart(charts.heatmap(cm.numpy(), list(model.classes), list(model.classes), "Confusion (rows: truth)",
                                   colorscale="Blues", zmid=None, fmt="d"), width="stretch")

st.subheader("Which concepts each class uses")
used = [k for k in range(model.n_concepts) if bool((model.weight[:, k] != 0).any())]
st.plotly_chart(charts.heatmap(model.weight[:, used].numpy(), [model.concepts.names[k] for k in used], list(model.classes),
                               "Head weights (blue: evidence for, red: against)"), width="stretch")

st.subheader("Concepts the model cannot tell apart")
threshold = st.slider("Correlation above", 0.80, 0.99, 0.95, 0.01, key="cooc_threshold")
warnings = cooccurrence_warnings(model, feats.embeddings, threshold)
if warnings.empty:
    st.success(f"No pair of concepts is correlated above {threshold:.2f} on these images.")
else:
    st.warning(f"{len(warnings)} pairs always fire together: their weights are interchangeable, and switching one "
               "off may not mean what you think.")
    st.dataframe(warnings, hide_index=True, width="stretch")

st.subheader("Do the named concepts beat random directions?")
if common.is_demo():
    st.caption("A model with the same recipe, λ and number of concepts, but random directions instead of named "
               "concepts, trained on the validation split and tested on the test split.")
    if st.button("Fit the random-concept baseline"):
        val, test = load_demo_features("val"), load_demo_features("test")
        with st.spinner("Fitting…"):
            base = random_concept_baseline(model, val.embeddings, val.labels, test.embeddings, test.labels)
        c = st.columns(2)
        c[0].metric("Random concepts", f"{base['random_accuracy']:.1%}", help=f"NEC {base['random_nec']:.1f}")
        c[1].metric("Named concepts", f"{base['model_accuracy']:.1%}",
                    f"{(base['model_accuracy'] - base['random_accuracy']) * 100:+.1f} pts")
else:
    st.caption("Available from the CLI and Python (`random_concept_baseline`) for your own data.")
