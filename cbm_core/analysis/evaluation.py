"""Evaluation: accuracy, per-class and worst-group accuracy, before/after comparisons, the
confusion matrix and concept co-occurrence warnings. (Baselines live in ``baselines.py``.)"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..core.model import ConceptBottleneckModel


@dataclass(frozen=True)
class Metrics:
    """accuracy; per_class and per_group: name -> accuracy; worst_group: min over groups (or None)."""

    n: int
    accuracy: float
    per_class: dict
    per_group: dict
    worst_group: float | None

    def to_dict(self) -> dict:
        return {"n": self.n, "accuracy": self.accuracy, "per_class": self.per_class,
                "per_group": self.per_group, "worst_group": self.worst_group}


def evaluate(model: ConceptBottleneckModel, embeddings: torch.Tensor, labels: torch.Tensor,
             groups: Sequence[str] | None = None) -> Metrics:
    """Accuracy of ``model`` on encoded images; embeddings: (N, D), labels: (N,)."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    pred = model.predict(embeddings) if len(labels) else torch.zeros(0, dtype=torch.long)
    correct = (pred == labels).float()
    per_class = {name: float(correct[labels == i].mean()) for i, name in enumerate(model.classes)
                 if bool((labels == i).any())}
    per_group = {}
    if groups is not None:  # one pass, not a mask per group: 50,000 groups of one image stay quick
        if len(groups) != len(labels):
            raise ValueError(f"{len(labels)} labels but {len(groups)} groups")
        index: dict = {}
        codes = torch.tensor([index.setdefault(g, len(index)) for g in groups], dtype=torch.long)
        hits = torch.zeros(len(index)).index_add_(0, codes, correct)  # whole numbers: exact in float32
        counts = torch.bincount(codes, minlength=len(index)).float()
        per_group = {g: float(hits[i] / counts[i]) for g, i in sorted(index.items())}
    return Metrics(len(labels), float(correct.mean()) if len(labels) else float("nan"), per_class, per_group,
                   min(per_group.values()) if per_group else None)


def compare(before: ConceptBottleneckModel, after: ConceptBottleneckModel, embeddings: torch.Tensor,
            labels: torch.Tensor, groups: Sequence[str] | None = None):
    """Before/after metrics as a table (rows: accuracy, worst group, each class, each group)."""
    import pandas as pd

    a, b = evaluate(before, embeddings, labels, groups), evaluate(after, embeddings, labels, groups)
    rows = [("accuracy", a.accuracy, b.accuracy)]
    if a.worst_group is not None:
        rows.append(("worst-group accuracy", a.worst_group, b.worst_group))
    rows += [(f"class: {k}", v, b.per_class.get(k)) for k, v in a.per_class.items()]
    rows += [(f"group: {k}", v, b.per_group.get(k)) for k, v in a.per_group.items()]
    frame = pd.DataFrame(rows, columns=["metric", "before", "after"])
    frame["change"] = frame["after"] - frame["before"]
    return frame


def confusion_matrix(model: ConceptBottleneckModel, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(C, C) counts: rows are true classes, columns predicted classes."""
    C = len(model.classes)
    pred = model.predict(embeddings)
    return torch.bincount(torch.as_tensor(labels) * C + pred, minlength=C * C).reshape(C, C)


def cooccurrence_warnings(model: ConceptBottleneckModel, embeddings: torch.Tensor, threshold: float = 0.95,
                          block: int = 2048):
    """Pairs of concepts whose scores correlate above ``threshold`` on these images: the model
    cannot tell them apart, so their weights (and any intervention on one) are ambiguous.
    Returns a table: concept_a, concept_b, correlation (sorted, strongest first)."""
    import pandas as pd

    s = model.concept_scores(embeddings)
    s = (s - s.mean(0)) / s.std(0, unbiased=False).clamp_min(1e-8)
    names = model.concepts.names
    rows = []
    # A block of rows of the (K, K) correlation at a time, keeping only the pairs above the threshold: a DN-CBM
    # can have 100,000+ latents, whose full matrix would not fit in memory.
    for start in range(0, s.shape[1], block):
        corr = (s[:, start:start + block].T @ s) / len(s)  # (b, K)
        a, b = (corr.abs() > threshold).nonzero(as_tuple=True)
        a = a + start
        upper = b > a  # each pair once, not a concept with itself
        rows += [(names[x], names[y], float(corr[x - start, y]))
                 for x, y in zip(a[upper].tolist(), b[upper].tolist())]
    return pd.DataFrame(sorted(rows, key=lambda r: -abs(r[2])), columns=["concept_a", "concept_b", "correlation"])
