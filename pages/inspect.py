"""Inspect: upload images, see the prediction, the concepts behind it, and where they are."""
from __future__ import annotations


import streamlit as st

from cbm_core import ImageError, decode_image, overlay
from ui import charts, common, sidebar

pipe = sidebar.open_page("Inspect", "Upload images (or pick demo birds) to see what the model predicts, which concepts "
                                    "drive it, and where in the image it sees them.")
images = common.session_images()

with st.container(border=True):
    left, right = st.columns([3, 2])
    uploads = left.file_uploader("Upload images", type=["png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff"],
                                 accept_multiple_files=True, key="inspect_uploads")
    for up in uploads or []:
        if up.name in images:
            continue
        data = up.getvalue()
        try:
            pipe.encode(data, up.name)  # decode + encode once; the result is cached by content hash
        except ImageError as exc:
            left.error(str(exc))
            continue
        images[up.name] = data
    samples = {p.stem.split("_", 1)[1].replace("_", " "): p for p in common.sample_paths()}
    picked = right.multiselect("…or add demo birds", list(samples), key="inspect_samples",
                               placeholder="e.g. azure diver on water")
    for name in picked:
        if name not in images:
            images[name] = samples[name].read_bytes()
    if images and right.button("Clear images"):
        images.clear()
        st.rerun()

if not images:
    st.info("No image yet. Upload one, or add a demo bird on the right — try *azure diver on land*: a waterbird "
            "on the 'wrong' background.")
    st.stop()

encoded = {}
with st.spinner("Encoding images…"):
    for name, data in list(images.items()):
        try:
            encoded[name] = pipe.encode(data, name)
        except ImageError as exc:
            st.error(str(exc))
            images.pop(name)
names = list(encoded)
exp_all = pipe.explain_encoded([encoded[n] for n in names])
pred_names = [exp_all.class_names[int(i)] for i in exp_all.predicted]

if len(names) > 1:
    st.subheader("Gallery")
    classes = sorted(set(pred_names))
    keep = st.multiselect("Filter by predicted class", classes, key="gallery_filter")
    shown = [i for i, p in enumerate(pred_names) if not keep or p in keep]
    cols = st.columns(4)
    for slot, i in enumerate(shown):
        with cols[slot % 4].container(border=True):
            st.image(images[names[i]], width="stretch")
            prob = float(exp_all.probs[i].max())
            st.markdown(f"**{pred_names[i]}** · {prob:.0%}")
            top = exp_all.to_frame(i).head(3)
            st.caption(" · ".join(f"{c} ({v:+.1f})" for c, v in zip(top.concept, top.contribution)))
            st.caption(names[i])

st.subheader("One image in detail")
current = st.selectbox("Image", names, index=len(names) - 1, key="inspect_current")
st.session_state["current_image"] = current
i = names.index(current)
enc = encoded[current]
frame = exp_all.to_frame(i)
top_classes = exp_all.classes_frame(i, k=min(5, len(exp_all.class_names)))

head = st.columns([2, 3])
with head[0]:
    st.image(images[current], caption=f"{current} · {enc.size[0]}×{enc.size[1]}", width="stretch")
with head[1]:
    pred = top_classes["class"][0]
    st.markdown(f"### Predicted: **{pred}** ({top_classes['probability'][0]:.1%})")
    st.plotly_chart(charts.probabilities(top_classes, "Top classes"), width="stretch")
    share = float(exp_all.residual_share()[i])
    if share > 0:
        st.caption(f"The residual head (not concepts) carries {share:.0%} of this prediction's evidence.")

c1, c2 = st.columns(2)
with c1:
    st.plotly_chart(charts.concepts(frame, f"Concepts behind '{pred}'"), width="stretch")
    st.caption("Bar: contribution to the class (blue for, red against). Label: the score's percentile among training images.")
with c2:
    other = st.selectbox("Why not…?", [c for c in exp_all.class_names if c != pred], key="why_not")
    both = st.radio("Waterfall for", [pred, other], horizontal=True, key="waterfall_for")
    st.plotly_chart(charts.waterfall(exp_all.waterfall(i, exp_all.class_names.index(both))), width="stretch")

st.subheader("Where does the model see each concept?")
controls = st.columns([2, 2, 3])
method = controls[0].radio("Method", ["dense", "dense-surgery", "gradcam"], horizontal=True, key="sal_method",
                           help="dense: forward-only maps for all concepts at once (default). dense-surgery: removes "
                                "what all concepts share. gradcam: gradient maps, one batched backward pass.")
opacity = controls[1].slider("Opacity", 0.0, 1.0, 0.6, 0.05, key="sal_opacity")
default = [c for c in frame.concept if c in set(frame[frame.contribution > 0].concept)][:3] or list(frame.concept[:3])
chosen = controls[2].multiselect("Concepts", list(pipe.model.concepts.names), default=default, key=f"sal_concepts_{current}")
if chosen:
    image = decode_image(images[current], current)
    width = min(320, image.width * 3)
    size = (width, round(image.height * width / image.width))
    with st.spinner("Computing maps…"):
        maps = pipe.saliency(enc, method, chosen, out_size=size)
    shown_image = image.resize(size)
    cols = st.columns(min(4, len(chosen)))
    for k, name in enumerate(chosen):
        row = frame[frame.concept == name].iloc[0]
        cols[k % len(cols)].image(overlay(shown_image, maps[k], opacity),
                                  caption=f"{name} · score p{row.percentile:.0f} · {row.contribution:+.2f}",
                                  width="stretch")
