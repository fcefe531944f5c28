"""Concept Matrix Search (Semenov et al., 2024): training-free classification through concepts.

The paper builds two matrices of CLIP similarities, each row normalised to sum to 1:

    V[i] = s_i / Σ_k s_ik              image–concept: s_i = X_i Vᵀ, the image's concept cosines
    T[c] = t_c / Σ_k t_ck              class–concept

and predicts the class whose row best matches the image's: ``argmax_c cos(V[i], T[c])``. The
class–concept rows come from the class *names* in the paper's code (t_c: cosines of the class
name's text vector with the concepts', ``class_matrix="names"``); ``class_matrix="images"`` builds
them from the training images of each class instead (T[c] = the mean of V[i] over class c).

As a CBM (a ``TextCosine`` layer, a linear head over standardised scores): cosine is blind to a
row's positive scale, so when an image's concept cosines sum to more than 0 (as CLIP's do),

    cos(V[i], T[c]) = (s_i · T̂_c) / ‖s_i‖,      T̂_c = T[c] / ‖T[c]‖

and ``1 / ‖s_i‖`` is the same for every class. The recipe's head is the linear part,
``logits_c = scale · s_i · T̂_c``, i.e. W = scale · T̂ diag(std), b = scale · T̂ mean: the same
class ranking, hence the same predictions, as the paper's score; only the confidence differs (the
paper's cosine is the logit divided by the image's ‖s_i‖ / scale). ``scale`` (one scalar, which
changes no prediction) is fitted to the training images by cross-entropy unless given. Where an
image's cosines sum to ≤ 0 the paper's normalisation flips its row, and the two can disagree:
``agreement_`` is the share of training images on which they agree; ``paper_scores`` computes the
paper's own score for comparison.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from ..core.concept_layer import TextCosine
from ..core.concepts import ConceptBank
from ..errors import RecipeError
from ..core.model import ConceptBottleneckModel
from .base import (Param, Recipe, RecipeInputs, check_finite_fit, check_training_data, created_info, pick_device,
                   register_recipe, standardized)
from .elastic_net import accuracy, nec_path

CLASS_MATRICES = ("names", "images")


def row_normalise(m: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Rows scaled to sum to 1 (the paper's normalisation): m / (Σ_k m_k + eps)."""
    return m / (m.sum(dim=1, keepdim=True) + eps)


def class_concept_matrix(concept_vectors: torch.Tensor, *, class_vectors: torch.Tensor | None = None,
                         scores: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                         n_classes: int | None = None) -> torch.Tensor:
    """T (C, K), rows summing to 1: from class-name text vectors (C, D) (the paper's code), or
    from training concept scores (N, K) and labels (N,): the mean of each class's row-normalised scores."""
    if class_vectors is not None:
        return row_normalise(class_vectors.float() @ concept_vectors.float().T)
    V = row_normalise(scores.float())
    sums = torch.zeros(n_classes, V.shape[1]).index_add_(0, labels, V)
    return sums / torch.bincount(labels, minlength=n_classes).clamp_min(1)[:, None].float()


def paper_scores(scores: torch.Tensor, class_matrix: torch.Tensor) -> torch.Tensor:
    """The paper's class scores: cos(V[i], T[c]), scores (N, K) raw concept cosines -> (N, C)."""
    return F.normalize(row_normalise(scores.float()), dim=1) @ F.normalize(class_matrix.float(), dim=1).T


def fit_temperature(u: torch.Tensor, y: torch.Tensor, lo: float = -4.0, hi: float = 8.0, n_iter: int = 80) -> float:
    """argmin_τ>0 CE(τ · u, y) by golden-section search on log10 τ (CE(τ u) is convex in τ)."""
    def loss(t):
        return float(F.cross_entropy(10.0 ** t * u, y))
    r = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - r * (b - a), a + r * (b - a)
    fc, fd = loss(c), loss(d)
    for _ in range(n_iter):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - r * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + r * (b - a)
            fd = loss(d)
    return 10.0 ** ((a + b) / 2)


@register_recipe
class CMS(Recipe):
    """Estimator: ``CMS(concepts=..., concept_vectors=..., classes=..., backbone_spec=...).fit(X, y)``.

    class_vectors: (C, D) unit text vectors of the class names (``class_matrix="names"``).
    Learned attributes (``model_``, ``class_matrix_``, ``scale_``, ``agreement_``, ``coef_``,
    ``intercept_``, ``stats_``) exist only after ``fit``.
    """

    name = "cms"
    title = "Concept Matrix Search — training-free"
    summary = ("No training: each class is a row of concept similarities (from its name, or from its training "
               "images), and an image goes to the class whose row best matches its own concept similarities.")
    paper = "Semenov et al., Sparse Concept Bottleneck Models: Gumbel Tricks in Contrastive Learning, 2024"
    needs = ("labels", "concepts")
    params = (
        Param("class_matrix", str, "names", "where each class's concept row comes from: its name's text "
              "(the paper) or the mean over its training images", choices=CLASS_MATRICES),
        Param("scale", float, 0.0, "logit scale (0 = fitted to the training images; predictions do not depend "
              "on it)", low=0.0, high=1e6),
    )

    def __init__(self, *, concepts: ConceptBank, concept_vectors: torch.Tensor, classes: Sequence[str],
                 backbone_spec: str, class_vectors: torch.Tensor | None = None, templates: Sequence[str] = ("{}",),
                 class_matrix: str = "names", scale: float = 0.0, device: str | torch.device | None = None):
        self.concepts = concepts
        self.concept_vectors = concept_vectors
        self.classes = classes
        self.backbone_spec = backbone_spec
        self.class_vectors = class_vectors
        self.templates = templates
        self.class_matrix = class_matrix
        self.scale = scale
        self.device = device

    @classmethod
    def from_inputs(cls, inputs: RecipeInputs, **params) -> "CMS":
        inputs.require(cls)
        params = cls.check_params(params)
        class_vectors = inputs.embed(inputs.classes) if params["class_matrix"] == "names" else None
        return cls(concepts=inputs.concepts, concept_vectors=inputs.embed(inputs.concepts.names),
                   classes=inputs.classes, backbone_spec=inputs.backbone_spec, class_vectors=class_vectors,
                   templates=inputs.templates, device=inputs.device, **params)

    def _layer(self) -> TextCosine:
        return TextCosine(torch.as_tensor(self.concept_vectors).float().cpu())

    def _class_matrix(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.class_matrix == "names":
            if self.class_vectors is None:
                raise RecipeError("CMS with class_matrix='names' needs the class names' text vectors "
                                  "(class_vectors); build it with from_inputs, or use class_matrix='images'.")
            return class_concept_matrix(self.concept_vectors, class_vectors=torch.as_tensor(self.class_vectors))
        counts = torch.bincount(labels, minlength=len(self.classes))
        absent = [c for c, n in zip(self.classes, counts.tolist()) if n == 0]
        if absent:
            raise RecipeError(f"CMS with class_matrix='images' builds each class's row from its training images; "
                              f"class{'es' * (len(absent) > 1)} {', '.join(repr(c) for c in absent[:8])} has none. "
                              f"Add images, or use class_matrix='names'.")
        return class_concept_matrix(self.concept_vectors, scores=scores, labels=labels, n_classes=len(self.classes))

    def fit(self, features: torch.Tensor, labels: torch.Tensor, **_) -> "CMS":
        labels = check_training_data(features, labels, len(self.classes))
        device = pick_device(self.device)
        layer = self._layer()
        scores = layer(features.float().cpu())
        stats, _ = standardized(scores, self.concepts.names)
        T = self._class_matrix(scores, labels)
        T_hat = F.normalize(T, dim=1)
        u = scores @ T_hat.T  # the linear part of the paper's cosine, (N, C)
        scale = float(self.scale) if self.scale > 0 else fit_temperature(u, labels)
        weight, bias = scale * T_hat * stats.std[None, :], scale * T_hat @ stats.mean
        check_finite_fit(self.name, class_matrix=T, weight=weight, bias=bias)
        paper_pred = paper_scores(scores, T).argmax(1)
        agreement = float((paper_pred == u.argmax(1)).float().mean())
        flipped = float((scores.sum(1) <= 0).float().mean())
        warnings = [f"{flipped:.1%} of the training images have concept cosines summing to ≤ 0, where the paper's "
                    f"row normalisation flips the row; the linear head agrees with the paper's prediction on "
                    f"{agreement:.1%} of them all."] if flipped > 0 else []
        self.class_matrix_ = T
        self.scale_ = scale
        self.agreement_ = agreement
        self.stats_ = stats
        self.coef_ = weight
        self.intercept_ = bias
        self.model_ = ConceptBottleneckModel(
            backbone_spec=self.backbone_spec, concepts=self.concepts, concept_layer=layer, classes=tuple(self.classes),
            stats=stats, weight=weight, bias=bias, templates=tuple(self.templates),
            recipe={"name": self.name, **self.get_params(), "fitted_scale": scale, "paper_agreement": agreement,
                    "warnings": warnings},
            metrics={"train_accuracy": accuracy(scale * u, labels),
                     "train_accuracy_paper_score": accuracy(paper_scores(scores, T), labels)},
            created=created_info(device),
        )
        return self

    def path(self, features: torch.Tensor, labels: torch.Tensor, val_features: torch.Tensor | None = None,
             val_labels: torch.Tensor | None = None, n_points: int = 12, progress=None):
        """Accuracy against NEC: each class's largest CMS weights kept and refitted (``nec_path``)."""
        labels = check_training_data(features, labels, len(self.classes))
        model = CMS(concepts=self.concepts, concept_vectors=self.concept_vectors, classes=self.classes,
                    backbone_spec=self.backbone_spec, class_vectors=self.class_vectors, templates=self.templates,
                    device=self.device, **self.get_params()).fit(features, labels).model_
        z = model.standardize(model.concept_scores(features))
        z_val = model.standardize(model.concept_scores(val_features)) if val_features is not None else None
        return nec_path(z, labels, len(self.classes), model.weight, X_val=z_val,
                        y_val=torch.as_tensor(val_labels).long() if val_labels is not None else None,
                        progress=progress)
