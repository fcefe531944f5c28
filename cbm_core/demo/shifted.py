"""Toy Birds under a domain shift (``world.SHIFTS``): the same birds as the plain splits, drawn under
other imaging conditions (a stain-like colour cast, a different scale) — the target domain that
``cbm_core.adaptation`` repairs a model for from a few labelled images. Encoded once, then read from
the on-disk feature cache like the plain splits."""
from __future__ import annotations

from ..data.features import FeatureSet, extract_features
from .splits import IMAGE_SIZE, SPLIT_SIZES, ToyBirds
from .world import SHIFTS, render

DEFAULT_SHIFT = "stain"


class ShiftedToyBirds(ToyBirds):
    """A split of the world under ``shift`` (a name in ``world.SHIFTS``), as ``(PIL image, species)``."""

    def __init__(self, split: str, n: int, seed: int = 0, size: int = IMAGE_SIZE, shift: str = DEFAULT_SHIFT):
        if shift not in SHIFTS:
            raise ValueError(f"Unknown shift {shift!r}; known: {', '.join(SHIFTS)}.")
        super().__init__(split, n, seed, size)
        self.shift = shift

    def __getitem__(self, i):
        bird = self.bird(i)
        return render(bird, self.size, self.shift)[0], bird.species

    @property
    def fingerprint(self) -> str:
        s = SHIFTS[self.shift]  # the shift's numbers are part of the key: edit a shift, re-encode
        return f"{super().fingerprint}-shift-{s.name}-{s.mix}-{s.offset}-{s.zoom}-{s.jitter}"


def shifted_features(backbone, split: str, n: int | None = None, seed: int = 0, shift: str = DEFAULT_SHIFT,
                     progress=None) -> FeatureSet:
    """A shifted split as a ``FeatureSet`` with groups and concept labels (the birds' ground truth does
    not change under a shift); ``progress(done, total)`` while encoding."""
    n = SPLIT_SIZES[split] if n is None else n
    ds = ShiftedToyBirds(split, n, seed, shift=shift)
    feats = extract_features(backbone, ds, fingerprint=ds.fingerprint, progress=progress)
    return FeatureSet(feats.embeddings, feats.labels, feats.kept, feats.skipped, ds.groups(),
                      ds.concept_labels().float(), feats.from_cache)


# What the app needs without re-encoding: the concept-supervised demo bundle (TTI, propagation) and
# the shifted splits' features (adaptation), both written by ``python -m cbm_core.demo.build_supervised``.
from ..backbone import ASSETS_DIR  # noqa: E402

SUPERVISED_BUNDLE = ASSETS_DIR / "demo_supervised_bundle"
SHIFTED_FEATURES = ASSETS_DIR / "toybirds_shifted_features.safetensors"


def load_shifted_features(split: str = "val") -> FeatureSet:
    """The shipped features of the shifted 'val' (the pool few labelled target images are drawn from)
    or 'test' split, as a ``FeatureSet`` with groups and concept labels (no re-encoding)."""
    from .paths import read_split_features

    return read_split_features(SHIFTED_FEATURES, split)
