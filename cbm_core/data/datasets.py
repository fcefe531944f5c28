"""Datasets: lists of ``ImageRecord``, from a folder of class sub-folders, from a CSV manifest (``path``,
``label``, optional 0/1 concept columns, optional ``group``, optional ``loc:<concept>`` part locations), or any
torch Dataset yielding ``(PIL image or (3, H, W) tensor, label)``. Encoding them is ``features.extract_features``.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..errors import DatasetError
from .images import BIDI_CONTROLS, FORMATS_TEXT, IMAGE_SUFFIXES, printable

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
