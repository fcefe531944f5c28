"""Stand-ins for "an image unlike the training data", to measure an out-of-distribution signal offline.

There are no real photos of cups or astronauts in this sandbox, so the measurement uses honest
proxies, each named for what it is:

- ``photo crops``: square crops (48 px to the full height, anywhere) of the two real photographs
  scikit-learn ships (``sklearn/datasets/images/china.jpg`` and ``flower.jpg``) — real camera
  statistics, but only two scenes; skipped when scikit-learn is not installed;
- ``textures``: colour 1/f^a noise (a between 1 and 2.5), the power spectrum of natural images;
- ``shapes``: overlapping flat-coloured ellipses and rectangles, lightly blurred (clip art);
- ``noise``: uniform per-pixel noise; ``flat colours``: one colour per image;
- ``tiny images``: 1 x 1 to 8 x 8 pixel images (which the preprocessing blows up to the model's size).

The shifted Toy Birds domain (``cbm_core.demo.shifted``) is the near-distribution case.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

KINDS = ("photo crops", "textures", "shapes", "noise", "flat colours", "tiny images")


def _colour(rng) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def texture(rng, size: int = 96) -> Image.Image:
    alpha = rng.uniform(1.0, 2.5)
    fy, fx = np.fft.fftfreq(size)[:, None], np.fft.fftfreq(size)[None, :]
    f = np.sqrt(fx ** 2 + fy ** 2)
    f[0, 0] = 1.0
    shared = rng.normal(size=(size, size)) + 1j * rng.normal(size=(size, size))
    channels = []
    for _ in range(3):  # partly shared phases: colour channels of natural images correlate
        own = rng.normal(size=(size, size)) + 1j * rng.normal(size=(size, size))
        x = np.real(np.fft.ifft2((0.6 * shared + 0.4 * own) / f ** (alpha / 2)))
        channels.append((x - x.mean()) / (x.std() + 1e-9))
    arr = rng.uniform(60, 190, size=3) + rng.uniform(20, 60) * np.stack(channels, -1)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def shapes(rng, size: int = 96) -> Image.Image:
    img = Image.new("RGB", (size, size), _colour(rng))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 12))):
        x0, y0 = rng.uniform(-10, size, 2)
        w, h = rng.uniform(8, 60, 2)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x0 + w, y0 + h], fill=_colour(rng))
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.5)))


def noise(rng, size: int = 96) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (size, size, 3)).astype(np.uint8))


def flat(rng, size: int = 96) -> Image.Image:
    return Image.new("RGB", (size, size), _colour(rng))


def tiny(rng, size: int = 96) -> Image.Image:
    side = int(rng.choice([1, 2, 3, 4, 6, 8]))
    return Image.fromarray(rng.integers(0, 256, (side, side, 3)).astype(np.uint8))


def sample_photos() -> list[Image.Image]:
    """The real photographs scikit-learn ships, or [] without scikit-learn."""
    try:
        import sklearn.datasets
    except ImportError:
        return []
    folder = Path(sklearn.datasets.__file__).parent / "images"
    return [Image.open(p).convert("RGB") for p in sorted(folder.glob("*.jpg"))]


def photo_crops(rng, n: int) -> list[Image.Image]:
    photos = sample_photos()
    out = []
    for i in range(n if photos else 0):
        photo = photos[i % len(photos)]
        W, H = photo.size
        side = int(rng.uniform(48, min(W, H)))
        x, y = int(rng.uniform(0, W - side)), int(rng.uniform(0, H - side))
        out.append(photo.crop((x, y, x + side, y + side)))
    return out


def proxy_images(kind: str, n: int, seed: int = 0) -> list[Image.Image]:
    """``n`` images of one proxy ``kind`` (see ``KINDS``), deterministic for ``seed``."""
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    if kind == "photo crops":
        return photo_crops(rng, n)
    make = {"textures": texture, "shapes": shapes, "noise": noise, "flat colours": flat, "tiny images": tiny}[kind]
    return [make(rng) for _ in range(n)]
