"""Post-hoc CBM (Yuksekgonul et al., ICLR 2023) over cached backbone embeddings.

Concept scores are cosines of the image embedding with the concepts' text vectors,
standardised with the training split's mean and std; the head is an elastic-net multinomial
logistic regression (l1 ratio 0.99). PCBM-h adds a ridge-regularised residual head on the
raw embedding, fitted on what the concept head leaves unexplained.

Features may be a ``FeatureSource`` (``cbm_core.data.sources``: a sharded feature store), which is streamed, never
loaded whole: the statistics in one pass, the heads by chunked full-batch steps (the in-memory iterates). Only
the concept head's (N, C) logits are held, as PCBM-h's offset.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..core.concept_layer import TextCosine
from ..core.concepts import ConceptBank
from ..core.model import ConceptBottleneckModel
from ..data.sources import DEFAULT_CHUNK, MappedSource, is_source
from .base import (Param, Recipe, RecipeInputs, check_finite_fit, check_labels, created_info, fit_head,
                   layer_standardized, pick_device, register_recipe)
from .elastic_net import accuracy, fit_elastic_net, regularization_path

LAM = Param("lam", float, 1e-3, "elastic-net strength: higher = fewer concepts per class", low=0.0, high=10.0,
            log=True, sparsity=True)
L1_RATIO = Param("l1_ratio", float, 0.99, "share of the l1 penalty in the elastic net (1 = lasso)", low=0.0, high=1.0)
MAX_ITER = Param("max_iter", int, 3000, "iteration cap of the head's solver", low=10, high=1_000_000)


@register_recipe
class PCBM(Recipe):
    """Estimator: ``PCBM(concepts=..., concept_vectors=..., classes=..., backbone_spec=...).fit(X, y)``.

    Parameters are stored as given; learned attributes (``model_``, ``coef_``, ``intercept_``,
    ``stats_``, ``n_iter_``, ``converged_``) exist only after ``fit``.

    features: (N, D) unit-norm backbone embeddings, or a ``FeatureSource`` of them (streamed); labels: (N,)
    int64 class indices.
    """

    name = "pcbm"
    title = "PCBM — post-hoc CBM"
    summary = ("Concept scores are the image's cosine with each concept's text embedding; a sparse "
               "elastic-net head over them. PCBM-h adds a residual head on the raw embedding.")
    paper = "Yuksekgonul et al., Post-hoc Concept Bottleneck Models, ICLR 2023"
    needs = ("labels", "concepts")
    streams = True
    params = (LAM, L1_RATIO,
              Param("residual", bool, False, "PCBM-h: add a residual linear head on the raw embedding"),
              Param("residual_lam", float, 1e-3, "ridge strength of the residual head", low=0.0, high=10.0, log=True),
              MAX_ITER)

    def __init__(self, *, concepts: ConceptBank, concept_vectors: torch.Tensor, classes: Sequence[str],
                 backbone_spec: str, templates: Sequence[str] = ("{}",), lam: float = 1e-3,
                 l1_ratio: float = 0.99, residual: bool = False, residual_lam: float = 1e-3,
                 max_iter: int = 3000, tol: float = 1e-5, device: str | torch.device | None = None):
        self.concepts = concepts
        self.concept_vectors = concept_vectors
        self.classes = classes
        self.backbone_spec = backbone_spec
        self.templates = templates
        self.lam = lam
        self.l1_ratio = l1_ratio
        self.residual = residual
        self.residual_lam = residual_lam
        self.max_iter = max_iter
        self.tol = tol
        self.device = device

    @classmethod
    def from_inputs(cls, inputs: RecipeInputs, **params) -> "PCBM":
        inputs.require(cls)
        return cls(concepts=inputs.concepts, concept_vectors=inputs.embed(inputs.concepts.names),
                   classes=inputs.classes, backbone_spec=inputs.backbone_spec, templates=inputs.templates,
                   device=inputs.device, **cls.check_params(params))

    def _layer(self) -> TextCosine:
        return TextCosine(torch.as_tensor(self.concept_vectors).float().cpu())

    def fit(self, features: torch.Tensor, labels: torch.Tensor, **_) -> "PCBM":
        labels = check_labels(features, labels, len(self.classes))
        n_classes = len(self.classes)
        device = pick_device(self.device)
        layer = self._layer()
        stats, z = layer_standardized(layer, self.concepts.names, features)
        res, weight, bias, train_accuracy = fit_head(z, labels, n_classes, self.lam, self.l1_ratio,
                                                     max_iter=self.max_iter, tol=self.tol, device=device)
        residual_weight = None
        if self.residual:
            offset = _logits(z, res.weight, res.bias, device)  # what the concept head explains, held fixed
            X = features if is_source(features) else features.float().to(device)
            rres = fit_elastic_net(X, labels.to(device), n_classes, self.residual_lam, l1_ratio=0.0, offset=offset,
                                   max_iter=self.max_iter, tol=self.tol, device=device)
            residual_weight = rres.weight.cpu()
            bias = bias + rres.bias.cpu()
            train_accuracy = accuracy(offset.cpu() + _logits(features, residual_weight, rres.bias.cpu(), "cpu"), labels)
        check_finite_fit(self.name, weight=weight, bias=bias, residual_weight=residual_weight)
        self.stats_ = stats
        self.coef_ = weight
        self.intercept_ = bias
        self.residual_coef_ = residual_weight
        self.n_iter_ = res.n_iter
        self.converged_ = res.converged
        warnings = [] if res.converged else [f"The head's solver stopped at its iteration cap ({self.max_iter}) "
                                             f"before converging; raise max_iter or λ."]
        self.model_ = ConceptBottleneckModel(
            backbone_spec=self.backbone_spec, concepts=self.concepts, concept_layer=layer, classes=tuple(self.classes),
            stats=stats, weight=weight, bias=bias, residual_weight=residual_weight, templates=tuple(self.templates),
            recipe={"name": "pcbm-h" if self.residual else "pcbm", **self.get_params(), "tol": self.tol,
                    "n_iter": res.n_iter, "converged": res.converged, "warnings": warnings},
            metrics={"train_accuracy": train_accuracy},
            created=created_info(device),
        )
        return self

    def path(self, features: torch.Tensor, labels: torch.Tensor, val_features: torch.Tensor | None = None,
             val_labels: torch.Tensor | None = None, n_points: int = 12, progress=None):
        """The λ path on these features (tensors or sources): a list of ``PathPoint`` (accuracy, % non-zero, NEC
        per λ)."""
        layer = self._layer()
        stats, z = layer_standardized(layer, self.concepts.names, features)
        z_val = None
        if val_features is not None:
            z_val = (MappedSource(val_features, lambda x: (layer(x.float()) - stats.mean) / stats.std, len(stats.mean))
                     if is_source(val_features) else (layer(val_features) - stats.mean) / stats.std)
        points, _ = regularization_path(z, torch.as_tensor(labels), len(self.classes), l1_ratio=self.l1_ratio,
                                        n_lambdas=n_points, X_val=z_val, progress=progress,
                                        y_val=torch.as_tensor(val_labels) if val_labels is not None else None)
        return points


def _logits(x, weight: torch.Tensor, bias: torch.Tensor, device) -> torch.Tensor:
    """``x @ weight.T + bias`` (N, C) on ``device``; x a tensor or a ``FeatureSource`` (read chunk by chunk)."""
    weight, bias = weight.to(device), bias.to(device)
    if not is_source(x):
        return x.float().to(device) @ weight.T + bias
    return torch.cat([xb.float().to(device) @ weight.T + bias for xb in x.iter_batches(DEFAULT_CHUNK)])
