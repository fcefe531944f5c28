"""Global edits and their validation impact.

Every edit returns an ``EditResult``: a *new* model (the old one is untouched) whose edit log
ends with the returned entry. ``evaluate`` and ``compare`` report accuracy, per-class accuracy
and worst-group accuracy (when group labels exist) so an edit can be judged before it is kept.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Sequence

import torch

from .errors import ConceptError
from .model import ConceptBottleneckModel


@dataclass(frozen=True)
class EditResult:
    model: ConceptBottleneckModel
    entry: dict


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


def _entry(op: str, **details) -> dict:
    return {"op": op, **details, "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def prune_concepts(model: ConceptBottleneckModel, concepts: Sequence[str],
                   classes: Sequence[str] | None = None) -> EditResult:
    """Zero the weights of ``concepts`` for every class, or only for ``classes``."""
    concepts = list(dict.fromkeys(concepts))
    if not concepts:
        raise ConceptError("Name at least one concept to prune.")
    ks = [model.concepts.index(c) for c in concepts]
    cs = [model.class_index(c) for c in classes] if classes else list(range(len(model.classes)))
    weight = model.weight.clone()
    weight[torch.tensor(cs)[:, None], torch.tensor(ks)[None, :]] = 0.0
    entry = _entry("prune", concepts=concepts, classes=list(classes) if classes else "all")
    return EditResult(model.with_changes(weight=weight, edit_log=model.edit_log + (entry,)), entry)


def set_weight(model: ConceptBottleneckModel, concept: str, class_name: str, value: float) -> EditResult:
    """Set the head weight of ``concept`` for ``class_name`` (on the standardised score)."""
    k, c = model.concepts.index(concept), model.class_index(class_name)
    weight = model.weight.clone()
    old = float(weight[c, k])
    weight[c, k] = float(value)
    entry = _entry("set_weight", concept=concept, class_name=class_name, old=old, new=float(value))
    return EditResult(model.with_changes(weight=weight, edit_log=model.edit_log + (entry,)), entry)


def replay(model: ConceptBottleneckModel, log: Sequence[dict]) -> ConceptBottleneckModel:
    """Apply a saved edit log (e.g. from another bundle) to ``model``."""
    for entry in log:
        if entry["op"] == "prune":
            classes = None if entry.get("classes") in (None, "all") else entry["classes"]
            model = prune_concepts(model, entry["concepts"], classes).model
        elif entry["op"] == "set_weight":
            model = set_weight(model, entry["concept"], entry["class_name"], entry["new"]).model
        else:
            raise ConceptError(f"Unknown edit '{entry['op']}' in the edit log.")
    return model


def evaluate(model: ConceptBottleneckModel, embeddings: torch.Tensor, labels: torch.Tensor,
             groups: Sequence[str] | None = None) -> Metrics:
    """Accuracy of ``model`` on encoded images; embeddings: (N, D), labels: (N,)."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    pred = model.predict(embeddings) if len(labels) else torch.zeros(0, dtype=torch.long)
    correct = (pred == labels).float()
    per_class = {name: float(correct[labels == i].mean()) for i, name in enumerate(model.classes)
                 if bool((labels == i).any())}
    per_group = {}
    if groups is not None:
        for g in sorted(set(groups)):
            mask = torch.tensor([x == g for x in groups])
            per_group[g] = float(correct[mask].mean())
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
