"""A sharded, resumable feature store: dataset features on disk, written by either engine.

Layout (one folder per store; the default folder is ``<cache dir>/<key>.store``, next to the
single-file cache that ``extract_features`` has always written)::

    manifest.json                 what the store holds and which shards are complete
    shard-000000.safetensors      records [0, S) of the dataset: embeddings (n, D) float32,
    shard-000001.safetensors      labels (n,) int64, kept (n,) int64 (record indices); the
    ...                           images skipped in the shard, with reasons, in its metadata

**Keyed like the cache**: ``key`` is the same hash of backbone fingerprint + precision + dataset
fingerprint + transform that names the single-file cache (``data.feature_key``), so a store is reused
exactly when the cache would be, and ``extract_features`` reads a complete store as a cache hit.

**Resumable**: shard i always holds records ``[i*S, min((i+1)*S, N))``, whichever engine or run made
it. A shard is written to a temporary file, flushed and renamed; only then is the manifest rewritten
(also via a temporary file and a rename) to list it with its size and SHA-256. So a run killed at any
point leaves complete shards listed and nothing else; the next run checks each listed shard against
its size and hash, redoes any that is missing or damaged (never trusting it), and encodes only the
records of the shards still missing. One writer at a time (a lock file).

**Why safetensors, not parquet**: the project already stores every tensor as safetensors (the cache,
bundles) and that is the format its readers validate; a shard is three dense tensors whose dtype and
shape the header states, so a reader checks them before touching the data, loads them without a copy
into torch and maps them for random row access (mini-batch sampling). Parquet would add a columnar
layer (list<float> rows, per-page encoding) that float embeddings do not compress under, and a
conversion on every read; its strength — a table that Ray Data or Spark can scan in parallel — is
not what the recipes here need (they train in one torch process). Nothing is pickled.

**A store from someone else** is validated like a bundle: the manifest's size, fields, shard names
(fixed pattern: no path leaves the folder) and counts are checked; each shard is read with a bound
(its listed size), hashed, its header's dtypes and shapes checked before loading, its values checked
finite, its record indices checked to lie in the shard's range and its labels among the classes.
Shards are verified once per ``FeatureStore`` and then read directly (memory-mapped).

Reading: ``iter_shards()`` (one shard at a time), ``iter_batches(batch_size)`` / ``take(rows)`` (the
``FeatureSource`` protocol recipes train from) and ``load()`` (the whole ``FeatureSet`` when it fits).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from ..errors import CBMError, DatasetError

FORMAT = "cbm-feature-store"
VERSION = 1
MANIFEST = "manifest.json"
LOCK = ".lock"
DEFAULT_SHARD_SIZE = 4096  # images per shard: 8 MiB of float32 features at D = 512
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024 * 1024  # the skipped list (path + reason per image) lives in the header
MAX_DIM = 65_536
MAX_SHARD_SIZE = 10_000_000
MAX_OPEN_MAPS = 32  # memory maps of shards kept open at once (each holds a file handle)
MAX_RECORDS = 10_000_000_000
_SHARD_NAME = re.compile(r"^shard-(\d{6,})\.safetensors$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class StoreError(CBMError):
    """A feature store is unusable: damaged, incomplete, locked, or not a store."""


def shard_name(i: int) -> str:
    return f"shard-{i:06d}.safetensors"


@dataclass(frozen=True)
class Shard:
    """One verified shard: records ``[start, stop)`` of the dataset; embeddings (n, D) float32,
    labels (n,) int64, kept (n,) int64 record indices; skipped ``((path, reason), ...)``."""

    index: int
    start: int
    stop: int
    embeddings: torch.Tensor
    labels: torch.Tensor
    kept: torch.Tensor
    skipped: tuple[tuple[str, str], ...]


class FeatureStore:
    """A store folder (see the module docstring). ``FeatureStore.open(root)`` validates the manifest;
    shards are verified when first read. Implements ``cbm_core.data.sources.FeatureSource`` over the kept
    rows in record order (only when complete)."""

    def __init__(self, root: Path, manifest: dict, cache_bytes: int = 512 * 2**20):
        self.root = Path(root)
        self.manifest = manifest
        self._verified: dict[int, str] = {}  # shard index -> sha256 it was verified against
        self._offsets = None
        self._labels = None
        self._maps: dict[int, object] = {}  # memory maps for take()
        # Shards kept in memory after reading, least recently used out first: a multi-pass solver over a
        # store that fits reads the disk once; over one that does not, sequential passes simply stream.
        self.cache_bytes = int(cache_bytes)
        self._cache: dict[int, Shard] = {}
        self.last_write: dict | None = None  # what the write that returned this store did

    # -- opening and validation -----------------------------------------------------------------
    @classmethod
    def open(cls, root: str | Path, cache_bytes: int = 512 * 2**20) -> "FeatureStore":
        """Open and validate a store; ``cache_bytes`` of shards are kept in memory once read."""
        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            raise StoreError(f"'{root}' is not a feature store (no {MANIFEST}).")
        return cls(root, _check_manifest(_read_bounded(path, MAX_MANIFEST_BYTES, "manifest"), root), cache_bytes)

    @property
    def key(self) -> str:
        return self.manifest["key"]

    @property
    def n_records(self) -> int:
        return self.manifest["n_records"]

    @property
    def shard_size(self) -> int:
        return self.manifest["shard_size"]

    @property
    def n_shards(self) -> int:
        return -(-self.n_records // self.shard_size)

    @property
    def dim(self) -> int:
        return self.manifest["dim"]

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.manifest.get("classes") or ())

    def shard_range(self, i: int) -> tuple[int, int]:
        return i * self.shard_size, min((i + 1) * self.shard_size, self.n_records)

    def complete_shards(self) -> list[int]:
        return sorted(int(i) for i in self.manifest["shards"])

    def missing_shards(self) -> list[int]:
        have = set(self.complete_shards())
        return [i for i in range(self.n_shards) if i not in have]

    @property
    def complete(self) -> bool:
        return not self.missing_shards()

    def _require_complete(self) -> None:
        missing = self.missing_shards()
        if missing:
            raise StoreError(f"Feature store '{self.root}' is incomplete: {len(missing)} of {self.n_shards} shards "
                             f"missing (e.g. shard {missing[0]}). Run the extraction again; it resumes where it stopped.")

    def __len__(self) -> int:
        """Rows kept (images encoded) over the complete shards."""
        return sum(e["rows"] for e in self.manifest["shards"].values())

    @property
    def n_skipped(self) -> int:
        return sum(e["skipped"] for e in self.manifest["shards"].values())

    # -- reading --------------------------------------------------------------------------------
    def read_shard(self, i: int) -> Shard:
        """Shard ``i``, verified (size, hash, header, values) the first time it is read."""
        entry = self.manifest["shards"].get(str(i))
        if entry is None:
            raise StoreError(f"Shard {i} of '{self.root}' is not complete.")
        path = self.root / entry["file"]
        start, stop = self.shard_range(i)
        if self._verified.get(i) == entry["sha256"]:
            if i in self._cache:
                self._cache[i] = self._cache.pop(i)  # most recently used last
                return self._cache[i]
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in ("embeddings", "labels", "kept")}
            _check_shapes(tensors, entry["rows"], self.dim, f"shard {i} of '{self.root}'")
            shard = Shard(i, start, stop, tensors["embeddings"], tensors["labels"], tensors["kept"],
                          _skipped(meta, entry["skipped"], f"shard {i}"))
        else:
            shard = _verify_shard(path, entry, i, start, stop, self.dim, len(self.classes) or None)
            self._verified[i] = entry["sha256"]
        self._keep(i, shard)
        return shard

    def _keep(self, i: int, shard: Shard) -> None:
        size = lambda s: s.embeddings.numel() * 4 + s.kept.numel() * 16  # noqa: E731
        if size(shard) > self.cache_bytes:
            return
        self._cache[i] = shard
        total = sum(size(s) for s in self._cache.values())
        while total > self.cache_bytes:
            oldest = next(iter(self._cache))
            total -= size(self._cache.pop(oldest))

    def verify(self) -> list[int]:
        """Read every listed shard once; return the indices of those that fail (damaged, missing).
        Used when resuming: a failing shard is dropped from the manifest and redone."""
        bad = []
        for i in self.complete_shards():
            try:
                self.read_shard(i)
            except StoreError:
                bad.append(i)
        return bad

    def iter_shards(self) -> Iterator[Shard]:
        self._require_complete()
        for i in range(self.n_shards):
            yield self.read_shard(i)

    def iter_batches(self, batch_size: int = 65_536) -> Iterator[torch.Tensor]:
        """Every kept row once, in record order, as (b, D) float32 (the last may be shorter)."""
        pending, have = [], 0
        for shard in self.iter_shards():
            if not len(shard.embeddings):
                continue
            pending.append(shard.embeddings)
            have += len(shard.embeddings)
            while have >= batch_size:
                block = torch.cat(pending) if len(pending) > 1 else pending[0]
                yield block[:batch_size]
                rest = block[batch_size:]
                pending, have = ([rest] if len(rest) else []), len(rest)
        if have:
            yield torch.cat(pending) if len(pending) > 1 else pending[0]

    def _row_offsets(self) -> torch.Tensor:
        if self._offsets is None:
            rows = [self.manifest["shards"][str(i)]["rows"] for i in range(self.n_shards)]
            self._offsets = torch.tensor([0] + rows).cumsum(0)
        return self._offsets

    def take(self, rows) -> torch.Tensor:
        """Kept rows by position (0 .. len-1, record order), (len(rows), D) float32: each shard
        touched is verified once, then read through a memory map (only the rows asked for)."""
        import numpy as np

        self._require_complete()
        rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
        n = len(self)
        if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= n):
            raise IndexError(f"row index out of range for a store of {n} rows")
        offsets = self._row_offsets()
        shard_of = torch.searchsorted(offsets, rows, right=True) - 1
        out = torch.empty(len(rows), self.dim, dtype=torch.float32)
        for i in shard_of.unique().tolist():
            if i not in self._verified:
                self.read_shard(i)
            where = (shard_of == i).nonzero().flatten()
            local = (rows[where] - offsets[i]).numpy()
            out[where] = torch.from_numpy(np.ascontiguousarray(self._memmap(i)[local]))
        return out

    def _memmap(self, i: int):
        if i in self._cache:
            return self._cache[i].embeddings.numpy()
        if i in self._maps:
            self._maps[i] = self._maps.pop(i)  # most recently used last
        else:
            # Each map holds a file handle: keep a few, least recently used out first, so that a store of
            # thousands of shards never runs into the open-file limit (take() copies the rows it reads).
            while len(self._maps) >= MAX_OPEN_MAPS:
                oldest = self._maps.pop(next(iter(self._maps)))
                if getattr(oldest, "_mmap", None) is not None:
                    oldest._mmap.close()
            self._maps[i] = self._open_map(i)
        return self._maps[i]

    def _open_map(self, i: int):
        import numpy as np

        entry = self.manifest["shards"][str(i)]
        path = self.root / entry["file"]
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        begin = header["embeddings"]["data_offsets"][0]
        return np.memmap(path, dtype=np.float32, mode="r", offset=8 + n + begin, shape=(entry["rows"], self.dim))

    @property
    def labels(self) -> torch.Tensor:
        """(len,) int64 labels of the kept rows (one pass, then kept)."""
        if self._labels is None:
            self._labels = torch.cat([s.labels for s in self.iter_shards()]) if self.n_shards else torch.zeros(0, dtype=torch.long)
        return self._labels

    def load(self, dataset=None, from_cache: bool = True):
        """The whole store as a ``FeatureSet`` (groups and concept labels from ``dataset`` when given)."""
        from .features import _with_metadata

        shards = list(self.iter_shards())
        emb = torch.cat([s.embeddings for s in shards]) if shards else torch.zeros(0, self.dim)
        labels = torch.cat([s.labels for s in shards]) if shards else torch.zeros(0, dtype=torch.long)
        kept = torch.cat([s.kept for s in shards]) if shards else torch.zeros(0, dtype=torch.long)
        skipped = tuple(x for s in shards for x in s.skipped)
        return _with_metadata(dataset, emb, labels, kept, skipped, from_cache=from_cache)

    def __repr__(self) -> str:
        return (f"FeatureStore('{self.root}', {len(self)} rows x {self.dim}, shards "
                f"{len(self.manifest['shards'])}/{self.n_shards})")


# -- validation helpers ---------------------------------------------------------------------------
def _read_bounded(path: Path, limit: int, what: str) -> bytes:
    """A regular file (not a link, device or FIFO) of at most ``limit`` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise StoreError(f"Cannot read {what} '{path}': {exc.strerror or exc}.") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StoreError(f"The {what} '{path}' is not a regular file.")
        if info.st_size > limit:
            raise StoreError(f"The {what} '{path}' is larger than expected ({info.st_size} > {limit} bytes).")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise StoreError(f"The {what} '{path}' is larger than expected.")
    return data


def _int(value, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise StoreError(f"Feature store manifest: '{what}' must be an integer in [{low}, {high}]; got {value!r}.")
    return value


def _check_manifest(raw: bytes, root: Path) -> dict:
    try:
        m = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(f"'{root / MANIFEST}' is not valid JSON ({exc}); delete the folder and extract again.") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise StoreError(f"'{root}' is not a feature store (format is not '{FORMAT}').")
    if m.get("version") != VERSION:
        raise StoreError(f"Feature store '{root}' has version {m.get('version')!r}; this cbm_core reads version {VERSION}.")
    for field in ("key", "backbone", "dataset_fingerprint"):
        if not isinstance(m.get(field), str) or len(m[field]) > 4096:
            raise StoreError(f"Feature store manifest: '{field}' must be a string.")
    n = _int(m.get("n_records"), 0, MAX_RECORDS, "n_records")
    size = _int(m.get("shard_size"), 1, MAX_SHARD_SIZE, "shard_size")
    _int(m.get("dim"), 1, MAX_DIM, "dim")
    if m.get("dtype") != "F32":
        raise StoreError(f"Feature store manifest: dtype must be 'F32'; got {m.get('dtype')!r}.")
    classes = m.get("classes", [])
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise StoreError("Feature store manifest: 'classes' must be a list of names.")
    shards = m.get("shards")
    if not isinstance(shards, dict):
        raise StoreError("Feature store manifest: 'shards' must be an object.")
    n_shards = -(-n // size)
    for k, e in shards.items():
        if not isinstance(k, str) or not k.isdigit() or int(k) >= n_shards or str(int(k)) != k:
            raise StoreError(f"Feature store manifest: shard {k!r} is out of range (the store has {n_shards}).")
        i = int(k)
        if not isinstance(e, dict) or e.get("file") != shard_name(i) or not _SHARD_NAME.match(e["file"]):
            raise StoreError(f"Feature store manifest: shard {i} must be the file '{shard_name(i)}'.")
        span = min((i + 1) * size, n) - i * size
        rows = _int(e.get("rows"), 0, span, f"shards.{i}.rows")
        if _int(e.get("skipped"), 0, span, f"shards.{i}.skipped") + rows != span:
            raise StoreError(f"Feature store manifest: shard {i} accounts for {rows + e['skipped']} of its {span} records.")
        _int(e.get("bytes"), 8, 8 + MAX_HEADER_BYTES + rows * (m["dim"] * 4 + 16), f"shards.{i}.bytes")
        if not isinstance(e.get("sha256"), str) or not _HEX64.match(e["sha256"]):
            raise StoreError(f"Feature store manifest: shard {i} has no valid sha256.")
    return m


def _header(data: bytes, where: str) -> dict:
    if len(data) < 8:
        raise StoreError(f"{where} is truncated.")
    n = int.from_bytes(data[:8], "little")
    if n > MAX_HEADER_BYTES or 8 + n > len(data):
        raise StoreError(f"{where} has a damaged header.")
    try:
        header = json.loads(data[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise StoreError(f"{where} has a damaged header.") from None
    if not isinstance(header, dict):
        raise StoreError(f"{where} has a damaged header.")
    return header


def _check_shapes(tensors: dict, rows: int, dim: int, where: str) -> None:
    want = {"embeddings": (torch.float32, (rows, dim)), "labels": (torch.int64, (rows,)),
            "kept": (torch.int64, (rows,))}
    for name, (dtype, shape) in want.items():
        t = tensors.get(name)
        if t is None or t.dtype != dtype or tuple(t.shape) != shape:
            got = None if t is None else (str(t.dtype), tuple(t.shape))
            raise StoreError(f"{where}: '{name}' must be {dtype} {shape}; got {got}.")


def _skipped(meta: dict, count: int, where: str) -> tuple[tuple[str, str], ...]:
    try:
        items = json.loads(meta.get("skipped", "[]"))
    except json.JSONDecodeError:
        raise StoreError(f"{where}: the skipped-image list is not JSON.") from None
    if (not isinstance(items, list) or len(items) != count
            or not all(isinstance(x, list) and len(x) == 2 and all(isinstance(s, str) for s in x) for x in items)):
        raise StoreError(f"{where}: the skipped-image list must hold {count} [path, reason] pairs.")
    return tuple((p, r) for p, r in items)


def _verify_shard(path: Path, entry: dict, i: int, start: int, stop: int, dim: int, n_classes: int | None) -> Shard:
    from safetensors.torch import load

    where = f"Shard {i} ('{path}')"
    data = _read_bounded(path, entry["bytes"], f"shard {i}")
    if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise StoreError(f"{where} is damaged (its size or SHA-256 differs from the manifest); writing the store again "
                         "(`python -m cbm_core extract`, same data) redoes it.")
    header = _header(data, where)
    names = {k for k in header if k != "__metadata__"}
    if names != {"embeddings", "labels", "kept"}:
        raise StoreError(f"{where} must hold exactly embeddings, labels and kept; holds {sorted(names)}.")
    want = {"embeddings": ("F32", [entry["rows"], dim]), "labels": ("I64", [entry["rows"]]),
            "kept": ("I64", [entry["rows"]])}
    for name, (dtype, shape) in want.items():
        h = header[name]
        if not isinstance(h, dict) or h.get("dtype") != dtype or h.get("shape") != shape:
            raise StoreError(f"{where}: '{name}' must be {dtype} {shape}.")
    try:
        tensors = load(data)
    except Exception as exc:  # safetensors' own offset checks
        raise StoreError(f"{where} is damaged ({exc}).") from None
    _check_shapes(tensors, entry["rows"], dim, where)
    emb, labels, kept = tensors["embeddings"], tensors["labels"], tensors["kept"]
    if not bool(torch.isfinite(emb).all()):
        raise StoreError(f"{where} holds non-finite features.")
    if len(kept) and (int(kept[0]) < start or int(kept[-1]) >= stop or not bool((kept[1:] > kept[:-1]).all())):
        raise StoreError(f"{where}: record indices must increase within [{start}, {stop}).")
    if len(labels) and (int(labels.min()) < 0 or (n_classes is not None and int(labels.max()) >= n_classes)):
        raise StoreError(f"{where}: labels must lie in [0, {n_classes}).")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise StoreError(f"{where} has damaged metadata.")
    return Shard(i, start, stop, emb, labels, kept, _skipped(meta, entry["skipped"], where))


# -- writing --------------------------------------------------------------------------------------
def _fsync_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # some filesystems cannot fsync a folder; the rename is still atomic
        pass


class _Lock:
    """An exclusive lock on the store folder for one writer (POSIX flock; a no-op elsewhere)."""

    def __init__(self, root: Path):
        self.path, self.fd = root / LOCK, None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:
            return self
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = None
            raise StoreError(f"Another extraction is writing the feature store '{self.path.parent}'. Wait for it "
                             "to finish (or stop it); a second run would resume from what it leaves.") from None
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)


class _ShardWriter:
    """Collects encoded batches (in any order) per shard and writes each shard, then the manifest,
    as soon as all of its records are accounted for."""

    def __init__(self, store: FeatureStore, todo: Sequence[int], record_paths: Sequence[str]):
        self.store, self.paths = store, record_paths
        self.pending = {i: {"n": 0, "emb": [], "labels": [], "kept": [], "skipped": []} for i in todo}
        self.written: list[int] = []

    def add(self, indices: Sequence[int], embeddings: torch.Tensor | None, labels: Sequence[int],
            failed: Sequence[tuple[int, str]]) -> None:
        size = self.store.shard_size
        by_shard: dict[int, list[int]] = {}
        for pos, i in enumerate(indices):
            by_shard.setdefault(i // size, []).append(pos)
        if by_shard and embeddings is None:
            raise StoreError("An encoder returned no features for images it read.")
        for s, positions in by_shard.items():
            p = self.pending[s]
            p["emb"].append(embeddings[positions].float())
            p["labels"] += [labels[j] for j in positions]
            p["kept"] += [indices[j] for j in positions]
            p["n"] += len(positions)
        for i, reason in failed:
            p = self.pending[i // size]
            p["skipped"].append((i, reason))
            p["n"] += 1
        for s in sorted(set(by_shard) | {i // size for i, _ in failed}):
            start, stop = self.store.shard_range(s)
            if self.pending[s]["n"] == stop - start:
                self._write(s)

    def _write(self, s: int) -> None:
        from safetensors.torch import save

        p = self.pending.pop(s)
        order = sorted(range(len(p["kept"])), key=p["kept"].__getitem__)
        dim = self.store.dim
        emb = torch.cat(p["emb"]) if p["emb"] else torch.zeros(0, dim)
        emb = emb[order].contiguous() if order else torch.zeros(0, dim)
        if emb.shape[1] != dim:
            raise StoreError(f"The encoder produced {emb.shape[1]}-dim features; the store holds {dim}.")
        kept = torch.tensor([p["kept"][j] for j in order], dtype=torch.long)
        labels = torch.tensor([p["labels"][j] for j in order], dtype=torch.long)
        skipped = [[self.paths[i], reason] for i, reason in sorted(p["skipped"])]
        data = save({"embeddings": emb, "labels": labels, "kept": kept},
                    metadata={"skipped": json.dumps(skipped), "shard": str(s)})
        root = self.store.root
        _fsync_write(root / shard_name(s), data)
        m = self.store.manifest
        m["shards"][str(s)] = {"file": shard_name(s), "rows": len(kept), "skipped": len(skipped), "bytes": len(data),
                               "sha256": hashlib.sha256(data).hexdigest()}
        m["shards"] = dict(sorted(m["shards"].items(), key=lambda kv: int(kv[0])))
        _fsync_write(root / MANIFEST, json.dumps(m, indent=1).encode())
        self.store._verified[s] = m["shards"][str(s)]["sha256"]  # we wrote these bytes ourselves
        self.store._offsets = self.store._labels = None
        self.store._cache.pop(s, None)
        self.store._maps.pop(s, None)
        self.written.append(s)


def default_store_root(backbone, dataset, cache_dir: str | Path | None = None) -> Path:
    """Where ``extract_features`` looks for (and ``write_store`` puts) a dataset's store by default."""
    from .features import default_cache_dir, feature_key

    return Path(cache_dir or default_cache_dir()) / f"{feature_key(backbone, dataset.fingerprint())}.store"


def write_store(backbone, dataset, root: str | Path | None = None, *, engine: str = "inprocess",
                address: str | None = None, shard_size: int = DEFAULT_SHARD_SIZE, batch_size: int = 64,
                num_workers: int | None = None, num_cpus: int | None = None, num_gpus: float | None = None,
                cache_dir: str | Path | None = None, progress=None, progress_bar: bool = False) -> FeatureStore:
    """Encode ``dataset`` (an ``ImageDataset``) into a sharded store at ``root`` (default
    ``default_store_root``), doing only the shards that are not complete yet, and return it.

    engine: ``"inprocess"`` (DataLoader workers, as ``extract_features``) or ``"ray"`` (Ray Data:
    decode tasks + encoder actors; ``address`` None = a local Ray with ``num_cpus``, else a cluster;
    see ``cbm_core.data.ray_extract``). ``shard_size`` is rounded up to a multiple of ``batch_size`` so
    both engines encode exactly the batches the in-process path does (bit-identical features on a
    CPU). ``progress(done, total)`` counts records, the ones already stored included.
    ``store.last_write`` says what this call did: shards written, reused and redone, records encoded.
    """
    from .datasets import ImageDataset
    from .features import feature_key

    if not isinstance(dataset, ImageDataset):
        raise DatasetError("A feature store needs an ImageDataset (a folder or a CSV manifest): its fingerprint "
                           "keys the store.")
    if engine not in ("inprocess", "ray"):
        raise CBMError(f"Unknown engine '{engine}'; use 'inprocess' or 'ray'.")
    if len(dataset) == 0:
        raise DatasetError("The dataset is empty.")
    for name, value, high in (("shard_size", shard_size, MAX_SHARD_SIZE), ("batch_size", batch_size, MAX_SHARD_SIZE)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
            raise StoreError(f"{name} must be a whole number from 1 to {high:,}; got {value!r}.")
    if num_workers is not None and (isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0):
        raise StoreError(f"num_workers must be a whole number of at least 0; got {num_workers!r}.")
    fp = dataset.fingerprint()
    key = feature_key(backbone, fp)
    root = Path(root) if root is not None else default_store_root(backbone, dataset, cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with _Lock(root):
        redone: list[int] = []
        if (root / MANIFEST).exists():
            store = FeatureStore.open(root)
            if store.key != key or store.n_records != len(dataset):
                raise StoreError(f"'{root}' holds features of another backbone, dataset or transform (key "
                                 f"{store.key}, this run {key}). Choose another folder, or delete it.")
            redone = store.verify()
            for i in redone:
                del store.manifest["shards"][str(i)]
        else:
            size = min(-(-shard_size // batch_size) * batch_size, MAX_SHARD_SIZE // batch_size * batch_size)
            manifest = {"format": FORMAT, "version": VERSION, "key": key, "backbone": backbone.spec,
                        "backbone_fingerprint": backbone.fingerprint, "precision": backbone.precision,
                        "dataset": dataset.name, "dataset_fingerprint": fp,
                        "transform": hashlib.sha256(repr(backbone.preprocess).encode()).hexdigest()[:16],
                        "n_records": len(dataset), "shard_size": size, "dim": int(backbone.embed_dim), "dtype": "F32",
                        "classes": list(dataset.classes), "shards": {}}
            _fsync_write(root / MANIFEST, json.dumps(manifest, indent=1).encode())
            store = FeatureStore(root, manifest)
        if store.shard_size % batch_size:
            batch_size = _largest_divisor(store.shard_size, batch_size)
        todo = store.missing_shards()
        total = store.n_records
        done = total - sum(store.shard_range(i)[1] - store.shard_range(i)[0] for i in todo)
        writer = _ShardWriter(store, todo, [r.path for r in dataset.records])
        bar = None
        if progress_bar:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=done, desc=f"Encoding images ({engine})", unit="img")
        if progress:
            progress(done, total)
        encoded = 0
        if todo:
            indices = [j for i in todo for j in range(*store.shard_range(i))]
            if engine == "ray":
                from .ray_extract import encode_with_ray

                stream = encode_with_ray(backbone, dataset, indices, batch_size=batch_size, address=address,
                                         num_cpus=num_cpus, num_gpus=num_gpus)
            else:
                from .features import _encode_stream

                stream = _encode_stream(backbone, dataset, indices, batch_size=batch_size, num_workers=num_workers)
            for idx, emb, labels, failed in stream:
                writer.add(idx, emb, labels, failed)
                n = len(idx) + len(failed)
                encoded += len(idx)
                done += n
                if bar:
                    bar.update(n)
                if progress:
                    progress(done, total)
        if bar:
            bar.close()
        if writer.pending:
            raise StoreError(f"The extraction ended with {len(writer.pending)} shards unfinished; run it again to resume.")
    if len(store) == 0:
        first = next((r for s in store.iter_shards() for _, r in s.skipped), "unknown")
        raise DatasetError(f"None of the {store.n_records} images could be read; first problem: {first}")
    store.last_write = {"engine": engine, "written": sorted(writer.written), "reused": sorted(
        set(store.complete_shards()) - set(writer.written)), "redone": sorted(redone), "encoded": encoded,
        "seconds": time.perf_counter() - t0}
    return store


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)
