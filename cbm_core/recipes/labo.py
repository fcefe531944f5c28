"""LaBo — Language in a Bottle (Yang et al., CVPR 2023) over cached backbone embeddings.

A language model writes candidate sentences about every class (the candidate pool). LaBo keeps
``n_per_class`` of each class's candidates, chosen greedily under a submodular objective:

    F(S) = Σ_{c ∈ S} D(c | y)  +  coverage_weight · (1 / |P_y|) Σ_{c' ∈ P_y} max_{c ∈ S} φ(c', c)

- discriminability ``D(c | y) = p(y | c) · log(C · p(y | c)) / log C``, the class-y term of the
  mutual information between concept and class, with ``p(y' | c)`` the softmax over classes of
  ``scale · Sim(y', c)`` and ``Sim(y', c)`` the mean cosine of sentence c with the training
  images of class y': a good sentence for class y matches y's images and few others;
- coverage: a facility-location function over the class's pool ``P_y``, ``φ`` the (non-negative)
  cosine between the sentences' text vectors, so the chosen sentences cover what the pool says
  rather than repeat one thing.

Concept scores are the image's cosines with the chosen sentences (a ``TextCosine`` layer). The
head is LaBo's class–concept association matrix A (C × K):

    logits = scale · s · softmax(A, over concepts)ᵀ

with A initialised from the concept→class map (``init_val`` where a sentence came from the class's
pool, 0 elsewhere) and trained with Adam and cross-entropy, keeping the A of the epoch with the
best validation accuracy when a validation set is given (LaBo's checkpointing). Because the model's
head is linear over *standardised* scores z = (s − mean) / std, the association converts exactly:

    W = scale · softmax(A) · diag(std),    b = scale · softmax(A) @ mean

The head is dense (every concept weighs on every class); ``path`` compares it at matched sparsity
by keeping each class's largest weights and refitting (``nec_path``).

Where this differs from the paper's code: the reference ranks every sentence by its whole mutual
information with the class label (summed over classes, whichever class it was written for),
computed from *linearly* normalised class similarities, which needs every similarity to be positive
(true of OpenAI CLIP, not of every backbone). We keep the term of the class the sentence is
selected for (LaBo's head can only associate a concept positively, so a sentence that describes
another class is no use to this one), normalise the similarities with a softmax, defined for any
backbone, and put both objective terms on [0, 1] so ``coverage_weight`` reads the same on any
pool. Sentences that name a class (as whole words; LaBo matches substrings) are dropped, as LaBo
does, and reported in ``removed_``; a sentence written for several classes becomes one concept
associated with each of them.
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import torch
import torch.nn.functional as F

from ..core.concept_layer import TextCosine
from ..core.concepts import ConceptBank, FilterReport
from ..errors import RecipeError
from ..core.model import ConceptBottleneckModel
from .base import (Param, Recipe, RecipeInputs, check_finite_fit, check_training_data, created_info, pick_device,
                   register_recipe, standardized)
from .elastic_net import accuracy, nec_path


def _names(sentence: str, class_name: str) -> bool:
    """Whether ``sentence`` contains ``class_name`` as whole words (case-insensitive)."""
    return re.search(r"(?<!\w)" + re.escape(class_name.strip()) + r"(?!\w)", sentence, re.IGNORECASE) is not None


def _key(text: str) -> str:
    """How ``ConceptBank`` compares names: case-insensitive, whitespace collapsed."""
    return " ".join(text.lower().split())


def class_similarity(vectors: torch.Tensor, features: torch.Tensor, labels: torch.Tensor,
                     n_classes: int) -> torch.Tensor:
    """Sim(y, c): the mean cosine of each sentence with the training images of each class.

    vectors: (M, D) unit text vectors; features: (N, D) unit embeddings; labels: (N,) -> (M, C)."""
    counts = torch.bincount(labels, minlength=n_classes).to(features.dtype)
    sums = torch.zeros(n_classes, features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, labels.to(features.device), features)
    means = sums / counts.clamp_min(1)[:, None]  # (C, D): the mean of cosines is the cosine with the mean
    return vectors.to(features.dtype) @ means.T


def discriminability(sim: torch.Tensor, own: torch.Tensor, scale: float) -> torch.Tensor:
    """D(c | y) = p(y | c) · log(C · p(y | c)) / log C for each sentence c of class y = own[c].

    sim: (M, C) class-conditional similarities; own: (M,) the class each sentence was written for;
    ``p(· | c) = softmax(scale · sim[c])``. This is the class-y term of the mutual information
    between concept and class that LaBo's code ranks by (uniform class prior), scaled to at most 1:
    1 when the sentence matches only its own class's images, 0 when it is as likely for every class
    (or only for other classes)."""
    logp = F.log_softmax(scale * sim.float(), dim=1)
    n_classes = sim.shape[1]
    if n_classes < 2:
        return torch.zeros(len(sim))
    own_logp = logp.gather(1, own.long().view(-1, 1)).squeeze(1)
    return own_logp.exp() * (own_logp + math.log(n_classes)) / math.log(n_classes)


def selection_objective(selected: Sequence[int], quality: torch.Tensor, similarity: torch.Tensor,
                        coverage_weight: float) -> float:
    """F(S) = Σ_{i∈S} quality_i + coverage_weight · mean_j max_{i∈S} similarity[j, i] (0 for S = ∅).

    quality: (M,); similarity: (M, M), non-negative."""
    selected = list(selected)
    if not selected:
        return 0.0
    coverage = similarity[:, selected].max(dim=1).values.mean()
    return float(quality[selected].sum() + coverage_weight * coverage)


def greedy_select(quality: torch.Tensor, similarity: torch.Tensor, k: int, coverage_weight: float) -> list[int]:
    """Greedy maximisation of ``selection_objective`` under |S| ≤ k: at every step the candidate
    with the largest marginal gain (the first on ties). A modular term plus a facility-location
    term is monotone submodular when quality ≥ 0, so greedy is within (1 − 1/e) of the optimum; a
    constant shift of quality changes no choice, so negative qualities are fine at fixed k.

    quality: (M,); similarity: (M, M) non-negative. Returns indices in the order picked."""
    M = len(quality)
    k = min(int(k), M)
    best = torch.zeros(M, dtype=torch.float64)  # current max similarity of every candidate to S
    sim = similarity.double()
    q = quality.double()
    taken = torch.zeros(M, dtype=torch.bool)
    order: list[int] = []
    for _ in range(k):
        gain = q + coverage_weight * (sim - best[:, None]).clamp_min(0.0).mean(0)
        gain[taken] = -math.inf
        i = int(gain.argmax())
        order.append(i)
        taken[i] = True
        best = torch.maximum(best, sim[:, i])
    return order


def association_to_head(association: torch.Tensor, scale: float, mean: torch.Tensor,
                        std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LaBo's head ``scale · s @ softmax(A)ᵀ`` as a linear head over z = (s − mean) / std.

    association: (C, K); mean, std: (K,). Returns ``(weight (C, K), bias (C,))`` with
    ``z @ weight.T + bias == scale · s @ softmax(A).T`` exactly (up to rounding)."""
    P = association.float().softmax(dim=1)
    return scale * P * std.float()[None, :], scale * P @ mean.float()


@register_recipe
class LaBo(Recipe):
    """Estimator: ``LaBo(candidates=..., candidate_vectors=..., classes=..., backbone_spec=...).fit(X, y)``.

    candidates: ``(class, sentence)`` pairs, the pool flattened; candidate_vectors: (M, D) their
    unit text vectors. Learned attributes (``model_``, ``selected_``, ``association_``,
    ``concept_classes_``, ``removed_``, ``stats_``, ``coef_``, ``intercept_``, ``best_epoch_``)
    exist only after ``fit``.

    features: (N, D) unit-norm backbone embeddings; labels: (N,) int64 class indices.
    """

    name = "labo"
    title = "LaBo — language-model concepts"
    summary = ("Picks the most discriminative, diverse sentences of each class's candidate pool (a submodular "
               "greedy), scores images by cosine with them, and learns a class–concept association "
               "matrix initialised from which class each sentence was written for.")
    paper = ("Yang et al., Language in a Bottle: Language Model Guided Concept Bottlenecks for Interpretable "
             "Image Classification, CVPR 2023")
    needs = ("labels", "candidate_pool")
    params = (
        Param("n_per_class", int, 10, "sentences kept per class (LaBo uses ~50 on pools of hundreds)", low=1,
              high=10_000),
        Param("coverage_weight", float, 1.0, "weight of the coverage (diversity) term against discriminability",
              low=0.0, high=1000.0),
        Param("scale", float, 12.0, "logit scale of the class scores: the backbone's own (OpenAI CLIP and LaBo: "
              "100; the demo model: 12); also sharpens the class probabilities that rank sentences", low=1e-3,
              high=1e4, log=True),
        Param("lr", float, 0.01, "Adam learning rate of the association matrix", low=1e-7, high=10.0, log=True),
        Param("epochs", int, 300, "passes over the training set", low=1, high=1_000_000),
        Param("batch_size", int, 0, "mini-batch size (0 = the whole training set per step)", low=0,
              high=10_000_000),
        Param("weight_decay", float, 0.0, "Adam weight decay on the association matrix", low=0.0, high=10.0),
        Param("init_val", float, 1.0, "initial association of a sentence with the class it was written for",
              low=0.0, high=100.0),
        Param("drop_class_names", bool, True, "drop candidate sentences that contain a class name"),
        Param("seed", int, 0, "seed of the mini-batch order", low=0, high=2**31 - 1),
    )

    def __init__(self, *, candidates: Sequence[tuple[str, str]], candidate_vectors: torch.Tensor,
                 classes: Sequence[str], backbone_spec: str, templates: Sequence[str] = ("{}",),
                 n_per_class: int = 10, coverage_weight: float = 1.0, scale: float = 12.0, lr: float = 0.01,
                 epochs: int = 300, batch_size: int = 0, weight_decay: float = 0.0, init_val: float = 1.0,
                 drop_class_names: bool = True, seed: int = 0, check_every: int = 10,
                 device: str | torch.device | None = None):
        self.candidates = candidates
        self.candidate_vectors = candidate_vectors
        self.classes = classes
        self.backbone_spec = backbone_spec
        self.templates = templates
        self.n_per_class = n_per_class
        self.coverage_weight = coverage_weight
        self.scale = scale
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.init_val = init_val
        self.drop_class_names = drop_class_names
        self.seed = seed
        self.check_every = check_every
        self.device = device

    @classmethod
    def from_inputs(cls, inputs: RecipeInputs, **params) -> "LaBo":
        inputs.require(cls)
        pool = inputs.candidate_pool
        unknown = sorted(set(pool) - set(inputs.classes))
        missing = [c for c in inputs.classes if not pool.get(c)]
        if unknown:
            raise RecipeError(f"The candidate pool names classes the data does not have: {', '.join(unknown[:8])}.")
        if missing:
            raise RecipeError(f"The candidate pool has no sentences for class{'es' * (len(missing) > 1)} "
                              f"{', '.join(repr(c) for c in missing[:8])}; add 'class<TAB>sentence' lines for it.")
        candidates = [(c, s) for c in inputs.classes for s in pool[c]]
        return cls(candidates=candidates, candidate_vectors=inputs.embed([s for _, s in candidates]),
                   classes=inputs.classes, backbone_spec=inputs.backbone_spec, templates=inputs.templates,
                   device=inputs.device, **cls.check_params(params))

    # -- selection ------------------------------------------------------------------------------
    def _candidates(self) -> tuple[list[int], list[int], FilterReport]:
        """Indices of the usable candidates, their class indices, and what was dropped."""
        class_index = {c: i for i, c in enumerate(self.classes)}
        keep, own, removed = [], [], []
        for m, (cls_name, sentence) in enumerate(self.candidates):
            if cls_name not in class_index:
                raise RecipeError(f"Candidate sentence {sentence!r} is for class {cls_name!r}, which the data does "
                                  f"not have.")
            if self.drop_class_names:
                named = next((c for c in self.classes if _names(sentence, c)), None)
                if named is not None:
                    removed.append((sentence, f"names the class '{named}' (it would leak the label)"))
                    continue
            keep.append(m)
            own.append(class_index[cls_name])
        empty = [c for i, c in enumerate(self.classes) if i not in set(own)]
        if empty:
            raise RecipeError(f"No usable candidate sentences for class{'es' * (len(empty) > 1)} "
                              f"{', '.join(repr(c) for c in empty[:8])} (each names a class, or there are none).")
        return keep, own, FilterReport(tuple(removed))

    def select(self, features: torch.Tensor, labels: torch.Tensor):
        """Run LaBo's selection on training features (N, D) and labels (N,).

        Returns ``(bank, vectors (K, D), concept_classes, report)``: the chosen sentences (unique,
        provenance ``pool:<class>``), their text vectors, the classes each was chosen for, and the
        sentences dropped for naming a class."""
        labels = torch.as_tensor(labels, dtype=torch.long)
        n_classes = len(self.classes)
        present = torch.bincount(labels, minlength=n_classes) > 0
        if not bool(present.all()):
            absent = [self.classes[i] for i in range(n_classes) if not present[i]]
            raise RecipeError(f"LaBo ranks sentences by the training images of every class; class"
                              f"{'es' * (len(absent) > 1)} {', '.join(repr(c) for c in absent[:8])} has none.")
        keep, own, report = self._candidates()
        vectors = torch.as_tensor(self.candidate_vectors).float().cpu()[keep]
        own_t = torch.tensor(own)
        quality = discriminability(class_similarity(vectors, features.float().cpu(), labels.cpu(), n_classes),
                                   own_t, self.scale)
        text_sim = (vectors @ vectors.T).clamp_min(0.0)
        names, rows, chosen_for = [], [], []
        where: dict[str, int] = {}
        for y in range(n_classes):
            members = (own_t == y).nonzero().flatten()
            picked = greedy_select(quality[members], text_sim[members][:, members], self.n_per_class,
                                   self.coverage_weight)
            for j in picked:
                m = int(members[j])
                sentence = self.candidates[keep[m]][1]
                k = where.get(_key(sentence))
                if k is None:
                    where[_key(sentence)] = len(names)
                    names.append(sentence)
                    rows.append(m)
                    chosen_for.append([y])
                elif y not in chosen_for[k]:
                    chosen_for[k].append(y)
        sources = tuple("pool:" + "|".join(self.classes[y] for y in ys) for ys in chosen_for)
        bank = ConceptBank(tuple(names), sources)
        return bank, vectors[rows], tuple(tuple(ys) for ys in chosen_for), report

    # -- the association head -------------------------------------------------------------------
    def _train_association(self, scores: torch.Tensor, labels: torch.Tensor, init: torch.Tensor,
                           val_scores: torch.Tensor | None, val_labels: torch.Tensor | None):
        """Adam + cross-entropy on ``scale · s @ softmax(A)ᵀ``; returns (A, best epoch or the last)."""
        g = torch.Generator().manual_seed(int(self.seed))
        A = init.clone().requires_grad_(True)
        opt = torch.optim.Adam([A], lr=self.lr, weight_decay=self.weight_decay)
        N = len(labels)
        bs = N if self.batch_size in (0, None) or self.batch_size >= N else int(self.batch_size)
        best, best_acc, best_epoch = A.detach().clone(), -1.0, 0
        for epoch in range(1, self.epochs + 1):
            order = torch.randperm(N, generator=g).to(scores.device) if bs < N else None
            for start in range(0, N, bs):
                idx = order[start:start + bs] if order is not None else slice(None)
                logits = self.scale * scores[idx] @ A.softmax(dim=1).T
                loss = F.cross_entropy(logits, labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if val_scores is not None and (epoch % self.check_every == 0 or epoch == self.epochs):
                with torch.no_grad():
                    acc = accuracy(self.scale * val_scores @ A.softmax(dim=1).T, val_labels)
                if acc > best_acc:  # strictly better: the first epoch that reached the best accuracy
                    best, best_acc, best_epoch = A.detach().clone(), acc, epoch
        if val_scores is None:
            return A.detach(), self.epochs
        return best, best_epoch

    def fit(self, features: torch.Tensor, labels: torch.Tensor, *, val_features: torch.Tensor | None = None,
            val_labels: torch.Tensor | None = None, **_) -> "LaBo":
        labels = check_training_data(features, labels, len(self.classes))
        n_classes = len(self.classes)
        device = pick_device(self.device)
        bank, vectors, concept_classes, report = self.select(features, labels)
        layer = TextCosine(vectors)
        scores = layer(features.float().cpu())
        stats, _ = standardized(scores, bank.names)
        init = torch.zeros(n_classes, len(bank))
        for k, ys in enumerate(concept_classes):
            init[list(ys), k] = self.init_val
        use_val = val_features is not None and val_labels is not None and len(val_labels) > 0
        val_scores = layer(val_features.float().cpu()).to(device) if use_val else None
        A, best_epoch = self._train_association(scores.to(device), labels.to(device), init.to(device), val_scores,
                                                torch.as_tensor(val_labels).long().to(device) if use_val else None)
        A = A.cpu()
        weight, bias = association_to_head(A, self.scale, stats.mean, stats.std)
        check_finite_fit(self.name, association=A, weight=weight, bias=bias)
        self.removed_ = report
        self.selected_ = bank
        self.concept_classes_ = concept_classes
        self.association_ = A
        self.stats_ = stats
        self.coef_ = weight
        self.intercept_ = bias
        self.best_epoch_ = best_epoch
        logits = self.scale * scores @ A.softmax(dim=1).T
        self.model_ = ConceptBottleneckModel(
            backbone_spec=self.backbone_spec, concepts=bank, concept_layer=layer, classes=tuple(self.classes),
            stats=stats, weight=weight, bias=bias, templates=tuple(self.templates),
            recipe={"name": self.name, **self.get_params(), "n_candidates": len(self.candidates),
                    "n_removed_candidates": len(report), "best_epoch": best_epoch,
                    "warnings": [f"{len(report)} candidate sentence(s) named a class and were dropped."]
                    if len(report) else []},
            metrics={"train_accuracy": accuracy(logits, labels)},
            created=created_info(device),
        )
        return self

    def path(self, features: torch.Tensor, labels: torch.Tensor, val_features: torch.Tensor | None = None,
             val_labels: torch.Tensor | None = None, n_points: int = 12, progress=None):
        """Accuracy against NEC: LaBo fitted on these features (a fresh estimator with the same
        parameters), then each class's largest weights kept and refitted (``nec_path``)."""
        est = LaBo(candidates=self.candidates, candidate_vectors=self.candidate_vectors, classes=self.classes,
                   backbone_spec=self.backbone_spec, templates=self.templates, check_every=self.check_every,
                   device=self.device, **self.get_params())
        model = est.fit(features, labels, val_features=val_features, val_labels=val_labels).model_
        z = model.standardize(model.concept_scores(features))
        z_val = model.standardize(model.concept_scores(val_features)) if val_features is not None else None
        return nec_path(z, torch.as_tensor(labels).long(), len(self.classes), model.weight, X_val=z_val,
                        y_val=torch.as_tensor(val_labels).long() if val_labels is not None else None,
                        progress=progress)
