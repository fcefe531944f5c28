"""Datasets and the on-disk feature cache.

Datasets are lists of ``ImageRecord``: from a folder of class sub-folders, from a CSV manifest
(``path``, ``label``, optional 0/1 concept columns, optional ``group``, optional ``loc:<concept>``
part locations), or any torch Dataset
yielding ``(PIL image or (3, H, W) tensor, label)``. ``extract_features`` decodes, preprocesses
and encodes them once, skipping (and reporting) unreadable images, and caches the result under
a key made of the backbone's fingerprint, the dataset's fingerprint and the transform.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors.torch import load_file, save_file

from .backbone import Backbone
from .errors import CBMError, DatasetError, ImageError
from .images import BIDI_CONTROLS, FORMATS_TEXT, IMAGE_SUFFIXES, decode_image, printable

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class ImageRecord:
    path: str
    label: int
    concepts: tuple[int | None, ...] | None = None  # None: that concept is not labelled for this image
    group: str | None = None
    # (concept, (x, y) or (x0, y0, x1, y1)) in the image's pixels, from a CSV's loc:<concept> columns
    locations: tuple[tuple[str, tuple[float, ...]], ...] | None = None


@dataclass(frozen=True)
class ImageDataset:
    """An image list with class names; ``concept_names`` name the 0/1 columns of ``concepts``."""

    records: tuple[ImageRecord, ...]
    classes: tuple[str, ...]
    concept_names: tuple[str, ...] = ()
    name: str = "dataset"
    location_names: tuple[str, ...] = ()  # concepts with a loc:<concept> column

    def __len__(self) -> int:
        return len(self.records)

    @classmethod
    def from_folder(cls, root: str | Path) -> "ImageDataset":
        """``root/<class name>/<image>``; classes sorted by name. Every class folder must hold at
        least one image (an empty one is named, not silently dropped)."""
        root = Path(root)
        if not root.is_dir():
            if root.exists():
                raise DatasetError(f"'{root}' is a file, not a folder. Give a folder of class sub-folders "
                                   "(<folder>/<class>/<image>) or a .csv manifest.")
            raise DatasetError(f"Dataset folder '{root}' does not exist.")
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise DatasetError(f"'{root}' has no class sub-folders. Arrange images as {root}/<class>/<image>.")
        for name in classes:
            _check_label(name, f"Class folder '{printable(str(root / name))}'")
        records, empty = [], []
        for label, cls_name in enumerate(classes):
            found = [ImageRecord(str(p), label) for p in sorted((root / cls_name).rglob("*"))
                     if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
            if not found:
                empty.append(cls_name)
            records += found
        if empty:
            raise DatasetError(f"Class folder{'s' * (len(empty) > 1)} {', '.join(repr(str(root / c)) for c in empty)} "
                               f"{'have' if len(empty) > 1 else 'has'} no images ({FORMATS_TEXT}). "
                               "Add images, or remove the folder if it is not a class.")
        return cls(tuple(records), tuple(classes), name=root.name)

    @classmethod
    def from_csv(cls, manifest: str | Path, *, path_column: str = "path", label_column: str = "label",
                 group_column: str = "group", split_column: str = "split", split: str | None = None,
                 concept_columns: Sequence[str] | None = None, allow_outside: bool = False) -> "ImageDataset":
        """A CSV manifest (UTF-8). Paths are relative to the CSV's folder and must stay inside it
        (no ``..`` out of it, no absolute paths, no links out of it) unless ``allow_outside``: a CSV
        from someone else must not make the tool read files of yours it was never meant to.
        Labels are stripped of surrounding spaces. Concept columns default to every column whose
        values are all 0, 1 or empty besides the known ones (at least one 0 or 1); an empty concept
        cell means "not labelled" (NaN in ``concept_labels``); ``split`` keeps rows of one split.

        A column ``loc:<concept>`` gives where that concept is in each image, in the image's pixels
        (as CUB-200's part locations): ``x,y`` (a point) or ``x0,y0,x1,y1`` (a box), numbers separated
        by commas (quote the cell), semicolons or spaces; an empty cell means not annotated."""
        manifest = Path(manifest)
        if not manifest.is_file():
            raise DatasetError(f"Manifest '{manifest}' does not exist." if not manifest.exists() else
                               f"Manifest '{manifest}' is not a regular file.")
        header, rows = _read_csv(manifest)
        for col in (path_column, label_column):
            if col not in header:
                raise DatasetError(f"Manifest '{manifest.name}' needs a '{col}' column (found: {', '.join(header)}).")
        if split is not None:
            if split_column not in header:
                raise DatasetError(f"Manifest '{manifest.name}' has no '{split_column}' column to pick split '{split}'.")
            rows = [(line, r) for line, r in rows if r[split_column] == split]
            if not rows:
                raise DatasetError(f"Manifest '{manifest.name}' has no rows with {split_column}={split}.")
        location_columns = [c for c in header if c.startswith(LOCATION_PREFIX)]
        for c in location_columns:
            _check_label(c[len(LOCATION_PREFIX):], f"Manifest '{manifest.name}': location column {c!r}", what="concept name")
        known = {path_column, label_column, group_column, split_column, *location_columns}
        if concept_columns is None:
            concept_columns = [c for c in header if c and c not in known
                               and all(r[c].strip() in ("0", "1", "") for _, r in rows)
                               and any(r[c].strip() in ("0", "1") for _, r in rows)]
        else:
            missing = [c for c in concept_columns if c not in header]
            if missing:
                raise DatasetError(f"Manifest '{manifest.name}' has no concept column{'s' * (len(missing) > 1)} "
                                   f"{', '.join(map(repr, missing))} (found: {', '.join(header)}).")
        base = manifest.parent.resolve()
        labels, paths, locations = [], [], []
        for line, r in rows:
            where = f"Manifest '{manifest.name}', line {line}"
            label = r[label_column].strip()
            if not label:
                raise DatasetError(f"{where}: the '{label_column}' cell is empty. Give every row a class label.")
            _check_label(label, f"{where}: label {label!r}")
            cell = r[path_column]
            if not cell.strip():
                raise DatasetError(f"{where}: the '{path_column}' cell is empty. Give every row an image path.")
            _check_label(cell, f"{where}: path {cell!r}", what="path")
            path = (base / cell).resolve()
            if not allow_outside and (Path(cell).is_absolute() or not path.is_relative_to(base)):
                how = "is absolute" if Path(cell).is_absolute() else "leads outside the manifest's folder"
                raise DatasetError(f"{where}: path '{cell}' {how}; paths must stay inside '{base}'. Move the images "
                                   "there and use relative paths, or allow paths outside it explicitly "
                                   "(allow_outside=True; on the command line --allow-outside-paths).")
            for c in concept_columns:
                if r[c].strip() not in ("0", "1", ""):
                    raise DatasetError(f"{where}: concept column '{c}' holds {r[c]!r}; concept columns hold 0, 1, "
                                       "or nothing where the concept was not labelled.")
            locations.append(tuple((c[len(LOCATION_PREFIX):].strip(), xy) for c in location_columns
                                   if (xy := _parse_location(r[c], where, c)) is not None) or None)
            labels.append(label)
            paths.append(str(path))
        classes = sorted(set(labels))
        index = {c: i for i, c in enumerate(classes)}
        records = tuple(ImageRecord(p, index[label], tuple(_concept_cell(r[c]) for c in concept_columns) if concept_columns else None,
                                    r.get(group_column) or None, loc)
                        for p, label, (_, r), loc in zip(paths, labels, rows, locations))
        return cls(records, tuple(classes), tuple(concept_columns), name=manifest.stem + (f"-{split}" if split else ""),
                   location_names=tuple(c[len(LOCATION_PREFIX):].strip() for c in location_columns))

    def fingerprint(self) -> str:
        """Changes when any file, label, group or the class list changes."""
        h = hashlib.sha256(json.dumps(self.classes).encode())
        for r in self.records:
            try:
                st = os.stat(r.path)
                stamp = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                stamp = "missing"
            h.update(f"{r.path}|{stamp}|{r.label}|{r.group}\n".encode())
        return h.hexdigest()[:20]

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([r.label for r in self.records], dtype=torch.long)


MAX_MANIFEST_BYTES = 1024 * 1024 * 1024  # ~10 million rows: far beyond what the tool trains on in memory
LOCATION_PREFIX = "loc:"


def _concept_cell(cell: str) -> int | None:
    """A checked concept cell: 0, 1, or None where it is empty (not labelled)."""
    cell = cell.strip()
    return int(cell) if cell else None


def _parse_location(cell: str, where: str, column: str) -> tuple[float, ...] | None:
    """A ``loc:<concept>`` cell -> (x, y) or (x0, y0, x1, y1) in pixels; None when empty."""
    text = cell.strip()
    if not text:
        return None
    parts = [p for p in text.replace(";", " ").replace(",", " ").split() if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    how = ("Write x,y for a point or x0,y0,x1,y1 for a box, in the image's pixels (leave the cell empty where "
           "the part is not annotated).")
    if len(values) not in (2, 4) or not all(v == v and abs(v) != float("inf") for v in values):
        raise DatasetError(f"{where}: location column '{column}' holds {cell!r}. {how}")
    if any(v < 0 for v in values):
        raise DatasetError(f"{where}: location column '{column}' holds a negative coordinate ({cell!r}). {how}")
    if len(values) == 4 and (values[2] < values[0] or values[3] < values[1]):
        raise DatasetError(f"{where}: location column '{column}' holds the box {cell!r}, whose second corner is "
                           f"above or left of the first. Write x0,y0,x1,y1 with x0 <= x1 and y0 <= y1.")
    return values


def _check_label(text: str, where: str, what: str = "label") -> None:
    """Refuse empty names and ones with control, bidi-override or lone-surrogate characters: a class
    name is shown in charts, saved in a bundle and typed back on the command line."""
    if not text.strip():
        raise DatasetError(f"{where}: the {what} is empty.")
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Cs") or ch in BIDI_CONTROLS:
            raise DatasetError(f"{where}: the {what} contains the invisible control character U+{ord(ch):04X}. "
                               f"Remove it.")


def _read_csv(manifest: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The header and ``(line number, row)`` pairs of a UTF-8 CSV, refusing what would silently
    shift or drop cells: non-UTF-8 bytes, rows with more or fewer cells than the header, duplicate
    column names. Blank lines are skipped."""
    name = manifest.name
    with manifest.open("rb") as f:
        raw = f.read(MAX_MANIFEST_BYTES + 1)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise DatasetError(f"Manifest '{name}' is larger than {MAX_MANIFEST_BYTES // 2**20} MB; split it.")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise DatasetError(f"Manifest '{name}' is not UTF-8 text (line {line} has the byte "
                           f"0x{raw[exc.start]:02x}). Save it as UTF-8 (in Excel: 'CSV UTF-8').") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header, rows = None, []
    try:
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue
            if header is None:
                header = [c.strip() for c in cells]
                named = [c for c in header if c]
                dupes = sorted({c for c in named if named.count(c) > 1})
                if dupes:
                    raise DatasetError(f"Manifest '{name}' has duplicate column name{'s' * (len(dupes) > 1)}: "
                                       f"{', '.join(map(repr, dupes))}. Rename the columns so each name appears once.")
                continue
            if len(cells) != len(header):
                raise DatasetError(f"Manifest '{name}', line {reader.line_num}: {len(cells)} cell"
                                   f"{'s' * (len(cells) != 1)}, but the header has {len(header)}. Check for a "
                                   "missing or extra comma, or an unquoted comma inside a value.")
            rows.append((reader.line_num, dict(zip(header, cells))))
    except csv.Error as exc:
        raise DatasetError(f"Manifest '{name}', line {reader.line_num}: not valid CSV ({exc}).") from None
    if header is None or not rows:
        raise DatasetError(f"Manifest '{name}' has no rows.")
    return header, rows


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
    A complete sharded store of the same key (``cbm_core.store``, e.g. written by
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


def _with_metadata(dataset: ImageDataset | None, embeddings, labels, kept, skipped, from_cache=False) -> FeatureSet:
    groups = concept_labels = None
    if dataset is not None:
        recs = [dataset.records[i] for i in kept.tolist()]
        if recs and all(r.group is not None for r in recs):
            groups = tuple(r.group for r in recs)
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
