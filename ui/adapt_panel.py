"""The Edit page's "Adapt to new data" flow: a few labelled images of a new domain (the demo's shifted
split, a folder or CSV on disk, or uploaded images named by class) -> the proposed masks and
amplifications with their evidence -> target and source accuracy before / after -> apply as an
``adapt`` edit-log entry. The search itself is ``cbm_core.adaptation.propose_adaptation``."""
from __future__ import annotations

import torch
import streamlit as st

from cbm_core import CBMError, ImageError, evaluate, label_from_filename
from cbm_core.analysis.adaptation import AdaptationError, few_shot, propose_adaptation
from cbm_core.demo.shifted import SHIFTED_FEATURES, load_shifted_features
from cbm_core.data.features import in_model_classes
from cbm_core.data.images import printable
from ui import common, data_source
from ui.images import plain

DEMO_SHIFT = "The demo's shifted Toy Birds (a stain-like colour cast, smaller birds)"
DISK = "Labelled images on disk (folder of class sub-folders, or a CSV)"
UPLOAD = "Upload images (each file named after its class)"


@st.cache_resource(show_spinner=False)
def _shifted(split: str):
    return load_shifted_features(split)


def _uploaded(model, files):
    """Embeddings and labels of uploaded images whose file names say their class; the rest reported."""
    pipe = common.pipeline()
    rows, labels, skipped = [], [], []
    for f in files:
        cls = label_from_filename(f.name, model.classes)
        if cls is None:
            skipped.append(f"{printable(f.name)}: its name says no class (or several)")
            continue
        try:
            rows.append(pipe.encode(f.getvalue(), f.name).embedding)
            labels.append(model.classes.index(cls))
        except ImageError as exc:
            skipped.append(str(exc))
    if skipped:
        st.warning(plain("Skipped: " + "; ".join(skipped[:5]) + (" …" if len(skipped) > 5 else "")))
    if not rows:
        return None
    return torch.stack(rows), torch.tensor(labels)


def _target(model):
    """(embeddings, labels, held-out FeatureSet or None) of the new domain's labelled images, or None."""
    options = ([DEMO_SHIFT] if common.is_toy_birds(model) and SHIFTED_FEATURES.exists() else []) + [DISK, UPLOAD]
    choice = st.radio("New data", options, key="adapt_source", horizontal=True)
    if choice == DEMO_SHIFT:
        cols = st.columns([2, 1, 3])
        n = cols[0].select_slider("Labelled images per class", [1, 2, 4, 8, 16], value=4, key="adapt_n")
        seed = cols[1].number_input("Draw", 0, 999, 0, key="adapt_seed", help="Which images are drawn.")
        pool = _shifted("val")
        pick = few_shot(pool.labels, int(n), seed=int(seed))
        cols[2].caption(f"{len(pick)} images drawn from {len(pool.labels)} shifted validation birds; the proposal is "
                        f"then measured on {len(_shifted('test').labels)} shifted test birds it never saw.")
        return pool.embeddings[pick], pool.labels[pick], _shifted("test")
    if choice == DISK:
        cols = st.columns([4, 1])
        path = cols[0].text_input("Folder of class sub-folders, or a CSV manifest", key="adapt_path")
        split = cols[1].text_input("CSV split", key="adapt_split")
        if not path:
            st.info("Enter the path of a few labelled images of the new domain (about 4 per class is enough).")
            return None
        try:
            classes, feats = data_source._dataset_features(model.backbone_spec, st.session_state.get("device"),
                                                           st.session_state.get("precision"), path, split)
        except CBMError as exc:
            st.error(str(exc))
            return None
        try:
            feats = in_model_classes(feats, classes, model.classes)  # matched by name: any order
        except CBMError as exc:
            st.error(str(exc))
            return None
        return feats.embeddings, feats.labels, None
    files = st.file_uploader("A few images per class; each file's name must say its class (e.g. "
                             f"'{model.classes[0].replace(' ', '_')}_1.png')", accept_multiple_files=True,
                             type=["png", "jpg", "jpeg", "webp", "bmp"], key="adapt_upload")
    if not files:
        return None
    got = _uploaded(model, files)
    return (*got, None) if got is not None else None


def _source():
    """Validation data of the model's own domain, so no edit is proposed that costs accuracy there."""
    model = st.session_state["model"]
    known = data_source.sources(model)
    label = next((k for k in known if k in (data_source.DEMO_VAL,) or k.startswith("Its build's validation")), None)
    if label is None:
        return None, "none (no validation data of the original domain at hand: edits are not checked against it)"
    feats = known[label]
    return (feats() if callable(feats) else feats), label


def adapt_to_new_data(model, apply) -> None:
    """The whole flow; ``apply(edit_result)`` makes the adapted model the session's."""
    st.caption("A model moved to another site, stain or camera sees some concepts wrongly: lit up where they are not "
               "(mask them) or too faint where they are (amplify them). From a few labelled images of the new data, "
               "and no training, find which — each with its evidence — and check the original data still works.")
    target = _target(model)
    if target is None:
        return
    x, y, held_out = target
    source, source_label = _source()
    if st.button("Find masks and amplifications", key="adapt_go"):
        try:
            with st.spinner("Searching…"):
                st.session_state["adapt_proposal"] = (model, propose_adaptation(
                    model, x, y, source_embeddings=source.embeddings if source is not None else None,
                    source_labels=source.labels if source is not None else None), held_out)
        except AdaptationError as exc:
            st.error(str(exc))
    kept = st.session_state.get("adapt_proposal")
    if not kept or kept[0] is not model:
        return
    _, proposal, held_out = kept
    if not proposal.edits:
        st.info("Nothing helps on these images without costing accuracy on the original data. Try more images per class.")
        return
    st.markdown("**Proposed:** " + "; ".join(e.describe() for e in proposal.edits) + ".")
    table = proposal.to_frame()
    st.dataframe(table.style.format({"factor": "×{:g}", "effect": "{:+.3f}", "target activation": "{:+.2f}",
                                     "source activation": "{:+.2f}", "log-likelihood gain": "{:+.3f}",
                                     "target accuracy after": "{:.1%}"}, na_rep="–"),
                 hide_index=True, width="stretch", height="content")
    st.caption("*effect*: how the concept, as it shows on the new images, moves them towards (+) or away from (−) their "
               "own class; *activation*: its mean standardised score on the new images and on the original ones.")
    with st.expander("Evidence for every concept"):
        st.dataframe(proposal.candidates_frame().style.format({"effect": "{:+.3f}", "target activation": "{:+.2f}",
                                                               "source activation": "{:+.2f}"}, na_rep="–"),
                     hide_index=True, width="stretch")
    adapted = proposal.apply(model)
    cols = st.columns(3)
    cols[0].metric(f"The {proposal.n_images} labelled images", f"{proposal.target_after:.1%}",
                   f"{(proposal.target_after - proposal.target_before) * 100:+.1f} pts")
    if held_out is not None:
        before = evaluate(model, held_out.embeddings, held_out.labels).accuracy
        after = evaluate(adapted.model, held_out.embeddings, held_out.labels).accuracy
        cols[1].metric("New data it never saw", f"{after:.1%}", f"{(after - before) * 100:+.1f} pts")
    if proposal.source_before is not None:
        cols[2].metric("Original data (validation)", f"{proposal.source_after:.1%}",
                       f"{(proposal.source_after - proposal.source_before) * 100:+.1f} pts",
                       help=f"Checked on: {source_label}.")
    else:
        cols[2].caption(f"Original data: {source_label}.")
    st.button("Apply as an edit", type="primary", key="adapt_apply", on_click=apply, args=(adapted,),
              help="Adds an 'adapt' entry (masks, factors and their evidence) to the edit log; replayable on the bundle.")
