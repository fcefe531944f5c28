"""Build a CBM end to end: dataset + backbone + a recipe's inputs -> a fitted, evaluated model.

The CLI's ``build`` and the app's Build page both call ``build_cbm`` with any registered recipe
(``recipes.RECIPES``); it checks every input *before* the slow steps, and long stages report
``progress(stage, fraction)`` so a UI can show bars. Everything is kept on the result (skipped
images, filter reports, the sparsity path, the encoded data) so a failure later loses nothing
done before. With ``stream=True`` a recipe that streams (``Recipe.streams``) trains from the images'
sharded feature store (``python -m cbm_core extract`` writes it) without loading it whole.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .backbone import Backbone
from .core.concepts import ConceptBank, FilterReport, check_templates
from .data.datasets import ImageDataset
from .data.features import FeatureSet, _with_metadata, extract_features, feature_key, require_every_class
from .data.sources import RowsSource
from .errors import DatasetError, RecipeError
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
    # The encoded data the model was fitted and validated on, so every page can keep using it (the
    # training features are None when they were streamed from a store).
    train_features: FeatureSet | None = None
    val_features: FeatureSet | None = None


def _split_holdout(feats: FeatureSet, classes: Sequence[str], fraction: float = 0.2,
                   seed: int = 0) -> tuple[FeatureSet, FeatureSet]:
    """Hold out ``fraction`` of every class (at least one image each) for validation."""
    train, val = _holdout_rows(feats.labels, classes, fraction, seed)
    return feats.subset(train), feats.subset(val)


def _holdout_rows(labels: torch.Tensor, classes: Sequence[str], fraction: float = 0.2,
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(training rows, validation rows), each sorted: ``fraction`` of every class held out."""
    g = torch.Generator().manual_seed(seed)
    train, val = [], []
    for c, name in enumerate(classes):
        rows = (labels == c).nonzero().flatten()
        if len(rows) < 2:
            raise DatasetError(f"Class '{name}' has {len(rows)} readable image{'s' * (len(rows) != 1)}; at least 2 are "
                               f"needed (one to fit, one to validate), or pass a separate validation set.")
        rows = rows[torch.randperm(len(rows), generator=g)]
        n_val = max(1, round(len(rows) * fraction))
        val.append(rows[:n_val])
        train.append(rows[n_val:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def build_cbm(backbone: Backbone, train: ImageDataset, bank: ConceptBank | None = None, *,
              val: ImageDataset | None = None, templates: Sequence[str] = ("{}",), recipe: str = "pcbm",
              candidate_pool: dict[str, Sequence[str]] | None = None, vocabulary: Sequence[str] | None = None,
              dedupe: float | None = None, class_similarity: float | None = None, with_path: bool = False,
              stream: bool = False, progress: Progress | None = None, **params) -> BuildResult:
    """Fit ``recipe`` (any registered name) on ``train``, validating on ``val`` or, when None, on
    20 % of each class held out. ``params`` are the recipe's options (e.g. ``lam=1e-3``); ``bank``,
    ``candidate_pool`` and ``vocabulary`` are given where the recipe needs them (``Recipe.needs``).
    ``dedupe`` / ``class_similarity`` filter a concept list by text similarity first. ``stream``: train
    from the training images' complete feature store without loading it (``Recipe.streams`` recipes;
    validation features are held in memory; the result keeps no training features)."""
    report = lambda stage, frac: progress(stage, frac) if progress else None  # noqa: E731
    cls = get_recipe(recipe)
    params = cls.check_params(params)  # bad options fail now, not after encoding
    if stream and not cls.streams:
        from .recipes import RECIPES

        raise RecipeError(f"Recipe '{cls.name}' loads its training features whole and cannot stream them; the "
                          f"recipes that can: {', '.join(n for n, r in RECIPES.items() if r.streams)}.")
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
    if stream:
        store = _complete_store(backbone, train)
        report("reading the training features' store", 0.0)
        tr_y, tr_kept, skipped = _store_rows(store)
        tr_x, tr_concepts, train_features = store, None, None
        require_every_class(tr_y, train.classes, "training")
        if val is None:
            rows, held = _holdout_rows(tr_y, train.classes)
            va = _with_metadata(train, store.take(held), tr_y[held], tr_kept[held], ())
            tr_x, tr_y = RowsSource(store, rows), tr_y[rows]
    else:
        feats = extract_features(backbone, train, progress=lambda d, t: report("encoding training images", d / t))
        skipped = feats.skipped
        require_every_class(feats.labels, train.classes, "training")
        train_features, va = (feats, None) if val is not None else _split_holdout(feats, train.classes)
        tr_x, tr_y, tr_concepts = train_features.embeddings, train_features.labels, train_features.concept_labels
    if val is not None:
        va = extract_features(backbone, val, progress=lambda d, t: report("encoding validation images", d / t))
        skipped = skipped + va.skipped
        va = _concepts_in_training_order(va, val, train)
    report("preparing the recipe", 0.0)
    est = cls.from_inputs(inputs, **params)
    path = []
    if with_path:
        report("sparsity path", 0.0)
        path = est.path(tr_x, tr_y, va.embeddings, va.labels, progress=lambda f: report("sparsity path", f))
    report(f"fitting {cls.name}", 0.0)
    est.fit(tr_x, tr_y, val_features=va.embeddings, val_labels=va.labels, concept_labels=tr_concepts,
            val_concept_labels=va.concept_labels)
    metrics = evaluate(est.model_, va.embeddings, va.labels, va.groups)
    model = est.model_.with_changes(metrics={
        **est.model_.metrics, "val_accuracy": metrics.accuracy, "val_worst_group": metrics.worst_group,
        **est.model_.sparsity(), "n_train": int(len(tr_y)), "n_val": int(len(va.labels)),
        "skipped_images": len(skipped)})
    report("done", 1.0)
    return BuildResult(model, metrics, removed, skipped, path, train_features, va)


def _concepts_in_training_order(feats: FeatureSet, val, train) -> FeatureSet:
    """Validation concept labels with their columns in the training data's order, matched by name (a CSV's
    columns may come in any order); a ``DatasetError`` names concepts the validation data lacks."""
    import dataclasses

    names, val_names = tuple(getattr(train, "concept_names", ()) or ()), tuple(getattr(val, "concept_names", ()) or ())
    if feats.concept_labels is None or not names or val_names == names:
        return feats
    missing = [n for n in names if n not in val_names]
    if missing:
        raise DatasetError(f"The validation data has no column for the concept{'s' * (len(missing) > 1)} "
                           f"{', '.join(repr(n) for n in missing[:10])}; give it the training data's concept columns.")
    order = [val_names.index(n) for n in names]
    return dataclasses.replace(feats, concept_labels=feats.concept_labels[:, order])


def _complete_store(backbone: Backbone, dataset: ImageDataset):
    """The dataset's complete feature store for this backbone, or a ``DatasetError`` that says how to make one."""
    from .data.store import FeatureStore, StoreError, default_store_root

    root = default_store_root(backbone, dataset)
    how = (f"write it with `python -m cbm_core extract --backbone {backbone.spec}` and this build's --data, --split "
           f"and --precision (a run that stops resumes; damaged shards are redone), or build without streaming")
    try:
        store = FeatureStore.open(root)
    except StoreError as exc:
        raise DatasetError(f"No feature store of these images for this backbone and precision: {exc} {how}.") from None
    if store.key != feature_key(backbone, dataset.fingerprint()) or store.n_records != len(dataset):
        raise DatasetError(f"The feature store at '{root}' holds other images or another backbone's features; {how}.")
    if not store.complete:
        raise DatasetError(f"The feature store at '{root}' is incomplete ({len(store.missing_shards())} of "
                           f"{store.n_shards} shards missing); {how}.")
    return store


def _store_rows(store) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """A store's labels, kept record indices and skipped images, in one pass."""
    from .data.store import StoreError

    labels, kept, skipped = [], [], []
    try:
        for shard in store.iter_shards():  # every shard verified here, before any fitting
            labels.append(shard.labels)
            kept.append(shard.kept)
            skipped += shard.skipped
    except StoreError as exc:
        raise DatasetError(f"The feature store at '{store.root}' cannot be read: {exc} Run the same `python -m "
                           f"cbm_core extract` again (it redoes damaged or missing shards), or build without "
                           f"streaming.") from None
    if not labels or not sum(len(x) for x in labels):
        raise DatasetError(f"The feature store at '{store.root}' holds no readable image.")
    return torch.cat(labels), torch.cat(kept), tuple(skipped)
