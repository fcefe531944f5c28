"""Global edits: each returns an ``EditResult`` — a *new* model (the old one is untouched) whose
edit log ends with the returned entry. ``evaluation.compare`` judges an edit before it is kept.
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
