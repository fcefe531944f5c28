"""The recipe seam: one protocol and one registry for every way of building a CBM.

A recipe is an estimator over cached embeddings (scikit-learn style: parameters in ``__init__``,
no work there, ``fit(X, y) -> self``, learned attributes ending in ``_``, the fitted
``ConceptBottleneckModel`` in ``model_``). Each recipe *declares* itself:

- ``name`` (the registry key, e.g. ``"pcbm"``), ``title`` and ``summary`` for people;
- ``params``: its hyper-parameters as ``Param`` (type, default, bounds, help) — the CLI's
  ``build --recipe NAME`` options and the Build page's controls are generated from them;
- ``needs``: what it needs besides embeddings (``NEEDS``: class labels, a concept list, a
  candidate pool of sentences per class, a vocabulary, concept labels);
- ``from_inputs(inputs, **params)``: the estimator for a ``RecipeInputs`` (classes, text encoder,
  concepts, pool, vocabulary), which is how ``build_cbm`` makes any recipe without knowing it.

Register a new recipe with ``register_recipe``; ``get_recipe(name)`` finds one (with a close-match
hint); ``list_recipes()`` lists them.
"""
from __future__ import annotations

import datetime as _dt
import difflib
import math
import platform
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

import torch

from ..core.concepts import ConceptBank
from ..errors import RecipeError
from ..core.stats import ConceptStats

# What a recipe may need besides embeddings; ``RecipeInputs`` carries each.
NEEDS = {
    "labels": "class labels for every training image",
    "concepts": "a list of concept names (a .txt, .csv or .json file)",
    "candidate_pool": "candidate concept sentences per class (a file of 'class<TAB>sentence' lines)",
    "vocabulary": "a vocabulary of words or phrases to name learned concepts (one per line)",
    "concept_labels": "0/1 concept labels for the training images (CSV concept columns)",
}

TextEncoder = Callable[[Sequence[str], Sequence[str]], torch.Tensor]


@dataclass(frozen=True)
class Param:
    """One hyper-parameter of a recipe: ``type`` is float, int, bool or str; ``low`` / ``high``
    bound numbers (inclusive); ``choices`` lists the allowed strings; ``log`` hints a log-scale
    control; ``sparsity`` marks the parameter that sets how many concepts each class uses."""

    name: str
    type: type
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None
    log: bool = False
    sparsity: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, value: Any, recipe: str = "") -> Any:
        """``value`` converted to this parameter's type and checked, or a ``RecipeError`` saying why."""
        where = f"{recipe} option {self.flag}" if recipe else f"option {self.flag}"
        try:
            if self.type is bool:
                if isinstance(value, str):
                    if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError(value)
                    value = value.lower() in ("true", "1", "yes")
                elif not isinstance(value, (bool, int)):
                    raise ValueError(value)
                return bool(value)
            if self.type is str:
                value = str(value)
                if self.choices and value not in self.choices:
                    raise RecipeError(f"{where} must be one of {', '.join(self.choices)}; got {value!r}.")
                return value
            if isinstance(value, bool):
                raise ValueError(value)
            number = self.type(value)
            if self.type is int and float(value) != number:
                raise ValueError(value)
        except RecipeError:
            raise
        except (TypeError, ValueError, OverflowError):
            raise RecipeError(f"{where} must be a {self.type.__name__}; got {value!r}.") from None
        if isinstance(number, float) and not math.isfinite(number):
            raise RecipeError(f"{where} must be a finite number; got {value!r}.")
        if (self.low is not None and number < self.low) or (self.high is not None and number > self.high):
            lo = "-inf" if self.low is None else f"{self.low:g}"
            hi = "inf" if self.high is None else f"{self.high:g}"
            raise RecipeError(f"{where} must lie in [{lo}, {hi}]; got {value!r}.")
        return number


@dataclass(frozen=True)
class RecipeInputs:
    """Everything besides embeddings that a recipe may need (see ``NEEDS``).

    text: ``(names, templates) -> (M, D)`` unit text vectors, e.g. ``Backbone.embed_prompts``;
    candidate_pool: ``{class name: [sentences]}``; vocabulary: words / phrases."""

    classes: tuple[str, ...]
    backbone_spec: str
    text: TextEncoder | None = None
    templates: tuple[str, ...] = ("{}",)
    concepts: ConceptBank | None = None
    candidate_pool: dict[str, tuple[str, ...]] | None = None
    vocabulary: tuple[str, ...] | None = None
    device: str | None = None
    embed_dim: int | None = None
    concept_names: tuple[str, ...] | None = None  # the dataset's concept-label columns (concept-supervised recipes)

    def require(self, recipe: "type[Recipe]") -> None:
        """Raise a ``RecipeError`` naming every input ``recipe`` needs that is missing here."""
        have = {"labels": True, "concepts": self.concepts is not None,
                "candidate_pool": bool(self.candidate_pool), "vocabulary": bool(self.vocabulary),
                "concept_labels": True,  # checked at fit time, where the labels are
                "text": self.text is not None}
        missing = [n for n in recipe.needs if not have.get(n, False)]
        if recipe.uses_text and self.text is None:
            missing.append("text")
        if missing:
            what = "; ".join(NEEDS.get(n, "a text encoder (the backbone)") for n in missing)
            raise RecipeError(f"Recipe '{recipe.name}' needs {what}.")

    def dimension(self) -> int:
        """The embedding size D (from ``embed_dim``, else from the text encoder)."""
        if self.embed_dim is not None:
            return int(self.embed_dim)
        return int(self.embed(["x"]).shape[1])

    def embed(self, names: Sequence[str], templates: Sequence[str] | None = None) -> torch.Tensor:
        if self.text is None:
            raise RecipeError("This recipe needs the backbone's text encoder to embed concept names.")
        return self.text(list(names), list(templates or self.templates))


class Recipe:
    """Base class of every recipe; see the module docstring. Subclasses set the class attributes
    and implement ``from_inputs``, ``fit`` and, where they have a sparsity knob, ``path``."""

    name: ClassVar[str]
    title: ClassVar[str]
    summary: ClassVar[str]
    paper: ClassVar[str] = ""
    needs: ClassVar[tuple[str, ...]] = ("labels",)
    uses_text: ClassVar[bool] = True
    baseline: ClassVar[bool] = False  # a reference point (linear probe, random concepts), not a CBM recipe
    streams: ClassVar[bool] = False  # fit / path accept a FeatureSource (a sharded store) and never load it whole
    params: ClassVar[tuple[Param, ...]] = ()

    @classmethod
    def param(cls, name: str) -> Param:
        for p in cls.params:
            if p.name == name:
                return p
        raise RecipeError(f"Recipe '{cls.name}' has no option {name!r}; its options: "
                          f"{', '.join(p.name for p in cls.params) or 'none'}.")

    @classmethod
    def defaults(cls) -> dict:
        return {p.name: p.default for p in cls.params}

    @classmethod
    def check_params(cls, params: dict) -> dict:
        """The recipe's defaults updated with ``params``, every value checked (``RecipeError``)."""
        return {**cls.defaults(), **{name: cls.param(name).check(value, cls.name) for name, value in params.items()}}

    @classmethod
    def sparsity_param(cls) -> Param | None:
        return next((p for p in cls.params if p.sparsity), None)

    @classmethod
    def from_inputs(cls, inputs: RecipeInputs, **params) -> "Recipe":
        raise NotImplementedError

    def get_params(self) -> dict:
        return {p.name: getattr(self, p.name) for p in self.params}

    def fit(self, features: torch.Tensor, labels: torch.Tensor, *, val_features: torch.Tensor | None = None,
            val_labels: torch.Tensor | None = None, concept_labels: torch.Tensor | None = None,
            val_concept_labels: torch.Tensor | None = None) -> "Recipe":
        """features: (N, D) unit-norm embeddings; labels: (N,) class indices; concept labels (N, K)
        of 0/1 (NaN = unknown) where the data has them. Recipes ignore what they do not use."""
        raise NotImplementedError

    def path(self, features: torch.Tensor, labels: torch.Tensor, val_features: torch.Tensor | None = None,
             val_labels: torch.Tensor | None = None, n_points: int = 12,
             progress: Callable[[float], None] | None = None) -> list:
        """Accuracy against sparsity (a list of ``PathPoint``); empty when the recipe has no knob.
        ``progress(fraction)`` is called as the path advances."""
        return []

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return self.model_.predict(features)

    def predict_proba(self, features: torch.Tensor) -> torch.Tensor:
        return self.model_.predict_proba(features)

    def transform(self, features: torch.Tensor) -> torch.Tensor:
        """Standardised concept scores, (N, K)."""
        return self.model_.standardize(self.model_.concept_scores(features))


RECIPES: dict[str, type[Recipe]] = {}


def register_recipe(cls: type[Recipe]) -> type[Recipe]:
    """Add a recipe class to the registry (usable as a decorator). Checks its declaration."""
    for attr in ("name", "title", "summary"):
        if not isinstance(getattr(cls, attr, None), str):
            raise TypeError(f"Recipe {cls.__name__} must declare a string '{attr}'.")
    unknown = [n for n in cls.needs if n not in NEEDS]
    if unknown:
        raise TypeError(f"Recipe {cls.name} needs unknown inputs {unknown}; known: {list(NEEDS)}.")
    for p in cls.params:
        p.check(p.default, cls.name)
    RECIPES[cls.name] = cls
    return cls


def get_recipe(name: str) -> type[Recipe]:
    if name not in RECIPES:
        close = difflib.get_close_matches(str(name), list(RECIPES), n=2)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise RecipeError(f"Unknown recipe '{name}'.{hint} Available: {', '.join(RECIPES)}.")
    return RECIPES[name]


def list_recipes() -> list[type[Recipe]]:
    return list(RECIPES.values())


# -- shared by recipes --------------------------------------------------------------------------
def check_training_data(features: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Labels as int64, after checking the features and labels fit together (``RecipeError``)."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    if features.ndim != 2:
        raise RecipeError(f"Features must be (N, D); got {tuple(features.shape)}.")
    if len(features) != len(labels):
        raise RecipeError(f"{len(features)} feature rows but {len(labels)} labels.")
    if len(features) == 0:
        raise RecipeError("No training examples: every image was skipped or the dataset is empty.")
    if int(labels.max()) >= n_classes or int(labels.min()) < 0:
        raise RecipeError(f"Labels must lie in [0, {n_classes}); got {int(labels.min())}..{int(labels.max())}.")
    if not bool(torch.isfinite(features).all()):
        raise RecipeError("Some features are not finite (NaN or inf); re-extract them.")
    return labels


def pick_device(device) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def standardized(scores: torch.Tensor, names: Sequence[str]) -> tuple[ConceptStats, torch.Tensor]:
    """Training statistics of raw scores (N, K) and the standardised scores."""
    stats = ConceptStats.from_scores(names, scores)
    return stats, (scores - stats.mean) / stats.std


def check_labels(features, labels, n_classes: int) -> torch.Tensor:
    """``check_training_data`` for in-memory features, its streaming twin for a ``FeatureSource``."""
    from ..data.sources import check_source_labels, is_source

    return (check_source_labels if is_source(features) else check_training_data)(features, labels, n_classes)


def layer_standardized(layer, names: Sequence[str], features) -> tuple[ConceptStats, Any]:
    """``standardized(layer(features), names)``; a ``FeatureSource`` is streamed instead: z is then a
    ``MappedSource`` of the standardised scores, never held whole."""
    from ..data.sources import is_source, standardized_source

    if is_source(features):
        return standardized_source(layer, names, features, len(names))
    return standardized(layer(features.float().cpu()), names)


def fit_head(z, labels: torch.Tensor, n_classes: int, lam: float, l1_ratio: float, *, max_iter: int, tol: float,
             device) -> tuple[Any, torch.Tensor, torch.Tensor, float]:
    """The sparse head on standardised scores z (a tensor, or a source: chunked full-batch steps);
    returns (solver result, weight, bias on the CPU, training accuracy)."""
    from ..data.sources import is_source
    from .elastic_net import accuracy, fit_elastic_net, head_accuracy

    if is_source(z):
        res = fit_elastic_net(z, labels, n_classes, lam, l1_ratio, max_iter=max_iter, tol=tol, device=device)
    else:
        res = fit_elastic_net(z.to(device), labels.to(device), n_classes, lam, l1_ratio, max_iter=max_iter, tol=tol)
    weight, bias = res.weight.cpu(), res.bias.cpu()
    train = head_accuracy(z, labels, weight, bias) if is_source(z) else accuracy(z @ weight.T + bias, labels)
    return res, weight, bias, train


def created_info(device) -> dict:
    return {"time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "python": platform.python_version(), "device": str(device)}


def check_finite_fit(recipe: str, **tensors: torch.Tensor | None) -> None:
    """A fit that produced NaN or inf must never become a model (or a bundle)."""
    bad = [name for name, t in tensors.items() if t is not None and not bool(torch.isfinite(t).all())]
    if bad:
        raise RecipeError(f"The {recipe} fit produced non-finite numbers in {', '.join(bad)}. Try a larger λ, "
                          f"fewer concepts, or check the data for duplicates of one image with different labels.")
