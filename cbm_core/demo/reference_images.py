"""Toy Birds images for the reliability views, re-rendered instead of stored: the demo ships only
the encoded validation / test features, and bird ``i`` of a split is ``render(sample_bird(seed, i,
split))`` exactly (the same pixels the features were encoded from). Used by the concept atlas (the
validation birds that score highest and lowest on a concept) and by the location metric (each
part's pixel mask)."""
from __future__ import annotations

import io
from typing import Iterator

from .splits import IMAGE_SIZE
from .world import CONCEPT_PART, concept_mask, render, sample_bird


def bird_png(split: str, index: int, seed: int = 0, shift: str | None = None) -> bytes:
    """Bird ``index`` of ``split`` as PNG bytes (what ``Pipeline.encode`` reads)."""
    buffer = io.BytesIO()
    render(sample_bird(seed, index, split), IMAGE_SIZE, shift)[0].save(buffer, format="PNG")
    return buffer.getvalue()


def bird_name(split: str, index: int, seed: int = 0) -> str:
    bird = sample_bird(seed, index, split)
    return f"{split} bird {index}: {bird.species_name} on {bird.background}"


def image_for(split: str = "val", seed: int = 0):
    """``image_for(i) -> (name, png bytes)`` for ``cbm_core.explain.atlas.atlas_images`` over a split's features."""
    return lambda i: (bird_name(split, i, seed), bird_png(split, i, seed))


def part_annotations(n: int, split: str = "test", seed: int = 0, start: int = 0) -> Iterator[tuple[str, bytes, dict]]:
    """``(name, png bytes, {concept: Annotation(mask)})`` for birds ``start .. start + n - 1`` of
    ``split``: every part-level concept present in the bird, with its part's pixel mask."""
    from ..explain.concept_metrics import Annotation

    for i in range(start, start + n):
        bird = sample_bird(seed, i, split)
        image, masks = render(bird, IMAGE_SIZE)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        labels = bird.concept_labels()
        yield (bird_name(split, i, seed), buffer.getvalue(),
               {c: Annotation("mask", mask=concept_mask(masks, c)) for c in CONCEPT_PART if labels[c]})
