"""Training-free test-time improvement: repair a CBM for a shifted domain from a few labelled images.

After He et al., "Training-free Test-time Improvement for Explainable Medical Image Classification"
(2025): a model moved to another hospital, stain or scanner sees some concepts *mis-activated*
(a colour cast lights up "red crown" on every image) and others *under-activated* (a smaller bird
makes "long beak" fainter). From about 4 labelled target images per class, and no training, we

- **mask** mis-activated confounding concepts: the concept's weights are zeroed (its score no
  longer reaches the head);
- **amplify** under-activated discriminative concepts: the concept's weights are multiplied by a
  factor (1.5, 2 or 3), i.e. its deviation from the training mean counts that much more.

Both are global edits of the head's columns (``edits.adapt_concepts``), kept in the edit log and
replayable. Which concepts, by evidence then by search:

1. *Evidence.* For each concept k, its first-order effect on the target images' true-class
   log-probability if its column were scaled, ``G_k = mean_i z_ik (W[y_i, k] − Σ_c q_ic W[c, k])``:
   G_k < 0 — as activated on the target, the concept pushes images away from their own class (a
   masking candidate); G_k > 0 — it helps, and helps more if stronger (an amplifying candidate).
   Shown with the concept's mean activation on target vs source images.
2. *Search.* Greedy: add the candidate edit that most raises the target images' mean true-class
   log-likelihood (by at least ``min_gain``), refusing any edit that lowers accuracy on the source
   validation images by more than ``source_tolerance``; stop after ``max_edits`` or when nothing
   qualifies. No gradient step, no new weights: a handful of discrete choices, each shown with its
   evidence and its effect, for the user to accept on the Edit page.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from .edits import EditResult, adapt_concepts
from ..errors import CBMError
from ..core.model import ConceptBottleneckModel

FACTORS = (1.5, 2.0, 3.0)


class AdaptationError(CBMError):
    """Target images that cannot drive an adaptation (too few, unknown classes, wrong shape)."""


@dataclass(frozen=True)
class ConceptEdit:
    """One proposed change: ``action`` ``mask`` (factor 0) or ``amplify`` (factor > 1), with its
    evidence: ``effect`` (G_k, see the module docstring), mean standardised activation on target and
    source images, and the target log-likelihood / accuracy gain when it was added."""

    concept: str
    action: str
    factor: float
    effect: float
    target_activation: float
    source_activation: float | None
    loglik_gain: float
    accuracy_after: float

    def describe(self) -> str:
        if self.action == "mask":
            return f"mask '{self.concept}' (mis-activated on the new data: it pushes images away from their class)"
        return f"amplify '{self.concept}' ×{self.factor:g} (under-activated on the new data, and it helps)"


@dataclass(frozen=True)
class AdaptationProposal:
    """What ``propose_adaptation`` found. Accuracies: ``target_*`` on the few labelled target images,
    ``source_*`` on the source validation images (None without them)."""

    edits: tuple[ConceptEdit, ...]
    n_images: int
    n_per_class: dict
    target_before: float
    target_after: float
    source_before: float | None
    source_after: float | None
    candidates: tuple[ConceptEdit, ...] = field(default=(), repr=False)

    @property
    def mask(self) -> tuple[str, ...]:
        return tuple(e.concept for e in self.edits if e.action == "mask")

    @property
    def amplify(self) -> dict[str, float]:
        return {e.concept: e.factor for e in self.edits if e.action == "amplify"}

    def apply(self, model: ConceptBottleneckModel) -> EditResult:
        """The adapted model, with an ``adapt`` entry (masks, factors, evidence) in its edit log."""
        if not self.edits:
            raise AdaptationError("No change was found that helps on these images without hurting the source data; "
                                  "there is nothing to apply. Try more images per class.")
        evidence = {e.concept: {"action": e.action, "effect": round(e.effect, 6),
                                "target_activation": round(e.target_activation, 6),
                                "source_activation": None if e.source_activation is None else round(e.source_activation, 6),
                                "loglik_gain": round(e.loglik_gain, 6)} for e in self.edits}
        return adapt_concepts(model, self.mask, self.amplify, details={
            "n_images": self.n_images, "n_per_class": self.n_per_class,
            "target_accuracy": [round(self.target_before, 6), round(self.target_after, 6)],
            **({"source_accuracy": [round(self.source_before, 6), round(self.source_after, 6)]}
               if self.source_before is not None else {}),
            "evidence": evidence})

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame([{"concept": e.concept, "action": e.action, "factor": e.factor, "effect": e.effect,
                              "target activation": e.target_activation, "source activation": e.source_activation,
                              "log-likelihood gain": e.loglik_gain, "target accuracy after": e.accuracy_after}
                             for e in self.edits])

    def candidates_frame(self):
        """Every concept's evidence (the candidates considered), strongest effect first."""
        import pandas as pd

        frame = pd.DataFrame([{"concept": e.concept, "suggests": e.action, "effect": e.effect,
                               "target activation": e.target_activation, "source activation": e.source_activation}
                              for e in self.candidates])
        return frame.reindex(frame.effect.abs().sort_values(ascending=False).index).reset_index(drop=True) \
            if len(frame) else frame


def _parts(model: ConceptBottleneckModel, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardised scores z (N, K) and the fixed part of the logits (N, C): bias + residual head."""
    emb = embeddings.float()
    z = model.standardize(model.concept_scores(emb))
    fixed = model.bias.expand(len(emb), -1)
    if model.residual_weight is not None:
        fixed = fixed + emb @ model.residual_weight.T
    return z, fixed


def propose_adaptation(model: ConceptBottleneckModel, target_embeddings: torch.Tensor, target_labels: torch.Tensor, *,
                       source_embeddings: torch.Tensor | None = None, source_labels: torch.Tensor | None = None,
                       factors: Sequence[float] = FACTORS, max_edits: int = 8, min_gain: float = 0.01,
                       source_tolerance: float = 0.0, source_loglik_tolerance: float | None = 0.02
                       ) -> AdaptationProposal:
    """Masks and amplifications for a shifted domain (see the module docstring). target_embeddings:
    (N, D) a few labelled images of the new domain with target_labels (N,); source_*: validation
    images of the data the model was built on, so no edit may cost accuracy there."""
    y = torch.as_tensor(target_labels, dtype=torch.long)
    if target_embeddings.ndim != 2 or len(target_embeddings) != len(y) or len(y) == 0:
        raise AdaptationError(f"Give (N, D) target embeddings with N labels; got {tuple(target_embeddings.shape)} and "
                              f"{len(y)} labels.")
    C = len(model.classes)
    if int(y.min()) < 0 or int(y.max()) >= C:
        raise AdaptationError(f"Target labels must be class indices in [0, {C}).")
    if any(float(f) <= 1.0 for f in factors):
        raise AdaptationError(f"Amplifying factors must be above 1; got {list(factors)}.")
    W = model.weight
    K = W.shape[1]
    z_t, fixed_t = _parts(model, target_embeddings)
    has_source = source_embeddings is not None and source_labels is not None
    if has_source:
        y_s = torch.as_tensor(source_labels, dtype=torch.long)
        z_s, fixed_s = _parts(model, source_embeddings)

    def scores(z, fixed, scale):
        return (z * scale) @ W.T + fixed

    def loglik(scale):
        return float(-F.cross_entropy(scores(z_t, fixed_t, scale), y))

    def acc(z, fixed, labels, scale):
        return float((scores(z, fixed, scale).argmax(-1) == labels).float().mean())

    scale = torch.ones(K)
    counts = torch.bincount(y, minlength=C)
    n_per_class = {model.classes[c]: int(counts[c]) for c in range(C) if int(counts[c])}
    target_before = acc(z_t, fixed_t, y, scale)
    source_before = acc(z_s, fixed_s, y_s, scale) if has_source else None
    floor = source_before - source_tolerance if has_source else None
    if has_source and source_loglik_tolerance is not None:
        ll_floor = float(-F.cross_entropy(scores(z_s, fixed_s, scale), y_s)) - source_loglik_tolerance
    # Mean activations per concept (the evidence shown): over the target images, and over the source
    # images of the same classes, so a class mix does not masquerade as a shift.
    target_mean = z_t.mean(0)
    if has_source:
        in_classes = torch.isin(y_s, y)
        source_mean = z_s[in_classes].mean(0) if bool(in_classes.any()) else z_s.mean(0)

    def effect(scale):
        q = scores(z_t, fixed_t, scale).softmax(-1)
        return (z_t * scale * (W[y] - q @ W)).mean(0)  # d mean log q_y / d log(column scale), per concept

    def edit(k, action, factor, eff, gain, accuracy_after):
        return ConceptEdit(model.concepts.names[k], action, float(factor), float(eff[k]), float(target_mean[k]),
                           float(source_mean[k]) if has_source else None, float(gain), float(accuracy_after))

    eff0 = effect(scale)
    used = (W != 0).any(0)
    candidates = tuple(edit(k, "mask" if float(eff0[k]) < 0 else "amplify", 0.0 if float(eff0[k]) < 0 else 1.0,
                            eff0, 0.0, target_before) for k in range(K) if bool(used[k]))
    chosen: list[ConceptEdit] = []
    current = loglik(scale)
    for _ in range(int(max_edits)):
        eff = effect(scale)
        best = None
        for k in range(K):
            if not bool(used[k]) or float(scale[k]) != 1.0:
                continue
            options = [0.0] if float(eff[k]) < 0 else [float(f) for f in factors] if float(eff[k]) > 0 else []
            for factor in options:
                trial = scale.clone()
                trial[k] = factor
                value = loglik(trial)
                if value < current + min_gain or (best is not None and value <= best[0]):
                    continue
                if has_source and acc(z_s, fixed_s, y_s, trial) < floor:
                    continue
                if (has_source and source_loglik_tolerance is not None
                        and float(-F.cross_entropy(scores(z_s, fixed_s, trial), y_s)) < ll_floor):
                    continue
                best = (value, k, factor)
        if best is None:
            break
        value, k, factor = best
        scale[k] = factor
        chosen.append(edit(k, "mask" if factor == 0.0 else "amplify", factor, eff, value - current,
                           acc(z_t, fixed_t, y, scale)))
        current = value
    return AdaptationProposal(tuple(chosen), len(y), n_per_class, target_before, acc(z_t, fixed_t, y, scale),
                              source_before, acc(z_s, fixed_s, y_s, scale) if has_source else None, candidates)


def few_shot(labels: torch.Tensor, n_per_class: int, seed: int = 0) -> torch.Tensor:
    """Row indices of ``n_per_class`` images of every class in ``labels`` (fewer where a class has
    fewer), drawn with ``seed``: the "few labelled target images" of an experiment."""
    labels = torch.as_tensor(labels)
    g = torch.Generator().manual_seed(int(seed))
    rows = []
    for c in torch.unique(labels).tolist():
        idx = (labels == c).nonzero().flatten()
        rows.append(idx[torch.randperm(len(idx), generator=g)[:n_per_class]])
    return torch.cat(rows).sort().values


def adaptation_sweep(model: ConceptBottleneckModel, target_pool, target_test, source_val, source_test, *,
                     shots: Sequence[int] = (1, 2, 4, 8, 16), draws: int = 5, **options) -> list[dict]:
    """Accuracy on the shifted test set and the source test set after adapting from ``n`` labelled target
    images per class (drawn ``draws`` times from ``target_pool``), for each n in ``shots``. Each data
    argument is a ``FeatureSet`` (embeddings, labels). One row per (n, draw)."""
    from .evaluation import evaluate

    rows = []
    base_target = evaluate(model, target_test.embeddings, target_test.labels).accuracy
    base_source = evaluate(model, source_test.embeddings, source_test.labels).accuracy
    for n in shots:
        for draw in range(draws):
            pick = few_shot(target_pool.labels, n, seed=draw)
            proposal = propose_adaptation(model, target_pool.embeddings[pick], target_pool.labels[pick],
                                          source_embeddings=source_val.embeddings, source_labels=source_val.labels,
                                          **options)
            adapted = proposal.apply(model).model if proposal.edits else model
            rows.append({"n_per_class": n, "draw": draw, "edits": len(proposal.edits),
                         "masked": list(proposal.mask), "amplified": proposal.amplify,
                         "target_before": base_target,
                         "target_after": evaluate(adapted, target_test.embeddings, target_test.labels).accuracy,
                         "source_before": base_source,
                         "source_after": evaluate(adapted, source_test.embeddings, source_test.labels).accuracy})
    return rows
