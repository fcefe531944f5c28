"""The concept bottleneck model: concept layer + linear head over named concepts.

    embedding e (D,) ─ concept layer (concept_layer.py) ─> raw scores s (K,)
      ─ standardise with training stats ─> z = (s - mean) / std (K,)
      ─ linear head ─> logits = W z + b  [+ R e for PCBM-h]  (C,)

Every recipe produces this one model; only the concept layer differs between them.

Because the head is linear over named concepts, ``logit_c = sum_k W[c, k] z_k + b_c + r_c``
exactly; ``W[c, k] z_k`` is concept k's contribution to class c, and ``r_c`` the residual's.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from .concept_layer import ConceptLayer
from .concepts import ConceptBank
from ..errors import ConceptError
from .interventions import Intervention
from .stats import QUANTILE_LEVELS, ConceptStats  # noqa: F401 (ConceptStats is part of a model)


@dataclass(frozen=True, eq=False)
class Explanation:
    """Everything about a batch of N images under a model (and optional intervention).

    scores, percentiles, z: (N, K); logits, probs: (N, C); residual: (N, C) or None
    (the part of each logit carried by the PCBM-h residual head); weight: (C, K); bias: (C,).
    """

    concept_names: tuple[str, ...]
    class_names: tuple[str, ...]
    scores: torch.Tensor
    percentiles: torch.Tensor
    z: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    residual: torch.Tensor | None
    logits: torch.Tensor
    probs: torch.Tensor

    @property
    def predicted(self) -> torch.Tensor:
        """(N,) index of the winning class."""
        return self.logits.argmax(dim=-1)

    def top_classes(self, k: int = 5) -> torch.Tensor:
        """(N, k) class indices by decreasing probability."""
        return self.probs.topk(min(k, self.probs.shape[-1]), dim=-1).indices

    def contributions(self, class_index: int | None = None) -> torch.Tensor:
        """Per-concept contributions ``W[c, k] z_k``: (N, C, K), or (N, K) for one class."""
        if class_index is None:
            return self.z[:, None, :] * self.weight[None, :, :]
        return self.z * self.weight[class_index][None, :]

    def residual_share(self) -> torch.Tensor:
        """(N,) share of the predicted class's |logit parts| carried by the residual head (0 without one)."""
        if self.residual is None:
            return torch.zeros(len(self.logits))
        pred = self.predicted
        rows = torch.arange(len(pred))
        concept_part = self.contributions()[rows, pred].abs().sum(-1)
        res = self.residual[rows, pred].abs()
        return res / (res + concept_part).clamp_min(1e-12)

    def to_frame(self, index: int = 0, class_index: int | None = None):
        """One image's concepts as a table: score, percentile, standardised score, contribution
        to ``class_index`` (default: the predicted class), sorted by |contribution|."""
        import pandas as pd

        c = int(self.predicted[index]) if class_index is None else class_index
        contrib = self.contributions(c)[index]
        frame = pd.DataFrame({
            "concept": self.concept_names,
            "score": self.scores[index].numpy(),
            "percentile": self.percentiles[index].numpy(),
            "z": self.z[index].numpy(),
            "weight": self.weight[c].numpy(),
            "contribution": contrib.numpy(),
        })
        frame.attrs["class"] = self.class_names[c]
        return frame.reindex(frame.contribution.abs().sort_values(ascending=False).index).reset_index(drop=True)

    def waterfall(self, index: int = 0, class_index: int | None = None, top: int = 8):
        """The logit of one class built up step by step, for a waterfall chart: the bias, the
        ``top`` largest contributions, the rest summed, the residual head (PCBM-h), then the total.
        Columns: label, value, kind (``bias``/``concept``/``rest``/``residual``/``total``)."""
        import pandas as pd

        c = int(self.predicted[index]) if class_index is None else class_index
        contrib = self.contributions(c)[index]
        order = contrib.abs().argsort(descending=True)
        shown = [int(k) for k in order[:top] if float(contrib[k]) != 0.0]
        rest = float(contrib.sum()) - sum(float(contrib[k]) for k in shown)
        rows = [("bias", float(self.bias[c]), "bias")]
        rows += [(self.concept_names[k], float(contrib[k]), "concept") for k in shown]
        n_rest = int((contrib != 0).sum()) - len(shown)
        if n_rest > 0:
            rows.append((f"{n_rest} other concepts", rest, "rest"))
        if self.residual is not None:
            rows.append(("residual (not concepts)", float(self.residual[index, c]), "residual"))
        rows.append((f"logit of {self.class_names[c]}", float(self.logits[index, c]), "total"))
        frame = pd.DataFrame(rows, columns=["label", "value", "kind"])
        frame.attrs["class"] = self.class_names[c]
        return frame

    def compare(self, other: "Explanation", index: int = 0):
        """Class probabilities here vs ``other`` (e.g. before vs after an intervention), with
        the change; sorted by the new probability."""
        import pandas as pd

        frame = pd.DataFrame({"class": self.class_names, "before": self.probs[index].numpy(),
                              "after": other.probs[index].numpy()})
        frame["change"] = frame["after"] - frame["before"]
        return frame.sort_values("after", ascending=False).reset_index(drop=True)

    def classes_frame(self, index: int = 0, k: int = 5):
        import pandas as pd

        top = self.top_classes(k)[index]
        return pd.DataFrame({"class": [self.class_names[i] for i in top],
                             "probability": self.probs[index, top].numpy(),
                             "logit": self.logits[index, top].numpy()})


@dataclass(frozen=True, eq=False)
class ConceptBottleneckModel:
    """A fitted CBM. Immutable: edits return a new model with an extra edit-log entry.

    concept_layer: embeddings (N, D) -> raw scores (N, K); weight: (C, K) over standardised
    scores; bias: (C,); residual_weight: (C, D) or None (PCBM-h).
    """

    backbone_spec: str
    concepts: ConceptBank
    concept_layer: ConceptLayer
    classes: tuple[str, ...]
    stats: ConceptStats
    weight: torch.Tensor
    bias: torch.Tensor
    residual_weight: torch.Tensor | None = None
    templates: tuple[str, ...] = ("{}",)
    recipe: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    edit_log: tuple[dict, ...] = ()
    created: dict = field(default_factory=dict)

    def __post_init__(self):
        K, C = len(self.concepts), len(self.classes)
        checks = [("concept_layer", self.concept_layer.n_concepts, K), ("weight", tuple(self.weight.shape), (C, K)),
                  ("bias", tuple(self.bias.shape), (C,)), ("stats", len(self.stats.names), K)]
        if self.residual_weight is not None:
            checks.append(("residual_weight", tuple(self.residual_weight.shape), (C, self.embed_dim)))
        for name, got, want in checks:
            if got != want:
                raise ValueError(f"{name} has shape {got}; expected {want} for {K} concepts and {C} classes.")

    @property
    def n_concepts(self) -> int:
        return len(self.concepts)

    @property
    def embed_dim(self) -> int:
        return self.concept_layer.embed_dim

    def concept_scores(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Raw scores, (N, K), of unit-norm embeddings (N, D) through the concept layer."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embed_dim:
            raise ValueError(f"embeddings must be (N, {self.embed_dim}); got {tuple(embeddings.shape)}. "
                             f"Was it encoded with this model's backbone ({self.backbone_spec})?")
        return self.concept_layer(embeddings)

    def standardize(self, scores: torch.Tensor) -> torch.Tensor:
        return (scores - self.stats.mean) / self.stats.std

    def head(self, scores: torch.Tensor, embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (N, C) from raw scores (N, K); the residual needs the embeddings (N, D)."""
        logits = self.standardize(scores) @ self.weight.T + self.bias
        if self.residual_weight is not None:
            if embeddings is None:
                raise ValueError("This model has a residual head (PCBM-h): pass the embeddings too.")
            logits = logits + embeddings.float() @ self.residual_weight.T
        return logits

    def intervene(self, scores: torch.Tensor, intervention: Intervention | None) -> torch.Tensor:
        """Raw scores (N, K) changed by ``intervention``, each changed concept kept inside the values its layer
        can give (``ConceptLayer.score_range``): scaling a probability never makes it 1.7, nor a cosine 2."""
        if not intervention:
            return scores
        out = intervention.apply(scores, self.stats)
        low, high = self.concept_layer.score_range
        if low is None and high is None:
            return out
        view = out.unsqueeze(0) if out.ndim == 1 else out
        for k in {self.stats.index(c) for c in intervention.concepts}:
            view[:, k] = view[:, k].clamp(min=low, max=high)
        return out

    def explain_features(self, embeddings: torch.Tensor, intervention: Intervention | None = None,
                         scores: torch.Tensor | None = None) -> Explanation:
        """Explain encoded images, embeddings: (N, D). ``scores`` (N, K) may be passed to skip
        recomputing them (e.g. a cached single image under many interventions)."""
        scores = self.concept_scores(embeddings) if scores is None else scores
        scores = self.intervene(scores, intervention)
        z = self.standardize(scores)
        residual = embeddings.float() @ self.residual_weight.T if self.residual_weight is not None else None
        logits = z @ self.weight.T + self.bias + (residual if residual is not None else 0.0)
        return Explanation(self.concepts.names, self.classes, scores, self.stats.percentile_of(scores), z,
                           self.weight, self.bias, residual, logits, logits.softmax(dim=-1))

    def predict(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.head(self.concept_scores(embeddings), embeddings).argmax(dim=-1)

    def predict_proba(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.head(self.concept_scores(embeddings), embeddings).softmax(dim=-1)

    def sparsity(self) -> dict:
        """% non-zero weights and NEC (mean number of non-zero concept weights per class)."""
        nz = self.weight != 0
        return {"nonzero_fraction": float(nz.float().mean()), "nec": float(nz.sum(dim=1).float().mean()),
                "concepts_used": int(nz.any(dim=0).sum())}

    def class_index(self, name: str) -> int:
        try:
            return self.classes.index(name)
        except ValueError:
            raise ConceptError(f"Unknown class '{name}'. Classes: {', '.join(self.classes[:10])}...") from None

    def with_changes(self, **changes) -> "ConceptBottleneckModel":
        return replace(self, **changes)

    # bundle I/O lives in bundle.py; these keep save/load symmetric on the model itself.
    def save(self, path, overwrite: bool = False):
        """Save as a bundle folder, or a zip when ``path`` ends in ``.zip``; returns the path."""
        from .bundle import save_bundle

        return save_bundle(self, path, overwrite=overwrite)

    @classmethod
    def load(cls, path) -> "ConceptBottleneckModel":
        from .bundle import load_bundle

        return load_bundle(path)
