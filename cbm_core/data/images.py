"""Safe image decoding: bytes or a path in, an RGB ``PIL.Image`` out, or an ``ImageError``.

Decoding is the one place where untrusted bytes meet a parser, so it enforces limits before
the pixels are decompressed and again after every step that can change the size:

- a path must be a regular file (not a folder, device, FIFO or socket) and is read with a bound;
- a file-size cap (``MAX_FILE_BYTES``), a pixel-count cap (``MAX_PIXELS``, decompression bombs)
  and an aspect-ratio cap (``MAX_ASPECT_RATIO``: a 1 x 300,000 PNG of a few hundred bytes passes the
  pixel cap, but a model's shortest-side resize would blow it up to gigabytes);
- a whitelist of formats (``FORMATS``, the one list the app's uploader and the dataset loaders use).

EXIF orientation is applied, animated or multi-page files give their first frame (with a note
saying so), and every mode (palette, 16-bit, float, CMYK, LAB, alpha) becomes plain RGB, alpha
composited on white. See docs/SECURITY.md for the threat model and the numbers.
"""
from __future__ import annotations

import hashlib
import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageError

MAX_FILE_BYTES = 64 * 1024 * 1024  # the app's upload limit too (.streamlit/config.toml, maxUploadSize)
MAX_PIXELS = 40_000_000  # ~ 7,300 x 5,500: larger than any camera image a user needs to explain
# Long side / short side. A model resizes the short side to its input size S (224-448 px), so the
# resized image has at most S * S * MAX_ASPECT_RATIO pixels (224 px: 1 megapixel); and of a 20:1
# image the model's centre crop sees only 1/20 anyway. Panoramas (2:1-10:1) and scanned strips pass.
MAX_ASPECT_RATIO = 20


@dataclass(frozen=True)
class ImageFormat:
    label: str  # as users know it
    pil: tuple[str, ...]  # Pillow's format ids for it; the first names the parser that opens it
    suffixes: tuple[str, ...]


# The formats we read: the one list behind error messages, the app's uploader and dataset folders.
FORMATS = (
    ImageFormat("PNG", ("PNG",), (".png",)),
    ImageFormat("JPEG", ("JPEG", "MPO"), (".jpg", ".jpeg")),  # MPO: a camera's multi-picture JPEG
    ImageFormat("WebP", ("WEBP",), (".webp",)),
    ImageFormat("BMP", ("BMP",), (".bmp",)),
    ImageFormat("TIFF", ("TIFF",), (".tif", ".tiff")),
    ImageFormat("GIF", ("GIF",), (".gif",)),
)
ALLOWED_FORMATS = frozenset(pil for f in FORMATS for pil in f.pil)
IMAGE_SUFFIXES = frozenset(s for f in FORMATS for s in f.suffixes)
FORMATS_TEXT = ", ".join(f.label for f in FORMATS[:-1]) + f" or {FORMATS[-1].label}"
_PARSERS = tuple(f.pil[0] for f in FORMATS)
_LABELS = {pil: f.label for f in FORMATS for pil in f.pil}
_SIGNATURES = (  # how a damaged file of one of our formats still announces itself
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
)

ImageSource = Union[bytes, bytearray, str, Path]
# Invisible characters that reorder text on screen ("Trojan Source"); never echoed as they are.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image: ``image`` is RGB with EXIF orientation applied; ``format`` is a label of
    ``FORMATS``; ``mode`` the file's own pixel mode (e.g. ``I;16``); ``notes`` say what was done
    that a user should know (only the first frame used, non-finite pixels mapped)."""

    image: Image.Image
    name: str
    format: str
    mode: str
    notes: tuple[str, ...] = ()


def read_image_bytes(source: ImageSource) -> tuple[bytes, str]:
    """Return ``(raw bytes, display name)`` of an image given as bytes or a path.

    A path must name a regular file of at most ``MAX_FILE_BYTES``; it is opened without blocking
    (a FIFO would otherwise wait for a writer) and checked on the open descriptor, so a file swapped
    for a device between the check and the read is still refused."""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source), "<uploaded image>"
    path = Path(source)
    shown = printable(str(path))
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except IsADirectoryError:
        raise ImageError(f"'{shown}' is a folder, not an image file. Name the image files inside it.") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise ImageError(f"Cannot read image '{shown}': {getattr(exc, 'strerror', None) or exc}.") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ImageError(f"'{shown}' is a folder, not an image file. Name the image files inside it.")
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(f"'{shown}' is not a regular file (a device, pipe or socket); give an image file.")
        if info.st_size > MAX_FILE_BYTES:
            raise ImageError(_too_big(printable(path.name), info.st_size))
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)  # bounded even if the file grows after fstat
    except OSError as exc:
        raise ImageError(f"Cannot read image '{shown}': {exc.strerror or exc}.") from exc
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(_too_big(printable(path.name), len(data)))
    return data, printable(path.name)


def printable(name: str) -> str:
    """``name`` safe to echo to a terminal or a page: control, bidi-override and undecodable
    (surrogate-escaped) characters become backslash escapes. A file name comes from whoever made
    the file; printed raw it could recolour a terminal, reorder a message, or fail to encode."""
    return "".join(ch if ch.isprintable() and ch not in BIDI_CONTROLS
                   else ch.encode("unicode_escape").decode("ascii") for ch in str(name))


def image_digest(data: bytes) -> str:
    """A content hash used as the cache key for an image's encoding."""
    return hashlib.sha256(data).hexdigest()[:32]


def decode_image(source: ImageSource, name: str | None = None) -> Image.Image:
    """Decode an image safely into RGB (see ``load_image`` for the notes that go with it).

    Raises ``ImageError`` naming the image and the problem for empty, corrupt, truncated,
    non-image, unsupported-format, over-sized, too thin or decompression-bomb inputs.
    """
    return load_image(source, name).image


def load_image(source: ImageSource, name: str | None = None) -> DecodedImage:
    """Decode an image safely: an RGB image plus the notes a user should see (first frame only, ...).

    Raises ``ImageError`` as ``decode_image`` does."""
    data, default_name = read_image_bytes(source)
    name = printable(name) if name else default_name  # an upload's name is a stranger's text too
    if not data:
        raise ImageError(f"Image '{name}' is empty (0 bytes).")
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(_too_big(name, len(data)))
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            # Pillow's warnings (odd EXIF, odd metadata) give a user nothing to act on; its
            # decompression-bomb warning fires far above our own pixel cap, which refuses first.
            warnings.simplefilter("ignore")
            img = _open(data, name)
            fmt, mode = _LABELS[img.format], img.mode
            check_size(img.size, name)  # from the header, before any pixel is decompressed
            try:
                several = bool(getattr(img, "is_animated", False))
            except Exception:  # a damaged later frame: the first one may still be fine
                several = True
            if several:
                notes.append(f"'{name}' has several frames (an animation or pages); only the first one is used.")
                img.seek(0)
            img.load()
            check_size(img.size, name)
            img = ImageOps.exif_transpose(img)
            check_size(img.size, name)
        rgb = _to_rgb(img, name, notes)  # outside the filter: our own arithmetic must not warn at all
        check_size(rgb.size, name)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"Image '{name}' has far more than {MAX_PIXELS / 1e6:.0f} megapixels, the limit. "
                         "Downscale it first.") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"Image '{name}' is corrupt or truncated ({exc}). Re-export it.") from exc
    except Exception as exc:  # a parser bug on hostile bytes is a refused image, never a crash
        raise ImageError(f"Image '{name}' could not be decoded ({type(exc).__name__}: {exc}). "
                         "Re-export it as PNG or JPEG.") from exc
    return DecodedImage(rgb, name, fmt, mode, tuple(notes))


def check_size(size: tuple[int, int], name: str) -> None:
    """Refuse a (width, height) with no pixels, over ``MAX_PIXELS`` or thinner than ``MAX_ASPECT_RATIO``."""
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(f"Image '{name}' has no pixels ({width}×{height}).")
    if width * height > MAX_PIXELS:
        raise ImageError(f"Image '{name}' is {width:,}×{height:,} pixels ({width * height / 1e6:,.0f} megapixels); "
                         f"the limit is {MAX_PIXELS / 1e6:.0f} megapixels. Downscale it first.")
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        raise ImageError(f"Image '{name}' is {width:,}×{height:,} pixels, an aspect ratio of {ratio:,.0f}:1; the "
                         f"limit is {MAX_ASPECT_RATIO}:1 (the model would see only a sliver of it). Crop it first.")


def thumbnail(image: Image.Image, max_side: int = 640) -> Image.Image:
    """An RGB copy whose longer side is at most ``max_side`` (never enlarged, never 0 px wide):
    what a page draws, so a huge or 1 x 14,000 image can neither stall the browser nor stretch it."""
    rgb = image if image.mode == "RGB" else _to_rgb(image, "image", [])
    width, height = rgb.size
    scale = min(1.0, max_side / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return rgb.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0) if size != rgb.size else rgb.copy()


def _too_big(name: str, size: int) -> str:
    return (f"Image '{name}' is {size / 2**20:.0f} MB; the limit is {MAX_FILE_BYTES / 2**20:.0f} MB. "
            "Resize or re-encode it first.")


def _open(data: bytes, name: str) -> Image.Image:
    """Open with our formats' parsers only; name any other format in the refusal."""
    try:
        return Image.open(io.BytesIO(data), formats=_PARSERS)
    except UnidentifiedImageError:
        pass
    damaged = next((label for magic, label in _SIGNATURES if data.startswith(magic)), None)
    if damaged is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        damaged = "WebP"
    if damaged:
        raise ImageError(f"Image '{name}' starts like a {damaged} file but is damaged: its header cannot be read. "
                         "Re-export it.")
    try:  # Pillow reads more formats than we accept: name it (header only, its pixels are never decoded)
        with Image.open(io.BytesIO(data)) as other:
            other_format = other.format
    except Exception:
        other_format = None
    if other_format:
        raise ImageError(f"'{name}' is {_article(other_format)} {other_format} file; this tool reads "
                         f"{FORMATS_TEXT} images. Convert it to PNG first.")
    raise ImageError(f"'{name}' is not an image this tool can read; it reads {FORMATS_TEXT} images.")


def _article(acronym: str) -> str:
    """'an' before a vowel sound: 'an ICO', 'an SGI', 'an MPEG' (letters said by name), 'a PPM'."""
    spoken_as_words = {"SUN", "SPIDER", "MCIDAS", "FITS", "MIC"}  # 'a SUN raster', not 'an S-U-N'
    first = acronym[:1].upper()
    vowel_sound = first in "AEIO" if acronym.upper() in spoken_as_words else first in "AEFHILMNORSX"
    return "an" if vowel_sound else "a"


_PREMULTIPLIED = {"La": "LA", "RGBa": "RGBA"}
_NUMERIC_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _to_rgb(img: Image.Image, name: str, notes: list[str]) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in _NUMERIC_MODES:
        return _stretch_to_rgb(img, name, notes)
    if img.mode in _PREMULTIPLIED:
        img = img.convert(_PREMULTIPLIED[img.mode])
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        # Composite on white with the alpha band as the paste mask: one RGB copy, not three RGBA ones.
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGB"), mask=img.getchannel("A"))
        return background
    return img.convert("RGB")  # 1, L, P, CMYK, YCbCr, LAB, HSV, RGBX: Pillow's colour conversions


def _stretch_to_rgb(img: Image.Image, name: str, notes: list[str]) -> Image.Image:
    """16-bit, 32-bit integer and float greyscale: stretch the finite range to 0-255 rather than clip.

    Non-finite floats are mapped, deterministically and without numpy warnings: NaN and -inf to
    black, +inf to white (a note says how many). An image with no finite value at all is refused.
    Worked in float64 blocks of about a million pixels, so the extra memory stays small."""
    import numpy as np

    arr = np.asarray(img)
    is_float = arr.dtype.kind == "f"
    finite = np.isfinite(arr) if is_float else None
    if finite is not None and not finite.any():
        raise ImageError(f"Image '{name}' has no finite pixel values (all NaN or infinite); there is nothing to show.")
    lo = float(np.min(arr, where=finite, initial=np.inf)) if is_float else float(arr.min())
    hi = float(np.max(arr, where=finite, initial=-np.inf)) if is_float else float(arr.max())
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    out = np.empty(arr.shape, dtype=np.uint8)
    rows = max(1, 1_000_000 // max(1, arr.shape[1]))
    for start in range(0, arr.shape[0], rows):
        block = arr[start:start + rows].astype(np.float64)
        if is_float:
            ok = finite[start:start + rows]
            positive_inf = np.isposinf(block)
            block[~ok] = lo
        block -= lo
        block *= scale
        np.clip(block, 0.0, 255.0, out=block)
        if is_float:
            block[positive_inf] = 255.0
        out[start:start + rows] = np.rint(block)
    if finite is not None and not finite.all():
        bad = int(finite.size - np.count_nonzero(finite))
        notes.append(f"'{name}' has {bad:,} pixel{'s' * (bad != 1)} that {'are' if bad != 1 else 'is'} NaN or "
                     "infinite; NaN and -inf are shown black, +inf white.")
    return Image.fromarray(out).convert("RGB")  # (H, W) uint8 -> L -> RGB
