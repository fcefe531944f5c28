"""Counterfactuals: the fewest concept changes, within the observed range, that make a class win.

The head is linear in the standardised scores, so moving concept k from z_k to z'_k changes
every logit by ``W[:, k] (z'_k - z_k)``. Candidates are each concept at its ``low`` or
``high`` training percentile (5th / 95th by default). Greedy search adds the change that
raises the target's margin over its strongest rival the most, until the target wins; then
changes that are no longer needed are dropped. Exact for one change; a small, not always
minimum, set beyond that.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.interventions import Intervention
from ..core.model import ConceptBottleneckModel


@dataclass(frozen=True)
class Counterfactual:
    """``intervention`` makes ``target`` win when ``success``; ``changes`` lists
    ``(concept, old raw score, new raw score, new percentile)``; probabilities before and after."""

    target: str
    success: bool
    intervention: Intervention
    changes: tuple[tuple[str, float, float, float], ...]
    probs_before: torch.Tensor
    probs_after: torch.Tensor


def _margin(logits: torch.Tensor, target: int) -> torch.Tensor:
    """logits: (..., C) -> target logit minus the best other logit, (...)."""
    others = logits.clone()
    others[..., target] = float("-inf")
    return logits[..., target] - others.max(dim=-1).values


def counterfactual(model: ConceptBottleneckModel, embedding: torch.Tensor, target: str | int,
                   low: float = 5.0, high: float = 95.0, max_changes: int | None = None) -> Counterfactual:
    """embedding: (D,) or (1, D) unit-norm. Returns a ``Counterfactual`` for class ``target``."""
    emb = embedding.reshape(1, -1).float()
    t = model.class_index(target) if isinstance(target, str) else int(target)
    scores = model.concept_scores(emb)[0]
    logits0 = model.head(scores[None], emb)[0]
    K = len(scores)
    candidates = torch.stack([model.stats.values_at(low), model.stats.values_at(high)])  # (2, K) raw values
    levels = (float(low), float(high))
    W, std = model.weight, model.stats.std
    current = scores.clone()
    logits = logits0.clone()
    chosen: dict[int, float] = {}
    chosen_pct: dict[int, float] = {}
    limit = K if max_changes is None else max_changes
    while _margin(logits, t) <= 0 and len(chosen) < limit:
        dz = (candidates - current[None, :]) / std[None, :]  # (2, K)
        trial = logits[None, None, :] + dz[..., None] * W.T[None, :, :]  # (2, K, C)
        m = _margin(trial, t)
        if chosen:
            m[:, list(chosen)] = float("-inf")
        best = int(m.argmax())
        side, k = divmod(best, K)
        if m.view(-1)[best] <= _margin(logits, t) + 1e-9:
            break  # nothing helps any more
        chosen[k] = float(candidates[side, k])
        chosen_pct[k] = levels[side]
        logits = trial[side, k]
        current[k] = candidates[side, k]
    success = bool(_margin(logits, t) > 0)
    if success:  # drop changes the target no longer needs, least useful first
        for k in sorted(chosen, key=lambda k: abs(float(W[t, k]) * (chosen[k] - float(scores[k])) / float(std[k]))):
            trial_scores = current.clone()
            trial_scores[k] = scores[k]
            if _margin(model.head(trial_scores[None], emb)[0], t) > 0:
                current = trial_scores
                del chosen[k]
    intervention = Intervention()
    for k in chosen:
        intervention = intervention.set(model.concepts.names[k], percentile=chosen_pct[k])
    after = model.head(model.intervene(scores[None], intervention), emb)[0]
    return Counterfactual(model.classes[t], success and int(after.argmax()) == t, intervention,
                          tuple((model.concepts.names[k], float(scores[k]), v, chosen_pct[k]) for k, v in chosen.items()),
                          logits0.softmax(-1), after.softmax(-1))
