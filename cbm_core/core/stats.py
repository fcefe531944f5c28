"""Training-split statistics of concept scores: what "typical", "absent" and "percentile" mean.

Standardisation, interventions (set to a percentile, switch off to the mean), the browser panel's
percentile grid and every "score p12" label read these; they depend on no recipe and no head.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import ConceptError

QUANTILE_LEVELS = torch.linspace(0.0, 100.0, 101)


@dataclass(frozen=True, eq=False)
class ConceptStats:
    """Training-split distribution of each concept's raw score.

    mean, std: (K,); quantiles: (101, K) — the 0th, 1st, ..., 100th percentiles.
    """

    names: tuple[str, ...]
    mean: torch.Tensor
    std: torch.Tensor
    quantiles: torch.Tensor

    @classmethod
    def from_scores(cls, names: Sequence[str], scores: torch.Tensor) -> "ConceptStats":
        """scores: (N, K) raw training scores."""
        scores = scores.float()
        std = scores.std(dim=0, unbiased=False).clamp_min(1e-6)
        quantiles = torch.quantile(scores, QUANTILE_LEVELS / 100.0, dim=0)
        return cls(tuple(names), scores.mean(dim=0), std, quantiles)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise ConceptError(f"Unknown concept '{name}'.") from None

    def values_at(self, percentile: float) -> torch.Tensor:
        """The raw score at ``percentile`` (0-100) of every concept, (K,), interpolated between
        the stored whole percentiles."""
        p = min(max(float(percentile), 0.0), 100.0)
        i = min(int(p), 99)
        return self.quantiles[i] + (p - i) * (self.quantiles[i + 1] - self.quantiles[i])

    def value_at(self, k: int, percentile: float) -> float:
        """The raw score at ``percentile`` (0-100) of concept k."""
        return float(self.values_at(percentile)[k])

    def percentile_of(self, scores: torch.Tensor) -> torch.Tensor:
        """Percentile (0-100) of each raw score in the training distribution; scores: (..., K)."""
        K = scores.shape[-1]
        values = scores.float().reshape(-1, K).T.contiguous()  # (K, M)
        q = self.quantiles.T.contiguous()  # (K, 101)
        idx = torch.searchsorted(q, values, right=True).clamp(1, q.shape[1] - 1)
        x0, x1 = q.gather(1, idx - 1), q.gather(1, idx)
        y0, y1 = QUANTILE_LEVELS[idx - 1], QUANTILE_LEVELS[idx]
        t = torch.where(x1 > x0, (values - x0) / (x1 - x0).clamp_min(1e-12), torch.full_like(values, 0.5))
        pct = y0 + t.clamp(0, 1) * (y1 - y0)
        # A score equal to training percentiles sits at the middle of their run: a sigmoid's 1.0 held by the top
        # quarter of training images reads p87.5, not p99.5 (nor a ReLU's 0 the run's top end).
        first = torch.searchsorted(q, values, right=False)
        last = torch.searchsorted(q, values, right=True) - 1
        levels = QUANTILE_LEVELS.to(pct.dtype)
        tied = (last >= first) & (first < q.shape[1])
        mid = (levels[first.clamp(max=q.shape[1] - 1)] + levels[last.clamp(min=0)]) / 2
        pct = torch.where(tied, mid, pct)
        pct = torch.where(values < q[:, :1], 0.0, torch.where(values > q[:, -1:], 100.0, pct))
        return pct.T.reshape(scores.shape)

    def subset(self, keep: Sequence[int]) -> "ConceptStats":
        keep = list(keep)
        return ConceptStats(tuple(self.names[i] for i in keep), self.mean[keep], self.std[keep], self.quantiles[:, keep])
