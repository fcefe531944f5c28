"""What every page shares: the loaded bundle, the backbone, the session's images and model.

Heavy objects are cached once per process with ``st.cache_resource`` (read-only, shared by sessions); per-user state lives in
``st.session_state``: the current (possibly edited) model, uploaded images, interventions.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import streamlit as st

from cbm_core import BackboneError, BundleError, CBMError, Pipeline, load_backbone, load_bundle
from cbm_core.pipeline import EncodingCache
from cbm_core.demo.paths import DEMO_BUNDLE, SAMPLES_DIR

ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = ROOT / "models"
UNSAVED = "(unsaved build)"
HELP = """
**What am I looking at?** A *concept bottleneck model* scores an image against named concepts
("striped wing", "water background"), then a sparse linear head turns the scores into a class.
Every prediction is the sum of per-concept contributions, so you can see *why* — and switch a
concept off to see what changes.

**The demo** is *Toy Birds*: eight species of drawn birds whose backgrounds were tied to the
species group while training (waterbirds on water). The model learnt that shortcut; the Edit
page shows how pruning the background concepts fixes it.
"""


# CBM_COMPILE=1 compiles the image tower once at load (Backbone.compile): faster uploads after a wait.
COMPILE = os.environ.get("CBM_COMPILE", "") not in ("", "0")


@st.cache_resource(show_spinner="Loading the backbone…" + (" and compiling it (up to a minute, once)" if COMPILE else ""))
def cached_backbone(spec: str, device: str | None, precision: str | None):
    return load_backbone(spec, device=device, precision=precision, compile=COMPILE)


@st.cache_resource(show_spinner="Loading the bundle…", max_entries=8)
def cached_bundle(path: str, stamp: str):
    return load_bundle(path)


def _stamp(path: Path) -> str:
    """Changes when the bundle on disk changes, so the cache never serves a stale model."""
    files = [path] if path.is_file() else sorted(path.glob("*"))
    return hashlib.sha1("|".join(f"{p.name}:{p.stat().st_mtime_ns}" for p in files if p.exists()).encode()).hexdigest()


def bundle_choices() -> dict[str, str]:
    choices = {"Toy Birds demo": str(DEMO_BUNDLE)}
    if MODELS_DIR.is_dir():
        for p in sorted(MODELS_DIR.iterdir()):
            if (p / "manifest.json").exists() or p.suffix == ".zip":
                choices[f"models/{p.name}"] = str(p)
    if "unsaved_model" in st.session_state:
        choices["Unsaved build (this session)"] = UNSAVED
    return choices


def open_bundle(path: str) -> None:
    """Load a bundle into this session; on failure keep the current one and show why."""
    if path == UNSAVED:
        use_unsaved(st.session_state["unsaved_model"])
        return
    try:
        model = cached_bundle(path, _stamp(Path(path)))
    except (BundleError, OSError) as exc:
        st.session_state["bundle_error"] = str(exc)
        return
    st.session_state.pop("bundle_error", None)
    if st.session_state.get("bundle_path") != path:
        st.session_state["bundle_path"] = path
        st.session_state["model"] = model
        st.session_state["history"] = [()]  # interventions, as tuples of changes
        st.session_state["history_pos"] = 0


def use_unsaved(model) -> None:
    """Make a freshly built, not yet saved model this session's model."""
    st.session_state.update(model=model, bundle_path=UNSAVED, unsaved_model=model)


def reload_bundle() -> None:
    """Drop this session's edits: back to the bundle as saved (or as built)."""
    path = st.session_state["bundle_path"]
    if path == UNSAVED:
        st.session_state["model"] = st.session_state["unsaved_model"]
    else:
        st.session_state["model"] = cached_bundle(path, _stamp(Path(path)))


def ensure_session() -> None:
    if "model" not in st.session_state:
        open_bundle(str(DEMO_BUNDLE))


def pipeline() -> Pipeline | None:
    """The session's model on the shared backbone, or None (with an error shown) if unusable."""
    ensure_session()
    model = st.session_state.get("model")
    if model is None:
        st.error(st.session_state.get("bundle_error", "No bundle is loaded. Choose one in the sidebar."))
        return None
    try:
        backbone = cached_backbone(model.backbone_spec, st.session_state.get("device"), st.session_state.get("precision"))
        return Pipeline(backbone, model, _image_cache(backbone.spec))
    except (BackboneError, CBMError) as exc:
        st.error(str(exc))
        return None


@st.cache_resource
def _image_cache(spec: str):
    """One encoding cache per backbone, shared by every session (keys are content hashes)."""
    return EncodingCache(size=256)


def session_images() -> dict[str, bytes]:
    """name -> bytes of the images this session has uploaded or picked."""
    return st.session_state.setdefault("images", {})


def sample_paths() -> list[Path]:
    return sorted(SAMPLES_DIR.glob("*.png"))


def is_demo() -> bool:
    return st.session_state.get("bundle_path") == str(DEMO_BUNDLE)
