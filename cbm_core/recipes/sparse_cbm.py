"""Sparse-CBM (Semenov et al., 2024) over cached backbone embeddings.

A concept bottleneck layer (CBL), a K × K matrix A, reads CLIP's image–concept logits

    s = logit_scale · X Vᵀ        (X: (N, D) unit embeddings, V: (K, D) unit concept text vectors)
    c = s Aᵀ                       (the CBL's concept activations, (N, K))
    logits = c Hᵀ                  (the paper's head, (C, K), no bias)

and is trained jointly with the head by Adam on cross-entropy plus one of the paper's CBL
objectives (``objective``):

- ``gumbel`` (Sparse-CBM): ½ [mean −log GumbelSoftmax_τ(c, over images) + mean −log
  GumbelSoftmax_τ(c, over concepts)], a fresh Gumbel(0, 1) draw for each softmax;
- ``contrastive``: CLIP's symmetric InfoNCE on the batch's activations, ½ [−mean diag
  log softmax(c, over images) − mean diag log softmax(c, over concepts)] (the diagonal of the
  B × K matrix, as the paper's code takes it);
- ``l1``: ``l1_weight · ‖A‖₁ / K``.

Because the CBL is linear in the embedding, it is stored as a ``LinearProjection`` with weight
``logit_scale · A V`` (K, D): dense concept maps and Grad-CAM work on it unchanged. With ``lam`` = 0
the head is the paper's, trained jointly and converted exactly to our standardised form
(W = H diag(std), b = H mean); with ``lam`` > 0 the CBL is frozen and an elastic-net head is fitted
on its standardised activations by our FISTA solver, so Sparse-CBM can be compared with other
recipes at matched sparsity (``path`` is its λ path).

Where this differs from the paper's code: A starts at the identity by default (``init``), so
activation k starts as concept k's CLIP score and keeps its name's meaning; the paper starts from
PyTorch's random ``nn.Linear`` init (``init="random"``). Gumbel noise comes from the recipe's
own seeded generator, and −log of a Gumbel-softmax sample is computed as a log-softmax (the same
number, without overflow).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from ..core.concept_layer import LinearProjection
from ..core.concepts import ConceptBank
from ..core.model import ConceptBottleneckModel
from .base import (Param, Recipe, RecipeInputs, check_finite_fit, check_training_data, created_info, pick_device,
                   register_recipe, standardized)
from .elastic_net import accuracy, fit_elastic_net, regularization_path

OBJECTIVES = ("gumbel", "contrastive", "l1")


def gumbel_noise(shape, generator: torch.Generator) -> torch.Tensor:
    """Standard Gumbel(0, 1) samples, ``−log(−log U)``, from ``generator`` (on the CPU)."""
    u = torch.rand(shape, generator=generator).clamp(1e-10, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


def gumbel_contrastive_loss(activations: torch.Tensor, tau: float, noise: tuple[torch.Tensor, torch.Tensor]
                            ) -> torch.Tensor:
    """Sparse-CBM's objective on a batch of CBL activations (B, K):
    ½ [mean −log softmax((c + g₀) / τ, over images) + mean −log softmax((c + g₁) / τ, over concepts)],
    with ``noise = (g₀, g₁)``, two (B, K) Gumbel draws."""
    g0, g1 = (g.to(activations.device, activations.dtype) for g in noise)
    over_images = -F.log_softmax((activations + g0) / tau, dim=0).mean()
    over_concepts = -F.log_softmax((activations + g1) / tau, dim=1).mean()
    return (over_images + over_concepts) / 2


def contrastive_loss(activations: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE on the diagonal of the (B, K) activations, as in the paper's code."""
    n = min(activations.shape)
    over_images = -F.log_softmax(activations, dim=0).diagonal()[:n].mean()
    over_concepts = -F.log_softmax(activations, dim=1).diagonal()[:n].mean()
    return (over_images + over_concepts) / 2


def l1_loss(cbl: torch.Tensor, weight: float) -> torch.Tensor:
    """``weight · ‖A‖₁ / K`` for the CBL matrix A (K, K)."""
    return weight * cbl.abs().sum() / cbl.shape[1]


def cbl_to_layer(cbl: torch.Tensor, concept_vectors: torch.Tensor, logit_scale: float) -> LinearProjection:
    """The CBL ``c = (logit_scale · X Vᵀ) Aᵀ`` as a projection of the embedding: weight ``logit_scale · A V``."""
    return LinearProjection((logit_scale * cbl.float() @ concept_vectors.float()).contiguous(), None, "none")


@register_recipe
class SparseCBM(Recipe):
    """Estimator: ``SparseCBM(concepts=..., concept_vectors=..., classes=..., backbone_spec=...).fit(X, y)``.

    Learned attributes (``model_``, ``cbl_``, ``head_``, ``coef_``, ``intercept_``, ``stats_``,
    ``best_epoch_``, ``history_``) exist only after ``fit``.

    features: (N, D) unit-norm backbone embeddings; labels: (N,) int64 class indices.
    """

    name = "sparse-cbm"
    title = "Sparse-CBM — Gumbel-softmax bottleneck"
    summary = ("A K×K concept bottleneck layer over CLIP's image–concept logits, trained with the class head by "
               "cross-entropy plus a Gumbel-softmax contrastive objective (or ℓ1, or contrastive); an "
               "elastic-net head on top when λ > 0.")
    paper = "Semenov et al., Sparse Concept Bottleneck Models: Gumbel Tricks in Contrastive Learning, 2024"
    needs = ("labels", "concepts")
    params = (
        Param("objective", str, "gumbel", "the CBL's training objective next to cross-entropy",
              choices=OBJECTIVES),
        Param("lam", float, 1e-3, "elastic-net strength of the head (0 = the paper's plain cross-entropy head, "
              "trained with the CBL): higher = fewer concepts per class", low=0.0, high=10.0, log=True,
              sparsity=True),
        Param("l1_ratio", float, 0.99, "share of the l1 penalty in the head's elastic net (1 = lasso)", low=0.0,
              high=1.0),
        Param("tau", float, 1.0, "Gumbel-softmax temperature", low=1e-3, high=1e3, log=True),
        Param("l1_weight", float, 1e-3, "weight of the ℓ1 objective on the CBL (objective l1)", low=0.0, high=10.0),
        Param("logit_scale", float, 100.0, "scale of the image–concept logits the CBL reads (CLIP's 100)", low=1e-3,
              high=1e4, log=True),
        Param("init", str, "identity", "CBL start: identity (activation k starts as concept k's score) or random "
              "(the paper's nn.Linear init)", choices=("identity", "random")),
        Param("lr", float, 1e-2, "Adam learning rate of the CBL and the head", low=1e-7, high=10.0, log=True),
        Param("epochs", int, 30, "passes over the training set", low=1, high=100_000),
        Param("batch_size", int, 256, "mini-batch size (the contrastive objectives compare images in a batch)",
              low=2, high=1_000_000),
        Param("max_iter", int, 3000, "iteration cap of the elastic-net head's solver", low=10, high=1_000_000),
        Param("seed", int, 0, "seed of the initialisation, batch order and Gumbel noise", low=0, high=2**31 - 1),
    )

    def __init__(self, *, concepts: ConceptBank, concept_vectors: torch.Tensor, classes: Sequence[str],
                 backbone_spec: str, templates: Sequence[str] = ("{}",), objective: str = "gumbel",
                 lam: float = 1e-3, l1_ratio: float = 0.99, tau: float = 1.0, l1_weight: float = 1e-3,
                 logit_scale: float = 100.0, init: str = "identity", lr: float = 1e-2, epochs: int = 30,
                 batch_size: int = 256, max_iter: int = 3000, seed: int = 0, tol: float = 1e-5,
                 device: str | torch.device | None = None):
        self.concepts = concepts
        self.concept_vectors = concept_vectors
        self.classes = classes
        self.backbone_spec = backbone_spec
        self.templates = templates
        self.objective = objective
        self.lam = lam
        self.l1_ratio = l1_ratio
        self.tau = tau
        self.l1_weight = l1_weight
        self.logit_scale = logit_scale
        self.init = init
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.seed = seed
        self.tol = tol
        self.device = device

    @classmethod
    def from_inputs(cls, inputs: RecipeInputs, **params) -> "SparseCBM":
        inputs.require(cls)
        return cls(concepts=inputs.concepts, concept_vectors=inputs.embed(inputs.concepts.names),
                   classes=inputs.classes, backbone_spec=inputs.backbone_spec, templates=inputs.templates,
                   device=inputs.device, **cls.check_params(params))

    # -- the bottleneck layer ---------------------------------------------------------------------
    def _cbl_loss(self, activations: torch.Tensor, cbl: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if self.objective == "gumbel":
            return gumbel_contrastive_loss(activations, self.tau,
                                           (gumbel_noise(activations.shape, g), gumbel_noise(activations.shape, g)))
        if self.objective == "contrastive":
            return contrastive_loss(activations)
        return l1_loss(cbl, self.l1_weight)

    def fit_layer(self, features: torch.Tensor, labels: torch.Tensor, val_features: torch.Tensor | None = None,
                  val_labels: torch.Tensor | None = None):
        """Train the CBL and the paper's head jointly. Returns ``(A (K, K), H (C, K), best epoch,
        history)``; with validation data, the epoch with the best validation accuracy is kept."""
        device = pick_device(self.device)
        g = torch.Generator().manual_seed(int(self.seed))
        V = torch.as_tensor(self.concept_vectors).float()
        K, C = V.shape[0], len(self.classes)
        if self.init == "identity":
            A0 = torch.eye(K)
        else:  # nn.Linear's default: kaiming-uniform with a = √5, i.e. U(−1/√K, 1/√K)
            A0 = (torch.rand(K, K, generator=g) * 2 - 1) / math.sqrt(K)
        H0 = (torch.rand(C, K, generator=g) * 2 - 1) / math.sqrt(K)
        A = A0.to(device).requires_grad_(True)
        H = H0.to(device).requires_grad_(True)
        opt = torch.optim.Adam([A, H], lr=self.lr)
        s = (self.logit_scale * features.float() @ V.T).to(device)
        y = labels.to(device)
        s_val = (self.logit_scale * val_features.float() @ V.T).to(device) if val_features is not None else None
        y_val = torch.as_tensor(val_labels).long().to(device) if val_labels is not None else None
        N = len(y)
        bs = min(int(self.batch_size), N)
        history = []
        best = (A.detach().clone(), H.detach().clone())
        best_acc, best_epoch = -1.0, 0
        for epoch in range(1, self.epochs + 1):
            order = torch.randperm(N, generator=g).to(device)
            ce_sum = cbl_sum = 0.0
            for start in range(0, N, bs):
                idx = order[start:start + bs]
                if len(idx) < 2:  # a contrastive batch needs two images
                    continue
                c = s[idx] @ A.T
                ce = F.cross_entropy(c @ H.T, y[idx])
                extra = self._cbl_loss(c, A, g)
                opt.zero_grad(set_to_none=True)
                (ce + extra).backward()
                opt.step()
                ce_sum += float(ce.detach()) * len(idx)
                cbl_sum += float(extra.detach()) * len(idx)
            entry = {"epoch": epoch, "ce": ce_sum / N, "cbl_loss": cbl_sum / N}
            if s_val is not None:
                with torch.no_grad():
                    entry["val_accuracy"] = accuracy(s_val @ A.T @ H.T, y_val)
                if entry["val_accuracy"] > best_acc:
                    best, best_acc, best_epoch = (A.detach().clone(), H.detach().clone()), entry["val_accuracy"], epoch
            history.append(entry)
        if s_val is None:
            best, best_epoch = (A.detach().clone(), H.detach().clone()), self.epochs
        return best[0].cpu(), best[1].cpu(), best_epoch, history

    def fit(self, features: torch.Tensor, labels: torch.Tensor, *, val_features: torch.Tensor | None = None,
            val_labels: torch.Tensor | None = None, **_) -> "SparseCBM":
        labels = check_training_data(features, labels, len(self.classes))
        n_classes = len(self.classes)
        device = pick_device(self.device)
        use_val = val_features is not None and val_labels is not None and len(val_labels) > 0
        A, H, best_epoch, history = self.fit_layer(features, labels, val_features if use_val else None,
                                                   val_labels if use_val else None)
        layer = cbl_to_layer(A, torch.as_tensor(self.concept_vectors), self.logit_scale)
        activations = layer(features.float().cpu())
        stats, z = standardized(activations, self.concepts.names)
        warnings, n_iter, converged = [], None, None
        if self.lam > 0:
            res = fit_elastic_net(z.to(device), labels.to(device), n_classes, self.lam, self.l1_ratio,
                                  max_iter=self.max_iter, tol=self.tol)
            weight, bias, n_iter, converged = res.weight.cpu(), res.bias.cpu(), res.n_iter, res.converged
            if not converged:
                warnings.append(f"The head's solver stopped at its iteration cap ({self.max_iter}) before converging; "
                                f"raise max_iter or λ.")
        else:  # the paper's head, exactly: c Hᵀ = z (H diag(std))ᵀ + H mean
            weight, bias = H * stats.std[None, :], H @ stats.mean
        check_finite_fit(self.name, cbl=A, weight=weight, bias=bias)
        self.cbl_ = A
        self.head_ = H
        self.stats_ = stats
        self.coef_ = weight
        self.intercept_ = bias
        self.best_epoch_ = best_epoch
        self.history_ = history
        self.model_ = ConceptBottleneckModel(
            backbone_spec=self.backbone_spec, concepts=self.concepts, concept_layer=layer, classes=tuple(self.classes),
            stats=stats, weight=weight, bias=bias, templates=tuple(self.templates),
            recipe={"name": self.name, **self.get_params(), "tol": self.tol, "best_epoch": best_epoch,
                    "n_iter": n_iter, "converged": converged, "warnings": warnings},
            metrics={"train_accuracy": accuracy(z @ weight.T + bias, labels)},
            created=created_info(device),
        )
        return self

    def path(self, features: torch.Tensor, labels: torch.Tensor, val_features: torch.Tensor | None = None,
             val_labels: torch.Tensor | None = None, n_points: int = 12, progress=None):
        """The λ path of the elastic-net head on the trained CBL's standardised activations."""
        labels = check_training_data(features, labels, len(self.classes))
        A, _, _, _ = self.fit_layer(features, labels, val_features, val_labels)
        layer = cbl_to_layer(A, torch.as_tensor(self.concept_vectors), self.logit_scale)
        stats, z = standardized(layer(features.float().cpu()), self.concepts.names)
        z_val = (layer(val_features.float().cpu()) - stats.mean) / stats.std if val_features is not None else None
        points, _ = regularization_path(z, labels, len(self.classes), l1_ratio=self.l1_ratio, n_lambdas=n_points,
                                        X_val=z_val, progress=progress,
                                        y_val=torch.as_tensor(val_labels).long() if val_labels is not None else None)
        return points
