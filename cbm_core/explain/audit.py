"""Does the model really use its concepts? A bypass and leakage audit, per model.

A concept bottleneck only explains a prediction if the prediction goes through the concepts. Elsewhere,
deleting all 26 concepts of a CBM cost 1.6 points of accuracy, because a residual path carried the
class around them. ``concept_audit`` measures, on labelled data the model was not fitted on:

- **bypass**: the accuracy with every concept set to its "absent" reference (its 5th training
  percentile — for concept probabilities, the first percentile reading absent; ``tti.answer_values``).
  The concept part of every logit is then the same for every image, so only the bias and a residual
  head (PCBM-h) can still tell classes apart: it should fall to chance (the largest class's share);
- **residual share**: the mean share of the predicted class's |logit parts| carried by the residual
  head (0 without one);
- **leakage**: the accuracy when each concept is set to its present or absent reference by whether it
  is (probably) present (``reliability.presence_calibration``) — the head then sees only *which*
  concepts are there. A large gap to the model's accuracy means the scores carry class information
  beyond presence (soft-score leakage, Mahinpei et al. 2021); with concept labels, also the accuracy
  with every concept set by its true label (Koh et al.'s full intervention);
- **named vs random vs shuffled** at matched NEC: the same elastic-net head refitted on the named
  concepts, on as many random unit directions, and (text-cosine layers) on prompts of the concept
  names' words shuffled among them ("crown wing" for "red crown"), each at the model's own NEC, chosen
  on a held-out quarter of the fitting data and measured on the test data. Named concepts must win
  clearly (VLG-CBM's sanity check; WaffleCLIP's random-words control);
- with concept labels, the mean AUROC of each concept's score for its own label against the mean
  over every other concept's label (what a name that meant nothing in particular would score).

The checks fall in two groups: whether the model *uses* its concepts (bypass, residual, leakage:
``uses_concepts``), and whether their *names* carry the accuracy (random directions, shuffled names,
labels: ``name_checks``). On a small embedding (the demo's 64-d) as many random directions span most
of it, so a failed name control there says the accuracy alone cannot show the names matter — not
that the model bypasses them.

The result is stored in ``metrics[AUDIT_KEY]`` (``with_audit``); an edit changes the head, so an
edited model's stored audit is dropped by ``edits`` and must be run again.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from ..core.model import ConceptBottleneckModel

AUDIT_KEY = "concept_audit"
BYPASS_MARGIN = 0.10  # accuracy above chance with every concept absent that counts as a bypass
RESIDUAL_LIMIT = 0.30
LEAKAGE_LIMIT = 0.10
NAMED_MARGIN = 0.02


@dataclass(frozen=True)
class ConceptAudit:
    """Accuracies are fractions on the test data (``n_test`` images); see the module docstring."""

    n_test: int
    accuracy: float
    chance: float
    absent_accuracy: float
    residual_share: float
    presence_accuracy: float
    truth_accuracy: float | None
    nec: float
    named_at_nec: float | None = None
    random_at_nec: float | None = None
    shuffled_at_nec: float | None = None
    matched_necs: dict = field(default_factory=dict)
    label_auroc: float | None = None
    shuffled_label_auroc: float | None = None
    fitted_on: str = ""
    tested_on: str = ""

    USE_CHECKS = ("bypass", "residual", "leakage")

    def checks(self) -> list[tuple[str, bool, str]]:
        """(name, passed, sentence) for every check that could be run."""
        out = []
        gap = self.absent_accuracy - self.chance
        out.append(("bypass", gap <= BYPASS_MARGIN,
                    f"With every concept absent, accuracy is {self.absent_accuracy:.1%} (chance {self.chance:.1%})"
                    + (": the prediction needs the concepts." if gap <= BYPASS_MARGIN else
                       ": the class gets through without the concepts — a bypass.")))
        if self.residual_share > 0:
            ok = self.residual_share <= RESIDUAL_LIMIT
            out.append(("residual", ok, f"The residual head carries {self.residual_share:.0%} of the predicted class's "
                                         f"evidence on average{'.' if ok else ': much of each prediction is not explained by concepts.'}"))
        leak = self.accuracy - self.presence_accuracy
        out.append(("leakage", leak <= LEAKAGE_LIMIT,
                    f"Knowing only which concepts are present gives {self.presence_accuracy:.1%} against "
                    f"{self.accuracy:.1%} with the scores"
                    + ("." if leak <= LEAKAGE_LIMIT else
                       f": {leak * 100:.0f} points come from how strong the scores are, not from what is present "
                       "(information leaking through the scores).")))
        if self.named_at_nec is not None and self.random_at_nec is not None:
            gap = self.named_at_nec - self.random_at_nec
            out.append(("random directions", gap >= NAMED_MARGIN,
                        f"At NEC {self.nec:.1f}: named concepts {self.named_at_nec:.1%}, random directions "
                        f"{self.random_at_nec:.1%} ({gap * 100:+.1f} pts)."))
        if self.named_at_nec is not None and self.shuffled_at_nec is not None:
            gap = self.named_at_nec - self.shuffled_at_nec
            out.append(("shuffled names", gap >= NAMED_MARGIN,
                        f"At NEC {self.nec:.1f}: named concepts {self.named_at_nec:.1%}, the same words shuffled "
                        f"among the names {self.shuffled_at_nec:.1%} ({gap * 100:+.1f} pts)."))
        if self.label_auroc is not None and self.shuffled_label_auroc is not None:
            ok = self.label_auroc - self.shuffled_label_auroc >= 0.1
            out.append(("names match labels", ok,
                        f"Each concept's score tracks its own label with mean AUROC {self.label_auroc:.3f}, "
                        f"every other concept's with {self.shuffled_label_auroc:.3f} on average."))
        return out

    @property
    def passed(self) -> bool:
        return all(ok for _, ok, _ in self.checks())

    @property
    def uses_concepts(self) -> bool:
        """Bypass, residual and leakage checks all passed: the predictions go through the concepts."""
        return all(ok for name, ok, _ in self.checks() if name in self.USE_CHECKS)

    def name_checks(self) -> list[tuple[str, bool, str]]:
        """The checks of whether the names carry the accuracy (random directions, shuffled names, labels)."""
        return [c for c in self.checks() if c[0] not in self.USE_CHECKS]

    def verdict(self) -> str:
        """E.g. "uses its concepts; names not shown to matter: shuffled names" or "fails: bypass"."""
        return verdict_of(self.checks())

    def to_json(self) -> dict:
        return {k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict) -> "ConceptAudit":
        if not isinstance(data, dict):
            raise ValueError("the stored audit is not a table")
        out = {}
        for name, f in cls.__dataclass_fields__.items():
            v = data.get(name)
            if f.type in ("float", "int") and not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)):
                raise ValueError(f"the stored audit's {name} is not a number")
            if f.type == "float | None" and v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool)
                                                                    and math.isfinite(v)):
                raise ValueError(f"the stored audit's {name} is not a number")
            if f.type == "dict":
                v = v if isinstance(v, dict) else {}
            if f.type == "str":
                v = str(v or "")[:200]
            out[name] = v
        return cls(**out)


def verdict_of(checks) -> str:
    """The audit's verdict from its ``checks()`` (name, passed, sentence): whether the predictions go
    through the concepts, then whether the names were shown to matter."""
    failed_use = [name for name, ok, _ in checks if not ok and name in ConceptAudit.USE_CHECKS]
    failed_names = [name for name, ok, _ in checks if not ok and name not in ConceptAudit.USE_CHECKS]
    head = "uses its concepts" if not failed_use else "fails: " + ", ".join(failed_use)
    return head + (f"; names not shown to matter: {', '.join(failed_names)}" if failed_names else "")


def stored_audit(model: ConceptBottleneckModel) -> ConceptAudit | None:
    """The audit stored with this model (``with_audit``), or None (never audited, or malformed)."""
    data = model.metrics.get(AUDIT_KEY)
    try:
        return ConceptAudit.from_json(data) if data is not None else None
    except (ValueError, TypeError):
        return None


def with_audit(model: ConceptBottleneckModel, audit: ConceptAudit) -> ConceptBottleneckModel:
    return model.with_changes(metrics={**model.metrics, AUDIT_KEY: audit.to_json()})


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean())


def _at_nec(fit_scores: torch.Tensor, fit_labels: torch.Tensor, test_scores: torch.Tensor, test_labels: torch.Tensor,
            n_classes: int, nec: float, l1_ratio: float, seed: int, n_lambdas: int = 12,
            max_iter: int = 500) -> tuple[float | None, float | None]:
    """Test accuracy (and NEC) of an elastic-net head on raw scores, at the path point with the best
    accuracy on a held-out quarter of the fitting data among those with NEC <= ``nec``."""
    from ..recipes.elastic_net import head_accuracy, regularization_path

    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(fit_scores), generator=g)
    cut = max(1, len(order) // 4)
    held, fit = order[:cut], order[cut:]
    mean, std = fit_scores[fit].mean(0), fit_scores[fit].std(0).clamp_min(1e-6)
    z = lambda s: (s.float() - mean) / std  # noqa: E731
    points, results = regularization_path(z(fit_scores[fit]), fit_labels[fit], n_classes, l1_ratio=l1_ratio,
                                          n_lambdas=n_lambdas, X_val=z(fit_scores[held]), y_val=fit_labels[held],
                                          max_iter=max_iter)
    ok = [i for i, p in enumerate(points) if 0 < p.nec <= nec + 1e-9]
    if not ok:
        return None, None
    # Matched NEC: the path point nearest the model's NEC from below (the held-out accuracy breaks ties),
    # so that no control gets more concepts per class than another.
    best = max(ok, key=lambda i: (points[i].nec, points[i].val_accuracy))
    res = results[best]
    return head_accuracy(z(test_scores), test_labels, res.weight, res.bias), points[best].nec


def _shuffled_names(names, seed: int) -> list[str]:
    """Each name's word count filled with words drawn from all the names' words, never the name itself."""
    import random

    rng = random.Random(seed)
    words = [w for n in names for w in n.split()]
    out = []
    for n in names:
        k = max(1, len(n.split()))
        for _ in range(20):
            cand = " ".join(rng.choice(words) for _ in range(k))
            if cand != n:
                break
        out.append(cand)
    return out


def concept_audit(model: ConceptBottleneckModel, fit_on, test_on, *, backbone=None,
                  test_concept_labels: torch.Tensor | None = None, fitted_on: str = "", tested_on: str = "",
                  seed: int = 0, controls: bool = True) -> ConceptAudit:
    """Audit ``model`` (see the module docstring). ``fit_on`` / ``test_on``: ``FeatureSet``-likes with
    ``embeddings`` and ``labels`` the model was not trained on (the matched-NEC heads are fitted on
    ``fit_on``, everything is measured on ``test_on``). ``backbone``: for the shuffled-names control
    (text-cosine layers). ``test_concept_labels``: (N, K) in the model's concept order, NaN unknown.
    ``controls=False`` skips the matched-NEC refits (the slow part: three regularisation paths)."""
    from ..core.concept_layer import TextCosine
    from .reliability import auroc, presence_calibration
    from .tti import answer_values

    X, y = test_on.embeddings, torch.as_tensor(test_on.labels)
    C = len(model.classes)
    exp = model.explain_features(X)
    accuracy = _accuracy(exp.logits, y)
    chance = float(torch.bincount(y, minlength=C).max()) / len(y)
    present_ref, absent_ref = answer_values(model)
    residual = exp.residual if exp.residual is not None else 0.0
    head = lambda s: model.standardize(s) @ model.weight.T + model.bias + residual  # noqa: E731
    absent_accuracy = _accuracy(head(absent_ref.expand_as(exp.scores)), y)
    p = presence_calibration(model).predict(exp.scores)
    presence_accuracy = _accuracy(head(torch.where(p >= 0.5, present_ref, absent_ref)), y)
    truth_accuracy = label_auroc = shuffled_auroc = None
    if test_concept_labels is not None and not torch.isnan(test_concept_labels).any():
        truth_accuracy = _accuracy(head(torch.where(test_concept_labels > 0.5, present_ref, absent_ref)), y)
    if test_concept_labels is not None:
        own, other = [], []
        K = model.n_concepts
        for k in range(K):
            rest = []
            for target in range(K):
                lab = test_concept_labels[:, target]
                known = ~torch.isnan(lab)
                a = auroc(exp.scores[known, k], lab[known]) if known.any() else None
                if a is None:
                    continue
                (own if target == k else rest).append(a)
            if rest:  # every other concept's label, averaged: neither a neighbour nor an opposite
                other.append(sum(rest) / len(rest))
        label_auroc = sum(own) / len(own) if own else None
        shuffled_auroc = sum(other) / len(other) if other and K > 1 else None
    nec = model.sparsity()["nec"]
    residual_share = float(exp.residual_share().mean())
    if not controls:
        return ConceptAudit(len(y), accuracy, chance, absent_accuracy, residual_share, presence_accuracy,
                            truth_accuracy, nec, label_auroc=label_auroc, shuffled_label_auroc=shuffled_auroc,
                            fitted_on=fitted_on, tested_on=tested_on)
    l1 = float(model.recipe.get("l1_ratio", 0.99)) if isinstance(model.recipe.get("l1_ratio", 0.99), (int, float)) else 0.99
    fit_x, fit_y = fit_on.embeddings, torch.as_tensor(fit_on.labels)
    named, named_nec = _at_nec(model.concept_scores(fit_x), fit_y, exp.scores, y, C, nec, l1, seed)
    g = torch.Generator().manual_seed(seed)
    directions = TextCosine(torch.nn.functional.normalize(torch.randn(model.n_concepts, model.embed_dim, generator=g), dim=1))
    rand, rand_nec = _at_nec(directions(fit_x.float()), fit_y, directions(X.float()), y, C, nec, l1, seed)
    shuffled = shuffled_nec = None
    if backbone is not None and isinstance(model.concept_layer, TextCosine):
        words = TextCosine(backbone.embed_prompts(_shuffled_names(model.concepts.names, seed), model.templates).float())
        shuffled, shuffled_nec = _at_nec(words(fit_x.float()), fit_y, words(X.float()), y, C, nec, l1, seed)
    return ConceptAudit(len(y), accuracy, chance, absent_accuracy, residual_share, presence_accuracy,
                        truth_accuracy, nec, named, rand, shuffled,
                        {"named": named_nec, "random": rand_nec, "shuffled": shuffled_nec}, label_auroc, shuffled_auroc,
                        fitted_on, tested_on)
