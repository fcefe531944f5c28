"""What a page draws for an image: the engine's decoded RGB picture, bounded to a display size.

Never the uploaded bytes: ``st.image(raw)`` hands some modes and bit depths (16-bit, float, CMYK
TIFFs) to a re-encoder that fails, and would show an animation the model never saw (it sees the
first frame). And never at a size that lets a 1 x 20 strip stretch the page to thousands of pixels.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import streamlit as st
from PIL import Image

from cbm_core.data.images import FORMATS_TEXT, MAX_ASPECT_RATIO, MAX_FILE_BYTES, MAX_PIXELS, image_digest, load_image, thumbnail

DISPLAY_SIDE = 640  # longest side of what a page keeps for drawing; ~1.2 MB per cached image
UPLOAD_HELP = (f"{FORMATS_TEXT}; up to {MAX_FILE_BYTES // 2**20} MB, {MAX_PIXELS // 10**6} megapixels and an aspect "
               f"ratio of {MAX_ASPECT_RATIO}:1 each. Animated and multi-page files: the first frame is used. Any "
               "other file is refused with the reason.")


@dataclass(frozen=True)
class DisplayImage:
    image: Image.Image  # RGB, longest side <= DISPLAY_SIDE
    size: tuple[int, int]  # the decoded image's (width, height), as the model saw it
    notes: tuple[str, ...]  # e.g. "only the first frame is used"


@st.cache_resource(max_entries=128, show_spinner=False)
def _display(digest: str, _data: bytes, name: str) -> DisplayImage:
    decoded = load_image(_data, name)
    return DisplayImage(thumbnail(decoded.image, DISPLAY_SIDE), decoded.image.size, decoded.notes)


def display_image(data: bytes, name: str) -> DisplayImage:
    """The picture to draw for ``data`` (decoded once per content and name, shared by sessions).
    Raises ``ImageError`` for what the engine refuses, as ``Pipeline.encode`` does."""
    return _display(image_digest(data), data, name)


def width_within(image: Image.Image, max_width: int, max_height: int) -> int:
    """The ``st.image`` width (pixels) that keeps ``image`` within ``max_width`` x ``max_height``:
    a tall strip gets a narrow width instead of a page-long height."""
    width, height = image.size
    return max(1, min(max_width, int(max_height * width / height)))


def overlay_size(size: tuple[int, int], max_side: int = 320, max_zoom: float = 3.0) -> tuple[int, int]:
    """(width, height) to draw saliency maps of an image of ``size`` at: the longer side at most
    ``max_side``, small images enlarged at most ``max_zoom`` times, and never a 0-pixel side."""
    width, height = size
    scale = min(max_zoom, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def plain(message: str) -> str:
    """``message`` for ``st.error`` / ``st.caption``, which render Markdown: a refusal quotes a file
    name, and a name is a stranger's text, so '**x**.png' or '$x$.png' must read as written, not as
    bold or a formula. The punctuation that acts mid-line is backslash-escaped and ':' written as an
    entity (which stops ':red[...]' colours and ':material/...:' icons); messages are one line, so
    '#', '-' or '1.' cannot start a heading or a list. Bare URLs are still made links by the
    browser's Markdown (GFM autolinks); they are shown as written."""
    return re.sub(r"([\\`*_\[\]<>~$])", r"\\\1", message).replace(":", "&#58;")
