"""Saliency overlays as images: a map over a picture, ready for any UI or report.

``overlay`` blends a map into a picture; ``heat_layer`` gives the same colours as a transparent
layer, so a browser can lay it over the picture and change the opacity without a server round
trip (drawn at CSS opacity ``o`` it looks exactly like ``overlay(image, map, o)``); ``seen_region``
is the part of an image the model actually looked at (a centre crop, for most CLIP towers).
"""
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


def seen_region(image_size: tuple[int, int], resize_mode: str = "shortest",
                out_size: tuple[int, int] | None = None) -> tuple[int, int, int, int]:
    """The part of an image the model saw, as (left, top, width, height) in pixels of ``out_size``
    (default the image size; a map drawn at another size uses that size's pixels). ``shortest``
    (open_clip's default: resize the shorter side, crop the centre square) sees the central
    min(W, H) square; ``longest`` (fit and pad) and ``squash`` see everything. Rounded exactly as
    ``SaliencyMaps.to_image`` places the maps, so the box is where they are non-zero."""
    W, H = image_size
    ow, oh = out_size or image_size
    if resize_mode != "shortest" or W == H:
        return 0, 0, ow, oh
    side = min(W, H)
    sx, sy = ow / W, oh / H
    left, top = round((W - side) / 2.0 * sx), round((H - side) / 2.0 * sy)
    return left, top, min(ow - left, max(1, round(side * sx))), min(oh - top, max(1, round(side * sy)))


def heat_layer(saliency: torch.Tensor | np.ndarray, region: tuple[int, int, int, int] | None = None) -> Image.Image:
    """A (H, W) map as an RGBA layer: the colours ``overlay`` uses, with alpha 0.25-1 growing with the
    value. Normalised over ``region`` (left, top, width, height; default the whole map) and
    transparent outside it, so the part of a picture the model never saw is neither coloured nor
    counted in the range."""
    m = np.asarray(saliency, dtype=np.float32)
    left, top, width, height = region or (0, 0, m.shape[1], m.shape[0])
    inside = np.zeros(m.shape, dtype=bool)
    inside[top:top + height, left:left + width] = True
    values = np.zeros_like(m)
    values[inside] = normalise(m[inside]) if inside.any() else 0.0
    alpha = np.where(inside, 0.25 + 0.75 * values, 0.0)
    rgba = np.dstack([colormap(values), (alpha * 255).round().astype(np.uint8)])
    return Image.fromarray(rgba, "RGBA")
