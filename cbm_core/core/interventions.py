"""Interventions: immutable, composable, JSON-serialisable changes to concept scores.

An ``Intervention`` is an ordered tuple of ``ConceptChange`` values applied left to right to
*raw* concept scores (the backbone's cosine similarities), so its meaning does not depend on
the head. Percentiles refer to the model's training distribution (``ConceptStats``).

- ``set``: to a raw value, or to a percentile of the training distribution
- ``scale``: multiply the deviation from the training mean (``factor`` 0 = the mean, 2 = twice
  as far from typical); this is rescaling the standardised score the head reads
- ``ablate``: to the "absent" reference — the training mean, or a chosen percentile
- ``clamp``: into the ``[low, high]`` percentile range
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal

import torch

from ..errors import InterventionError

if TYPE_CHECKING:
    from .stats import ConceptStats

Op = Literal["set", "scale", "ablate", "clamp"]
_OPS = ("set", "scale", "ablate", "clamp")


@dataclass(frozen=True)
class ConceptChange:
    """One change to one concept; which fields matter depends on ``op`` (see module docstring)."""

    op: Op
    concept: str
    value: float | None = None
    percentile: float | None = None
    factor: float | None = None
    low: float | None = None
    high: float | None = None

    def __post_init__(self):
        if self.op not in _OPS:
            raise InterventionError(f"Unknown intervention op '{self.op}'; use one of {', '.join(_OPS)}.")
        if not isinstance(self.concept, str):
            raise InterventionError(f"An intervention's concept must be a name, not {self.concept!r}.")
        for name in ("value", "percentile", "factor", "low", "high"):
            x = getattr(self, name)
            if x is not None and (isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x)):
                raise InterventionError(f"{self.op} '{self.concept}': {name} must be a finite number, not {x!r}.")
        for name in ("percentile", "low", "high"):
            p = getattr(self, name)
            if p is not None and not 0.0 <= p <= 100.0:
                raise InterventionError(f"{name}={p} for '{self.concept}' is not a percentile in [0, 100].")
        if self.op == "set" and (self.value is None) == (self.percentile is None):
            raise InterventionError(f"set '{self.concept}': give exactly one of value or percentile.")
        if self.op == "scale" and self.factor is None:
            raise InterventionError(f"scale '{self.concept}': a factor is required.")
        if self.op == "clamp" and self.low is None and self.high is None:
            raise InterventionError(f"clamp '{self.concept}': give low and/or high percentiles.")
        if self.op == "clamp" and self.low is not None and self.high is not None and self.low > self.high:
            raise InterventionError(f"clamp '{self.concept}': low (p{self.low:g}) is above high (p{self.high:g}); "
                                    "swap them.")

    def describe(self) -> str:
        if self.op == "set":
            return f"set '{self.concept}' to " + (f"{self.value:.3f}" if self.value is not None else f"p{self.percentile:g}")
        if self.op == "scale":
            return f"scale '{self.concept}' x{self.factor:g}"
        if self.op == "ablate":
            return f"switch off '{self.concept}'" + (f" (to p{self.percentile:g})" if self.percentile is not None else "")
        return f"clamp '{self.concept}' to [p{self.low if self.low is not None else 0:g}, p{self.high if self.high is not None else 100:g}]"


@dataclass(frozen=True)
class Intervention:
    """An ordered, immutable list of concept changes. Builders return new interventions."""

    changes: tuple[ConceptChange, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.changes)

    def __bool__(self) -> bool:
        return bool(self.changes)

    # -- builders (each returns a new Intervention) ----------------------------------------
    def set(self, concept: str, value: float | None = None, *, percentile: float | None = None) -> "Intervention":
        return self._with(ConceptChange("set", concept, value=_num(value), percentile=_num(percentile)))

    def scale(self, concept: str, factor: float) -> "Intervention":
        return self._with(ConceptChange("scale", concept, factor=float(factor)))

    def ablate(self, concept: str, *, percentile: float | None = None) -> "Intervention":
        return self._with(ConceptChange("ablate", concept, percentile=_num(percentile)))

    def clamp(self, concept: str, low: float | None = None, high: float | None = None) -> "Intervention":
        return self._with(ConceptChange("clamp", concept, low=_num(low), high=_num(high)))

    def then(self, other: "Intervention") -> "Intervention":
        """Compose: this intervention's changes, then ``other``'s."""
        return Intervention(self.changes + other.changes)

    def without(self, concept: str) -> "Intervention":
        """Drop every change to ``concept``."""
        return Intervention(tuple(c for c in self.changes if c.concept != concept))

    def _with(self, change: ConceptChange) -> "Intervention":
        return Intervention(self.changes + (change,))

    @property
    def concepts(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.concept for c in self.changes))

    # -- application -------------------------------------------------------------------------
    def apply(self, scores: torch.Tensor, stats: "ConceptStats") -> torch.Tensor:
        """Return changed raw scores; ``scores`` is (K,) or (N, K) and is not modified."""
        out = scores.clone()
        if not self.changes:
            return out
        view = out.unsqueeze(0) if out.ndim == 1 else out
        if view.shape[-1] != len(stats.names):
            raise InterventionError(f"Scores have {view.shape[-1]} concepts; the model has {len(stats.names)}.")
        for change in self.changes:
            k = stats.index(change.concept)
            col = view[:, k]
            if change.op == "set":
                new = (torch.full_like(col, change.value) if change.value is not None
                       else torch.full_like(col, stats.value_at(k, change.percentile)))
            elif change.op == "scale":
                mean = float(stats.mean[k])
                new = mean + change.factor * (col - mean)
            elif change.op == "ablate":
                ref = float(stats.mean[k]) if change.percentile is None else stats.value_at(k, change.percentile)
                new = torch.full_like(col, ref)
            else:
                low = stats.value_at(k, change.low) if change.low is not None else None
                high = stats.value_at(k, change.high) if change.high is not None else None
                new = col.clamp(min=low, max=high)
            view[:, k] = new
        return out

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": "cbm-intervention", "version": 1,
                "changes": [{k: v for k, v in asdict(c).items() if v is not None} for c in self.changes]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> "Intervention":
        if not isinstance(data, dict) or data.get("format") != "cbm-intervention":
            raise InterventionError("This is not an intervention file (missing \"format\": \"cbm-intervention\").")
        if data.get("version") != 1:
            raise InterventionError(f"Intervention format version {data.get('version')} is not supported (expected 1).")
        changes = data.get("changes", [])
        if not isinstance(changes, list) or not all(isinstance(c, dict) for c in changes):
            raise InterventionError("An intervention's \"changes\" must be a list of objects, one per change.")
        try:
            return cls(tuple(ConceptChange(**c) for c in changes))
        except TypeError as exc:
            raise InterventionError(f"An intervention change has unknown fields: {exc}.") from exc

    @classmethod
    def from_json(cls, text: str) -> "Intervention":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise InterventionError(f"Intervention file is not valid JSON: {exc}.") from exc

    def describe(self) -> list[str]:
        return [c.describe() for c in self.changes]


def _num(x) -> float | None:
    return None if x is None else float(x)
