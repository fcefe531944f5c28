"""Reports (cbm_core/report): what the explanation report and the model card say, read back from their
HTML and checked against the engine; names are text; the CLI writes them; and in chromium (skipped
without it): they open offline asking for nothing but their own file, and the PDF has its pages."""
from __future__ import annotations

import dataclasses
from html.parser import HTMLParser
from pathlib import Path

import pytest

from cbm_core import (CBMError, ConceptBank, Intervention, Pipeline, adapt_concepts, cli, concept_directions,
                      counterfactual, evaluate, load_bundle, prune_concepts, set_weight)
from cbm_core.demo.build_bundle import DEMO_LAM
from cbm_core.demo.paths import DEMO_BUNDLE, SAMPLES_DIR, load_demo_features
from cbm_core.explain.reliability import reliability
from cbm_core.report import browser, figures
from cbm_core.report.export import explanation_report, model_card

from conftest import make_model

STORY = SAMPLES_DIR / "13_azure_diver_on_foliage.png"
ON_WATER = SAMPLES_DIR / "01_azure_diver_on_water.png"
BACKGROUNDS = ["water background", "land background", "foliage background"]


class Page(HTMLParser):
    """The parts of a report a test reads: headings, images, sections by class, all text, and every
    attribute that could load something."""

    def __init__(self, text: str):
        super().__init__()
        self.headings: list[tuple[str, str]] = []
        self.images: list[dict] = []
        self.scripts = 0
        self.links: list[str] = []
        self.text: list[str] = []
        self._open: list[str] = []
        self._heading: str | None = None
        self.meta: list[dict] = []
        self.classes: list[str] = []
        self.feed(text)
        self.all_text = " ".join("".join(self.text).split())

    BLOCKS = {"p", "div", "li", "td", "th", "tr", "h1", "h2", "h3", "figcaption", "br", "section", "ul", "table"}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in self.BLOCKS:
            self.text.append(" ")  # words of two blocks never run together
        if tag in ("h1", "h2", "h3"):
            self._heading, self._buffer = tag, []
        if tag == "img":
            self.images.append(attrs)
        if tag == "script":
            self.scripts += 1
        if tag == "meta":
            self.meta.append(attrs)
        for name in ("src", "href", "action", "data", "poster"):
            if attrs.get(name):
                self.links.append(attrs[name])
        if attrs.get("class"):
            self.classes.append(attrs["class"])

    def handle_endtag(self, tag):
        if tag in self.BLOCKS:
            self.text.append(" ")
        if tag == self._heading:
            self.headings.append((tag, " ".join("".join(self._buffer).split())))
            self._heading = None

    def handle_data(self, data):
        self.text.append(data)
        if self._heading:
            self._buffer.append(data)


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.from_bundle(DEMO_BUNDLE, device="cpu")


@pytest.fixture(scope="module")
def card():
    base = load_bundle(DEMO_BUNDLE)
    edited = prune_concepts(base, BACKGROUNDS).model
    return model_card(edited, evaluation=load_demo_features("val"), evaluation_name="Toy Birds validation split",
                      base=base)


@pytest.fixture(scope="module")
def why(pipe):
    """The demo's two birds, the water background marked spurious and switched off."""
    return explanation_report(pipe, [STORY, ON_WATER], spurious=["Water Background"],
                              intervention=Intervention().ablate("water background"))


def sections(page: Page, level: str = "h2") -> list[str]:
    return [text for tag, text in page.headings if tag == level]


def test_every_chart_is_drawn_by_one_function_for_the_pages_and_the_reports():
    from ui import charts

    for name in ("probabilities", "heatmap", "lambda_path", "nec_curves", "probability_bars", "contribution_bars",
                 "waterfall_bars", "direction_legend"):
        assert getattr(charts, name) is getattr(figures, name)
    assert charts.CHARTS_CSS == figures.CHARTS_CSS and charts.CHARTS_CSS.is_file()


def test_the_explanation_report_for_the_demo_says_what_the_engine_says(pipe, why):
    iv = Intervention().ablate("water background")
    page = Page(why.to_html())
    names = [STORY.name, ON_WATER.name]
    assert sections(page)[:3] == ["How to read this report", "About the model", "All images at a glance"]
    assert sections(page)[3:] == names  # one detailed section per image, in order
    exp = pipe.explain([STORY, ON_WATER])
    after = pipe.explain([STORY, ON_WATER], iv)
    maps_per_image = []
    for n, name in enumerate(names):
        pred = exp.class_names[int(exp.predicted[n])]
        assert f"The model calls this image {pred} ({float(exp.probs[n].max()):.1%})." in page.all_text
        rows = concept_directions(exp, n)
        for sentence in rows[rows.contribution != 0].sentence[:3]:  # the reasons, with their direction words
            assert sentence in page.all_text
        runner_up = exp.class_names[int(exp.top_classes(2)[n, 1])]
        assert f"Why not {runner_up} ({float(exp.probs[n, exp.class_names.index(runner_up)]):.1%})" in page.all_text
        cf = counterfactual(pipe.model, pipe.encode(Path([STORY, ON_WATER][n])).embedding, runner_up)
        assert cf.success and f"Smallest change that makes it {runner_up}" in page.all_text
        assert all(f"{c[0]}: from p" in page.all_text for c in cf.changes)
        now = after.class_names[int(after.predicted[n])]
        assert f"{float(after.probs[n, after.class_names.index(now)]):.1%})" in page.all_text
        top = rows[rows.contribution > 0].head(3)
        flagged = [r.concept for r in rows[rows.contribution != 0].head(3).itertuples()
                   if r.concept == "water background" and r.contribution > 0]
        maps_per_image.append(1 + len(dict.fromkeys(list(top.concept) + flagged)))  # the picture + one per map
        for concept in top.concept:
            assert any(img.get("alt") == concept for img in page.images)
        # How far to believe it: the engine's out-of-distribution verdict, and each concept it leans on, read as
        # present or absent with the engine's chance that it is really there (the model's own statistics here).
        trust = reliability(pipe.model, exp, n, embedding=pipe.encode(Path([STORY, ON_WATER][n])).embedding)
        assert trust.ood.verdict == "typical" and "Like the images the model was made with" in page.all_text
        for concept in rows[rows.contribution != 0].concept[:3]:
            k = trust.concepts.index(concept)
            read = "present" if float(trust.z[k]) > 0 else "absent"
            assert f"{concept} {read} {float(trust.p_present[k]):.0%}" in page.all_text
    # Images: a thumbnail per image in the gallery, then per image its picture and one overlay per concept map.
    assert len(page.images) == len(names) + sum(maps_per_image)
    assert all(img["src"].startswith(("data:image/jpeg;base64,", "data:image/png;base64,")) for img in page.images)
    # Both demo birds lean on the water background (absent for one, present for the other): both flagged.
    assert page.classes.count("card flagged") == 2
    assert page.all_text.count("How far to believe this explanation") == len(names)
    assert "switch off 'water background'" in page.all_text
    assert page.scripts == 0 and all(link.startswith("data:") for link in page.links)
    policy = next(m["content"] for m in page.meta if m.get("http-equiv") == "Content-Security-Policy")
    assert policy.startswith("default-src 'none'") and "script-src" not in policy


def test_a_report_lists_the_images_it_could_not_read_and_refuses_unknown_names(pipe):
    report = explanation_report(pipe, {"story.png": STORY.read_bytes(), "broken.png": b"\x89PNG\r\n\x1a\n nope"})
    assert [name for name, _ in report.skipped] == ["broken.png"]
    page = Page(report.to_html())
    assert "Images that could not be read" in [t for _, t in page.headings] and "broken.png" in page.all_text
    with pytest.raises(CBMError, match="Did you mean 'water background'"):
        explanation_report(pipe, [STORY], spurious=["watr background"])
    with pytest.raises(CBMError, match="Unknown class"):
        explanation_report(pipe, [STORY], counterfactual="penguin")
    with pytest.raises(CBMError, match="nothing to report"):
        explanation_report(pipe, {"broken.png": b"not an image"})


def test_the_fine_gradcam_draws_the_reports_maps_on_the_demos_resnet(pipe):
    fine = Page(explanation_report(pipe, [STORY], saliency="gradcam-fine", reliability=False).to_html())
    dense = Page(explanation_report(pipe, [STORY], saliency="dense", reliability=False).to_html())
    assert "Heat maps (Grad-CAM on a finer grid)" in fine.all_text and "Heat maps (dense concept maps)" in dense.all_text

    def maps(page):
        return [c for c in page.classes if c in ("map", "map absent")]
    assert maps(fine) == maps(dense) and len(maps(fine)) >= 3  # the same concepts' maps, drawn another way


def test_the_model_card_measures_each_edit_made_since_the_bundle_was_opened(card):
    base = load_bundle(DEMO_BUNDLE)
    edited = prune_concepts(base, BACKGROUNDS).model
    val = load_demo_features("val")
    page = Page(card.to_html(static=False))
    assert sections(page) == ["How to read this model card", "The model at a glance", "How it was made", "Data",
                              "How well it works", "What each class relies on", "Concepts", "Edits made by hand"]
    before = evaluate(base, val.embeddings, val.labels, val.groups)
    after = evaluate(edited, val.embeddings, val.labels, val.groups)
    assert (f"accuracy {before.accuracy:.1%} → {after.accuracy:.1%}" in page.all_text
            and f"worst group {before.worst_group:.1%} → {after.worst_group:.1%}" in page.all_text)
    assert "prune water background, land background, foliage background all" in page.all_text
    # The per-class chart is Evaluate's figure, with the edited model's accuracies (interactive here).
    (chart,) = card.figures
    assert dict(zip(chart.data[0].y, chart.data[0].x)) == pytest.approx(after.per_class)
    assert "plotly-chart" in page.classes and page.scripts == 2  # plotly.js inlined, then the figure
    assert f"{after.accuracy:.1%} accuracy" in page.all_text
    # The concepts with their provenance, the recipe with its hyper-parameters.
    assert "the Toy Birds attribute list" in page.all_text and f"lam {DEMO_LAM:g}" in page.all_text


def test_a_saved_bundle_with_an_edit_log_shows_every_entry_with_what_was_recorded(tmp_path):
    model, _ = make_model()
    model = model.with_changes(metrics={"val_accuracy": 0.8, "val_worst_group": 0.5, "n_train": 200, "n_val": 50})
    model = prune_concepts(model, ["water"]).model
    model = set_weight(model, "red crown", "jay", 0.75).model
    model = adapt_concepts(model, mask=["long tail"], amplify={"striped wing": 1.5},
                           details={"n_images": 12, "target_accuracy": [0.5, 0.75]}).model
    loaded = load_bundle(model.save(tmp_path / "edited"))
    page = Page(model_card(loaded).to_html())
    assert "Edits made by hand" in sections(page)
    text = page.all_text
    assert "1 prune water all" in text
    assert "recorded before: validation accuracy 80.0%, validation worst-group accuracy 50.0%" in text
    assert "2 weight +0.000 → +0.750 red crown jay" in text
    assert "3 adapt (from 12 images) mask long tail, striped wing ×1.5 all" in text
    assert "on the new-domain images: 50.0% → 75.0%" in text
    assert Page(model_card(make_model()[0]).to_html()).all_text.count("None: the model is as it was fitted.") == 1


def test_names_from_a_bundle_or_a_file_are_text_never_markup(pipe):
    hostile = '<script>alert("x")</script>'
    model = pipe.model
    k = model.concepts.index("white breast")  # the concept the story bird's prediction rests on most
    names = model.concepts.names[:k] + (hostile,) + model.concepts.names[k + 1:]
    sources = model.concepts.sources[:k] + ("file:<img src=x onerror=alert(1)>",) + model.concepts.sources[k + 1:]
    strange = model.with_changes(concepts=ConceptBank(names, sources), stats=dataclasses.replace(model.stats, names=names),
                                 classes=("<b>bold</b>",) + model.classes[1:],
                                 recipe={**model.recipe, "warnings": ["<iframe src=//evil>"]})
    odd = Pipeline(pipe.backbone, strange, pipe.cache)
    report = explanation_report(odd, {"<img src=x onerror=alert(2)>.png": STORY.read_bytes()}, spurious=[hostile],
                                model_card_section=True)
    text = report.to_html()
    page = Page(text)
    assert page.scripts == 0 and all(link.startswith("data:") for link in page.links)
    assert "<script>alert" not in text and "<b>bold</b>" not in text and "<iframe" not in text
    assert "<img src=x" not in text and "&lt;img src=x onerror=alert(2)&gt;.png" in text
    assert hostile in page.all_text and "<b>bold</b>" in page.all_text  # shown as written
    assert "concept file <img src=x onerror=alert(1)>" in page.all_text and "<iframe src=//evil>" in page.all_text
    # The interactive fallback puts figure data inside a <script>: nothing there can close it.
    val = load_demo_features("val")
    card = model_card(strange, evaluation=val).to_html(static=False)
    body = card.split("</head>", 1)[1]
    assert body.count("</script>") == 1 and "\\u0026lt;b\\u0026gt;bold" in body


def test_the_pdf_needs_chromium_and_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("CBM_CHROMIUM", str(tmp_path / "no-chromium"))
    assert not browser.available()
    with pytest.raises(CBMError, match="needs chromium"):
        model_card(make_model()[0]).to_pdf()
    with pytest.raises(CBMError, match=r"\.html or \.pdf"):
        model_card(make_model()[0]).save(tmp_path / "card.docx")


def test_the_cli_writes_an_explanation_report_and_a_model_card(tmp_path, capsys):
    out = tmp_path / "why.html"
    assert cli.main(["report", "--bundle", str(DEMO_BUNDLE), str(STORY), str(ON_WATER), "--spurious", "water background",
                     "--data", "demo:val", "--out", str(out), "--quiet"]) == 0
    page = Page(out.read_text())
    assert sections(page)[3:5] == [STORY.name, ON_WATER.name] and "Edits made by hand" in sections(page)
    assert "Measured now on demo:val" in [t for _, t in page.headings]
    assert f"wrote {out} (report, 2 images)" in capsys.readouterr().out
    card = tmp_path / "card.html"
    assert cli.main(["report", "--bundle", str(DEMO_BUNDLE), "--out", str(card)]) == 0
    assert sections(Page(card.read_text()))[0] == "How to read this model card"
    assert cli.main(["report", "--bundle", str(DEMO_BUNDLE), "--out", str(tmp_path / "card.txt")]) == 2
    assert ".html or .pdf" in capsys.readouterr().err


# -- in a real browser (Debian's chromium): offline, every picture shown, the PDF's pages ----------------------

needs_chromium = pytest.mark.skipif(not browser.available(), reason="no chromium or Playwright here (.ci/run installs both)")


def pypdf():
    return pytest.importorskip("pypdf")


def only(url: str, requests: list):
    """A route handler: record every request, let through ``url`` alone."""
    def route(r):
        requests.append(r.request.url)
        r.continue_() if r.request.url == url else r.abort()
    return route


def open_offline(paths: list[Path]) -> list[dict]:
    """Open each of ``paths`` in chromium with every request recorded and all but the file itself refused."""
    from playwright.sync_api import sync_playwright

    results = []
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=browser.find_chromium())
        for path in paths:
            requests, errors = [], []
            page = chromium.new_page()

            page.route("**/*", only(path.as_uri(), requests))
            page.on("console", lambda m, errors=errors: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
            page.goto(path.as_uri(), wait_until="load")
            shown = page.evaluate("""() => ({
                images: [...document.images].map(i => ({alt: i.alt, ok: i.complete && i.naturalWidth > 0,
                                                        svg: i.src.startsWith('data:image/svg+xml')})),
                plotly: document.querySelectorAll('.plotly-chart .plot-container').length})""")
            results.append({"requests": requests, "errors": errors, **shown})
            page.close()
        chromium.close()
    return results


@needs_chromium
def test_reports_open_offline_and_ask_for_nothing_but_their_own_file(why, card, tmp_path):
    explanation = why.save(tmp_path / "why.html")
    static_card = card.save(tmp_path / "card.html")  # chromium is here: figures as static SVG
    interactive = tmp_path / "card-interactive.html"
    interactive.write_text(card.to_html(static=False))  # what a machine without chromium writes
    paths = [explanation, static_card, interactive]
    seen = open_offline(paths)
    for path, shown in zip(paths, seen):
        assert shown["requests"] == [path.as_uri()], shown["requests"]
        assert shown["errors"] == []
        assert all(img["ok"] for img in shown["images"]), shown["images"]
    assert len(seen[0]["images"]) > 2 * 2  # per image: a thumbnail, the picture and its heat maps
    assert [img["alt"] for img in seen[1]["images"] if img["svg"]] == ["Accuracy per class"]
    assert seen[2]["plotly"] == 1 and not seen[2]["images"]


@needs_chromium
def test_the_pdf_has_a_page_per_part(why, tmp_path):
    pdf = why.save(tmp_path / "why.pdf")
    pages = [page.extract_text() for page in pypdf().PdfReader(pdf).pages]
    assert len(pages) == 4  # how to read + about the model; the gallery; one page per image
    assert "How to read this report" in pages[0] and "About the model" in pages[0]
    assert "All images at a glance" in pages[1]
    for n, (page, image) in enumerate(zip(pages[2:], (STORY, ON_WATER))):
        assert f"IMAGE {n + 1} OF 2" in page.upper() and image.name in page
        assert "How the score adds up" in page and "Smallest change that makes it" in page


@needs_chromium
def test_the_model_card_pdf_shows_the_edit_and_draws_its_chart_as_vectors(monkeypatch, tmp_path):
    # Made as in the app: importing streamlit makes its plotly template the process default, whose axes
    # do not widen their margins for long labels (the class names were cut off the chart's left edge).
    import plotly.io as pio
    import streamlit  # noqa: F401 (registers the "streamlit" template)

    monkeypatch.setattr(pio.templates, "default", "streamlit")
    base = load_bundle(DEMO_BUNDLE)
    card = model_card(prune_concepts(base, BACKGROUNDS).model, evaluation=load_demo_features("val"), base=base)
    pages = [page.extract_text() for page in pypdf().PdfReader(card.save(tmp_path / "card.pdf")).pages]
    text = "\n".join(pages)
    assert "How to read this model card" in pages[0]
    # The SVG's words are text in the PDF: its title and each class's tick label, whole, on a line of its own.
    chart_page = next(page for page in pages if "Accuracy per class" in page).splitlines()
    assert all(name in chart_page for name in base.classes), chart_page
    assert "Edits made by hand" in text and "water background" in text.split("Edits made by hand", 1)[1]


@needs_chromium
def test_the_cli_writes_a_pdf(tmp_path):
    out = tmp_path / "card.pdf"
    assert cli.main(["report", "--bundle", str(DEMO_BUNDLE), "--out", str(out), "--quiet"]) == 0
    assert out.read_bytes().startswith(b"%PDF")
    text = "\n".join(page.extract_text() for page in pypdf().PdfReader(out).pages)
    assert "How to read this model card" in text and "Edits made by hand" in text


def test_the_model_card_says_the_stored_concept_audit_in_words_and_lists_no_stored_record_as_a_measure():
    from cbm_core.explain.audit import ConceptAudit, with_audit
    from cbm_core.explain.reliability import fit_reliability

    from types import SimpleNamespace

    model, train = make_model()
    audit = ConceptAudit(n_test=40, accuracy=0.9, chance=0.34, absent_accuracy=0.8, residual_share=0.0,
                         presence_accuracy=0.88, truth_accuracy=None, nec=2.0, named_at_nec=0.9, random_at_nec=0.7,
                         tested_on="forty held-out shapes")
    model = with_audit(model, audit)
    # Stores a presence calibration and an out-of-distribution reference in metrics, as a bundle may.
    model = fit_reliability(model, SimpleNamespace(embeddings=train, concept_labels=None))
    page = Page(model_card(model).to_html())
    assert "Does it really use its concepts?" in sections(page)
    for _name, ok, sentence in audit.checks():
        assert f"{'Passed' if ok else 'Warning'}: {' '.join(sentence.split())}" in page.all_text
    assert "tested on forty held-out shapes" in page.all_text
    assert "values, mean" not in page.all_text and "concept audit" not in page.all_text
    assert "concept presence" not in page.all_text and "ood reference" not in page.all_text


def test_an_image_unlike_the_training_data_is_flagged_before_its_explanation(pipe):
    import io

    from helpers import shape_image

    from cbm_core.explain.reliability import TYPICAL, ood_check

    buffer = io.BytesIO()
    shape_image("red", 3, size=160).save(buffer, "PNG")
    images = {"red_disc.png": buffer.getvalue(), STORY.name: STORY.read_bytes()}
    verdicts = [ood_check(pipe.model, pipe.encode(data, name).embedding.reshape(1, -1))[0].verdict
                for name, data in images.items()]
    assert verdicts[0] != TYPICAL and verdicts[1] == TYPICAL  # what the engine says of a red disc and a demo bird
    html = explanation_report(pipe, images).to_html(static=False)
    disc, bird = html.split('<section class="image-detail">')[1:]
    assert disc.count('class="miss warn-line"') + disc.count('class="flag warn-line"') == 1
    assert disc.index("warn-line") < disc.index("Most likely classes")  # read before the reasons
    assert "warn-line" not in bird
    gallery = html.split('<section class="gallery-section">')[1].split("</section>")[0]
    assert gallery.count("Unlike the training data") + gallery.count("Unusual image") == 1
