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
from cbm_core.backbone import spec_needs_trust
from cbm_core.explain.pipeline import EncodingCache
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
    opened = st.session_state.get("bundle_path")
    if opened and opened not in choices.values():  # opened by path or upload: show it, not the demo
        choices[f"opened: {Path(opened).name}"] = opened
    return choices


def open_bundle(path: str, trust: bool = False) -> None:
    """Load a bundle into this session; on failure keep the current one and show why. A bundle
    whose backbone points outside open_clip's published models (a local path, a hub repository)
    waits for the user's consent first (``pending_trust``, drawn by the sidebar); ``trust`` gives it."""
    if path == UNSAVED:
        use_unsaved(st.session_state["unsaved_model"])
        return
    try:
        model = cached_bundle(path, _stamp(Path(path)))
    except (BundleError, OSError) as exc:
        st.session_state["bundle_error"] = str(exc)
        return
    st.session_state.pop("bundle_error", None)
    trusted = st.session_state.setdefault("trusted_specs", set())
    reason = spec_needs_trust(model.backbone_spec)
    if reason and model.backbone_spec not in trusted:
        if not trust:
            st.session_state["pending_trust"] = {"path": path, "spec": model.backbone_spec, "reason": reason}
            return
        trusted.add(model.backbone_spec)
    st.session_state.pop("pending_trust", None)
    if st.session_state.get("bundle_path") != path:
        st.session_state["bundle_path"] = path
        st.session_state["model"] = model
        st.session_state["history"] = [()]  # interventions, as tuples of changes
        st.session_state["history_pos"] = 0


def use_unsaved(model) -> None:
    """Make a freshly built, not yet saved model this session's model (its backbone is the one the
    user chose on the Build page, so it needs no further consent)."""
    st.session_state.setdefault("trusted_specs", set()).add(model.backbone_spec)
    st.session_state.update(model=model, bundle_path=UNSAVED, unsaved_model=model)


def keep_build(result) -> None:
    """Keep a build's model (offered in the sidebar) and the encoded data it was fitted and validated
    on (``BuildResult.train_features`` / ``val_features``), so Edit and Evaluate can measure it on
    that data without encoding anything again."""
    st.session_state["unsaved_model"] = result.model
    st.session_state["unsaved_features"] = {"model": result.model, "validation": result.val_features,
                                            "training": result.train_features}


def build_features(model) -> dict:
    """The splits of this session's build that ``model`` can be measured on: split name -> FeatureSet.
    Any model on the same backbone with the same classes qualifies (the build itself, its edits, or
    the bundle it was saved as), since the features are that backbone's embeddings."""
    kept = st.session_state.get("unsaved_features")
    if not kept or not _same_task(model, kept["model"]):
        return {}
    return {name: feats for name, feats in kept.items() if name != "model" and feats is not None and len(feats.labels)}


def _same_task(a, b) -> bool:
    return a.backbone_spec == b.backbone_spec and tuple(a.classes) == tuple(b.classes)


def is_toy_birds(model) -> bool:
    """Whether ``model`` reads the demo backbone's embeddings into the Toy Birds classes (the demo
    bundle, its edits, or a model built on Toy Birds here), so the shipped demo features fit it."""
    return model is not None and _same_task(model, cached_bundle(str(DEMO_BUNDLE), _stamp(DEMO_BUNDLE)))


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
    reason = spec_needs_trust(model.backbone_spec)
    if reason and model.backbone_spec not in st.session_state.get("trusted_specs", set()):
        st.warning(f"This model's backbone is `{model.backbone_spec}`: {reason}. Confirm it in the sidebar to load it.")
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


def sample_name(path: Path) -> str:
    """'13_azure_diver_on_foliage.png' -> 'azure diver on foliage' (how the pages list demo birds)."""
    return path.stem.split("_", 1)[1].replace("_", " ")


# What the charts' "score" is, said the same way wherever a score or a contribution is drawn.
SCORE_UNITS = ("A class's *score* is its logit: the bias plus every concept's contribution (plus the residual head, if "
               "the model has one); contributions are in the same units. The class with the highest score wins, and a "
               "lead of 1 multiplies its odds against the other class by e ≈ 2.7 (a lead of 2 by about 7.4).")


# The demo's one story, told the same way by the README ("Try it: ..."), the Inspect page's hint and
# the bird Inspect opens on: a waterbird off the water, which the model mistakes for its landbird twin
# partly because there is no water; pruning the background concepts fixes it.
STORY_BIRD = "azure diver on foliage"
STORY = (f"Try the demo bird *{STORY_BIRD}*: the model calls it an *azure finch*, partly because it is not on water "
         "(water background: absent, pushing for azure finch). On *Edit model*, pruning the three background concepts "
         "raises worst-group accuracy by about 11 points on validation data; apply it, and the bird is read correctly.")


def is_demo() -> bool:
    return st.session_state.get("bundle_path") == str(DEMO_BUNDLE)
