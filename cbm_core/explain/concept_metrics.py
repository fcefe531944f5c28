"""Concept-level metrics of a whole model on labelled data: the three of "Concept-Based Explainable
AI: Metrics and Benchmarks" (2025), per concept.

- **global importance** (``concept_metrics``): the concept's share of the evidence the head uses —
  the mean |contribution| to the predicted class over the images, normalised over concepts — and
  the accuracy lost when it is switched off (set to its training mean) for every image;
- **existence**: when the concept is among an image's top contributors to the predicted class and the
  explanation reads it as present, how often it really is present (needs concept labels). The
  paper's finding, which this measures for your model: post-hoc CBMs' top concepts are often absent;
- **location** (``pointing_game``): is the maximum of the concept's map inside the part it names?
  Against pixel masks (Toy Birds), boxes or points (a CSV's ``loc:<concept>`` columns, see
  ``ImageDataset.from_csv``), with the chance a random point would have.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from ..core.model import ConceptBottleneckModel

TOP_K = 5


def concept_metrics(model: ConceptBottleneckModel, embeddings: torch.Tensor, labels: torch.Tensor | None = None,
                    concept_labels: torch.Tensor | None = None, *, top_k: int = TOP_K, max_ablations: int = 256):
    """One row per concept: importance (share of the |contributions| to the predicted class, sums to 1
    over concepts), accuracy_drop (accuracy lost when the concept is set to its training mean for every
    image; for the ``max_ablations`` most important concepts, and only with class ``labels``),
    top_uses (images where it is among the ``top_k`` positive contributors to the predicted class),
    claimed_present (of those, where the explanation reads it as present, z > 0), existence (of
    those, the share where it is present by ``concept_labels`` (N, K in the model's concept order, NaN
    unknown); None without labels) and labelled (how many claims could be checked). Sorted by importance."""
    import pandas as pd

    exp = model.explain_features(embeddings)
    pred = exp.predicted
    N, K = exp.z.shape
    rows = torch.arange(N)
    contrib = exp.z * exp.weight[pred]  # (N, K): each concept's contribution to the predicted class
    mass = contrib.abs().mean(0)
    importance = mass / mass.sum().clamp_min(1e-12)
    k_top = min(top_k, K)
    top = contrib.topk(k_top, dim=1).indices
    in_top = torch.zeros(N, K, dtype=torch.bool)
    in_top[rows[:, None], top] = True
    in_top &= contrib > 0
    claimed = in_top & (exp.z > 0)
    existence, labelled = [None] * K, [0] * K
    if concept_labels is not None:
        y = concept_labels.float()
        known = claimed & ~torch.isnan(y)
        for k in range(K):
            n = int(known[:, k].sum())
            labelled[k] = n
            existence[k] = float(y[known[:, k], k].mean()) if n else None
    drops = [None] * K
    if labels is not None and len(labels):
        labels = torch.as_tensor(labels)
        base = float((pred == labels).float().mean())
        for k in importance.argsort(descending=True)[:max_ablations].tolist():
            logits = exp.logits - exp.z[:, k:k + 1] * exp.weight[:, k][None, :]  # z_k -> 0: the training mean
            drops[k] = base - float((logits.argmax(1) == labels).float().mean())
    frame = pd.DataFrame({"concept": model.concepts.names, "importance": importance.numpy(), "accuracy_drop": drops,
                          "top_uses": in_top.sum(0).numpy(), "claimed_present": claimed.sum(0).numpy(),
                          "existence": existence, "labelled": labelled})
    return frame.sort_values("importance", ascending=False, kind="stable").reset_index(drop=True)


def existence_rate(model: ConceptBottleneckModel, embeddings: torch.Tensor, concept_labels: torch.Tensor,
                   top_k: int = TOP_K) -> dict:
    """Over every (image, concept) pair where the concept is among the image's ``top_k`` positive
    contributors and read as present: the share where it really is present (the paper's existence),
    and how many pairs were checked."""
    exp = model.explain_features(embeddings)
    contrib = exp.z * exp.weight[exp.predicted]
    N, K = contrib.shape
    top = contrib.topk(min(top_k, K), dim=1).indices
    mask = torch.zeros(N, K, dtype=torch.bool)
    mask[torch.arange(N)[:, None], top] = True
    mask &= (contrib > 0) & (exp.z > 0) & ~torch.isnan(concept_labels.float())
    n = int(mask.sum())
    return {"existence": float(concept_labels.float()[mask].mean()) if n else None, "pairs": n, "top_k": top_k}


# -- location -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Annotation:
    """Where a concept is in one image, in that image's pixels: a ``point`` (x, y), a ``box`` (x0, y0,
    x1, y1) or a boolean ``mask`` (H, W)."""

    kind: str
    coords: tuple[float, ...] = ()
    mask: np.ndarray | None = None

    @classmethod
    def from_coords(cls, coords: Sequence[float]) -> "Annotation":
        coords = tuple(float(c) for c in coords)
        if len(coords) == 2:
            return cls("point", coords)
        if len(coords) == 4:
            return cls("box", coords)
        raise ValueError(f"a location is x,y (a point) or x0,y0,x1,y1 (a box); got {len(coords)} numbers")

    def hit(self, x: float, y: float, scale: tuple[float, float], tolerance: float) -> bool:
        """Whether pixel (x, y) of a map drawn at ``scale`` (sx, sy) of the image lands on the part;
        a point counts within ``tolerance`` image pixels."""
        sx, sy = scale
        if self.kind == "mask":
            h, w = self.mask.shape
            return bool(self.mask[min(h - 1, int(y / sy)), min(w - 1, int(x / sx))])
        X, Y = (x + 0.5) / sx, (y + 0.5) / sy  # the pixel's centre, in image pixels
        if self.kind == "box":
            x0, y0, x1, y1 = self.coords
            return x0 - 0.5 <= X <= x1 + 0.5 and y0 - 0.5 <= Y <= y1 + 0.5
        return math.hypot(X - self.coords[0], Y - self.coords[1]) <= tolerance

    def chance(self, size: tuple[int, int], tolerance: float) -> float:
        """The share of an image of ``size`` (W, H) that counts as a hit: what a random point scores."""
        W, H = size
        if self.kind == "mask":
            return float(self.mask.mean())
        if self.kind == "box":
            x0, y0, x1, y1 = self.coords
            return min(1.0, max(0.0, (min(x1, W) - max(x0, 0) + 1)) * max(0.0, (min(y1, H) - max(y0, 0) + 1)) / (W * H))
        return min(1.0, math.pi * tolerance ** 2 / (W * H))


def default_tolerance(size: tuple[int, int]) -> float:
    """How near a point a map's peak must be to count: 5 % of the shorter side, at least 2 px."""
    return max(2.0, 0.05 * min(size))


@dataclass(frozen=True)
class PointingResult:
    """frame: per concept — n (annotated images where the model knows the concept), hits, pointing_game,
    chance (mean share a random point would hit); unknown: annotated concepts the model does not have;
    failed: (image name, reason) for images that could not be read; method: the saliency method;
    measured_on: the images, in words (both set when stored with a model, ``with_pointing``)."""

    frame: object
    unknown: tuple[str, ...]
    failed: tuple[tuple[str, str], ...]
    method: str = ""
    measured_on: str = ""

    def elsewhere(self, threshold: float = 0.5, min_images: int = 3) -> list[str]:
        """Concepts whose maps mostly land off their part (pointing game below ``threshold`` over at
        least ``min_images`` images), worst first."""
        f = self.frame
        bad = f[(f.n >= min_images) & (f.pointing_game < threshold)].sort_values("pointing_game")
        return list(bad.concept)


def pointing_game(pipe, items: Iterable[tuple[str, object, dict]], method: str | None = None,
                  tolerance: float | None = None, max_side: int = 384,
                  progress: Callable[[int], None] | None = None) -> PointingResult:
    """The pointing game of ``pipe.model``'s maps: ``items`` yields ``(name, image source, {concept:
    Annotation})``; for every annotated concept the model has, is its map's maximum (inside the part of
    the picture the model saw) on the annotation? A blank map has no maximum: a miss. Maps are drawn with
    the longest side at most ``max_side``; points count within ``tolerance`` image pixels (default
    ``default_tolerance``). ``method``: a saliency method the tower offers, None for its default."""
    import pandas as pd

    from ..errors import ImageError
    from .overlay import seen_region

    method = pipe.check_map_method(method)
    known = set(pipe.model.concepts.names)
    hits: dict[str, list[bool]] = {}
    chances: dict[str, list[float]] = {}
    unknown, failed = set(), []
    for count, (name, source, parts) in enumerate(items):
        wanted = [c for c in parts if c in known]
        unknown.update(c for c in parts if c not in known)
        if not wanted:
            continue
        try:
            enc = pipe.encode(source, name)
        except ImageError as exc:
            failed.append((name, str(exc)))
            continue
        W, H = enc.size
        scale = min(1.0, max_side / max(W, H))
        out = (max(1, round(W * scale)), max(1, round(H * scale)))
        maps = pipe.saliency(enc, method, wanted, out_size=out)
        left, top, width, height = seen_region(enc.size, pipe.backbone.resize_mode, out)
        tol = default_tolerance(enc.size) if tolerance is None else tolerance
        for j, concept in enumerate(wanted):
            seen = maps[j, top:top + height, left:left + width]
            py, px = divmod(int(seen.argmax()), seen.shape[1])
            ann = parts[concept]
            blank = bool(seen.max() <= seen.min())  # no maximum to point with: a miss, not the corner pixel
            hit = not blank and ann.hit(px + left, py + top, (out[0] / W, out[1] / H), tol)
            hits.setdefault(concept, []).append(hit)
            chances.setdefault(concept, []).append(ann.chance(enc.size, tol))
        if progress:
            progress(count + 1)
    frame = pd.DataFrame([{"concept": c, "n": len(h), "hits": int(sum(h)), "pointing_game": sum(h) / len(h),
                           "chance": float(np.mean(chances[c]))} for c, h in hits.items()],
                         columns=["concept", "n", "hits", "pointing_game", "chance"])
    return PointingResult(frame.sort_values("pointing_game").reset_index(drop=True), tuple(sorted(unknown)),
                          tuple(failed))


def dataset_annotations(dataset) -> list[tuple[str, str, dict]]:
    """``(name, path, {concept: Annotation})`` for every record of an ``ImageDataset`` with locations
    (``loc:<concept>`` columns of a CSV manifest)."""
    out = []
    for record in dataset.records:
        locs = getattr(record, "locations", None)
        if locs:
            out.append((record.path.rsplit("/", 1)[-1], record.path,
                        {concept: Annotation.from_coords(coords) for concept, coords in locs}))
    return out


POINTING_KEY = "concept_pointing"


def with_pointing(model: ConceptBottleneckModel, result: PointingResult, method: str,
                  measured_on: str) -> ConceptBottleneckModel:
    """A new model whose ``metrics`` carry ``result`` (per concept n, hits, pointing game, chance), so
    that Evaluate shows the location column without drawing maps first. Maps belong to the concept
    layer and the backbone, so a head edit keeps it (``reliability.stored``)."""
    from .reliability import concepts_digest

    rows = [{"concept": str(r.concept), "n": int(r.n), "hits": int(r.hits), "chance": float(f"{r.chance:.6g}")}
            for r in result.frame.itertuples()]
    return model.with_changes(metrics={**model.metrics, POINTING_KEY: {
        "format": 1, "concepts_sha1": concepts_digest(model.concepts.names), "method": str(method),
        "measured_on": str(measured_on), "concepts": rows}})


def stored_pointing(model: ConceptBottleneckModel) -> PointingResult | None:
    """The pointing game stored with this model (``with_pointing``), or None: never stored, stored for
    another concept list, or malformed."""
    import pandas as pd

    from .reliability import concepts_digest, stored

    data = stored(model, POINTING_KEY)
    if not isinstance(data, dict) or data.get("concepts_sha1") != concepts_digest(model.concepts.names):
        return None
    known, rows = set(model.concepts.names), []
    for r in data.get("concepts") if isinstance(data.get("concepts"), list) else []:
        try:
            n, hits, chance = int(r["n"]), int(r["hits"]), float(r["chance"])
        except (KeyError, TypeError, ValueError):
            return None
        if r.get("concept") not in known or not 0 < n or not 0 <= hits <= n or not 0 <= chance <= 1:
            return None
        rows.append({"concept": r["concept"], "n": n, "hits": hits, "pointing_game": hits / n, "chance": chance})
    if not rows:
        return None
    frame = pd.DataFrame(rows, columns=["concept", "n", "hits", "pointing_game", "chance"])
    return PointingResult(frame.sort_values("pointing_game").reset_index(drop=True), (), (),
                          str(data.get("method", ""))[:40], str(data.get("measured_on", ""))[:200])
