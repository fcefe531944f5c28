"""What the app and the tests need from the demo, without importing its training scripts:
where the shipped bundle, features and sample images live, and a loader for the features."""
from __future__ import annotations

import json

import torch

from ..backbone import ASSETS_DIR

DEMO_BUNDLE = ASSETS_DIR / "demo_bundle"
DEMO_FEATURES = ASSETS_DIR / "toybirds_features.safetensors"
SAMPLES_DIR = ASSETS_DIR / "samples"


def tower_record(spec: str = "demo") -> dict:
    """A tower's training record (its ``training.json``, without the per-step history), which every measurement
    of the demo stores beside its numbers, so a record can be checked against the tower it claims to measure.
    ``spec``: ``demo`` or ``local-dir:FOLDER``."""
    from pathlib import Path

    from ..backbone import SPEC_ALIASES

    path = Path(SPEC_ALIASES.get(spec, spec).removeprefix("local-dir:")) / "training.json"
    info = json.loads(path.read_text()) if path.exists() else {}
    info.pop("history", None)
    return info


def load_demo_features(split: str = "val"):
    """The shipped validation / test features of the demo as a ``FeatureSet`` (no re-encoding)."""
    return read_split_features(DEMO_FEATURES, split)


def read_split_features(path, split: str):
    """The 'val' or 'test' split of a shipped features file (``{split}.embeddings``, ``.labels``,
    ``.groups``, ``.concept_labels``; group names in its metadata) as a ``FeatureSet``."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from ..data.features import FeatureSet

    if split not in ("val", "test"):
        raise ValueError(f"The demo ships features for the 'val' and 'test' splits, not '{split}'.")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    t = load_file(str(path))
    group_names = json.loads(meta["group_names"])
    n = len(t[f"{split}.labels"])
    return FeatureSet(t[f"{split}.embeddings"], t[f"{split}.labels"], torch.arange(n),
                      groups=tuple(group_names[i] for i in t[f"{split}.groups"].tolist()),
                      concept_labels=t[f"{split}.concept_labels"].float())

# Inputs of the recipes that need more than a concept list (LaBo's candidate sentences per
# class; DN-CBM's vocabulary for naming what its autoencoder finds), written for Toy Birds.
TOYBIRDS_POOL = ASSETS_DIR / "toybirds_pool.tsv"
TOYBIRDS_VOCABULARY = ASSETS_DIR / "toybirds_vocabulary.txt"
