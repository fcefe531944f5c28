"""Feature sources: what recipes train from when the features need not sit in memory.

A ``FeatureSource`` is anything with a length, a width and two ways to read rows:

- ``iter_batches(batch_size)`` — every row once, in order, as (b, dim) float32 tensors (a full pass:
  what a full-batch solver sums its gradient over);
- ``take(rows)`` — the given rows, (len(rows), dim) (what a mini-batch sampler draws).

Two kinds exist: ``TensorSource`` (an (N, D) tensor in memory) and ``cbm_core.data.store.FeatureStore``
(shards on disk, read one at a time). ``MappedSource`` applies a function to each batch of another
source — a concept layer and its standardisation — so concept scores of a large store are computed on
the fly, never held whole.

The seam is deliberately small: ``fit_elastic_net``, ``LabelFreeCBM.fit`` and ``DNCBM.fit`` accept a
source wherever they accepted a tensor, and a tensor still goes down the unchanged in-memory path.
"""
from __future__ import annotations

from typing import Callable, Iterator, Protocol, Sequence, runtime_checkable

import torch

DEFAULT_CHUNK = 65_536  # rows per pass step: 128 MiB of float32 at D = 512
SAMPLE_ROWS = 65_536  # rows behind statistics that need all values at once (percentiles, a median)


@runtime_checkable
class FeatureSource(Protocol):
    """Rows of features, (N, dim), readable in passes or by index; see the module docstring."""

    def __len__(self) -> int: ...

    @property
    def dim(self) -> int: ...

    def iter_batches(self, batch_size: int) -> Iterator[torch.Tensor]: ...

    def take(self, rows: torch.Tensor) -> torch.Tensor: ...


class TensorSource:
    """An in-memory (N, D) tensor as a ``FeatureSource``."""

    def __init__(self, features: torch.Tensor):
        if features.ndim != 2:
            raise ValueError(f"features must be (N, D); got {tuple(features.shape)}")
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def iter_batches(self, batch_size: int = DEFAULT_CHUNK) -> Iterator[torch.Tensor]:
        for start in range(0, len(self.features), int(batch_size)):
            yield self.features[start:start + int(batch_size)].float()

    def take(self, rows: torch.Tensor) -> torch.Tensor:
        return self.features[torch.as_tensor(rows, dtype=torch.long).to(self.features.device)].float()


class MappedSource:
    """``fn`` applied to every batch of ``source``: (b, source.dim) -> (b, dim). Nothing is stored."""

    def __init__(self, source: FeatureSource, fn: Callable[[torch.Tensor], torch.Tensor], dim: int):
        self.source, self.fn, self._dim = source, fn, int(dim)

    def __len__(self) -> int:
        return len(self.source)

    @property
    def dim(self) -> int:
        return self._dim

    def iter_batches(self, batch_size: int = DEFAULT_CHUNK) -> Iterator[torch.Tensor]:
        for batch in self.source.iter_batches(batch_size):
            yield self.fn(batch)

    def take(self, rows: torch.Tensor) -> torch.Tensor:
        return self.fn(self.source.take(rows))


def is_source(x) -> bool:
    """True for a feature source that is not a plain tensor (a store, a mapped source)."""
    return not isinstance(x, torch.Tensor) and isinstance(x, FeatureSource)


def as_source(x) -> FeatureSource:
    return TensorSource(x) if isinstance(x, torch.Tensor) else x


def sample_rows(n: int, cap: int = SAMPLE_ROWS) -> torch.Tensor:
    """All row indices when n <= cap, else ``cap`` evenly spaced ones (deterministic, no seed)."""
    if n <= cap:
        return torch.arange(n)
    return torch.linspace(0, n - 1, cap).round().long().unique()


def column_stats(source: FeatureSource, chunk: int = DEFAULT_CHUNK) -> dict[str, torch.Tensor]:
    """Exact per-column mean, population std, min and max over every row, in two passes (float64
    sums: the std is not the difference of two large numbers). Returns float32 tensors (dim,)."""
    n, total = 0, None
    lo = hi = None
    for x in source.iter_batches(chunk):
        x64 = x.double()
        total = x64.sum(0) if total is None else total + x64.sum(0)
        lo = x.amin(0) if lo is None else torch.minimum(lo, x.amin(0))
        hi = x.amax(0) if hi is None else torch.maximum(hi, x.amax(0))
        n += len(x)
    if not n:
        raise ValueError("the source has no rows")
    mean = total / n
    sq = None
    for x in source.iter_batches(chunk):
        d = (x.double() - mean) ** 2
        sq = d.sum(0) if sq is None else sq + d.sum(0)
    return {"mean": mean.float(), "std": (sq / n).sqrt().float(), "min": lo.float(), "max": hi.float(), "n": n}


def stats_from_source(names: Sequence[str], scores: FeatureSource, chunk: int = DEFAULT_CHUNK,
                      sample_cap: int = SAMPLE_ROWS):
    """``ConceptStats`` of raw training scores held in a source: mean and std exact over every row;
    the 101 percentiles from ``sample_rows`` (every row when there are at most ``sample_cap``, where
    the result equals ``ConceptStats.from_scores``), with the 0th and 100th set to the exact min and max."""
    from ..core.stats import QUANTILE_LEVELS, ConceptStats

    s = column_stats(scores, chunk)
    sample = scores.take(sample_rows(len(scores), sample_cap)).float()
    quantiles = torch.quantile(sample, QUANTILE_LEVELS / 100.0, dim=0)
    quantiles[0], quantiles[-1] = s["min"], s["max"]
    return ConceptStats(tuple(names), s["mean"], s["std"].clamp_min(1e-6), quantiles)


def standardized_source(layer: Callable[[torch.Tensor], torch.Tensor], names: Sequence[str], source: FeatureSource,
                        k: int, chunk: int = DEFAULT_CHUNK):
    """The streaming twin of ``recipes.base.standardized``: ``(stats, z)`` where z is a
    ``MappedSource`` of the standardised scores ``(layer(x) - mean) / std``, (N, k)."""
    raw = MappedSource(source, lambda x: layer(x.float()), k)
    stats = stats_from_source(names, raw, chunk)
    return stats, MappedSource(source, lambda x: (layer(x.float()) - stats.mean) / stats.std, k)


def labels_of(labels, n: int) -> torch.Tensor:
    labels = torch.as_tensor(labels, dtype=torch.long)
    if len(labels) != n:
        raise ValueError(f"{n} feature rows but {len(labels)} labels")
    return labels


class RowsSource:
    """The rows ``rows`` (positions in ``source``) of another source, in that order."""

    def __init__(self, source: FeatureSource, rows: torch.Tensor):
        self.source, self.rows = source, torch.as_tensor(rows, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def dim(self) -> int:
        return self.source.dim

    def iter_batches(self, batch_size: int = DEFAULT_CHUNK) -> Iterator[torch.Tensor]:
        for start in range(0, len(self.rows), int(batch_size)):
            yield self.source.take(self.rows[start:start + int(batch_size)])

    def take(self, rows: torch.Tensor) -> torch.Tensor:
        return self.source.take(self.rows[torch.as_tensor(rows, dtype=torch.long).cpu()])


def source_key(source) -> tuple:
    """What identifies a source's contents for a recipe's memo: a store's key and shard hashes, else
    the object itself (a mapped or in-memory source is not hashed row by row)."""
    manifest = getattr(source, "manifest", None)
    if isinstance(manifest, dict):
        return ("store", manifest.get("key"), tuple(e.get("sha256") for e in manifest.get("shards", {}).values()))
    return ("source", id(source), len(source))


def check_source_labels(source: FeatureSource, labels, n_classes: int) -> torch.Tensor:
    """The streaming twin of ``recipes.base.check_training_data`` (a store checks its own values
    finite when it reads them): labels as int64, one per row, in [0, n_classes)."""
    from ..errors import RecipeError

    labels = torch.as_tensor(labels, dtype=torch.long)
    if len(source) != len(labels):
        raise RecipeError(f"{len(source)} feature rows but {len(labels)} labels.")
    if len(source) == 0:
        raise RecipeError("No training examples: every image was skipped or the dataset is empty.")
    if int(labels.max()) >= n_classes or int(labels.min()) < 0:
        raise RecipeError(f"Labels must lie in [0, {n_classes}); got {int(labels.min())}..{int(labels.max())}.")
    return labels


def column_top(source: FeatureSource, fn: Callable[[torch.Tensor], torch.Tensor], k: int = 5,
               chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """The k largest values of each column of ``fn(batch)`` over every row, (k, K), sorted descending
    (the same values ``topk`` gives on the whole matrix)."""
    best = None
    for x in source.iter_batches(chunk):
        v = fn(x).float()
        both = v if best is None else torch.cat([best, v])
        best = both.topk(min(k, len(both)), dim=0).values
    return best
