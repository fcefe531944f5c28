"""Compare: every recipe and the baselines on one feature cache, at matched sparsity."""
from __future__ import annotations

import threading
import time

import pandas as pd
import streamlit as st

from cbm_core import CBMError, ConceptBank, ImageDataset, extract_features
from cbm_core.analysis.comparison import DEFAULT_BASELINES, compare_recipes, stratified_split
from cbm_core.core.concepts import load_candidate_pool, load_vocabulary
from cbm_core.data.images import printable
from cbm_core.demo.paths import TOYBIRDS_POOL, TOYBIRDS_VOCABULARY
from cbm_core.demo.splits import CONCEPT_TEMPLATE, toybirds_features
from cbm_core.demo.world import CONCEPTS
from cbm_core.recipes import RecipeInputs, get_recipe
from ui import charts, common, recipe_controls, report_button, sidebar

pipe = sidebar.open_page(
    "Compare recipes",
    "Every recipe fitted on the same encoded images, its sparsity chosen on the validation split, measured once on "
    "the test split — at the same number of effective concepts per class (NEC), beside a linear probe, random "
    "concepts and zero-shot CLIP. A CBM is only honest at matched sparsity.")
state = st.session_state

source = st.radio("Data", ["Toy Birds (4,000 train · 1,600 validation · 1,600 test)", "A dataset on disk"],
                  horizontal=True, key="compare_source")
demo = source.startswith("Toy")
data_path = None
if not demo:
    cols = st.columns([4, 2])
    data_path = cols[0].text_input("Folder of class sub-folders, or a CSV manifest (split 60/20/20 per class)",
                                   key="compare_path")
    spec = cols[1].text_input("Backbone", value=pipe.model.backbone_spec, key="compare_backbone")
    concepts_file = st.file_uploader("Concept list (.txt, .csv, .json)", type=["txt", "csv", "json"], key="compare_concepts")
    pool_file = st.file_uploader("Candidate sentences per class, for LaBo (class<TAB>sentence)", type=["tsv", "txt"],
                                 key="compare_pool")
    vocab_file = st.file_uploader("Vocabulary, for DN-CBM (one word or phrase per line)", type=["txt"], key="compare_vocab")
    template = st.text_input("Prompt template", "a photo of {}.", key="compare_template")

cols = st.columns([4, 1])
chosen = cols[0].multiselect("Recipes", recipe_controls.recipe_names(), default=recipe_controls.recipe_names(),
                             format_func=recipe_controls.recipe_title, key="compare_recipes")
nec = cols[1].number_input("Match NEC", 1.0, 50.0, 5.0, 1.0, key="compare_nec",
                           help="Effective concepts per class every recipe is held to.")
params = {}
with st.expander("Recipe options (defaults as declared by each recipe)"):
    for name in chosen:
        st.markdown(f"**{recipe_controls.recipe_title(name)}**")
        params[name] = recipe_controls.param_controls(get_recipe(name), "compare", nested=True)


def _inputs_from_uploads(classes, backbone):
    bank = ConceptBank.from_text(concepts_file.getvalue().decode("utf-8-sig"), concepts_file.name) if concepts_file else None
    pool = load_candidate_pool(recipe_controls.saved_upload(pool_file), classes) if pool_file else None
    vocabulary = load_vocabulary(recipe_controls.saved_upload(vocab_file)) if vocab_file else None
    return RecipeInputs(classes=tuple(classes), backbone_spec=backbone.spec, text=backbone.embed_prompts,
                        templates=(template,), concepts=bank, candidate_pool=pool, vocabulary=vocabulary,
                        embed_dim=backbone.embed_dim)


def run_job(job: dict, args: dict) -> None:
    """Runs in a background thread: no st.* calls here, only the job dict."""
    try:
        def progress(stage, frac):
            job["stage"], job["fraction"] = stage, frac

        backbone = args["backbone"]
        if args["demo"]:
            splits = [toybirds_features(backbone, s, progress=lambda d, t, s=s: progress(f"encoding Toy Birds {s}", d / t))
                      for s in ("train", "val", "test")]
            inputs = RecipeInputs(classes=args["classes"], backbone_spec=backbone.spec, text=backbone.embed_prompts,
                                  templates=(CONCEPT_TEMPLATE,), concepts=ConceptBank(tuple(CONCEPTS)),
                                  candidate_pool=load_candidate_pool(TOYBIRDS_POOL, args["classes"]),
                                  vocabulary=load_vocabulary(TOYBIRDS_VOCABULARY), embed_dim=backbone.embed_dim)
        else:
            data = (ImageDataset.from_csv(args["path"]) if args["path"].lower().endswith(".csv")
                    else ImageDataset.from_folder(args["path"]))
            feats = extract_features(backbone, data, progress=lambda d, t: progress("encoding images", d / t))
            job["skipped"] = list(feats.skipped)
            splits = stratified_split(feats, classes=data.classes)
            inputs = args["make_inputs"](data.classes, backbone)
        job["result"] = compare_recipes(*splits, inputs, args["recipes"], nec=args["nec"], baselines=DEFAULT_BASELINES,
                                        progress=progress)
    except CBMError as exc:
        job["error"] = str(exc)
    except Exception as exc:  # shown in the page; the session stays
        job["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        job["finished"] = time.time()
        job["done"] = True


job = state.get("compare_job")
running = job is not None and not job.get("done")
ready = bool(chosen) and (demo or bool(data_path))
if st.button("Run the comparison", type="primary", disabled=not ready or running, key="compare_go"):
    try:
        backbone = pipe.backbone if demo else common.cached_backbone(spec, None, None)
    except CBMError as exc:
        st.error(str(exc))
        st.stop()
    job = {"stage": "starting", "fraction": 0.0, "done": False, "started": time.time()}
    args = dict(demo=demo, backbone=backbone, classes=tuple(pipe.model.classes), path=data_path,
                recipes={name: params.get(name, {}) for name in chosen}, nec=float(nec),
                make_inputs=None if demo else _inputs_from_uploads)
    threading.Thread(target=run_job, args=(job, args), daemon=True).start()
    state["compare_job"] = job
    st.rerun()
if demo and not running and job is None:
    st.caption("The first run encodes the 4,000 training birds once (a minute or two on a laptop); later runs read "
               "them from the feature cache. Fitting every recipe takes a few minutes on a CPU.")


@st.fragment(run_every=1.0)
def progress_panel() -> None:
    job = state.get("compare_job")
    if job is None or job.get("done"):
        if job is not None and not job.get("shown"):
            job["shown"] = True
            st.rerun(scope="app")
        return
    st.progress(min(1.0, job["fraction"]), text=f"{job['stage']}… ({time.time() - job['started']:.0f} s)")


progress_panel()
job = state.get("compare_job")
if job is not None and job.get("done"):
    if job.get("error"):
        st.error(f"The comparison failed: {job['error']}")
        st.stop()
    result = job["result"]
    st.success(f"Compared {len(result.rows)} recipes and baselines in {job['finished'] - job['started']:.0f} s "
               f"({result.n_train} training, {result.n_val} validation, {result.n_test} test images).")
    if job.get("skipped"):
        with st.expander(f"{len(job['skipped'])} image{'s' * (len(job['skipped']) != 1)} could not be read and were "
                         "left out"):
            st.text("\n".join(f"{printable(path)}: {why}" for path, why in job["skipped"]))  # strangers' file names
    table = pd.DataFrame([{
        "recipe": r.recipe + (" (baseline)" if r.baseline else ""),
        f"test accuracy at NEC ≤ {result.nec:g}": r.at_nec.get("accuracy"),
        "worst group": r.at_nec.get("worst_group"),
        "NEC reached": r.at_nec.get("nec"),
        "test accuracy as fitted": r.accuracy, "NEC as fitted": r.nec,
        "fit time (s)": r.fit_seconds, "how the sparsity was matched": r.at_nec.get("how") or r.error} for r in result.rows])
    st.dataframe(table.style.format({c: "{:.1%}" for c in table.columns if "accuracy" in c or c == "worst group"}
                                    | {"NEC reached": "{:.1f}", "NEC as fitted": "{:.1f}", "fit time (s)": "{:.1f}"},
                                    na_rep="–"),
                 hide_index=True, width="stretch")
    st.plotly_chart(charts.nec_curves(result.rows, result.nec), width="stretch")
    random_row = next((r for r in result.rows if r.recipe == "random-concepts" and r.at_nec), None)
    if random_row:
        best = max((r for r in result.rows if not r.baseline and r.at_nec), key=lambda r: r.at_nec["accuracy"], default=None)
        if best is not None:
            gap = (best.at_nec["accuracy"] - random_row.at_nec["accuracy"]) * 100
            st.caption(f"At NEC ≤ {result.nec:g}, the best recipe ({best.recipe}) beats random concept directions by "
                       f"{gap:+.1f} points. A small gap means the named concepts add little beyond what any "
                       f"directions in this embedding carry — read their names with care.")
    # Share: the session's model card with this comparison in it.
    report_button.model_card_section(state["model"], key="compare_report", comparison=result)
    opened = st.selectbox("Open a compared model in the dashboard (as fitted)",
                          [r.recipe for r in result.rows if r.model is not None], key="compare_open")
    if st.button("Use it now", key="compare_use"):
        common.use_unsaved(next(r.model for r in result.rows if r.recipe == opened))
        st.rerun(scope="app")
