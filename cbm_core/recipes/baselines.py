"""Baselines as recipes, so they run on the same feature cache and open in the same dashboard as
every CBM — and a comparison can hold each recipe against them at matched sparsity:

- ``linear-probe``: no bottleneck; the "concepts" are the embedding's own dimensions (an identity
  layer), the head the same elastic net. What a bottleneck costs in accuracy.
- ``random-concepts``: as many random unit directions as a concept list, through the same head.
  Named concepts must beat it by a wide margin to mean anything (VLG-CBM's sanity check).
- ``zero-shot``: no training; each class's prompt is its only concept, logits = τ · cosine.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..core.concept_layer import LinearProjection, TextCosine
from ..core.concepts import ConceptBank
from ..core.model import ConceptBottleneckModel
from .base import (Param, Recipe, RecipeInputs, check_finite_fit, check_training_data, created_info, pick_device,
                   register_recipe, standardized)
from .elastic_net import accuracy, fit_elastic_net, regularization_path
from .pcbm import L1_RATIO, LAM, MAX_ITER


class _ElasticNetOverLayer(Recipe):
    """Shared by the baselines whose concept layer is fixed before fitting: standardise, then the
    elastic-net head; ``path`` is the λ path."""

    baseline = True

    def _layer(self):
        raise NotImplementedError

    def _names(self) -> ConceptBank:
        raise NotImplementedError

    def fit(self, features: torch.Tensor, labels: torch.Tensor, **_):
        labels = check_training_data(features, labels, len(self.classes))
        device = pick_device(self.device)
        layer = self._layer()
        bank = self._names()
        stats, z = standardized(layer(features.float()), bank.names)
        res = fit_elastic_net(z.to(device), labels.to(device), len(self.classes), self.lam, self.l1_ratio,
                              max_iter=self.max_iter)
        weight, bias = res.weight.cpu(), res.bias.cpu()
        check_finite_fit(self.name, weight=weight, bias=bias)
        self.n_iter_, self.converged_ = res.n_iter, res.converged
        self.model_ = ConceptBottleneckModel(
            backbone_spec=self.backbone_spec, concepts=bank, concept_layer=layer, classes=tuple(self.classes),
            stats=stats, weight=weight, bias=bias, templates=tuple(self.templates),
            recipe={"name": self.name, **self.get_params(), "n_iter": res.n_iter, "converged": res.converged,
                    "warnings": [] if res.converged else ["The head's solver stopped at its iteration cap."]},
            metrics={"train_accuracy": accuracy(z @ weight.T + bias, labels)}, created=created_info(device))
        return self

    def path(self, features, labels, val_features=None, val_labels=None, n_points: int = 12, progress=None):
        layer, names = self._layer(), self._names().names
        stats, z = standardized(layer(features.float()), names)
        z_val = (layer(val_features.float()) - stats.mean) / stats.std if val_features is not None else None
        points, _ = regularization_path(z, torch.as_tensor(labels), len(self.classes), l1_ratio=self.l1_ratio,
                                        n_lambdas=n_points, X_val=z_val, progress=progress,
                                        y_val=torch.as_tensor(val_labels) if val_labels is not None else None)
        return points


@register_recipe
class LinearProbe(_ElasticNetOverLayer):
    """``LinearProbe(classes=..., embed_dim=..., backbone_spec=...).fit(X, y)``."""

    name = "linear-probe"
    title = "Linear probe (baseline, no bottleneck)"
    summary = "The embedding's own dimensions through the same elastic-net head: what a bottleneck costs."
    needs = ("labels",)
    uses_text = False
    params = (Param("lam", float, 1e-4, "elastic-net strength: higher = fewer dimensions per class", low=0.0,
                    high=10.0, log=True, sparsity=True), L1_RATIO, MAX_ITER)

    def __init__(self, *, classes: Sequence[str], embed_dim: int, backbone_spec: str, lam: float = 1e-4,
                 l1_ratio: float = 0.99, max_iter: int = 3000, device=None):
        self.classes, self.embed_dim, self.backbone_spec = classes, embed_dim, backbone_spec
        self.lam, self.l1_ratio, self.max_iter, self.device = lam, l1_ratio, max_iter, device
        self.templates = ("{}",)

    @classmethod
    def from_inputs(cls, inputs: RecipeInputs, **params) -> "LinearProbe":
        return cls(classes=inputs.classes, embed_dim=inputs.dimension(), backbone_spec=inputs.backbone_spec,
                   device=inputs.device, **cls.check_params(params))

    def _layer(self):
        return LinearProjection(torch.eye(self.embed_dim))

    def _names(self) -> ConceptBank:
        return ConceptBank(tuple(f"embedding dim {d}" for d in range(self.embed_dim)),
                           ("linear-probe",) * self.embed_dim)


@register_recipe
class RandomConcepts(_ElasticNetOverLayer):
    """Random unit directions as concepts: the floor every concept set must clear."""

    name = "random-concepts"
    title = "Random concepts (baseline)"
    summary = "As many random unit directions as concepts, through the same elastic-net head."
    needs = ("labels",)
    uses_text = False
    params = (LAM, L1_RATIO, Param("n_concepts", int, 0, "how many directions (0: as many as the concept list, "
                                                          "else 26)", low=0, high=100_000),
              Param("seed", int, 0, "random seed of the directions", low=0, high=2**31 - 1), MAX_ITER)

    def __init__(self, *, classes: Sequence[str], embed_dim: int, backbone_spec: str, n_concepts: int = 26,
                 lam: float = 1e-3, l1_ratio: float = 0.99, seed: int = 0, max_iter: int = 3000, device=None):
        self.classes, self.embed_dim, self.backbone_spec = classes, embed_dim, backbone_spec
        self.n_concepts, self.lam, self.l1_ratio, self.seed = n_concepts, lam, l1_ratio, seed
        self.max_iter, self.device = max_iter, device
        self.templates = ("{}",)

    @classmethod
    def from_inputs(cls, inputs: RecipeInputs, **params) -> "RandomConcepts":
        params = cls.check_params(params)
        embed_dim = inputs.dimension()
        if not params["n_concepts"]:
            params["n_concepts"] = len(inputs.concepts) if inputs.concepts is not None else 26
        return cls(classes=inputs.classes, embed_dim=embed_dim, backbone_spec=inputs.backbone_spec,
                   device=inputs.device, **params)

    def _layer(self):
        g = torch.Generator().manual_seed(self.seed)
        return TextCosine(torch.nn.functional.normalize(torch.randn(self.n_concepts, self.embed_dim, generator=g), dim=1))

    def _names(self) -> ConceptBank:
        return ConceptBank(tuple(f"random direction {k}" for k in range(self.n_concepts)),
                           (f"random:seed {self.seed}",) * self.n_concepts)


@register_recipe
class ZeroShot(Recipe):
    """Zero-shot CLIP as a CBM: concept k is class k's prompt; logit_c = τ · cos(e, prompt_c).
    Nothing is trained (``fit`` only records the training statistics the dashboard shows)."""

    name = "zero-shot"
    title = "Zero-shot CLIP (baseline, no training)"
    summary = "Each class's prompt is its only concept; the class with the most similar prompt wins."
    needs = ("labels",)
    baseline = True
    params = (Param("temperature", float, 100.0, "τ: logits = τ · cosine (CLIP's learned scale is ~100)",
                    low=1e-3, high=1e4),)

    def __init__(self, *, classes: Sequence[str], class_vectors: torch.Tensor, backbone_spec: str,
                 templates: Sequence[str] = ("{}",), temperature: float = 100.0):
        self.classes, self.class_vectors, self.backbone_spec = classes, class_vectors, backbone_spec
        self.templates, self.temperature = templates, temperature

    @classmethod
    def from_inputs(cls, inputs: RecipeInputs, **params) -> "ZeroShot":
        return cls(classes=inputs.classes, class_vectors=inputs.embed(inputs.classes), backbone_spec=inputs.backbone_spec,
                   templates=inputs.templates, **cls.check_params(params))

    def fit(self, features: torch.Tensor, labels: torch.Tensor, **_):
        labels = check_training_data(features, labels, len(self.classes))
        layer = TextCosine(torch.nn.functional.normalize(torch.as_tensor(self.class_vectors).float(), dim=1))
        bank = ConceptBank(tuple(f"prompt: {c}" for c in self.classes), ("zero-shot",) * len(self.classes))
        stats, z = standardized(layer(features.float()), bank.names)
        # logits = τ s = τ (z std + mean): a diagonal head over standardised scores, exactly.
        weight = torch.diag(self.temperature * stats.std)
        bias = self.temperature * stats.mean
        self.model_ = ConceptBottleneckModel(
            backbone_spec=self.backbone_spec, concepts=bank, concept_layer=layer, classes=tuple(self.classes),
            stats=stats, weight=weight, bias=bias, templates=tuple(self.templates),
            recipe={"name": self.name, **self.get_params()},
            metrics={"train_accuracy": accuracy(z @ weight.T + bias, labels)}, created=created_info("cpu"))
        return self
