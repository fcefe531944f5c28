"""Label-free CBM (Oikarinen et al., ICLR 2023) over cached backbone embeddings.

    concept filters ─> W_c trained with the cos³ loss ─> drop uninterpretable concepts
      ─> standardise ─> sparse elastic-net head

1. **Concept filters**, each reported in a ``FilterReport`` (``filter_report_``; also
   ``model.recipe["filtered"]`` as ``[concept, reason]`` rows): longer than ``max_chars`` (30);
   too similar to a class name in the text space (> 0.85); near-duplicate of an earlier concept
   (> 0.9; we keep the earlier one, the paper keeps the more "central" one) — both on the bare
   names' text vectors, as in the paper (it averages CLIP with an mpnet sentence model; we use the
   backbone's text tower alone, so no second model is downloaded); low top-5 mean CLIP
   activation over the training images (see below); and, after training, low validation cos³
   similarity (≤ 0.45).
2. **The projection** ``W_c`` (K, D), a ``LinearProjection``, is trained from a seeded random
   init (``nn.Linear``'s) with Adam (lr 1e-3, ≤ ``proj_steps`` = 1000 full batches) to maximise the
   cos³ similarity with the CLIP image–concept similarities ``P = X @ V.T`` (X: unit image
   embeddings, V: unit text vectors of the concepts with the templates): per concept, over the
   images of a batch, mean-centre, cube, L2-normalise, cosine; the loss is minus the mean over
   concepts. Early stopping as in the paper's code: the validation loss is checked every 50 steps
   and training stops at the first check that does not improve, keeping the best weights. The
   validation images are the ``val_features`` given to ``fit``, else 10 % of the training images
   held out (seeded); the head is then fitted on all training images.
3. **The head**: the projected activations standardised with the training mean / std, then our
   elastic-net multinomial logistic regression (l1 ratio 0.99; λ is the sparsity knob).

The top-5 activation filter. The paper drops a concept when the mean of its 5 largest image
similarities over the training images is ≤ 0.25 — a number in OpenAI CLIP's cosine units. Other
backbones' cosines live on other scales (on the Toy Birds demo model every top-5 mean is above
0.38, so 0.25 removes nothing), so ``top5_mode`` offers: ``absolute`` (the paper's rule with
``top5_cutoff``), ``relative`` (the default, scale-free) and ``off``. ``relative`` measures how far
a concept's top-5 mean gets from the *typical* image–concept similarity (the median of P) towards
the *best* concept's top-5 mean, r = (top5 − median P) / (max top5 − median P), and drops
r ≤ ``top5_relative`` (0.33). It is unchanged by any affine change of the cosine scale. On OpenAI
CLIP (typical cosine ≈ 0.2, best top-5 ≈ 0.35: rough figures, not measured here) the paper's
0.25 sits at r ≈ 0.33. Measured on Toy Birds (see ``_TOP5_RELATIVE_DEFAULT``) it keeps every real
concept and removes most distractors that never occur in the world, where a robust outlier rule
(median − k·MAD over concepts) removed no distractor and, on the 26-concept list, the real
``red eye`` first.

Honesty about what this recipe is *here*. In the paper W_c maps a *different* backbone's
features (e.g. a ResNet trained on the task) into CLIP's concept space, so W_c transfers CLIP's
concept knowledge to that backbone. On one shared CLIP feature cache (our design: every recipe on
one cache, compared at matched sparsity) the target P = X @ V.T is itself linear in X, so W_c = V
is a global optimum of the loss (similarity 1 for every concept): LF-CBM here is PCBM's concept
layer re-learned from a random start — *a learned, cube-emphasised re-projection* of the text
vectors, not new information. ``model.recipe["projection_text_cosine"]`` reports the mean cosine
between each learned row of W_c and its concept's text vector (1 = exactly PCBM's directions), so
the difference from PCBM is measured, not assumed. On Toy Birds (demo model, 26 concepts): rows at
cosine ≈ 0.6 from their text vectors (the random init survives in directions the images do not
span), yet validation cos³ 0.997 and test scores correlated 0.999 with PCBM's, and test accuracy
within a point of PCBM's at ≤ 5 concepts per class. The text filters are where the two differ
there: the small demo text tower puts e.g. "red eye" at cosine 0.907 from "red crown", so the
paper's thresholds drop 9 of the 26 real concepts (4 as class-like, 5 as duplicates).

The cos³ loss mean-centres and the head standardises, so a bias of the layer changes neither
(the paper's W_c has none; with ``calibrate`` off, neither has ours). With ``calibrate`` (the
default) each learned row is rescaled and given a bias so that its training scores have the mean
and spread of its CLIP similarities: raw scores then read on the backbone's cosine scale (the
Inspect page shows them), while the loss and the head are unchanged (both are invariant to a
positive rescaling and a shift of a concept).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import torch

from ..core.concept_layer import LinearProjection
from ..core.concepts import ConceptBank, FilterReport
from ..errors import RecipeError
from ..core.model import ConceptBottleneckModel
from .base import (Param, Recipe, RecipeInputs, check_finite_fit, check_labels, created_info, pick_device,
                   fit_head, layer_standardized, register_recipe)
from ..data.sources import (MappedSource, RowsSource, column_stats, column_top, is_source,
                       sample_rows, source_key)
from .elastic_net import regularization_path

# Measured on Toy Birds (train split, 4,000 images, demo model, "a bird with {}."). Concept list =
# the 324-entry assets/toybirds_vocabulary.txt: the 26 world concepts have r in [0.42, 0.79]; 61
# distractors that never occur in the world (purple / pink parts, snow, city, cat, ...) have a median
# r of 0.25 (AUROC of the top-5 mean, real vs absent: 0.97). At r <= 0.33: 0 / 26 real concepts and
# 46 / 61 absent distractors dropped (187 / 324 entries in all, mostly generic words); at 0.40 still
# 0 / 26 but with no margin, at 0.45 the first real one goes. On the 26-concept list alone r >= 0.69.
_TOP5_RELATIVE_DEFAULT = 0.33
_CHECK_EVERY = 50  # the paper's code checks the validation loss every 50 steps


def cos_cubed_similarity(targets: torch.Tensor, activations: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Label-free CBM's similarity, per concept (column). targets, activations: (N, K) -> (K,).

    Each column is mean-centred over the N images, cubed elementwise and L2-normalised; the result
    is the cosine of the two columns. Invariant to a positive rescaling and a shift of either
    column; 1 when the columns agree up to those. A column with no spread scores 0."""
    def prep(x):
        x = x.float() - x.float().mean(dim=0, keepdim=True)
        x = x / x.abs().amax(dim=0, keepdim=True).clamp_min(eps)  # rescale before cubing (cosine ignores it)
        x = x ** 3
        return x / x.norm(dim=0, keepdim=True).clamp_min(eps)

    return (prep(targets) * prep(activations)).sum(dim=0)


def cos_cubed_loss(targets: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """Minus the mean over concepts of ``cos_cubed_similarity``; a scalar, differentiable."""
    return -cos_cubed_similarity(targets, activations).mean()


def top5_activation(similarities: torch.Tensor) -> torch.Tensor:
    """Mean of each concept's 5 largest image similarities; similarities: (N, K) -> (K,)."""
    return similarities.float().topk(min(5, similarities.shape[0]), dim=0).values.mean(dim=0)


@dataclass(frozen=True)
class ProjectionFit:
    """The trained W_c (K, D) and how training went: ``history`` holds ``(step, train similarity,
    val similarity)`` at every check; ``best_step`` is where the weights come from."""

    weight: torch.Tensor
    n_steps: int
    best_step: int
    stopped_early: bool
    history: tuple[tuple[int, float, float], ...]


def train_projection(X: torch.Tensor, P: torch.Tensor | None, X_val: torch.Tensor, P_val: torch.Tensor, *,
                     steps: int = 1000, lr: float = 1e-3, batch_size: int = 50_000, check_every: int = _CHECK_EVERY,
                     generator: torch.Generator | None = None, vectors: torch.Tensor | None = None,
                     device: str | torch.device | None = None) -> ProjectionFit:
    """Train W_c so that ``X @ W_c.T`` matches P (N, K) in cos³ similarity (Adam). X: (N, D);
    X_val, P_val: the validation images and their targets. Stops at the first validation check
    (every ``check_every`` steps, and at the last step) that does not improve on the best so far.

    X may be a ``FeatureSource`` (a store) with P None and ``vectors`` (K, D): each step reads its
    batch with ``take`` (the same seeded rows as in memory) and computes its targets ``xb @ vectors.T``;
    the cos³ loss is per batch anyway, so nothing needs the whole of X. On ``device`` (default CPU)."""
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    streaming = is_source(X)
    N, D = (len(X), X.dim) if streaming else X.shape
    K = vectors.shape[0] if streaming else P.shape[1]
    dev = torch.device(device or "cpu") if streaming else X.device
    # nn.Linear's default init, U(-1/sqrt(D), 1/sqrt(D)), drawn from our own generator
    W = ((torch.rand(K, D, generator=g) * 2 - 1) / D ** 0.5).to(dev).requires_grad_(True)
    opt = torch.optim.Adam([W], lr=lr)
    batch = min(int(batch_size), N)
    best, best_W, best_step, history, stopped, step = None, None, 0, [], False, 0
    whole = None
    for step in range(steps):
        if batch < N:
            rows = torch.randperm(N, generator=g)[:batch]
            if streaming:
                xb = X.take(rows).to(dev)
                pb = xb @ vectors.T
            else:
                rows = rows.to(X.device)
                xb, pb = X[rows], P[rows]
        elif streaming:  # one batch is every row: read them once
            if whole is None:
                xw = X.take(torch.arange(N)).to(dev)
                whole = (xw, xw @ vectors.T)
            xb, pb = whole
        else:
            xb, pb = X, P
        loss = cos_cubed_loss(pb, xb @ W.T)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % check_every == 0 or step == steps - 1:
            with torch.no_grad():
                val_loss = float(cos_cubed_loss(P_val, X_val @ W.T))
            history.append((step, -float(loss.detach()), -val_loss))
            if best is None or val_loss < best:
                best, best_W, best_step = val_loss, W.detach().clone(), step
            else:
                stopped = True
                break
    return ProjectionFit(best_W, step + 1, best_step, stopped, tuple(history))


def _top5_filter(bank: ConceptBank, vectors: torch.Tensor, P: torch.Tensor | None, mode: str, cutoff: float,
                 relative: float, *, top5: torch.Tensor | None = None, typical: torch.Tensor | None = None):
    """Label-free CBM's low-activation filter (see the module docstring). P: (N, K) image-concept
    similarities, or None with ``top5`` (K,) and ``typical`` (the median of P) computed by streaming.
    Returns (bank, vectors, P, report)."""
    if mode == "off":
        return bank, vectors, P, FilterReport()
    top5 = top5_activation(P) if top5 is None else top5
    if mode == "absolute":
        drop = top5 <= cutoff
        why = [f"top-5 mean CLIP activation {float(v):.3f} ≤ {cutoff:g}" for v in top5]
    else:
        typical, best = (P.float().median() if typical is None else typical), top5.max()
        r = (top5 - typical) / (best - typical).clamp_min(1e-12)
        drop = (r <= relative) & (best > typical)  # no spread at all: nothing to compare with
        why = [f"top-5 mean CLIP activation {float(v):.3f} is only {float(ri):.2f} of the way from the typical "
               f"similarity {float(typical):.3f} to the best concept's {float(best):.3f} (cutoff {relative:g})"
               for v, ri in zip(top5, r)]
    keep = [i for i in range(len(bank)) if not bool(drop[i])]
    report = FilterReport(tuple((bank.names[i], why[i]) for i in range(len(bank)) if bool(drop[i])))
    cut = (lambda m: m[:, keep] if m is not None else None)  # noqa: E731
    if not keep:
        return None, vectors[keep], cut(P), report
    return bank.subset(keep), vectors[keep], cut(P), report


def _holdout(n: int, fraction: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=g)
    n_val = max(1, round(n * fraction)) if n > 1 else 0
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def _fingerprint(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, torch.Tensor):
            t = p.detach().float().cpu().contiguous()
            h.update(str(tuple(t.shape)).encode())
            h.update(t.numpy().tobytes())
        else:
            h.update(repr(p).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class _Layer:
    """What the concept stage produced: kept concepts, the layer, the reports, diagnostics."""

    bank: ConceptBank
    layer: LinearProjection
    report: FilterReport
    projection: ProjectionFit
    val_similarity: torch.Tensor  # (K,) of the kept concepts
    text_cosine: torch.Tensor  # (K,) cosine of each learned row with its text vector
    counts: dict


# Chosen on Toy Birds' validation split (never test): the path's best validation accuracy at <= 5
# concepts per class lies at lambda 0.05-0.06, with the paper's filters and without them.
LAM = Param("lam", float, 0.05, "elastic-net strength: higher = fewer concepts per class", low=0.0, high=10.0,
            log=True, sparsity=True)


@register_recipe
class LabelFreeCBM(Recipe):
    """Estimator: ``LabelFreeCBM(concepts=..., concept_vectors=..., classes=..., backbone_spec=...,
    class_vectors=...).fit(X, y, val_features=..., val_labels=...)``.

    Learned attributes (after ``fit``): ``model_``, ``coef_``, ``intercept_``, ``stats_``,
    ``projection_`` (W_c of the kept concepts, (K, D)), ``concepts_`` (the kept ``ConceptBank``),
    ``filter_report_`` (every removed concept with its reason), ``val_similarity_`` (K,),
    ``n_steps_``, ``best_step_``, ``stopped_early_``, ``n_iter_``, ``converged_``.

    features: (N, D) unit-norm backbone embeddings; labels: (N,) int64 class indices.
    ``class_vectors`` (C, D): text vectors of the bare class names, for the class-similarity filter
    (without them only exact class-name matches are removed); ``filter_vectors`` (K, D): text
    vectors of the bare concept names for the class-similarity and near-duplicate filters (default:
    ``concept_vectors``). ``from_inputs`` embeds both without templates, as the paper does.
    """

    name = "lf-cbm"
    title = "Label-free CBM"
    summary = ("Filters the concept list (length, class names, duplicates, low activation), learns a projection of "
               "the embedding onto the concepts with the cos³ loss against CLIP similarities, drops concepts it "
               "cannot learn, then a sparse elastic-net head.")
    paper = "Oikarinen et al., Label-free Concept Bottleneck Models, ICLR 2023"
    needs = ("labels", "concepts")
    streams = True
    params = (LAM,
              Param("l1_ratio", float, 0.99, "share of the l1 penalty in the elastic net (1 = lasso)", low=0.0,
                    high=1.0),
              Param("proj_steps", int, 1000, "most Adam steps for the concept projection (early stopping on "
                    "validation)", low=1, high=100_000),
              Param("proj_lr", float, 1e-3, "Adam learning rate of the concept projection", low=1e-6, high=1.0,
                    log=True),
              Param("proj_batch_size", int, 50_000, "images per projection step (all of them when fewer)",
                    low=2, high=10_000_000),
              Param("max_chars", int, 30, "drop concepts longer than this many characters (0 = no length filter)",
                    low=0, high=1000),
              Param("class_cutoff", float, 0.85, "drop concepts whose text vector has cosine above this with a "
                    "class name's (1 = only exact class names)", low=0.0, high=1.0),
              Param("duplicate_cutoff", float, 0.9, "drop the later of two concepts whose text vectors have cosine "
                    "above this "
                    "(1 = off)", low=0.0, high=1.0),
              Param("top5_mode", str, "relative", "low-activation filter: 'relative' (scale-free, against the "
                    "typical and the best concept), 'absolute' (the paper's cutoff on the cosine) or 'off'",
                    choices=("relative", "absolute", "off")),
              Param("top5_cutoff", float, 0.25, "absolute mode: drop concepts whose top-5 mean CLIP similarity over "
                    "the training images is at most this (the paper's 0.25 is in OpenAI CLIP's units)",
                    low=-1.0, high=1.0),
              Param("top5_relative", float, _TOP5_RELATIVE_DEFAULT, "relative mode: drop concepts whose top-5 mean "
                    "gets at most this fraction of the way from the median image-concept similarity to the best "
                    "concept's top-5 mean", low=0.0, high=1.0),
              Param("interpretability_cutoff", float, 0.45, "after training, drop concepts whose validation cos³ "
                    "similarity is at most this", low=-1.0, high=1.0),
              Param("calibrate", bool, True, "rescale each learned concept (and add a bias) so its raw scores read "
                    "on the CLIP similarity scale; the loss and the head are unaffected"),
              Param("seed", int, 0, "seed of the projection's init, batches and validation hold-out", low=0,
                    high=2**31 - 1),
              Param("max_iter", int, 3000, "iteration cap of the head's solver", low=10, high=1_000_000))

    def __init__(self, *, concepts: ConceptBank, concept_vectors: torch.Tensor, classes: Sequence[str],
                 backbone_spec: str, class_vectors: torch.Tensor | None = None,
                 filter_vectors: torch.Tensor | None = None, templates: Sequence[str] = ("{}",),
                 lam: float = 0.05, l1_ratio: float = 0.99, proj_steps: int = 1000, proj_lr: float = 1e-3,
                 proj_batch_size: int = 50_000, max_chars: int = 30, class_cutoff: float = 0.85,
                 duplicate_cutoff: float = 0.9, top5_mode: str = "relative", top5_cutoff: float = 0.25,
                 top5_relative: float = _TOP5_RELATIVE_DEFAULT, interpretability_cutoff: float = 0.45,
                 calibrate: bool = True,
                 seed: int = 0, max_iter: int = 3000, tol: float = 1e-5, device: str | torch.device | None = None):
        self.concepts = concepts
        self.concept_vectors = concept_vectors
        self.classes = classes
        self.backbone_spec = backbone_spec
        self.class_vectors = class_vectors
        self.filter_vectors = filter_vectors
        self.templates = templates
        self.lam = lam
        self.l1_ratio = l1_ratio
        self.proj_steps = proj_steps
        self.proj_lr = proj_lr
        self.proj_batch_size = proj_batch_size
        self.max_chars = max_chars
        self.class_cutoff = class_cutoff
        self.duplicate_cutoff = duplicate_cutoff
        self.top5_mode = top5_mode
        self.top5_cutoff = top5_cutoff
        self.top5_relative = top5_relative
        self.interpretability_cutoff = interpretability_cutoff
        self.calibrate = calibrate
        self.seed = seed
        self.max_iter = max_iter
        self.tol = tol
        self.device = device

    @classmethod
    def from_inputs(cls, inputs: RecipeInputs, **params) -> "LabelFreeCBM":
        inputs.require(cls)
        names = inputs.concepts.names
        bare = tuple(inputs.templates) == ("{}",)
        return cls(concepts=inputs.concepts, concept_vectors=inputs.embed(names),
                   filter_vectors=None if bare else inputs.embed(names, ["{}"]),
                   class_vectors=inputs.embed(inputs.classes, ["{}"]), classes=inputs.classes,
                   backbone_spec=inputs.backbone_spec, templates=inputs.templates, device=inputs.device,
                   **cls.check_params(params))

    # -- the concept stage: filters, projection, interpretability cut ------------------------------
    def _concept_stage(self, features: torch.Tensor, val_features: torch.Tensor | None) -> _Layer:
        streaming = is_source(features)
        ident = lambda f: source_key(f) if is_source(f) else f  # noqa: E731
        key = _fingerprint(ident(features), ident(val_features), self.concept_vectors, self.class_vectors,
                           self.filter_vectors,
                           self.concepts.names,
                           {k: v for k, v in self.get_params().items() if k not in ("lam", "l1_ratio", "max_iter")})
        memo = getattr(self, "_stage_memo", None)
        if memo is not None and memo[0] == key:
            return memo[1]
        device = pick_device(self.device)
        bank = self.concepts
        vectors = torch.as_tensor(self.concept_vectors).float().cpu()
        D = features.dim if streaming else features.shape[1]
        if vectors.shape != (len(bank), D):
            raise RecipeError(f"concept_vectors must be ({len(bank)}, {D}); got {tuple(vectors.shape)}.")
        # the text filters compare bare names (the paper's thresholds were set that way; a shared prompt
        # template lifts every cosine); P uses the vectors with the templates
        text = vectors if self.filter_vectors is None else torch.as_tensor(self.filter_vectors).float().cpu()
        original = {n: i for i, n in enumerate(bank.names)}
        counts = {"given": len(bank), "length": 0, "class_similar": 0, "near_duplicate": 0, "low_activation": 0,
                  "uninterpretable": 0}  # a filter switched off removed nothing
        report = FilterReport()

        def removed_all(more: FilterReport):
            everything = report + more
            return RecipeError(f"The Label-free CBM filters removed every concept ({len(everything)} removed: "
                               f"{_reasons(everything)}). Loosen max_chars / class_cutoff / duplicate_cutoff, or "
                               f"add concepts.")

        if self.max_chars > 0:
            keep = [i for i, n in enumerate(bank.names) if len(n) <= self.max_chars]
            r = FilterReport(tuple((n, f"longer than {self.max_chars} characters") for n in bank.names
                                   if len(n) > self.max_chars))
            if not keep:
                raise removed_all(r)
            bank = bank.subset(keep)
            report, counts["length"] = report + r, len(r)
        rows = lambda b: [original[n] for n in b.names]  # noqa: E731
        lowered = {c.lower() for c in self.classes}
        if self.class_vectors is not None:
            class_vectors = torch.as_tensor(self.class_vectors).float().cpu()
            hit = ((text[rows(bank)] @ class_vectors.T).max(dim=1).values > self.class_cutoff) | torch.tensor(
                [n.lower() in lowered for n in bank.names])
            if bool(hit.all()):
                raise removed_all(FilterReport(tuple((n, "too similar to a class name") for n in bank.names)))
            bank, _, r = bank.filter_class_similar(text[rows(bank)], class_vectors, list(self.classes),
                                                   self.class_cutoff)
        else:  # no text vectors for the classes: only exact class names can be caught
            keep = [i for i, n in enumerate(bank.names) if n.lower() not in lowered]
            r = FilterReport(tuple((n, "is a class name") for n in bank.names if n.lower() in lowered))
            if not keep:
                raise removed_all(r)
            bank = bank.subset(keep)
        report, counts["class_similar"] = report + r, len(r)
        if self.duplicate_cutoff < 1.0:  # keeps the first of each group: never empty
            bank, _, r = bank.filter_near_duplicates(text[rows(bank)], self.duplicate_cutoff)
            report, counts["near_duplicate"] = report + r, len(r)
        vectors = vectors[rows(bank)]
        if streaming:  # the filter's two statistics, without the (N, K) similarity matrix
            V = vectors.to(device)
            sims = lambda x: x.float().to(device) @ V.T  # noqa: E731
            top5 = column_top(features, sims, 5).mean(dim=0) if self.top5_mode != "off" else None
            typical = sims(features.take(sample_rows(len(features)))).median() if self.top5_mode == "relative" else None
            X = P = None
            bank, vectors, _, r = _top5_filter(bank, vectors, None, self.top5_mode, self.top5_cutoff,
                                               self.top5_relative, top5=top5, typical=typical)
        else:
            X = features.float().to(device)
            P = X @ vectors.to(device).T
            bank, vectors, P, r = _top5_filter(bank, vectors, P, self.top5_mode, self.top5_cutoff,
                                               self.top5_relative)
        report, counts["low_activation"] = report + r, len(r)
        if bank is None:
            raise RecipeError(f"The low-activation filter removed every concept; set top5_mode to 'off' or loosen "
                              f"top5_relative / top5_cutoff. ({_reasons(report)})")
        g = torch.Generator().manual_seed(int(self.seed))
        if val_features is not None and len(val_features) > 0:
            X_tr, P_tr = (features, None) if streaming else (X, P)
            X_val = (val_features.take(torch.arange(len(val_features))) if is_source(val_features)
                     else val_features).float().to(device)
            P_val = X_val @ vectors.to(device).T
        elif streaming:  # the validation rows (10 %) are read into memory; training batches come from the source
            tr, va = _holdout(len(features), 0.1, g)
            if len(va) == 0:
                raise RecipeError("Label-free CBM needs at least 2 training images (one to validate the projection).")
            X_tr, P_tr = RowsSource(features, tr), None
            X_val = features.take(va).float().to(device)
            P_val = X_val @ vectors.to(device).T
        else:  # the paper validates on a separate split; without one, hold out 10 % (seeded)
            tr, va = _holdout(len(X), 0.1, g)
            if len(va) == 0:
                raise RecipeError("Label-free CBM needs at least 2 training images (one to validate the projection).")
            X_tr, P_tr, X_val, P_val = X[tr.to(device)], P[tr.to(device)], X[va.to(device)], P[va.to(device)]
        proj = train_projection(X_tr, P_tr, X_val, P_val, steps=self.proj_steps, lr=self.proj_lr,
                                batch_size=self.proj_batch_size, generator=g,
                                vectors=vectors.to(device) if streaming else None, device=device)
        with torch.no_grad():
            sim = cos_cubed_similarity(P_val, X_val @ proj.weight.T).cpu()
        interpretable = sim > self.interpretability_cutoff
        r = FilterReport(tuple((bank.names[i], f"validation cos³ similarity {float(sim[i]):.3f} ≤ "
                                f"{self.interpretability_cutoff:g} after training")
                               for i in range(len(bank)) if not bool(interpretable[i])))
        report, counts["uninterpretable"] = report + r, len(r)
        keep = interpretable.nonzero().flatten().tolist()
        if not keep:  # (checked before the bank is cut: a ConceptBank is never empty)
            raise RecipeError(f"Every concept's validation cos³ similarity is at most {self.interpretability_cutoff:g} "
                              f"(best {float(sim.max()):.3f}): the projection could not learn them. Lower "
                              f"interpretability_cutoff, raise proj_steps, or check the concepts and images.")
        bank, vectors = bank.subset(keep), vectors[keep]
        W = proj.weight.cpu()[keep]
        sim = sim[keep]
        text_cos = torch.nn.functional.cosine_similarity(W, vectors, dim=1)
        bias = None
        if self.calibrate:
            # a positive rescale and a shift per concept: scores then have the mean / std of the CLIP similarities
            if streaming:
                s = column_stats(MappedSource(features, lambda x: x.float().cpu() @ W.T, len(W)))
                target = column_stats(MappedSource(features, lambda x: x.float().cpu() @ vectors.T, len(W)))
                scale = target["std"] / s["std"].clamp_min(1e-12)
                W = W * scale[:, None]
                bias = target["mean"] - s["mean"] * scale
            else:
                s = features.float().cpu() @ W.T
                target = features.float().cpu() @ vectors.T
                scale = target.std(0, unbiased=False) / s.std(0, unbiased=False).clamp_min(1e-12)
                W = W * scale[:, None]
                bias = target.mean(0) - s.mean(0) * scale
        counts["kept"] = len(bank)
        bank = ConceptBank(bank.names, tuple(f"{src} · kept by lf-cbm filters" for src in bank.sources))
        stage = _Layer(bank, LinearProjection(W.contiguous(), bias), report, proj, sim, text_cos, counts)
        self._stage_memo = (key, stage)
        return stage

    def fit(self, features: torch.Tensor, labels: torch.Tensor, *, val_features: torch.Tensor | None = None,
            val_labels: torch.Tensor | None = None, **_) -> "LabelFreeCBM":
        """features: (N, D) tensor, or a ``FeatureSource`` such as a ``FeatureStore`` (with
        ``labels=store.labels``), which is streamed: never loaded whole (see ``cbm_core.data.sources``)."""
        labels = check_labels(features, labels, len(self.classes))
        device = pick_device(self.device)
        stage = self._concept_stage(features, val_features)
        layer = stage.layer
        stats, z = layer_standardized(layer, stage.bank.names, features)
        res, weight, bias, train_accuracy = fit_head(z, labels, len(self.classes), self.lam, self.l1_ratio,
                                                     max_iter=self.max_iter, tol=self.tol, device=device)
        check_finite_fit(self.name, projection=layer.weight, weight=weight, bias=bias)
        self.stats_ = stats
        self.coef_ = weight
        self.intercept_ = bias
        self.projection_ = layer.weight
        self.concepts_ = stage.bank
        self.filter_report_ = stage.report
        self.val_similarity_ = stage.val_similarity
        self.n_steps_ = stage.projection.n_steps
        self.best_step_ = stage.projection.best_step
        self.stopped_early_ = stage.projection.stopped_early
        self.n_iter_ = res.n_iter
        self.converged_ = res.converged
        warnings = [] if res.converged else [f"The head's solver stopped at its iteration cap ({self.max_iter}) "
                                             f"before converging; raise max_iter or λ."]
        last = stage.projection.history[-1]
        self.model_ = ConceptBottleneckModel(
            backbone_spec=self.backbone_spec, concepts=stage.bank, concept_layer=layer, classes=tuple(self.classes),
            stats=stats, weight=weight, bias=bias, templates=tuple(self.templates),
            recipe={"name": self.name, **self.get_params(), "tol": self.tol, "n_iter": res.n_iter,
                    "converged": res.converged, "warnings": warnings,
                    "filtered": [[c, why] for c, why in stage.report.removed], "filter_counts": stage.counts,
                    "projection_steps": stage.projection.n_steps, "projection_best_step": stage.projection.best_step,
                    "projection_stopped_early": stage.projection.stopped_early,
                    "projection_train_similarity": last[1],
                    "projection_val_similarity": float(stage.val_similarity.mean()),
                    "projection_text_cosine": float(stage.text_cosine.mean()),
                    "projection_text_cosine_min": float(stage.text_cosine.min())},
            metrics={"train_accuracy": train_accuracy},
            created=created_info(device),
        )
        return self

    def path(self, features: torch.Tensor, labels: torch.Tensor, val_features: torch.Tensor | None = None,
             val_labels: torch.Tensor | None = None, n_points: int = 12, progress=None):
        """The λ path over the learned concepts (a list of ``PathPoint``); the concept stage is the
        one ``fit`` uses on the same data (computed once)."""
        labels = check_labels(features, labels, len(self.classes))
        stage = self._concept_stage(features, val_features)
        stats, z = layer_standardized(stage.layer, stage.bank.names, features)
        z_val = (stage.layer(val_features.float()) - stats.mean) / stats.std if val_features is not None else None
        points, _ = regularization_path(z, labels, len(self.classes), l1_ratio=self.l1_ratio, n_lambdas=n_points,
                                        X_val=z_val, progress=progress,
                                        y_val=torch.as_tensor(val_labels) if val_labels is not None else None)
        return points


def _reasons(report: FilterReport, limit: int = 3) -> str:
    rows = [f"'{c}': {why}" for c, why in report.removed[:limit]]
    return "; ".join(rows) + (f"; and {len(report) - limit} more" if len(report) > limit else "")
