"""Global edits: each returns an ``EditResult`` — a *new* model (the old one is untouched) whose
edit log ends with the returned entry. ``evaluation.compare`` judges an edit before it is kept.

Names are matched as typed, else case-insensitively, else refused with the closest names
suggested. An edited model's ``metrics`` describe the edited model: sparsity is recomputed, the
facts about its training data are kept, and numbers measured on the old weights (accuracies)
move into the edit's log entry as ``metrics_before``, so nothing stale is shown as current.
"""
from __future__ import annotations

import datetime as _dt
import difflib
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from ..errors import ConceptError
from ..core.model import ConceptBottleneckModel


@dataclass(frozen=True)
class EditResult:
    model: ConceptBottleneckModel
    entry: dict


def _entry(op: str, **details) -> dict:
    return {"op": op, **details, "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


# Facts about the data a model was fitted on: still true after its weights change. So are the
# measures of its concept layer (a concept-supervised model's concept AUROC): edits change the head only.
_DATA_FACTS = ("n_train", "n_val", "skipped_images", "concept_auroc", "concept_accuracy", "concept_auroc_mean",
               "concept_auroc_worst", "concept_ece_before", "concept_ece_after", "concept_calibration",
               "concept_metrics_on")


def _resolve(name: str, known: Sequence[str], kind: str) -> str:
    """``name`` as spelled in ``known``: exact, else the one case-insensitive match; else a
    ``ConceptError`` that suggests the closest names."""
    if name in known:
        return name
    folded = [k for k in known if k.casefold() == str(name).strip().casefold()]
    if len(folded) == 1:
        return folded[0]
    if len(folded) > 1:
        raise ConceptError(f"'{name}' matches several {kind}s that differ only in case: "
                           f"{', '.join(map(repr, folded))}. Spell it exactly.")
    by_fold = {k.casefold(): k for k in known}
    close = [by_fold[c] for c in difflib.get_close_matches(str(name).casefold(), list(by_fold), n=3, cutoff=0.6)]
    hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
    listed = ", ".join(known[:10]) + ("..." if len(known) > 10 else "")
    raise ConceptError(f"Unknown {kind} '{name}'.{hint} {kind.capitalize()}s: {listed}")


def _edited(model: ConceptBottleneckModel, weight: torch.Tensor, entry: dict) -> EditResult:
    """The model with ``weight``, its metrics made true for it, and ``entry`` appended to its log."""
    edited = model.with_changes(weight=weight)
    sparsity = edited.sparsity()
    before = {k: v for k, v in model.metrics.items() if k not in _DATA_FACTS and k not in sparsity}
    if before:
        entry["metrics_before"] = before
    metrics = {**{k: model.metrics[k] for k in _DATA_FACTS if k in model.metrics}, **sparsity}
    return EditResult(edited.with_changes(metrics=metrics, edit_log=model.edit_log + (entry,)), entry)


def prune_concepts(model: ConceptBottleneckModel, concepts: Sequence[str],
                   classes: Sequence[str] | None = None) -> EditResult:
    """Zero the weights of ``concepts`` for every class, or only for ``classes``."""
    names = list(model.concepts.names)
    concepts = list(dict.fromkeys(_resolve(c, names, "concept") for c in concepts))
    if not concepts:
        raise ConceptError("Name at least one concept to prune.")
    classes = list(dict.fromkeys(_resolve(c, list(model.classes), "class") for c in classes)) if classes else None
    ks = [names.index(c) for c in concepts]
    cs = [model.classes.index(c) for c in classes] if classes else list(range(len(model.classes)))
    weight = model.weight.clone()
    weight[torch.tensor(cs)[:, None], torch.tensor(ks)[None, :]] = 0.0
    return _edited(model, weight, _entry("prune", concepts=concepts, classes=classes or "all"))


def set_weight(model: ConceptBottleneckModel, concept: str, class_name: str, value: float) -> EditResult:
    """Set the head weight of ``concept`` for ``class_name`` (on the standardised score)."""
    names = list(model.concepts.names)
    concept = _resolve(concept, names, "concept")
    class_name = _resolve(class_name, list(model.classes), "class")
    if not math.isfinite(float(value)):
        raise ConceptError(f"A weight must be a finite number; got {value}.")
    k, c = names.index(concept), model.classes.index(class_name)
    weight = model.weight.clone()
    old = float(weight[c, k])
    weight[c, k] = float(value)
    return _edited(model, weight, _entry("set_weight", concept=concept, class_name=class_name, old=old,
                                         new=float(value)))


def adapt_concepts(model: ConceptBottleneckModel, mask: Sequence[str] = (), amplify: Mapping[str, float] | None = None,
                   details: dict | None = None) -> EditResult:
    """Mask concepts (their weights zeroed for every class) and amplify others (their weights
    multiplied by a factor), as one ``adapt`` entry; ``details`` (JSON: the evidence, the images it was
    found from) is kept in the entry. ``adaptation.propose_adaptation`` finds what to pass here."""
    names = list(model.concepts.names)
    mask = list(dict.fromkeys(_resolve(c, names, "concept") for c in mask))
    factors: dict[str, float] = {}
    for concept, factor in (amplify or {}).items():
        concept = _resolve(concept, names, "concept")
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor <= 0:
            raise ConceptError(f"The factor for '{concept}' must be a positive finite number; got {factor!r}.")
        factors[concept] = float(factor)
    both = sorted(set(mask) & set(factors))
    if both:
        raise ConceptError(f"A concept cannot be both masked and amplified: {', '.join(map(repr, both))}.")
    if not mask and not factors:
        raise ConceptError("Name at least one concept to mask or amplify.")
    weight = model.weight.clone()
    for concept in mask:
        weight[:, names.index(concept)] = 0.0
    for concept, factor in factors.items():
        weight[:, names.index(concept)] *= factor
    extra = {k: v for k, v in (details or {}).items() if k not in ("op", "mask", "amplify", "time")}
    return _edited(model, weight, _entry("adapt", mask=mask, amplify=factors, **extra))


def replay(model: ConceptBottleneckModel, log: Sequence[dict]) -> ConceptBottleneckModel:
    """Apply a saved edit log (e.g. from another bundle) to ``model``."""
    for i, entry in enumerate(log):
        try:
            if entry["op"] == "prune":
                classes = None if entry.get("classes") in (None, "all") else entry["classes"]
                model = prune_concepts(model, entry["concepts"], classes).model
            elif entry["op"] == "set_weight":
                model = set_weight(model, entry["concept"], entry["class_name"], entry["new"]).model
            elif entry["op"] == "adapt":
                if not isinstance(entry.get("mask", []), list) or not isinstance(entry.get("amplify", {}), dict):
                    raise TypeError("an adapt entry's mask must be a list and its amplify an object")
                details = {k: v for k, v in entry.items() if k not in ("op", "mask", "amplify", "time", "metrics_before")}
                model = adapt_concepts(model, entry.get("mask", []), entry.get("amplify", {}), details).model
            else:
                raise ConceptError(f"Unknown edit '{entry['op']}' in the edit log.")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConceptError(f"Edit log entry {i + 1} is malformed ({type(exc).__name__}: {exc}).") from None
    return model
