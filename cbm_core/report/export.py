"""Reports for people who never saw the dashboard: an explanation report and a model card.

    report = explanation_report(pipeline, ["bird.png", "gull.jpg"], spurious=["water background"])
    report.save("why.html")      # one self-contained file: images and charts embedded, nothing remote
    report.save("why.pdf")       # the same document printed by chromium (report/browser.py)
    model_card(model, evaluation=val_features).save("card.pdf")

A report is one HTML document. Pictures are embedded as ``data:`` URIs; the bar charts are the
dashboard's own HTML charts (``figures.py``); plotly figures become static SVG drawn by plotly.js in
chromium when it is there, and are otherwise embedded as interactive charts with plotly.js inlined, so
the HTML needs no browser to make and no network to open. A Content-Security-Policy in the document
forbids loading anything but what is inside it. Every name from a bundle, a file or a user is escaped.

The PDF is the HTML printed by chromium, so it needs chromium (and Playwright); without them
``to_pdf`` raises a ``CBMError`` that says how to install them.
"""
from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch

from .. import __version__
from ..explain.counterfactual import counterfactual as find_counterfactual
from ..errors import CBMError, ImageError
from ..explain.wording import concept_directions, label_from_filename
from ..data.images import load_image, read_image_bytes
from ..core.interventions import Intervention
from ..explain.overlay import colormap, seen_region
from . import browser, figures, tables

_CSS = Path(__file__).with_name("report.css")
RUNNER_UP = "runner-up"

HOW_TO_READ_EXPLANATION = """
<p>The classifier in this report does not go straight from pixels to an answer. It first measures how
strongly it sees each of a fixed list of named <b>concepts</b> in the image (for a bird: “white breast”,
“water background”, …), then adds up evidence: every concept moves the <b>score</b> of each class up or
down by a fixed amount, and the class with the highest score wins. Because the score is a plain sum, the
charts show exactly how much each concept counted; nothing is approximated.</p>
<ul>
<li><b>Present / absent.</b> A concept is <i>present</i> when the model measures it more strongly than on an
average training image, <i>absent</i> when less. <b>p95</b> means stronger than 95 % of the training images.
Absence is evidence too: a model may favour a land bird because there is <i>no</i> water.</li>
<li><b>For / against.</b> Blue bars push the score towards the class, red bars away from it; solid bars are
present concepts, hatched bars absent ones.</li>
<li><b>Scores.</b> A class's score is a logit: a lead of 1 point multiplies its odds against the other class
by about 2.7, a lead of 2 by about 7.4. The probabilities say the same on a 0–100 % scale.</li>
<li><b>How the score adds up.</b> Each bar starts where the previous one ended: the class's starting point,
then each concept's push, then the other concepts summed; the last bar is the total score.</li>
<li><b>Heat maps</b> show where in the image the model sees a concept (yellow: strongly; dark blue: weakly).
They are a guide to where it looked, not proof that the concept is there; the map of an absent concept shows
where it is least absent. Under each map: present or absent, and how much the concept added to the class's score
(+) or took from it (−).</li>
<li><b>How far to believe it.</b> Whether the image resembles the images the model was made with (if not, its
explanation may mean nothing); for each concept the explanation leans on, the chance that it is really in the
image; and whether its heat map is “on its evidence”: blanking the map's brightest tenth lowers the concept's
score clearly more than blanking the same area elsewhere (“spread out” or “not on its evidence” when not; “blank”
when the method found no evidence for it at all). A “fragile
name” is one whose rewordings (“red crown”, “the crown is red”) pick out different images.</li>
<li><b>What if.</b> “Your changes” shows the prediction after concepts were switched off or set by hand;
“Smallest change” shows the fewest concept changes (each kept within what training images show) that would
make the runner-up win. Together they say how much the decision rests on a few concepts.</li>
</ul>
"""

HOW_TO_READ_CARD = """
<p>A model card says what a model is, what it was made from, how well it works and what was changed by
hand since. This model is a <b>concept bottleneck model</b>: it scores each image against a list of named
concepts and decides with a weighted sum of those scores, so each class is described by the few concepts
it relies on.</p>
<ul>
<li><b>Accuracy</b> is the share of images classified correctly. <b>Worst-group accuracy</b> is the lowest
accuracy over groups of images (for example waterbirds photographed on land): a model that leans on a
shortcut does well on average and badly on the group where the shortcut fails.</li>
<li><b>Concepts per class (NEC)</b> is how many concepts each class uses on average. Fewer concepts make
explanations shorter and easier to check.</li>
<li><b>Edits</b> are changes made by hand after training (a concept removed for every image, a weight
changed), listed with their effect on held-out images.</li>
</ul>
"""


# -- the document ----------------------------------------------------------------------------------------

def _e(text) -> str:
    return html.escape(str(text), quote=True)


@dataclass
class Report:
    """One report: ``title``, the HTML ``body`` (with a placeholder per figure) and the plotly
    ``figures`` it shows. ``to_html()`` / ``to_pdf()`` / ``save(path)`` write it."""

    title: str
    kind: str
    body: str
    figures: list = field(default_factory=list)
    skipped: list = field(default_factory=list)  # (image name, reason) of images that could not be read
    _svgs: list | None = field(default=None, repr=False)  # the figures as SVG data URIs, once drawn
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))

    def to_html(self, static: bool | None = None) -> str:
        """The self-contained HTML document. Figures are static SVG when ``static`` (needs chromium) or
        when None and chromium is available; otherwise interactive, with plotly.js inlined."""
        if not self.figures:
            return self._document([], interactive=False)
        if static is None:
            static = browser.available()
        if not static:
            return self._document(None, interactive=True)
        if self._svgs is not None:
            return self._document(self._svgs, interactive=False)
        html_text, _ = browser.render(self.figures, self._static_document, pdf=False)
        return html_text

    def to_pdf(self) -> bytes:
        """The report as an A4 PDF, printed by chromium; ``CBMError`` when chromium or Playwright is missing."""
        figs = self.figures if self._svgs is None else []
        _, data = browser.render(figs, self._static_document, pdf=True)
        return data

    def _static_document(self, svgs: list[str]) -> str:
        """The document with its figures as SVG (kept: a report drawn once is not drawn again)."""
        if self._svgs is None:
            self._svgs = list(svgs)
        return self._document(self._svgs, interactive=False)

    def save(self, path: str | Path) -> Path:
        """Write ``path``: ``.html`` / ``.htm`` for the HTML document, ``.pdf`` for the PDF."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".html", ".htm", ".pdf"):
            raise CBMError(f"'{path}': a report is written as .html or .pdf; give --out a name ending in one of them.")
        data = self.to_pdf() if suffix == ".pdf" else self.to_html().encode("utf-8")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        except OSError as exc:
            raise CBMError(f"Cannot write the report to '{path}': {exc.strerror or exc}.") from None
        return path

    def _document(self, svgs: list[str] | None, interactive: bool) -> str:
        made = (f'<p class="made">Made by cbm_core {__version__} on {_e(self.created)}. Every number in this '
                f"{_e(self.kind)} was computed from the model and the images named in it.</p>")
        body = self.body.replace("</header>", made + "</header>", 1)
        scripts = ""
        for n, fig in enumerate(self.figures):
            marker = _figure_marker(n)
            title = _figure_title(fig)
            if svgs is not None:
                width = int(fig.layout.width or 760)
                piece = (f'<figure class="chart"><img src="{_e(svgs[n])}" alt="{_e(title)}" '
                         f'style="max-width:{width}px"></figure>')
            else:
                spec = json.loads(_plotly_json(figures.for_report(fig)))
                spec.setdefault("layout", {}).pop("width", None)
                piece = (f'<figure class="chart"><div class="plotly-chart" id="cbm-figure-{n}" aria-label="{_e(title)}">'
                         f'</div></figure>')
                scripts += (f"Plotly.newPlot('cbm-figure-{n}', {_script_json(spec['data'])}, "
                            f"{_script_json(spec['layout'])}, {{displaylogo: false, responsive: true}});\n")
            body = body.replace(marker, piece)
        head_script = ""
        if interactive and scripts:
            head_script = f"<script>{_plotly_js()}</script>"
            scripts = f"<script>{scripts}</script>"
        else:
            scripts = ""
        policy = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; font-src data:"
                  + ("; script-src 'unsafe-inline' 'unsafe-eval'" if head_script else ""))
        return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
                f'<meta http-equiv="Content-Security-Policy" content="{policy}">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f'<meta name="generator" content="cbm_core {__version__}">'
                f"<title>{_e(self.title)}</title><style>{figures.charts_css()}\n{_CSS.read_text(encoding='utf-8')}</style>"
                f"{head_script}</head><body><main>{body}</main>{scripts}</body></html>\n")


def _figure_marker(n: int) -> str:
    return f'<cbm-figure data-n="{n}"></cbm-figure>'


def _figure_title(fig) -> str:
    title = fig.layout.title.text if fig.layout.title is not None else None
    return html.unescape(title or "chart")


def _plotly_json(fig) -> str:
    from plotly.io.json import to_json_plotly

    return to_json_plotly(fig)


def _script_json(value) -> str:
    """JSON safe inside a <script> element: no '<', '>' or '&' that could close it."""
    return (json.dumps(value, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("&", "\\u0026").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _plotly_js() -> str:
    import plotly

    js = (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_text(encoding="utf-8")
    return js.replace("</script", "<\\/script")  # inside a <script> element nothing may close it


def _data_uri(image, fmt: str = "JPEG") -> str:
    buffer = io.BytesIO()
    if fmt == "PNG":
        image.save(buffer, format="PNG", optimize=True)
    else:
        image.convert("RGB").save(buffer, format="JPEG", quality=86)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def _bounded(image, max_side: int):
    """``image`` enlarged (at most 3x, crisp) or shrunk so its longer side is about ``max_side``."""
    from PIL import Image

    w, h = image.size
    scale = min(3.0, max_side / max(w, h))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return image.resize(size, Image.NEAREST if scale > 1 else Image.LANCZOS) if size != (w, h) else image


def _section(title: str, inner: str, css: str = "", note: str = "") -> str:
    lead = f'<p class="lead">{note}</p>' if note else ""
    return f'<section class="{css}"><div class="section-head"><h2>{_e(title)}</h2>{lead}</div>{inner}</section>'


def _facts(rows: Sequence[tuple[str, str]]) -> str:
    """A two-column definition table; both columns escaped."""
    items = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f'<table class="facts"><tbody>{items}</tbody></table>'


def _header(title: str, subtitle: str, kind: str) -> str:
    return (f'<header class="doc-header"><div class="kind">{_e(kind)}</div><h1>{_e(title)}</h1>'
            f'<p class="subtitle">{_e(subtitle)}</p></header>')


# -- the explanation report --------------------------------------------------------------------------------

@dataclass
class _Image:
    name: str
    data: bytes
    encoded: object  # pipeline.EncodedImage
    picture: object  # PIL RGB, decoded (first frame), as the model saw it before its resize


def _read_images(pipeline, images) -> tuple[list[_Image], list[tuple[str, str]]]:
    """Decode and encode every image; unreadable ones are returned with their reason, never raised."""
    if isinstance(images, Mapping):
        items = list(images.items())
    else:
        if isinstance(images, (bytes, bytearray, str, Path)):
            images = [images]
        items = []
        for source in images:
            try:
                data, name = read_image_bytes(source)
            except ImageError as exc:
                items.append((str(source), exc))
                continue
            items.append((name, data))
    done, failed = [], []
    for name, data in items:
        if isinstance(data, Exception):
            failed.append((name, str(data)))
            continue
        try:
            encoded = pipeline.encode(bytes(data), name)
            picture = load_image(bytes(data), name).image.convert("RGB")
        except ImageError as exc:
            failed.append((name, str(exc)))
            continue
        done.append(_Image(name, bytes(data), encoded, picture))
    return done, failed


def _resolve_concepts(model, names: Sequence[str], what: str) -> list[str]:
    from ..analysis.edits import _resolve

    return list(dict.fromkeys(_resolve(n, list(model.concepts.names), what) for n in names))


def _spurious_hits(directions, spurious: Sequence[str], top: int = 3) -> list:
    """Rows of the ``top`` largest contributions that are spurious concepts pushing for the class."""
    rows = directions[directions["contribution"] != 0].head(top)
    return [r for r in rows.itertuples() if r.concept in spurious and r.contribution > 0]


def explanation_report(pipeline, images, *, intervention: Intervention | None = None,
                       counterfactual: str | None = RUNNER_UP, spurious: Sequence[str] = (),
                       saliency: str | None = None, maps: int = 3, reliability: bool = True, reliability_model=None,
                       model_card_section: bool = False, evaluation=None, evaluation_name: str | None = None,
                       title: str | None = None, max_details: int = 12) -> Report:
    """A report on why ``pipeline``'s model predicts what it does for ``images``.

    images: a list of paths / bytes, or a mapping name -> bytes (as the app holds uploads). For each
    image: the picture, prediction and top classes, the score built up concept by concept (with
    present / absent and for / against), the runner-up's, heat maps for the ``maps`` concepts that
    pushed most (and for any spurious one it leans on), ``intervention``'s effect when given, and the
    smallest change that makes ``counterfactual`` win (``"runner-up"``, a class name, or None). With
    several images, a gallery first, flagging images whose prediction leans on a concept in
    ``spurious`` (one of the three largest contributions, pushing for the predicted class).

    saliency: a map method the tower offers (``Pipeline.map_methods``), None for its default.
    reliability: per image, how far to believe its explanation (``cbm_core.explain.reliability``): whether the
    image is like the data the model was made with, and for each concept shown whether it is probably
    there and whether its heat map sits on its evidence (one extra forward pass per image).
    reliability_model: the model whose stored presence calibration and out-of-distribution reference
    are used (``fit_reliability(model, validation_features)``); default the pipeline's model, which
    without them falls back to its training statistics (the report says so).
    model_card_section: append the full model card (with ``evaluation`` data, if given).
    """
    model = pipeline.model
    saliency = pipeline.check_map_method(saliency)
    spurious = _resolve_concepts(model, spurious, "concept")
    if intervention is not None:
        for concept in intervention.concepts:
            _resolve_concepts(model, [concept], "concept")
    if counterfactual not in (None, RUNNER_UP):
        counterfactual = model.classes[model.class_index(counterfactual)]
    items, failed = _read_images(pipeline, images)
    if not items:
        reasons = "; ".join(f"{n}: {r}" for n, r in failed[:3])
        raise CBMError("None of the images could be read, so there is nothing to report" + (f" ({reasons})." if reasons else "."))
    exp = pipeline.explain_encoded([i.encoded for i in items])
    after = pipeline.explain_encoded([i.encoded for i in items], intervention) if intervention else None
    trust_model = _trust_model(model, reliability_model) if reliability else None
    ood = {}
    if trust_model is not None:
        from ..explain.reliability import ood_check

        embeddings = torch.stack([i.encoded.embedding.reshape(-1).float() for i in items])
        ood = dict(enumerate(ood_check(trust_model, embeddings, exp.scores)))

    names = [i.name for i in items]
    many = len(items) > 1
    title = title or ("Why the model decided: " + (f"{len(items)} images" if many else names[0]))
    subtitle = (f"Model: {_model_name(model)} · {len(model.classes)} classes · {model.n_concepts} concepts · "
                f"backbone {model.backbone_spec}")
    body = [_header(title, subtitle, "Explanation report"),
            _section("How to read this report", HOW_TO_READ_EXPLANATION, "howto"), _about_model(model)]
    flags = {}
    for n, item in enumerate(items):
        flags[n] = _spurious_hits(concept_directions(exp, n), spurious) if spurious else []
    if many or failed:
        body.append(_gallery(items, exp, flags, spurious, failed, ood))
    figs: list = []
    for n, item in enumerate(items[:max_details]):
        body.append(_image_detail(pipeline, item, n, len(items), exp, after, intervention, counterfactual, flags[n],
                                  saliency, maps, trust_model, ood.get(n)))
    if len(items) > max_details:
        body.append(f'<p class="note">Details are shown for the first {max_details} images; the gallery lists all '
                    f"{len(items)}.</p>")
    if model_card_section:
        body.append('<div class="page-break"></div>')
        body.append(_model_card_body(model, figs, evaluation, evaluation_name, None, None, heading_level="section"))
    return Report(title, "report", "\n".join(body), figs, skipped=list(failed))


def _model_name(model) -> str:
    from ..recipes import RECIPES

    name = str(model.recipe.get("name", "model"))
    cls = RECIPES.get(name)
    return f"{cls.title} ({name})" if cls is not None and cls.title != name else name


def _trust_model(model, given):
    """The model whose reliability fits to use: ``given`` when it describes the same concepts, else ``model``."""
    if given is None:
        return model
    if tuple(given.concepts.names) != tuple(model.concepts.names) or tuple(given.classes) != tuple(model.classes):
        raise CBMError("reliability_model has other concepts or classes than the model the report explains.")
    return given  # only its concept layer, statistics and stored fits are read, which a head edit leaves alone


def _gallery(items, exp, flags, spurious, failed, ood) -> str:
    cards = []
    for n, item in enumerate(items):
        pred = exp.class_names[int(exp.predicted[n])]
        prob = float(exp.probs[n].max())
        thumb = _data_uri(_bounded(item.picture, 200))
        truth = label_from_filename(item.name, exp.class_names)
        verdict = ""
        if truth is not None:
            verdict = ('<div class="ok">matches the class in the file name</div>' if truth == pred else
                       f'<div class="miss">the file name says {_e(truth)}</div>')
        flag = ""
        if flags[n]:
            flag = ('<div class="flag">Leans on ' + ", ".join(
                f"{_e(r.concept)} ({'present' if r.present else 'absent'}, {r.contribution:+.2f})" for r in flags[n])
                + "</div>")
        if n in ood and ood[n].warn:
            flag += f'<div class="flag">{_e(_OOD_HEADLINE[ood[n].verdict][0])}</div>'
        cards.append(f'<div class="card{" flagged" if flags[n] else ""}"><img src="{thumb}" alt="{_e(item.name)}">'
                     f'<div class="card-name">{_breakable(item.name)}</div>'
                     f'<div class="card-pred"><b>{_e(pred)}</b> · {prob:.0%}</div>{verdict}{flag}</div>')
    rule = ""
    if spurious:
        flagged = sum(1 for f in flags.values() if f)
        rule = (f"<p>{flagged} of {len(items)} images are <span class=\"flag-inline\">flagged</span>: one of the three "
                f"concepts that pushed their prediction most is one you marked as spurious "
                f"({', '.join(_e(s) for s in spurious)}) — a cue that is not a real property of the class.</p>")
    unread = ""
    if failed:
        unread = ("<h3>Images that could not be read</h3><ul class=\"unread\">"
                  + "".join(f"<li><b>{_e(n)}</b>: {_e(r)}</li>" for n, r in failed) + "</ul>")
    grid = f'<div class="gallery">{"".join(cards)}</div>' if cards else ""
    return _section("All images at a glance", rule + grid + unread, "gallery-section")


def _image_detail(pipeline, item, n, count, exp, after, intervention, cf_target, flagged, method, n_maps,
                  trust_model, ood=None) -> str:
    model = pipeline.model
    classes = list(exp.class_names)
    pred_k = int(exp.predicted[n])
    pred = classes[pred_k]
    ranked = exp.top_classes(len(classes))[n].tolist()
    runner_k = ranked[1] if len(ranked) > 1 else None
    directions = concept_directions(exp, n)
    parts = []

    # The answer first: the prediction, what the file name says, a spurious cue it leans on.
    truth = label_from_filename(item.name, classes)
    said = ""
    if truth is not None:
        said = (' <span class="ok">The file name names this class: the prediction matches it.</span>' if truth == pred else
                f' <span class="miss">The file name says <b>{_e(truth)}</b> (the model gives it '
                f"{float(exp.probs[n, classes.index(truth)]):.1%}): the prediction differs.</span>")
    lines = [f'<p class="verdict">The model calls this image <b>{_e(pred)}</b> ({float(exp.probs[n, pred_k]):.1%}).'
             f"{said}</p>"]
    if ood is not None and ood.warn:  # before anything else is read: the whole explanation may not hold
        headline, tone = _OOD_HEADLINE[ood.verdict]
        lines.append(f'<p class="{tone} warn-line"><b>{_e(headline)}.</b> See “How far to believe this explanation” '
                     "below.</p>")
    if flagged:
        lines.append('<p class="flag">This prediction leans on a concept marked as spurious: '
                     + "; ".join(_e(r.sentence) for r in flagged) + ".</p>")
    lines += [f'<p class="note">{_e(note)}</p>' for note in item.encoded.notes]
    parts.append("".join(lines))

    top = exp.classes_frame(n, k=min(5, len(classes)))
    reasons = directions[directions["contribution"] != 0].head(3)
    because = "".join(f"<li>{_e(s)}</li>" for s in reasons["sentence"])
    share = float(exp.residual_share()[n])
    residual = (f'<p class="note">Part of this prediction ({share:.0%} of its evidence) comes from a residual head that '
                "is not expressed in concepts.</p>" if share > 0 else "")
    parts.append(f'<div class="row two"><div>{figures.probability_bars(top, "Most likely classes")}</div>'
                 f'<div><div class="because-title">Mainly because</div><ul class="because">{because}</ul>{residual}</div></div>')

    # The picture, and where the model sees the concepts that matter, side by side at one size.
    pictures, shown, maps = _pictures(pipeline, item, directions, flagged, method, n_maps, pred)
    parts.append(pictures)
    if trust_model is not None:  # right under the maps: is each concept there, is its map on it
        parts.append(_trust_block(pipeline, trust_model, item, exp, n, directions, shown, maps, method))

    # The score, concept by concept: the prediction and the runner-up.
    pred_dirs = dict(zip(directions.concept, directions.direction))
    left = figures.waterfall_bars(_in_words(exp.waterfall(n)), pred_dirs, f"Why {pred}")
    right = ""
    if runner_k is not None:
        other = classes[runner_k]
        against = concept_directions(exp, n, runner_k)
        right = figures.waterfall_bars(_in_words(exp.waterfall(n, runner_k)), dict(zip(against.concept, against.direction)),
                                       f"Why not {other} ({float(exp.probs[n, runner_k]):.1%})")
    parts.append(f'<div class="scores"><h3>How the score adds up</h3><div class="row two"><div>{left}</div><div>{right}</div></div>'
                 f"{figures.direction_legend(note=False)}</div>")

    # The user's changes, and the smallest change that flips the decision.
    boxes = []
    if intervention:
        boxes.append(_intervention_block(exp, after, n, intervention))
    if cf_target is not None and len(classes) > 1:
        target = classes[runner_k] if cf_target == RUNNER_UP else cf_target
        if target != pred:
            boxes.append(_counterfactual_block(model, item, target, pred))
    if boxes:
        parts.append(f'<div class="row two whatif">{"".join(f"<div>{b}</div>" for b in boxes)}</div>')
    return (f'<section class="image-detail"><div class="kind">Image {n + 1} of {count}</div><h2>{_e(item.name)}</h2>'
            + "".join(parts) + "</section>")


def _in_words(waterfall):
    """A waterfall frame whose fixed steps read as words ("starting point", "total score"), not "bias", "logit"."""
    frame = waterfall.copy()
    frame.loc[frame["kind"] == "bias", "label"] = "starting point"
    frame.loc[frame["kind"] == "total", "label"] = "total score"
    return frame


def _pictures(pipeline, item, directions, flagged, method, n_maps, pred):
    """The image and its heat maps for the concepts that pushed most (and any spurious one it leans on).
    Returns (html, the concepts mapped, their maps (K, h, w) at the size drawn)."""
    from PIL import Image

    w, h = item.encoded.size
    scale = min(3.0, 220 / max(w, h))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    picture = item.picture.resize(size, Image.BILINEAR)
    tiles = [f'<figure class="map"><img src="{_data_uri(picture)}" alt="{_e(item.name)}">'
             f"<figcaption><b>The image</b><br>{w}×{h} pixels</figcaption></figure>"]
    positive = list(directions[directions["contribution"] > 0].concept[:n_maps]) or list(directions.concept[:n_maps])
    chosen = list(dict.fromkeys(positive + [r.concept for r in flagged]))
    note = ""
    try:
        maps = pipeline.saliency(item.encoded, method, chosen, out_size=size) if chosen else []
    except (ValueError, CBMError) as exc:
        maps, note = [], f"No heat maps: {exc}"
    seen = seen_region(item.encoded.size, pipeline.backbone.resize_mode, size)
    rows = directions.set_index("concept")
    for k, concept in enumerate(chosen[:len(maps)]):
        row = rows.loc[concept]
        state = "present" if row.present else "absent"
        effect = f"{row.contribution:+.2f}" if row.contribution != 0 else "does not count"
        uri = _data_uri(figures.overlay_picture(picture, maps[k].numpy(), seen))
        tiles.append(f'<figure class="map{"" if row.present else " absent"}"><img src="{uri}" alt="{_e(concept)}">'
                     f"<figcaption><b>{_e(concept)}</b><br>{state} (p{row.percentile:.0f}) · {_e(effect)}</figcaption></figure>")
    ramp = ", ".join(f"rgb({r},{g},{b})" for r, g, b in colormap(torch.linspace(0, 1, 9).numpy()).tolist())
    cropped = tuple(seen) != (0, 0, size[0], size[1])
    how = {"dense": "dense concept maps", "dense-surgery": "dense concept maps with the shared part removed",
           "gradcam": "Grad-CAM", "gradcam-fine": "Grad-CAM on a finer grid",
           "layercam-fine": "LayerCAM on a fine grid"}.get(method, method)
    if not note:
        note = (f"Heat maps ({how}), each scaled to its own range." + (
            " The white frame marks the part of the picture the model saw (it crops the centre)." if cropped else ""))
    legend = (f'<div class="ramp-row"><span>weak</span><span class="ramp" style="background:linear-gradient(to right, '
              f'{ramp})"></span><span>strong</span><span class="note">{_e(note)}</span></div>') if len(maps) else \
        f'<p class="note">{_e(note)}</p>' if note else ""
    html_text = (f'<div class="pictures"><h3>Where the model sees the concepts that decide {_e(pred)}</h3>'
                 f'<div class="maps">{"".join(tiles)}</div>{legend}</div>')
    return html_text, chosen[:len(maps)], (torch.stack([m.float() for m in maps]) if len(maps) else None)


def _intervention_block(exp, after, n, intervention) -> str:
    classes = list(exp.class_names)
    was, now = int(exp.predicted[n]), int(after.predicted[n])
    described = list(intervention.describe())
    changes = (f"<p>You asked: {_e('; '.join(described))}.</p>" if len(described) <= 2 else
               '<p>You asked:</p><ul class="changes">' + "".join(f"<li>{_e(c)}</li>" for c in described) + "</ul>")
    if was == now:
        outcome = (f"the prediction stays <b>{_e(classes[now])}</b> ({float(exp.probs[n, was]):.1%} → "
                   f"{float(after.probs[n, now]):.1%}).")
    else:
        outcome = (f"the prediction changes from <b>{_e(classes[was])}</b> ({float(exp.probs[n, was]):.1%}) to "
                   f"<b>{_e(classes[now])}</b> ({float(after.probs[n, now]):.1%}).")
    frame = tables.probability_change(exp, after, n, top=3)
    moved = [r for r in frame.to_dict("records") if r["class"] not in (classes[was], classes[now])]
    other = max(moved, key=lambda r: abs(r["change"]), default=None)
    also = (f' <span class="note">Next most moved: {_e(other["class"])} {tables.pct(other["before"])} → '
            f'{tables.pct(other["after"])}.</span>' if other is not None and abs(other["change"]) >= 0.01 else "")
    them = "this change" if len(described) == 1 else "these changes"
    return f'<div class="box"><h3>Your changes and what they do</h3>{changes}<p>With {them}, {outcome}{also}</p></div>'


def _counterfactual_block(model, item, target: str, pred: str) -> str:
    cf = find_counterfactual(model, item.encoded.embedding, target)
    t = model.class_index(target)
    head = f"<h3>Smallest change that makes it {_e(target)}</h3>"
    if not cf.success:
        return (f'<div class="box">{head}<p>No combination of concepts, each set within what the training images show '
                f"(their 5th to 95th percentile), makes the model say {_e(target)} instead of {_e(pred)}. The decision "
                "does not rest on a few concepts.</p></div>")
    emb = item.encoded.embedding.reshape(1, -1).float()
    now = model.stats.percentile_of(model.concept_scores(emb))[0]
    names = list(model.concepts.names)
    steps = [f"<b>{_e(name)}</b>: from p{float(now[names.index(name)]):.0f} to p{pct:.0f}"
             for name, _old, _new, pct in cf.changes]
    count = len(cf.changes)
    listed = (f"<p>{'; '.join(steps)}.</p>" if count <= 2 else
              '<ul class="changes">' + "".join(f"<li>{step}</li>" for step in steps) + "</ul>")
    return (f'<div class="box">{head}<p>Changing {count} concept{"s" * (count != 1)} is enough: the model would then say '
            f"<b>{_e(target)}</b> ({float(cf.probs_before[t]):.1%} → {float(cf.probs_after[t]):.1%}).</p>{listed}</div>")


# Whether an image is like the data the model was made with: a headline per verdict, and its tone.
_OOD_HEADLINE = {
    "typical": ("Like the images the model was made with", "ok"),
    "unusual": ("Unusual image: read its explanation with care", "flag"),
    "unlike the training data": ("Unlike the training data: the prediction and its explanation may mean nothing here",
                                 "miss"),
}


def _trust_block(pipeline, trust_model, item, exp, n, directions, shown, maps, method) -> str:
    """How far to believe this image's explanation, in words: is the image like the training data, and for
    the concepts the explanation leans on, is each probably there and does its heat map sit on it."""
    import pandas as pd

    from ..explain import reliability as rel

    locations = {}
    if maps is not None and shown:
        try:
            on_input = rel.maps_on_input(maps, item.encoded.size, pipeline.backbone.resize_mode,
                                         tuple(item.encoded.pixels.shape[-2:]))
            locations = rel.location_scores(pipeline, item.encoded, shown, method, maps=on_input)
        except (ValueError, CBMError, AttributeError):
            locations = {}
    r = rel.reliability(trust_model, exp, n, embedding=item.encoded.embedding, locations=locations)
    ood = r.ood
    headline, tone = _OOD_HEADLINE[ood.verdict]
    evidence = []
    if ood.percentile is not None:
        evidence.append(f"more unusual than {ood.percentile:.0f}% of {_fitted_on(trust_model)}" if ood.percentile < 100
                        else f"more unusual than any of {_fitted_on(trust_model)}")
    if ood.extreme or ood.percentile is None:
        evidence.append(f"{len(ood.extreme)} of {ood.n_concepts} concept scores outside everything seen in training"
                        + (f" ({', '.join(ood.extreme[:4])}{', …' if len(ood.extreme) > 4 else ''})" if ood.extreme else ""))
    index = {c: k for k, c in enumerate(r.concepts)}
    leaned = list(directions[directions["contribution"] != 0].concept[:3])
    rough = r.calibration.method == "mixture"
    chance = "chance it is really there" + (" (rough guess)" if rough else "")
    rows = []
    for concept in dict.fromkeys(leaned + list(shown)):
        k = index[concept]
        loc = r.locations.get(concept)
        doubts = "; ".join(d for d in r.flag(k).split("; ") if d and not d.startswith("map "))  # maps: own column
        rows.append({"concept": concept, "the model reads it as": "present" if float(r.z[k]) > 0 else "absent",
                     chance: f"{float(r.p_present[k]):.0%}",
                     "its heat map": loc.verdict if loc is not None else "not drawn",
                     "doubt": doubts or "none"})
    table = tables.html_table(pd.DataFrame(rows), css="compact trust", numeric=(chance,))
    doubtful = r.probably_absent(5)
    warn = (f'<p class="flag">Read as present but probably not there: {_e(", ".join(doubtful))}. Check the image before '
            "trusting the explanation.</p>" if doubtful else "")
    line = f"<b>{_e(headline)}</b>" + (f" ({_e('; '.join(evidence))})" if evidence else "") + "."  # one line
    return (f'<div class="box trust"><h3>How far to believe this explanation</h3>'
            f'<p class="{tone}">{line}</p>{warn}{table}</div>')


def _fitted_on(model) -> str:
    """What the out-of-distribution reference was fitted on, in words."""
    from ..explain import reliability as rel

    ref = rel.ood_reference(model)
    if ref is None:
        return "the held-out images"
    fitted = str(ref.fitted_on).split(",")[0].strip()  # fit_reliability appends ", N images"
    return f"{ref.n_calibration} held-out images" + (f" of {fitted}" if fitted and len(fitted) <= 24 else "")


def _breakable(name: str) -> str:
    """A file name, escaped, that may wrap after '_', '-' or '.' rather than mid-word."""
    out = _e(name)
    for mark in ("_", "-", "."):
        out = out.replace(mark, mark + "<wbr>")
    return out


def _about_model(model) -> str:
    sp = model.sparsity()
    m = model.metrics
    rows = [("model", _model_name(model)), ("backbone", model.backbone_spec),
            ("classes", f"{len(model.classes)}: " + ", ".join(model.classes[:12]) + (" …" if len(model.classes) > 12 else "")),
            ("concepts", f"{model.n_concepts} ({sp['concepts_used']} used; {sp['nec']:.1f} per class on average)")]
    for key in ("val_accuracy", "val_worst_group", "test_accuracy", "test_worst_group"):
        if isinstance(m.get(key), (int, float)):
            rows.append((tables.METRIC_LABELS[key], tables.pct(m[key])))
    if model.edit_log:
        rows.append(("edits by hand", f"{len(model.edit_log)} (see the model card for each)"))
    rows.append(("model fingerprint", _model_fingerprint(model)))
    return _section("About the model", _facts(rows), "about")


# -- the model card ----------------------------------------------------------------------------------------

def model_card(model, *, evaluation=None, evaluation_name: str | None = None, comparison=None, base=None,
               title: str | None = None) -> Report:
    """A model card for ``model``: what it is, its recipe and hyper-parameters, its concepts with
    provenance, the data it was fitted on, accuracy (recorded, and on ``evaluation`` — a
    ``FeatureSet`` — per class and per group when given), sparsity, the edit log with each edit's
    effect, fit warnings and, when ``comparison`` (a ``Comparison``) is given, how recipes compared.

    base: the model as it was before this session's edits (its edit log a prefix of ``model``'s); with
    ``evaluation``, each later edit is replayed on it and measured before and after, on that data."""
    figs: list = []
    title = title or f"Model card: {_model_name(model)}"
    subtitle = f"{len(model.classes)} classes · {model.n_concepts} concepts · backbone {model.backbone_spec}"
    body = [_header(title, subtitle, "Model card"), _section("How to read this model card", HOW_TO_READ_CARD, "howto"),
            _model_card_body(model, figs, evaluation, evaluation_name, comparison, base)]
    return Report(title, "model card", "\n".join(body), figs)


def _model_card_body(model, figs, evaluation, evaluation_name, comparison, base, heading_level: str = "") -> str:
    from ..analysis.evaluation import evaluate

    out = []
    if heading_level == "section":
        out.append(f'<div class="kind">Model card</div><h1 class="card-title">{_e(_model_name(model))}</h1>')
        out.append(_section("How to read this model card", HOW_TO_READ_CARD, "howto"))
    sp = model.sparsity()
    created = model.created or {}
    glance = [("model", _model_name(model)), ("backbone (image and text encoder)", model.backbone_spec),
              ("how concepts are scored", _layer_words(model.concept_layer)),
              ("classes", f"{len(model.classes)}: " + ", ".join(model.classes[:20]) + (" …" if len(model.classes) > 20 else "")),
              ("concepts", f"{model.n_concepts}, of which {sp['concepts_used']} are used by some class"),
              ("prompt templates", " · ".join(model.templates)),
              ("created", str(created.get("time", "–")).replace("T", " ")),
              ("made with", ", ".join(f"{str(k).replace('_', ' ')} {v}" for k, v in created.items() if k != "time" and v)),
              ("model fingerprint", _model_fingerprint(model)),
              ("edits by hand", str(len(model.edit_log)))]
    out.append(_section("The model at a glance", _facts(glance)))

    # Recipe, data, warnings.
    recipe = tables.html_table(tables.recipe_table(model), css="compact recipe keep")
    warnings = model.recipe.get("warnings") or []
    warn = ""
    if warnings:
        warn = ('<div class="warn"><b>Warnings from fitting</b><ul>' + "".join(f"<li>{_e(w)}</li>" for w in warnings)
                + "</ul></div>")
    out.append(_section("How it was made", recipe + warn, "keep",
                        note="The recipe is the method that turned encoded images into this model, with the settings it "
                             "was run with and what the fit reported."))
    m = model.metrics
    data_rows = [(tables.METRIC_LABELS[k], str(m[k])) for k in ("n_train", "n_val", "skipped_images") if k in m]
    if evaluation is not None:
        data_rows.append(("evaluation data in this card",
                          f"{evaluation_name or 'given by the caller'}: {len(evaluation.labels)} images"
                          + (f", {len(set(evaluation.groups))} groups" if evaluation.groups else "")))
        data_rows.append(("evaluation data fingerprint", _features_fingerprint(evaluation)))
    out.append(_section("Data", _facts(data_rows) if data_rows else "<p>The bundle records no facts about its data.</p>",
                        "keep", note="What the bundle records about the images it was fitted and validated on."))

    # Accuracy: recorded, and measured now.
    # Sparsity is shown under "What each class relies on", image counts under "Data".
    recorded = tables.metrics_table(m, skip=("nonzero_fraction", "nec", "concepts_used", "n_train", "n_val",
                                             "skipped_images"))
    perf = [tables.html_table(recorded.rename(columns={"measure": "recorded when the bundle was saved"}),
                              css="compact keep")] if len(recorded) else []
    if evaluation is not None:
        import pandas as pd

        measured = evaluate(model, evaluation.embeddings, evaluation.labels, evaluation.groups)
        worst = "–" if measured.worst_group is None else tables.pct(measured.worst_group)
        perf.append(f"<h3>Measured now on {_e(evaluation_name or 'the evaluation data')}</h3>"
                    f'<div class="metrics"><div><span class="big">{measured.accuracy:.1%}</span> accuracy</div>'
                    f'<div><span class="big">{worst}</span> worst-group accuracy</div>'
                    f'<div><span class="big">{len(evaluation.labels)}</span> images</div></div>')
        per_class = sorted(measured.per_class.items(), key=lambda kv: kv[1])
        frame = pd.DataFrame({"class": [k for k, _ in per_class][::-1], "probability": [v for _, v in per_class][::-1]})
        figs.append(figures.probabilities(frame, "Accuracy per class"))
        perf.append(_figure_marker(len(figs) - 1))
        if measured.per_group:
            groups = pd.DataFrame({"group": list(measured.per_group), "accuracy": list(measured.per_group.values())})
            groups = groups.sort_values("accuracy").reset_index(drop=True)
            perf.append("<h3>Accuracy per group (lowest first)</h3>"
                        + tables.html_table(groups, {"accuracy": tables.pct}, "compact narrow keep", numeric=("accuracy",)))
    if not perf:
        perf.append("<p>The bundle records no accuracy for the model as it is now (an edit moves the accuracies measured "
                    "before it into its log entry, below). Give labelled images to measure it: <code>python -m cbm_core "
                    "report --bundle … --data …</code>, or choose data on the Edit page.</p>")
    out.append(_section("How well it works", "".join(perf),
                        note="Recorded: measured when the bundle was built or last edited (accuracies measured before an "
                             "edit move into that edit's log entry)."))

    audit = _audit_section(model)
    if audit:
        out.append(audit)

    # Sparsity and what each class uses.
    sparsity = _facts([("concepts per class (NEC)", f"{sp['nec']:.2f}"),
                       ("non-zero weights", f"{sp['nonzero_fraction']:.1%}"),
                       ("concepts used by some class", f"{sp['concepts_used']} of {model.n_concepts}")])
    per_class = tables.html_table(tables.class_concepts_table(model), css="compact", numeric=("concepts",))
    more = f'<p class="note">The first 60 of {len(model.classes)} classes.</p>' if len(model.classes) > 60 else ""
    out.append(_section("What each class relies on", sparsity + per_class + more,
                        note="Weights are on the standardised concept score: a weight of +1 adds 1 to the class's score "
                             "for every standard deviation the concept is above its training average."))

    # Concepts with provenance.
    frame, unused = tables.concepts_table(model)
    notes = []
    source = "where it came from"
    if source in frame.columns and frame[source].nunique() == 1 and len(frame) > 1:
        notes.append(f"Every concept listed came from {frame[source].iloc[0]}.")
        frame = frame.drop(columns=[source])
    formats = {"name similarity": lambda v: f"{v:.2f}"} if "name similarity" in frame.columns else {}
    concepts_html = tables.html_table(frame, formats, "compact", numeric=("name similarity",))
    if "name similarity" in frame.columns:
        notes.append("Name similarity: how close the concept's direction is to the text of its name (DN-CBM names "
                     "learned concepts after the nearest word of a vocabulary; low values mean a loose name).")
    if unused:
        notes.append(f"{unused} further concept{'s are' if unused != 1 else ' is'} not used by any class.")
    if len(frame) < model.n_concepts - unused:
        notes.append(f"The {len(frame)} strongest of {model.n_concepts - unused} used concepts are listed.")
    out.append(_section("Concepts", concepts_html + "".join(f'<p class="note">{_e(t)}</p>' for t in notes),
                        note="Every concept the model uses, strongest first" + (", with where it came from."
                                                                                if source in frame.columns else ".")))

    # The edit log.
    out.append(_edit_log_section(model, evaluation, evaluation_name, base))

    if comparison is not None:
        out.append(_comparison_section(comparison, figs))
    return "\n".join(out)


def _audit_section(model) -> str:
    """The stored concept audit (``cbm_core.explain.audit``), check by check in its own sentences; '' when none."""
    from ..explain.audit import stored_audit

    audit = stored_audit(model)
    if audit is None:
        return ""
    items = "".join(f'<li class="{"ok" if ok else "miss"}"><b>{"Passed" if ok else "Warning"}</b>: {_e(sentence)}</li>'
                    for _name, ok, sentence in audit.checks())
    where = ", ".join(_e(t) for t in (audit.fitted_on, f"tested on {audit.tested_on}" if audit.tested_on else "") if t)
    return _section("Does it really use its concepts?", f'<ul class="checks">{items}</ul>'
                    + (f'<p class="note">Audit {where}.</p>' if where else ""), "keep",
                    note="A concept model explains a prediction only if the prediction goes through its concepts, and "
                         "its concept names only mean something if they beat random directions and shuffled names.")


def _layer_words(layer) -> str:
    """The concept layer in words (its kind kept in brackets for whoever knows the term)."""
    kind = getattr(layer, "kind", "?")
    words = {"text_cosine": "how close the image is to each concept's text, in the backbone's shared image-text space",
             "linear": "a learned weighting of the image encoding per concept"
                       + (", trained on images labelled with their concepts"
                          if getattr(layer, "activation", "") == "sigmoid" else ""),
             "sae": "the features of a sparse autoencoder trained on image encodings, each named after its nearest word"
             }.get(kind)
    return f"{words} ({kind})" if words else str(kind)


def _edit_log_section(model, evaluation, evaluation_name, base) -> str:
    import pandas as pd

    if not model.edit_log:
        return _section("Edits made by hand", "<p>None: the model is as it was fitted.</p>")
    replayed = _replay_impacts(model, base, evaluation)
    data = evaluation_name or "the evaluation data"
    rows = []
    last = len(model.edit_log) - 1
    for i, entry in enumerate(model.edit_log):
        what, concepts, classes = tables.describe_edit_entry(entry)
        rows.append({"#": i + 1, "edit": what, "concepts": concepts, "classes": classes,
                     "when (UTC)": str(entry.get("time", "")).replace("T", " ")[:16],
                     "effect on held-out images": _impact_text(entry, replayed.get(i), data,
                                                               i == last and evaluation is not None, model, evaluation)})
    table = tables.html_table(pd.DataFrame(rows), css="compact edits", numeric=("#",))
    note = ("Measured: the edit replayed on the model before it and both measured on the same images. Recorded: the "
            "accuracies the model had when the edit was made, kept in its log entry.")
    return _section("Edits made by hand", table + f'<p class="note">{_e(note)}</p>',
                    note="In the order they were made; each changes the model for every image.")


def _replay_impacts(model, base, evaluation) -> dict:
    """{edit index: (before Metrics, after Metrics)} for the edits made on ``base``, replayed and measured."""
    from ..analysis.edits import replay
    from ..analysis.evaluation import evaluate

    if base is None or evaluation is None:
        return {}
    n = len(base.edit_log)
    if (tuple(base.classes) != tuple(model.classes) or tuple(base.concepts.names) != tuple(model.concepts.names)
            or list(model.edit_log[:n]) != list(base.edit_log)):
        return {}
    out, current = {}, base
    before = evaluate(current, evaluation.embeddings, evaluation.labels, evaluation.groups)
    try:
        for i in range(n, len(model.edit_log)):
            current = replay(current, [model.edit_log[i]])
            after = evaluate(current, evaluation.embeddings, evaluation.labels, evaluation.groups)
            out[i] = (before, after)
            before = after
    except CBMError:
        return {}
    if not torch.allclose(current.weight, model.weight):  # the replay did not give this model: say nothing measured
        return {}
    return out


def _impact_text(entry, replayed, data, measure_last: bool, model, evaluation) -> str:
    def acc_line(before, after, label):
        text = f"{label} {before.accuracy:.1%} → {after.accuracy:.1%} ({(after.accuracy - before.accuracy) * 100:+.1f} pts)"
        if before.worst_group is not None and after.worst_group is not None:
            text += (f"; worst group {before.worst_group:.1%} → {after.worst_group:.1%} "
                     f"({(after.worst_group - before.worst_group) * 100:+.1f} pts)")
        return text

    parts = []
    if replayed is not None:
        parts.append(acc_line(*replayed, f"measured on {data}: accuracy"))
    if entry.get("op") == "adapt":
        for key, label in (("target_accuracy", "on the new-domain images"), ("source_accuracy", "on source validation")):
            pair = entry.get(key)
            if isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, (int, float)) for v in pair):
                parts.append(f"{label}: {pair[0]:.1%} → {pair[1]:.1%}")
    if replayed is None:
        before = entry.get("metrics_before") or {}
        labels = {"val_accuracy": "validation accuracy", "val_worst_group": "validation worst-group accuracy",
                  "test_accuracy": "test accuracy", "test_worst_group": "test worst-group accuracy"}
        recorded = [f"{label} {before[k]:.1%}" for k, label in labels.items() if isinstance(before.get(k), (int, float))]
        if recorded:
            parts.append("recorded before: " + ", ".join(recorded))
        if measure_last:
            from ..analysis.evaluation import evaluate

            now = evaluate(model, evaluation.embeddings, evaluation.labels, evaluation.groups)
            text = f"this model now, on {data}: accuracy {now.accuracy:.1%}"
            if now.worst_group is not None:
                text += f", worst group {now.worst_group:.1%}"
            parts.append(text)
    return "; ".join(parts) if parts else "not measured"


def _comparison_section(comparison, figs) -> str:
    from ..explain.wording import baseline_verdict

    frame = tables.comparison_table(comparison)
    acc_cols = [c for c in frame.columns if "accuracy" in c or c == "worst group"]
    table = tables.html_table(frame, {**{c: tables.pct for c in acc_cols}, "NEC reached": lambda v: f"{v:.1f}",
                                      "NEC as fitted": lambda v: f"{v:.1f}"}, "compact",
                              numeric=tuple(acc_cols) + ("NEC reached", "NEC as fitted"))
    figs.append(figures.nec_curves(comparison.rows, comparison.nec))
    verdict = ""
    random_row = next((r for r in comparison.rows if r.recipe == "random-concepts" and r.at_nec), None)
    best = max((r for r in comparison.rows if not r.baseline and r.at_nec), key=lambda r: r.at_nec["accuracy"], default=None)
    if random_row is not None and best is not None:
        verdict = (f"<p>Best recipe at NEC ≤ {comparison.nec:g}: <b>{_e(best.recipe)}</b>. "
                   f"{_e(baseline_verdict(best.at_nec['accuracy'], random_row.at_nec['accuracy']))}</p>")
    note = (f"Every recipe fitted on the same {comparison.n_train} training images, its sparsity chosen on "
            f"{comparison.n_val} validation images and measured once on {comparison.n_test} test images, each held to "
            f"at most {comparison.nec:g} concepts per class (NEC) — a concept model is only comparable at matched "
            "sparsity.")
    return _section("How recipes compared", table + _figure_marker(len(figs) - 1) + verdict, "page-start", note=_e(note))


# -- fingerprints -----------------------------------------------------------------------------------------

def _model_fingerprint(model) -> str:
    """The sha256 of the model's tensors as a bundle stores them (the manifest's ``tensors_sha256``),
    shortened: two cards with the same fingerprint describe the same weights."""
    from ..core.bundle import MANIFEST, bundle_bytes
    from ..errors import BundleError

    try:
        manifest = json.loads(bundle_bytes(model)[MANIFEST])
    except BundleError:
        return "– (the model cannot be saved as it is)"
    return "sha256 " + manifest["integrity"]["tensors_sha256"][:16]


def _features_fingerprint(features) -> str:
    digest = hashlib.sha256()
    digest.update(features.embeddings.detach().cpu().float().contiguous().numpy().tobytes())
    digest.update(features.labels.detach().cpu().long().contiguous().numpy().tobytes())
    return "sha256 " + digest.hexdigest()[:16]
