"""How far to believe an explanation: is each concept really there, is its map on it, is the image
like the training data?

A CBM's explanation says "striped wing is present and pushes for azure diver". Three things can make
that sentence wrong, and the papers behind this tool find all three often ("Concept-Based Explainable
AI: Metrics and Benchmarks", 2025): the concept is not in the image (its score is high for another
reason), its saliency map sits somewhere else, or the image is unlike anything the model was fitted
on, so no score means what it meant in training. This module measures each, per explanation:

- **presence** (``PresenceCalibration``): a calibrated probability that each concept is present,
  from its raw score. Fitted per concept by Platt scaling on labelled validation data where concept
  labels exist (``kind = "labels"``); otherwise, without labels, from the training score
  distribution the model already stores (its 101 percentiles): a two-component Gaussian mixture
  whose upper component is read as "present" (``kind = "mixture"``) — a rough guess that assumes
  images with and without a concept form two bumps; the UI says which was used. A layer whose scores
  are probabilities (a concept-supervised one, trained on concept labels) needs no guess: its own
  probability is the fallback (``kind = "model"``).
- **location** (``location_scores``): for each shown map, how concentrated it is (the share of its
  mass in its top 10 % of pixels, rescaled so an even map scores 0 and a single spot 1) and how far
  the concept's score falls when that region is deleted, against deleting a region of the same
  shape elsewhere — one extra forward pass, batched over the shown concepts.
- **out of distribution** (``OODReference``): the Mahalanobis distance of the image embedding to
  validation embeddings (low-rank for wide embeddings), reported as a percentile among held-out
  validation images; and, needing nothing but the model, how many concept scores lie outside
  everything seen in training (the 0th / 100th training percentile). Chosen by measurement on Toy
  Birds (docs/RELIABILITY.md): Mahalanobis separates test birds from every proxy for foreign images
  with AUROC ≥ 0.99; the percentile count, nearest neighbours and max-softmax do worse.

What is fitted is stored in the model's free-form ``metrics`` (``PRESENCE_KEY``, ``OOD_KEY``), so it
travels in the bundle; ``fit_reliability`` adds it. Concept-layer facts stay true when only the head
is edited, so they are also found in the edit log's ``metrics_before`` of an edited model.

    model = fit_reliability(model, val_features, label_names=dataset.concept_names)
    exp = model.explain_features(embeddings)
    rel = reliability(model, exp, 0, embedding=embeddings[0])
    rel.to_frame()        # per concept: read as, p(present), AUROC, flag, location, name stability
    rel.ood.verdict       # "typical", "unusual" or "unlike the training data"
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..core.model import ConceptBottleneckModel, ConceptStats, Explanation

PRESENCE_KEY = "concept_presence"
OOD_KEY = "ood_reference"
NAMES_KEY = "name_stability"  # written by cbm_core.explain.paraphrase; read here for the flags
FORMAT = 1

# Verdicts of the out-of-distribution check, least to most severe.
TYPICAL, UNUSUAL, FOREIGN = "typical", "unusual", "unlike the training data"
UNUSUAL_PERCENTILE, FOREIGN_PERCENTILE = 95.0, 99.0
# Location: the share of pixels called a map's region, and the margin (in training standard deviations
# of the concept's score) by which deleting it must beat deleting the same shape elsewhere.
TOP_FRACTION = 0.10
LOCATION_MARGIN = 0.10
# A map's verdicts. "Not on its evidence" says what the deletion shows: its bright region may well sit on the part
# (on the demo most such maps do), but the score does not depend on that region more than on any other.
# A blank map (one value everywhere: the method found no evidence) has no region to point at or delete.
ON_EVIDENCE, NOT_ON_EVIDENCE, SPREAD_OUT, BLANK = "on its evidence", "not on its evidence", "spread out", "blank"
MAP_VERDICTS = (ON_EVIDENCE, NOT_ON_EVIDENCE, SPREAD_OUT, BLANK)
MAX_REFERENCE_NUMBERS = 32_768  # rank x embedding width kept for the Mahalanobis reference


def concepts_digest(names: Sequence[str]) -> str:
    """A short fingerprint of a concept list (names and order): stored fits are used only for it."""
    return hashlib.sha1("\n".join(names).encode()).hexdigest()[:16]


def _probability_scores(model: ConceptBottleneckModel) -> bool:
    layer = model.concept_layer
    return getattr(layer, "kind", "") == "linear" and getattr(layer, "activation", "") == "sigmoid"


def _transform(scores: torch.Tensor, logit: bool) -> torch.Tensor:
    scores = scores.double()
    return torch.logit(scores.clamp(1e-6, 1 - 1e-6)) if logit else scores


def _round(values) -> list:
    return [None if v is None else float(f"{float(v):.6g}") for v in values]


def _floats(value, n: int | None, what: str) -> torch.Tensor:
    """A stored list of finite numbers (of length n) as a tensor; ValueError names what is wrong."""
    if not isinstance(value, list) or (n is not None and len(value) != n):
        raise ValueError(f"{what} must be a list of {n} numbers")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise ValueError(f"{what} must hold finite numbers only")
    return torch.tensor(value, dtype=torch.float64)


def stored(model: ConceptBottleneckModel, key: str):
    """``model.metrics[key]``, or — for a model whose head was edited since — the same entry kept in the
    newest edit-log entry's ``metrics_before`` (edits change the head, not the concept layer)."""
    if isinstance(model.metrics.get(key), dict):
        return model.metrics[key]
    for entry in reversed(model.edit_log):
        before = entry.get("metrics_before")
        if isinstance(before, dict) and isinstance(before.get(key), dict):
            return before[key]
    return None


# -- presence -----------------------------------------------------------------------------------
def _platt(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-4, iters: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Logistic regression of 0/1 labels on one score per concept, every concept at once (Newton's
    method on standardised scores, a small ridge on the slope). x, y: (N, K), NaN labels ignored.
    Returns slope, intercept: (K,). A concept with one class only gets slope 0 and its smoothed base
    rate, whatever the score."""
    x, y = x.double(), y.double()
    known = ~torch.isnan(y)
    w = known.double()
    y0 = torch.where(known, y, torch.zeros_like(y))
    n = w.sum(0).clamp_min(1)
    mu = (x * w).sum(0) / n
    sd = (((x - mu) ** 2 * w).sum(0) / n).sqrt().clamp_min(1e-9)
    u = (x - mu) / sd
    a, b = torch.zeros(x.shape[1], dtype=torch.float64), torch.zeros(x.shape[1], dtype=torch.float64)
    for _ in range(iters):
        p = torch.sigmoid(a * u + b)
        r = (p - y0) * w / n  # gradient of the mean log-loss
        h = p * (1 - p) * w / n
        ga, gb = (r * u).sum(0) + 2 * l2 * a, r.sum(0)
        haa, hab, hbb = (h * u * u).sum(0) + 2 * l2, (h * u).sum(0), h.sum(0) + 1e-12
        det = (haa * hbb - hab ** 2).clamp_min(1e-18)
        # Clipped Newton steps: on (nearly) separable labels the first full steps overshoot.
        da = ((hbb * ga - hab * gb) / det).clamp(-4, 4)
        db = ((haa * gb - hab * ga) / det).clamp(-4, 4)
        a, b = a - da, b - db
        if float(torch.maximum(da.abs(), db.abs()).max()) < 1e-8:
            break
    pos = (y0 * w).sum(0)
    single = (pos == 0) | (pos == w.sum(0))
    base = torch.log((pos + 0.5) / (w.sum(0) - pos + 0.5))
    slope = torch.where(single, torch.zeros_like(a), a / sd)
    intercept = torch.where(single, base, b - a * mu / sd)
    return slope, intercept


def _mixture(values: torch.Tensor, iters: int = 200) -> torch.Tensor:
    """Two 1-d Gaussians fitted by EM to each column of (n, K) values (a concept's training percentiles:
    an even sample of its score distribution), all columns at once: (K, 5) rows of [weight of the
    upper one, mean_lo, sd_lo, mean_hi, sd_hi]."""
    x = values.double()
    spread = x.std(0) if len(x) > 1 else torch.zeros(x.shape[1], dtype=torch.float64)
    floor = (1e-3 * spread).clamp_min(1e-9)
    m = torch.stack([x.quantile(0.25, dim=0), x.quantile(0.75, dim=0)], 1)  # (K, 2)
    s = (spread / 2).clamp_min(1e-9)[:, None].repeat(1, 2)
    pi = torch.full_like(m, 0.5)
    for _ in range(iters):
        lp = pi.log() - s.log() - 0.5 * ((x[:, :, None] - m) / s) ** 2  # (n, K, 2)
        r = (lp - lp.logsumexp(2, keepdim=True)).exp()
        n = r.sum(0) + 1e-12
        pi = (n / n.sum(1, keepdim=True)).clamp_min(1e-6)
        m = (r * x[:, :, None]).sum(0) / n
        s = torch.maximum(((r * (x[:, :, None] - m) ** 2).sum(0) / n).sqrt(), floor[:, None])
    hi = (m[:, 1] >= m[:, 0]).long()
    lo = 1 - hi
    rows = torch.arange(len(m))
    out = torch.stack([pi[rows, hi], m[rows, lo], s[rows, lo], m[rows, hi], s[rows, hi]], 1)
    flat = spread < 1e-12  # a constant concept: one bump, half "present" everywhere
    out[flat] = torch.stack([torch.full_like(spread, 0.5), x.mean(0), floor, x.mean(0), floor], 1)[flat]
    return out


def _mixture_probability(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """x: (N, K) transformed scores; params: (K, 5) -> posterior of the upper component, (N, K)."""
    w, m0, s0, m1, s1 = params.T
    lp_hi = w.log() - s1.log() - 0.5 * ((x - m1) / s1) ** 2
    lp_lo = (1 - w).clamp_min(1e-12).log() - s0.log() - 0.5 * ((x - m0) / s0) ** 2
    return torch.sigmoid(lp_hi - lp_lo)


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Area under the ROC curve of (n,) scores for 0/1 labels, ties counted half; None with one class."""
    from ..recipes.supervised import auroc as _auroc

    return _auroc(scores, labels)


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float | None:
    """ECE of binary probabilities against 0/1 labels (NaN labels ignored), 15 equal-width bins."""
    from ..recipes.supervised import expected_calibration_error as _ece

    return _ece(probs, labels, n_bins)


@dataclass(frozen=True, eq=False)
class PresenceCalibration:
    """p(concept present | its raw score), per concept.

    kind: per concept, ``labels`` (Platt scaling on labelled data: ``sigmoid(slope * x + intercept)``),
    ``mixture`` (the upper bump of a two-Gaussian mixture over the training percentiles) or ``model``
    (the score itself, for a layer whose scores are probabilities trained on concept labels);
    x is the raw score, or its logit for a layer whose scores are probabilities (``logit``).
    slope, intercept: (K,); mixture: (K, 5); auroc: per concept on the labelled data (None where
    unlabelled or one class only); ece: out-of-fold calibration error of the label fits (pooled),
    ece_mixture: the fallback's (mixture or model) error on the same labels (how rough it is), both None
    without labels; n_labelled: labelled images used; fitted_on: in words."""

    concepts: tuple[str, ...]
    kind: tuple[str, ...]
    slope: torch.Tensor
    intercept: torch.Tensor
    mixture: torch.Tensor
    logit: bool = False
    auroc: tuple[float | None, ...] = ()
    ece: float | None = None
    ece_mixture: float | None = None
    n_labelled: int = 0
    fitted_on: str = ""

    @property
    def method(self) -> str:
        """``labels``, ``mixture``, ``model`` or ``mixed`` (labels for some concepts only)."""
        kinds = set(self.kind)
        return kinds.pop() if len(kinds) == 1 else "mixed"

    def describe(self) -> str:
        """One sentence for a caption: how these probabilities were made."""
        if self.method == "mixture":
            return ("Presence probabilities are unsupervised: fitted to each concept's training score distribution "
                    "(two bumps, the upper one read as 'present'), because no concept labels were available. "
                    "Treat them as a rough guess.")
        if self.method == "model":
            return ("Presence probabilities are the concept predictors' own (trained on concept labels); no labelled "
                    "validation data recalibrated them.")
        others = ("the predictors' own probabilities" if self.logit else "unsupervised, from the training scores")
        part = "" if self.method == "labels" else (f" ({sum(k == 'labels' for k in self.kind)} of {len(self.kind)} "
                                                    f"concepts; the others {others})")
        ece = f"; calibration error {self.ece:.3f} out of fold" if self.ece is not None else ""
        return (f"Presence probabilities are calibrated on {self.n_labelled} labelled images ({self.fitted_on}){part} "
                f"by logistic (Platt) scaling per concept{ece}.")

    def predict(self, scores: torch.Tensor) -> torch.Tensor:
        """scores: (N, K) raw concept scores -> p(present), (N, K) float32."""
        x = _transform(scores, self.logit)
        p_mix = _mixture_probability(x, self.mixture)
        p_lab = torch.sigmoid(x * self.slope + self.intercept)
        labelled = torch.tensor([k == "labels" for k in self.kind])
        own = torch.tensor([k == "model" for k in self.kind])
        p_fallback = torch.where(own, scores.double().clamp(0, 1), p_mix)
        return torch.where(labelled, p_lab, p_fallback).float()

    @classmethod
    def fit(cls, model: ConceptBottleneckModel, scores: torch.Tensor | None = None,
            concept_labels: torch.Tensor | None = None, fitted_on: str = "", folds: int = 2,
            seed: int = 0) -> "PresenceCalibration":
        """The mixture for every concept from ``model.stats``; with raw ``scores`` (N, K) and 0/1
        ``concept_labels`` (N, K in the model's concept order, NaN = unknown), Platt scaling for each
        concept that has labels, with its AUROC and an out-of-fold ECE (``folds``-fold)."""
        logit = _probability_scores(model)
        K = model.n_concepts
        quantiles = _transform(model.stats.quantiles, logit)
        mixture = _mixture(quantiles)
        slope, intercept = torch.zeros(K, dtype=torch.float64), torch.zeros(K, dtype=torch.float64)
        # Probabilities trained on concept labels are their own fallback: a mixture over their percentiles
        # (a third of them saturated at 0 or 1) would be a worse guess.
        fallback = "model" if logit else "mixture"
        kind, aucs, n_labelled, ece, ece_mix = [fallback] * K, [None] * K, 0, None, None
        if scores is not None and concept_labels is not None:
            y = concept_labels.double()
            if y.shape != scores.shape:
                raise ValueError(f"concept_labels must be {tuple(scores.shape)} like the scores; got {tuple(y.shape)}.")
            x = _transform(scores, logit)
            g = torch.Generator().manual_seed(seed)
            fold = torch.randint(0, folds, (len(x),), generator=g)
            has = (~torch.isnan(y)).sum(0) >= 2
            kind = ["labels" if bool(h) else fallback for h in has]
            slope, intercept = _platt(x, y)
            aucs = [auroc(x[~torch.isnan(y[:, k]), k], y[~torch.isnan(y[:, k]), k]) if has[k] else None
                    for k in range(K)]
            out_of_fold = torch.full_like(y, float("nan"))
            for f in range(folds):  # each fold predicted by a fit on the others: an honest calibration error
                held = fold == f
                if held.any() and (~held).sum() >= 2:
                    a_f, b_f = _platt(x[~held], y[~held])
                    out_of_fold[held] = torch.sigmoid(x[held] * a_f + b_f)
            out_of_fold[torch.isnan(y)] = float("nan")
            labelled = torch.tensor([k == "labels" for k in kind])
            n_labelled = int((~torch.isnan(y[:, labelled])).any(1).sum()) if labelled.any() else 0
            if labelled.any():
                oof, yl = out_of_fold[:, labelled], y[:, labelled]
                keep = ~torch.isnan(oof) & ~torch.isnan(yl)
                ece = expected_calibration_error(oof[keep], yl[keep])
                unsupervised = scores.double().clamp(0, 1) if logit else _mixture_probability(x, mixture)
                ece_mix = expected_calibration_error(unsupervised[:, labelled], y[:, labelled])
        return cls(tuple(model.concepts.names), tuple(kind), slope, intercept, mixture, logit, tuple(aucs), ece,
                   ece_mix, n_labelled, fitted_on)

    def to_json(self) -> dict:
        return {"format": FORMAT, "concepts_sha1": concepts_digest(self.concepts), "logit": self.logit,
                "kind": list(self.kind), "slope": _round(self.slope.tolist()),
                "intercept": _round(self.intercept.tolist()), "mixture": [_round(r) for r in self.mixture.tolist()],
                "auroc": _round(self.auroc) if self.auroc else [], "ece": self.ece, "ece_mixture": self.ece_mixture,
                "n_labelled": self.n_labelled, "fitted_on": self.fitted_on}

    @classmethod
    def from_json(cls, data: dict, concepts: Sequence[str]) -> "PresenceCalibration":
        """Rebuild from ``to_json`` for these concepts; ValueError if it was fitted for others or is malformed."""
        K = len(concepts)
        if not isinstance(data, dict) or data.get("concepts_sha1") != concepts_digest(concepts):
            raise ValueError("the stored presence calibration was fitted for another concept list")
        kind = data.get("kind")
        if not isinstance(kind, list) or len(kind) != K or not set(kind) <= {"labels", "mixture", "model"}:
            raise ValueError("the stored presence calibration's 'kind' is malformed")
        mixture = data.get("mixture")
        if not isinstance(mixture, list) or len(mixture) != K:
            raise ValueError("the stored presence calibration's mixture is malformed")
        mix = torch.stack([_floats(r, 5, "mixture row") for r in mixture]) if K else torch.zeros(0, 5)
        if (mix[:, [2, 4]] <= 0).any() or (mix[:, 0] <= 0).any() or (mix[:, 0] > 1).any():
            raise ValueError("the stored presence calibration's mixture has invalid weights or spreads")
        aucs = data.get("auroc") or [None] * K
        if not isinstance(aucs, list) or len(aucs) != K:
            raise ValueError("the stored presence calibration's AUROC list is malformed")
        number = lambda v: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None  # noqa: E731
        return cls(tuple(concepts), tuple(kind), _floats(data.get("slope"), K, "slope"),
                   _floats(data.get("intercept"), K, "intercept"), mix, bool(data.get("logit", False)),
                   tuple(number(a) for a in aucs), number(data.get("ece")), number(data.get("ece_mixture")),
                   int(number(data.get("n_labelled")) or 0), str(data.get("fitted_on", ""))[:200])


def presence_calibration(model: ConceptBottleneckModel) -> PresenceCalibration:
    """The model's stored calibration (``fit_reliability``), else the unsupervised one from its
    training statistics (always available)."""
    data = stored(model, PRESENCE_KEY)
    if data is not None:
        try:
            return PresenceCalibration.from_json(data, model.concepts.names)
        except ValueError:
            pass  # malformed or for other concepts: fall back to what needs no stored fit
    return _mixture_only(model)


def _mixture_only(model: ConceptBottleneckModel) -> PresenceCalibration:
    key = id(model.stats)
    hit = _MIXTURE_CACHE.get(key)
    if hit is not None and hit[0] is model.stats:
        return hit[1]
    cal = PresenceCalibration.fit(model)
    _MIXTURE_CACHE.clear()  # one model's worth: the fit costs ~K x 200 EM steps
    _MIXTURE_CACHE[key] = (model.stats, cal)
    return cal


_MIXTURE_CACHE: dict = {}


# -- out of distribution --------------------------------------------------------------------------
def extreme_concepts(stats: ConceptStats, scores: torch.Tensor) -> torch.Tensor:
    """(N, K) bool: concept scores beyond the 0th / 100th training percentile (outside every training
    score). scores: (N, K) raw. Strictly beyond: a sigmoid's 1.0 or a ReLU's 0 that training images share
    is not outside them."""
    s = scores.float()
    return (s < stats.quantiles[0]) | (s > stats.quantiles[-1])


@dataclass(frozen=True, eq=False)
class OODReference:
    """The validation embeddings' distribution, for a Mahalanobis distance.

    mean: (D,); components: (r, D) orthonormal principal directions; eigenvalues: (r,) their variances
    (shrunk); residual_variance: the mean variance of the D - r directions left out (0 when r = D);
    quantiles: (101,) percentiles of held-out validation images' distances (what "typical" is)."""

    mean: torch.Tensor
    components: torch.Tensor
    eigenvalues: torch.Tensor
    residual_variance: float
    quantiles: torch.Tensor
    n_fit: int
    n_calibration: int
    fitted_on: str = ""
    method: str = "mahalanobis"

    def distance(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distance of (N, D) embeddings, (N,)."""
        x = embeddings.double() - self.mean
        proj = x @ self.components.T
        d = (proj ** 2 / self.eigenvalues).sum(-1)
        if self.residual_variance > 0:
            rest = (x ** 2).sum(-1) - (proj ** 2).sum(-1)
            d = d + rest.clamp_min(0) / self.residual_variance
        return d.float()

    def percentile(self, distance: torch.Tensor) -> torch.Tensor:
        """Percentile (0-100) of each distance among the held-out validation images'; (N,)."""
        q = self.quantiles.float()
        levels = torch.linspace(0, 100, len(q))
        idx = torch.searchsorted(q, distance.float().contiguous(), right=True).clamp(1, len(q) - 1)
        x0, x1 = q[idx - 1], q[idx]
        t = torch.where(x1 > x0, (distance - x0) / (x1 - x0).clamp_min(1e-12), torch.full_like(distance, 0.5))
        pct = levels[idx - 1] + t.clamp(0, 1) * (levels[idx] - levels[idx - 1])
        return torch.where(distance <= q[0], 0.0, torch.where(distance >= q[-1], 100.0, pct))

    @classmethod
    def _fitted(cls, X: torch.Tensor, shrinkage: float, max_numbers: int) -> "OODReference":
        N, D = X.shape
        mean = X.mean(0)
        cov = torch.cov((X - mean).T).reshape(D, D)
        evals, evecs = torch.linalg.eigh(cov)
        evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
        shrink = shrinkage * float(evals.mean()) + 1e-12
        r = max(1, min(D, max_numbers // D, N - 1))
        residual = float(evals[r:].mean()) + shrink if r < D else 0.0
        return cls(mean, evecs[:, :r].T.contiguous(), evals[:r] + shrink, residual, torch.zeros(101), N, 0)

    @classmethod
    def fit(cls, embeddings: torch.Tensor, folds: int = 4, shrinkage: float = 1e-3,
            max_numbers: int = MAX_REFERENCE_NUMBERS, fitted_on: str = "", seed: int = 0) -> "OODReference":
        """Fit on (N, D) validation embeddings. The mean and covariance come from all of them; what
        counts as typical from out-of-fold distances (each of ``folds`` random parts measured against a
        reference fitted on the others), so an image the reference was fitted on is never its own
        yardstick. The covariance keeps its top r = min(D, max_numbers // D, N - 1) directions; the
        rest share their mean variance."""
        X = embeddings.double()
        N, D = X.shape
        if N < 2 * folds or N < 8:
            raise ValueError(f"An out-of-distribution reference needs at least {max(8, 2 * folds)} embeddings; got {N}.")
        g = torch.Generator().manual_seed(seed)
        fold = torch.randperm(N, generator=g) % folds
        held_out = torch.cat([cls._fitted(X[fold != f], shrinkage, max_numbers).distance(X[fold == f]).double()
                              for f in range(folds)])
        qs = torch.quantile(held_out, torch.linspace(0, 1, 101, dtype=torch.float64)).float()
        ref = cls._fitted(X, shrinkage, max_numbers)
        return cls(ref.mean, ref.components, ref.eigenvalues, ref.residual_variance, qs, N, N, fitted_on)

    def to_json(self) -> dict:
        return {"format": FORMAT, "method": self.method, "mean": _round(self.mean.tolist()),
                "components": [_round(r) for r in self.components.tolist()],
                "eigenvalues": _round(self.eigenvalues.tolist()), "residual_variance": float(f"{self.residual_variance:.6g}"),
                "quantiles": _round(self.quantiles.tolist()), "n_fit": self.n_fit,
                "n_calibration": self.n_calibration, "fitted_on": self.fitted_on}

    @classmethod
    def from_json(cls, data: dict, embed_dim: int) -> "OODReference":
        if not isinstance(data, dict) or data.get("method") != "mahalanobis":
            raise ValueError("the stored out-of-distribution reference is not a Mahalanobis reference")
        comps = data.get("components")
        if not isinstance(comps, list) or not 1 <= len(comps) <= embed_dim:
            raise ValueError("the stored out-of-distribution reference's components are malformed")
        components = torch.stack([_floats(r, embed_dim, "component") for r in comps])
        eig = _floats(data.get("eigenvalues"), len(comps), "eigenvalues")
        q = _floats(data.get("quantiles"), 101, "quantiles")
        rv = data.get("residual_variance")
        if (eig <= 0).any() or not isinstance(rv, (int, float)) or isinstance(rv, bool) or not math.isfinite(rv) or rv < 0:
            raise ValueError("the stored out-of-distribution reference has invalid variances")
        if bool((q[1:] < q[:-1]).any()):
            raise ValueError("the stored out-of-distribution reference's percentiles are not sorted")
        n = lambda k: int(data[k]) if isinstance(data.get(k), int) and not isinstance(data.get(k), bool) else 0  # noqa: E731
        return cls(_floats(data.get("mean"), embed_dim, "mean"), components, eig, float(rv), q.float(), n("n_fit"),
                   n("n_calibration"), str(data.get("fitted_on", ""))[:200])


def ood_reference(model: ConceptBottleneckModel) -> OODReference | None:
    """The model's stored reference (``fit_reliability``), or None."""
    data = stored(model, OOD_KEY)
    if data is None:
        return None
    try:
        return OODReference.from_json(data, model.embed_dim)
    except (ValueError, RuntimeError):
        return None


@dataclass(frozen=True)
class OODResult:
    """Is one image like the training data? verdict: ``typical``, ``unusual`` or ``unlike the training
    data``; distance/percentile: the Mahalanobis distance and its percentile among held-out validation
    images (None without a stored reference); extreme: the concepts whose score lies outside every
    training score; method: what decided the verdict."""

    verdict: str
    distance: float | None
    percentile: float | None
    extreme: tuple[str, ...]
    n_concepts: int
    method: str

    @property
    def warn(self) -> bool:
        return self.verdict != TYPICAL

    def sentence(self) -> str:
        """The verdict in words, with its evidence."""
        ext = (f"{len(self.extreme)} of {self.n_concepts} concept scores lie outside every score seen in training"
               + (f" ({', '.join(self.extreme[:4])}{', ...' if len(self.extreme) > 4 else ''})" if self.extreme else ""))
        if self.percentile is not None:
            where = (f"its embedding is farther from the validation images than {self.percentile:.0f}% of them"
                     if self.percentile < 100 else "its embedding is farther from the validation images than any of them")
            evidence = f"{where}; {ext}" if self.extreme else where  # "0 of 26 concept scores ..." says nothing
        else:
            evidence = ext
        if self.verdict == FOREIGN:
            return (f"This image is unlike the training data: {evidence}. The prediction and its explanation may "
                    "mean nothing here.")
        if self.verdict == UNUSUAL:
            return f"This image is unusual for this model: {evidence}. Read its explanation with care."
        return f"This image looks like the training data: {evidence}."

    def short(self) -> str:
        """The verdict with its main evidence, in one line (the CLI's)."""
        if self.percentile is not None:
            where = (f"farther from the validation images than {self.percentile:.0f}% of them" if self.percentile < 100
                     else "farther from the validation images than any of them")
        else:
            where = f"{len(self.extreme)} of {self.n_concepts} concept scores outside every training score"
        return f"{self.verdict} ({where})"

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "distance": self.distance, "percentile": self.percentile,
                "extreme_concepts": list(self.extreme), "method": self.method, "message": self.sentence(),
                "summary": self.short()}


def ood_check(model: ConceptBottleneckModel, embeddings: torch.Tensor, scores: torch.Tensor | None = None,
              reference: OODReference | None = None) -> list[OODResult]:
    """One ``OODResult`` per embedding (N, D). With a stored (or given) reference the verdict is the
    Mahalanobis percentile's (≥ 95: unusual, ≥ 99: unlike); without one, the count of extreme
    concept scores decides (≥ 1: unusual; ≥ max(2, 10 % of the concepts): unlike)."""
    reference = reference if reference is not None else ood_reference(model)
    scores = model.concept_scores(embeddings) if scores is None else scores
    extreme = extreme_concepts(model.stats, scores)
    names = model.concepts.names
    K = model.n_concepts
    results = []
    if reference is not None:
        dist = reference.distance(embeddings)
        pct = reference.percentile(dist)
    for i in range(len(scores)):
        ext = tuple(names[k] for k in extreme[i].nonzero().flatten().tolist())
        if reference is not None:
            p = float(pct[i])
            verdict = FOREIGN if p >= FOREIGN_PERCENTILE else UNUSUAL if p >= UNUSUAL_PERCENTILE else TYPICAL
            results.append(OODResult(verdict, float(dist[i]), p, ext, K, "mahalanobis"))
        else:
            n = len(ext)
            verdict = FOREIGN if n >= max(2, math.ceil(0.1 * K)) else UNUSUAL if n >= 1 else TYPICAL
            results.append(OODResult(verdict, None, None, ext, K, "extreme percentiles"))
    return results


# -- location -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LocationScore:
    """How well one concept map points at its evidence in one image.

    concentration: 0 = the map is even, 1 = all its mass is in its top ``top_fraction`` of pixels
    (min-max normalised map); drop: how far the concept's score falls (in training standard
    deviations; a probability's log-odds in theirs) when that region is deleted (set to the dataset mean
    colour); control_drop: the same for the region's shape moved half an image away; blank: the map is
    one value everywhere (no region; both drops 0, not measured)."""

    concept: str
    concentration: float
    drop: float
    control_drop: float
    top_fraction: float = TOP_FRACTION
    blank: bool = False

    @property
    def specificity(self) -> float:
        return self.drop - self.control_drop

    @property
    def verdict(self) -> str:
        """``on its evidence`` (deleting the region lowers the score by at least ``LOCATION_MARGIN`` sd
        more than deleting the same shape elsewhere), else ``spread out`` (no region stands out) or
        ``not on its evidence`` (a region stands out, but deleting it matters no more than deleting elsewhere).
        The deletion decides first: dense maps of a coarse tower are smooth (concentration 0.03-0.2 on
        Toy Birds), and a smooth map whose brightest region still carries the evidence is on it. ``blank``
        when the map shows nothing."""
        if self.blank:
            return BLANK
        if self.drop > 0 and self.specificity >= LOCATION_MARGIN:
            return ON_EVIDENCE
        return SPREAD_OUT if self.concentration < 0.05 else NOT_ON_EVIDENCE

    def sentence(self) -> str:
        """E.g. "map on its evidence (its brightest 10% deleted: -0.82 sd, elsewhere -0.05; 31% concentrated)":
        how the concept's score moves when the map's brightest region is deleted, and when the same shape
        elsewhere is."""
        if self.blank:
            return "map blank (this method finds no evidence for it in this image)"
        return (f"map {self.verdict} (its brightest {self.top_fraction:.0%} deleted: {-self.drop:+.2f} sd, elsewhere "
                f"{-self.control_drop:+.2f}; {self.concentration:.0%} concentrated)")


def input_maps(pipe, encoded, concepts: Sequence[str], method: str | None = None) -> torch.Tensor:
    """Concept maps of one encoded image on the model's input pixels (K, H, W) — before any undoing of
    the resize and crop — the same maps ``Pipeline.saliency`` aligns to the picture."""
    from .saliency import interpolate

    maps = pipe.concept_maps(encoded, method, concepts)
    return interpolate(maps.maps, tuple(encoded.pixels.shape[-2:]))[0]


def concentration(maps: torch.Tensor, top_fraction: float = TOP_FRACTION) -> torch.Tensor:
    """(K, H, W) maps -> (K,): the share of each min-max normalised map's mass in its top
    ``top_fraction`` of pixels, rescaled so an even map gives 0 and a single spot 1."""
    flat = maps.flatten(1).double()
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    norm = torch.where(hi > lo, (flat - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(flat))
    n_top = max(1, int(round(top_fraction * flat.shape[1])))
    total = norm.sum(1)
    share = torch.where(total > 0, norm.topk(n_top, dim=1).values.sum(1) / total.clamp_min(1e-12),
                        torch.full_like(total, n_top / flat.shape[1]))
    base = n_top / flat.shape[1]
    return ((share - base) / (1 - base)).clamp(0, 1).float() if base < 1 else torch.zeros(len(flat))


def maps_on_input(aligned: torch.Tensor, image_size: tuple[int, int], resize_mode: str,
                  input_size: tuple[int, int]) -> torch.Tensor:
    """Undo ``SaliencyMaps.to_image``: maps aligned to a picture of ``image_size`` (W, H), drawn at any
    size, (K, h, w) -> the same maps on the model's input pixels (K, H_in, W_in), so that location
    scores reuse the maps a page already drew instead of computing them again."""
    from .overlay import seen_region
    from .saliency import interpolate

    K, h, w = aligned.shape
    left, top, width, height = seen_region(image_size, resize_mode, (w, h))
    if resize_mode == "longest" and image_size[0] != image_size[1]:  # the model saw the picture padded to a square
        W, H = image_size
        side = max(W, H)
        sx, sy = w / W, h / H
        canvas = aligned.new_full((K, round(side * sy), round(side * sx)), float(aligned.min()) if aligned.numel() else 0.0)
        y0, x0 = round((side - H) / 2 * sy), round((side - W) / 2 * sx)
        canvas[:, y0:y0 + h, x0:x0 + w] = aligned[:, :canvas.shape[1] - y0, :canvas.shape[2] - x0]
        return interpolate(canvas[None], tuple(input_size))[0]
    return interpolate(aligned[None, :, top:top + height, left:left + width], tuple(input_size))[0]


@torch.no_grad()
def location_scores(pipe, encoded, concepts: Sequence[str], method: str | None = None, maps: torch.Tensor | None = None,
                    top_fraction: float = TOP_FRACTION) -> dict[str, LocationScore]:
    """``LocationScore`` of each concept's map in one encoded image (``Pipeline.encode``). ``maps``:
    (K, H, W) on the input pixels (``input_maps``), computed here when None. Costs one forward pass
    of 2K images: each concept's top region deleted, and the same shape elsewhere."""
    concepts = list(concepts)
    if not concepts:
        return {}
    if encoded.pixels is None:
        raise ValueError("Location scores need the preprocessed pixels; re-encode the image.")
    model = pipe.model
    maps = input_maps(pipe, encoded, concepts, method) if maps is None else maps
    K, H, W = maps.shape
    n_top = max(1, int(round(top_fraction * H * W)))
    top = maps.flatten(1).topk(n_top, dim=1).indices
    region = torch.zeros(K, H * W, dtype=torch.bool).scatter_(1, top, True).reshape(K, H, W)
    control = region.roll(shifts=(H // 2, W // 2), dims=(1, 2))
    pixels = encoded.pixels.float()
    batch = torch.cat([pixels[None] * (~region)[:, None], pixels[None] * (~control)[:, None]])
    emb = pipe.backbone.encode_images(batch.to(pipe.backbone.dtype)).embeddings.float()
    idx = [model.concepts.index(n) for n in concepts]
    layer, std = _evidence(model, idx)
    base = layer(encoded.embedding.float()[None])[0]  # (K,)
    after = layer(emb)  # (2K, K)
    rows = torch.arange(K)
    blank = maps.flatten(1).amax(1) <= maps.flatten(1).amin(1)
    drop = torch.where(blank, 0.0, (base - after[rows, rows]) / std)
    control_drop = torch.where(blank, 0.0, (base - after[K + rows, rows]) / std)
    conc = concentration(maps, top_fraction)
    return {name: LocationScore(name, float(conc[j]), float(drop[j]), float(control_drop[j]), top_fraction,
                                bool(blank[j])) for j, name in enumerate(concepts)}


def _evidence(model: ConceptBottleneckModel, idx: Sequence[int]) -> tuple:
    """The layer a deletion is read with, as the maps read it (``ConceptLayer.for_maps``), and the spread its
    drops are measured in: the training std, or for a probability's log-odds the spread of the training
    percentiles' log-odds (a probability at 1.0 barely moves when its evidence is deleted; its log-odds do)."""
    layer = model.concept_layer.subset(list(idx))
    evidence = layer.for_maps()
    if evidence is layer:
        return layer, model.stats.std[list(idx)].float()
    q = model.stats.quantiles[:, list(idx)].double().clamp(1e-7, 1 - 1e-7)
    return evidence, torch.logit(q).std(0).float().clamp_min(1e-6)


# -- one explanation --------------------------------------------------------------------------------
NOT_THERE = "read as present, but probably not there"
THERE = "read as absent, but probably there"


@dataclass(frozen=True, eq=False)
class ConceptReliability:
    """How far to believe one image's explanation, concept by concept.

    concepts, class_name: the explanation's; score, z, contribution, p_present: (K,) (contribution to
    ``class_name``); auroc: per concept (the bundle's own concept AUROC where it has one, else the
    calibration data's; None where unknown); name_stability: per concept, the lowest correlation of its
    scores under paraphrases of its prompt (None where not measured) and fragile: whether that is
    below the concept's correlation with its nearest other concept; locations: the shown maps'
    ``LocationScore``; ood: the image's ``OODResult``; calibration: the ``PresenceCalibration`` used."""

    concepts: tuple[str, ...]
    class_name: str
    score: torch.Tensor
    z: torch.Tensor
    contribution: torch.Tensor
    p_present: torch.Tensor
    auroc: tuple[float | None, ...]
    name_stability: tuple[float | None, ...]
    fragile: tuple[bool | None, ...]
    calibration: PresenceCalibration
    ood: OODResult | None = None
    locations: dict = field(default_factory=dict)

    def flag(self, k: int, map_verdict: bool = True) -> str:
        """What is doubtful about concept k, in words ('' when nothing is); ``map_verdict=False`` leaves
        out a map that is not on its evidence (for a table that shows the map's verdict beside it)."""
        present, p = float(self.z[k]) > 0, float(self.p_present[k])
        flags = []
        if present and p < 0.5:
            flags.append(NOT_THERE)
        elif not present and p > 0.5:
            flags.append(THERE)
        loc = self.locations.get(self.concepts[k])
        if map_verdict and loc is not None and loc.verdict != ON_EVIDENCE:
            flags.append(f"map {loc.verdict}")
        if self.fragile[k]:
            flags.append("fragile name")
        return "; ".join(flags)

    def probably_absent(self, top: int = 5) -> list[str]:
        """Among the ``top`` concepts by |contribution|, those read as present that are probably not there."""
        order = self.contribution.abs().argsort(descending=True)[:top].tolist()
        return [self.concepts[k] for k in order if float(self.contribution[k]) != 0 and float(self.z[k]) > 0
                and float(self.p_present[k]) < 0.5]

    def to_frame(self, top: int | None = None):
        """One row per concept, by |contribution| (the first ``top``): concept, read_as, contribution,
        p_present, presence_from, auroc, name_stability, fragile_name, concentration, deletion_drop,
        control_drop, location, flag (every doubt) and doubt (the same without the map's verdict)."""
        import pandas as pd

        order = self.contribution.abs().argsort(descending=True, stable=True).tolist()
        order = order[:top] if top is not None else order
        rows = []
        for k in order:
            loc = self.locations.get(self.concepts[k])
            rows.append({
                "concept": self.concepts[k], "read_as": "present" if float(self.z[k]) > 0 else "absent",
                "contribution": float(self.contribution[k]), "p_present": float(self.p_present[k]),
                "presence_from": self.calibration.kind[k], "auroc": self.auroc[k],
                "name_stability": self.name_stability[k], "fragile_name": self.fragile[k],
                "concentration": loc.concentration if loc else None, "deletion_drop": loc.drop if loc else None,
                "control_drop": loc.control_drop if loc else None, "location": loc.verdict if loc else None,
                "flag": self.flag(k), "doubt": self.flag(k, map_verdict=False)})
        frame = pd.DataFrame(rows)
        frame.attrs["class"] = self.class_name
        return frame


def name_stability(model: ConceptBottleneckModel) -> tuple[tuple[float | None, ...], tuple[bool | None, ...]]:
    """Per concept: the stored lowest paraphrase correlation and whether the name is fragile
    (``cbm_core.explain.paraphrase``), or None where not measured."""
    K = model.n_concepts
    data = stored(model, NAMES_KEY)
    if not isinstance(data, dict) or data.get("concepts_sha1") != concepts_digest(model.concepts.names):
        return (None,) * K, (None,) * K
    low, fragile = data.get("min_agreement"), data.get("fragile")
    if not (isinstance(low, list) and isinstance(fragile, list) and len(low) == len(fragile) == K):
        return (None,) * K, (None,) * K
    ok = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    return (tuple(float(v) if ok(v) else None for v in low),
            tuple(bool(v) if isinstance(v, bool) else None for v in fragile))


def concept_aurocs(model: ConceptBottleneckModel, calibration: PresenceCalibration) -> tuple[float | None, ...]:
    """Per concept: the bundle's own concept AUROC (a concept-supervised build's), else the calibration's."""
    own = stored_auroc(model)
    return tuple(own.get(n, calibration.auroc[k] if calibration.auroc else None) if own is not None
                 else (calibration.auroc[k] if calibration.auroc else None) for k, n in enumerate(model.concepts.names))


def stored_auroc(model: ConceptBottleneckModel) -> dict | None:
    data = model.metrics.get("concept_auroc")
    if not isinstance(data, dict):
        return None
    return {k: float(v) for k, v in data.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def reliability(model: ConceptBottleneckModel, explanation: Explanation, index: int = 0, *,
                embedding: torch.Tensor | None = None, locations: dict | None = None,
                class_index: int | None = None) -> ConceptReliability:
    """How far to believe image ``index`` of ``explanation`` (made by ``model``): presence of every
    concept, AUROC and name stability where known, ``locations`` (``location_scores``) where given,
    and — with its ``embedding`` (D,) — whether the image is like the training data."""
    c = int(explanation.predicted[index]) if class_index is None else class_index
    calibration = presence_calibration(model)
    scores = explanation.scores[index]
    p = calibration.predict(scores[None])[0]
    stability, fragile = name_stability(model)
    ood = None
    if embedding is not None:
        ood = ood_check(model, embedding.reshape(1, -1), scores[None])[0]
    return ConceptReliability(tuple(explanation.concept_names), explanation.class_names[c], scores,
                              explanation.z[index], explanation.contributions(c)[index], p,
                              concept_aurocs(model, calibration), stability, fragile, calibration, ood,
                              dict(locations or {}))


# -- fitting and storing ----------------------------------------------------------------------------
def labels_in_model_order(model: ConceptBottleneckModel, concept_labels: torch.Tensor | None,
                          label_names: Sequence[str] | None) -> torch.Tensor | None:
    """(N, K) 0/1 labels in the model's concept order, NaN for concepts the data does not label;
    None when nothing matches. ``label_names`` name the columns of ``concept_labels``."""
    if concept_labels is None or not label_names:
        return None
    where = {n: j for j, n in enumerate(label_names)}
    if not any(n in where for n in model.concepts.names):
        return None
    out = torch.full((len(concept_labels), model.n_concepts), float("nan"))
    for k, n in enumerate(model.concepts.names):
        if n in where:
            out[:, k] = concept_labels[:, where[n]].float()
    return out


def fit_reliability(model: ConceptBottleneckModel, features, *, label_names: Sequence[str] | None = None,
                    fitted_on: str = "validation data", seed: int = 0) -> ConceptBottleneckModel:
    """A new model whose ``metrics`` carry a presence calibration (from ``features.concept_labels``
    where ``label_names`` name their columns — else unsupervised) and an out-of-distribution
    reference fitted on ``features.embeddings`` (held-out validation images, not the training ones:
    a reference fitted on the training images would call them all typical)."""
    scores = model.concept_scores(features.embeddings)
    labels = labels_in_model_order(model, getattr(features, "concept_labels", None), label_names)
    cal = PresenceCalibration.fit(model, scores, labels, fitted_on=f"{fitted_on}, {len(scores)} images", seed=seed)
    ref = OODReference.fit(features.embeddings, fitted_on=f"{fitted_on}, {len(scores)} images", seed=seed)
    return model.with_changes(metrics={**model.metrics, PRESENCE_KEY: cal.to_json(), OOD_KEY: ref.to_json()})


def summarize_stored(metrics: dict) -> dict:
    """``metrics`` with each stored reliability fit (hundreds of numbers: the OOD reference alone is
    rank x D) replaced by one line saying what it is — for printing a model's metrics (``cli info``)."""
    out = dict(metrics)

    def number(v, fmt):
        return fmt.format(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else "?"

    p = metrics.get(PRESENCE_KEY)
    if isinstance(p, dict):
        kinds = p.get("kind") if isinstance(p.get("kind"), list) else []
        how = "Platt scaling on labels" if kinds and all(k == "labels" for k in kinds) else "mixture / labels"
        out[PRESENCE_KEY] = (f"presence calibration ({how}) for {len(kinds)} concepts, {p.get('n_labelled', 0)} labelled "
                             f"images, out-of-fold ECE {number(p.get('ece'), '{:.3f}')}; {str(p.get('fitted_on', ''))[:80]}")
    o = metrics.get(OOD_KEY)
    if isinstance(o, dict):
        comps = o.get("components") if isinstance(o.get("components"), list) else []
        out[OOD_KEY] = (f"{o.get('method', '?')} out-of-distribution reference, rank {len(comps)}, fitted on "
                        f"{o.get('n_fit', '?')} embeddings; {str(o.get('fitted_on', ''))[:80]}")
    n = metrics.get(NAMES_KEY)
    if isinstance(n, dict):
        fragile = n.get("fragile") if isinstance(n.get("fragile"), list) else []
        out[NAMES_KEY] = f"paraphrase check: {sum(v is True for v in fragile)} of {len(fragile)} names fragile"
    g = metrics.get("concept_pointing")
    if isinstance(g, dict):
        rows = g.get("concepts") if isinstance(g.get("concepts"), list) else []
        try:
            maps, hits = sum(int(r["n"]) for r in rows), sum(int(r["hits"]) for r in rows)
            game = f"pointing game {hits / maps:.3f} over {maps} maps" if maps else "no maps"
        except (KeyError, TypeError, ValueError):
            game = "malformed"
        out["concept_pointing"] = f"{g.get('method', '?')} maps on {str(g.get('measured_on', ''))[:80]}: {game}"
    return out
