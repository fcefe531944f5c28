"""A sample of the hostile corpus through the real uploader, in Debian's chromium via Playwright,
against `streamlit run`: no Streamlit exception box anywhere, and a visible reason for each
refused file (formats the uploader used to filter out by extension included)."""
from pathlib import Path

import pytest

from app_server import streamlit_app
from hostile import Specimen, corpus

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "artifacts" / "screenshots"
SAMPLE = ["mode-F.tiff", "rgb16.tiff", "mode-I16.png", "mode-LAB.tiff", "float-nan.tiff", "thin-1x20.png",
          "thin-20x1.png", "animated.gif", "icon.ico", "notes.png", "thin-1x300000.png", "picture.ppm"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


@pytest.fixture(scope="module")
def app_url():
    with streamlit_app("test_browser_uploads") as url:
        yield url


def test_odd_uploads_are_drawn_or_refused_in_words_never_an_exception(app_url):
    from playwright.sync_api import sync_playwright

    specimens = {s.name: s for s in corpus()}
    sample = [specimens[name] for name in SAMPLE]
    markdown_name = "**bold** $x$ :red[red] [a](b).png"  # a stranger's file name, to be shown as written
    sample.append(Specimen(markdown_name, b"plain text", refusal="not an image"))
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 2400})
        page.set_default_timeout(90_000)
        page.goto(app_url)
        page.get_by_text("Upload images").first.wait_for()
        page.locator("[data-testid=stMain] input[type=file]").first.set_input_files(
            [{"name": s.name, "mimeType": "application/octet-stream", "buffer": s.data} for s in sample])
        page.get_by_text("Predicted:").wait_for()
        page.get_by_text("Gallery").wait_for()
        alerts = page.locator("[data-testid=stAlertContentError]")
        for s in sample:
            if not s.accepted:
                alerts.filter(has_text=s.name).first.wait_for()
        page.wait_for_timeout(1500)  # let the last overlays render
        page.screenshot(path=str(SHOTS / "hostile_uploads.png"), full_page=True)
        assert page.locator("[data-testid=stException]").count() == 0
        shown = alerts.all_inner_texts()
        assert any("is an ICO file" in t for t in shown) and any("aspect ratio of 300,000:1" in t for t in shown)
        assert not any("again" in t for t in shown)
        assert any(f"'{markdown_name}' is not an image" in t for t in shown), shown
        # Each accepted sample drawn in the gallery; the thin 1 x 20 strip stays a strip, not a page.
        assert page.locator("[data-testid=stMain] [data-testid=stImage] img").count() >= sum(s.accepted for s in sample)
        heights = page.locator("[data-testid=stMain] [data-testid=stImage] img").evaluate_all(
            "imgs => imgs.map(i => i.getBoundingClientRect().height)")
        assert max(heights) <= 600, heights

        page.get_by_role("link", name="Intervene").click()
        page.get_by_text("Search concepts").wait_for()
        page.wait_for_timeout(1000)
        assert page.locator("[data-testid=stException]").count() == 0
        browser.close()
