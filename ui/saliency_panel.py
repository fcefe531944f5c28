"""Inspect's saliency maps as one browser component (see saliency_panel.js): the picture once, each
concept's map as a transparent layer over it, and the opacity control in the browser, so moving it
redraws the overlays in a frame instead of re-running the page. Layers come from
``cbm_core.explain.overlay.heat_layer``: drawn at opacity o they look exactly like ``overlay(picture, map, o)``."""
from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import streamlit as st
from PIL import Image

from cbm_core.explain.overlay import colormap

_HERE = Path(__file__).parent
_component = st.components.v2.component(
    "cbm.saliency_maps", html='<div class="saliency"></div>', css=(_HERE / "saliency_panel.css").read_text(),
    js=(_HERE / "saliency_panel.js").read_text())
# The legend's colour bar: the ramp the layers are drawn with (cbm_core/explain/overlay.py).
RAMP = "linear-gradient(to right, " + ", ".join(f"rgb({r},{g},{b})" for r, g, b in colormap(np.linspace(0, 1, 9)).tolist()) + ")"


# Maps for a new image start here while the page builds its other parts: the torch work releases the
# GIL, so on two cores it overlaps the Python and Streamlit work instead of following it.
_WORKER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="saliency-prefetch")


def _maps_key(pipe, enc, method: str, concepts, size) -> tuple:
    return id(pipe.model), enc.digest, method, tuple(concepts), tuple(size)


def _maps_and_grid(pipe, enc, method: str, concepts, size: tuple[int, int]):
    """The maps aligned to the picture at ``size`` (K, h, w), and the tower grid they were drawn on."""
    native = pipe.concept_maps(enc, method, list(concepts))
    return native.to_image(enc.size, size)[0], tuple(native.maps.shape[-2:])


def prefetch_maps(pipe, enc, method: str, concepts, size: tuple[int, int]) -> None:
    """Start ``saliency_maps``' work in the background."""
    future = _WORKER.submit(_maps_and_grid, pipe, enc, method, list(concepts), size)
    st.session_state["saliency_prefetch"] = (_maps_key(pipe, enc, method, concepts, size), future)


def saliency_maps(pipe, enc, method: str, concepts, size: tuple[int, int]):
    """(maps aligned to the picture at ``size``, their native (h, w) grid): the prefetched result when it
    is for these arguments, else computed now."""
    key, future = st.session_state.pop("saliency_prefetch", (None, None))
    if key == _maps_key(pipe, enc, method, concepts, size):
        return future.result()
    return _maps_and_grid(pipe, enc, method, concepts, size)


@dataclass(frozen=True)
class ConceptMap:
    concept: str
    layer: Image.Image  # RGBA, the picture's size (cbm_core.explain.overlay.heat_layer)
    present: bool  # drawn at full strength; an absent concept's map is dimmed
    caption: str  # e.g. "present (p100) · pushes for azure diver (+2.12)"


def _data_url(image: Image.Image, fmt: str) -> str:
    buffer = io.BytesIO()
    if fmt == "PNG":
        image.save(buffer, format="PNG", compress_level=1)  # small layers; speed over a few bytes
    else:
        image.convert("RGB").save(buffer, format="JPEG", quality=88)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def saliency_panel(picture: Image.Image, maps: list[ConceptMap], seen: tuple[int, int, int, int] | None,
                   key: str, opacity: float = 0.6) -> None:
    """picture: RGB at the maps' size; seen: the region the model saw (``cbm_core.explain.overlay.seen_region``
    in the picture's pixels), outlined when it is not the whole picture."""
    width, height = picture.size
    whole = seen is None or tuple(seen) == (0, 0, width, height)
    _component(data={
        "picture": _data_url(picture, "JPEG"), "width": width, "height": height, "opacity": opacity, "ramp": RAMP,
        "seen": None if whole else [seen[0] / width, seen[1] / height, seen[2] / width, seen[3] / height],
        "maps": [{**{k: v for k, v in asdict(m).items() if k != "layer"}, "layer": _data_url(m.layer, "PNG")}
                 for m in maps],
    }, key=key)
