"""Expert questions (test-time intervention) on the Intervene page, and the concept-supervised sections
of the Evaluate page: per-concept AUROC, intervention curves per policy, conditional probabilities.

Every number comes from cbm_core (explain/tti.py, core/propagation.py); an expert's answer is an ordinary
set-to-percentile change pushed into the Intervene page's history, so the live panel, undo and
export treat it like a slider move.
"""
from __future__ import annotations

from typing import Callable

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from cbm_core import CBMError, Intervention
from cbm_core.demo.shifted import SUPERVISED_BUNDLE
from cbm_core.core.propagation import ConceptDependencies, conditional_table
from cbm_core.explain.tti import POLICIES, answers_intervention, has_probabilities, intervention_curve, next_question
from ui import common

POLICY_LABELS = {"expected_change": "expected change of the prediction", "coop": "CooP (uncertainty + influence)",
                 "uncertainty": "most uncertain concept", "random": "random"}
DEFAULT_POLICY = "expected_change"  # the best on shifted Toy Birds (docs/INTERVENTIONS.md)
ANSWER_LABELS = {"present": "Present", "absent": "Absent", "unsure": "Unsure"}


def _dependencies(model):
    try:
        return ConceptDependencies.from_model(model)
    except CBMError:
        return None  # malformed stored dependencies: ask questions without propagation


def offer_supervised_bundle(model) -> None:
    """What a model without concept probabilities gets instead of questions."""
    st.caption("Expert questions (\"is *red crown* in the image? The model gives it p = 0.12.\") need concept "
               "probabilities: a concept-supervised bundle (recipe `supervised`, built from data with 0/1 concept "
               "columns).")
    if common.is_toy_birds(model) and SUPERVISED_BUNDLE.exists():
        st.button("Open the concept-supervised Toy Birds bundle", key="tti_open_supervised",
                  on_click=common.open_bundle, args=(str(SUPERVISED_BUNDLE),))


def section(model, embedding, active: Callable[[], Intervention], push: Callable[[Intervention], None],
            image_key) -> None:
    """The Intervene page's expert questions for a concept-supervised model; for any other, how to get one."""
    if has_probabilities(model):
        st.subheader("Ask the expert")
        expert_questions(model, embedding, active, push, image_key)
    else:
        offer_supervised_bundle(model)


def expert_questions(model, embedding, active: Callable[[], Intervention], push: Callable[[Intervention], None],
                     image_key) -> None:
    """The question section for one image (embedding: (D,)). ``active()`` is the page's current
    intervention, ``push`` adds one to its history; ``image_key`` changes when the image or model does."""
    state = st.session_state
    if state.get("tti_for") != image_key:
        state["tti_for"], state["tti_answers"], state["tti_moved"] = image_key, {}, ()
    answers: dict = state["tti_answers"]
    deps = _dependencies(model)
    cols = st.columns([3, 2])
    policy = cols[0].selectbox("Which concept to ask about next", list(POLICIES), key="tti_policy",
                               index=list(POLICIES).index(DEFAULT_POLICY), format_func=POLICY_LABELS.get,
                               help="Expected change asks the question whose answer is expected to move the "
                                    "prediction most; on shifted Toy Birds it fixes the most images per answer.")
    propagate = cols[1].toggle("Move correlated concepts too", value=deps is not None, disabled=deps is None,
                               key="tti_propagate",
                               help="After an answer, concepts that go with it (learnt from the training labels) move "
                                    "towards what the answer implies." if deps is not None else
                                    "This bundle keeps no concept dependencies.")
    question = next_question(model, embedding, active(), list(answers), policy)
    if question is None:
        st.success("Every concept has been asked about.")
    else:
        st.markdown(f"**Question {len(answers) + 1}.** {question.prompt()}")
        buttons = st.columns(4)
        for col, (reply, label) in zip(buttons, ANSWER_LABELS.items()):
            col.button(label, key=f"tti_{reply}", width="stretch", on_click=_answer,
                       args=(model, embedding, active, push, question.concept, reply, deps if propagate else None))
        buttons[3].button("Start over", key="tti_reset", width="stretch", disabled=not answers,
                          on_click=_reset, args=(active, push))
    if answers:
        now = model.explain_features(embedding.reshape(1, -1), active())
        top = int(now.predicted[0])
        st.caption("Answered: " + "; ".join(f"{c} — {r}" for c, r in answers.items())
                   + f". Prediction now: **{model.classes[top]}** ({float(now.probs[0, top]):.1%}).")
    moved = state.get("tti_moved") or ()
    if moved:
        frame = pd.DataFrame(list(moved), columns=["concept", "before", "after"])
        frame["change"] = frame["after"] - frame["before"]
        st.caption("Moved with the answers (concepts that go with them, by the training labels):")
        st.dataframe(frame.style.format({"before": "{:.2f}", "after": "{:.2f}", "change": "{:+.2f}"}),
                     hide_index=True, width="stretch", height="content")


def _tti_concepts() -> set:
    state = st.session_state
    return set(state.get("tti_answers", {})) | {m[0] for m in state.get("tti_moved", ())}


def _answer(model, embedding, active, push, concept, reply, deps) -> None:
    """Runs before the rerun: the answer (and what it moves) replaces every earlier change the
    questions made, on top of the user's own changes."""
    state = st.session_state
    state["tti_answers"] = {**state["tti_answers"], concept: reply}
    base = active()
    for name in _tti_concepts():
        base = base.without(name)
    outcome = answers_intervention(model, embedding, state["tti_answers"], base=base, dependencies=deps)
    state["tti_moved"] = outcome.moved
    push(outcome.intervention)


def _reset(active, push) -> None:
    base = active()
    for name in _tti_concepts():
        base = base.without(name)
    st.session_state["tti_answers"], st.session_state["tti_moved"] = {}, ()
    push(base)


# -- Evaluate --------------------------------------------------------------------------------------------

def concept_quality(model, feats, concept_labels) -> None:
    """Per-concept AUROC of a concept-supervised model: as stored at build time, and on this data when it
    has concept labels (``concept_labels``: (N, K) in the model's concept order, or None)."""
    from cbm_core.recipes.supervised import concept_report

    stored = model.metrics.get("concept_auroc") or {}
    rows = {"concept": list(model.concepts.names)}
    if stored:
        rows[f"AUROC ({model.metrics.get('concept_metrics_on', 'validation')})"] = [stored.get(n) for n in
                                                                                     model.concepts.names]
    if concept_labels is not None:
        here = concept_report(model.concept_scores(feats.embeddings), concept_labels, model.concepts.names)
        rows["AUROC on this data"] = [here["concept_auroc"][n] for n in model.concepts.names]
        rows["accuracy on this data"] = [here["concept_accuracy"][n] for n in model.concepts.names]
    frame = pd.DataFrame(rows)
    sort_by = frame.columns[-2] if concept_labels is not None else frame.columns[-1]
    frame = frame.sort_values(sort_by, na_position="first").reset_index(drop=True)
    m = model.metrics
    cols = st.columns(3)
    if m.get("concept_auroc_mean") is not None:
        cols[0].metric("Mean concept AUROC", f"{m['concept_auroc_mean']:.3f}",
                       help=f"Measured on {m.get('concept_metrics_on', 'validation data')} when the model was built.")
    if m.get("concept_ece_after") is not None:
        cols[1].metric("Calibration error (ECE)", f"{m['concept_ece_after']:.4f}",
                       f"{m['concept_ece_after'] - m.get('concept_ece_before', m['concept_ece_after']):+.4f} by calibration",
                       delta_color="inverse", help="How far the concept probabilities are from observed frequencies.")
    if concept_labels is not None:
        mean_here = frame["AUROC on this data"].dropna().mean()
        cols[2].metric("Mean concept AUROC on this data", f"{mean_here:.3f}")
    fmt = {c: "{:.3f}" for c in frame.columns if c != "concept"}
    st.dataframe(frame.style.format(fmt, na_rep="–"), hide_index=True, width="stretch", height=280)


def _curves(model, feats, concept_labels, max_answers: int, propagate: bool) -> dict:
    """policy -> accuracy after 0..max_answers answers; kept per (model, data, settings) for the session,
    compared by identity like the page's other per-model caches (an edit makes a new model)."""
    cached = st.session_state.get("tti_curves")
    if cached and cached[0] is model and cached[1] is feats and cached[2] == (max_answers, propagate):
        return cached[3]
    deps = _dependencies(model) if propagate else None
    with st.spinner("Simulating the expert's answers…"):
        out = {policy: list(intervention_curve(model, feats.embeddings, feats.labels, concept_labels, policy,
                                               max_answers=max_answers, dependencies=deps).accuracy)
               for policy in POLICIES}
    st.session_state["tti_curves"] = (model, feats, (max_answers, propagate), out)
    return out


def curves_figure(curves: dict, title: str) -> go.Figure:
    palette = {"expected_change": "#2f6f9f", "coop": "#3a9d8f", "uncertainty": "#d4a017", "random": "#9aa5b1"}
    fig = go.Figure()
    for policy, acc in curves.items():
        fig.add_scatter(x=list(range(len(acc))), y=acc, mode="lines+markers", name=POLICY_LABELS[policy],
                        line=dict(color=palette[policy], dash="dash" if policy == "random" else "solid"),
                        hovertemplate=POLICY_LABELS[policy] + "<br>%{x} answers: %{y:.1%}<extra></extra>")
    fig.update_layout(title=title, xaxis=dict(title="concepts answered by the expert (ground truth)", dtick=1,
                                              gridcolor="#eee"),
                      yaxis=dict(title="accuracy", tickformat=".0%", gridcolor="#eee"), height=360,
                      legend=dict(orientation="h", y=-0.3, x=0.0), plot_bgcolor="white", paper_bgcolor="white",
                      margin=dict(l=10, r=10, t=40, b=10))
    return fig


def intervention_curves(model, feats, concept_labels) -> None:
    """Accuracy after k ground-truth answers, one line per question policy, on this data."""
    cols = st.columns([2, 2, 3])
    max_answers = cols[0].slider("Answers per image", 1, model.n_concepts, min(10, model.n_concepts), key="curve_k")
    deps = _dependencies(model)
    propagate = cols[1].toggle("With propagation", value=False, disabled=deps is None, key="curve_propagate")
    cols[2].caption("The expert answers from the data's concept labels: how fast each way of choosing the next "
                    "question turns the model's mistakes around.")
    curves = _curves(model, feats, concept_labels, max_answers, propagate)
    st.plotly_chart(curves_figure(curves, "Accuracy after k answers" + (" (with propagation)" if propagate else "")),
                    width="stretch")


def conditional_probabilities(model, feats, concept_labels) -> None:
    """p(concept j | concept i = 1 [, class]) from the data's concept labels, with counts."""
    cols = st.columns(2)
    given = cols[0].selectbox("Given this concept is present", list(model.concepts.names), key="cond_given")
    cls = cols[1].selectbox("Within class", ["(all classes)"] + list(model.classes), key="cond_class")
    table = conditional_table(concept_labels, model.concepts.names, given, labels=feats.labels, classes=model.classes,
                              class_name=None if cls == "(all classes)" else cls)
    table = table.rename(columns={"p_given_present": f"p(· | {given})", "p_given_absent": f"p(· | no {given})",
                                  "p_overall": "p(·)", "n_present": f"images with {given}"})
    st.dataframe(table.style.format({c: "{:.2f}" for c in table.columns if c.startswith("p(")} | {"lift": "{:+.2f}"},
                                    na_rep="–"),
                 hide_index=True, width="stretch", height=280)
    st.caption("Counted from this data's concept labels (Laplace-smoothed): *lift* is how much knowing the first "
               "concept raises (or lowers) each other concept's probability. Propagation uses the same kind of "
               "dependency, learnt from the training labels.")


def labels_in_model_order(model, feats):
    """The data's concept labels in the model's concept order, or None when it has none that fit."""
    labels = getattr(feats, "concept_labels", None)
    if labels is None or labels.shape[1] != model.n_concepts:
        return None
    return labels


def evaluate_section(model, feats) -> None:
    """Everything the Evaluate page shows for a concept-supervised model."""
    if not has_probabilities(model):
        return
    labels = labels_in_model_order(model, feats)
    st.subheader("How well each concept is predicted")
    concept_quality(model, feats, labels)
    if labels is None:
        st.caption("This data has no concept labels: intervention curves and conditional probabilities need them.")
        return
    st.subheader("Test-time intervention: accuracy as an expert answers questions")
    intervention_curves(model, feats, labels)
    st.subheader("Which concepts go together")
    conditional_probabilities(model, feats, labels)
