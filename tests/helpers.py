"""Small real inputs the tests write themselves: coloured-shape images in class folders."""
from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 180, 60)}


def shape_image(colour: str, seed: int, size: int = 48) -> Image.Image:
    rng = random.Random(seed)
    img = Image.new("RGB", (size, size), tuple(rng.randint(200, 255) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    r = rng.randint(size // 5, size // 3)
    cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=COLOURS[colour])
    return img


def write_class_folder(root: Path, per_class: int = 12) -> Path:
    for colour in COLOURS:
        (root / colour).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape_image(colour, seed=hash((colour, i)) % 10_000).save(root / colour / f"{i:03d}.png")
    return root


def edit_csv_cell(path: Path, row: int, column: str, value: str) -> None:
    """Rewrite one cell of a CSV manifest in place (a planted bad or blank value)."""
    import csv

    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    rows[row][column] = value
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
