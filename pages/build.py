"""Build: a CBM for your own images and concepts — backbone, dataset, concepts, recipe, sparsity."""
from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from cbm_core import BundleError, CBMError, ConceptBank, ImageDataset, build_cbm
from cbm_core.demo.world import CONCEPTS, export
from ui import common, sidebar

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
data_path, train_split, val_split, n_toy = None, None, None, 0
if source.startswith("Toy"):
    n_toy = st.select_slider("Training birds", [160, 400, 800, 1600], value=400, key="build_n_toy")
elif source.startswith("Folder"):
    data_path = st.text_input("Folder (one sub-folder per class)", key="build_folder")
else:
    cols = st.columns([3, 1, 1])
    data_path = cols[0].text_input("CSV with path, label[, group, split, 0/1 concept columns]", key="build_csv")
    train_split = cols[1].text_input("Train split", key="build_train_split", placeholder="train") or None
    val_split = cols[2].text_input("Validation split", key="build_val_split", placeholder="val") or None

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
templates = [t.strip() for t in cols[0].text_input("Prompt templates (separate with |)", "a photo of {}.",
                                                   key="build_templates").split("|") if t.strip()]
if source.startswith("Toy"):
    templates = ["a bird with {}."]
    cols[0].caption("Toy Birds uses the demo model's own template: 'a bird with {}.'")
dedupe = class_sim = None
if cols[1].checkbox("Drop near-duplicate concepts", key="build_use_dedupe",
                    help="Removes the later of two concepts whose text vectors are this similar; the report says which."):
    dedupe = cols[1].number_input("above cosine", 0.0, 1.0, 0.95, 0.01, key="build_dedupe")
if cols[2].checkbox("Drop concepts too close to a class name", key="build_use_classsim",
                    help="A concept that restates a class name leaks the label; the report says which were removed."):
    class_sim = cols[2].number_input("above cosine", 0.0, 1.0, 0.9, 0.01, key="build_classsim")

# -- 4. recipe -----------------------------------------------------------------------------------
st.subheader("4 · Recipe and sparsity")
cols = st.columns([2, 3, 2])
recipe = cols[0].selectbox("Recipe", ["pcbm"], format_func=lambda r: {"pcbm": "PCBM (post-hoc CBM)"}[r],
                           key="build_recipe", help="More recipes (LF-CBM, LaBo, …) will appear here as they land.")
lam = cols[1].select_slider("Sparsity λ (higher = fewer concepts per class)",
                            [1e-4, 3e-4, 1e-3, 2e-3, 5e-3, 1e-2, 3e-2], value=2e-3, key="build_lam",
                            format_func=lambda v: f"{v:g}")
residual = cols[2].checkbox("PCBM-h residual head", key="build_residual",
                            help="Adds a linear head on the raw embedding; outputs show how much it carries.")
with_path = st.checkbox("Also compute the λ path (accuracy vs sparsity)", value=True, key="build_path")


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
                train = ImageDataset.from_csv(path, split=args["train_split"])
                val = ImageDataset.from_csv(path, split=args["val_split"]) if args["val_split"] else None
            else:
                train, val = ImageDataset.from_folder(path), None
        job["result"] = build_cbm(backbone, train, args["bank"], val=val, templates=args["templates"], lam=args["lam"],
                                  residual=args["residual"], dedupe=args["dedupe"], class_similarity=args["class_sim"],
                                  with_path=args["with_path"], progress=progress)
    except CBMError as exc:
        job["error"] = str(exc)
    except Exception as exc:  # shown in the page; the session and earlier results stay
        job["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        job["done"] = True


ready = bank is not None and (n_toy or data_path)
job = state.get("build_job")
running = job is not None and not job.get("done")
if st.button("Build", type="primary", disabled=not ready or running):
    job = {"stage": "starting", "fraction": 0.0, "done": False, "started": time.time()}
    args = dict(spec="demo" if kind.startswith("Toy") else spec, n_toy=n_toy, data_path=data_path,
                train_split=train_split, val_split=val_split, bank=bank, templates=templates or ["{}"], lam=lam,
                residual=residual, dedupe=dedupe, class_sim=class_sim, with_path=with_path)
    threading.Thread(target=run_job, args=(job, args), daemon=True).start()
    state["build_job"] = job
    st.rerun()


@st.fragment(run_every=1.0)
def progress_panel() -> None:
    job = state.get("build_job")
    if job is None:
        return
    if not job.get("done"):
        st.progress(min(1.0, job["fraction"]), text=f"{job['stage']}… ({time.time() - job['started']:.0f} s)")
        return
    if job.get("error"):
        st.error(f"The build failed: {job['error']}")
        return
    result = job["result"]
    model = result.model
    st.success(f"Built in {time.time() - job['started']:.0f} s.")
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
        fig = go.Figure(go.Scatter(x=[p.nonzero_fraction for p in result.path], y=[p.val_accuracy for p in result.path],
                                   mode="lines+markers", text=[f"λ={p.lam:.2g}, NEC {p.nec:.1f}" for p in result.path],
                                   hovertemplate="%{text}<br>non-zero %{x:.0%}<br>val acc %{y:.1%}<extra></extra>"))
        fig.update_layout(title="λ path: accuracy vs non-zero weights", xaxis=dict(tickformat=".0%", title="non-zero weights"),
                          yaxis=dict(tickformat=".0%", title="validation accuracy"), height=320,
                          margin=dict(l=10, r=10, t=40, b=10))
        st.plotly_chart(fig, width="stretch")
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


progress_panel()
