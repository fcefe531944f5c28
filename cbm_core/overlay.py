"""Saliency overlays as images: a map over a picture, ready for any UI or report."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

# A perceptually ordered ramp (dark blue -> teal -> yellow), sampled at 5 stops.
_STOPS = np.array([[13, 8, 135], [84, 2, 163], [185, 50, 137], [249, 142, 9], [240, 249, 33]], dtype=np.float32)


def colormap(values: np.ndarray) -> np.ndarray:
    """values in [0, 1], shape (H, W) -> uint8 RGB (H, W, 3)."""
    v = np.clip(values, 0.0, 1.0) * (len(_STOPS) - 1)
    lo = np.floor(v).astype(int).clip(0, len(_STOPS) - 2)
    t = (v - lo)[..., None]
    return (_STOPS[lo] * (1 - t) + _STOPS[lo + 1] * t).astype(np.uint8)


def normalise(saliency: torch.Tensor | np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] (a flat map becomes all zeros)."""
    m = np.asarray(saliency, dtype=np.float32)
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def overlay(image: Image.Image, saliency: torch.Tensor | np.ndarray, opacity: float = 0.55) -> Image.Image:
    """Blend a (H, W) map — aligned to ``image`` (see ``SaliencyMaps.to_image``) — over the image.
    Opacity grows with the map's value, so low-saliency areas keep the picture visible."""
    m = normalise(saliency)
    if m.shape != (image.height, image.width):
        m = np.asarray(Image.fromarray((m * 255).astype(np.uint8)).resize(image.size, Image.BILINEAR)) / 255.0
    heat = colormap(m).astype(np.float32)
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    alpha = (opacity * (0.25 + 0.75 * m))[..., None]
    return Image.fromarray((base * (1 - alpha) + heat * alpha).astype(np.uint8))
