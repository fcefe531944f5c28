"""Picking the images a page evaluates on: the demo's shipped features, the data this session's build
was fitted on, or a dataset on disk."""
from __future__ import annotations

import streamlit as st

from cbm_core import CBMError, ImageDataset, extract_features
from cbm_core.data.features import in_model_classes
from cbm_core.demo.paths import load_demo_features
from ui import common

DEMO_VAL, DEMO_TEST = "Toy Birds validation split", "Toy Birds test split"
DISK = "A dataset on disk"


@st.cache_resource(show_spinner=False, max_entries=4)
def _dataset_features(spec: str, device, precision, path: str, split: str | None, _progress=None):
    backbone = common.cached_backbone(spec, device, precision)
    ds = ImageDataset.from_csv(path, split=split or None) if path.lower().endswith(".csv") else ImageDataset.from_folder(path)
    return ds.classes, extract_features(backbone, ds, progress=_progress)


@st.cache_resource(show_spinner=False)
def demo_features(split: str):
    """The demo's shipped features, read once per process and shared (read-only) by every session:
    the same object on every run, so pages can cache what they compute from it."""
    return load_demo_features(split)


def _build_label(split: str, feats) -> str:
    return f"Its build's {split} data ({len(feats.labels)} images)"


def sources(model) -> dict[str, object]:
    """label -> FeatureSet (or a loader of one) for every labelled set ``model`` can be measured on
    without the user typing a path, in the order offered."""
    options: dict[str, object] = {}
    for split, feats in common.build_features(model).items():
        options[_build_label(split, feats)] = feats
    if common.is_toy_birds(model):
        options[DEMO_VAL] = lambda: demo_features("val")
        options[DEMO_TEST] = lambda: demo_features("test")
    return options


def evaluation_features(key: str, default_split: str = "val"):
    """Let the user choose evaluation data; returns a FeatureSet or None (with the reason shown).

    default_split: ``val`` (Edit: judge an edit on held-out data) or ``test`` (Evaluate). A model built
    in this session offers the data it was built on, so it can be edited and evaluated at once."""
    model = st.session_state["model"]
    known = sources(model)
    options = list(known) + [DISK]
    preferred = DEMO_TEST if default_split == "test" else DEMO_VAL
    built_val = next((label for label in known if label.startswith("Its build's validation")), None)
    default = preferred if preferred in known else built_val or options[0]
    choice = st.radio("Evaluate on", options, horizontal=True, key=f"{key}_source", index=options.index(default))
    if choice != DISK:
        feats = known[choice]
        return feats() if callable(feats) else feats
    cols = st.columns([4, 1])
    path = cols[0].text_input("Folder of class sub-folders, or a CSV manifest", key=f"{key}_path")
    split = cols[1].text_input("CSV split", key=f"{key}_split", placeholder="val")
    if not path:
        st.info("Enter the path of labelled images to measure the model on.")
        return None
    bar = st.progress(0.0, text="Encoding images (cached after the first time)…")
    try:
        classes, feats = _dataset_features(model.backbone_spec, st.session_state.get("device"),
                                           st.session_state.get("precision"), path, split,
                                           _progress=lambda d, t: bar.progress(d / t, text=f"Encoding images {d}/{t}"))
    except CBMError as exc:
        bar.empty()
        st.error(str(exc))
        return None
    bar.empty()
    try:
        feats = in_model_classes(feats, classes, model.classes)  # matched by name: any order, a class may be absent
    except CBMError as exc:
        st.error(str(exc))
        return None
    if feats.skipped:
        st.warning(f"{len(feats.skipped)} unreadable images were skipped, e.g. {feats.skipped[0][0]}: {feats.skipped[0][1]}")
    return feats


def baseline_splits(model):
    """(fit on, test on, in words) for the random-concept baseline, or None when no labelled data
    is at hand without a path: the demo's validation -> test splits, or a build's training -> validation."""
    if common.is_toy_birds(model):
        return demo_features("val"), demo_features("test"), "trained on the validation split and tested on the test split"
    built = common.build_features(model)
    if "training" in built and "validation" in built:
        return built["training"], built["validation"], "trained on its build's training data and tested on its validation data"
    return None
