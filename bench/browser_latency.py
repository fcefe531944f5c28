"""In a real browser: time from a slider change to the updated prediction on the Intervene page
(p50 / p95 over 100 moves; budget p95 < 100 ms), and from an upload to the first full render.

    python bench/browser_latency.py        # needs Debian's chromium (/usr/bin/chromium)

The Intervene page recomputes the prediction in the browser (ui/live_panel.js), so three clocks:
- ``slider``: one arrow-key press on a concept's slider, sent by Playwright, until the panel shows
  the new probabilities (its ``data-probs`` changes) — the round trip a user's key press makes,
  plus Playwright's own messaging; ``slider_burst``: the same with presses back to back, as when
  an arrow key is held down, while the server records earlier moves;
- ``slider_frame`` / ``toggle_frame``: inside the page, from the input event (or the click) until
  the frame after the one that drew the new numbers (no Playwright in the loop; two animation
  frames, so about 33 ms at the headless browser's 60 Hz is the floor);
- ``server_ack``: until Python has recorded the change in the undo history (the "Active: ..."
  caption), which the user does not wait for;
and the same for switching a concept off and on (``toggle``).
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


def main(moves: int = 100) -> None:
    from playwright.sync_api import sync_playwright

    from cbm_core import Pipeline
    from cbm_core.demo.paths import DEMO_BUNDLE, SAMPLES_DIR

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
            live = page.locator(".live")
            slider = live.get_by_role("slider", name=f"{concept} percentile")
            slider.focus()
            first_left = int(slider.input_value()) > 50  # move away from the nearer end first
            times, acks = [], []
            for i in range(moves):
                key = "ArrowLeft" if ((i // 10) % 2 == 0) == first_left else "ArrowRight"
                target = int(slider.input_value()) + (1 if key == "ArrowRight" else -1)
                before = live.get_attribute("data-probs")
                t = time.perf_counter()
                slider.press(key)
                page.wait_for_function("([el, old]) => el.dataset.probs !== old", arg=[live.element_handle(), before],
                                       polling="raf")
                times.append((time.perf_counter() - t) * 1000)
                page.get_by_text(f"set '{concept}' to p{target}").wait_for()
                acks.append((time.perf_counter() - t) * 1000)
                page.wait_for_function("el => el.dataset.synced === 'true'", arg=live.element_handle())
            bursts = []  # a held-down arrow key: presses back to back, the server catching up meanwhile
            for i in range(moves):
                before = live.get_attribute("data-probs")
                t = time.perf_counter()
                slider.press("ArrowLeft" if (i // 10) % 2 == 0 else "ArrowRight")
                page.wait_for_function("([el, old]) => el.dataset.probs !== old", arg=[live.element_handle(), before],
                                       polling="raf")
                bursts.append((time.perf_counter() - t) * 1000)
            page.wait_for_function("el => el.dataset.synced === 'true'", arg=live.element_handle())
            frames = page.evaluate(FRAME_TIMER, [moves, concept, "slider"])
            page.wait_for_function("el => el.dataset.synced === 'true'", arg=live.element_handle())
            toggle = live.get_by_role("switch", name=f"{concept} on")
            toggles = []
            for i in range(20):
                before = live.get_attribute("data-probs")
                t = time.perf_counter()
                toggle.press("Space")  # as for the slider: a key press, not Playwright's click with its actionability waits
                page.wait_for_function("([el, old]) => el.dataset.probs !== old", arg=[live.element_handle(), before],
                                       polling="raf")
                toggles.append((time.perf_counter() - t) * 1000)
                caption = page.get_by_text(f"switch off '{concept}'")
                caption.wait_for() if i % 2 == 0 else caption.wait_for(state="detached")
                page.wait_for_function("el => el.dataset.synced === 'true'", arg=live.element_handle())
            toggle_frames = page.evaluate(FRAME_TIMER, [20, concept, "toggle"])
            browser.close()
    finally:
        server.terminate()
    row = {"moves": moves}
    for name, values in (("slider", times), ("slider_burst", bursts), ("slider_frame", frames), ("server_ack", acks),
                         ("toggle", toggles), ("toggle_frame", toggle_frames)):
        values = sorted(values)
        row[f"{name}_p50_ms"] = statistics.median(values)
        row[f"{name}_p95_ms"] = values[int(0.95 * (len(values) - 1))]
    row["upload_to_full_render_ms"] = upload_ms
    record("browser_latency", [row])


# Runs in the page: move the slider ``n`` times by script and time each input event until the
# frame after the one that drew the new numbers (two animation frames: the paint has happened).
FRAME_TIMER = """
async ([n, concept, control]) => {
  const live = [...document.querySelectorAll('*')].map((e) => e.shadowRoot && e.shadowRoot.querySelector('.live'))
      .find(Boolean) || document.querySelector('.live');
  const input = live.querySelector(`input[aria-label="${concept} ${control === 'slider' ? 'percentile' : 'on'}"]`);
  const frame = () => new Promise((resolve) => requestAnimationFrame(resolve));
  const times = [];
  for (let i = 0; i < n; i++) {
    const old = live.dataset.probs;
    const t = performance.now();
    if (control === 'slider') {
      const v = Number(input.value);
      input.value = String(v > 50 ? v - 1 : v + 1);
      input.dispatchEvent(new Event('input', { bubbles: true }));
    } else {
      input.click();  // fires "change", which also sends the edit to the server
    }
    await frame(); await frame();
    if (live.dataset.probs === old) throw new Error('the panel did not update');
    times.push(performance.now() - t);
    if (control !== 'slider') await new Promise((resolve) => setTimeout(resolve, 150));
  }
  input.dispatchEvent(new Event('change', { bubbles: true }));
  return times;
}
"""


if __name__ == "__main__":
    main()
