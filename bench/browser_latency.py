"""In a real browser: time from a slider change to the updated prediction on the Intervene page
(p50 / p95 over 60 moves; budget p95 < 100 ms), and from an upload to the first full render.

    python bench/browser_latency.py        # needs Debian's chromium (/usr/bin/chromium)

Each move presses an arrow key on a concept's slider; it counts as rendered when the page shows
the new intervention ("set '<concept>' to p<N>") next to the recomputed probabilities — both are
drawn by the same fragment run.
"""
from __future__ import annotations

import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import record  # noqa: E402


def main(moves: int = 60) -> None:
    from playwright.sync_api import sync_playwright

    from cbm_core import Pipeline
    from cbm_core.demo.build_bundle import DEMO_BUNDLE, SAMPLES_DIR

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
                               "--server.address", "127.0.0.1", "--server.headless", "true"], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sample = next(p for p in sorted(SAMPLES_DIR.glob("*.png")) if "azure_diver_on_land" in p.name)
    concept = Pipeline.from_bundle(DEMO_BUNDLE, device="cpu").explain(str(sample)).to_frame(0).concept[1]
    try:
        time.sleep(4)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.set_default_timeout(120_000)
            page.goto(f"http://127.0.0.1:{port}")
            page.get_by_text("Upload images").first.wait_for()
            time.sleep(1)
            t0 = time.perf_counter()
            page.locator("[data-testid=stMain] input[type=file]").first.set_input_files(str(sample))
            page.get_by_text("Predicted:").wait_for()
            page.locator("[data-testid=stMain] img").nth(3).wait_for()  # the saliency overlays
            upload_ms = (time.perf_counter() - t0) * 1000
            page.get_by_role("link", name="Intervene").click()
            page.get_by_text("Search concepts").wait_for()
            time.sleep(2)
            slider = page.get_by_role("slider", name=f"{concept} percentile")
            slider.focus()
            times = []
            first_left = int(slider.input_value()) > 50  # move away from the nearer end first
            for i in range(moves):
                key = "ArrowLeft" if ((i // 10) % 2 == 0) == first_left else "ArrowRight"
                before = int(slider.input_value())
                target = before + (1 if key == "ArrowRight" else -1)
                t = time.perf_counter()
                slider.press(key)
                page.get_by_text(f"set '{concept}' to p{target}").wait_for()
                times.append((time.perf_counter() - t) * 1000)
            toggle = page.get_by_role("switch", name=concept, exact=True)
            toggles = []
            for i in range(20):
                off = i % 2 == 0
                t = time.perf_counter()
                toggle.click(force=True)
                if off:
                    page.get_by_text(f"switch off '{concept}'").wait_for()
                else:
                    page.get_by_text(f"switch off '{concept}'").wait_for(state="detached")
                toggles.append((time.perf_counter() - t) * 1000)
            browser.close()
    finally:
        server.terminate()
    times.sort()
    toggles.sort()
    record("browser_latency", [{"moves": moves, "slider_p50_ms": statistics.median(times),
                                "slider_p95_ms": times[int(0.95 * (len(times) - 1))], "slider_max_ms": times[-1],
                                "toggle_p50_ms": statistics.median(toggles), "toggle_p95_ms": toggles[int(0.95 * (len(toggles) - 1))],
                                "upload_to_full_render_ms": upload_ms}])


if __name__ == "__main__":
    main()
