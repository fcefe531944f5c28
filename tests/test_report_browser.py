"""The Download report buttons in a real browser: `streamlit run` and Debian's chromium (Playwright). A click
runs the deferred download on Streamlit's worker thread, outside the page's run, and the browser receives
the file: an HTML report and a PDF about the bird Inspect opens on."""
from __future__ import annotations

from pathlib import Path

import pytest

from cbm_core.report import browser
from test_browser import CHROMIUM, app_url  # noqa: F401 (the server fixture)
from test_report import Page, sections

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists() or not browser.available(),
                                reason="Debian's chromium or Playwright is not installed (.ci/run installs both)")


def test_inspects_download_buttons_deliver_an_html_report_and_a_pdf(app_url, tmp_path):  # noqa: F811
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
        page = chromium.new_page(viewport={"width": 1400, "height": 2600}, accept_downloads=True)
        page.set_default_timeout(120_000)
        page.goto(app_url)
        page.get_by_text("Download report").first.wait_for()
        buttons = page.locator('[data-testid="stDownloadButton"] button')
        html_button = buttons.filter(has_text="HTML").first
        with page.expect_download() as got:
            html_button.click()
        html_path = tmp_path / got.value.suggested_filename
        got.value.save_as(html_path)
        pdf_button = buttons.filter(has_text="PDF").first
        with page.expect_download() as got:
            pdf_button.click()
        pdf_path = tmp_path / got.value.suggested_filename
        got.value.save_as(pdf_path)
        errors = page.locator('[data-testid="stDownloadButtonError"]').count()
        chromium.close()
    assert errors == 0
    assert html_path.suffix == ".html" and pdf_path.suffix == ".pdf"
    shown = Page(html_path.read_text(encoding="utf-8"))
    assert sections(shown)[:2] == ["How to read this report", "About the model"]
    assert "The model calls this image" in shown.all_text and "How far to believe this explanation" in shown.all_text
    assert pdf_path.read_bytes().startswith(b"%PDF")
    pypdf = pytest.importorskip("pypdf")
    text = "\n".join(page.extract_text() for page in pypdf.PdfReader(pdf_path).pages)
    assert "How to read this report" in text and "How the score adds up" in text
