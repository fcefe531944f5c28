"""The head of a model for one image, cut down to a few concepts with everything else held fixed.

Because the head is linear over standardised scores, changing only concepts ``S`` leaves

    logits = base + weight @ z_S          base: (C,), weight: (C, |S|), z_S: (|S|,)

where ``base`` holds the bias, the residual head and every other concept's contribution (under
whatever intervention is already active). That is a few hundred numbers for a dozen concepts, small
enough to send to a browser, which then recomputes the prediction on every slider move without a
round trip to the server. ``logits`` / ``probs`` here are the reference the browser code is tested
against; they equal ``ConceptBottleneckModel.explain_features`` exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from ..core.interventions import Intervention
from ..core.model import ConceptBottleneckModel


@dataclass(frozen=True, eq=False)
class HeadSlice:
    """concepts: |S| names; z: (|S|,) standardised scores now (under ``intervention``);
    percentiles: (|S|,) of those scores in training; z_grid: (|S|, 101) the standardised score at
    each whole training percentile; weight: (C, |S|); base: (C,); z_original, percentiles_original:
    (|S|,) and original_probs: (C,) with no intervention at all. A concept switched off sits at its
    training mean, i.e. z = 0."""

    concepts: tuple[str, ...]
    classes: tuple[str, ...]
    intervention: Intervention
    z: torch.Tensor
    percentiles: torch.Tensor
    z_grid: torch.Tensor
    weight: torch.Tensor
    base: torch.Tensor
    z_original: torch.Tensor
    percentiles_original: torch.Tensor
    original_probs: torch.Tensor

    @classmethod
    def from_model(cls, model: ConceptBottleneckModel, embedding: torch.Tensor, concepts: Sequence[str],
                   intervention: Intervention | None = None) -> "HeadSlice":
        """embedding: (D,) one encoded image."""
        intervention = intervention or Intervention()
        idx = [model.concepts.index(name) for name in concepts]
        emb = embedding.reshape(1, -1)
        now, original = model.explain_features(emb, intervention), model.explain_features(emb)
        z = now.z[0, idx]
        weight = model.weight[:, idx]
        base = now.logits[0] - weight @ z
        stats = model.stats
        z_grid = ((stats.quantiles[:, idx] - stats.mean[idx]) / stats.std[idx]).T.contiguous()
        return cls(tuple(model.concepts.names[k] for k in idx), model.classes, intervention, z,
                   now.percentiles[0, idx], z_grid, weight.contiguous(), base, original.z[0, idx],
                   original.percentiles[0, idx], original.probs[0])

    def z_at(self, i: int, percentile: float) -> float:
        """Standardised score of concept i at ``percentile`` (0-100), interpolated between whole
        percentiles the same way ``ConceptStats.values_at`` is."""
        p = min(max(float(percentile), 0.0), 100.0)
        j = min(int(p), 99)
        return float(self.z_grid[i, j] + (p - j) * (self.z_grid[i, j + 1] - self.z_grid[i, j]))

    def intervention_with(self, settings: Mapping[str, Mapping] | None = None) -> Intervention:
        """The slice's intervention after ``settings``; see ``apply_settings``."""
        return apply_settings(self.intervention, settings)

    def logits(self, settings: Mapping[str, Mapping] | None = None) -> torch.Tensor:
        """(C,) logits after ``settings`` (see ``intervention_with``) without running the model:
        equal to the model's logits under ``intervention_with(settings)``."""
        z = self.z.clone()
        for name, setting in (settings or {}).items():
            i = self.concepts.index(name)
            if setting.get("off"):
                z[i] = 0.0
            elif setting.get("percentile") is not None:
                z[i] = self.z_at(i, setting["percentile"])
            else:
                z[i] = self.z_original[i]
        return self.base + self.weight @ z

    def probs(self, settings: Mapping[str, Mapping] | None = None) -> torch.Tensor:
        return self.logits(settings).softmax(dim=-1)

    def to_dict(self) -> dict:
        """Plain lists and floats, ready for JSON."""
        last_op = {c.concept: c.op for c in self.intervention.changes}  # the last change to a concept wins
        return {
            "concepts": list(self.concepts), "classes": list(self.classes),
            "z": self.z.tolist(), "percentiles": self.percentiles.tolist(), "z_grid": self.z_grid.tolist(),
            "weight": self.weight.tolist(), "base": self.base.tolist(),
            "z_original": self.z_original.tolist(), "percentiles_original": self.percentiles_original.tolist(),
            "original_probs": self.original_probs.tolist(),
            "off": [last_op.get(n) == "ablate" for n in self.concepts],
            "changed": [n in last_op for n in self.concepts],
        }


def apply_settings(intervention: Intervention, settings: Mapping[str, Mapping] | None) -> Intervention:
    """``intervention`` after the browser panel's ``settings``: ``{name: {"off": True}}`` switches a
    concept off, ``{name: {"percentile": p}}`` sets it to the training percentile p, ``{name: {}}``
    restores its own score."""
    for name, setting in (settings or {}).items():
        intervention = intervention.without(name)
        if setting.get("off"):
            intervention = intervention.ablate(name)
        elif setting.get("percentile") is not None:
            intervention = intervention.set(name, percentile=float(setting["percentile"]))
    return intervention

