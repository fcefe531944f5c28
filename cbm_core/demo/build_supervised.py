"""Build the concept-supervised demo: Toy Birds' concept labels + the demo model + the supervised recipe,
and the features of the shifted Toy Birds splits.

    python -m cbm_core.demo.build_supervised      # writes assets/demo_supervised_bundle and
                                                  # assets/toybirds_shifted_features.safetensors

The bundle is what the dashboard's expert questions (test-time intervention), propagation and the
"Adapt to new data" flow run on out of the box; the shifted features let the app adapt and measure
without encoding a single image. Numbers about both are in docs/INTERVENTIONS.md
(``python -m cbm_core.demo.interventions_report``).
"""
from __future__ import annotations

import argparse
import json

import torch
from safetensors.torch import save_file

from ..backbone import load_backbone
from ..analysis.evaluation import evaluate
from ..recipes.supervised import SupervisedCBM
from .shifted import SHIFTED_FEATURES, SUPERVISED_BUNDLE, shifted_features
from .splits import SPLIT_SIZES, toybirds_features
from .world import CONCEPTS, SPECIES_NAMES

SHIPPED_SHIFTED = {"val": 800, "test": 1600}  # the val pool: 100 birds per species to draw few-shot sets from


def fit_supervised(train, val, **params) -> SupervisedCBM:
    """The supervised recipe on Toy Birds features (``FeatureSet`` with concept labels), calibrated and
    measured on the validation split's concept labels."""
    return SupervisedCBM(classes=SPECIES_NAMES, backbone_spec="demo", concept_names=tuple(CONCEPTS), **params).fit(
        train.embeddings, train.labels, val_features=val.embeddings, val_labels=val.labels,
        concept_labels=train.concept_labels, val_concept_labels=val.concept_labels)


def build(seed: int = 0, **params) -> dict:
    backbone = load_backbone("demo", device="cpu")
    splits = {s: toybirds_features(backbone, s, seed=seed) for s in SPLIT_SIZES}
    model = fit_supervised(splits["train"], splits["val"], **params).model_
    val = evaluate(model, splits["val"].embeddings, splits["val"].labels, splits["val"].groups)
    test = evaluate(model, splits["test"].embeddings, splits["test"].labels, splits["test"].groups)
    model = model.with_changes(metrics={**model.metrics, "val_accuracy": val.accuracy, "val_worst_group": val.worst_group,
                                        "test_accuracy": test.accuracy, "test_worst_group": test.worst_group,
                                        **model.sparsity(), "n_train": len(splits["train"].labels),
                                        "n_val": len(splits["val"].labels)})
    model.save(SUPERVISED_BUNDLE, overwrite=True)
    tensors, groups = {}, set()
    for split, n in SHIPPED_SHIFTED.items():
        feats = shifted_features(backbone, split, seed=seed).subset(torch.arange(n))
        groups |= set(feats.groups)
        tensors[split] = feats
    group_names = sorted(groups)
    out = {}
    for split, feats in tensors.items():
        out.update({f"{split}.embeddings": feats.embeddings.contiguous(), f"{split}.labels": feats.labels,
                    f"{split}.groups": torch.tensor([group_names.index(g) for g in feats.groups]),
                    f"{split}.concept_labels": feats.concept_labels.to(torch.uint8)})
    save_file(out, str(SHIFTED_FEATURES), metadata={"group_names": json.dumps(group_names), "shift": "stain",
                                                    "concepts": json.dumps(list(CONCEPTS)), "seed": str(seed)})
    return {"bundle": str(SUPERVISED_BUNDLE), "val_accuracy": val.accuracy, "test_accuracy": test.accuracy,
            "concept_auroc_mean": model.metrics["concept_auroc_mean"], **model.sparsity()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(json.dumps(build(args.seed), indent=2))


if __name__ == "__main__":
    main()
