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

from .backbone import Backbone, ImageEncoding, load_backbone
from .bundle import load_bundle
from .errors import BackboneError
from .images import ImageSource, decode_image, image_digest, read_image_bytes
from .interventions import Intervention
from .model import ConceptBottleneckModel, Explanation


@dataclass(frozen=True)
class EncodedImage:
    """One decoded and encoded image: ``embedding`` (D,), ``spatial`` (C, h, w), original size."""

    digest: str
    name: str
    size: tuple[int, int]
    embedding: torch.Tensor
    spatial: torch.Tensor | None


class Pipeline:
    """``Pipeline(backbone, model).explain(images)``; thread-safe, shareable across sessions."""

    def __init__(self, backbone: Backbone, model: ConceptBottleneckModel, cache_size: int = 64):
        if backbone.embed_dim != model.embed_dim:
            raise BackboneError(f"Backbone '{backbone.spec}' gives {backbone.embed_dim}-d embeddings but the model "
                                f"expects {model.embed_dim}-d (it was built on '{model.backbone_spec}').")
        self.backbone, self.model = backbone, model
        self._cache: OrderedDict[str, EncodedImage] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    @classmethod
    def from_bundle(cls, path, device=None, precision=None) -> "Pipeline":
        model = load_bundle(path)
        return cls(load_backbone(model.backbone_spec, device=device, precision=precision), model)

    def with_model(self, model: ConceptBottleneckModel) -> "Pipeline":
        """The same backbone (and its cache of decoded images) under another model, e.g. after an edit."""
        other = Pipeline(self.backbone, model, self._cache_size)
        other._cache, other._lock = self._cache, self._lock
        return other

    def encode(self, source: ImageSource, name: str | None = None) -> EncodedImage:
        data, default_name = read_image_bytes(source)
        digest = image_digest(data)
        with self._lock:
            hit = self._cache.get(digest)
            if hit is not None:
                self._cache.move_to_end(digest)
                return hit
        image = decode_image(data, name or default_name)
        enc: ImageEncoding = self.backbone.encode_images(self.backbone.preprocess_images([image]), with_spatial=True)
        item = EncodedImage(digest, name or default_name, image.size, enc.embeddings[0],
                            enc.spatial[0] if enc.spatial is not None else None)
        with self._lock:
            self._cache[digest] = item
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return item

    def explain(self, images: Sequence[ImageSource] | ImageSource,
                intervention: Intervention | None = None) -> Explanation:
        """Explain one image or a list; each is decoded and encoded once, then cached."""
        if isinstance(images, (bytes, bytearray, str)) or hasattr(images, "read_bytes"):
            images = [images]
        encoded = [self.encode(img) for img in images]
        return self.explain_encoded(encoded, intervention)

    def explain_encoded(self, encoded: Sequence[EncodedImage], intervention: Intervention | None = None) -> Explanation:
        return self.model.explain_features(torch.stack([e.embedding for e in encoded]), intervention)
