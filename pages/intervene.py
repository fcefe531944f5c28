"""Intervene: switch concepts off or set them, and watch the prediction move — live."""
from __future__ import annotations

import streamlit as st

from cbm_core import CBMError, HeadSlice, ImageError, Intervention, counterfactual
from cbm_core.explain.head_slice import apply_settings
from ui import common, live_panel, report_button, sidebar, tti_panel
from ui.images import display_image, plain, width_within

pipe = sidebar.open_page("Intervene",
                         "Switch a concept off (to its typical 'absent' level) or set how strongly it is present, and see "
                         "the class probabilities change. Every change is recorded: undo, redo, export.")
model = pipe.model
images = common.session_images()
if not images:
    # The demo's story bird (see common.STORY), after a bird of its species on its usual background.
    for path in common.sample_paths()[:1] + [p for p in common.sample_paths() if common.sample_name(p) == common.STORY_BIRD]:
        images[common.sample_name(path)] = path.read_bytes()
names = list(images)
default = names.index(st.session_state["current_image"]) if st.session_state.get("current_image") in names else len(names) - 1
current = st.selectbox("Image", names, index=default, key="intervene_image")
try:
    enc = pipe.encode(images[current], current)
except ImageError as exc:
    st.error(plain(str(exc)))  # quotes the file's name: a stranger's text, shown as written
    st.stop()

# -- state: a history of interventions (tuples of changes) and a position in it ----------------
state = st.session_state
if state.get("intervene_for") != (current, state.get("bundle_path"), len(model.edit_log)):
    state["intervene_for"] = (current, state.get("bundle_path"), len(model.edit_log))
    state["history"], state["history_pos"] = [()], 0
LIVE_KEY = "live_panel"


def active() -> Intervention:
    return Intervention(state["history"][state["history_pos"]])


def push(intervention: Intervention) -> None:
    state["history"] = state["history"][: state["history_pos"] + 1] + [intervention.changes]
    state["history_pos"] = len(state["history"]) - 1


def apply_browser_edit() -> None:
    """Fold the live panel's latest finished change into the history (one entry per change)."""
    edit = live_panel.pending_edit(LIVE_KEY, state.get("live_ack", 0))
    if edit is None:
        return
    seq, settings = edit
    state["live_ack"] = seq
    known = set(model.concepts.names)
    changed = apply_settings(active(), {name: s for name, s in settings.items() if name in known})
    if set(changed.changes) != set(active().changes):
        push(changed)


def move(step: int) -> None:
    state["history_pos"] = max(0, min(len(state["history"]) - 1, state["history_pos"] + step))


def reset() -> None:
    push(Intervention())


def apply_counterfactual(target: str) -> None:
    cf = counterfactual(model, enc.embedding, target)
    state["cf_message"] = (
        (f"Changing {len(cf.changes)} concept{'s' * (len(cf.changes) != 1)} makes it **{target}**: "
         + ", ".join(f"{n} → p{p:.0f}" for n, _, _, p in cf.changes)) if cf.success else
        f"No change within the observed 5th–95th percentile range makes it {target}.")
    if cf.success:
        push(cf.intervention)


original = pipe.explain_encoded([enc])
# Fixed for this image, so computed once per page run, not on every live change.
ORDER = original.contributions(int(original.predicted[0]))[0].abs().argsort(descending=True, stable=True).tolist()
RELEVANT = set((model.weight[original.top_classes(3)[0]] != 0).any(dim=0).nonzero().flatten().tolist())


@st.fragment
def live() -> None:
    apply_browser_edit()
    iv = active()
    bar = st.columns([1, 1, 1, 4])
    bar[0].button("Undo", icon=":material/undo:", on_click=move, args=(-1,), disabled=state["history_pos"] == 0,
                  width="stretch")
    bar[1].button("Redo", icon=":material/redo:", on_click=move, args=(1,),
                  disabled=state["history_pos"] >= len(state["history"]) - 1, width="stretch")
    bar[2].button("Reset", on_click=reset, disabled=not iv, width="stretch")
    bar[3].caption(("Active: " + "; ".join(iv.describe())) if iv else "No changes yet.")
    filters = st.columns([3, 3, 4])
    query = filters[0].text_input("Search concepts", key="concept_search", placeholder="e.g. beak")
    only = filters[1].toggle("Only relevant concepts", value=True, key="only_relevant",
                             help="Only concepts with a non-zero weight for one of the three most likely classes.")
    shown = [k for k in ORDER if (not only or k in RELEVANT) and query.lower() in model.concepts.names[k].lower()]
    filters[2].caption(f"{len(shown)} of {model.n_concepts} concepts, sorted by their effect on the original "
                       "prediction" + (" (the first 40 shown; narrow the search for others)" if len(shown) > 40 else ""))
    shown_names = [model.concepts.names[k] for k in shown[:40]]
    live_panel.live_panel(HeadSlice.from_model(model, enc.embedding, shown_names, iv), state.get("live_ack", 0),
                          LIVE_KEY)
    st.download_button("Export this intervention (JSON)", iv.to_json(), file_name="intervention.json",
                        mime="application/json", disabled=not iv)
    # In the fragment, so the report holds the changes on screen now; the smallest change is for the class chosen below.
    report_button.explanation_section(pipe, {current: images[current]}, key="intervene_report",
                                      intervention=iv or None, ask_spurious=False,
                                      counterfactual=state.get("cf_target") or report_button.RUNNER_UP)


top_row = st.columns([5, 4], gap="large")
with top_row[0]:
    was = original.class_names[int(original.predicted[0])]
    st.markdown(f"Originally predicted: **{was}** ({float(original.probs[0].max()):.1%}).")
    st.caption("Toggle a concept off to set it to its typical 'absent' level (the training mean); drag its slider to "
               "set it to a percentile of the training images. The charts on the right follow every change.")
    st.caption(common.SCORE_UNITS)
shown = display_image(images[current], current)  # the decoded first frame, bounded: never the raw upload
top_row[1].image(shown.image, width=width_within(shown.image, 200, 260))
tti_panel.section(model, enc.embedding, active, push, state["intervene_for"])  # expert questions (supervised bundles)
live()

st.divider()
cf_cols = st.columns([2, 2, 3])
target = cf_cols[0].selectbox("What would make it…", [c for c in model.classes
                                                     if c != original.class_names[int(original.predicted[0])]],
                              key="cf_target")
cf_cols[1].button("Find the fewest changes", width="stretch", on_click=apply_counterfactual, args=(target,), key="cf_go")
if state.get("cf_message"):
    cf_cols[2].info(state["cf_message"])

upload = st.file_uploader("Import an intervention", type=["json"], key="iv_import")
if upload is not None and state.get("iv_imported") != upload.file_id:
    state["iv_imported"] = upload.file_id
    try:
        iv = Intervention.from_json(upload.getvalue().decode("utf-8", errors="replace"))
        for c in iv.concepts:
            model.concepts.index(c)
        push(iv)
        st.rerun()
    except (CBMError, UnicodeError) as exc:
        st.error(f"Could not import '{upload.name}': {exc}")
