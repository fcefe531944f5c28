"""The Toy Birds splits as datasets and encoded features: what the bundle build, the recipe
comparison and the app share (no training code here).

The world (``world.py``) draws bird ``i`` of a split deterministically from the seed; the demo
model sees 96 px images and its concept prompt is ``"a bird with {}."``.
"""
from __future__ import annotations

import torch

from ..data.features import FeatureSet, extract_features
from .world import CONCEPTS, render, sample_bird

IMAGE_SIZE = 96
CONCEPT_TEMPLATE = "a bird with {}."
SPLIT_SIZES = {"train": 4000, "val": 1600, "test": 1600}


class ToyBirds(torch.utils.data.Dataset):
    """A split of the world as a torch Dataset of ``(PIL image, species index)``."""

    def __init__(self, split: str, n: int, seed: int = 0, size: int = IMAGE_SIZE):
        self.split, self.n, self.seed, self.size = split, n, seed, size

    def __len__(self):
        return self.n

    def bird(self, i):
        return sample_bird(self.seed, i, self.split)

    def __getitem__(self, i):
        bird = self.bird(i)
        return render(bird, self.size)[0], bird.species

    @property
    def fingerprint(self) -> str:
        return f"toybirds-v1-{self.seed}-{self.split}-{self.n}-{self.size}"

    def groups(self) -> tuple[str, ...]:
        return tuple(self.bird(i).group for i in range(self.n))

    def concept_labels(self) -> torch.Tensor:
        return torch.tensor([[self.bird(i).concept_labels()[c] for c in CONCEPTS] for i in range(self.n)])


def encode_split(backbone, split: str, n: int, seed: int = 0):
    ds = ToyBirds(split, n, seed)
    feats = extract_features(backbone, ds, fingerprint=ds.fingerprint, progress_bar=True)
    assert not feats.skipped, feats.skipped
    return feats.embeddings, feats.labels, ds.groups(), ds.concept_labels()


def toybirds_features(backbone, split: str, n: int | None = None, seed: int = 0, progress=None) -> FeatureSet:
    """A split as a ``FeatureSet`` with groups and concept labels; encoded once, then read from the
    on-disk feature cache. ``progress(done, total)`` while encoding."""
    n = SPLIT_SIZES[split] if n is None else n
    ds = ToyBirds(split, n, seed)
    feats = extract_features(backbone, ds, fingerprint=ds.fingerprint, progress=progress)
    return FeatureSet(feats.embeddings, feats.labels, feats.kept, feats.skipped, ds.groups(),
                      ds.concept_labels().float(), feats.from_cache)
