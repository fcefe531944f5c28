"""End to end in a real browser: Debian's chromium, driven by Playwright, against `streamlit run`.

Open the app, upload a demo bird, see the prediction, go to Intervene, switch a concept off,
see the probabilities change, and visit every page. Screenshots go to artifacts/screenshots/.
"""
import json
from pathlib import Path

import pytest

from app_server import streamlit_app

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "artifacts" / "screenshots"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)")


@pytest.fixture(scope="module")
def app_url(request):
    with streamlit_app(request.module.__name__) as url:
        yield url


@pytest.fixture(scope="module")
def page(app_url):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
        pg = browser.new_page(viewport={"width": 1400, "height": 2600})
        pg.set_default_timeout(90_000)
        yield pg
        browser.close()


def test_a_deep_link_to_a_fresh_server_gets_the_apps_own_menu(app_url, page):
    # Must run first: only before any session has run app.py does Streamlit route a deep link
    # straight to the page file (its older multipage mode).
    page.goto(f"{app_url}/evaluate")
    page.get_by_text("Do the named concepts beat random").first.wait_for()
    sidebar = page.locator("[data-testid=stSidebar]")
    links = [link.inner_text().split("\n")[-1] for link in sidebar.get_by_role("link").all()]
    from ui.sidebar import PAGES

    assert links == [title for _, title, _ in PAGES], links  # the app's menu, in its order
    page.get_by_role("link", name="Intervene").click()
    page.get_by_text("Search concepts").wait_for()


def settle(page, pause_ms: int = 500) -> None:
    """Until the app has finished its script run (and a moment for the browser to draw)."""
    page.wait_for_timeout(300)
    page.wait_for_selector("[data-testid=stApp][data-test-script-state=notRunning]")
    page.wait_for_timeout(pause_ms)


def test_upload_inspect_intervene_and_every_page(app_url, page):
    from cbm_core import Intervention, Pipeline
    from cbm_core.demo.paths import DEMO_BUNDLE, SAMPLES_DIR

    engine = Pipeline.from_bundle(DEMO_BUNDLE, device="cpu")
    page.goto(app_url)
    page.get_by_text("Upload images").first.wait_for()
    page.get_by_text("Predicted: azure finch").wait_for()  # Inspect opens on the demo's story bird
    assert page.get_by_text("Deploy", exact=True).count() == 0  # the shipped config hides the developer toolbar
    settle(page)
    page.screenshot(path=str(SHOTS / "inspect_first_visit.png"), full_page=True)
    sample = next(p for p in sorted(SAMPLES_DIR.glob("*.png")) if "azure_diver_on_land" in p.name)
    top = engine.explain(str(sample)).to_frame(0).concept[0]
    page.locator("[data-testid=stMain] input[type=file]").first.set_input_files(str(sample))
    page.locator("[data-testid=stMain]").get_by_text(f"{sample.name} ·").wait_for()  # the upload is shown in detail
    headline = page.get_by_text("Predicted:").inner_text()
    settle(page, 1500)
    page.screenshot(path=str(SHOTS / "inspect.png"), full_page=True)

    # The overlay opacity is the browser's own: moving it changes every map at once and re-runs nothing.
    panel = page.locator(".saliency")
    heat = panel.locator("img.heat").first
    before = heat.evaluate("img => getComputedStyle(img).opacity")
    page.evaluate("""() => { window.runs = 0; const app = document.querySelector('[data-testid=stApp]');
        new MutationObserver(() => { if (app.dataset.testScriptState === 'running') window.runs += 1; })
            .observe(app, { attributes: true, attributeFilter: ['data-test-script-state'] }); }""")
    opacity = panel.get_by_role("slider", name="Overlay opacity")
    opacity.focus()
    for _ in range(4):
        page.keyboard.press("ArrowLeft")
    after = heat.evaluate("img => getComputedStyle(img).opacity")
    dimmed = heat.evaluate("img => img.closest('figure').classList.contains('absent')")  # an absent concept's map
    assert float(after) == pytest.approx(float(before) - 0.2 * (0.35 if dimmed else 1.0), abs=1e-6)
    page.wait_for_timeout(500)
    assert page.evaluate("window.runs") == 0

    page.get_by_role("link", name="Intervene").click()
    page.get_by_text("Search concepts").wait_for()
    live = page.locator(".live")
    live.get_by_role("switch", name=f"{top} on").wait_for()
    page.wait_for_timeout(1000)
    shown_before = json.loads(live.get_attribute("data-probs"))
    # The live waterfall says which way each concept points, as the engine does (present: above its
    # training average).
    from cbm_core import concept_directions

    want = concept_directions(engine.explain(str(sample)), 0).set_index("concept")
    steps = [r for r in live.locator(".contrib .bar-row").all() if r.locator(".state").count()]
    assert steps
    for row in steps:
        name, state = row.locator(".cls").inner_text(), row.locator(".state").inner_text()
        assert state == ("present" if want.loc[name].present else "absent"), name
    live.get_by_role("switch", name=f"{top} on").click()
    # The browser recomputes at once; then Python records the change (the caption).
    shown_after = json.loads(live.get_attribute("data-probs"))
    want = engine.explain(str(sample), Intervention().ablate(top))
    assert shown_after != shown_before
    for c, name in enumerate(want.class_names):
        assert abs(shown_after[name] - float(want.probs[0, c])) < 1e-4, name
    page.get_by_text(f"switch off '{top}'").wait_for()
    second = engine.explain(str(sample)).to_frame(0).concept[1]
    slider = live.get_by_role("slider", name=f"{second} percentile")
    slider.focus()
    for _ in range(5):
        page.keyboard.press("ArrowLeft")  # the sliders of the top concepts sit high
    pct = int(slider.input_value())
    page.get_by_text(f"set '{second}' to p{pct}").wait_for()
    want = engine.explain(str(sample), Intervention().ablate(top).set(second, percentile=pct))
    shown = json.loads(live.get_attribute("data-probs"))
    for c, name in enumerate(want.class_names):
        assert abs(shown[name] - float(want.probs[0, c])) < 1e-4, name
    page.wait_for_timeout(500)
    page.screenshot(path=str(SHOTS / "intervene.png"), full_page=True)

    for name, marker in (("Edit model", "Edit log and saving"), ("Evaluate", "Do the named concepts beat random"),
                         ("Build", "Recipe and sparsity")):
        page.get_by_role("link", name=name).click()
        page.get_by_text(marker).first.wait_for()
        settle(page, 2000)
        page.screenshot(path=str(SHOTS / f"{name.split()[0].lower()}.png"), full_page=True)
        if name == "Edit model":  # apply the suggested prune: the proposal is cleared, the log has one entry
            page.get_by_role("button", name="Apply this edit to the session's model").click()
            page.get_by_text("Edit applied: changes").wait_for()
            settle(page, 1000)
            assert page.get_by_role("button", name="Apply this edit to the session's model").is_disabled()
            page.screenshot(path=str(SHOTS / "edit_applied.png"), full_page=True)
        if name == "Evaluate":
            page.get_by_role("button", name="Fit the random-concept baseline").click()
            page.get_by_text("with random directions").first.wait_for()
            settle(page, 1000)
            page.screenshot(path=str(SHOTS / "evaluate_baseline.png"), full_page=True)
    assert "Predicted" in headline


def test_a_non_square_upload_shows_the_region_the_model_saw(app_url, page, tmp_path):
    from PIL import Image

    from cbm_core.demo.paths import SAMPLES_DIR

    bird = Image.open(next(p for p in sorted(SAMPLES_DIR.glob("*.png")) if "golden_gull_on_water" in p.name)).convert("RGB")
    wide = Image.new("RGB", (bird.width * 2, bird.height), (200, 210, 220))
    wide.paste(bird, (bird.width // 2, 0))
    path = tmp_path / "wide_golden_gull.png"
    wide.save(path)
    page.goto(app_url)
    page.get_by_text("Upload images").first.wait_for()
    settle(page)
    page.locator("[data-testid=stMain] input[type=file]").first.set_input_files(str(path))
    page.locator("[data-testid=stMain]").get_by_text(f"{path.name} ·").wait_for()
    panel = page.locator(".saliency")
    panel.get_by_text("The model saw only the outlined centre square").wait_for()
    # the frame that holds the outline (the previous image's panel may still be on screen while it is replaced)
    framed = panel.locator(".frame").filter(has=page.locator(".seen")).first
    box = framed.locator(".seen").bounding_box()
    frame = framed.bounding_box()
    assert box["width"] == pytest.approx(frame["width"] / 2, abs=3) and box["height"] == pytest.approx(frame["height"], abs=3)
    settle(page, 1000)
    panel.screenshot(path=str(SHOTS / "inspect_saliency_wide.png"))


def test_a_strangers_bundle_is_refused_and_the_session_keeps_its_model(app_url, page, tmp_path):
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "manifest.json").write_text("{}")
    (evil / "model.pkl").write_bytes(b"\x80\x04K\x01.")
    page.goto(app_url)
    page.get_by_text("Open another bundle").click()
    page.get_by_label("Folder or .zip path").fill(str(evil))
    page.get_by_label("Folder or .zip path").press("Enter")
    page.get_by_role("button", name="Open bundle", exact=True).click()
    page.get_by_text("model.pkl").first.wait_for()
    assert "pickle" in page.locator("[data-testid=stSidebar]").inner_text()
    assert "8 classes" in page.locator("[data-testid=stSidebar]").inner_text()  # the demo is still loaded
    page.screenshot(path=str(SHOTS / "stranger_bundle.png"))
