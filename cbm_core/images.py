"""Safe image decoding: bytes or a path in, an RGB ``PIL.Image`` out, or an ``ImageError``.

Decoding is the one place where untrusted bytes meet a parser, so it enforces limits before
the pixels are decompressed: a file-size cap, a pixel-count cap (decompression bombs), and a
whitelist of formats. EXIF orientation is applied, and every mode (palette, 16-bit, CMYK,
alpha) becomes plain RGB, alpha composited on white.
"""
from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path
from typing import Union

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_PIXELS = 40_000_000  # ~ 7,300 x 5,500: larger than any camera image a user needs to explain
ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF", "MPO"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"})

ImageSource = Union[bytes, bytearray, str, Path]


def read_image_bytes(source: ImageSource) -> tuple[bytes, str]:
    """Return ``(raw bytes, display name)`` of an image given as bytes or a path."""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source), "<uploaded image>"
    path = Path(source)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageError(f"Cannot read image '{path}': {exc.strerror or exc}.") from exc
    if size > MAX_FILE_BYTES:
        raise ImageError(
            f"Image '{path.name}' is {size / 2**20:.0f} MB; the limit is "
            f"{MAX_FILE_BYTES / 2**20:.0f} MB. Resize or re-encode it first."
        )
    return path.read_bytes(), path.name


def image_digest(data: bytes) -> str:
    """A content hash used as the cache key for an image's encoding."""
    return hashlib.sha256(data).hexdigest()[:32]


def decode_image(source: ImageSource, name: str | None = None) -> Image.Image:
    """Decode an image safely into RGB.

    Raises ``ImageError`` naming the image and the problem for empty, corrupt, truncated,
    non-image, unsupported-format, over-sized or decompression-bomb inputs.
    """
    data, default_name = read_image_bytes(source)
    name = name or default_name
    if not data:
        raise ImageError(f"Image '{name}' is empty (0 bytes). Upload the file again.")
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(
            f"Image '{name}' is {len(data) / 2**20:.0f} MB; the limit is "
            f"{MAX_FILE_BYTES / 2**20:.0f} MB. Resize or re-encode it first."
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.format not in ALLOWED_FORMATS:
                raise ImageError(
                    f"'{name}' is a {img.format} file; supported formats are "
                    f"{', '.join(sorted(ALLOWED_FORMATS - {'MPO'}))}."
                )
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise ImageError(
                    f"Image '{name}' is {width}x{height} pixels; the limit is "
                    f"{MAX_PIXELS / 1e6:.0f} megapixels. Downscale it first."
                )
            if width == 0 or height == 0:
                raise ImageError(f"Image '{name}' has no pixels ({width}x{height}).")
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        if isinstance(exc, UnidentifiedImageError):
            raise ImageError(
                f"'{name}' is not an image this tool can read (png, jpg, webp, bmp, tiff)."
            ) from exc
        raise ImageError(f"Image '{name}' is too large to decode safely: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"Image '{name}' is corrupt or truncated ({exc}). Re-export it.") from exc


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / float greyscale: stretch to 8 bit rather than clip to white.
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else arr * 0.0
        return Image.fromarray(arr.astype("uint8"), mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")
