"""How far to believe what the dashboard shows: the reliability beside every explanation on Inspect
(is the image like the training data, is each concept really there, is its map on it, is its name
robust, what does it look like in other images) and the concept-level audit on Evaluate.

Every number comes from the engine (cbm_core.explain.reliability, atlas, audit, paraphrase, concept_metrics).
What is fitted once per model — a presence calibration and an out-of-distribution reference for a
model whose bundle does not carry them, the atlas, the audit, the paraphrase check, the pointing game —
is kept per model object (a weak reference: an edited model is a new object and gets its own), so a
rerun never recomputes it; the slow ones run only when their button is clicked.
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Callable

import pandas as pd
import streamlit as st

from cbm_core import CBMError
from cbm_core.explain import reliability as rel
from cbm_core.explain.overlay import overlay
from ui import common

_LOCK = threading.Lock()
_PER_MODEL: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> {what: value}


def _kept(model, what: str, make: Callable[[], object]):
    """``make()`` once per model object and ``what``; shared by every session that holds the model."""
    with _LOCK:
        slot = _PER_MODEL.setdefault(model, {})
        if what in slot:
            return slot[what]
    value = make()
    with _LOCK:
        _PER_MODEL.setdefault(model, {})[what] = value
    return value


def _peek(model, what: str):
    with _LOCK:
        return _PER_MODEL.get(model, {}).get(what)


@dataclass(frozen=True)
class Reference:
    """Held-out labelled images a model can be checked against without the user typing a path."""

    features: object  # FeatureSet
    label_names: tuple[str, ...] | None  # names of features.concept_labels' columns
    image_for: Callable[[int], tuple[str, object]] | None  # row -> (name, image source), for the atlas
    description: str


def reference(model) -> Reference | None:
    """The Toy Birds validation split for a Toy Birds model, else the validation data of this session's build."""
    if common.is_toy_birds(model):
        from cbm_core.demo.reference_images import image_for
        from cbm_core.demo.world import CONCEPTS
        from ui.data_source import demo_features

        return Reference(demo_features("val"), tuple(CONCEPTS), image_for("val"), "the Toy Birds validation split")
    built = common.build_features(model)
    if "validation" in built:
        return Reference(built["validation"], None, None, "its build's validation data")
    return None


def reliable_model(model):
    """``model`` with a presence calibration and an out-of-distribution reference: its bundle's own, or
    fitted once on ``reference`` data; without either, the model itself (whose presence probabilities
    then come from its training statistics, and whose OOD check counts extreme percentiles)."""
    if rel.stored(model, rel.PRESENCE_KEY) is not None and rel.stored(model, rel.OOD_KEY) is not None:
        return model

    def fit():
        ref = reference(model)
        if ref is None:
            return model
        try:
            return rel.fit_reliability(model, ref.features, label_names=ref.label_names, fitted_on=ref.description)
        except (ValueError, CBMError):
            return model

    return _kept(model, "reliability", fit)


# -- Inspect ----------------------------------------------------------------------------------------
def ood_notice(pipe, enc, explanation, index: int):
    """Under the prediction: is this image like the training data? A caption when it is, a warning when not."""
    model = reliable_model(pipe.model)
    result = rel.ood_check(model, enc.embedding[None], explanation.scores[index:index + 1])[0]
    if result.verdict == rel.FOREIGN:
        st.error(result.sentence(), icon=":material/travel_explore:")
    elif result.verdict == rel.UNUSUAL:
        st.warning(result.sentence(), icon=":material/help:")
    else:
        st.caption(result.sentence())
    return result


def locations(pipe, enc, method: str, concepts, aligned) -> dict:
    """``LocationScore`` of each shown map (``aligned``: the maps as drawn, (K, h, w)), computed once per
    image, method and concepts — one extra forward pass — and kept for the reliability table."""
    key = (id(pipe.model), enc.digest, method, tuple(concepts))
    kept = st.session_state.get("reliability_locations")
    if kept is not None and kept[0] == key:
        return kept[1]
    try:
        maps = rel.maps_on_input(aligned, enc.size, pipe.backbone.resize_mode, tuple(enc.pixels.shape[-2:]))
        found = rel.location_scores(pipe, enc, list(concepts), method, maps=maps)
    except (ValueError, CBMError):
        found = {}
    st.session_state["reliability_locations"] = (key, found)
    return found


def location_caption(found: dict, concept: str) -> str:
    """The text beside a map: '' when it was not measured."""
    return f" · {found[concept].sentence()}" if concept in found else ""


def text_column(values: pd.Series, fmt: str) -> pd.Series:
    """Numbers as text in ``fmt``, '–' where missing (None or NaN): what a table shows for a column that is
    not measured for every row (the grid would show 'None')."""
    numbers = pd.to_numeric(values, errors="coerce")
    return numbers.map(lambda v: "–" if pd.isna(v) else fmt.format(v))


def _table(frame: pd.DataFrame) -> pd.DataFrame:
    """The engine's reliability frame as shown: columns nobody measured left out, '–' where not measured."""
    shown = pd.DataFrame({
        "concept": frame.concept, "read as": frame.read_as, "contribution": frame.contribution,
        "p(present)": frame.p_present, "doubt": frame.doubt.replace("", "–"), "map": frame.location.fillna("–")})
    for column, values, fmt in (("AUROC", frame.auroc, "{:.3f}"), ("name stability", frame.name_stability, "{:.2f}")):
        if pd.to_numeric(values, errors="coerce").notna().any():
            shown[column] = text_column(values, fmt)
    return shown


def _show(frame: pd.DataFrame, key: str) -> None:
    st.dataframe(_table(frame).style.format({"contribution": "{:+.2f}", "p(present)": "{:.2f}"}), hide_index=True,
                 width="stretch", key=key, column_config={"doubt": st.column_config.TextColumn(width="medium")})


@st.fragment
def explanation_section(pipe, explanation, index: int, enc, method: str | None = None) -> None:
    """Below the maps: per concept, how far to believe it, and its atlas one click away (a fragment:
    opening an atlas re-runs this section only)."""
    st.subheader("How far to believe this explanation")
    model = reliable_model(pipe.model)
    kept = st.session_state.get("reliability_locations")
    found = kept[1] if kept is not None and kept[0][:2] == (id(pipe.model), enc.digest) else {}
    r = rel.reliability(model, explanation, index, embedding=enc.embedding, locations=found)
    if r.ood is not None and r.ood.warn:
        st.warning("This image is not like the images these probabilities were calibrated on: read them as the "
                   "model's guess, not as evidence.", icon=":material/travel_explore:")
    doubtful = r.probably_absent(5)
    if doubtful:
        st.warning(f"Read as present but probably not there: **{', '.join(doubtful)}** — among the five concepts this "
                   f"prediction leans on most. Check the image (and the atlas below) before trusting the explanation.",
                   icon=":material/report:")
    frame = r.to_frame()
    used = frame[frame.contribution != 0].head(10)  # the explanation: the concepts that count towards the class
    _show(used if len(used) else frame.head(10), "reliability_table")
    with st.expander(f"Every concept ({len(frame)})"):
        _show(frame, "reliability_table_all")
    notes = [r.calibration.describe()]
    if any(a is not None for a in r.auroc):
        notes.append("AUROC: how well the concept's score separates labelled images with and without it"
                     + (" (the bundle's own, measured when it was built)" if rel.stored_auroc(model) else
                        f" ({r.calibration.fitted_on})") + ".")
    if any(s is not None for s in r.name_stability):
        notes.append("Name stability: how well paraphrases of the concept's prompt (\"red crown\", \"the crown is red\") "
                     "draw the same present/absent line (1 = the same; below 0.9 the name is fragile).")
    elif getattr(model.concept_layer, "kind", "") != "text_cosine":
        notes.append("Name stability applies to concepts defined by a prompt; this model's concepts are learned "
                     "directions whose names only label them.")
    notes.append("Map: does deleting the map's brightest 10 % lower the concept's score more than deleting the same "
                 "area elsewhere (measured for the maps shown above)?")
    st.caption(" ".join(notes))
    atlas_picker(pipe, list((used if len(used) else frame).concept[:6]), method)


def atlas_picker(pipe, concepts, method: str) -> None:
    """One click from a concept to its atlas: a button for each of ``concepts``, a list for any other."""
    st.markdown("**What does the model mean by…** (the validation images that score highest and lowest on a concept)")
    cols = st.columns(len(concepts) + 1)
    for col, name in zip(cols, concepts):
        col.button(name, key=f"atlas_button_{name}", width="stretch",
                   on_click=lambda n=name: st.session_state.update(atlas_concept=n, atlas_any=None))
    names = list(pipe.model.concepts.names)
    cols[-1].selectbox("any concept", names, index=None, key="atlas_any", placeholder="any concept",
                       label_visibility="collapsed",
                       on_change=lambda: st.session_state.update(atlas_concept=st.session_state["atlas_any"]))
    concept = st.session_state.get("atlas_concept")
    if concept in names:
        atlas_view(pipe, concept, method)


@st.cache_resource(show_spinner=False, max_entries=4)
def _disk_reference(spec: str, device, precision, path: str, split: str | None):
    """A dataset on disk as atlas reference images: its features (from the on-disk cache after the
    first time) and each kept row's path."""
    from cbm_core import ImageDataset, extract_features

    backbone = common.cached_backbone(spec, device, precision)
    ds = ImageDataset.from_csv(path, split=split or None) if path.lower().endswith(".csv") else ImageDataset.from_folder(path)
    feats = extract_features(backbone, ds)
    paths = [ds.records[i].path for i in feats.kept.tolist()]
    return feats, paths


def atlas_view(pipe, concept: str, method: str | None = None, n: int = 5) -> None:
    from cbm_core.explain.atlas import atlas_images, concept_atlas

    model = pipe.model
    method = pipe.check_map_method(method)
    ref = reference(model)
    with st.container(border=True):
        head = st.columns([6, 1])
        head[0].markdown(f"**Atlas of _{concept}_**")
        head[1].button("Close", key="atlas_close", on_click=lambda: st.session_state.update(atlas_concept=None))
        if ref is None or ref.image_for is None:
            path = st.text_input("Validation images to draw the atlas from (a folder of class sub-folders or a CSV)",
                                 key="atlas_path")
            if not path:
                st.caption("This model's validation images are not at hand here; name them to see its atlas.")
                return
            try:
                feats, paths = _disk_reference(model.backbone_spec, st.session_state.get("device"),
                                               st.session_state.get("precision"), path, None)
            except CBMError as exc:
                st.error(str(exc))
                return
            ref = Reference(feats, None, lambda i: (paths[i].rsplit("/", 1)[-1], paths[i]), path)
        atlas = concept_atlas(model, ref.features.embeddings, concept, n=n)
        with st.spinner("Drawing the atlas…"):
            top, bottom = _kept(model, f"atlas:{method}:{concept}:{ref.description}",
                                lambda: atlas_images(pipe, atlas, ref.image_for, method))
        st.caption(f"Ranked over {atlas.n_images} images of {ref.description}; each with the concept's {method} map.")
        for title, shown in (("Highest-scoring", top), ("Lowest-scoring", bottom)):
            st.markdown(f"*{title}*")
            cols = st.columns(len(shown) or 1)
            for col, item in zip(cols, shown):
                col.image(overlay(item.image, item.map.numpy()), width="stretch")
                col.caption(f"p{item.entry.percentile:.0f} · score {item.entry.score:.3f}  \n{item.name}")


# -- Evaluate ---------------------------------------------------------------------------------------
def audit_badge(model) -> None:
    """Beside Evaluate's headline numbers: does the model really use its concepts?"""
    from cbm_core.explain.audit import stored_audit

    audit = stored_audit(model) or _peek(model, "audit")
    if audit is None:
        st.markdown(":gray-badge[:material/help: Concept use: not audited] — run the audit at the bottom of the page.")
        return
    where = audit.tested_on or f"{audit.n_test} images"
    weak_names = [name for name, ok, _ in audit.name_checks() if not ok]
    if not audit.uses_concepts:
        failed = [name for name, ok, _ in audit.checks() if not ok and name in audit.USE_CHECKS]
        st.markdown(f":orange-badge[:material/warning: Concept audit: {', '.join(failed)}] — the predictions do not rest on "
                    f"the concepts alone (audited on {where}; see the bottom of the page).")
    elif weak_names:
        st.markdown(":green-badge[:material/verified: Uses its concepts] "
                    f":orange-badge[:material/help: Names not shown to matter: {', '.join(weak_names)}] — "
                    f"audited on {where}; see the bottom of the page.")
    else:
        st.markdown(f":green-badge[:material/verified: Uses its concepts] — bypass, leakage and baselines checked on {where}.")


def labels_for(model, feats):
    """``feats.concept_labels`` in the model's concept order (NaN where a concept has no label), or None."""
    if getattr(feats, "concept_labels", None) is None:
        return None
    if common.is_toy_birds(model):
        from cbm_core.demo.world import CONCEPTS

        if feats.concept_labels.shape[1] == len(CONCEPTS):
            return rel.labels_in_model_order(model, feats.concept_labels, list(CONCEPTS))
    return None


def evaluate_section(pipe, model, feats) -> None:
    """The paper's three metrics per concept, the location check, name robustness and the audit."""
    from cbm_core.explain.concept_metrics import concept_metrics, existence_rate

    st.subheader("Is each concept used, present and in the right place?")
    labels = labels_for(model, feats)
    frame = _kept(model, f"metrics:{id(feats)}", lambda: concept_metrics(model, feats.embeddings, feats.labels, labels))
    if labels is not None:
        ex = existence_rate(model, feats.embeddings, labels)
        if ex["existence"] is not None:
            st.metric("Top concepts really present", f"{ex['existence']:.1%}",
                      help=f"Over {ex['pairs']} (image, concept) pairs where the concept is among the image's "
                           f"{ex['top_k']} largest contributions to the prediction and read as present: how often the "
                           "concept labels say it is there (the paper's existence metric).")
    located = location_section(pipe, model)
    shown = frame.copy()
    if located is not None:
        shown = shown.merge(located.frame[["concept", "pointing_game", "chance", "n"]].rename(
            columns={"n": "maps checked"}), on="concept", how="left")
    stab = name_frame(model)
    if stab is not None:
        shown = shown.merge(stab[["concept", "min_agreement", "fragile"]].rename(
            columns={"min_agreement": "name stability", "fragile": "fragile name"}), on="concept", how="left")
    # The engine's accuracy_drop is what switching the concept off costs; shown as the change it makes
    # (+ = accuracy goes up without it), in points, so that a spurious concept reads as a gain.
    shown["accuracy_drop"] = -100 * pd.to_numeric(shown["accuracy_drop"], errors="coerce")
    shown = shown.rename(columns={"accuracy_drop": "accuracy if off (pts)", "top_uses": "top-5 uses",
                                  "claimed_present": "claimed present", "pointing_game": "pointing game"})
    # Columns that can be empty (not measured for a concept) are shown as text, '–' where empty: the grid
    # would show a null as 'None'.
    for column, f in (("accuracy if off (pts)", "{:+.1f}"), ("existence", "{:.0%}"), ("pointing game", "{:.0%}"),
                      ("chance", "{:.1%}"), ("maps checked", "{:.0f}"), ("name stability", "{:.2f}")):
        if column in shown:
            shown[column] = text_column(shown[column], f)
    if "fragile name" in shown:
        shown["fragile name"] = shown["fragile name"].map(lambda v: "yes" if v is True else "no" if v is False else "–")
    st.dataframe(shown.style.format({"importance": "{:.1%}"}), hide_index=True, width="stretch",
                 key="concept_metrics_table")
    st.caption("Importance: the concept's share of the evidence behind the predictions (mean |contribution| to the "
               "predicted class). Accuracy if off: the change in accuracy when the concept is switched off (set to its "
               "training average) for every image. Existence: when it is among an image's five largest contributions and read as "
               "present, how often it really is there" + (" (by the concept labels)." if labels is not None else
                                                          " — needs concept labels, which this data has not.")
               + " Pointing game: is the map's maximum on the part the concept names?")
    if located is not None:
        elsewhere = located.elsewhere()
        if elsewhere:
            st.warning(f"Maps that mostly land elsewhere (pointing game below 50 %): {len(elsewhere)} of "
                       f"{len(located.frame)} concepts measured, worst first — {', '.join(elsewhere)}.")
    names_section(pipe, model)
    audit_section(pipe, model)


def location_section(pipe, model):
    """The pointing game: on Toy Birds test birds (their part masks) or on a CSV's loc:<concept> columns."""
    from cbm_core.explain.concept_metrics import dataset_annotations, pointing_game, stored_pointing

    found = _peek(model, "pointing") or stored_pointing(model)
    with st.expander("Location: do the maps land on the parts? (pointing game)", expanded=False):
        if st.session_state.get("pointing_method") not in pipe.map_methods():
            st.session_state["pointing_method"] = pipe.default_map_method
        method = st.radio("Map", pipe.map_methods(), horizontal=True, key="pointing_method")
        if common.is_toy_birds(model):
            n = 30
            if st.button(f"Measure on {n} Toy Birds test birds (their part masks)", key="pointing_demo"):
                from cbm_core.demo.reference_images import part_annotations

                with st.spinner("Drawing maps…"):
                    found = pointing_game(pipe, part_annotations(n), method)
                _put(model, "pointing", found)
        cols = st.columns([4, 1])
        path = cols[0].text_input("…or a CSV whose loc:<concept> columns give part locations (x,y or x0,y0,x1,y1 in "
                                  "image pixels)", key="pointing_csv")
        split = cols[1].text_input("CSV split", key="pointing_split", placeholder="val")
        if path and st.button("Measure on this CSV", key="pointing_go"):
            from cbm_core import ImageDataset

            try:
                ds = ImageDataset.from_csv(path, split=split or None)
            except CBMError as exc:
                st.error(str(exc))
                return found
            items = dataset_annotations(ds)
            if not items:
                st.error("This CSV has no loc:<concept> columns (or all of them are empty).")
                return found
            with st.spinner(f"Drawing maps for {len(items)} images…"):
                found = pointing_game(pipe, items, method)
            _put(model, "pointing", found)
            if found.unknown:
                st.caption(f"Annotated but not concepts of this model: {', '.join(found.unknown)}.")
            for name, why in found.failed[:5]:
                st.caption(f"Skipped {name}: {why}")
        if found is not None:
            where = (f"Stored with the bundle: {found.method} maps on {found.measured_on}; " if found.measured_on else "")
            st.caption(f"{where}{int(found.frame.n.sum())} maps checked; chance is the share of the image a random point "
                       "would hit.")
    return found


def _put(model, what: str, value) -> None:
    with _LOCK:
        _PER_MODEL.setdefault(model, {})[what] = value


def name_frame(model):
    """The paraphrase check as a table: stored in the bundle, or run here; None when not available."""
    data = rel.stored(model, rel.NAMES_KEY)
    if isinstance(data, dict) and data.get("concepts_sha1") == rel.concepts_digest(model.concepts.names):
        low, fragile = rel.name_stability(model)
        if all(v is not None for v in low):
            return pd.DataFrame({"concept": model.concepts.names, "min_agreement": low, "fragile": fragile})
    run = _peek(model, "names")
    return run.to_frame() if run is not None else None


def names_section(pipe, model) -> None:
    from cbm_core.explain.paraphrase import FRAGILE_BELOW, name_stability, text_layer

    with st.expander("Are the names robust? (paraphrases of each prompt)"):
        if not text_layer(model):
            st.caption("Paraphrases apply to concepts defined by a text prompt (PCBM, LaBo, CMS). This model's concepts "
                       "are learned directions whose names only label them, so rewording a name changes nothing it computes.")
            return
        ref = reference(model)
        frame = name_frame(model)
        if ref is not None and st.button("Re-score every concept under paraphrases", key="names_go"):
            labels = rel.labels_in_model_order(model, ref.features.concept_labels, ref.label_names) \
                if ref.label_names else None
            with st.spinner("Embedding paraphrases…"):
                _put(model, "names", name_stability(model, pipe.backbone, ref.features.embeddings, labels))
            frame = name_frame(model)
        if frame is None:
            st.caption("Not measured for this model yet." if ref is not None else
                       "Needs reference images: available for the demo and for a model built in this session.")
            return
        fragile = list(frame.concept[frame.fragile.astype(bool)])
        st.caption(f"Each concept re-scored under its paraphrases (the bare name, \"a photo of …\", \"the crown is red\" "
                   f"…): name stability is how well the worst one draws the concept's present/absent line (AUROC, "
                   f"1 = the same line). Below {FRAGILE_BELOW} the name is fragile"
                   + (f": **{', '.join(fragile)}**." if fragile else "; none is."))
        run = _peek(model, "names")
        if run is not None:
            st.dataframe(run.to_frame().style.format(precision=3, na_rep="–"), hide_index=True, width="stretch")


def audit_section(pipe, model) -> None:
    from cbm_core.explain.audit import concept_audit, stored_audit

    st.subheader("Does the model really use its concepts?")
    audit = stored_audit(model) or _peek(model, "audit")
    from ui.data_source import baseline_splits

    splits = baseline_splits(model)
    if audit is None and splits is None:
        st.caption("The audit needs labelled data the model was not fitted on: available here for the demo and for a "
                   "model built in this session; for your own data, from Python (`cbm_core.explain.audit.concept_audit`).")
        return
    if splits is not None and st.button("Run the audit" if audit is None else "Run the audit again", key="audit_go",
                                        help="Bypass, leakage, and named concepts against random directions and "
                                             "shuffled names at the model's NEC: about a minute on a CPU."):
        fit_on, test_on, how = splits
        labels = labels_for(model, test_on)
        with st.spinner("Auditing…"):
            audit = concept_audit(reliable_model(model), fit_on, test_on, backbone=pipe.backbone,
                                  test_concept_labels=labels, fitted_on=how.split(" and tested")[0],
                                  tested_on=f"{len(test_on.labels)} held-out images")
        _put(model, "audit", audit)
    if audit is None:
        return
    stored = stored_audit(model) is not None
    st.caption(("Stored with the bundle" if stored else "Run in this session")
               + f"; measured on {audit.tested_on or f'{audit.n_test} images'}.")
    for name, ok, sentence in audit.checks():
        (st.success if ok else st.warning)(f"**{name}** — {sentence}",
                                           icon=":material/check_circle:" if ok else ":material/warning:")
