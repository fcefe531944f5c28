"""Recipes compared honestly: one feature cache, one split, matched sparsity.

``compare_recipes`` fits every requested recipe (and the baselines) on the same training
features, then reports for each

- *as fitted* (its own defaults): test accuracy, worst-group accuracy, NEC, % non-zero, fit time;
- *at matched NEC*: the model with at most ``nec`` effective concepts per class, chosen on the
  validation split only — for a recipe with a sparsity knob (λ), the point of its path with the
  best validation accuracy among those at or under the cap, refitted; for a dense head (LaBo,
  Sparse-CBM without λ, CMS), the head truncated to ``nec`` concepts per class and refitted
  (``truncate_to_nec``) — then measured once on test;
- its accuracy-vs-NEC path on validation data, for the curves.

A CBM is only honest at matched sparsity (VLG-CBM): without a cap the same recipes look far
better. Nothing is chosen on the test split.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from ..data.features import FeatureSet
from ..errors import RecipeError
from .evaluation import evaluate
from ..core.model import ConceptBottleneckModel
from ..recipes import PathPoint, RecipeInputs, get_recipe
from ..recipes.elastic_net import truncate_to_nec

DEFAULT_BASELINES = ("linear-probe", "random-concepts", "zero-shot")


@dataclass
class RecipeScore:
    """One recipe's row. ``at_nec`` holds the matched-sparsity numbers (test split); ``path`` the
    validation accuracy against NEC. A recipe that failed has ``error`` and None for its numbers."""

    recipe: str
    title: str
    baseline: bool
    params: dict
    accuracy: float | None
    worst_group: float | None
    nec: float | None
    nonzero_fraction: float | None
    fit_seconds: float
    at_nec: dict = field(default_factory=dict)
    path: list[PathPoint] = field(default_factory=list)
    model: ConceptBottleneckModel | None = field(default=None, repr=False)
    error: str | None = None


@dataclass
class Comparison:
    nec: float
    rows: list[RecipeScore]
    n_train: int
    n_val: int
    n_test: int

    def to_frame(self):
        """One row per recipe: as fitted, and at matched NEC (the columns that matter)."""
        import pandas as pd

        return pd.DataFrame([{
            "recipe": r.recipe, "baseline": r.baseline,
            f"accuracy at NEC≤{self.nec:g}": r.at_nec.get("accuracy"),
            f"worst group at NEC≤{self.nec:g}": r.at_nec.get("worst_group"),
            "NEC (matched)": r.at_nec.get("nec"),
            "accuracy (as fitted)": r.accuracy, "worst group (as fitted)": r.worst_group,
            "NEC (as fitted)": r.nec, "non-zero (as fitted)": r.nonzero_fraction,
            "fit seconds": r.fit_seconds, "error": r.error} for r in self.rows])

    def to_dict(self) -> dict:
        return {"nec": self.nec, "n_train": self.n_train, "n_val": self.n_val, "n_test": self.n_test,
                "rows": [{k: v for k, v in r.__dict__.items() if k != "model"} | {
                    "path": [p.__dict__ for p in r.path]} for r in self.rows]}


def stratified_split(feats: FeatureSet, fractions: Sequence[float] = (0.6, 0.2, 0.2),
                     seed: int = 0, classes: Sequence[str] | None = None) -> tuple[FeatureSet, ...]:
    """Split encoded data into parts of every class in the given proportions (train, val, test),
    each class contributing at least one image to every part; ``RecipeError`` if a class is too small (or,
    given ``classes``, has no readable image at all)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    parts = [[] for _ in fractions]
    present = feats.labels.unique().tolist()
    if classes is not None:
        missing = [classes[c] for c in range(len(classes)) if c not in present]
        if missing:
            raise RecipeError(f"No readable image of class{'es' * (len(missing) > 1)} "
                              f"{', '.join(repr(m) for m in missing[:10])}; every class needs images to compare on.")
    for c in present:
        rows = (feats.labels == c).nonzero().flatten()
        if len(rows) < len(fractions):
            name = repr(classes[c]) if classes is not None else str(c)
            raise RecipeError(f"Class {name} has {len(rows)} readable images; splitting into {len(fractions)} parts "
                              f"needs at least {len(fractions)}. Give separate splits instead.")
        rows = rows[torch.randperm(len(rows), generator=g)]
        sizes = [max(1, round(f * len(rows))) for f in fractions[1:]]
        sizes = [len(rows) - sum(sizes)] + sizes
        start = 0
        for part, size in zip(parts, sizes):
            part.append(rows[start:start + size])
            start += size
    return tuple(feats.subset(torch.cat(p).sort().values) for p in parts)


def with_head_at_nec(model: ConceptBottleneckModel, train: FeatureSet, nec: int) -> ConceptBottleneckModel:
    """``model`` with its head truncated to ``nec`` concepts per class and refitted on ``train``
    (the concept layer and statistics unchanged). The model's own training statistics are used."""
    z = model.standardize(model.concept_scores(train.embeddings))
    res = truncate_to_nec(z, train.labels, len(model.classes), model.weight, nec)
    return model.with_changes(weight=res.weight.cpu(), bias=res.bias.cpu(), residual_weight=None,
                              recipe={**model.recipe, "truncated_to_nec": int(nec)})


def _pick(points: Sequence[PathPoint], nec: float) -> PathPoint | None:
    """The path point with the best validation accuracy among those with NEC ≤ ``nec``."""
    ok = [p for p in points if p.nec <= nec + 1e-9 and p.nec > 0 and p.val_accuracy is not None]
    return max(ok, key=lambda p: (p.val_accuracy, p.nec)) if ok else None


def compare_recipes(train: FeatureSet, val: FeatureSet, test: FeatureSet, inputs: RecipeInputs,
                    recipes: Sequence[str] | Mapping[str, dict], *, nec: float = 5.0,
                    baselines: Sequence[str] = DEFAULT_BASELINES, path_points: int = 10,
                    progress: Callable[[str, float], None] | None = None) -> Comparison:
    """Fit ``recipes`` (names, or ``{name: params}``) and ``baselines`` on ``train``; choose every
    sparsity on ``val``; measure on ``test``. A recipe that fails is reported with its error, and
    the others still run."""
    if not isinstance(nec, (int, float)) or isinstance(nec, bool) or not math.isfinite(nec) or nec < 1:
        raise RecipeError(f"The sparsity to match (NEC, concepts per class) must be a number of at least 1; got {nec!r}.")
    wanted = dict(recipes) if isinstance(recipes, Mapping) else {name: {} for name in recipes}
    for name in baselines:
        wanted.setdefault(name, {})
    report = progress or (lambda stage, frac: None)
    rows = []
    for i, (name, params) in enumerate(wanted.items()):
        cls = get_recipe(name)
        report(f"{name}: fitting", i / len(wanted))
        try:
            est = cls.from_inputs(inputs, **params)
            started = time.perf_counter()
            est.fit(train.embeddings, train.labels, val_features=val.embeddings, val_labels=val.labels,
                    concept_labels=train.concept_labels, val_concept_labels=val.concept_labels)
            seconds = time.perf_counter() - started
        except (RecipeError, ValueError) as exc:
            rows.append(RecipeScore(name, cls.title, cls.baseline, params, None, None, None, None, 0.0, error=str(exc)))
            continue
        model = est.model_
        m = evaluate(model, test.embeddings, test.labels, test.groups)
        sp = model.sparsity()
        row = RecipeScore(name, cls.title, cls.baseline, {**cls.defaults(), **params}, m.accuracy, m.worst_group,
                          sp["nec"], sp["nonzero_fraction"], seconds, model=model)
        report(f"{name}: sparsity path", (i + 0.5) / len(wanted))
        row.path = est.path(train.embeddings, train.labels, val.embeddings, val.labels, n_points=path_points)
        row.at_nec = _at_nec(cls, est, model, row.path, params, inputs, train, val, test, nec)
        rows.append(row)
    report("done", 1.0)
    return Comparison(nec, rows, len(train.labels), len(val.labels), len(test.labels))


def _at_nec(cls, est, model, path, params, inputs, train, val, test, nec) -> dict:
    knob = cls.sparsity_param()
    if model.sparsity()["nec"] <= nec + 1e-9:  # already sparse enough as fitted
        chosen, how = model, "as fitted"
    elif knob is not None and knob.name == "lam" and _pick(path, nec) is not None:
        point = _pick(path, nec)
        chosen = cls.from_inputs(inputs, **{**params, "lam": point.lam}).fit(
            train.embeddings, train.labels, val_features=val.embeddings, val_labels=val.labels,
            concept_labels=train.concept_labels, val_concept_labels=val.concept_labels).model_
        how = f"λ = {point.lam:.3g} (best validation accuracy with NEC ≤ {nec:g})"
        if chosen.sparsity()["nec"] > nec + 1e-9:  # the refit landed a hair over the cap: truncate it
            chosen, how = with_head_at_nec(chosen, train, int(nec)), how + ", then truncated"
    else:
        chosen, how = with_head_at_nec(model, train, int(nec)), f"head truncated to {int(nec)} concepts per class, refitted"
    m = evaluate(chosen, test.embeddings, test.labels, test.groups)
    v = evaluate(chosen, val.embeddings, val.labels, val.groups)
    return {"accuracy": m.accuracy, "worst_group": m.worst_group, "val_accuracy": v.accuracy,
            "nec": chosen.sparsity()["nec"], "nonzero_fraction": chosen.sparsity()["nonzero_fraction"], "how": how}

