"""Concept banks: named, validated, provenance-tracked lists of concepts and their text vectors.

A ``ConceptBank`` is an immutable value. Loaders accept a Python list, ``.txt`` (one concept
per line, ``#`` comments), ``.csv`` (a ``concept`` column, optional ``source``) or ``.json``
(a list, or ``{"concepts": [...]}`` with strings or ``{"name", "source"}`` objects).
Filters return a new bank plus a ``FilterReport`` saying what was removed and why.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import torch

from ..errors import ConceptError

if TYPE_CHECKING:
    from ..backbone import Backbone

MAX_CONCEPT_CHARS = 120
DEFAULT_TEMPLATES = ("{}",)


@dataclass(frozen=True)
class FilterReport:
    """What a filter removed: one ``(concept, reason)`` row per removed concept."""

    removed: tuple[tuple[str, str], ...] = ()

    def __len__(self) -> int:
        return len(self.removed)

    def __add__(self, other: "FilterReport") -> "FilterReport":
        return FilterReport(self.removed + other.removed)

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(list(self.removed), columns=["concept", "reason"])


@dataclass(frozen=True)
class ConceptBank:
    """An ordered list of unique concept names with where each came from.

    ``sources[i]`` is the provenance of ``names[i]``: ``"user"`` (typed), ``"file:<name>"``,
    ``"template"``, ``"generated:<how>"`` or ``"toybirds"``. ``name_similarity[i]``, when the names
    were given to learned directions afterwards (DN-CBM names each latent by its nearest word), is
    how close the name's text embedding is to what the concept detects (cosine): how sure the
    name is. Empty when the concepts were named first.
    """

    names: tuple[str, ...]
    sources: tuple[str, ...] = field(default=())
    name_similarity: tuple[float, ...] = field(default=())

    def __post_init__(self):
        names = tuple(self.names)
        sources = tuple(self.sources) if self.sources else ("user",) * len(names)
        if len(sources) != len(names):
            raise ConceptError(f"{len(names)} concepts but {len(sources)} provenance entries.")
        similarity = tuple(float(x) for x in self.name_similarity)
        if similarity and len(similarity) != len(names):
            raise ConceptError(f"{len(names)} concepts but {len(similarity)} name similarities.")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "sources", sources)
        object.__setattr__(self, "name_similarity", similarity)
        validate_concepts(names)

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self):
        return iter(self.names)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise ConceptError(f"Unknown concept '{name}'. Known concepts: {_preview(self.names)}.") from None

    def subset(self, keep: Iterable[int]) -> "ConceptBank":
        keep = list(keep)
        return ConceptBank(tuple(self.names[i] for i in keep), tuple(self.sources[i] for i in keep),
                           tuple(self.name_similarity[i] for i in keep) if self.name_similarity else ())

    # -- loaders -------------------------------------------------------------------------
    @classmethod
    def from_list(cls, names: Sequence[str], source: str = "user") -> "ConceptBank":
        names = [str(n).strip() if n is not None else "" for n in names]
        return cls(tuple(names), (source,) * len(names))

    @classmethod
    def from_file(cls, path: str | Path) -> "ConceptBank":
        path = Path(path)
        if not path.is_file():
            raise ConceptError(f"Concept file '{path}' does not exist.")
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ConceptError(f"Concept file '{path.name}' is not UTF-8 text.") from exc
        return cls.from_text(text, path.name)

    @classmethod
    def from_text(cls, text: str, filename: str) -> "ConceptBank":
        """Parse the contents of a concept file; the format follows ``filename``'s suffix."""
        suffix = Path(filename).suffix.lower()
        source = f"file:{filename}"
        if suffix == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConceptError(f"'{filename}' is not valid JSON: {exc}.") from exc
            if isinstance(data, dict):
                data = data.get("concepts")
            if not isinstance(data, list):
                raise ConceptError(f"'{filename}' must hold a list of concepts or {{\"concepts\": [...]}}.")
            names, sources = [], []
            for item in data:
                if isinstance(item, dict):
                    names.append(str(item.get("name", "")).strip())
                    sources.append(str(item.get("source") or source))
                else:
                    names.append(str(item).strip())
                    sources.append(source)
            _require_nonempty(names, filename)
            return cls(tuple(names), tuple(sources))
        if suffix == ".csv":
            rows = list(csv.DictReader(io.StringIO(text)))
            if rows and "concept" not in rows[0]:
                raise ConceptError(f"'{filename}' needs a 'concept' column (found: {', '.join(rows[0])}).")
            names = [(r.get("concept") or "").strip() for r in rows]
            sources = [(r.get("source") or "").strip() or source for r in rows]
            _require_nonempty(names, filename)
            return cls(tuple(names), tuple(sources))
        # .txt and anything else: one concept per line, blank lines and '#' comments skipped.
        names = [ln.strip() for ln in text.splitlines()]
        names = [n for n in names if n and not n.startswith("#")]
        _require_nonempty(names, filename)
        return cls(tuple(names), (source,) * len(names))

    # -- vectors and filters ---------------------------------------------------------------
    def embed(self, backbone: "Backbone", templates: Sequence[str] = DEFAULT_TEMPLATES) -> torch.Tensor:
        """Unit-norm text vectors, (K, D), averaged over prompt templates (e.g. ``"a photo of {}."``)."""
        return backbone.embed_prompts(self.names, templates)

    def filter_near_duplicates(self, vectors: torch.Tensor, threshold: float = 0.9):
        """Drop the later of every pair whose text vectors have cosine > ``threshold``.

        vectors: (K, D) unit-norm, aligned with ``names``. Returns ``(bank, vectors, report)``.
        """
        sim = vectors.float() @ vectors.float().T
        keep, removed = [], []
        for i in range(len(self)):
            dup = next((j for j in keep if sim[i, j] > threshold), None)
            if dup is None:
                keep.append(i)
            else:
                removed.append((self.names[i], f"near-duplicate of '{self.names[dup]}' (cosine {sim[i, dup]:.3f} > {threshold})"))
        return self.subset(keep), vectors[keep], FilterReport(tuple(removed))

    def filter_class_similar(self, vectors: torch.Tensor, class_vectors: torch.Tensor,
                             class_names: Sequence[str], threshold: float = 0.85):
        """Drop concepts whose text vector is too close to a class name's (they leak the label).

        vectors: (K, D), class_vectors: (C, D), both unit-norm. Returns ``(bank, vectors, report)``.
        """
        sim = vectors.float() @ class_vectors.float().T
        best, arg = sim.max(dim=1)
        keep, removed = [], []
        for i in range(len(self)):
            name_hit = self.names[i].lower() in {c.lower() for c in class_names}
            if name_hit or best[i] > threshold:
                why = "is a class name" if name_hit else f"too similar to class '{class_names[arg[i]]}' (cosine {best[i]:.3f} > {threshold})"
                removed.append((self.names[i], why))
            else:
                keep.append(i)
        return self.subset(keep), vectors[keep], FilterReport(tuple(removed))

    def filter_length(self, max_chars: int = 30):
        """Label-free CBM's length filter: drop concepts longer than ``max_chars``. Returns ``(bank, report)``."""
        keep = [i for i, n in enumerate(self.names) if len(n) <= max_chars]
        removed = tuple((n, f"longer than {max_chars} characters") for n in self.names if len(n) > max_chars)
        return self.subset(keep), FilterReport(removed)

    def to_records(self) -> list[dict]:
        records = [{"name": n, "source": s} for n, s in zip(self.names, self.sources)]
        for record, sim in zip(records, self.name_similarity):
            record["name_similarity"] = sim
        return records

    @classmethod
    def from_records(cls, records: Sequence[dict]) -> "ConceptBank":
        similarity = tuple(r["name_similarity"] for r in records) if records and all(
            "name_similarity" in r for r in records) else ()
        return cls(tuple(r["name"] for r in records), tuple(r.get("source", "user") for r in records), similarity)


def check_templates(templates: Sequence[str]) -> tuple[str, ...]:
    """Prompt templates, each with exactly one ``{}`` for the concept and no other braces
    (``ConceptError`` otherwise); an empty list means ``("{}",)``."""
    templates = tuple(templates) or DEFAULT_TEMPLATES
    for t in templates:
        if not isinstance(t, str) or t.count("{}") != 1 or t.replace("{}", "").count("{") or t.replace("{}", "").count("}"):
            raise ConceptError(f"Prompt template {t!r} must contain exactly one '{{}}' placeholder for the concept "
                               f"(and no other braces), e.g. 'a photo of {{}}.'.")
    return templates


def validate_concepts(names: Sequence[str]) -> None:
    """Raise ``ConceptError`` listing every problem: empty list, blanks, duplicates, over-long."""
    if len(names) == 0:
        raise ConceptError("The concept list is empty. Add at least one concept (one per line).")
    problems = []
    blanks = [i + 1 for i, n in enumerate(names) if not n or not n.strip()]
    if blanks:
        problems.append(f"blank entries at positions {_preview(blanks)}")
    seen: dict[str, str] = {}
    dups = []
    for n in names:
        key = " ".join(n.lower().split())
        if key and key in seen:
            dups.append(f"'{n}' (same as '{seen[key]}')")
        seen.setdefault(key, n)
    if dups:
        problems.append(f"duplicates (case-insensitive): {_preview(dups)}")
    long_ones = [f"'{n[:40]}...' ({len(n)} chars)" for n in names if len(n) > MAX_CONCEPT_CHARS]
    if long_ones:
        problems.append(f"entries longer than {MAX_CONCEPT_CHARS} characters: {_preview(long_ones)}")
    if problems:
        raise ConceptError("The concept list has " + "; ".join(problems) + ". Fix these entries and try again.")


def _require_nonempty(names: list[str], filename: str) -> None:
    if not names:
        raise ConceptError(f"Concept file '{filename}' holds no concepts. Add one concept per line.")


def _preview(items: Sequence, limit: int = 8) -> str:
    items = [str(x) for x in items]
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _text_lines(path: str | Path, what: str) -> list[tuple[int, str]]:
    """(line number, stripped line) of a UTF-8 text file, blank lines and '#' comments skipped."""
    path = Path(path)
    if not path.is_file():
        raise ConceptError(f"{what} '{path}' does not exist (or is not a file).")
    if path.stat().st_size > 64 * 2**20:
        raise ConceptError(f"{what} '{path.name}' is larger than 64 MB.")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConceptError(f"{what} '{path.name}' is not UTF-8 text (byte {exc.start}).") from None
    return [(i, ln.strip()) for i, ln in enumerate(text.splitlines(), 1) if ln.strip() and not ln.strip().startswith("#")]


def load_candidate_pool(path: str | Path, classes: Sequence[str] | None = None) -> dict[str, tuple[str, ...]]:
    """A LaBo-style pool of candidate concept sentences per class: a text file of
    ``class<TAB>sentence`` lines (``#`` comments). With ``classes``, every class must have
    candidates and every line must name a known class. Duplicates within a class are dropped."""
    pool: dict[str, list[str]] = {}
    name = Path(path).name
    for number, line in _text_lines(path, "Candidate pool"):
        cls, sep, sentence = line.partition("\t")
        cls, sentence = cls.strip(), sentence.strip()
        if not sep or not cls or not sentence:
            raise ConceptError(f"Candidate pool '{name}', line {number}: expected 'class<TAB>sentence', got {line[:60]!r}.")
        if len(sentence) > MAX_CONCEPT_CHARS:
            raise ConceptError(f"Candidate pool '{name}', line {number}: the sentence is longer than "
                               f"{MAX_CONCEPT_CHARS} characters.")
        if sentence.lower() not in {s.lower() for s in pool.get(cls, [])}:
            pool.setdefault(cls, []).append(sentence)
    if not pool:
        raise ConceptError(f"Candidate pool '{name}' holds no 'class<TAB>sentence' lines.")
    if classes is not None:
        unknown = sorted(set(pool) - set(classes))
        empty = [c for c in classes if c not in pool]
        if unknown:
            raise ConceptError(f"Candidate pool '{name}' names classes the data does not have: {_preview(unknown)}.")
        if empty:
            raise ConceptError(f"Candidate pool '{name}' has no candidates for classes {_preview(empty)}.")
    return {c: tuple(s) for c, s in pool.items()}


def load_vocabulary(path: str | Path) -> tuple[str, ...]:
    """Words or phrases to name learned concepts with (DN-CBM): one per line, ``#`` comments;
    case-insensitive duplicates dropped."""
    seen, words = set(), []
    for number, line in _text_lines(path, "Vocabulary"):
        if len(line) > MAX_CONCEPT_CHARS:
            raise ConceptError(f"Vocabulary '{Path(path).name}', line {number} is longer than {MAX_CONCEPT_CHARS} characters.")
        if line.lower() not in seen:
            seen.add(line.lower())
            words.append(line)
    if not words:
        raise ConceptError(f"Vocabulary '{Path(path).name}' holds no words.")
    return tuple(words)
