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

The Inspect page and the ordinary Streamlit controls (``--only inspect``):
- ``inspect_render``: a fresh session opens Inspect; a non-square photo (1200 x 800 JPEG, new
  content each time, so nothing is cached) is uploaded; until the page has finished its script
  (``script``) and every image has loaded and every chart has drawn, two frames later
  (``painted``); ``busy`` is the browser's main-thread long tasks in that time (the rest is the
  server, the network and idle waiting);
- ``opacity``: an arrow key on the overlay-opacity control until the overlays show the change;
- ``correlation``: an arrow key on Evaluate's correlation threshold until the table shows the change.
Both controls are the browser's own now (ui/saliency_panel.js, ui/correlation_panel.js); run on an older
checkout, where they were Streamlit sliders, the same clocks wait for the page's re-run to be drawn.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import record  # noqa: E402


@contextlib.contextmanager
def streamlit_server():
    """``streamlit run app.py`` on a free local port; yields the URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
                               "--server.address", "127.0.0.1", "--server.headless", "true"], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(4)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=20)


def percentiles(row: dict, name: str, values: list[float]) -> None:
    values = sorted(values)
    row[f"{name}_p50_ms"] = statistics.median(values)
    row[f"{name}_p95_ms"] = values[int(0.95 * (len(values) - 1))]


def main(moves: int = 100, renders: int = 20, only: tuple[str, ...] = ("intervene", "inspect")) -> None:
    from playwright.sync_api import sync_playwright

    # Other work on the machine slows every clock here: record the load (1-minute average) around the run.
    row = {"load_average_start": round(os.getloadavg()[0], 2)}
    with streamlit_server() as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox"])
        context = browser.new_context(viewport={"width": 1400, "height": 1600})
        context.add_init_script(SETTLED)
        page = context.new_page()
        page.set_default_timeout(120_000)
        if "intervene" in only:
            row.update(intervene_latency(page, url, moves))
        if "inspect" in only:
            row.update(inspect_latency(page, url, renders))
        browser.close()
    row["load_average_end"] = round(os.getloadavg()[0], 2)
    record("browser_latency" if set(only) >= {"intervene", "inspect"} else "browser_latency_" + "_".join(only), [row])


def intervene_latency(page, url: str, moves: int) -> dict:
    from cbm_core import Pipeline
    from cbm_core.demo.paths import DEMO_BUNDLE, SAMPLES_DIR

    sample = next(p for p in sorted(SAMPLES_DIR.glob("*.png")) if "azure_diver_on_land" in p.name)
    concept = Pipeline.from_bundle(DEMO_BUNDLE, device="cpu").explain(str(sample)).to_frame(0).concept[1]
    page.goto(url)
    page_ready(page)
    # The bird these clocks were first measured on, shown on Inspect, is what Intervene opens on
    # (upload-to-render is measured by inspect_latency).
    page.locator("[data-testid=stMain] input[type=file]").first.set_input_files(str(sample))
    page.locator("[data-testid=stMain]").get_by_text(f"{sample.name} ·").wait_for()
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
    row = {"moves": moves}
    for name, values in (("slider", times), ("slider_burst", bursts), ("slider_frame", frames), ("server_ack", acks),
                         ("toggle", toggles), ("toggle_frame", toggle_frames)):
        percentiles(row, name, values)
    return row


def photos(folder: Path, n: int) -> list[Path]:
    """``n`` non-square "photos" (1200 x 800 JPEG): a demo bird scaled up, its background mirrored out
    to the sides, and a little seeded noise, so each has new content (no cache hit anywhere)."""
    import numpy as np
    from PIL import Image, ImageOps

    from cbm_core.demo.paths import SAMPLES_DIR

    samples = sorted(SAMPLES_DIR.glob("*.png"))
    out = []
    for i in range(n):
        src = samples[i % len(samples)]
        w, h = 1200, 800
        bird = Image.open(src).convert("RGB").resize((h, h), Image.BICUBIC)
        canvas = Image.new("RGB", (w, h))
        left = (w - h) // 2
        mirrored = ImageOps.mirror(bird)
        canvas.paste(mirrored.crop((h - left, 0, h, h)), (0, 0))
        canvas.paste(bird, (left, 0))
        canvas.paste(mirrored.crop((0, 0, w - left - h, h)), (left + h, 0))
        noisy = np.asarray(canvas, dtype=np.int16) + np.random.default_rng(i).integers(-6, 7, (h, w, 3))
        path = folder / f"photo{i:02d}_{src.stem.split('_', 1)[1]}.jpg"  # the species stays in the name
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        out.append(path)
    return out


def page_ready(page) -> None:
    """Until a freshly opened page has finished its first run and drawn it ("initial" is not done)."""
    page.wait_for_selector("[data-testid=stApp][data-test-script-state=notRunning]")
    settled(page, rerun=False)()
    time.sleep(0.5)  # anything the first run set off (a component's first message) has arrived


def settled(page, **options) -> dict:
    """Arm the in-page watcher (SETTLED), return a function that waits for it."""
    page.evaluate("(o) => { window.cbmPending = window.cbmSettled(o); }", options)
    return lambda: page.evaluate("() => window.cbmPending")


def inspect_latency(page, url: str, renders: int) -> dict:
    row, script, painted, busy, opacity, correlation = {"renders": renders}, [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for path in photos(Path(tmp), renders + 1):
            page.goto(url)  # a fresh session each time
            page_ready(page)
            wait = settled(page, rerun=True, text=path.name)
            page.locator("[data-testid=stMain] input[type=file]").first.set_input_files(str(path))
            result = wait()
            if path.name.startswith("photo00"):
                continue  # the first upload warms the server's caches (backbone, bundle): not counted
            script.append(result["script_ms"])
            painted.append(result["painted_ms"])
            busy.append(result["busy_ms"])
    # The overlay opacity on the page as the last upload left it, then Evaluate's correlation slider.
    for i in range(20):
        control = opacity_control(page)
        control.focus()
        wait = settled(page, rerun=opacity_reruns(page), fingerprint="overlays")
        t = time.perf_counter()
        control.press("ArrowLeft" if (i // 5) % 2 == 0 else "ArrowRight")
        wait()
        opacity.append((time.perf_counter() - t) * 1000)
    page.get_by_role("link", name="Evaluate").click()
    page.get_by_text("Correlation above").first.wait_for()
    page_ready(page)
    in_browser = page.locator(".pairs").get_by_role("slider", name="Correlation above")
    slider = in_browser if in_browser.count() else \
        page.locator("[data-testid=stSlider]").filter(has_text="Correlation above").get_by_role("slider")
    for i in range(20):
        slider.focus()
        step = -0.01 if (i // 5) % 2 == 0 else 0.01
        if in_browser.count():  # the panel's message changes with the threshold; nothing re-runs
            wait = settled(page, rerun=False, fingerprint="pairs")
        else:  # a Streamlit slider: until the page has re-run and drawn
            wait = settled(page, rerun=True)
        t = time.perf_counter()
        slider.press("ArrowLeft" if step < 0 else "ArrowRight")
        wait()
        correlation.append((time.perf_counter() - t) * 1000)
    for name, values in (("inspect_render_script", script), ("inspect_render_painted", painted),
                         ("inspect_render_busy", busy), ("opacity", opacity), ("correlation", correlation)):
        percentiles(row, name, values)
    return row


def opacity_control(page):
    """The overlay opacity control: the browser-side one in the saliency panel, or (before it existed)
    a Streamlit slider."""
    in_panel = page.locator(".saliency").get_by_role("slider", name="Overlay opacity")
    if in_panel.count():
        return in_panel
    return page.locator("[data-testid=stSlider]").filter(has_text="Opacity").get_by_role("slider")


def opacity_reruns(page) -> bool:
    return not page.locator(".saliency").get_by_role("slider", name="Overlay opacity").count()


# Runs in every page (an init script). cbmSettled(options) resolves, measured from its call, once:
# the app has re-run its script (options.rerun: the state went to "running" and back), the main area
# shows options.text, the look of the overlays or of the pairs table has changed (options.fingerprint),
# nothing is stale, every image has loaded and every plotly chart has drawn — and two more frames
# have passed (painted). busy_ms sums the main thread's long tasks meanwhile.
SETTLED = """
(() => {
  const longTasks = [];
  try {
    new PerformanceObserver((list) => longTasks.push(...list.getEntries())).observe({ type: 'longtask', buffered: true });
  } catch (e) { /* not every browser reports long tasks */ }
  // Browser components (st.components.v2) draw inside shadow roots; find those once per check, and
  // only once the cheap conditions hold, so that watching costs the page next to nothing.
  const roots = () => {
    const out = [document];
    for (const el of document.querySelectorAll('[data-testid=stMain] *')) if (el.shadowRoot) out.push(el.shadowRoot);
    return out;
  };
  const all = (selector) => roots().flatMap((r) => [...r.querySelectorAll(selector)]);
  const fingerprints = {
    overlays: () => all('[data-testid=stMain] img, .saliency img, .saliency .heat')
      .map((img) => `${img.src || ''}|${getComputedStyle(img).opacity}`).join(';'),
    pairs: () => all('.pairs .message, .pairs .value').map((node) => node.textContent).join('|'),
  };
  const drawn = () => all('img').every((img) => img.complete && img.naturalWidth > 0)
      && [...document.querySelectorAll('[data-testid=stPlotlyChart]')].every((c) => c.querySelector('.main-svg'))
      && !document.querySelector('[data-stale=true]');
  const frame = () => new Promise((resolve) => requestAnimationFrame(resolve));
  window.cbmSettled = (options) => new Promise((resolve, reject) => {
    const t0 = performance.now();
    const app = document.querySelector('[data-testid=stApp]');
    let sawRunning = app.dataset.testScriptState === 'running';
    let scriptAt = null;
    const watcher = new MutationObserver(() => { if (app.dataset.testScriptState === 'running') sawRunning = true; });
    watcher.observe(app, { attributes: true, attributeFilter: ['data-test-script-state'] });
    const look = fingerprints[options.fingerprint];
    const before = look ? look() : null;
    const check = async () => {
      const state = app.dataset.testScriptState;
      if (state === 'running') sawRunning = true;
      const main = document.querySelector('[data-testid=stMain]');
      const hasText = () => !options.text || (main && main.textContent.includes(options.text));
      const ran = options.rerun ? sawRunning && state === 'notRunning' : state !== 'running';
      if (ran && scriptAt === null) scriptAt = performance.now() - t0;
      const shown = ran && hasText();
      const changed = shown && (!look || look() !== before);
      if (ran && shown && changed && drawn()) {
        await frame(); await frame();
        watcher.disconnect();
        const t1 = performance.now();
        const busy = longTasks.filter((t) => t.startTime >= t0 && t.startTime < t1)
            .reduce((sum, t) => sum + Math.min(t.duration, t1 - t.startTime), 0);
        resolve({ script_ms: scriptAt, painted_ms: t1 - t0, busy_ms: busy });
      } else if (performance.now() - t0 > 90000) {
        watcher.disconnect();
        reject(new Error(`not settled: ran=${ran} shown=${shown} changed=${changed} drawn=${drawn()}`));
      } else {
        requestAnimationFrame(check);
      }
    };
    requestAnimationFrame(check);
  });
})();
"""


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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--moves", type=int, default=100, help="slider moves on Intervene")
    parser.add_argument("--renders", type=int, default=20, help="uploads to a fresh Inspect page")
    parser.add_argument("--only", default="intervene,inspect", help="intervene, inspect, or both (comma-separated)")
    args = parser.parse_args()
    main(args.moves, args.renders, tuple(args.only.split(",")))
