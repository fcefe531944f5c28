"""Post-hoc CBM (Yuksekgonul et al., ICLR 2023) over cached backbone embeddings.

Concept scores are cosines of the image embedding with the concepts' text vectors,
standardised with the training split's mean and std; the head is an elastic-net multinomial
logistic regression (l1 ratio 0.99). PCBM-h adds a ridge-regularised residual head on the
raw embedding, fitted on what the concept head leaves unexplained.
"""
from __future__ import annotations

import datetime as _dt
import platform
from typing import Sequence

import torch

from ..concepts import ConceptBank
from ..model import ConceptBottleneckModel, ConceptStats
from .elastic_net import accuracy, fit_elastic_net, regularization_path


class PCBM:
    """Estimator: ``PCBM(concepts=..., concept_vectors=..., classes=..., backbone_spec=...).fit(X, y)``.

    Parameters are stored as given; learned attributes (``model_``, ``coef_``, ``intercept_``,
    ``stats_``, ``n_iter_``) exist only after ``fit``.

    features: (N, D) unit-norm backbone embeddings; labels: (N,) int64 class indices.
    """

    name = "pcbm"

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

    def get_params(self) -> dict:
        return {"lam": self.lam, "l1_ratio": self.l1_ratio, "residual": self.residual,
                "residual_lam": self.residual_lam, "max_iter": self.max_iter, "tol": self.tol}

    def _raw_scores(self, features: torch.Tensor) -> torch.Tensor:
        return features.float() @ torch.as_tensor(self.concept_vectors).float().T

    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> "PCBM":
        labels = torch.as_tensor(labels, dtype=torch.long)
        if len(features) != len(labels):
            raise ValueError(f"{len(features)} feature rows but {len(labels)} labels.")
        if len(features) == 0:
            raise ValueError("No training examples: every image was skipped or the dataset is empty.")
        n_classes = len(self.classes)
        if int(labels.max()) >= n_classes or int(labels.min()) < 0:
            raise ValueError(f"Labels must lie in [0, {n_classes}); got {int(labels.min())}..{int(labels.max())}.")
        device = torch.device(self.device) if self.device else (torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
        scores = self._raw_scores(features)
        stats = ConceptStats.from_scores(self.concepts.names, scores)
        z = ((scores - stats.mean) / stats.std).to(device)
        res = fit_elastic_net(z, labels.to(device), n_classes, self.lam, self.l1_ratio,
                              max_iter=self.max_iter, tol=self.tol)
        weight, bias = res.weight.cpu(), res.bias.cpu()
        residual_weight = None
        if self.residual:
            offset = (z @ res.weight.T + res.bias).detach()
            rres = fit_elastic_net(features.float().to(device), labels.to(device), n_classes, self.residual_lam,
                                   l1_ratio=0.0, offset=offset, max_iter=self.max_iter, tol=self.tol)
            residual_weight = rres.weight.cpu()
            bias = bias + rres.bias.cpu()
        self.stats_ = stats
        self.coef_ = weight
        self.intercept_ = bias
        self.residual_coef_ = residual_weight
        self.n_iter_ = res.n_iter
        self.converged_ = res.converged
        self.model_ = ConceptBottleneckModel(
            backbone_spec=self.backbone_spec, concepts=self.concepts,
            concept_vectors=torch.as_tensor(self.concept_vectors).float().cpu(), classes=tuple(self.classes),
            stats=stats, weight=weight, bias=bias, residual_weight=residual_weight, templates=tuple(self.templates),
            recipe={"name": "pcbm-h" if self.residual else "pcbm", **self.get_params(),
                    "n_iter": res.n_iter, "converged": res.converged},
            metrics={"train_accuracy": accuracy(self.model_logits(z.cpu(), features, weight, bias, residual_weight), labels)},
            created={"time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                     "torch": torch.__version__, "python": platform.python_version(), "device": str(device)},
        )
        return self

    @staticmethod
    def model_logits(z, features, weight, bias, residual_weight):
        logits = z @ weight.T + bias
        return logits + features.float() @ residual_weight.T if residual_weight is not None else logits

    def transform(self, features: torch.Tensor) -> torch.Tensor:
        """Standardised concept scores, (N, K)."""
        return self.model_.standardize(self._raw_scores(features))

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return self.model_.predict(features)

    def predict_proba(self, features: torch.Tensor) -> torch.Tensor:
        return self.model_.predict_proba(features)

    def path(self, features: torch.Tensor, labels: torch.Tensor, val_features: torch.Tensor | None = None,
             val_labels: torch.Tensor | None = None, n_lambdas: int = 12):
        """The λ path on these features: a list of ``PathPoint`` (accuracy, % non-zero, NEC per λ)."""
        scores = self._raw_scores(features)
        stats = ConceptStats.from_scores(self.concepts.names, scores)
        z = (scores - stats.mean) / stats.std
        z_val = (self._raw_scores(val_features) - stats.mean) / stats.std if val_features is not None else None
        points, _ = regularization_path(z, torch.as_tensor(labels), len(self.classes), l1_ratio=self.l1_ratio,
                                        n_lambdas=n_lambdas, X_val=z_val,
                                        y_val=torch.as_tensor(val_labels) if val_labels is not None else None)
        return points
