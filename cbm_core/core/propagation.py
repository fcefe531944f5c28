"""Correlated concepts: when the expert fixes one concept, move the ones that go with it.

ECBM (Xu et al., ICLR 2024) makes the point with an energy over (input, concepts, class): correcting
"yellow breast" should also move "yellow belly". We learn the dependencies between concepts (and
the class) from the training concept labels, as a prior p(c), and treat the concept predictors'
outputs as independent evidence about each concept: the image's evidence for concept j is its
likelihood ratio λ_j = logit p⁰_j − logit π_j (its predicted probability against the training
base rate π_j). The posterior p(c_j | image, answers) then updates every unanswered concept.
Two priors (``structure``), chosen by measurement (``docs/INTERVENTIONS.md``):

- ``class`` (default): a latent-class model, concepts independent given the class,
  p(c) = Σ_y π_y Π_j θ_yj^c_j (1 − θ_yj)^(1 − c_j), θ and π counted from the training labels
  (Laplace-smoothed). Inference is exact and closed-form: the answers and the evidence give
  p(y | ·), and p(c_j = 1 | ·) = Σ_y p(y | ·) · θ_yj e^λ_j / (θ_yj e^λ_j + 1 − θ_yj).
- ``pairwise``: an Ising prior p(c) ∝ exp(Σ_j h_j c_j + ½ Σ_jk J_jk c_j c_k) fitted by
  pseudo-likelihood (each concept's logistic regression on the others, J symmetrised), with a
  damped mean-field posterior q_j = σ(λ_j + h_j + Σ_k J_jk m_k).

A model's own concept probabilities already use the image; to move only what the answers change,
a free concept's new log-odds is its own plus the posterior's change from "no answers" to "these
answers": logit p_j = logit p⁰_j + logit q_j(answers) − logit q_j(none). With no answers nothing
moves; a concept the image is sure about barely moves; an uncertain one follows the answers.

``conditional_table`` gives the empirical p(concept j | concept i = 1 [, class]) from labels — the
numbers the Evaluate page shows, with their counts.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import CBMError

STRUCTURES = ("class", "pairwise")
_EPS = 1e-4


class PropagationError(CBMError):
    """Dependencies that cannot be learned or used as asked (no concept labels, mismatched concepts)."""


def _logit(p: torch.Tensor, eps: float = _EPS) -> torch.Tensor:
    return torch.logit(p.clamp(eps, 1.0 - eps))


class ConceptDependencies:
    """Estimator: ``ConceptDependencies(structure="class").fit(concept_labels, labels, n_classes, names)``.

    concept_labels: (N, K) 0/1, NaN unknown; labels: (N,) class indices (``class`` structure).
    Learned: ``rate_`` (K,) base rates; ``class`` structure: ``theta_`` (C, K) = p(c_j = 1 | y),
    ``class_prior_`` (C,); ``pairwise``: ``intercept_`` (K,), ``pairwise_`` (K, K) symmetric with a
    zero diagonal; ``names_``."""

    def __init__(self, *, structure: str = "class", smoothing: float = 1.0, l2: float = 1e-2,
                 max_iter: int = 300, n_iter: int = 30, damping: float = 0.5):
        if structure not in STRUCTURES:
            raise PropagationError(f"structure must be one of {', '.join(STRUCTURES)}; got {structure!r}.")
        self.structure = structure
        self.smoothing = smoothing
        self.l2 = l2
        self.max_iter = max_iter
        self.n_iter = n_iter
        self.damping = damping

    def fit(self, concept_labels: torch.Tensor, labels: torch.Tensor | None = None, n_classes: int | None = None,
            names: Sequence[str] | None = None) -> "ConceptDependencies":
        C = torch.as_tensor(concept_labels, dtype=torch.float32)
        if C.ndim != 2 or len(C) < 2:
            raise PropagationError(f"Learning concept dependencies needs (N, K) concept labels for N ≥ 2 images; got "
                                   f"{tuple(C.shape)}.")
        N, K = C.shape
        known = ~torch.isnan(C)
        ones = torch.nan_to_num(C)
        self.rate_ = ((ones.sum(0) + self.smoothing) / (known.sum(0) + 2 * self.smoothing)).clamp(_EPS, 1 - _EPS)
        self.names_ = tuple(names) if names is not None else tuple(f"concept {j + 1}" for j in range(K))
        if len(self.names_) != K:
            raise PropagationError(f"{K} concept label columns but {len(self.names_)} names.")
        if self.structure == "class":
            if labels is None:
                raise PropagationError("The 'class' structure needs the class labels of the labelled images.")
            labels = torch.as_tensor(labels, dtype=torch.long)
            n_classes = int(n_classes if n_classes is not None else int(labels.max()) + 1)
            Y = F.one_hot(labels, n_classes).float()
            self.theta_ = ((Y.T @ ones + self.smoothing) / (Y.T @ known.float() + 2 * self.smoothing)).clamp(_EPS, 1 - _EPS)
            self.class_prior_ = (Y.sum(0) + self.smoothing) / (N + n_classes * self.smoothing)
        else:
            self._fit_pairwise(C, known)
        return self

    def _fit_pairwise(self, C: torch.Tensor, known: torch.Tensor) -> None:
        """Pseudo-likelihood: every concept's logistic regression on the others (an unknown neighbour
        counts at its base rate), L2 on J, all at once by L-BFGS; then J symmetrised."""
        K = C.shape[1]
        filled = torch.where(known, C, self.rate_.expand_as(C))
        target = torch.nan_to_num(C)
        off = 1.0 - torch.eye(K)
        h = _logit(self.rate_).clone().requires_grad_(True)
        J = torch.zeros(K, K, requires_grad=True)
        opt = torch.optim.LBFGS([h, J], lr=1.0, max_iter=self.max_iter, history_size=20, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            Js = (J + J.T) / 2 * off
            per = F.binary_cross_entropy_with_logits(h + filled @ Js.T, target, reduction="none") * known
            loss = (per.sum(0) / known.sum(0).clamp_min(1)).sum() + 0.5 * self.l2 * (Js ** 2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.intercept_ = h.detach()
        self.pairwise_ = ((J + J.T) / 2 * off).detach()

    # -- inference ------------------------------------------------------------------------------
    def posterior(self, probs: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        """p(c_j = 1 | image evidence, answers) under this prior, (N, K). probs: (N, K) the concept
        predictors' probabilities (the evidence); observed: (N, K) answered 1 / 0, NaN free."""
        K = self.rate_.shape[0]
        if probs.shape[-1] != K or observed.shape != probs.shape:
            raise PropagationError(f"The dependencies know {K} concepts; got probabilities {tuple(probs.shape)} and "
                                   f"answers {tuple(observed.shape)}.")
        evidence = _logit(probs.float()) - _logit(self.rate_)  # (N, K) log-likelihood ratio per concept
        answered = ~torch.isnan(observed)
        value = torch.nan_to_num(observed.float())
        if self.structure == "class":
            lt, lf = self.theta_.log(), (1 - self.theta_).log()  # (C, K)
            free_term = torch.logaddexp(lt[None] + evidence[:, None, :], lf[None])  # (N, C, K)
            fixed_term = value[:, None, :] * lt[None] + (1 - value[:, None, :]) * lf[None]
            log_y = self.class_prior_.log()[None] + torch.where(answered[:, None, :], fixed_term, free_term).sum(-1)
            q_y = log_y.softmax(-1)  # (N, C)
            per_class = torch.sigmoid(lt[None] - lf[None] + evidence[:, None, :])  # p(c_j | y, its evidence)
            post = (q_y[:, :, None] * per_class).sum(1)
        else:
            m = torch.where(answered, value, probs.float())
            for _ in range(int(self.n_iter)):  # damped mean field
                target = torch.sigmoid(evidence + self.intercept_ + m @ self.pairwise_.T)
                m = torch.where(answered, value, self.damping * m + (1 - self.damping) * target)
            post = m
        return torch.where(answered, value, post)

    def log_likelihood(self, concept_labels: torch.Tensor) -> float:
        """Held-out pseudo-log-likelihood, mean log p(c_j | c_-j) over labelled entries (no class given):
        how well a structure predicts one concept from the others — one yardstick for both."""
        C = torch.as_tensor(concept_labels, dtype=torch.float32)
        known = ~torch.isnan(C)
        filled = torch.where(known, C, self.rate_.expand_as(C))
        if self.structure == "class":
            lt, lf = self.theta_.log(), (1 - self.theta_).log()
            per = filled[:, None, :] * lt[None] + (1 - filled[:, None, :]) * lf[None]  # (N, C, K)
            joint = self.class_prior_.log()[None, :, None] + per.sum(-1, keepdim=True) - per  # log p(y, c_-j)
            q = joint.softmax(1)  # p(y | c_-j), (N, C, K)
            p1 = (q * self.theta_[None]).sum(1)
            logits = _logit(p1, 1e-7)
        else:
            logits = self.intercept_ + filled @ self.pairwise_.T
        per = F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(C), reduction="none") * known
        return -float(per.sum() / known.sum().clamp_min(1))

    def strongest(self, top: int = 20):
        """The concept pairs the prior ties most strongly, as a table (concept_a, concept_b, lift):
        lift = p(b | a) − p(b) implied by the prior (``class``) or the pairwise weight J (``pairwise``)."""
        import pandas as pd

        K = len(self.names_)
        if self.structure == "class":
            pi = self.class_prior_
            pj = (pi[:, None] * self.theta_).sum(0)  # p(c = 1)
            both = (pi[:, None, None] * self.theta_[:, :, None] * self.theta_[:, None, :]).sum(0)  # p(a = 1, b = 1)
            score = both / pj[:, None] - pj[None, :]
        else:
            score = self.pairwise_
        i, j = torch.triu_indices(K, K, offset=1)
        vals = score[i, j]
        order = vals.abs().argsort(descending=True)[:top]
        return pd.DataFrame([(self.names_[int(i[o])], self.names_[int(j[o])], float(vals[o])) for o in order],
                            columns=["concept_a", "concept_b", "lift" if self.structure == "class" else "coupling"])

    # -- JSON (kept in a supervised bundle's recipe entry) ---------------------------------------
    def to_dict(self, digits: int = 5) -> dict:
        def r(t):
            return [round(float(v), digits) for v in t.tolist()] if t.ndim == 1 else [r(row) for row in t]

        out = {"structure": self.structure, "names": list(self.names_), "rate": r(self.rate_)}
        if self.structure == "class":
            out.update(theta=r(self.theta_), class_prior=r(self.class_prior_))
        else:
            out.update(intercept=r(self.intercept_), pairwise=r(self.pairwise_))
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "ConceptDependencies":
        try:
            dep = cls(structure=data["structure"])
            dep.names_ = tuple(str(n) for n in data["names"])
            K = len(dep.names_)
            dep.rate_ = torch.tensor(data["rate"], dtype=torch.float32).reshape(K)
            if dep.structure == "class":
                dep.theta_ = torch.tensor(data["theta"], dtype=torch.float32)
                dep.class_prior_ = torch.tensor(data["class_prior"], dtype=torch.float32)
                tensors = (dep.rate_, dep.theta_, dep.class_prior_)
                ok = dep.theta_.ndim == 2 and dep.theta_.shape[1] == K and dep.class_prior_.shape == (dep.theta_.shape[0],)
                ok = ok and all(bool(((t > 0) & (t < 1)).all()) for t in tensors)
            else:
                dep.intercept_ = torch.tensor(data["intercept"], dtype=torch.float32).reshape(K)
                dep.pairwise_ = torch.tensor(data["pairwise"], dtype=torch.float32).reshape(K, K)
                tensors = (dep.rate_, dep.intercept_, dep.pairwise_)
                ok = bool(((dep.rate_ > 0) & (dep.rate_ < 1)).all())
        except (KeyError, TypeError, ValueError, RuntimeError, PropagationError) as exc:
            raise PropagationError(f"The stored concept dependencies are malformed ({type(exc).__name__}: {exc}).") \
                from None
        if not ok or not all(bool(torch.isfinite(t).all()) for t in tensors):
            raise PropagationError("The stored concept dependencies hold impossible numbers (probabilities outside "
                                   "(0, 1), non-finite values or mismatched shapes).")
        return dep

    @classmethod
    def from_model(cls, model) -> "ConceptDependencies | None":
        """The dependencies a supervised bundle keeps (``recipe["concept_dependencies"]``) when they still match
        its concepts (and classes); None otherwise."""
        data = model.recipe.get("concept_dependencies")
        if not data:
            return None
        dep = cls.from_dict(data)
        if dep.names_ != tuple(model.concepts.names):
            return None
        if dep.structure == "class" and dep.theta_.shape[0] != len(model.classes):
            return None
        return dep


def propagate(dependencies: ConceptDependencies, probs0: torch.Tensor, observed: torch.Tensor, *,
              scores: torch.Tensor | None = None, free: torch.Tensor | None = None) -> torch.Tensor:
    """Concept probabilities (N, K) after the answers, with every ``free`` concept moved by the
    posterior's change (see the module docstring).

    probs0: (N, K) the model's own concept probabilities before any answer; observed: (N, K) 1 / 0
    answered, NaN not; scores: (N, K) the current scores, kept where not free (default: ``probs0``
    with the answers); free: (N, K) bool (default: the unanswered concepts)."""
    answered = ~torch.isnan(observed)
    free = ~answered if free is None else free
    current = torch.where(answered, torch.nan_to_num(observed), probs0) if scores is None else scores
    if not bool(answered.any()):
        return current.clone()
    none = torch.full_like(observed, float("nan"))
    shift = _logit(dependencies.posterior(probs0, observed), 1e-6) - _logit(dependencies.posterior(probs0, none), 1e-6)
    moved = torch.sigmoid(_logit(probs0) + shift)
    return torch.where(free, moved, current)


def conditional_table(concept_labels: torch.Tensor, names: Sequence[str], given: str, *,
                      labels: torch.Tensor | None = None, classes: Sequence[str] | None = None,
                      class_name: str | None = None, prior: float = 1.0):
    """Empirical p(concept j = 1 | ``given`` = 1 [, class]) for every other concept j, from 0/1 labels
    (N, K) (NaN ignored), next to p(j = 1 | given = 0) and p(j = 1) in the same rows; Laplace-smoothed
    by ``prior`` (NaN where no image counts); sorted by how much ``given`` moves j. Columns: concept,
    p_given_present, p_given_absent, p_overall, lift, n_present."""
    import pandas as pd

    C = torch.as_tensor(concept_labels, dtype=torch.float32)
    names = list(names)
    if given not in names:
        raise PropagationError(f"Unknown concept '{given}'.")
    i = names.index(given)
    rows = torch.ones(len(C), dtype=torch.bool)
    if class_name is not None:
        if labels is None or classes is None or class_name not in list(classes):
            raise PropagationError(f"Conditioning on class '{class_name}' needs the class labels and names.")
        rows = torch.as_tensor(labels) == list(classes).index(class_name)
    out = []
    for j, name in enumerate(names):
        if j == i:
            continue
        both = rows & ~torch.isnan(C[:, i]) & ~torch.isnan(C[:, j])
        ci, cj = C[both, i], C[both, j]
        n1, n0 = int((ci == 1).sum()), int((ci == 0).sum())
        def rate(ones: float, n: int) -> float:
            return (ones + prior) / (n + 2 * prior) if n + 2 * prior > 0 else float("nan")

        p1, p0 = rate(float(cj[ci == 1].sum()), n1), rate(float(cj[ci == 0].sum()), n0)
        pall = rate(float(cj.sum()), len(cj))
        out.append((name, p1, p0, pall, p1 - pall, n1))
    frame = pd.DataFrame(out, columns=["concept", "p_given_present", "p_given_absent", "p_overall", "lift",
                                       "n_present"])
    return frame.reindex(frame.lift.abs().sort_values(ascending=False).index).reset_index(drop=True)
