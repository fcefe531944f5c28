"""Build: a CBM for your own images and concepts — backbone, dataset, concepts, recipe, sparsity."""
from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import streamlit as st

from cbm_core import BundleError, CBMError, ConceptBank, ImageDataset, build_cbm
from cbm_core.core.concepts import load_candidate_pool, load_vocabulary
from cbm_core.demo.paths import TOYBIRDS_POOL, TOYBIRDS_VOCABULARY
from cbm_core.recipes import get_recipe
from cbm_core.demo.world import CONCEPTS, export
from ui import charts, common, recipe_controls, sidebar

DEMO_TEMPLATE = "a bird with {}."

sidebar.ensure_drawn()  # no-op under app.py; a deep link straight to this file still gets the sidebar
st.title("Build a model")
st.caption("Bring a backbone, labelled images and a list of concepts; get a concept bottleneck model you can "
           "inspect, edit and share. Long steps run in the background with progress; nothing done is lost if a later step fails.")

state = st.session_state

# -- 1. backbone ---------------------------------------------------------------------------------
st.subheader("1 · Backbone")
kinds = {"Toy Birds demo model": "demo", "open_clip name + pretrained tag": "ViT-B-32:openai",
         "Hugging Face Hub (hf-hub:)": "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
         "Local folder or checkpoint": "local-dir:/path/to/model"}
kind = st.selectbox("Backbone", list(kinds), key="build_backbone_kind")
spec = st.text_input("Spec", value=kinds[kind], key=f"build_spec_{kind}", disabled=kind.startswith("Toy"),
                     help="open_clip model name + tag (e.g. ViT-B-32:openai), hf-hub:org/repo, local-dir:/path, "
                          "or MODEL:/path/to/checkpoint. Weights download once where there is a network.")

# -- 2. dataset ----------------------------------------------------------------------------------
st.subheader("2 · Images")
source = st.radio("Dataset", ["Toy Birds (generated now)", "Folder of class sub-folders", "CSV manifest"],
                  horizontal=True, key="build_source")
data_path, train_split, val_split, n_toy, allow_outside = None, None, None, 0, False
if source.startswith("Toy"):
    n_toy = st.select_slider("Training birds", [160, 400, 800, 1600], value=400, key="build_n_toy")
elif source.startswith("Folder"):
    data_path = st.text_input("Folder (one sub-folder per class)", key="build_folder")
else:
    cols = st.columns([3, 1, 1])
    data_path = cols[0].text_input("CSV with path, label[, group, split, 0/1 concept columns]", key="build_csv")
    train_split = cols[1].text_input("Train split", key="build_train_split", placeholder="train") or None
    val_split = cols[2].text_input("Validation split", key="build_val_split", placeholder="val") or None
    allow_outside = st.checkbox("Allow image paths outside the CSV's folder", key="build_allow_outside",
                                help="Absolute paths or paths with '..' are refused by default: a CSV from someone "
                                     "else should not make the tool read files elsewhere on this computer.")

# -- 3. concepts ---------------------------------------------------------------------------------
st.subheader("3 · Concepts")
upload = st.file_uploader("Upload a concept list (.txt one per line, .csv with a 'concept' column, .json)",
                          type=["txt", "csv", "json"], key="build_concept_file")
initial = list(CONCEPTS) if source.startswith("Toy") else []
if upload is not None:
    try:
        initial = list(ConceptBank.from_text(upload.getvalue().decode("utf-8-sig"), upload.name).names)
    except (CBMError, UnicodeError) as exc:
        st.error(f"{upload.name}: {exc}")
edited = st.data_editor(pd.DataFrame({"concept": initial}), num_rows="dynamic", width="stretch",
                        key=f"build_concepts_{upload.file_id if upload else source}", height=240)
bank = None
typed = [x.strip() for x in edited["concept"].tolist() if isinstance(x, str) and x.strip()]  # blank rows are unused rows
if not typed:
    st.info("Add concepts: type them in the table (one per row) or upload a list.")
else:
    try:
        bank = ConceptBank.from_list(typed, source=f"file:{upload.name}" if upload else "user")
        st.caption(f"✓ {len(bank)} valid concepts")
    except CBMError as exc:
        st.error(str(exc))
cols = st.columns(3)
if kind.startswith("Toy"):
    # The demo model learnt concept text from captions "a bird with …": its template is fixed, so the
    # field shows it and cannot be edited (rather than taking input it would ignore).
    templates = [DEMO_TEMPLATE]
    cols[0].text_input("Prompt template", DEMO_TEMPLATE, key="build_templates_demo", disabled=True,
                       help="The Toy Birds demo model was trained on captions 'a bird with …'; other backbones take "
                            "your own templates here.")
else:
    templates = [t.strip() for t in cols[0].text_input(
        "Prompt templates (separate with |)", "a photo of {}.", key="build_templates",
        help="Each concept is embedded in every template ({} is the concept) and the vectors averaged.").split("|")
        if t.strip()]
dedupe = class_sim = None
if cols[1].checkbox("Drop near-duplicate concepts", key="build_use_dedupe",
                    help="Removes the later of two concepts whose text vectors are this similar; the report says which."):
    dedupe = cols[1].number_input("above cosine", 0.0, 1.0, 0.95, 0.01, key="build_dedupe")
if cols[2].checkbox("Drop concepts too close to a class name", key="build_use_classsim",
                    help="A concept that restates a class name leaks the label; the report says which were removed."):
    class_sim = cols[2].number_input("above cosine", 0.0, 1.0, 0.9, 0.01, key="build_classsim")

# -- 4. recipe (controls generated from the recipe's declaration) -----------------------------------
st.subheader("4 · Recipe and sparsity")
recipe_name = st.selectbox("Recipe", recipe_controls.recipe_names(include_baselines=True), key="build_recipe",
                           format_func=recipe_controls.recipe_title,
                           help="Every recipe gives the same kind of model: inspect, intervene, edit and compare any of them.")
recipe = get_recipe(recipe_name)
st.caption(recipe.summary + (f" — {recipe.paper}" if recipe.paper else ""))
params = recipe_controls.param_controls(recipe, "build", main=("residual",))


def recipe_input(label: str, types: list[str], key: str, toy_default, missing: str, load, describe):
    """An extra input a recipe needs (a file upload; the Toy Birds one by default on Toy Birds): the
    loaded value, or None with the reason shown."""
    upload = st.file_uploader(label, type=types, key=key)
    path = recipe_controls.saved_upload(upload) if upload else (toy_default if source.startswith("Toy") else None)
    if path is None:
        st.info(f"{recipe.name} needs {missing}.")
        return None
    try:
        value = load(path)
    except CBMError as exc:
        st.error(str(exc))
        return None
    st.caption(f"✓ {describe(value)}" + ("" if upload else " (shipped with the Toy Birds demo)"))
    return value


pool = vocabulary = None
if "candidate_pool" in recipe.needs:
    pool = recipe_input("Candidate sentences per class ('class<TAB>sentence' lines)", ["tsv", "txt"], "build_pool",
                        TOYBIRDS_POOL, "a pool of candidate concept sentences per class", load_candidate_pool,
                        lambda p: f"{sum(map(len, p.values()))} candidate sentences for {len(p)} classes")
if "vocabulary" in recipe.needs:
    vocabulary = recipe_input("Vocabulary to name learned concepts (one word or phrase per line)", ["txt"],
                              "build_vocabulary", TOYBIRDS_VOCABULARY, "a vocabulary to name the concepts it discovers",
                              load_vocabulary, lambda v: f"{len(v)} words")
labels_missing = "concept_labels" in recipe.needs and source.startswith("Folder")
if "concept_labels" in recipe.needs:
    if labels_missing:  # a folder says only the class of each image
        st.warning(f"{recipe.name} learns its concepts from 0/1 concept labels per image, and a folder of class "
                   "sub-folders has none. Use a CSV manifest with one 0/1 column per concept (blank = unknown), "
                   "or the Toy Birds dataset, which has them.")
    elif not source.startswith("Toy"):
        st.caption(f"{recipe.name} learns its concepts from the CSV's 0/1 concept columns (blank = unknown); "
                   "the build stops and says so if it has none.")
if "concepts" not in recipe.needs:
    st.caption(f"{recipe.name} does not use the concept list above: its concepts come from "
               + ("the candidate pool." if "candidate_pool" in recipe.needs else
                  "the vocabulary." if "vocabulary" in recipe.needs else "the recipe itself."))
with_path = st.checkbox("Also compute the sparsity path (accuracy vs concepts per class)", value=True, key="build_path")


def run_job(job: dict, args: dict) -> None:
    """Runs in a background thread: no st.* calls here, only the job dict."""
    try:
        def progress(stage, frac):
            job["stage"], job["fraction"] = stage, frac

        backbone = common.cached_backbone(args["spec"], None, None)
        if args["n_toy"]:
            progress("drawing Toy Birds", 0.0)
            folder = Path(tempfile.mkdtemp(prefix="toybirds_"))
            manifest = export(folder, {"train": args["n_toy"], "val": max(80, args["n_toy"] // 4)})
            train, val = ImageDataset.from_csv(manifest, split="train"), ImageDataset.from_csv(manifest, split="val")
        else:
            path = Path(args["data_path"])
            if path.suffix.lower() == ".csv":
                outside = args["allow_outside"]
                train = ImageDataset.from_csv(path, split=args["train_split"], allow_outside=outside)
                val = ImageDataset.from_csv(path, split=args["val_split"], allow_outside=outside) if args["val_split"] else None
            else:
                train, val = ImageDataset.from_folder(path), None
        job["result"] = build_cbm(backbone, train, args["bank"], val=val, templates=args["templates"],
                                  recipe=args["recipe"], candidate_pool=args["pool"], vocabulary=args["vocabulary"],
                                  dedupe=args["dedupe"], class_similarity=args["class_sim"],
                                  with_path=args["with_path"], progress=progress, **args["params"])
    except CBMError as exc:
        job["error"] = str(exc)
    except Exception as exc:  # shown in the page; the session and earlier results stay
        job["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        job["finished"] = time.time()  # the clock stops here, not when the page next looks
        job["done"] = True


inputs_ready = (("concepts" not in recipe.needs or bank is not None)
                and ("candidate_pool" not in recipe.needs or pool is not None)
                and ("vocabulary" not in recipe.needs or vocabulary is not None) and not labels_missing)
ready = inputs_ready and (n_toy or data_path)
job = state.get("build_job")
running = job is not None and not job.get("done")
if st.button("Build", type="primary", disabled=not ready or running):
    job = {"stage": "starting", "fraction": 0.0, "done": False, "started": time.time()}
    args = dict(spec="demo" if kind.startswith("Toy") else spec, n_toy=n_toy, data_path=data_path,
                train_split=train_split, val_split=val_split, bank=bank, templates=templates or ["{}"],
                allow_outside=allow_outside, recipe=recipe.name, params=params, pool=pool, vocabulary=vocabulary,
                dedupe=dedupe, class_sim=class_sim, with_path=with_path)
    threading.Thread(target=run_job, args=(job, args), daemon=True).start()
    state["build_job"] = job
    st.rerun()


def progress_panel() -> None:
    """While a build runs this re-runs every second on its own (a fragment); once the build is done it
    re-runs the whole page once, so the Build button is live again and the sidebar offers the model."""
    job = state.get("build_job")
    if job is None:
        return
    if not job.get("done"):
        st.progress(min(1.0, job["fraction"]), text=f"{job['stage']}… ({time.time() - job['started']:.0f} s)")
        return
    if not job.get("shown"):
        job["shown"] = True
        if "result" in job:
            common.keep_build(job["result"])
        st.rerun(scope="app")
    if job.get("error"):
        st.error(f"The build failed: {job['error']}")
        return
    result = job["result"]
    model = result.model
    kept = common.build_features(model)
    st.success(f"Built in {job['finished'] - job['started']:.0f} s. *Use it now* makes it this session's model"
               + (", and Edit and Evaluate can measure it on the data it was built on ("
                  + " and ".join(f"{len(feats.labels)} {split} images" for split, feats in kept.items()) + ")."
                  if kept else "."))
    cols = st.columns(4)
    cols[0].metric("Validation accuracy", f"{result.val_metrics.accuracy:.1%}")
    cols[1].metric("Worst group", "–" if result.val_metrics.worst_group is None else f"{result.val_metrics.worst_group:.1%}")
    cols[2].metric("Concepts per class", f"{model.sparsity()['nec']:.1f}")
    cols[3].metric("Concepts kept", f"{model.n_concepts}")
    if result.removed_concepts.removed:
        with st.expander(f"{len(result.removed_concepts)} concepts were filtered out"):
            st.dataframe(result.removed_concepts.to_frame(), hide_index=True, width="stretch")
    if result.skipped_images:
        with st.expander(f"{len(result.skipped_images)} images were unreadable and skipped"):
            st.dataframe(pd.DataFrame(result.skipped_images, columns=["image", "reason"]), hide_index=True)
    if result.path:
        st.plotly_chart(charts.lambda_path(result.path, model.sparsity()["nec"], result.val_metrics.accuracy,
                                           model.recipe.get("lam")), width="stretch")
    cols = st.columns([3, 1, 1])
    target = cols[0].text_input("Save as", value="models/my-cbm", key="build_save_path")
    if cols[1].button("Save bundle"):
        path = Path(target) if Path(target).is_absolute() else common.ROOT / target
        try:
            model.save(path)
            st.success(f"Saved to {path}.")
        except (BundleError, OSError) as exc:
            st.error(str(exc))
    if cols[2].button("Use it now"):
        common.use_unsaved(model)
        st.rerun(scope="app")


st.fragment(progress_panel, run_every=1.0 if running else None)()
