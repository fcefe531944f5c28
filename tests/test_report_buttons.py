"""The "Download report" buttons of Inspect, Intervene, Edit and Compare (ui/report_button.py), with
Streamlit's AppTest: each page draws an HTML and a PDF button, and the function the HTML button hands
Streamlit (a deferred download, run when the user clicks) returns a real report about what the page shows.

AppTest keeps no deferred download after a run, so the test records the callables as the page passes them
to ``download_button`` and calls them itself, as Streamlit's worker thread would."""
from __future__ import annotations

import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

from cbm_core import Intervention, Pipeline, evaluate
from cbm_core.demo.paths import DEMO_BUNDLE, SAMPLES_DIR, load_demo_features
from cbm_core.report import browser
from helpers import write_class_folder
from test_report import Page, sections

ROOT = Path(__file__).resolve().parent.parent
DIVER = SAMPLES_DIR / "09_azure_diver_on_land.png"


def page(name: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.switch_page(f"pages/{name}.py")
    return at


def report(downloads, key: str) -> Page:
    """The HTML the page's report button would download, parsed (``.html``: as text); its PDF button's state
    checked."""
    data, name, disabled = downloads[f"{key}_html"]
    assert callable(data) and name.endswith(".html") and not disabled  # made on click, not on every run
    text = data().decode("utf-8")
    assert text.startswith("<!doctype html>") and "could not be made" not in text, text[:400]
    pdf, pdf_name, pdf_disabled = downloads[f"{key}_pdf"]
    assert callable(pdf) and pdf_name.endswith(".pdf") and pdf_disabled == (not browser.available())
    page = Page(text)
    page.html = text
    return page


def test_inspect_downloads_a_report_on_its_images(downloads):
    at = page("inspect").run()
    at.multiselect(key="inspect_samples").set_value(["azure diver on land"]).run()
    assert not at.exception, at.exception
    assert {b.key for b in at.download_button} >= {"inspect_report_html", "inspect_report_pdf"}
    shown = report(downloads, "inspect_report")
    exp = Pipeline.from_bundle(DEMO_BUNDLE, device="cpu").explain(str(DIVER))
    names = [n for n in at.session_state["images"]]
    assert sections(shown)[-len(names):] == names  # one section per image on the page
    pred = exp.class_names[int(exp.predicted[0])]
    assert f"The model calls this image {pred} ({float(exp.probs[0].max()):.1%})." in shown.all_text
    assert "How far to believe this explanation" in shown.all_text
    assert "of 1600 held-out images" in shown.all_text  # the reference Inspect's reliability panel fitted


def test_intervene_downloads_a_report_with_the_changes_on_screen(downloads):
    at = page("intervene")
    at.session_state["images"] = {"diver on land": DIVER.read_bytes()}
    at.run()
    assert not at.exception, at.exception
    engine = Pipeline.from_bundle(DEMO_BUNDLE, device="cpu")
    top = engine.explain(DIVER.read_bytes()).to_frame(0).concept[0]
    at.session_state["live_panel"] = {"edit": {"seq": 1, "settings": {top: {"off": True}}}}  # what the browser sends
    at.run()
    assert not at.exception, at.exception
    shown = report(downloads, "intervene_report")
    assert sections(shown)[-1] == "diver on land"
    before, after = engine.explain(DIVER.read_bytes()), engine.explain(DIVER.read_bytes(), Intervention().ablate(top))
    was, now = (e.class_names[int(e.predicted[0])] for e in (before, after))
    assert "Your changes and what they do" in shown.all_text and f"switch off '{top}'" in shown.all_text
    p_was, p_now = float(before.probs[0].max()), float(after.probs[0].max())
    assert (f"stays <b>{now}</b> ({p_was:.1%} → {p_now:.1%})." if was == now else
            f"changes from <b>{was}</b> ({p_was:.1%}) to <b>{now}</b> ({p_now:.1%}).") in shown.html


def test_edit_downloads_the_model_card_with_the_edit_measured(downloads):
    at = page("edit").run()
    assert not at.exception, at.exception
    next(b for b in at.button if b.label.startswith("Apply this edit")).click().run()
    assert not at.exception, at.exception
    model = at.session_state["model"]
    assert len(model.edit_log) == 1
    shown = report(downloads, "edit_report")
    assert sections(shown)[0] == "How to read this model card" and "Edits made by hand" in sections(shown)
    base = Pipeline.from_bundle(DEMO_BUNDLE, device="cpu").model
    val = load_demo_features("val")
    before = evaluate(base, val.embeddings, val.labels, val.groups)
    after = evaluate(model, val.embeddings, val.labels, val.groups)
    assert f"accuracy {before.accuracy:.1%} → {after.accuracy:.1%}" in shown.all_text
    assert model.edit_log[0]["op"] in shown.all_text
    if browser.available():
        pdf = downloads["edit_report_pdf"][0]()
        assert pdf.startswith(b"%PDF")


def test_compare_downloads_the_model_card_with_the_comparison(downloads, tmp_path, monkeypatch):
    monkeypatch.setenv("CBM_CACHE_DIR", str(tmp_path / "cache"))
    data = write_class_folder(tmp_path / "shapes", per_class=10)
    at = page("compare").run()
    at.radio(key="compare_source").set_value("A dataset on disk").run()
    at.text_input(key="compare_path").set_value(str(data)).run()
    at.file_uploader(key="compare_concepts").upload("concepts.txt", b"red thing\nblue thing\nround shape\n",
                                                    "text/plain").run()
    at.multiselect(key="compare_recipes").set_value(["pcbm"]).run()
    at.number_input(key="compare_nec").set_value(2.0).run()
    at.button(key="compare_go").click().run()
    assert not at.exception, at.exception
    for _ in range(600):
        job = at.session_state["compare_job"]
        if job.get("done"):
            break
        time.sleep(0.5)
    assert job.get("done") and "error" not in job, job.get("error")
    at.run()
    assert not at.exception, at.exception
    shown = report(downloads, "compare_report")
    assert sections(shown)[-1] == "How recipes compared"
    assert all(r.recipe in shown.all_text for r in job["result"].rows)
    chart = "Accuracy against concepts per class (validation data)"
    if browser.available():  # drawn as a static SVG, as every figure of a report where chromium is
        assert [img["alt"] for img in shown.images if img["src"].startswith("data:image/svg+xml")] == [chart]
    else:
        assert "plotly-chart" in shown.classes
