"""Build a CBM end to end: dataset + backbone + a recipe's inputs -> a fitted, evaluated model.

The CLI's ``build`` and the app's Build page both call ``build_cbm`` with any registered recipe
(``recipes.RECIPES``); it checks every input *before* the slow steps, and long stages report
``progress(stage, fraction)`` so a UI can show bars. Everything is kept on the result (skipped
images, filter reports, the sparsity path, the encoded data) so a failure later loses nothing
done before.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .backbone import Backbone
from .core.concepts import ConceptBank, FilterReport, check_templates
from .data.datasets import ImageDataset
from .data.features import FeatureSet, extract_features
from .errors import DatasetError
from .analysis.evaluation import Metrics, evaluate
from .core.model import ConceptBottleneckModel
from .recipes import PathPoint, RecipeInputs, get_recipe

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


def _split_holdout(feats: FeatureSet, classes: Sequence[str], fraction: float = 0.2,
                   seed: int = 0) -> tuple[FeatureSet, FeatureSet]:
    """Hold out ``fraction`` of every class (at least one image each) for validation."""
    g = torch.Generator().manual_seed(seed)
    train, val = [], []
    for c, name in enumerate(classes):
        rows = (feats.labels == c).nonzero().flatten()
        if len(rows) < 2:
            raise DatasetError(f"Class '{name}' has {len(rows)} readable image{'s' * (len(rows) != 1)}; at least 2 are "
                               f"needed (one to fit, one to validate), or pass a separate validation set.")
        rows = rows[torch.randperm(len(rows), generator=g)]
        n_val = max(1, round(len(rows) * fraction))
        val.append(rows[:n_val])
        train.append(rows[n_val:])
    return feats.subset(torch.cat(train).sort().values), feats.subset(torch.cat(val).sort().values)


def _check_classes_present(feats: FeatureSet, classes: Sequence[str], what: str) -> None:
    counts = torch.bincount(feats.labels, minlength=len(classes))
    empty = [classes[c] for c in range(len(classes)) if int(counts[c]) == 0]
    if empty:
        raise DatasetError(f"The {what} images have no readable image of class{'es' * (len(empty) > 1)} "
                           f"{', '.join(repr(c) for c in empty[:10])}; every class needs images to learn from.")


def build_cbm(backbone: Backbone, train: ImageDataset, bank: ConceptBank | None = None, *,
              val: ImageDataset | None = None, templates: Sequence[str] = ("{}",), recipe: str = "pcbm",
              candidate_pool: dict[str, Sequence[str]] | None = None, vocabulary: Sequence[str] | None = None,
              dedupe: float | None = None, class_similarity: float | None = None, with_path: bool = False,
              progress: Progress | None = None, **params) -> BuildResult:
    """Fit ``recipe`` (any registered name) on ``train``, validating on ``val`` or, when None, on
    20 % of each class held out. ``params`` are the recipe's options (e.g. ``lam=1e-3``); ``bank``,
    ``candidate_pool`` and ``vocabulary`` are given where the recipe needs them (``Recipe.needs``).
    ``dedupe`` / ``class_similarity`` filter a concept list by text similarity first."""
    report = lambda stage, frac: progress(stage, frac) if progress else None  # noqa: E731
    cls = get_recipe(recipe)
    params = cls.check_params(params)  # bad options fail now, not after encoding
    templates = check_templates(templates)
    if len(train.classes) < 2:
        raise DatasetError(f"The training data has {len(train.classes)} class; a classifier needs at least 2.")
    if val is not None and tuple(val.classes) != tuple(train.classes):
        raise DatasetError(f"Validation classes {list(val.classes)} differ from training classes {list(train.classes)}.")
    pool = {c: tuple(s) for c, s in candidate_pool.items()} if candidate_pool else None
    inputs = RecipeInputs(classes=tuple(train.classes), backbone_spec=backbone.spec, text=backbone.embed_prompts,
                          templates=tuple(templates), concepts=bank if "concepts" in cls.needs else None,
                          candidate_pool=pool, vocabulary=tuple(vocabulary) if vocabulary else None,
                          embed_dim=backbone.embed_dim, concept_names=tuple(getattr(train, "concept_names", ())) or None)
    inputs.require(cls)
    removed = FilterReport()
    if inputs.concepts is not None and (dedupe is not None or class_similarity is not None):
        report("filtering concepts", 0.0)
        vectors = bank.embed(backbone, templates)
        if dedupe is not None:
            bank, vectors, r = bank.filter_near_duplicates(vectors, dedupe)
            removed = removed + r
        if class_similarity is not None:
            bank, vectors, r = bank.filter_class_similar(vectors, backbone.embed_prompts(train.classes, templates),
                                                         train.classes, class_similarity)
            removed = removed + r
        if len(bank) == 0:
            raise DatasetError("The concept filters removed every concept; loosen them.")
        inputs = RecipeInputs(**{**inputs.__dict__, "concepts": bank})
    feats = extract_features(backbone, train, progress=lambda d, t: report("encoding training images", d / t))
    skipped = feats.skipped
    _check_classes_present(feats, train.classes, "training")
    if val is not None:
        vfeats = extract_features(backbone, val, progress=lambda d, t: report("encoding validation images", d / t))
        skipped = skipped + vfeats.skipped
        tr, va = feats, vfeats
    else:
        tr, va = _split_holdout(feats, train.classes)
    report("preparing the recipe", 0.0)
    est = cls.from_inputs(inputs, **params)
    path = []
    if with_path:
        report("sparsity path", 0.0)
        path = est.path(tr.embeddings, tr.labels, va.embeddings, va.labels,
                        progress=lambda f: report("sparsity path", f))
    report(f"fitting {cls.name}", 0.0)
    est.fit(tr.embeddings, tr.labels, val_features=va.embeddings, val_labels=va.labels,
            concept_labels=tr.concept_labels, val_concept_labels=va.concept_labels)
    metrics = evaluate(est.model_, va.embeddings, va.labels, va.groups)
    model = est.model_.with_changes(metrics={
        **est.model_.metrics, "val_accuracy": metrics.accuracy, "val_worst_group": metrics.worst_group,
        **est.model_.sparsity(), "n_train": int(len(tr.labels)), "n_val": int(len(va.labels)),
        "skipped_images": len(skipped)})
    report("done", 1.0)
    return BuildResult(model, metrics, removed, skipped, path, tr, va)
