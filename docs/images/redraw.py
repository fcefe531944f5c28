"""Redraw the README's two report pictures from the shipped demo (after the demo is rebuilt).

    python docs/images/redraw.py

- report_explanation_page.png: the story bird's page of the explanation PDF (the demo's two birds, the water
  background marked spurious and switched off, judged against the validation split), at 50 dpi;
- report_model_card_html.png: the top of the demo bundle's model card in HTML, in chromium, at half scale.
Needs chromium, Playwright and poppler's ``pdftoppm``.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from cbm_core import Intervention, Pipeline, load_bundle  # noqa: E402
from cbm_core.demo.paths import DEMO_BUNDLE, SAMPLES_DIR, load_demo_features  # noqa: E402
from cbm_core.report import explanation_report, model_card  # noqa: E402

STORY = SAMPLES_DIR / "13_azure_diver_on_foliage.png"
ON_WATER = SAMPLES_DIR / "01_azure_diver_on_water.png"


def main() -> None:
    from playwright.sync_api import sync_playwright

    val = load_demo_features("val")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        why = explanation_report(Pipeline.from_bundle(DEMO_BUNDLE, device="cpu"), [STORY, ON_WATER],
                                 spurious=["water background"], intervention=Intervention().ablate("water background"),
                                 evaluation=val, evaluation_name="Toy Birds validation split")
        pdf = why.save(tmp / "why.pdf")
        subprocess.run(["pdftoppm", "-png", "-r", "50", "-f", "3", "-l", "3", "-singlefile", str(pdf),
                        str(HERE / "report_explanation_page")], check=True)
        card = model_card(load_bundle(DEMO_BUNDLE), evaluation=val, evaluation_name="Toy Birds validation split")
        html = card.save(tmp / "card.html")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium")
            page = browser.new_page(viewport={"width": 1000, "height": 1300}, device_scale_factor=0.5)
            page.goto(html.as_uri())
            page.screenshot(path=str(HERE / "report_model_card_html.png"))
            browser.close()
    for name in ("report_explanation_page.png", "report_model_card_html.png"):
        print(HERE / name)


if __name__ == "__main__":
    main()
