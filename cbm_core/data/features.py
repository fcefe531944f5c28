"""Encoded datasets and the on-disk feature cache.

``extract_features`` decodes, preprocesses and encodes a dataset once, skipping (and reporting) unreadable
images, and caches the result under a key made of the backbone's fingerprint, the dataset's fingerprint and the
transform (a sharded ``store`` for large sets; Ray workers with ``engine="ray"``).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file

from ..backbone import Backbone
from ..errors import CBMError, DatasetError, ImageError
from .datasets import ImageDataset, ProgressFn
from .images import decode_image


@dataclass(frozen=True)
class FeatureSet:
    """Encoded images. embeddings: (N, D); labels: (N,); ``kept`` indexes the dataset's records
    that were encoded; ``skipped`` lists ``(path, reason)`` for the others."""

    embeddings: torch.Tensor
    labels: torch.Tensor
    kept: torch.Tensor
    skipped: tuple[tuple[str, str], ...] = ()
    groups: tuple[str, ...] | None = None
    concept_labels: torch.Tensor | None = None
    from_cache: bool = field(default=False, compare=False)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, rows) -> "FeatureSet":
        """The rows ``rows`` (indices into this set) as a new set; ``skipped`` is kept as is."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        picked = rows.tolist()
        return FeatureSet(self.embeddings[rows], self.labels[rows], self.kept[rows], self.skipped,
                          tuple(self.groups[i] for i in picked) if self.groups is not None else None,
                          self.concept_labels[rows] if self.concept_labels is not None else None, self.from_cache)


class _PixelNormalizer:
    """open_clip's preprocessing ends in ToTensor (÷255) and Normalize. Splitting those off lets
    DataLoader workers ship uint8 images (4× less to copy between processes and to a GPU) and the
    normalisation run once per batch, on the device. ``split`` returns None for any other transform."""

    def __init__(self, head, mean, std):
        self.head = head
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1)

    @classmethod
    def split(cls, preprocess) -> "_PixelNormalizer | None":
        from torchvision.transforms import Compose, Normalize

        steps = list(getattr(preprocess, "transforms", []))
        if (len(steps) >= 2 and isinstance(steps[-1], Normalize) and len(steps[-1].mean) == 3
                and type(steps[-2]).__name__ in ("ToTensor", "MaybeToTensor")):
            return cls(Compose(steps[:-2]), steps[-1].mean, steps[-1].std)
        return None

    def to_uint8(self, image) -> torch.Tensor:
        """A PIL RGB image -> (3, H, W) uint8 after the resize / crop steps."""
        import numpy as np

        array = np.array(_ensure_rgb(self.head(image)), dtype=np.uint8)
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()

    def __call__(self, batch: torch.Tensor, device: torch.device) -> torch.Tensor:
        """(N, 3, H, W) uint8 -> normalised float32 on ``device``."""
        x = batch.to(device, non_blocking=True).float().div_(255.0)
        return x.sub_(self.mean.to(device)).div_(self.std.to(device))


class _Decoded(torch.utils.data.Dataset):
    """Decodes and preprocesses in DataLoader workers; a failure becomes a report, not a crash."""

    def __init__(self, source, preprocess):
        self.source, self.preprocess = source, preprocess

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        try:
            if isinstance(self.source, ImageDataset):
                record = self.source.records[i]
                return i, self.preprocess(decode_image(record.path)), record.label, ""
            image, label = self.source[i]
            pixels = image if isinstance(image, torch.Tensor) else self.preprocess(_ensure_rgb(image))
            return i, pixels, int(label), ""
        except ImageError as exc:
            return i, None, -1, str(exc)
        except Exception as exc:  # a broken item must not end a long extraction
            return i, None, -1, f"{type(exc).__name__}: {exc}"


def _ensure_rgb(image):
    return image if getattr(image, "mode", "RGB") == "RGB" else image.convert("RGB")


def _collate(items):
    ok = [it for it in items if it[1] is not None]
    failed = [(it[0], it[3]) for it in items if it[1] is None]
    pixels = torch.stack([it[1] for it in ok]) if ok else None
    return [it[0] for it in ok], pixels, [it[2] for it in ok], failed


def default_cache_dir() -> Path:
    base = os.environ.get("CBM_CACHE_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "cbm_core") / "features"


def feature_key(backbone: Backbone, dataset_fingerprint: str) -> str:
    """The cache key of a dataset's features: backbone fingerprint + precision + dataset fingerprint +
    transform. Names the single-file cache (``<key>.safetensors``) and the sharded store (``<key>.store``)."""
    text = f"{backbone.fingerprint}|{backbone.precision}|{dataset_fingerprint}|{backbone.preprocess!r}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _loader(backbone: Backbone, dataset, indices=None, *, batch_size: int, num_workers: int | None):
    """The DataLoader of the in-process engine and the normaliser its uint8 batches need (or None).
    ``indices`` (record indices, default all) are decoded in that order."""
    total = len(dataset) if indices is None else len(indices)
    if num_workers is None:
        num_workers = min(4, max(0, (os.cpu_count() or 1) - 1)) if total > 256 else 0
    normalizer = _PixelNormalizer.split(backbone.preprocess)
    source = _Decoded(dataset, normalizer.to_uint8 if normalizer else backbone.preprocess)
    if indices is not None:
        source = torch.utils.data.Subset(source, list(indices))
    loader = torch.utils.data.DataLoader(
        source, batch_size=batch_size, num_workers=num_workers,
        collate_fn=_collate, pin_memory=backbone.device.type == "cuda",
        persistent_workers=False, prefetch_factor=4 if num_workers else None)
    return loader, normalizer


def _encode_stream(backbone: Backbone, dataset, indices=None, *, batch_size: int = 64, num_workers: int | None = None):
    """The in-process engine as a stream: per batch ``(record indices, embeddings (n, D) or None,
    labels, [(record index, reason), ...] of the images that failed)``. What the feature store writes."""
    loader, normalizer = _loader(backbone, dataset, indices, batch_size=batch_size, num_workers=num_workers)
    for idx, pixels, batch_labels, failed in loader:
        emb = None
        if pixels is not None:
            if pixels.dtype == torch.uint8:
                pixels = normalizer(pixels, backbone.device)
            emb = backbone.encode_images(pixels, batch_size=len(pixels)).embeddings
        yield idx, emb, batch_labels, failed


def extract_features(backbone: Backbone, dataset, *, batch_size: int = 64, num_workers: int | None = None,
                     cache_dir: str | Path | None = None, use_cache: bool = True, fingerprint: str | None = None,
                     progress: ProgressFn | None = None, progress_bar: bool = False, engine: str = "inprocess",
                     address: str | None = None, num_cpus: int | None = None) -> FeatureSet:
    """Encode every image of ``dataset`` (an ``ImageDataset`` or a torch Dataset).

    Cached on disk when the dataset can be fingerprinted (an ``ImageDataset``, or pass
    ``fingerprint`` for a torch Dataset). ``progress(done, total)`` is called after each batch.
    A complete sharded store of the same key (``cbm_core.data.store``, e.g. written by
    ``python -m cbm_core extract``) counts as a cache hit.

    engine: ``"inprocess"`` (DataLoader workers in this process) or ``"ray"`` (Ray Data: CPU tasks
    decode, encoder actors encode — ``pip install -r requirements-scale.txt``; ``address`` None = a
    local Ray with ``num_cpus`` CPUs, else a cluster address such as ``ray://head:10001``). The Ray
    engine writes a resumable sharded store (in ``cache_dir``; a temporary one when ``use_cache`` is
    False) and returns it loaded whole: the same features, bit for bit on a CPU, and the same skipped images.
    """
    is_records = isinstance(dataset, ImageDataset)
    fp = dataset.fingerprint() if is_records else fingerprint
    if engine not in ("inprocess", "ray"):
        raise DatasetError(f"Unknown engine '{engine}'; use 'inprocess' or 'ray'.")
    cache_file = None
    if use_cache and fp is not None:
        key = feature_key(backbone, fp)
        cache_file = Path(cache_dir or default_cache_dir()) / f"{key}.safetensors"
        if cache_file.is_file():
            cached = _read_cache(cache_file, dataset if is_records else None)
            if cached is not None:
                if progress:
                    progress(len(dataset), len(dataset))
                return cached
        if is_records:
            cached = _read_store(cache_file.with_suffix(".store"), key, dataset)
            if cached is not None:
                if progress:
                    progress(len(dataset), len(dataset))
                return cached
    if engine == "ray":
        return _extract_with_ray(backbone, dataset, batch_size=batch_size, cache_dir=cache_dir, use_cache=use_cache,
                                 progress=progress, progress_bar=progress_bar, address=address, num_cpus=num_cpus)
    total = len(dataset)
    if total == 0:
        raise DatasetError("The dataset is empty.")
    loader, normalizer = _loader(backbone, dataset, batch_size=batch_size, num_workers=num_workers)
    bar = None
    if progress_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="Encoding images", unit="img")
    embeddings, labels, kept, skipped, done = [], [], [], [], 0
    for indices, pixels, batch_labels, failed in loader:
        if pixels is not None:
            if pixels.dtype == torch.uint8:
                pixels = normalizer(pixels, backbone.device)
            embeddings.append(backbone.encode_images(pixels, batch_size=len(pixels)).embeddings)
            labels += batch_labels
            kept += indices
        for i, reason in failed:
            skipped.append((dataset.records[i].path if is_records else f"item {i}", reason))
        done += len(indices) + len(failed)
        if bar:
            bar.update(len(indices) + len(failed))
        if progress:
            progress(done, total)
    if bar:
        bar.close()
    if not kept:
        raise DatasetError(f"None of the {total} images could be read; first problem: {skipped[0][1]}")
    feats = _with_metadata(dataset if is_records else None, torch.cat(embeddings), torch.tensor(labels),
                           torch.tensor(kept), tuple(skipped))
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp")
        save_file({"embeddings": feats.embeddings, "labels": feats.labels, "kept": feats.kept}, str(tmp),
                  metadata={"skipped": json.dumps(list(feats.skipped)), "backbone": backbone.spec})
        tmp.replace(cache_file)
    return feats


def in_model_classes(feats: FeatureSet, classes: Sequence[str], model_classes: Sequence[str]) -> FeatureSet:
    """``feats`` (labels indexing the dataset's ``classes``) with labels indexing ``model_classes`` instead, matched
    by name: a folder's or CSV's classes come sorted, a model's in its own order, and a test set may lack a class.
    A ``DatasetError`` names the dataset's classes the model does not have."""
    import dataclasses

    if tuple(classes) == tuple(model_classes):
        return feats
    return dataclasses.replace(feats, labels=class_index(classes, model_classes)[feats.labels])


def class_index(classes: Sequence[str], model_classes: Sequence[str]) -> torch.Tensor:
    """(len(classes),) the model's index of each of the dataset's classes, by name; a ``DatasetError`` names the
    ones the model does not have."""
    model_classes = tuple(model_classes)
    unknown = [c for c in classes if c not in model_classes]
    if unknown:
        raise DatasetError(f"The dataset's class{'es' * (len(unknown) > 1)} {', '.join(repr(c) for c in unknown[:10])} "
                           f"{'are' if len(unknown) > 1 else 'is'} not among the model's classes {list(model_classes)}.")
    return torch.tensor([model_classes.index(c) for c in classes], dtype=torch.long)


def require_every_class(labels: torch.Tensor, classes: Sequence[str], what: str) -> None:
    """A ``DatasetError`` unless every class has a readable image among ``labels`` (the ``what`` images)."""
    counts = torch.bincount(torch.as_tensor(labels), minlength=len(classes))
    empty = [classes[c] for c in range(len(classes)) if int(counts[c]) == 0]
    if empty:
        raise DatasetError(f"The {what} images have no readable image of class{'es' * (len(empty) > 1)} "
                           f"{', '.join(repr(c) for c in empty[:10])}; every class needs images to learn from.")


NO_GROUP = "(no group)"  # the group of an image whose CSV row leaves the group column blank

def _with_metadata(dataset: ImageDataset | None, embeddings, labels, kept, skipped, from_cache=False) -> FeatureSet:
    groups = concept_labels = None
    if dataset is not None:
        recs = [dataset.records[i] for i in kept.tolist()]
        # A blank group cell is a group of its own, not a reason to drop worst-group accuracy for every image.
        if recs and any(r.group is not None for r in recs):
            groups = tuple(NO_GROUP if r.group is None else r.group for r in recs)
        if recs and all(r.concepts is not None for r in recs):
            concept_labels = torch.tensor([[float("nan") if v is None else v for v in r.concepts] for r in recs],
                                          dtype=torch.float32)  # NaN: not labelled
    return FeatureSet(embeddings, labels, kept, skipped, groups, concept_labels, from_cache)


def _read_store(root: Path, key: str, dataset: ImageDataset) -> FeatureSet | None:
    """A complete store of this key, loaded whole; None when there is none (or it fails validation)."""
    if not (root / "manifest.json").is_file():
        return None
    from .store import FeatureStore

    try:
        store = FeatureStore.open(root)
        if store.key != key or store.n_records != len(dataset) or not store.complete:
            return None
        return store.load(dataset)
    except CBMError:  # a damaged store is recomputed, never trusted
        return None


def _extract_with_ray(backbone: Backbone, dataset, *, batch_size, cache_dir, use_cache, progress, progress_bar,
                      address, num_cpus) -> FeatureSet:
    if not isinstance(dataset, ImageDataset):
        raise DatasetError("engine='ray' reads an ImageDataset (a folder or a CSV manifest); a torch Dataset is "
                           "encoded in process (engine='inprocess').")
    from .store import write_store

    kwargs = dict(engine="ray", address=address, batch_size=batch_size, num_cpus=num_cpus, progress=progress,
                  progress_bar=progress_bar)
    if use_cache:
        return write_store(backbone, dataset, cache_dir=cache_dir, **kwargs).load(dataset, from_cache=False)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="cbm-store-") as tmp:
        return write_store(backbone, dataset, Path(tmp) / "store", **kwargs).load(dataset, from_cache=False)


def _read_cache(path: Path, dataset: ImageDataset | None) -> FeatureSet | None:
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        t = load_file(str(path))
        skipped = tuple(tuple(x) for x in json.loads(meta.get("skipped", "[]")))
        return _with_metadata(dataset, t["embeddings"], t["labels"], t["kept"], skipped, from_cache=True)
    except Exception:  # a damaged cache entry is recomputed, never trusted
        return None
