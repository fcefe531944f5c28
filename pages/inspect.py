"""Inspect: upload images, see the prediction, the concepts behind it, and where they are."""
from __future__ import annotations


import streamlit as st

from cbm_core import ImageError, concept_directions, label_from_filename
from cbm_core.explain.overlay import heat_layer, seen_region
from cbm_core.explain.pipeline import MAP_METHODS
from ui import charts, common, report_button, sidebar
from ui.saliency_panel import ConceptMap, prefetch_maps, saliency_maps, saliency_panel
from ui.images import UPLOAD_HELP, display_image, overlay_size, plain, width_within
from ui import reliability_panel

pipe = sidebar.open_page("Inspect", "Upload images (or pick demo birds) to see what the model predicts, which concepts "
                                    "drive it, and where in the image it sees them.")
images = common.session_images()


def _clear_images(images: dict, uploads) -> None:
    """Empty the page: the images, the demo-bird picks, and the uploads still listed in the uploader
    (which would otherwise be added again on the next run)."""
    images.clear()
    st.session_state["inspect_samples"] = []
    st.session_state["inspect_cleared_uploads"].update(up.file_id for up in uploads or [])


charts.use_html_charts()
if not images and not st.session_state.get("inspect_opened") and common.is_toy_birds(pipe.model):
    # A first visit opens on the demo's story bird (README, "Try it"). Added as an image, not as a pick
    # in the demo-bird list below, so that "Clear images" clears it.
    story = next(p for p in common.sample_paths() if common.sample_name(p) == common.STORY_BIRD)
    images[common.STORY_BIRD] = story.read_bytes()
st.session_state["inspect_opened"] = True

with st.container(border=True):
    left, right = st.columns([3, 2])
    # Any file is accepted here, so a refused one gets its reason in words (not just a red icon).
    uploads = left.file_uploader("Upload images", accept_multiple_files=True, key="inspect_uploads", help=UPLOAD_HELP)
    cleared = st.session_state.setdefault("inspect_cleared_uploads", set())
    for up in uploads or []:
        if up.name in images or up.file_id in cleared:
            continue
        data = up.getvalue()
        try:
            pipe.encode(data, up.name)  # decode + encode once; the result is cached by content hash
        except ImageError as exc:
            left.error(plain(str(exc)))  # quotes the file's name: a stranger's text, shown as written
            continue
        images[up.name] = data
    samples = {p.stem.split("_", 1)[1].replace("_", " "): p for p in common.sample_paths()}
    picked = right.multiselect("…or add demo birds", list(samples), key="inspect_samples",
                               placeholder="e.g. azure diver on water")
    for name in picked:
        if name not in images:
            images[name] = samples[name].read_bytes()
    if images:
        right.button("Clear images", on_click=_clear_images, args=(images, uploads))

if not images:
    st.info("No image yet. Upload one, or add a demo bird on the right. "
            + (common.STORY if common.is_toy_birds(pipe.model) else ""))
    st.stop()

encoded = {}
with st.spinner("Encoding images…"):
    for name, data in list(images.items()):
        try:
            encoded[name] = pipe.encode(data, name)
        except ImageError as exc:
            st.error(plain(str(exc)))
            images.pop(name)
names = list(encoded)
exp_all = pipe.explain_encoded([encoded[n] for n in names])
pred_names = [exp_all.class_names[int(i)] for i in exp_all.predicted]

# The image shown in detail (a new one at once), decided here so that its saliency maps can start
# computing in the background while the rest of the page is built (see ui/saliency_panel.prefetch_maps).
new = [name for name in names if name not in st.session_state.get("inspect_seen", ())]
if new or st.session_state.get("inspect_current") not in names:
    st.session_state["inspect_current"] = (new or names)[-1]
st.session_state["inspect_seen"] = names
current = st.session_state["inspect_current"]
i = names.index(current)
enc = encoded[current]
directions = concept_directions(exp_all, i)  # the predicted class's contributions, each with its direction
default_concepts = list(directions[directions.contribution > 0].concept[:3]) or list(directions.concept[:3])
if st.session_state.get("sal_method") not in pipe.map_methods():  # unset, or a method the last bundle's tower had
    st.session_state["sal_method"] = pipe.default_map_method
prefetch_maps(pipe, enc, st.session_state["sal_method"],
              st.session_state.get(f"sal_concepts_{current}", default_concepts), overlay_size(enc.size))

# The true class, where it is known: set by hand in the detail view, else stated by the file name
# (demo birds are named after their species; so are many photo collections, e.g. "azure_diver_03.jpg").
UNKNOWN = "not known"
true_labels = st.session_state.setdefault("true_labels", {})


def truth(name: str) -> str | None:
    label = true_labels.get(name, label_from_filename(name, exp_all.class_names))
    return None if label == UNKNOWN else label


def reasons(index: int) -> str:
    """The three largest contributions, each with which way it points; kept per image for this model,
    so a new upload does not redo the captions of the images already in the gallery."""
    model, kept = st.session_state.get("gallery_reasons", (None, {}))
    if model is not pipe.model:
        kept = {}
        st.session_state["gallery_reasons"] = (pipe.model, kept)
    digest = encoded[names[index]].digest
    if digest not in kept:
        top = concept_directions(exp_all, index).head(3)
        kept[digest] = " · ".join(f"{r.concept} ({'present' if r.present else 'absent'}, {r.contribution:+.1f})"
                                  for r in top.itertuples())
    return kept[digest]


@st.fragment
def gallery() -> None:
    """A fragment: filtering re-draws the gallery only."""
    st.subheader("Gallery")
    missed = [i for i, name in enumerate(names) if truth(name) not in (None, pred_names[i])]
    filters = st.columns([3, 2])
    keep = filters[0].multiselect("Filter by predicted class", sorted(set(pred_names)), key="gallery_filter", wrap=True)
    only_missed = filters[1].toggle(f"Only images the model missed ({len(missed)})", key="gallery_missed",
                                    disabled=not missed,
                                    help="Images whose true class is known (from the file name, or set in the detail "
                                         "view) and differs from the prediction.")
    shown = [i for i, p in enumerate(pred_names) if (not keep or p in keep) and (not only_missed or i in missed)]
    cols = st.columns(4)
    for slot, i in enumerate(shown):
        with cols[slot % 4].container(border=True):
            thumb = display_image(images[names[i]], names[i]).image
            st.image(thumb, width=width_within(thumb, 320, 240))
            prob = float(exp_all.probs[i].max())
            known = truth(names[i])
            if known is None:
                st.markdown(f"**{plain(pred_names[i])}** · {prob:.0%}")
            elif known == pred_names[i]:
                st.markdown(f"**{plain(pred_names[i])}** · {prob:.0%} :green[· correct]")
            else:  # plain text, not a badge: it wraps in a narrow card instead of being cut off
                st.markdown(f"**{plain(pred_names[i])}** · {prob:.0%}  \n:red[:material/close: **missed**: the true class "
                            f"is {plain(known)}]")
            st.caption(reasons(i))
            st.caption(plain(names[i]))  # a file name is a stranger's text: shown as written, not as Markdown


if len(names) > 1:
    gallery()

st.subheader("One image in detail")
st.selectbox("Image", names, key="inspect_current")  # its value is `current`, read above
st.session_state["current_image"] = current
top_classes = exp_all.classes_frame(i, k=min(5, len(exp_all.class_names)))

head = st.columns([5, 4])
with head[0]:
    shown = display_image(images[current], current)
    st.image(shown.image, caption=f"{current} · {enc.size[0]}×{enc.size[1]}", width=width_within(shown.image, 640, 480))
    for note in shown.notes:
        st.caption(plain(note))
    classes = list(exp_all.class_names)
    st.selectbox("True class, if you know it", [UNKNOWN, *classes], index=([UNKNOWN, *classes]).index(truth(current) or UNKNOWN),
                 key=f"truth_{current}", on_change=lambda: true_labels.update({current: st.session_state[f"truth_{current}"]}),
                 help="Read from the file name when it names a class (as the demo birds' names do). Images whose true "
                      "class is known and missed are marked in the gallery.")
with head[1]:
    pred = top_classes["class"][0]
    st.markdown(f"### Predicted: **{pred}** ({top_classes['probability'][0]:.1%})")
    known = truth(current)
    if known == pred:
        st.markdown(":green[:material/check: the true class]")
    elif known is not None:
        st.markdown(f":red[:material/close: **missed**: the true class is **{plain(known)}** "
                    f"({exp_all.probs[i, classes.index(known)]:.1%})]")
    st.html(charts.probability_bars(top_classes, "Top classes"))
    share = float(exp_all.residual_share()[i])
    if share > 0:
        st.caption(f"The residual head (not concepts) carries {share:.0%} of this prediction's evidence.")
    reliability_panel.ood_notice(pipe, enc, exp_all, i)  # is this image like the training data?

c1, c2 = st.columns(2)
with c1:
    st.html(charts.contribution_bars(directions, f"Concepts behind '{pred}': contributions to its score"))


@st.fragment
def why_not() -> None:
    """A fragment: choosing another class re-draws the two waterfalls only."""
    ranked = [classes[k] for k in exp_all.top_classes(len(classes))[i].tolist()][1:]  # the runner-up first
    other = st.selectbox("Why not…?", ranked, key=f"why_not_{current}",
                         format_func=lambda c: f"{c} ({exp_all.probs[i, classes.index(c)]:.1%})",
                         help="The other classes, most likely first: the runner-up is the one to compare with.")
    k = classes.index(other)
    against = concept_directions(exp_all, i, k)
    st.html(charts.waterfall_bars(exp_all.waterfall(i), dict(zip(directions.concept, directions.direction)),
                                  f"Why {pred}: its score, concept by concept"))
    st.html(charts.waterfall_bars(exp_all.waterfall(i, k), dict(zip(against.concept, against.direction)),
                                  f"Why not {other}: its score, concept by concept"))
    st.caption(common.SCORE_UNITS)


with c2:
    why_not()


@st.fragment
def where() -> None:
    """A fragment: another method or concept re-computes the maps only. The overlay opacity is set in
    the browser (ui/saliency_panel.js), so moving it re-runs nothing at all."""
    st.subheader("Where does the model see each concept?")
    controls = st.columns([3, 4])
    method = controls[0].radio("Method", pipe.map_methods(), horizontal=True, key="sal_method",
                               help="  \n".join(f"**{m}**: {MAP_METHODS[m]}." for m in pipe.map_methods()))
    chosen = controls[1].multiselect("Concepts", list(pipe.model.concepts.names), default=default_concepts,
                                     key=f"sal_concepts_{current}", wrap=True)  # whole names, never cut off
    if not chosen:
        return
    size = overlay_size(enc.size)  # never a 0-pixel side, however thin the image
    with st.spinner("Computing maps…"):
        maps, grid = saliency_maps(pipe, enc, method, chosen, size)
    shown_image = display_image(images[current], current).image.resize(size)
    seen = seen_region(enc.size, pipe.backbone.resize_mode, size)
    rows = directions.set_index("concept")
    found = reliability_panel.locations(pipe, enc, method, chosen, maps)  # is each map on its evidence?
    saliency_panel(shown_image, [
        ConceptMap(name, heat_layer(maps[k], seen), bool(rows.loc[name].present),
                   f"{'present' if rows.loc[name].present else 'absent'} (p{rows.loc[name].percentile:.0f})"
                   + (f" · pushes {rows.loc[name].pushes} {pred} ({rows.loc[name].contribution:+.2f})"
                      if rows.loc[name].contribution != 0 else f" · does not count towards {pred}")
                   + reliability_panel.location_caption(found, name))
        for k, name in enumerate(chosen)], seen, key="saliency_maps")
    # the maps' true resolution, so nobody reads a blob as a pixel-exact outline
    st.caption(f"These maps have {grid[0]} × {grid[1]} cells over the region the model saw: they say which part of "
               f"the image holds a concept's evidence, not its exact outline.")


where()
reliability_panel.explanation_section(pipe, exp_all, i, enc, st.session_state["sal_method"])

# Share: every image on this page in one self-contained report (made when a button is clicked).
report_button.explanation_section(pipe, {name: images[name] for name in names}, key="inspect_report")
