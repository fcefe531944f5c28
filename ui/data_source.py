"""Picking the images a page evaluates on: the demo's shipped features, or a dataset on disk."""
from __future__ import annotations

import streamlit as st

from cbm_core import CBMError, ImageDataset, extract_features
from cbm_core.demo.paths import load_demo_features
from ui import common


@st.cache_resource(show_spinner=False, max_entries=4)
def _dataset_features(spec: str, device, precision, path: str, split: str | None, _progress=None):
    backbone = common.cached_backbone(spec, device, precision)
    ds = ImageDataset.from_csv(path, split=split or None) if path.lower().endswith(".csv") else ImageDataset.from_folder(path)
    return ds.classes, extract_features(backbone, ds, progress=_progress)


def evaluation_features(key: str, default_split: str = "val"):
    """Let the user choose evaluation data; returns a FeatureSet or None (with the reason shown)."""
    model = st.session_state["model"]
    options = (["Toy Birds validation split", "Toy Birds test split"] if common.is_demo() else []) + ["A dataset on disk"]
    choice = st.radio("Evaluate on", options, horizontal=True, key=f"{key}_source",
                      index=0 if default_split == "val" or len(options) == 1 else 1)
    if choice.startswith("Toy Birds"):
        return load_demo_features("val" if "validation" in choice else "test")
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
    if tuple(classes) != tuple(model.classes):
        st.error(f"The dataset's classes {list(classes)} differ from the model's {list(model.classes)}.")
        return None
    if feats.skipped:
        st.warning(f"{len(feats.skipped)} unreadable images were skipped, e.g. {feats.skipped[0][0]}: {feats.skipped[0][1]}")
    return feats
