"""Images in, explanations out: one backbone + one model, with a per-image encoding cache.

The data flow of the app: image bytes -> ``decode_image`` -> ``Backbone.encode_images``
(cached by content hash, spatial features included for saliency) -> concept scores ->
``Intervention.apply`` -> head -> ``Explanation``. Moving a slider re-runs only the head.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import torch

from ..backbone import Backbone, ImageEncoding, load_backbone, spec_needs_trust
from ..core.bundle import load_bundle
from ..errors import BackboneError, SaliencyError, UntrustedBackboneError
from ..data.images import ImageSource, image_digest, load_image, read_image_bytes
from ..core.interventions import Intervention
from ..core.model import ConceptBottleneckModel, Explanation


@dataclass(frozen=True)
class EncodedImage:
    """One decoded and encoded image: ``embedding`` (D,), ``spatial`` (C, h, w), original size."""

    digest: str
    name: str
    size: tuple[int, int]
    embedding: torch.Tensor
    spatial: torch.Tensor | None
    pixels: torch.Tensor | None = None  # (3, H, W) preprocessed, for gradient saliency
    notes: tuple[str, ...] = ()  # what decoding did that a user should know (first frame only, ...)


def backbone_for(model: ConceptBottleneckModel, *, device=None, precision=None, trust: bool = False) -> Backbone:
    """Load the backbone a model was built on — after the user's consent (``trust``) where its spec
    came from someone else and points outside open_clip's published models."""
    reason = spec_needs_trust(model.backbone_spec)
    if reason and not trust:
        raise UntrustedBackboneError(
            f"This model's backbone is '{model.backbone_spec}': {reason}. Load it only if you trust where the "
            f"bundle came from: pass --trust-backbone on the command line, trust_backbone=True in Python, or "
            f"confirm in the app.")
    return load_backbone(model.backbone_spec, device=device, precision=precision)


# The saliency methods; ``Pipeline.map_methods`` gives those a tower offers, its default first. Chosen and
# described by measurement on Toy Birds (docs/SALIENCY.md): on a ResNet, LayerCAM at stage 1 (an 8x finer grid
# than the last) points at the part best, on the demo tower trained to ground its parts and on the one before it,
# and deletes far better than random, so it is a ResNet's default; elsewhere dense maps are.
MAP_METHODS = {
    "dense": "forward-only maps of every concept at once, at the tower's own grid (the default on a ViT)",
    "dense-surgery": "dense maps minus what all concepts share",
    "gradcam": "gradient-weighted maps at the last layer (one batched backward pass)",
    "gradcam-fine": "Grad-CAM at the ResNet's stage 2, a 4x finer grid",
    "layercam-fine": "LayerCAM at the ResNet's stage 1, an 8x finer grid, each position weighted by its own "
                     "gradients: points at small parts best (the default on a ResNet)",
}
# Methods that take a ResNet's stages; the first is a ResNet's default.
RESNET_METHODS = ("layercam-fine", "gradcam-fine")


class EncodingCache:
    """A bounded, thread-safe LRU of ``EncodedImage`` keyed by content hash; one per backbone,
    shareable by many pipelines (models) and sessions."""

    def __init__(self, size: int = 64):
        self._items: OrderedDict[str, EncodedImage] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, digest: str) -> EncodedImage | None:
        with self._lock:
            item = self._items.get(digest)
            if item is not None:
                self._items.move_to_end(digest)
            return item

    def put(self, item: EncodedImage) -> None:
        with self._lock:
            self._items[item.digest] = item
            while len(self._items) > self._size:
                self._items.popitem(last=False)


class Pipeline:
    """``Pipeline(backbone, model).explain(images)``; thread-safe, shareable across sessions."""

    def __init__(self, backbone: Backbone, model: ConceptBottleneckModel, cache: EncodingCache | None = None):
        if backbone.embed_dim != model.embed_dim:
            raise BackboneError(f"Backbone '{backbone.spec}' gives {backbone.embed_dim}-d embeddings but the model "
                                f"expects {model.embed_dim}-d (it was built on '{model.backbone_spec}').")
        self.backbone, self.model = backbone, model
        self.cache = cache if cache is not None else EncodingCache()

    @classmethod
    def from_bundle(cls, path, device=None, precision=None, trust_backbone: bool = False) -> "Pipeline":
        """A bundle and its backbone. A backbone spec outside open_clip's published models (a local
        path, a hub repository) is loaded only with ``trust_backbone=True``; see ``spec_needs_trust``."""
        model = load_bundle(path)
        return cls(backbone_for(model, device=device, precision=precision, trust=trust_backbone), model)

    def with_model(self, model: ConceptBottleneckModel) -> "Pipeline":
        """The same backbone (and its cache of decoded images) under another model, e.g. after an edit."""
        return Pipeline(self.backbone, model, self.cache)

    def encode(self, source: ImageSource, name: str | None = None) -> EncodedImage:
        data, default_name = read_image_bytes(source)
        digest = image_digest(data)
        hit = self.cache.get(digest)
        if hit is not None:
            return hit
        decoded = load_image(data, name or default_name)
        image = decoded.image
        pixels = self.backbone.preprocess_images([image])
        enc: ImageEncoding = self.backbone.encode_images(pixels, with_spatial=True)
        item = EncodedImage(digest, name or default_name, image.size, enc.embeddings[0],
                            enc.spatial[0] if enc.spatial is not None else None, pixels[0], decoded.notes)
        self.cache.put(item)
        return item

    def explain(self, images: Sequence[ImageSource] | ImageSource,
                intervention: Intervention | None = None) -> Explanation:
        """Explain one image or a list; each is decoded and encoded once, then cached."""
        if isinstance(images, (bytes, bytearray, str)) or hasattr(images, "read_bytes"):
            images = [images]
        encoded = [self.encode(img) for img in images]
        return self.explain_encoded(encoded, intervention)

    def map_methods(self) -> tuple[str, ...]:
        """The saliency methods this tower offers, the default first (see ``MAP_METHODS``)."""
        if self.backbone.kind == "resnet":
            return (*RESNET_METHODS, *(m for m in MAP_METHODS if m not in RESNET_METHODS))
        return tuple(m for m in MAP_METHODS if m not in RESNET_METHODS)

    @property
    def default_map_method(self) -> str:
        """The method maps are drawn with unless one is asked for (``MAP_METHODS`` says why)."""
        return self.map_methods()[0]

    def check_map_method(self, method: str | None) -> str:
        """``method`` (None: the default), or ``SaliencyError`` unless this tower offers it."""
        if method is None:
            return self.default_map_method
        if method not in self.map_methods():
            raise SaliencyError(f"Unknown saliency method '{method}' for this {self.backbone.kind} tower; use "
                                f"{', '.join(self.map_methods())}.")
        return method

    def concept_maps(self, encoded: EncodedImage, method: str | None = None, concepts: Sequence[str] | None = None):
        """Concept maps for one encoded image (a ``SaliencyMaps`` of (1, K, h, w)); ``MAP_METHODS`` says
        what each method is, None is the tower's default. Concepts default to all of the model's.

        Dense maps are not refined by re-running a ResNet trunk on an enlarged image: measured on Toy
        Birds (docs/SALIENCY.md) that points worse (0.137 against 0.207) and deletes worse, at the cost of
        a second forward pass."""
        from .saliency import DenseConceptMaps, GradCAM, LayerCAM

        method = self.check_map_method(method)
        names = list(concepts) if concepts is not None else list(self.model.concepts.names)
        layer = self.model.concept_layer.subset([self.model.concepts.index(n) for n in names])
        if method in ("dense", "dense-surgery"):
            return DenseConceptMaps(self.backbone, surgery=method == "dense-surgery").attribute(
                encoded.pixels[None] if encoded.pixels is not None else None, layer, spatial=encoded.spatial[None])
        if encoded.pixels is None:
            raise ValueError("Grad-CAM needs the preprocessed pixels; re-encode the image.")
        if method == "layercam-fine":
            return LayerCAM(self.backbone, layer=1).attribute(encoded.pixels[None], layer)
        return GradCAM(self.backbone, layer=2 if method == "gradcam-fine" else None).attribute(encoded.pixels[None], layer)

    def saliency(self, encoded: EncodedImage, method: str | None = None, concepts: Sequence[str] | None = None,
                 out_size: tuple[int, int] | None = None) -> torch.Tensor:
        """``concept_maps`` aligned to the original image: (K, out_h, out_w)."""
        return self.concept_maps(encoded, method, concepts).to_image(encoded.size, out_size)[0]

    def explain_encoded(self, encoded: Sequence[EncodedImage], intervention: Intervention | None = None) -> Explanation:
        return self.model.explain_features(torch.stack([e.embedding for e in encoded]), intervention)
