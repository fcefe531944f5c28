"""Chromium, for what a report needs a browser for: plotly figures as static SVG, and the PDF.

Both come from one headless chromium driven by Playwright (``pip install -r requirements-dev.txt`` pins it;
the browser is the system's: Debian's ``chromium``, or any path in ``$CBM_CHROMIUM``). The SVGs are
drawn by plotly.js itself (``Plotly.toImage``, loaded from the plotly package, never from the network),
so a figure in a report is the same figure a page shows. The PDF is the report's own HTML printed by
the same engine that shows it, so the two look alike.

Nothing here reaches the network: every request the pages make is aborted except plotly.js, which is
served from the installed package; the page that prints a report runs without JavaScript.

Playwright's synchronous API refuses to run in a thread that has an asyncio loop (a server's), so
every job runs in a thread of its own.
"""
from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path
from typing import Callable, Sequence

from ..errors import CBMError
from .figures import for_report

DEFAULT_CHROMIUM = "/usr/bin/chromium"
_SVG_PAGE = "http://cbm-report.invalid/figures.html"
_PLOTLY_URL = "http://cbm-report.invalid/plotly.min.js"
# Footer on every PDF page: the page number and the count, small and grey.
_FOOTER = ('<div style="width:100%;font-size:8px;color:#6b7280;padding:0 13mm;display:flex;'
           'justify-content:space-between;font-family:sans-serif"><span class="title"></span>'
           '<span>page <span class="pageNumber"></span> of <span class="totalPages"></span></span></div>')


def find_chromium() -> str | None:
    """The chromium to use: ``$CBM_CHROMIUM``, else Debian's /usr/bin/chromium, else one on the PATH."""
    wanted = os.environ.get("CBM_CHROMIUM")
    if wanted:
        return wanted if Path(wanted).is_file() else None
    if Path(DEFAULT_CHROMIUM).is_file():
        return DEFAULT_CHROMIUM
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def unavailable() -> str | None:
    """Why a browser job cannot run here (in words a user can act on), or None when it can."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        return ("Making a PDF needs Playwright: pip install -r requirements-dev.txt (it drives the system's chromium; "
                "the HTML report needs neither).")
    if find_chromium() is None:
        where = os.environ.get("CBM_CHROMIUM")
        return (f"Making a PDF needs chromium, and '{where}' ($CBM_CHROMIUM) is not a file." if where else
                "Making a PDF needs chromium, which is not installed: on Debian or Ubuntu, apt-get install chromium "
                "(or set $CBM_CHROMIUM to a Chrome or Chromium binary). The HTML report needs no browser.")
    return None


def available() -> bool:
    return unavailable() is None


def _in_thread(job: Callable[[], object]):
    result: dict = {}

    def run():
        try:
            result["value"] = job()
        except BaseException as exc:  # handed to the caller's thread
            result["error"] = exc

    worker = threading.Thread(target=run, name="cbm-report-chromium", daemon=True)
    worker.start()
    worker.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def render(figures: Sequence, build_html: Callable[[list[str]], str], pdf: bool,
           timeout_s: float = 120.0) -> tuple[str, bytes | None]:
    """In one browser session: draw ``figures`` (plotly) as SVG data URIs, call ``build_html(uris)``
    for the report's HTML, and print it to an A4 PDF when ``pdf``. Returns (html, pdf bytes or None).
    A ``CBMError`` says what is missing when the browser cannot run."""
    reason = unavailable()
    if reason:
        raise CBMError(reason)
    return _in_thread(lambda: _render(list(figures), build_html, pdf, timeout_s * 1000))


def _render(figures, build_html, pdf: bool, timeout_ms: float):
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    chromium = find_chromium()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, timeout=timeout_ms)
            try:
                svgs = _figure_svgs(browser, figures, timeout_ms) if figures else []
                html = build_html(svgs)
                data = _print(browser, html, timeout_ms) if pdf else None
            finally:
                browser.close()
    except PlaywrightError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CBMError(f"Chromium ({chromium}) could not make the report: {first}") from None
    return html, data


def _block_network(route, allowed: dict[str, tuple[str, str | Path]]) -> None:
    hit = allowed.get(route.request.url)
    if hit is None:
        route.abort()
    elif isinstance(hit[1], Path):
        route.fulfill(status=200, content_type=hit[0], path=str(hit[1]))
    else:
        route.fulfill(status=200, content_type=hit[0], body=hit[1])


def _figure_svgs(browser, figures, timeout_ms: float) -> list[str]:
    import plotly
    from plotly.io.json import to_json_plotly

    plotly_js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    allowed = {_SVG_PAGE: ("text/html", f'<!doctype html><meta charset="utf-8"><script src="{_PLOTLY_URL}"></script>'),
               _PLOTLY_URL: ("application/javascript", plotly_js)}
    context = browser.new_context()
    try:
        context.route("**/*", lambda route: _block_network(route, allowed))
        page = context.new_page()
        page.set_default_timeout(timeout_ms)
        page.goto(_SVG_PAGE)
        uris = []
        for fig in figures:
            spec = json.loads(to_json_plotly(for_report(fig)))
            width = int(fig.layout.width or 760)
            height = int(fig.layout.height or 420)
            uri = page.evaluate("([f, w, h]) => Plotly.toImage(f, {format: 'svg', width: w, height: h})",
                                [spec, width, height])
            if not isinstance(uri, str) or not uri.startswith("data:image/svg+xml"):
                raise CBMError("plotly.js did not return an SVG image for a figure of the report.")
            uris.append(_without_ligatures(uri))
        return uris
    finally:
        context.close()


def _without_ligatures(uri: str) -> str:
    """The SVG data URI with ligatures switched off: a PDF's text must read 'finch', not 'ﬁnch' (U+FB01), so
    that a reader's search and copy find the words (report.css does the same for the document)."""
    import re
    from urllib.parse import quote, unquote

    head, _, body = uri.partition(",")
    if ";base64" in head:
        return uri
    svg = re.sub(r"(<svg\b[^>]*>)", r"\1<style>text { font-variant-ligatures: none; }</style>", unquote(body), count=1)
    return f"{head},{quote(svg, safe='')}"


def _print(browser, html: str, timeout_ms: float) -> bytes:
    # No JavaScript, no network: the printed report is exactly its HTML and the data: images in it.
    context = browser.new_context(java_script_enabled=False)
    try:
        context.route("**/*", lambda route: route.abort())
        page = context.new_page()
        page.set_default_timeout(timeout_ms)
        page.set_content(html, wait_until="load")
        page.emulate_media(media="print")
        return page.pdf(format="A4", print_background=True, display_header_footer=True,
                        header_template="<span></span>", footer_template=_FOOTER,
                        margin={"top": "14mm", "bottom": "16mm", "left": "13mm", "right": "13mm"})
    finally:
        context.close()
