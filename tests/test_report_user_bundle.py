"""Reports for a user's own bundle (not the demo): built with `python -m cbm_core build` from a folder of
class sub-folders on a tiny open_clip tower, edited with `edit --prune`, then reported with `report`. The
model card and the explanation report say what this bundle is (its classes, concepts, recipe, data, the
edit and what it did) and nothing of the demo's; the PDF (with chromium) has the same words."""
from __future__ import annotations


import pytest

from cbm_core import cli, load_bundle
from cbm_core.backbone import export_local_dir
from cbm_core.report import browser
from conftest import TINY_VIT
from helpers import write_class_folder
from test_report import Page, sections
from test_report_buttons import report

CONCEPTS = ["red", "blue", "green", "round shape", "white background"]


@pytest.fixture(scope="module")
def user(tmp_path_factory, tiny_configs):
    """A bundle built and edited through the CLI, as a user would, and the folder it was built from."""
    import torch

    from cbm_core.backbone import load_backbone

    tmp = tmp_path_factory.mktemp("user-report")
    torch.manual_seed(0)
    export_local_dir(load_backbone("tiny-vit:random", device="cpu").model, TINY_VIT, tmp / "model")
    data = write_class_folder(tmp / "data", per_class=10)
    (tmp / "concepts.txt").write_text("\n".join(CONCEPTS) + "\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CBM_CACHE_DIR", str(tmp / "cache"))
        common = ["--device", "cpu", "--quiet"]
        assert cli.main(["build", "--backbone", f"local-dir:{tmp / 'model'}", "--data", str(data), "--concepts",
                         str(tmp / "concepts.txt"), "--template", "a photo of {}.", "--lam", "1e-3",
                         "--out", str(tmp / "bundle"), *common]) == 0
        assert cli.main(["edit", "--bundle", str(tmp / "bundle"), "--prune", "white background", "--data", str(data),
                         "--out", str(tmp / "edited"), "--trust-backbone", *common]) == 0
        yield tmp, data


def run_report(tmp, *args) -> int:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CBM_CACHE_DIR", str(tmp / "cache"))
        return cli.main(["report", "--bundle", str(tmp / "edited"), "--device", "cpu", "--quiet", "--trust-backbone",
                         *args])


def test_the_model_card_of_a_user_bundle_describes_that_bundle(user, capsys):
    tmp, data = user
    out = tmp / "card.html"
    assert run_report(tmp, "--data", str(data), "--out", str(out)) == 0
    assert f"wrote {out} (model card)" in capsys.readouterr().out
    page = Page(out.read_text(encoding="utf-8"))
    text = page.all_text
    model = load_bundle(tmp / "edited")
    assert sections(page) == ["How to read this model card", "The model at a glance", "How it was made", "Data",
                              "How well it works", "What each class relies on", "Concepts", "Edits made by hand"]
    assert "8: azure diver" not in text and "Toy Birds" not in text  # nothing of the demo
    assert "3: blue, green, red" in text and f"local-dir:{tmp / 'model'}" in text
    assert "pcbm" in text and "lam 0.001" in text and "a photo of {}." in text
    # Data: what the bundle records, and the folder the card measured it on, with its fingerprint.
    assert f"training images {model.metrics['n_train']}" in text and f"{data}: 30 images" in text
    # The edit, with the accuracies recorded when it was made (CLI edits record them before).
    log = model.edit_log
    assert len(log) == 1 and log[0]["op"] == "prune"
    assert "1 prune white background all" in text
    before = log[0]["metrics_before"]
    assert f"recorded before: validation accuracy {before['val_accuracy']:.1%}" in text
    assert "this model now, on" in text  # the last edit: the model as it is, measured on --data
    # Its concepts, with where they came from (one file: said once).
    used = [c for c in CONCEPTS if c != "white background"]
    concepts_text = text.split("Concepts Every concept", 1)[1].split("Edits made by hand", 1)[0]
    assert any(c in concepts_text for c in used)
    assert "Every concept listed came from" in concepts_text


def test_the_explanation_report_of_a_user_bundle_explains_its_images(user):
    tmp, data = user
    images = [data / "red" / "001.png", data / "blue" / "002.png"]
    out = tmp / "why.html"
    assert run_report(tmp, *map(str, images), "--spurious", "white background", "--data", str(data),
                      "--out", str(out)) == 0
    page = Page(out.read_text(encoding="utf-8"))
    assert sections(page)[2:5] == ["All images at a glance", "001.png", "002.png"]
    from cbm_core import Pipeline

    pipe = Pipeline.from_bundle(tmp / "edited", device="cpu", trust_backbone=True)
    exp = pipe.explain([str(p) for p in images])
    for n in range(2):
        pred = exp.class_names[int(exp.predicted[n])]
        assert f"The model calls this image {pred} ({float(exp.probs[n].max()):.1%})." in page.all_text
    # Reliability, fitted on --data: the reference it is compared with is that folder's 30 images.
    assert page.all_text.count("How far to believe this explanation") == 2
    assert "of 30 held-out images" in page.all_text
    assert "Toy Birds" not in page.all_text


@pytest.mark.skipif(not browser.available(), reason="no chromium or Playwright here (.ci/run installs both)")
def test_the_model_card_pdf_of_a_user_bundle(user):
    pypdf = pytest.importorskip("pypdf")
    tmp, data = user
    out = tmp / "card.pdf"
    assert run_report(tmp, "--out", str(out)) == 0
    text = "\n".join(page.extract_text() for page in pypdf.PdfReader(out).pages)
    assert "How to read this model card" in text and "Edits made by hand" in text
    assert "white background" in text.split("Edits made by hand", 1)[1]
    assert "Toy Birds" not in text


def test_the_app_downloads_reports_on_a_user_bundle(user, downloads):
    """Inspect and Edit model with the user's bundle open in the session: the Download report buttons give its
    explanation report and its model card."""
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    tmp, data = user
    model = load_bundle(tmp / "edited")
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=120)
    at.switch_page("pages/inspect.py")
    opened = {"model": model, "bundle_path": str(tmp / "edited"), "trusted_specs": {model.backbone_spec},
              "history": [()], "history_pos": 0}
    for key, value in opened.items():  # as the sidebar leaves them after "Open bundle" and "Load it"
        at.session_state[key] = value
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CBM_CACHE_DIR", str(tmp / "cache"))
        at.run()
        at.file_uploader(key="inspect_uploads").upload("a red one.png", (data / "red" / "001.png").read_bytes(),
                                                       "image/png").run()
        assert not at.exception, at.exception
        shown = report(downloads, "inspect_report")
        assert sections(shown)[-1] == "a red one.png" and "3: blue, green, red" in shown.all_text
        assert "How far to believe this explanation" in shown.all_text and "Toy Birds" not in shown.all_text
        at.switch_page("pages/edit.py").run()
        assert not at.exception, at.exception
        card = report(downloads, "edit_report")
    assert sections(card)[0] == "How to read this model card"
    assert "1 prune white background all" in card.all_text and "Toy Birds" not in card.all_text
