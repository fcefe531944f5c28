"""Test-time intervention (TTI): an expert answers questions about concepts, the prediction follows.

For a model whose concept layer gives probabilities (a concept-supervised bundle: a sigmoid
``LinearProjection``), the dashboard asks "is *red crown* in the image? The model gives it
p = 0.12.". The expert answers

- ``present``: the concept is set to its 95th training percentile (Koh et al. 2020: 5th / 95th),
- ``absent``: to its 5th,
- ``unsure``: nothing changes (the concept counts as asked, so the next question moves on),

each as an ordinary ``Intervention.set(name, percentile=...)``, so HeadSlice, the browser panel,
undo / export and bundles work unchanged. (A concept present in fewer than 5 % of training images
has a 95th percentile that still reads "absent"; for probabilities the percentile used is then
the first one at which the training probability reaches 0.5 — symmetrically for "absent"; where no
training probability reaches 0.5, "present" sets the probability to 1 — symmetrically 0 for "absent" — because
no training percentile would read as the answer.)

Which concept to ask about next (``POLICIES``), all computed from the head alone, which is linear,
so the effect of either answer on every class probability is exact and cheap (N × K × 2 × C):

- ``random``: any unasked concept (seeded);
- ``uncertainty``: the concept whose probability is closest to 0.5 (Koh et al.'s uncertainty policy);
- ``expected_change``: the largest expected KL(q_answer ‖ q) between the class probabilities after
  and before the answer, the two answers weighted by the concept's predicted probability;
- ``coop``: CooP (Chauhan et al., "Interactive Concept Bottleneck Models", AAAI 2023), the
  literature's training-free policy: α · H(p_k) (concept uncertainty, in bits) + β · the expected
  absolute change of the currently predicted class's probability; acquisition costs are all 1 here,
  so CooP's cost term drops out. α, β are chosen on validation data (``tune_coop``). The learnt
  policies of "Learning to Intervene" (Espinosa Zarlenga et al., 2023) need a policy network
  trained with the model, so they are out of scope for a training-free tool.

``intervention_curve`` simulates an expert who always knows (the ground-truth labels): accuracy
after 0, 1, ..., k answers, per policy, with or without propagation to correlated concepts
(``propagation.ConceptDependencies``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

from ..core.concept_layer import LinearProjection
from ..errors import CBMError
from ..core.interventions import Intervention
from ..core.model import ConceptBottleneckModel

ANSWERS = ("present", "absent", "unsure")
POLICIES = ("random", "uncertainty", "expected_change", "coop")
PRESENT_PERCENTILE = 95.0
ABSENT_PERCENTILE = 5.0
DEFAULT_COOP = (1.0, 1.0)


class TTIError(CBMError):
    """A test-time intervention that cannot be done as asked (no concept probabilities, unknown
    policy or answer, data without concept labels)."""


def has_probabilities(model: ConceptBottleneckModel) -> bool:
    """Whether the model's concept scores are probabilities (a concept-supervised bundle)."""
    layer = model.concept_layer
    return isinstance(layer, LinearProjection) and layer.activation == "sigmoid"


def _require_probabilities(model: ConceptBottleneckModel) -> None:
    if not has_probabilities(model):
        raise TTIError(f"Asking an expert about concepts needs concept probabilities: a concept-supervised bundle "
                       f"(recipe 'supervised', built from a dataset with 0/1 concept columns). This model's recipe is "
                       f"'{model.recipe.get('name', '?')}', whose concept scores are not probabilities.")


def answer_percentiles(model: ConceptBottleneckModel, present: float = PRESENT_PERCENTILE,
                       absent: float = ABSENT_PERCENTILE) -> tuple[torch.Tensor, torch.Tensor]:
    """The training percentile each concept is set to for "present" and "absent", (K,) each (see the
    module docstring for the rule on rare or near-universal concepts with probability scores)."""
    stats = model.stats
    K = model.n_concepts
    hi, lo = torch.full((K,), float(present)), torch.full((K,), float(absent))
    if has_probabilities(model):
        q = stats.quantiles  # (101, K)
        for k in range(K):
            if float(stats.value_at(k, present)) < 0.5:
                above = (q[:, k] >= 0.5).nonzero().flatten()
                hi[k] = float(above[0]) if len(above) else 100.0
            if float(stats.value_at(k, absent)) > 0.5:
                below = (q[:, k] <= 0.5).nonzero().flatten()
                lo[k] = float(below[-1]) if len(below) else 0.0
    return hi, lo


def answer_values(model: ConceptBottleneckModel, present: float = PRESENT_PERCENTILE,
                  absent: float = ABSENT_PERCENTILE) -> tuple[torch.Tensor, torch.Tensor]:
    """The raw scores "present" and "absent" set, (K,) each."""
    hi, lo = answer_percentiles(model, present, absent)
    stats = model.stats
    v_hi = torch.tensor([stats.value_at(k, float(p)) for k, p in enumerate(hi.tolist())])
    v_lo = torch.tensor([stats.value_at(k, float(p)) for k, p in enumerate(lo.tolist())])
    if has_probabilities(model):  # no training percentile reads as the answer: the label's own value
        v_hi, v_lo = torch.where(v_hi < 0.5, 1.0, v_hi), torch.where(v_lo > 0.5, 0.0, v_lo)
    return v_hi, v_lo


def apply_answer(model: ConceptBottleneckModel, intervention: Intervention, concept: str, answer: str, *,
                 present: float = PRESENT_PERCENTILE, absent: float = ABSENT_PERCENTILE) -> Intervention:
    """``intervention`` after the expert's ``answer`` about ``concept``: the concept set to its
    "present" / "absent" percentile, or (``unsure``) left to the model — an earlier answer about it
    is replaced either way."""
    if answer not in ANSWERS:
        raise TTIError(f"An answer must be one of {', '.join(ANSWERS)}; got {answer!r}.")
    k = model.concepts.index(concept)
    intervention = intervention.without(concept)
    if answer == "unsure":
        return intervention
    hi, lo = answer_percentiles(model, present, absent)
    percentile = float(hi[k] if answer == "present" else lo[k])
    if has_probabilities(model):
        reads = float(model.stats.value_at(k, percentile))
        if (reads < 0.5) if answer == "present" else (reads > 0.5):  # no training probability crosses 0.5
            return intervention.set(concept, value=1.0 if answer == "present" else 0.0)
    return intervention.set(concept, percentile=percentile)


# -- policies -----------------------------------------------------------------------------------
def _entropy_bits(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-7, 1 - 1e-7)
    return -(p * p.log2() + (1 - p) * (1 - p).log2())


def answer_effects(model: ConceptBottleneckModel, scores: torch.Tensor, values: tuple[torch.Tensor, torch.Tensor],
                   embeddings: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class probabilities now, (N, C), and after answering "present" / "absent" about each concept,
    (N, K, C) each — exact, because the head is linear in each standardised score.
    scores: (N, K) raw scores under the current answers."""
    logits = model.head(scores, embeddings)  # (N, C)
    z = model.standardize(scores)  # (N, K)
    stats = model.stats
    out = []
    for v in values:
        dz = (v - stats.mean) / stats.std - z  # (N, K)
        out.append((logits[:, None, :] + dz[..., None] * model.weight.T[None]).softmax(-1))
    return logits.softmax(-1), out[0], out[1]


def policy_scores(model: ConceptBottleneckModel, scores: torch.Tensor, asked: torch.Tensor, policy: str, *,
                  generator: torch.Generator | None = None, coop: tuple[float, float] = DEFAULT_COOP,
                  values: tuple[torch.Tensor, torch.Tensor] | None = None,
                  embeddings: torch.Tensor | None = None) -> torch.Tensor:
    """How much each unasked concept is worth asking about, (N, K) (higher first; asked ones −inf).
    scores: (N, K) raw scores under the answers so far (probabilities); asked: (N, K) bool."""
    if policy not in POLICIES:
        raise TTIError(f"Unknown policy {policy!r}; choose one of {', '.join(POLICIES)}.")
    p = scores.clamp(0.0, 1.0)
    if policy == "random":
        out = torch.rand(scores.shape, generator=generator)
    elif policy == "uncertainty":
        out = -(p - 0.5).abs()
    else:
        values = values if values is not None else answer_values(model)
        q, q_present, q_absent = answer_effects(model, scores, values, embeddings)
        if policy == "expected_change":
            def kl(a):
                return (a * (a.clamp_min(1e-12).log() - q[:, None, :].clamp_min(1e-12).log())).sum(-1)
            out = p * kl(q_present) + (1 - p) * kl(q_absent)
        else:
            top = q.argmax(-1)  # (N,)
            idx = top[:, None, None].expand(-1, scores.shape[1], 1)
            now = q.gather(1, top[:, None])  # (N, 1)
            change = (p * (q_present.gather(2, idx)[..., 0] - now).abs()
                      + (1 - p) * (q_absent.gather(2, idx)[..., 0] - now).abs())
            out = coop[0] * _entropy_bits(p) + coop[1] * change
    return out.masked_fill(asked, -math.inf)


@dataclass(frozen=True)
class Question:
    """The next question for one image: ``concept`` with its current ``probability``; ``score`` is
    the policy's value of asking it."""

    concept: str
    probability: float
    policy: str
    score: float

    @property
    def belief(self) -> str:
        return "present" if self.probability >= 0.5 else "absent"

    def prompt(self) -> str:
        # Neutral on purpose: the explanation beside it calls a concept "present" when it scores above its training
        # average, which for a rare concept can be p = 0.4; "the model thinks it absent" would contradict it.
        return f"Is *{self.concept}* in the image? The model gives it p = {self.probability:.2f}."


def next_question(model: ConceptBottleneckModel, embedding: torch.Tensor, intervention: Intervention | None,
                  asked: Sequence[str], policy: str = "coop", *, seed: int = 0,
                  coop: tuple[float, float] = DEFAULT_COOP) -> Question | None:
    """The concept to ask about next for one image (embedding: (D,)) under the changes so far, or None
    when every concept has been asked. Concepts with no weight in the head are asked last: an answer
    about them cannot change the prediction (they may still move others through propagation)."""
    _require_probabilities(model)
    emb = embedding.reshape(1, -1).float()
    scores = model.intervene(model.concept_scores(emb), intervention)
    asked_mask = torch.tensor([[n in set(asked) for n in model.concepts.names]])
    if bool(asked_mask.all()):
        return None
    g = torch.Generator().manual_seed(int(seed) + len(asked))
    values = policy_scores(model, scores, asked_mask, policy, generator=g, coop=coop, embeddings=emb)[0]
    used = (model.weight != 0).any(0)
    order = sorted((k for k in range(model.n_concepts) if not asked_mask[0, k]),
                   key=lambda k: (not bool(used[k]), -float(values[k])))
    k = order[0]
    return Question(model.concepts.names[k], float(scores[0, k].clamp(0, 1)), policy, float(values[k]))


# -- what an answer changes -----------------------------------------------------------------------
@dataclass(frozen=True)
class AnswerOutcome:
    """The intervention for a set of answers (plus what propagation moved), and the class
    probabilities before (no answers) and after. ``moved``: (concept, p before, p after) for every
    concept propagation changed by more than ``min_change``, largest change first."""

    intervention: Intervention
    probs_before: torch.Tensor
    probs_after: torch.Tensor
    moved: tuple[tuple[str, float, float], ...] = field(default=())

    def moved_frame(self):
        import pandas as pd

        frame = pd.DataFrame(list(self.moved), columns=["concept", "before", "after"])
        frame["change"] = frame["after"] - frame["before"]
        return frame


def answers_intervention(model: ConceptBottleneckModel, embedding: torch.Tensor, answers: Mapping[str, str], *,
                         base: Intervention | None = None, dependencies=None, min_change: float = 0.02
                         ) -> AnswerOutcome:
    """The intervention that says what the expert answered (``answers``: concept -> present / absent /
    unsure), after ``base`` (other changes, e.g. the user's sliders), and — with ``dependencies``
    (``propagation.ConceptDependencies``) — the unanswered concepts moved to their posterior given
    the answers, each as a set-to-percentile change. embedding: (D,)."""
    _require_probabilities(model)
    base = base or Intervention()
    iv = base
    for concept, reply in answers.items():
        iv = apply_answer(model, iv, concept, reply)
    emb = embedding.reshape(1, -1).float()
    before = model.explain_features(emb, base).probs[0]
    moved: list[tuple[str, float, float]] = []
    known = {c: r for c, r in answers.items() if r in ("present", "absent")}
    if dependencies is not None and known:
        from ..core.propagation import propagate

        raw = model.concept_scores(emb)
        scores0 = model.intervene(raw, base)
        scores = model.intervene(raw, iv)
        K = model.n_concepts
        observed = torch.full((1, K), float("nan"))
        for c, r in known.items():
            observed[0, model.concepts.index(c)] = 1.0 if r == "present" else 0.0
        fixed = {c for c in base.concepts} | set(answers)
        free = torch.tensor([[n not in fixed for n in model.concepts.names]])
        post = propagate(dependencies, scores0.clamp(0, 1), observed, scores=scores, free=free)
        pct = model.stats.percentile_of(post)
        for k in range(K):
            if bool(free[0, k]) and abs(float(post[0, k] - scores0[0, k])) > min_change:
                name = model.concepts.names[k]
                moved.append((name, float(scores0[0, k]), float(post[0, k])))
                iv = iv.set(name, percentile=float(pct[0, k]))
        moved.sort(key=lambda m: -abs(m[2] - m[1]))
    after = model.explain_features(emb, iv).probs[0]
    return AnswerOutcome(iv, before, after, tuple(moved))


# -- intervention curves -----------------------------------------------------------------------------
@dataclass(frozen=True)
class InterventionCurve:
    """Accuracy after 0, 1, ..., k ground-truth answers chosen by ``policy`` (``propagated``: with
    propagation to correlated concepts)."""

    policy: str
    propagated: bool
    accuracy: tuple[float, ...]

    def area(self, upto: int | None = None) -> float:
        """Mean accuracy over the first ``upto`` + 1 points: one number to rank policies by."""
        acc = self.accuracy[: (upto + 1) if upto is not None else None]
        return sum(acc) / len(acc)

    def to_dict(self) -> dict:
        return {"policy": self.policy, "propagated": self.propagated, "accuracy": list(self.accuracy)}


def intervention_curve(model: ConceptBottleneckModel, embeddings: torch.Tensor, labels: torch.Tensor,
                       concept_labels: torch.Tensor, policy: str, *, max_answers: int | None = None,
                       dependencies=None, seed: int = 0, coop: tuple[float, float] = DEFAULT_COOP,
                       only_used: bool = True) -> InterventionCurve:
    """Simulate an expert who answers from ``concept_labels`` (N, K) (NaN: "unsure") on images
    ``embeddings`` (N, D) with classes ``labels`` (N,). ``only_used``: questions come from the
    concepts the head uses first (as ``next_question`` does); the curve has max_answers + 1 points."""
    _require_probabilities(model)
    labels = torch.as_tensor(labels, dtype=torch.long)
    C = torch.as_tensor(concept_labels, dtype=torch.float32)
    if C.shape != (len(labels), model.n_concepts):
        raise TTIError(f"Concept labels must be (N, K) = ({len(labels)}, {model.n_concepts}); got {tuple(C.shape)}. "
                       f"Intervention curves need the data's 0/1 concept columns in the model's concept order.")
    K = model.n_concepts
    max_answers = K if max_answers is None else min(int(max_answers), K)
    emb = embeddings.float()
    with torch.no_grad():
        scores0 = model.concept_scores(emb)
        scores = scores0.clone()
        values = answer_values(model)
        asked = torch.zeros(len(labels), K, dtype=torch.bool)
        observed = torch.full_like(scores, float("nan"))
        unused = ~(model.weight != 0).any(0)  # (K,)
        g = torch.Generator().manual_seed(int(seed))
        rows = torch.arange(len(labels))
        acc = [float((model.head(scores, emb).argmax(-1) == labels).float().mean())]
        for _ in range(max_answers):
            s = policy_scores(model, scores, asked, policy, generator=g, coop=coop, values=values, embeddings=emb)
            if only_used:  # unused concepts after every used one, in the policy's order among themselves
                finite = torch.isfinite(s)
                s = torch.where(finite & unused[None], s - 1e6, s)
            k = s.argmax(-1)
            truth = C[rows, k]
            asked[rows, k] = True
            known = ~torch.isnan(truth)
            observed[rows[known], k[known]] = truth[known]
            new = torch.where(truth == 1, values[0][k], values[1][k])
            scores[rows[known], k[known]] = new[known]
            if dependencies is not None:
                from ..core.propagation import propagate

                scores = propagate(dependencies, scores0.clamp(0, 1), observed, scores=scores, free=~asked)
            acc.append(float((model.head(scores, emb).argmax(-1) == labels).float().mean()))
    return InterventionCurve(policy, dependencies is not None, tuple(acc))


def tune_coop(model: ConceptBottleneckModel, embeddings: torch.Tensor, labels: torch.Tensor,
              concept_labels: torch.Tensor, *, betas: Sequence[float] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0),
              max_answers: int = 8, dependencies=None) -> tuple[tuple[float, float], dict]:
    """CooP's weights chosen on (validation) data: α = 1, β from ``betas`` by the mean accuracy over the
    first ``max_answers`` answers. Returns ``((α, β), {β: area})``."""
    areas = {}
    for beta in betas:
        curve = intervention_curve(model, embeddings, labels, concept_labels, "coop", max_answers=max_answers,
                                   coop=(1.0, float(beta)), dependencies=dependencies)
        areas[float(beta)] = curve.area()
    best = max(areas, key=lambda b: (areas[b], -b))
    return (1.0, best), areas
