"""Toy Birds: a seeded, procedural world of bird images where every explanation can be checked.

Each bird is drawn from parts (tail, legs, body, belly, breast, wing, head, crown, crest, eye,
beak) on a background (water, land or foliage). Species are CUB-style distributions over part
attributes: a species' typical value has probability 0.85-0.95, so several concepts are needed
to tell species apart. Every image carries ground truth for every concept, a pixel mask for
every part, and a group label (species group x background type), Waterbirds-style: in the
training split ~95 % of each species group sits on its own kind of background; validation and
test are balanced.

Everything is deterministic for a given seed and index: ``render(sample_bird(seed, i, split))``.
"""
from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# ---- the vocabulary ---------------------------------------------------------------------------
COLOURS = {
    "red": (205, 35, 40), "blue": (40, 85, 215), "yellow": (240, 205, 30),
    "black": (25, 25, 30), "white": (245, 245, 240),
}
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "crown": ("red", "blue", "yellow", "black"),
    "breast": ("red", "blue", "yellow", "white"),
    "wing": ("red", "blue", "yellow", "black"),
    "pattern": ("solid", "striped", "spotted"),
    "beak": ("short", "long", "hooked"),
    "tail": ("short", "long", "forked"),
    "crest": ("none", "crest"),
    "legs": ("short", "long"),
    "eye": ("black", "red"),
    "size": ("small", "large"),
}
BACKGROUNDS = ("water", "land", "foliage")

# concept name -> (attribute, value); the part whose mask localises it (None: not a part)
CONCEPTS: dict[str, tuple[str, str]] = {
    **{f"{c} crown": ("crown", c) for c in ATTRIBUTES["crown"]},
    **{f"{c} breast": ("breast", c) for c in ATTRIBUTES["breast"]},
    **{f"{c} wing": ("wing", c) for c in ATTRIBUTES["wing"]},
    "striped wing": ("pattern", "striped"), "spotted wing": ("pattern", "spotted"),
    "short beak": ("beak", "short"), "long beak": ("beak", "long"), "hooked beak": ("beak", "hooked"),
    "short tail": ("tail", "short"), "long tail": ("tail", "long"), "forked tail": ("tail", "forked"),
    "crest": ("crest", "crest"), "long legs": ("legs", "long"), "red eye": ("eye", "red"),
    "water background": ("background", "water"), "land background": ("background", "land"),
    "foliage background": ("background", "foliage"),
}
CONCEPT_PART = {
    **{n: a for n, (a, _) in CONCEPTS.items() if a in ("crown", "breast", "wing", "beak", "tail", "crest", "legs")},
    "striped wing": "wing", "spotted wing": "wing", "red eye": "eye",
}
PARTS = ("tail", "legs", "body", "belly", "breast", "wing", "head", "crown", "crest", "eye", "beak")
BACKGROUND_CONCEPTS = ("water background", "land background", "foliage background")


@dataclass(frozen=True)
class Species:
    name: str
    group: str  # "waterbird" or "landbird"
    typical: dict  # attribute -> typical value
    typicality: float = 0.9


# Four waterbirds and four landbirds. Each landbird is the "twin" of a waterbird: same colours,
# different beak / tail / legs — the subtle cues a background shortcut lets a model skip.
# Every colour value is typical of some pair, so every concept is common enough to learn.
def _sp(name, group, crown, breast, wing, pattern, beak, tail, crest, legs, eye, size):
    return Species(name, group, dict(crown=crown, breast=breast, wing=wing, pattern=pattern, beak=beak,
                                     tail=tail, crest=crest, legs=legs, eye=eye, size=size))


SPECIES: tuple[Species, ...] = (
    _sp("azure diver", "waterbird", "blue", "white", "blue", "solid", "long", "short", "none", "short", "black", "large"),
    _sp("crimson heron", "waterbird", "red", "yellow", "black", "striped", "long", "short", "crest", "long", "red", "large"),
    _sp("golden gull", "waterbird", "yellow", "blue", "yellow", "spotted", "hooked", "forked", "none", "short", "black", "large"),
    _sp("scarlet cormorant", "waterbird", "black", "red", "red", "solid", "hooked", "long", "none", "short", "red", "large"),
    _sp("azure finch", "landbird", "blue", "white", "blue", "solid", "short", "forked", "none", "short", "black", "small"),
    _sp("crimson tanager", "landbird", "red", "yellow", "black", "striped", "short", "long", "crest", "short", "red", "small"),
    _sp("golden warbler", "landbird", "yellow", "blue", "yellow", "spotted", "short", "long", "none", "short", "black", "small"),
    _sp("scarlet shrike", "landbird", "black", "red", "red", "solid", "long", "short", "none", "long", "red", "small"),
)
SPECIES_NAMES = tuple(s.name for s in SPECIES)
SPLIT_SEEDS = {"train": 1, "val": 2, "test": 3}


@dataclass(frozen=True)
class Bird:
    """One sample: species, attributes, background, pose. ``render`` turns it into pixels."""

    index: int
    split: str
    species: int
    attributes: dict
    background: str
    pose: dict = field(repr=False)

    @property
    def species_name(self) -> str:
        return SPECIES[self.species].name

    @property
    def group(self) -> str:
        kind = "water" if self.background == "water" else "land"
        return f"{SPECIES[self.species].group}_on_{kind}"

    def concept_labels(self) -> dict[str, int]:
        values = {**self.attributes, "background": self.background}
        return {name: int(values[attr] == val) for name, (attr, val) in CONCEPTS.items()}


def sample_bird(seed: int, index: int, split: str = "train", spurious: float = 0.95) -> Bird:
    """Deterministic for ``(seed, split, index)``. In ``train`` a bird sits on its group's own
    background type with probability ``spurious``; in ``val`` / ``test`` backgrounds are balanced."""
    rng = random.Random(f"{seed}-{split}-{index}")
    species_idx = index % len(SPECIES)  # classes are balanced in every split
    sp = SPECIES[species_idx]
    attrs = {}
    for attr, values in ATTRIBUTES.items():
        typical = sp.typical[attr]
        if rng.random() < sp.typicality:
            attrs[attr] = typical
        else:
            attrs[attr] = rng.choice([v for v in values if v != typical])
    own = ["water"] if sp.group == "waterbird" else ["land", "foliage"]
    other = ["land", "foliage"] if sp.group == "waterbird" else ["water"]
    if split == "train":
        background = rng.choice(own if rng.random() < spurious else other)
    else:  # balanced: half on each background type, decided by index so groups are exact
        background = rng.choice(own if (index // len(SPECIES)) % 2 == 0 else other)
    pose = {
        "cx": rng.uniform(0.40, 0.60), "cy": rng.uniform(0.44, 0.58),
        "scale": rng.uniform(0.92, 1.06) * (1.0 if attrs["size"] == "large" else 0.84),
        "facing": rng.choice((-1, 1)), "tilt": rng.uniform(-0.12, 0.12),
        "body_tone": rng.choice(((150, 140, 125), (120, 115, 110), (170, 160, 140), (135, 120, 100))),
        "beak_tone": rng.choice(((235, 140, 40), (90, 85, 80), (200, 170, 60))),
        "bg_seed": rng.randrange(1 << 30), "noise": rng.uniform(2.0, 7.0),
    }
    return Bird(index, split, species_idx, attrs, background, pose)


# ---- rendering --------------------------------------------------------------------------------
SUPERSAMPLE = 2


def _jitter(rng: random.Random, rgb, amount=18):
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)


def _draw_background(img: Image.Image, kind: str, rng: random.Random) -> None:
    W, H = img.size
    d = ImageDraw.Draw(img)
    if kind == "water":
        top, bottom = _jitter(rng, (110, 165, 215)), _jitter(rng, (35, 85, 150))
        for y in range(H):
            t = y / H
            d.line([(0, y), (W, y)], fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom)))
        for _ in range(rng.randint(14, 26)):  # wave crests
            x, y, w = rng.uniform(0, W), rng.uniform(0.25 * H, H), rng.uniform(0.06, 0.18) * W
            d.arc([x, y, x + w, y + 0.05 * H], 200, 340, fill=_jitter(rng, (200, 225, 245), 10), width=max(1, W // 100))
    elif kind == "land":
        sky, ground = _jitter(rng, (205, 215, 225)), _jitter(rng, (150, 120, 75))
        horizon = rng.uniform(0.25, 0.4) * H
        d.rectangle([0, 0, W, horizon], fill=sky)
        d.rectangle([0, horizon, W, H], fill=ground)
        for _ in range(rng.randint(30, 60)):  # pebbles and grass tufts
            x, y = rng.uniform(0, W), rng.uniform(horizon, H)
            if rng.random() < 0.5:
                r = rng.uniform(0.006, 0.02) * W
                d.ellipse([x - r, y - r * 0.7, x + r, y + r * 0.7], fill=_jitter(rng, (120, 100, 70), 25))
            else:
                h = rng.uniform(0.02, 0.05) * H
                d.line([(x, y), (x + rng.uniform(-3, 3), y - h)], fill=_jitter(rng, (95, 130, 55), 20), width=max(1, W // 120))
    else:  # foliage
        d.rectangle([0, 0, W, H], fill=_jitter(rng, (45, 95, 45)))
        for _ in range(rng.randint(40, 70)):
            x, y = rng.uniform(0, W), rng.uniform(0, H)
            r = rng.uniform(0.03, 0.08) * W
            d.ellipse([x - r, y - r * 0.6, x + r, y + r * 0.6], fill=_jitter(rng, (70, 140, 60), 30))
    for _ in range(rng.randint(2, 5)):  # clutter: stray shapes that are not birds
        x, y, r = rng.uniform(0, W), rng.uniform(0, H), rng.uniform(0.01, 0.03) * W
        d.rectangle([x - r, y - r, x + r, y + r], fill=_jitter(rng, (128, 128, 128), 60))


class _Canvas:
    """Draws each part into the picture and into a part-id label map (last drawn wins)."""

    def __init__(self, img: Image.Image, bird: Bird, zoom: float = 1.0):
        self.img, self.draw = img, ImageDraw.Draw(img)
        self.labels = Image.new("L", img.size, 0)
        self.ldraw = ImageDraw.Draw(self.labels)
        W = img.size[0]
        p = bird.pose
        self.s = p["scale"] * W * zoom  # unit length: the image width, scaled by the bird's size (and a shift's zoom)
        self.cx, self.cy = p["cx"] * W, p["cy"] * W
        self.f, self.tilt = p["facing"], p["tilt"]

    def pt(self, x: float, y: float):
        """Bird coordinates (x forward, y down, in units of the bird's scale) -> pixels."""
        xr = x * math.cos(self.tilt) - y * math.sin(self.tilt)
        yr = x * math.sin(self.tilt) + y * math.cos(self.tilt)
        return (self.cx + self.f * xr * self.s, self.cy + yr * self.s)

    def polygon(self, part: str, pts, fill):
        xy = [self.pt(x, y) for x, y in pts]
        self.draw.polygon(xy, fill=fill)
        self.ldraw.polygon(xy, fill=PARTS.index(part) + 1)

    def ellipse(self, part: str, x, y, rx, ry, fill, n=28):
        self.polygon(part, [(x + rx * math.cos(t), y + ry * math.sin(t))
                            for t in np.linspace(0, 2 * math.pi, n, endpoint=False)], fill)

    def line(self, part: str, a, b, fill, width):
        w = max(1, int(width * self.s))
        self.draw.line([self.pt(*a), self.pt(*b)], fill=fill, width=w)
        self.ldraw.line([self.pt(*a), self.pt(*b)], fill=PARTS.index(part) + 1, width=w)


def _draw_bird(canvas: _Canvas, bird: Bird, rng: random.Random) -> None:
    a, p = bird.attributes, bird.pose
    body = p["body_tone"]
    # tail (behind the body), at the back (-x)
    if a["tail"] == "short":
        canvas.polygon("tail", [(-0.16, -0.04), (-0.29, -0.07), (-0.29, 0.05), (-0.16, 0.04)], body)
    elif a["tail"] == "long":
        canvas.polygon("tail", [(-0.15, -0.035), (-0.46, -0.02), (-0.46, 0.05), (-0.15, 0.04)], body)
    else:  # forked: a deep V
        canvas.polygon("tail", [(-0.15, -0.04), (-0.42, -0.14), (-0.30, 0.0), (-0.42, 0.14), (-0.15, 0.04)], body)
    # legs
    leg_len = 0.26 if a["legs"] == "long" else 0.09
    for dx in (-0.03, 0.05):
        canvas.line("legs", (dx, 0.09), (dx, 0.09 + leg_len), (60, 50, 40), 0.022)
        canvas.line("legs", (dx, 0.09 + leg_len), (dx + 0.05, 0.09 + leg_len), (60, 50, 40), 0.018)
    # body, belly, breast
    canvas.ellipse("body", 0.0, 0.0, 0.2, 0.12, body)
    canvas.ellipse("belly", -0.02, 0.06, 0.12, 0.055, tuple(min(255, c + 40) for c in body))
    canvas.ellipse("breast", 0.11, 0.03, 0.09, 0.08, COLOURS[a["breast"]])
    # wing with its pattern
    wing_pts = [(0.10, -0.05), (0.02, -0.09), (-0.12, -0.08), (-0.22, -0.01), (-0.08, 0.05), (0.06, 0.03)]
    wing_colour = COLOURS[a["wing"]]
    canvas.polygon("wing", wing_pts, wing_colour)
    mark = (245, 245, 240) if a["wing"] in ("black", "blue", "red") else (30, 30, 30)
    if a["pattern"] == "striped":
        for x in (-0.15, -0.09, -0.03, 0.03):
            canvas.line("wing", (x + 0.02, -0.075), (x - 0.02, 0.035), mark, 0.018)
    elif a["pattern"] == "spotted":
        for x, y in ((-0.13, -0.03), (-0.07, 0.0), (-0.06, -0.06), (0.0, -0.03), (0.05, -0.055), (-0.01, 0.02)):
            canvas.ellipse("wing", x, y, 0.018, 0.018, mark, n=12)
    # head and crown (upper half of the head), crest
    hx, hy, hr = 0.21, -0.11, 0.085
    canvas.ellipse("head", hx, hy, hr, hr, body)
    crown_colour = COLOURS[a["crown"]]
    canvas.polygon("crown", [(hx + hr * math.cos(t), hy + hr * math.sin(t))
                             for t in np.linspace(math.pi * 1.02, math.pi * 1.98, 20)] + [(hx + hr * 0.9, hy - 0.01), (hx - hr * 0.9, hy - 0.01)], crown_colour)
    if a["crest"] == "crest":
        canvas.polygon("crest", [(hx - 0.05, hy - 0.07), (hx - 0.13, hy - 0.21), (hx - 0.01, hy - 0.08),
                                 (hx - 0.02, hy - 0.24), (hx + 0.04, hy - 0.08)], crown_colour)
    # eye
    eye = (215, 25, 25) if a["eye"] == "red" else (15, 15, 15)
    canvas.ellipse("eye", hx + 0.035, hy - 0.005, 0.022, 0.022, (250, 250, 250), n=14)
    canvas.ellipse("eye", hx + 0.038, hy - 0.005, 0.014, 0.014, eye, n=12)
    # beak: large and contrasting, so its shape is visible at 96 px
    beak = p["beak_tone"]
    bx, by = hx + hr * 0.85, hy + 0.01
    if a["beak"] == "short":
        canvas.polygon("beak", [(bx - 0.01, by - 0.035), (bx + 0.08, by + 0.005), (bx - 0.01, by + 0.035)], beak)
    elif a["beak"] == "long":
        canvas.polygon("beak", [(bx - 0.01, by - 0.025), (bx + 0.25, by + 0.01), (bx - 0.01, by + 0.025)], beak)
    else:  # hooked: thick, bending sharply down at the tip
        canvas.polygon("beak", [(bx - 0.01, by - 0.04), (bx + 0.10, by - 0.035), (bx + 0.15, by + 0.0),
                                (bx + 0.13, by + 0.09), (bx + 0.09, by + 0.02), (bx - 0.01, by + 0.04)], beak)


def render(bird: Bird, size: int = 96, shift: "Shift | str | None" = None) -> tuple[Image.Image, dict[str, np.ndarray]]:
    """Pixels (RGB, ``size`` x ``size``) and a boolean mask (size, size) per visible part.
    ``shift`` (a ``Shift`` or a name in ``SHIFTS``) renders the bird under other imaging conditions;
    without one the pixels are exactly those of the unshifted world."""
    shift = SHIFTS[shift] if isinstance(shift, str) else shift
    big = size * SUPERSAMPLE
    rng = random.Random(bird.pose["bg_seed"])
    img = Image.new("RGB", (big, big))
    _draw_background(img, bird.background, rng)
    canvas = _Canvas(img, bird) if shift is None else _Canvas(img, bird, shift.zoom)
    _draw_bird(canvas, bird, rng)
    img = img.filter(ImageFilter.GaussianBlur(radius=SUPERSAMPLE * 0.3)).resize((size, size), Image.LANCZOS)
    arr = np.asarray(img, dtype=np.float32)
    if shift is not None:
        arr = shift.recolour(arr, bird)
    noise = np.random.default_rng(bird.pose["bg_seed"]).normal(0.0, bird.pose["noise"], arr.shape)
    img = Image.fromarray(np.clip(arr + noise, 0, 255).astype(np.uint8))
    labels = np.asarray(canvas.labels.resize((size, size), Image.NEAREST))
    masks = {part: labels == i + 1 for i, part in enumerate(PARTS)}
    masks["background"] = labels == 0
    return img, masks


# ---- domain shifts ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Shift:
    """Other imaging conditions, like another hospital's stain or scanner: every pixel's colour goes
    through ``mix`` (3 x 3, applied to RGB in 0..255) plus ``offset``, and the bird is drawn ``zoom``
    times its size. ``jitter`` varies the colour change's strength per image (×[1 − jitter,
    1 + jitter]), drawn from the bird's own seed, so a shifted bird is deterministic per seed."""

    name: str
    mix: tuple[tuple[float, float, float], ...]
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    zoom: float = 1.0
    jitter: float = 0.0

    def recolour(self, arr: np.ndarray, bird: Bird) -> np.ndarray:
        """arr: (H, W, 3) float RGB -> the same under this shift's colour change."""
        strength = 1.0 + self.jitter * random.Random(f"shift-{self.name}-{bird.pose['bg_seed']}").uniform(-1.0, 1.0)
        mix = np.eye(3) + strength * (np.asarray(self.mix, dtype=np.float64) - np.eye(3))
        return (arr @ mix.T.astype(np.float32) + strength * np.asarray(self.offset, dtype=np.float32)).astype(np.float32)


# A stain-like cast (reds pulled towards magenta, greens dimmed, a violet lift: H&E-ish) and a
# scanner that shows the bird at 80 % of its size.
SHIFTS: dict[str, Shift] = {
    "stain": Shift("stain", mix=((0.80, 0.10, 0.25), (0.05, 0.60, 0.20), (0.25, 0.05, 0.80)),
                   offset=(25.0, 0.0, 30.0), zoom=0.8, jitter=0.25),
}


def concept_mask(masks: dict[str, np.ndarray], concept: str) -> np.ndarray | None:
    """The pixels that show ``concept``: its part's mask, the background's, or None."""
    if concept in CONCEPT_PART:
        return masks[CONCEPT_PART[concept]]
    if concept in BACKGROUND_CONCEPTS:
        return masks["background"]
    return None


# ---- datasets ---------------------------------------------------------------------------------
def generate(split: str, n: int, seed: int = 0, size: int = 96, spurious: float = 0.95,
             shift: Shift | str | None = None):
    """``n`` birds of ``split`` (under ``shift``, if given): returns ``(birds, uint8 images (n, size, size, 3))``."""
    birds = [sample_bird(seed, i, split, spurious) for i in range(n)]
    images = np.stack([np.asarray(render(b, size, shift)[0]) for b in birds])
    return birds, images


def export(folder: str | Path, n_per_split: dict[str, int], seed: int = 0, size: int = 96) -> Path:
    """Write an image folder + ``manifest.csv`` (path, label, split, group, one 0/1 column per
    concept) that ``ImageDataset.from_csv(..., split=...)`` reads. Returns the manifest path."""
    folder = Path(folder)
    rows = []
    for split, n in n_per_split.items():
        (folder / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            bird = sample_bird(seed, i, split)
            rel = f"{split}/{i:05d}.png"
            render(bird, size)[0].save(folder / rel)
            rows.append({"path": rel, "label": bird.species_name, "split": split, "group": bird.group,
                         **bird.concept_labels()})
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest
