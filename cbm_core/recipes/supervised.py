"""Concept-supervised CBM (Koh et al., ICML 2020) over cached backbone embeddings.

Where a dataset has 0/1 concept labels (CSV concept columns; Toy Birds has them for every bird),
the concept layer is *trained* on them: one logistic concept predictor per concept,

    p = sigmoid(e @ W.T + b)          e: (N, D) embeddings, W: (K, D), p: (N, K) concept probabilities

stored as a ``LinearProjection(activation="sigmoid")``, so a concept's raw score *is* its
predicted probability and everything downstream (standardisation, the head, interventions, the
browser panel, saliency) works unchanged. Three ways to train, as in the paper (``mode``):

- ``independent``: predictors on the concept labels; the head on the *true* concept labels
  (standardised with the predicted probabilities' training statistics, which the head reads at
  test time). Best when an expert will correct concepts: the head learnt from clean concepts.
- ``sequential``: predictors on the concept labels; the head on their predicted probabilities.
- ``joint``: predictors and head trained together on

      J = CE(head(z(p)), y) + λ_c · Σ_j mean_{i: c_ij observed} BCE(l_ij, c_ij)
          + λ (α ‖V‖₁ + (1 − α)/2 ‖V‖²) + ρ/2 ‖W‖²

  (``joint_objective``; z(p) standardises p with the training set's mean and std, V is the head
  over z, ρ = ``concept_l2``). Minimised by alternating blocks: the head exactly, by the same
  FISTA elastic-net solver every recipe uses (so λ means the same sparsity everywhere and the
  head's zeros are exact, not thresholded), and the predictors by Adam steps with the head
  fixed. λ_c = ``concept_weight`` trades concept fidelity against class accuracy.

Every mode ends the same way: the predictors are calibrated (``calibration``: Platt scaling
``sigmoid(a·l + c)`` or a temperature ``sigmoid(l / T)`` per concept, fitted on held-out rows and
folded into W and b, so the layer's outputs are calibrated probabilities), then the sparse head
is (re)fitted by FISTA on what it will read at test time (warm-started from the joint head in
``joint`` mode). Rows with a missing concept label (NaN) are left out of that concept's loss,
calibration and metrics only.

Concept quality is measured on validation concept labels when ``fit`` gets them
(``val_concept_labels``), otherwise on ``holdout`` (20 %) of the training rows kept out of the
predictors' training: per-concept AUROC and accuracy, and the expected calibration error before
and after calibration, all in ``model_.metrics``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from ..core.concept_layer import LinearProjection
from ..core.concepts import ConceptBank
from ..errors import RecipeError
from ..core.model import ConceptBottleneckModel
from .base import (Param, Recipe, RecipeInputs, check_finite_fit, check_training_data, created_info, pick_device,
                   register_recipe)
from .elastic_net import accuracy, fit_elastic_net, regularization_path
from ..core.stats import ConceptStats

MODES = ("independent", "sequential", "joint")
CALIBRATIONS = ("platt", "temperature", "none")
ECE_BINS = 15


# -- measures -----------------------------------------------------------------------------------
def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Area under the ROC curve of ``scores`` (N,) for 0/1 ``labels`` (N,), ties counted half
    (the Mann–Whitney statistic); None when only one class is present."""
    labels = labels.bool()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = scores.double().argsort()
    s = scores.double()[order]
    ranks = torch.empty_like(s)
    ranks[order] = _average_ranks(s)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(sorted_values: torch.Tensor) -> torch.Tensor:
    """1-based ranks of already sorted values, tied values sharing their mean rank."""
    n = len(sorted_values)
    _, inverse, counts = torch.unique_consecutive(sorted_values, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    mean_rank = ends - (counts.double() - 1) / 2
    return mean_rank[inverse] if n else sorted_values


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = ECE_BINS) -> float | None:
    """ECE of binary probabilities: over ``n_bins`` equal-width bins of the predicted probability,
    the share-weighted gap between the mean prediction and the observed frequency. probs, labels:
    any shape; NaN labels are ignored. None when nothing is labelled."""
    keep = ~torch.isnan(labels)
    p, y = probs[keep].double(), labels[keep].double()
    if len(p) == 0:
        return None
    bins = (p * n_bins).long().clamp(0, n_bins - 1)
    count = torch.bincount(bins, minlength=n_bins).double()
    gap = (torch.bincount(bins, p, minlength=n_bins) - torch.bincount(bins, y, minlength=n_bins)).abs()
    return float(gap.sum() / count.sum())


def concept_report(probs: torch.Tensor, concept_labels: torch.Tensor, names: Sequence[str]) -> dict:
    """Per-concept AUROC and accuracy (at 0.5) of predicted probabilities (N, K) against 0/1 labels
    (N, K, NaN = unknown), and their mean over concepts where defined. JSON-ready (None = undefined)."""
    aucs, accs = {}, {}
    for j, name in enumerate(names):
        known = ~torch.isnan(concept_labels[:, j])
        y, p = concept_labels[known, j], probs[known, j]
        aucs[name] = auroc(p, y)
        accs[name] = float(((p >= 0.5).float() == y).float().mean()) if len(y) else None
    defined = [v for v in aucs.values() if v is not None]
    return {"concept_auroc": aucs, "concept_accuracy": accs,
            "concept_auroc_mean": sum(defined) / len(defined) if defined else None,
            "concept_auroc_worst": min(defined) if defined else None}


# -- the pieces of the fit ----------------------------------------------------------------------
def masked_bce(logits: torch.Tensor, concept_labels: torch.Tensor) -> torch.Tensor:
    """Σ_j mean_{i: c_ij observed} BCE(logits_ij, c_ij): the concept loss, each concept averaged over
    the rows where it is labelled (NaN = unlabelled); a concept with no label adds nothing."""
    known = ~torch.isnan(concept_labels)
    target = torch.where(known, concept_labels, torch.zeros_like(concept_labels))
    per = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * known
    return (per.sum(0) / known.sum(0).clamp_min(1)).sum()


def standardize_probs(p: torch.Tensor) -> torch.Tensor:
    """z(p): probabilities (N, K) standardised with their own mean and std, exactly as
    ``ConceptStats`` will standardise them (population std, clamped at 1e-6)."""
    return (p - p.mean(0)) / p.std(0, unbiased=False).clamp_min(1e-6)


def joint_objective(concept_logits: torch.Tensor, labels: torch.Tensor, concept_labels: torch.Tensor,
                    head_weight: torch.Tensor, head_bias: torch.Tensor, *, concept_weight: float, lam: float,
                    l1_ratio: float, predictor_weight: torch.Tensor | None = None, concept_l2: float = 0.0
                    ) -> torch.Tensor:
    """Koh et al.'s joint objective with our sparse head (see the module docstring), for training
    rows: concept_logits (N, K) = e W.T + b; labels (N,); concept_labels (N, K), NaN = unknown;
    head_weight (C, K) over the standardised probabilities; head_bias (C,); predictor_weight (K, D)
    for the ridge term."""
    z = standardize_probs(concept_logits.sigmoid())
    task = F.cross_entropy(z @ head_weight.T + head_bias, labels)
    penalty = lam * (l1_ratio * head_weight.abs().sum() + 0.5 * (1.0 - l1_ratio) * (head_weight ** 2).sum())
    ridge = 0.5 * concept_l2 * (predictor_weight ** 2).sum() if predictor_weight is not None else 0.0
    return task + concept_weight * masked_bce(concept_logits, concept_labels) + penalty + ridge


def fit_predictors(X: torch.Tensor, concept_labels: torch.Tensor, l2: float, max_iter: int = 200
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """One L2-regularised logistic regression per concept on X (N, D) (already standardised), all at
    once (the loss separates by concept): full-batch L-BFGS from zero, hence deterministic.
    Returns W (K, D), b (K,)."""
    K, D = concept_labels.shape[1], X.shape[1]
    known = ~torch.isnan(concept_labels)
    rate = (torch.nan_to_num(concept_labels).sum(0) / known.sum(0).clamp_min(1)).clamp(1e-3, 1 - 1e-3)
    W = torch.zeros(K, D, requires_grad=True)
    b = torch.logit(rate).clone().requires_grad_(True)  # start at each concept's base rate
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-6,
                            tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = masked_bce(X @ W.T + b, concept_labels) + 0.5 * l2 * (W ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return W.detach(), b.detach()


def fit_calibration(logits: torch.Tensor, concept_labels: torch.Tensor, kind: str
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-concept ``(a, c)`` so that ``sigmoid(a · logit + c)`` is calibrated on these rows: Platt
    scaling (a and c), a temperature (a = 1/T, c = 0) or none (1, 0). logits, concept_labels: (N, K).
    a is kept ≥ 0.05 so a calibrated concept never turns its meaning around."""
    K = logits.shape[1]
    if kind == "none":
        return torch.ones(K), torch.zeros(K)
    log_a = torch.zeros(K, requires_grad=True)
    c = torch.zeros(K, requires_grad=kind == "platt")
    opt = torch.optim.LBFGS([log_a] + ([c] if kind == "platt" else []), lr=1.0, max_iter=200,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        # a tiny pull towards (1, 0) keeps a concept with few or one-sided labels at its identity
        loss = masked_bce(log_a.exp() * logits + c, concept_labels) + 1e-4 * ((log_a ** 2).sum() + (c ** 2).sum())
        loss.backward()
        return loss

    opt.step(closure)
    return log_a.detach().exp().clamp_min(0.05), c.detach()


@register_recipe
class SupervisedCBM(Recipe):
    """Estimator: ``SupervisedCBM(concept_names=..., classes=..., backbone_spec=..., mode="joint")
    .fit(X, y, concept_labels=C)``.

    features: (N, D) embeddings; labels: (N,) class indices; concept_labels: (N, K) 0/1 with NaN for
    unknown. Learned attributes: ``model_``, ``predictor_weight_`` (K, D), ``predictor_bias_`` (K,)
    (calibrated), ``calibration_`` ((a, c) per concept), ``coef_``, ``intercept_``, ``stats_``,
    ``concept_metrics_``, ``history_`` (joint objective per round), ``dependencies_``
    (``propagation.ConceptDependencies`` from the training labels, also in ``model_.recipe["concept_dependencies"]``),
    ``n_iter_``, ``converged_``.
    """

    name = "supervised"
    title = "Concept-supervised CBM (Koh et al.)"
    summary = ("Concept predictors trained on the dataset's 0/1 concept labels (calibrated probabilities); "
               "independent, sequential or joint training; a sparse elastic-net head over them.")
    paper = "Koh et al., Concept Bottleneck Models, ICML 2020"
    needs = ("labels", "concept_labels")
    uses_text = False
    params = (
        Param("mode", str, "independent", "independent: head on true concepts (best when an expert corrects "
              "concepts); sequential: head on predicted concepts; joint: predictors and head trained together",
              choices=MODES),
        Param("concept_weight", float, 1.0, "joint mode: weight λ_c of the concept loss against the class loss",
              low=0.0, high=1000.0, log=True),
        Param("lam", float, 2e-3, "elastic-net strength of the head: higher = fewer concepts per class", low=0.0,
              high=10.0, log=True, sparsity=True),
        Param("l1_ratio", float, 0.99, "share of the l1 penalty in the head's elastic net (1 = lasso)", low=0.0,
              high=1.0),
        Param("concept_l2", float, 1e-3, "ridge strength of the concept predictors", low=0.0, high=100.0, log=True),
        Param("calibration", str, "platt", "how the concept probabilities are calibrated on held-out rows",
              choices=CALIBRATIONS),
        Param("holdout", float, 0.2, "share of training rows kept out of the predictors to calibrate and measure "
              "them, when no validation concept labels are given", low=0.05, high=0.5),
        Param("joint_rounds", int, 20, "joint mode: rounds of (Adam steps on the predictors, exact head refit)",
              low=1, high=10_000),
        Param("max_iter", int, 3000, "iteration cap of the head's solver", low=10, high=1_000_000),
        Param("dependencies", str, "class", "how the concepts' dependencies are learned for propagating an expert's "
              "answers: class (concepts independent given the class), pairwise (an Ising model), none",
              choices=("class", "pairwise", "none")),
        Param("seed", int, 0, "seed of the held-out rows", low=0, high=2**31 - 1),
    )

    def __init__(self, *, classes: Sequence[str], backbone_spec: str, concept_names: Sequence[str] | None = None,
                 mode: str = "independent", concept_weight: float = 1.0, lam: float = 2e-3, l1_ratio: float = 0.99,
                 concept_l2: float = 1e-3, calibration: str = "platt", holdout: float = 0.2, joint_rounds: int = 20,
                 max_iter: int = 3000, dependencies: str = "class", seed: int = 0, joint_steps: int = 25, joint_lr: float = 1e-2,
                 tol: float = 1e-5, device: str | torch.device | None = None):
        self.classes = classes
        self.backbone_spec = backbone_spec
        self.concept_names = concept_names
        self.mode = mode
        self.concept_weight = concept_weight
        self.lam = lam
        self.l1_ratio = l1_ratio
        self.concept_l2 = concept_l2
        self.calibration = calibration
        self.holdout = holdout
        self.joint_rounds = joint_rounds
        self.max_iter = max_iter
        self.dependencies = dependencies
        self.seed = seed
        self.joint_steps = joint_steps
        self.joint_lr = joint_lr
        self.tol = tol
        self.device = device

    @classmethod
    def from_inputs(cls, inputs: RecipeInputs, **params) -> "SupervisedCBM":
        inputs.require(cls)
        return cls(classes=inputs.classes, backbone_spec=inputs.backbone_spec,
                   concept_names=getattr(inputs, "concept_names", None), device=inputs.device,
                   **cls.check_params(params))

    # -- checks ---------------------------------------------------------------------------------
    def _check_concepts(self, concept_labels, n_rows: int, what: str) -> torch.Tensor:
        if concept_labels is None:
            raise RecipeError(f"Recipe '{self.name}' needs 0/1 concept labels for the {what} images: a CSV manifest "
                              f"with one 0/1 column per concept (Toy Birds has them). This dataset has none.")
        C = torch.as_tensor(concept_labels, dtype=torch.float32)
        if C.ndim != 2 or len(C) != n_rows:
            raise RecipeError(f"The {what} concept labels must be (N, K) with N = {n_rows} rows; got {tuple(C.shape)}.")
        known = C[~torch.isnan(C)]
        if not bool(((known == 0) | (known == 1)).all()):
            raise RecipeError(f"The {what} concept labels must be 0, 1 or missing (NaN).")
        if self.concept_names is not None and len(self.concept_names) != C.shape[1]:
            raise RecipeError(f"{C.shape[1]} concept label columns but {len(self.concept_names)} concept names.")
        return C

    def _names(self, K: int) -> tuple[str, ...]:
        return tuple(self.concept_names) if self.concept_names is not None else tuple(f"concept {j + 1}" for j in range(K))

    # -- fit ------------------------------------------------------------------------------------
    def fit(self, features: torch.Tensor, labels: torch.Tensor, *, val_features: torch.Tensor | None = None,
            val_labels: torch.Tensor | None = None, concept_labels: torch.Tensor | None = None,
            val_concept_labels: torch.Tensor | None = None) -> "SupervisedCBM":
        labels = check_training_data(features, labels, len(self.classes))
        C = self._check_concepts(concept_labels, len(labels), "training")
        N, K = C.shape
        names = self._names(K)
        warnings = []
        unlabelled = [names[j] for j in range(K) if len(torch.unique(C[:, j][~torch.isnan(C[:, j])])) < 2]
        if unlabelled:
            warnings.append(f"{len(unlabelled)} concept{'s' * (len(unlabelled) > 1)} never vary in the training labels "
                            f"({', '.join(unlabelled[:5])}{'...' if len(unlabelled) > 5 else ''}): their predictors "
                            f"only learn the base rate, and the head does not use them.")
        # A concept the labels never vary on has a near-constant probability; standardised, that noise would be a
        # free feature the head could lean on, and explanations would cite a concept the model knows nothing of.
        usable = torch.ones(len(self.classes), K)
        usable[:, [names.index(n) for n in unlabelled]] = 0.0
        device = pick_device(self.device)
        X = features.float().cpu()
        mu, sd = X.mean(0), X.std(0, unbiased=False).clamp_min(1e-6)
        Xs = (X - mu) / sd  # predictors are fitted in standardised coordinates, folded back below

        # Rows that measure (and calibrate) the predictors: the validation set if it has concept
        # labels, else a seeded share of the training rows that the predictors never see.
        if val_features is not None and val_concept_labels is not None:
            Cv = self._check_concepts(val_concept_labels, len(val_features), "validation")
            Xv = (val_features.float().cpu() - mu) / sd
            fit_rows = torch.arange(N)
            measured_on = f"validation ({len(Xv)} images)"
        else:
            g = torch.Generator().manual_seed(int(self.seed))
            perm = torch.randperm(N, generator=g)
            n_hold = max(1, int(round(self.holdout * N))) if N >= 10 else 0
            hold, fit_rows = perm[:n_hold].sort().values, perm[n_hold:].sort().values
            Xv, Cv = Xs[hold], C[hold]
            measured_on = (f"{len(hold)} training images held out of the concept predictors"
                           if n_hold else "the training images (too few to hold any out)")
            if not n_hold:
                Xv, Cv = Xs, C

        Ws, bs = fit_predictors(Xs[fit_rows], C[fit_rows], self.concept_l2)
        history = []
        head_init = None
        if self.mode == "joint":
            Ws, bs, head_init, history = self._joint(Xs[fit_rows], labels[fit_rows], C[fit_rows], Ws, bs, device,
                                                     usable)

        # Calibrate on the measuring rows, fold (a, c) into the predictors.
        raw_val = Xv @ Ws.T + bs
        a, c = fit_calibration(raw_val, Cv, self.calibration)
        before = expected_calibration_error(raw_val.sigmoid(), Cv)
        Ws, bs = Ws * a[:, None], bs * a + c
        p_val = (Xv @ Ws.T + bs).sigmoid()
        report = concept_report(p_val, Cv, names)
        report.update({"concept_ece_before": before, "concept_ece_after": expected_calibration_error(p_val, Cv),
                       "concept_calibration": self.calibration, "concept_metrics_on": measured_on})

        weight_raw = Ws / sd  # (K, D): logits = e @ weight_raw.T + bias_raw
        bias_raw = bs - weight_raw @ mu
        layer = LinearProjection(weight_raw.contiguous(), bias_raw.contiguous(), "sigmoid")
        p_train = layer(X)
        stats = ConceptStats.from_scores(names, p_train)
        if self.mode == "independent":
            # The head learns from the true concepts (a missing one: its predicted probability),
            # standardised the way it will read predicted probabilities at test time.
            head_input = torch.where(torch.isnan(C), p_train, C)
        else:
            head_input = p_train
        z = (head_input - stats.mean) / stats.std
        res = fit_elastic_net(z.to(device), labels.to(device), len(self.classes), self.lam, self.l1_ratio,
                              init=head_init, max_iter=self.max_iter, tol=self.tol, mask=usable.to(device))
        weight, bias = res.weight.cpu(), res.bias.cpu()
        check_finite_fit(self.name, predictors=weight_raw, predictor_bias=bias_raw, weight=weight, bias=bias)
        if not res.converged:
            warnings.append(f"The head's solver stopped at its iteration cap ({self.max_iter}) before converging; "
                            f"raise max_iter or λ.")
        self.predictor_weight_, self.predictor_bias_ = weight_raw, bias_raw
        self.calibration_ = (a, c)
        self.stats_, self.coef_, self.intercept_ = stats, weight, bias
        self.concept_metrics_ = report
        self.history_ = history
        self.n_iter_, self.converged_ = res.n_iter, res.converged
        # What the training labels say about which concepts go together (and with which class), kept
        # in the bundle so an expert's answer can move the concepts that go with it (propagation.py).
        self.dependencies_ = None
        if self.dependencies != "none":
            from ..core.propagation import ConceptDependencies

            self.dependencies_ = ConceptDependencies(structure=self.dependencies).fit(C, labels, len(self.classes),
                                                                                      names)
        logits = ((p_train - stats.mean) / stats.std) @ weight.T + bias
        concepts = ConceptBank(names, ("concept labels",) * K)
        self.model_ = ConceptBottleneckModel(
            backbone_spec=self.backbone_spec, concepts=concepts, concept_layer=layer, classes=tuple(self.classes),
            stats=stats, weight=weight, bias=bias, templates=("{}",),
            recipe={"name": self.name, **self.get_params(), "tol": self.tol, "n_iter": res.n_iter,
                    "converged": res.converged, "warnings": warnings,
                    **({"joint_objective": [round(v, 6) for v in history]} if history else {}),
                    **({"concept_dependencies": self.dependencies_.to_dict()} if self.dependencies_ is not None else {})},
            metrics={"train_accuracy": accuracy(logits, labels), **report},
            created=created_info(device),
        )
        return self

    def _joint(self, Xs, y, C, Ws, bs, device, mask=None):
        """Alternating minimisation of ``joint_objective``: an exact FISTA head, then Adam steps on
        the predictors with the head fixed; repeated ``joint_rounds`` times. Starts from the
        independently trained predictors; ``mask`` (C, K) keeps head weights at zero. Returns predictors, the last
        head, the objective per round."""
        n_classes = len(self.classes)
        W = Ws.clone().requires_grad_(True)
        b = bs.clone().requires_grad_(True)
        opt = torch.optim.Adam([W, b], lr=self.joint_lr)
        head = None
        history = []
        for _ in range(int(self.joint_rounds)):
            with torch.no_grad():
                z = standardize_probs((Xs @ W.T + b).sigmoid())
            # Inner head solves need not be exact: warm-started, and the final head is refitted to tol.
            res = fit_elastic_net(z.to(device), y.to(device), n_classes, self.lam, self.l1_ratio, init=head,
                                  max_iter=min(self.max_iter, 300), tol=max(self.tol, 1e-4),
                                  mask=mask.to(device) if mask is not None else None)
            head = (res.weight.cpu(), res.bias.cpu())
            for _ in range(int(self.joint_steps)):
                opt.zero_grad()
                loss = joint_objective(Xs @ W.T + b, y, C, head[0], head[1], concept_weight=self.concept_weight,
                                       lam=self.lam, l1_ratio=self.l1_ratio, predictor_weight=W,
                                       concept_l2=self.concept_l2)
                loss.backward()
                opt.step()
            with torch.no_grad():
                history.append(float(joint_objective(Xs @ W.T + b, y, C, head[0], head[1],
                                                     concept_weight=self.concept_weight, lam=self.lam,
                                                     l1_ratio=self.l1_ratio, predictor_weight=W,
                                                     concept_l2=self.concept_l2)))
        if not all(math.isfinite(v) for v in history):
            raise RecipeError("Joint training diverged (non-finite objective). Lower concept_weight or raise concept_l2.")
        return W.detach(), b.detach(), head, history

    def path(self, features, labels, val_features=None, val_labels=None, n_points: int = 12, progress=None):
        """The λ path of the head over the fitted predictors' standardised probabilities (needs ``fit``
        first: the predictors come from the concept labels, which a path call does not get)."""
        if not hasattr(self, "model_"):
            return []
        layer, stats = self.model_.concept_layer, self.model_.stats
        z = (layer(features) - stats.mean) / stats.std
        z_val = (layer(val_features) - stats.mean) / stats.std if val_features is not None else None
        points, _ = regularization_path(z, torch.as_tensor(labels), len(self.classes), l1_ratio=self.l1_ratio,
                                        n_lambdas=n_points, X_val=z_val, progress=progress,
                                        y_val=torch.as_tensor(val_labels) if val_labels is not None else None)
        return points
