"""A concept atlas: what the model means by a concept, shown rather than named.

For each concept, the reference images (validation images, never the one being explained) that score
highest on it and those that score lowest, each with its saliency map. "Striped wing" means whatever
the top images share and the bottom ones lack — which may not be striped wings (users of CRP, saev
and ConceptScope rely on exactly these reference images to understand a concept).

    atlas = concept_atlas(model, val.embeddings, "striped wing", n=6)
    shown = atlas_images(pipe, atlas, image_for=lambda i: (paths[i], paths[i]))

Ranking needs only the embeddings (one matrix product for every concept, ``atlas_index``); drawing
decodes, encodes and maps only the 2n images shown.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..core.model import ConceptBottleneckModel


@dataclass(frozen=True)
class AtlasEntry:
    """One reference image: its row in the embeddings ranked, its raw score and training percentile."""

    index: int
    score: float
    percentile: float


@dataclass(frozen=True)
class ConceptAtlas:
    """top: the ``n`` highest-scoring reference images, highest first; bottom: the ``n`` lowest, lowest
    first; n_images: how many were ranked."""

    concept: str
    top: tuple[AtlasEntry, ...]
    bottom: tuple[AtlasEntry, ...]
    n_images: int

    def to_frame(self):
        import pandas as pd

        rows = [{"end": "top", "rank": r + 1, **e.__dict__} for r, e in enumerate(self.top)]
        rows += [{"end": "bottom", "rank": r + 1, **e.__dict__} for r, e in enumerate(self.bottom)]
        return pd.DataFrame(rows)


def _atlases(names, scores: torch.Tensor, stats, n: int, rank: torch.Tensor | None = None) -> dict[str, ConceptAtlas]:
    """``rank``: what to order by when it is not the scores themselves (a probability's log-odds)."""
    N = len(scores)
    n = max(0, min(int(n), N))
    pct = stats.percentile_of(scores)
    rank = scores if rank is None else rank
    # A stable sort, so ties keep the reference order (reproducible atlases).
    order = rank.argsort(dim=0, descending=True, stable=True)  # (N, K)
    low = rank.argsort(dim=0, descending=False, stable=True)
    out = {}
    for k, name in enumerate(names):
        def entry(i):
            return AtlasEntry(int(i), float(scores[i, k]), float(pct[i, k]))

        out[name] = ConceptAtlas(name, tuple(entry(i) for i in order[:n, k].tolist()),
                                 tuple(entry(i) for i in low[:n, k].tolist()), N)
    return out


def atlas_index(model: ConceptBottleneckModel, embeddings: torch.Tensor, n: int = 6,
                scores: torch.Tensor | None = None) -> dict[str, ConceptAtlas]:
    """Every concept's atlas over reference embeddings (N, D) (or their raw ``scores`` (N, K))."""
    scores = model.concept_scores(embeddings) if scores is None else scores
    return _atlases(model.concepts.names, scores, model.stats, n, _rank(model.concept_layer, embeddings))


def concept_atlas(model: ConceptBottleneckModel, embeddings: torch.Tensor, concept: str, n: int = 6) -> ConceptAtlas:
    """One concept's atlas over reference embeddings (N, D)."""
    k = model.concepts.index(concept)
    layer = model.concept_layer.subset([k])
    scores = layer(embeddings.float())
    return _atlases((concept,), scores, model.stats.subset([k]), n, _rank(layer, embeddings))[concept]


def _rank(layer, embeddings: torch.Tensor) -> torch.Tensor | None:
    """A probability layer's log-odds (``ConceptLayer.for_maps``), which orders the images its scores tie at
    1.0 (a quarter of the supervised demo's training images on some concepts); None for any other layer."""
    evidence = layer.for_maps()
    return None if evidence is layer else evidence(embeddings.float())


@dataclass(frozen=True)
class AtlasImage:
    """A reference image as drawn: its entry, a name, the decoded picture (RGB) and the concept's map
    aligned to it (``map``: (h, w) at the picture's size)."""

    entry: AtlasEntry
    name: str
    image: object
    map: torch.Tensor


def atlas_images(pipe, atlas: ConceptAtlas, image_for: Callable[[int], tuple[str, object]], method: str | None = None,
                 max_side: int = 160) -> tuple[list[AtlasImage], list[AtlasImage]]:
    """Decode, encode and map the atlas's images. ``image_for(index)`` returns ``(name, source)`` for a
    row of the ranked embeddings (a path, bytes or a PIL image). Images are drawn with their longest
    side at most ``max_side``. Returns (top, bottom)."""
    from ..data.images import load_image, read_image_bytes, thumbnail

    def draw(entry: AtlasEntry) -> AtlasImage:
        name, source = image_for(entry.index)
        if hasattr(source, "save") and hasattr(source, "size"):  # a PIL image: as PNG bytes
            import io

            buffer = io.BytesIO()
            source.save(buffer, format="PNG")
            source = buffer.getvalue()
        data, default = read_image_bytes(source)
        enc = pipe.encode(data, name or default)
        picture = thumbnail(load_image(data, name or default).image, max_side)
        m = pipe.saliency(enc, method, [atlas.concept], out_size=picture.size)[0]
        return AtlasImage(entry, name or default, picture, m)

    return [draw(e) for e in atlas.top], [draw(e) for e in atlas.bottom]
