"""Are the concept names robust? Re-score each concept under paraphrases of its prompt.

A text-cosine concept (PCBM, LaBo, CMS) *is* its prompt: "a bird with red crown." embedded by the
backbone's text tower. If "red crown" or "the crown is red" ranks the images differently, the
concept's meaning hangs on the wording, and so does every explanation that names it.

For each concept, ``paraphrases`` writes variants from templates — the bare name, each of the model's
templates without its full stop, "a photo of <name>.", "an image showing <name>.", and for names of
two or more words the inversion "the <last word> is <the rest>." ("the crown is red") — and
``name_stability`` scores reference images under each, against the concept's own scores:

- agreement: how well the paraphrase's scores separate the images the concept reads as present (its
  score above the training mean, as every explanation reads it) from those it reads as absent — an
  AUROC, 1 when the paraphrase draws the same line, 0.5 when it ignores it (lowest over paraphrases);
- correlation: Pearson's r between the paraphrase's and the concept's scores (lowest over paraphrases);
- with concept labels, the AUROC of each paraphrase against the labels (lowest and highest).

A name is **fragile** when some paraphrase's agreement is below ``FRAGILE_BELOW`` (0.9): rewording it
reorders a tenth of the image pairs that straddle the concept's present/absent line (see
docs/RELIABILITY.md for the demo's numbers). Only text-cosine layers have prompts; a learned
layer's names (Label-free CBM, DN-CBM, a concept-supervised CBM) label directions rather than define
them, so ``name_stability`` says so instead of measuring.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..core.concept_layer import TextCosine
from ..errors import CBMError
from ..core.model import ConceptBottleneckModel

GENERIC = ("a photo of {}.", "an image showing {}.")
FRAGILE_BELOW = 0.90


def paraphrases(name: str, templates: Sequence[str] = ("{}",)) -> list[str]:
    """Prompts that say ``name`` otherwise than the model's ``templates`` do (never one of them)."""
    own = {t.format(name) for t in templates}
    out = [name]
    out += [t.format(name).rstrip(" .") for t in templates]
    out += [g.format(name) for g in GENERIC]
    words = name.split()
    if len(words) >= 2:
        verb = "are" if words[-1].endswith("s") and not words[-1].endswith("ss") else "is"  # "the legs are long"
        out.append(f"the {words[-1]} {verb} {' '.join(words[:-1])}.")
    seen, unique = set(own), []
    for text in out:
        if text and text not in seen:
            seen.add(text)
            unique.append(text)
    return unique


@dataclass(frozen=True)
class NameStability:
    """Per concept: its paraphrases, the lowest agreement and correlation over them (and the paraphrase
    with the lowest agreement), fragile, and (with labels) the lowest / highest paraphrase AUROC next to
    the concept's own. ``n_images``: reference images scored."""

    concepts: tuple[str, ...]
    paraphrases: tuple[tuple[str, ...], ...]
    min_agreement: tuple[float, ...]
    min_correlation: tuple[float, ...]
    fragile: tuple[bool, ...]
    auroc: tuple[float | None, ...]
    paraphrase_auroc: tuple[tuple[float | None, float | None], ...]
    n_images: int
    worst_paraphrase: tuple[str, ...] = ()

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({
            "concept": self.concepts, "min_agreement": self.min_agreement, "min_correlation": self.min_correlation,
            "fragile": self.fragile,
            "worst_paraphrase": self.worst_paraphrase or ("",) * len(self.concepts),
            "auroc": self.auroc, "paraphrase_auroc_min": [a for a, _ in self.paraphrase_auroc],
            "paraphrase_auroc_max": [b for _, b in self.paraphrase_auroc],
            "n_paraphrases": [len(p) for p in self.paraphrases]})

    def to_json(self) -> dict:
        from .reliability import _round, concepts_digest

        return {"format": 1, "concepts_sha1": concepts_digest(self.concepts),
                "min_agreement": _round(self.min_agreement), "min_correlation": _round(self.min_correlation),
                "fragile": list(self.fragile), "fragile_below": FRAGILE_BELOW,
                "worst_paraphrase": list(self.worst_paraphrase), "n_images": self.n_images,
                "n_fragile": int(sum(self.fragile))}


def text_layer(model: ConceptBottleneckModel) -> bool:
    return isinstance(model.concept_layer, TextCosine)


def _corr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of matching columns of (N, K) a and b, (K,)."""
    a, b = a - a.mean(0), b - b.mean(0)
    return (a * b).sum(0) / (a.norm(dim=0) * b.norm(dim=0)).clamp_min(1e-12)


def name_stability(model: ConceptBottleneckModel, backbone, embeddings: torch.Tensor,
                   concept_labels: torch.Tensor | None = None) -> NameStability:
    """Re-score every concept under its ``paraphrases`` on reference embeddings (N, D) with the
    backbone's text tower. ``concept_labels``: (N, K) in the model's concept order (NaN unknown), for the
    AUROCs. Raises ``CBMError`` for a model whose concept layer is not a text cosine."""
    from .reliability import auroc

    if not text_layer(model):
        raise CBMError(f"Paraphrases apply to concepts defined by a text prompt (a text-cosine layer: PCBM, LaBo, CMS). "
                       f"This model's concept layer is '{model.concept_layer.kind}': its names label learned directions, "
                       "so rewording a name changes nothing the model computes.")
    names = list(model.concepts.names)
    own = model.concept_scores(embeddings)  # (N, K)
    present = own > model.stats.mean  # how every explanation reads the concept (z > 0)
    texts = [paraphrases(n, model.templates) for n in names]
    flat = [t for ts in texts for t in ts]
    vectors = backbone.encode_texts(flat).float() if flat else torch.zeros(0, model.embed_dim)
    vectors = torch.nn.functional.normalize(vectors, dim=-1)
    min_agree, min_corr, fragile, aucs, para_aucs, worst = [], [], [], [], [], []
    start = 0
    for k, ts in enumerate(texts):
        v = vectors[start:start + len(ts)]
        start += len(ts)
        scores = embeddings.float() @ v.T  # (N, P): a paraphrase is scored like the concept, a cosine
        corr = _corr(scores, own[:, k:k + 1].expand_as(scores))
        agree = [auroc(scores[:, p], present[:, k].float()) for p in range(len(ts))]
        agree = torch.tensor([1.0 if a is None else a for a in agree])  # one-sided reading: nothing to reorder
        j = int(agree.argmin())
        min_agree.append(float(agree[j]))
        worst.append(ts[j])
        min_corr.append(float(corr.min()))
        fragile.append(bool(float(agree[j]) < FRAGILE_BELOW))
        if concept_labels is not None:
            y = concept_labels[:, k]
            known = ~torch.isnan(y)
            aucs.append(auroc(own[known, k], y[known]))
            pa = [a for a in (auroc(scores[known, p], y[known]) for p in range(len(ts))) if a is not None]
            para_aucs.append((min(pa), max(pa)) if pa else (None, None))
        else:
            aucs.append(None)
            para_aucs.append((None, None))
    return NameStability(tuple(names), tuple(tuple(t) for t in texts), tuple(min_agree), tuple(min_corr),
                         tuple(fragile), tuple(aucs), tuple(para_aucs), len(own), tuple(worst))


def with_name_stability(model: ConceptBottleneckModel, stability: NameStability) -> ConceptBottleneckModel:
    """A new model whose ``metrics`` carry ``stability`` (read by ``cbm_core.explain.reliability``)."""
    from .reliability import NAMES_KEY

    return model.with_changes(metrics={**model.metrics, NAMES_KEY: stability.to_json()})
