"""Build a CBM end to end: concepts + dataset + backbone -> a fitted, evaluated model.

The CLI's ``build`` and the app's Build page both call ``build_cbm``; long stages report
``progress(stage, fraction)`` so a UI can show bars, and everything is kept on the result
(skipped images, filter reports, the λ path) so a failure later loses nothing done before.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .backbone import Backbone
from .concepts import ConceptBank, FilterReport
from .data import FeatureSet, ImageDataset, extract_features
from .evaluation import Metrics, evaluate
from .errors import DatasetError
from .model import ConceptBottleneckModel
from .recipes import RECIPES
from .recipes.elastic_net import PathPoint

Progress = Callable[[str, float], None]


@dataclass
class BuildResult:
    model: ConceptBottleneckModel
    val_metrics: Metrics
    removed_concepts: FilterReport = field(default_factory=FilterReport)
    skipped_images: tuple[tuple[str, str], ...] = ()
    path: list[PathPoint] = field(default_factory=list)
    # The encoded data the model was fitted and validated on, so every page can keep using it.
    train_features: FeatureSet | None = None
    val_features: FeatureSet | None = None


def _split_holdout(feats: FeatureSet, fraction: float = 0.2, seed: int = 0) -> tuple[FeatureSet, FeatureSet]:
    perm = torch.randperm(len(feats.labels), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(len(perm) * fraction))
    return feats.subset(perm[n_val:]), feats.subset(perm[:n_val])


def build_cbm(backbone: Backbone, train: ImageDataset, bank: ConceptBank, *, val: ImageDataset | None = None,
              templates: Sequence[str] = ("{}",), recipe: str = "pcbm", lam: float = 1e-3, residual: bool = False,
              dedupe: float | None = None, class_similarity: float | None = None, with_path: bool = False,
              progress: Progress | None = None) -> BuildResult:
    """Fit ``recipe`` on ``train`` (20 % held out for validation when ``val`` is None)."""
    report = lambda stage, frac: progress(stage, frac) if progress else None  # noqa: E731
    report("embedding concepts", 0.0)
    vectors = bank.embed(backbone, templates)
    removed = FilterReport()
    if dedupe is not None:
        bank, vectors, r = bank.filter_near_duplicates(vectors, dedupe)
        removed = removed + r
    if class_similarity is not None:
        bank, vectors, r = bank.filter_class_similar(vectors, backbone.embed_prompts(train.classes, templates),
                                                     train.classes, class_similarity)
        removed = removed + r
    feats = extract_features(backbone, train, progress=lambda d, t: report("encoding training images", d / t))
    skipped = feats.skipped
    if val is not None:
        if tuple(val.classes) != tuple(train.classes):
            raise DatasetError(f"Validation classes {list(val.classes)} differ from training classes {list(train.classes)}.")
        vfeats = extract_features(backbone, val, progress=lambda d, t: report("encoding validation images", d / t))
        skipped = skipped + vfeats.skipped
        tr, va = feats, vfeats
    else:
        tr, va = _split_holdout(feats)
    (tr_x, tr_y), (va_x, va_y, va_g) = (tr.embeddings, tr.labels), (va.embeddings, va.labels, va.groups)
    if recipe not in RECIPES:
        raise ValueError(f"Unknown recipe '{recipe}'. Available: {', '.join(RECIPES)}.")
    est = RECIPES[recipe](concepts=bank, concept_vectors=vectors, classes=train.classes, backbone_spec=backbone.spec,
                          templates=templates, lam=lam, residual=residual)
    path = []
    if with_path:
        report("λ path", 0.0)
        path = est.path(tr_x, tr_y, va_x, va_y)
    report("fitting the head", 0.0)
    est.fit(tr_x, tr_y)
    metrics = evaluate(est.model_, va_x, va_y, va_g)
    model = est.model_.with_changes(metrics={
        **est.model_.metrics, "val_accuracy": metrics.accuracy, "val_worst_group": metrics.worst_group,
        **est.model_.sparsity(), "n_train": int(len(tr_y)), "n_val": int(len(va_y)), "skipped_images": len(skipped)})
    report("done", 1.0)
    return BuildResult(model, metrics, removed, skipped, path, tr, va)
