"""Concept layers: how a recipe turns an image embedding into raw concept scores.

    embeddings (N, D), unit norm  ──  layer  ──>  raw scores (N, K)

One small, immutable class per kind, each a differentiable torch function of the embedding, so
everything downstream works for every recipe unchanged: standardisation and the head, interventions,
the browser panel, counterfactuals, edits, evaluation — and saliency, because the same layer
applied to every patch token's embedding gives dense maps, and gradients flow through it for
Grad-CAM.

=====================  ==========================================  ==========================
kind                   scores                                      recipes
=====================  ==========================================  ==========================
``text_cosine``        ``e @ V.T`` (V: unit text vectors)          PCBM, LaBo, CMS
``linear``             ``act(e @ W.T + b)``                        Label-free CBM, Sparse-CBM,
                                                                   concept-supervised CBMs
``sae``                ``relu((e - b_pre) @ W.T + b)``             DN-CBM
=====================  ==========================================  ==========================

A bundle stores a layer as ``{"kind", "config"}`` in its manifest plus named tensors
(``concept_layer.<name>``); ``layer_from_parts`` rebuilds it and checks every shape.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch

_ACTIVATIONS = ("none", "sigmoid", "relu")


class ConceptLayer:
    """Base class. Subclasses are frozen dataclasses of tensors with a ``kind``."""

    kind: ClassVar[str]

    def __call__(self, embeddings: torch.Tensor) -> torch.Tensor:
        """embeddings: (..., D) unit norm -> raw concept scores (..., K); differentiable."""
        raise NotImplementedError

    # The (K, D) tensor whose shape is the layer's: K concepts from D-dimensional embeddings.
    _matrix: ClassVar[str] = "weight"

    @property
    def n_concepts(self) -> int:
        return int(getattr(self, self._matrix).shape[0])

    @property
    def embed_dim(self) -> int:
        return int(getattr(self, self._matrix).shape[1])

    def subset(self, keep: Sequence[int]) -> "ConceptLayer":
        """The layer for concepts ``keep`` only (in that order)."""
        raise NotImplementedError

    def tensors(self) -> dict[str, torch.Tensor]:
        """Named tensors for a bundle (without the ``concept_layer.`` prefix)."""
        raise NotImplementedError

    def config(self) -> dict:
        """JSON-able settings for a bundle (no tensors)."""
        return {}

    def to(self, device: torch.device | str) -> "ConceptLayer":
        return type(self)(**{**{k: v.to(device) for k, v in self.tensors().items()}, **self.config()})

    def describe(self) -> str:
        return f"{self.kind} ({self.n_concepts} concepts from {self.embed_dim}-d embeddings)"

    def for_maps(self) -> "ConceptLayer":
        """The layer saliency maps read: this one, except that a sigmoid layer is read before its sigmoid."""
        return self

    @property
    def score_range(self) -> tuple[float | None, float | None]:
        """(lowest, highest) score this layer can give (None: unbounded); an intervention stays inside it."""
        return (None, None)


def _check_2d(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor) or t.ndim != 2 or 0 in t.shape:
        raise ValueError(f"{name} must be a non-empty (K, D) tensor; got "
                         f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}.")


def _check_vector(name: str, t: torch.Tensor | None, n: int) -> None:
    if t is not None and (not isinstance(t, torch.Tensor) or tuple(t.shape) != (n,)):
        raise ValueError(f"{name} must have shape ({n},); got "
                         f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}.")


@dataclass(frozen=True, eq=False)
class TextCosine(ConceptLayer):
    """Cosine of the unit-norm embedding with each concept's unit text vector. vectors: (K, D)."""

    vectors: torch.Tensor
    kind: ClassVar[str] = "text_cosine"
    _matrix: ClassVar[str] = "vectors"

    def __post_init__(self):
        _check_2d("vectors", self.vectors)

    def __call__(self, embeddings: torch.Tensor) -> torch.Tensor:
        return embeddings.float() @ self.vectors.to(embeddings.device).float().T

    def subset(self, keep: Sequence[int]) -> "TextCosine":
        return TextCosine(self.vectors[list(keep)])

    @property
    def score_range(self) -> tuple[float | None, float | None]:
        return (-1.0, 1.0)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"vectors": self.vectors}


@dataclass(frozen=True, eq=False)
class LinearProjection(ConceptLayer):
    """A learned projection, ``act(e @ weight.T + bias)``. weight: (K, D); bias: (K,) or None;
    activation: ``none`` (Label-free CBM's W_c, Sparse-CBM), ``sigmoid`` (concept probabilities
    of a concept-supervised CBM) or ``relu``."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    activation: str = "none"
    kind: ClassVar[str] = "linear"

    def __post_init__(self):
        _check_2d("weight", self.weight)
        _check_vector("bias", self.bias, self.weight.shape[0])
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(_ACTIVATIONS)}; got {self.activation!r}.")

    def __call__(self, embeddings: torch.Tensor) -> torch.Tensor:
        out = embeddings.float() @ self.weight.to(embeddings.device).float().T
        if self.bias is not None:
            out = out + self.bias.to(embeddings.device).float()
        if self.activation == "sigmoid":
            return out.sigmoid()
        return out.relu() if self.activation == "relu" else out

    def subset(self, keep: Sequence[int]) -> "LinearProjection":
        keep = list(keep)
        return LinearProjection(self.weight[keep], self.bias[keep] if self.bias is not None else None, self.activation)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight, **({"bias": self.bias} if self.bias is not None else {})}

    def config(self) -> dict:
        return {"activation": self.activation}

    def for_maps(self) -> "LinearProjection":
        # Maps read a probability's log-odds, as Grad-CAM reads a class's score before its softmax: a
        # confidently present concept's probability is 1.0 in float32, whose gradient is 0, so its map would be
        # blank (22 % of the supervised demo's maps of present parts were). The sigmoid ranks no pixel
        # differently. A ReLU stays: an inactive latent has no evidence to show.
        return LinearProjection(self.weight, self.bias, "none") if self.activation == "sigmoid" else self

    @property
    def score_range(self) -> tuple[float | None, float | None]:
        return {"sigmoid": (0.0, 1.0), "relu": (0.0, None)}.get(self.activation, (None, None))


@dataclass(frozen=True, eq=False)
class SparseAutoencoderEncoder(ConceptLayer):
    """The encoder of a sparse autoencoder over embeddings (DN-CBM): ``relu((e - input_bias) @
    weight.T + bias)``. weight: (K, D); bias: (K,); input_bias: (D,) (the decoder's bias, which
    the SAE subtracts before encoding)."""

    weight: torch.Tensor
    bias: torch.Tensor
    input_bias: torch.Tensor
    kind: ClassVar[str] = "sae"

    def __post_init__(self):
        _check_2d("weight", self.weight)
        _check_vector("bias", self.bias, self.weight.shape[0])
        _check_vector("input_bias", self.input_bias, self.weight.shape[1])

    def __call__(self, embeddings: torch.Tensor) -> torch.Tensor:
        dev = embeddings.device
        centred = embeddings.float() - self.input_bias.to(dev).float()
        return (centred @ self.weight.to(dev).float().T + self.bias.to(dev).float()).relu()

    def subset(self, keep: Sequence[int]) -> "SparseAutoencoderEncoder":
        keep = list(keep)
        return SparseAutoencoderEncoder(self.weight[keep], self.bias[keep], self.input_bias)

    @property
    def score_range(self) -> tuple[float | None, float | None]:
        return (0.0, None)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight, "bias": self.bias, "input_bias": self.input_bias}


LAYER_KINDS: dict[str, type[ConceptLayer]] = {cls.kind: cls for cls in (TextCosine, LinearProjection,
                                                                         SparseAutoencoderEncoder)}
# What each kind stores: (required tensors, optional tensors, config keys with their allowed values).
LAYER_SCHEMA: dict[str, tuple[tuple[str, ...], tuple[str, ...], dict[str, tuple]]] = {
    "text_cosine": (("vectors",), (), {}),
    "linear": (("weight",), ("bias",), {"activation": _ACTIVATIONS}),
    "sae": (("weight", "bias", "input_bias"), (), {}),
}


def layer_from_parts(kind: str, config: dict, tensors: dict[str, torch.Tensor]) -> ConceptLayer:
    """Rebuild a layer from a bundle's ``kind``, ``config`` and tensors; ``ValueError`` says what
    does not fit."""
    if kind not in LAYER_SCHEMA:
        raise ValueError(f"unknown concept layer kind {kind!r} (known: {', '.join(LAYER_SCHEMA)})")
    required, optional, options = LAYER_SCHEMA[kind]
    missing = [name for name in required if name not in tensors]
    extra = sorted(set(tensors) - set(required) - set(optional))
    if missing or extra:
        raise ValueError(f"concept layer '{kind}' needs tensors {list(required)} (optional {list(optional)}); "
                         f"missing {missing}, unexpected {extra}")
    unknown = sorted(set(config) - set(options))
    if unknown:
        raise ValueError(f"concept layer '{kind}' has unknown settings {unknown}")
    for key, allowed in options.items():
        if key in config and config[key] not in allowed:
            raise ValueError(f"concept layer setting {key}={config[key]!r} is not one of {list(allowed)}")
    return LAYER_KINDS[kind](**tensors, **config)
