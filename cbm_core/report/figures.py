"""Every chart of the dashboard and the reports, drawn here once (numbers come from the engine).

Three kinds:

- **plotly figures** (Evaluate, Build, Compare; the model card): ``probabilities``, ``heatmap``,
  ``lambda_path``, ``nec_curves``. A page shows them interactively; a report turns the very same
  figure into a static SVG (``report.browser``), so a chart looks alike in both.
- **light HTML bar charts** (Inspect; the explanation report): ``probability_bars``,
  ``contribution_bars``, ``waterfall_bars``. Inspect's first render has a budget of one second: a
  plotly figure costs the browser 0.1-0.2 s to draw, a few dozen HTML rows a millisecond. They are
  plain HTML + CSS (``CHARTS_CSS``), so a report embeds them as they are and they print as drawn.
- **pictures**: ``overlay_picture`` lays a saliency map over an image, as Inspect's panel shows it.

Every label that comes from a bundle or a file (a concept, a class, a recipe) is text, never markup:
the HTML charts escape it, and the plotly figures escape it before plotly reads its small HTML
subset (``<b>``, ``<a href>``, ...) in labels.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

from ..explain.wording import DIRECTIONS

if TYPE_CHECKING:  # plotly is imported when a figure is drawn, so `import cbm_core` stays light
    import plotly.graph_objects as go

BLUE, RED, GREY, TEAL = "#2f6f9f", "#c8553d", "#9aa5b1", "#3a9d8f"
_LAYOUT = dict(margin=dict(l=10, r=40, t=36, b=10), plot_bgcolor="white", paper_bgcolor="white",
               font=dict(size=13), hoverlabel=dict(bgcolor="white"))
CHARTS_CSS = Path(__file__).with_name("charts.css")
# The template a report draws its plotly figures with. A figure takes plotly's *process-wide* default
# template when it is made, and importing streamlit switches that default to Streamlit's own, whose axes
# do not grow their margins to fit long labels: the same figure then lost its class names off the left
# edge in a report made from the app (or after any streamlit import) but not from the CLI.
REPORT_TEMPLATE = "plotly"
REPORT_FONT = '"Noto Sans", "DejaVu Sans", "Liberation Sans", Helvetica, Arial, sans-serif'  # report.css's

# How each of the four directions is drawn: the colour says for (blue) or against (red) the class,
# the fill says present (solid) or absent (hatched, lighter). charts.css uses the same classes.
DIRECTION_STYLE = {DIRECTIONS[0]: "for present", DIRECTIONS[1]: "for absent",
                   DIRECTIONS[2]: "against present", DIRECTIONS[3]: "against absent"}


def _go():
    import plotly.graph_objects as go

    return go


def _fit_labels(fig: "go.Figure") -> "go.Figure":
    """Axes grow their margins to fit their labels, whatever the template (our margins are small)."""
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)
    return fig


def for_report(fig: "go.Figure") -> "go.Figure":
    """A copy of ``fig`` drawn with ``REPORT_TEMPLATE``, so a report looks the same made anywhere."""
    go = _go()
    return go.Figure(fig).update_layout(template=REPORT_TEMPLATE, font_family=REPORT_FONT)


def _text(label) -> str:
    """A label as plotly text: escaped, so a name like '<b>x</b>' shows as written."""
    return html.escape(str(label), quote=False)


# -- plotly figures ----------------------------------------------------------------------------------

def probabilities(frame, title="Prediction") -> "go.Figure":
    """frame: class, probability (top classes first)."""
    go = _go()
    f = frame.iloc[::-1]
    fig = go.Figure(go.Bar(x=f["probability"], y=[_text(c) for c in f["class"]], orientation="h", marker_color=BLUE,
                           text=[f"{p:.1%}" for p in f["probability"]], textposition="auto",
                           hovertemplate="%{y}: %{x:.2%}<extra></extra>"))
    fig.update_layout(title=_text(title), xaxis=dict(range=[0, 1], tickformat=".0%", gridcolor="#eee"),
                      height=60 + 34 * len(f), **_LAYOUT)
    return _fit_labels(fig)


def heatmap(values, x, y, title, colorscale="RdBu", zmid=0.0, height=None, fmt=".2f", x_title=None, y_title=None,
            show_values=False, hide_zeros=False) -> "go.Figure":
    """values: (len(y), len(x)). Labels stay horizontal: multi-word labels on the x axis break into
    lines instead of being tilted; ``show_values`` writes each cell's number in it."""
    go = _go()
    text = None
    if show_values:
        text = [["" if hide_zeros and v == 0 else format(v, fmt) for v in row] for row in values.tolist()]
    fig = go.Figure(go.Heatmap(z=values, x=[_wrap(v) for v in x], y=[_text(v) for v in y], colorscale=colorscale,
                               zmid=zmid, text=text, texttemplate="%{text}" if show_values else None,
                               textfont=dict(size=12),
                               customdata=[[f"{_text(row_label)} · {_text(col)}" for col in x] for row_label in y],
                               hovertemplate="%{customdata}: %{z:" + fmt + "}<extra></extra>", xgap=1, ygap=1))
    fig.update_layout(title=_text(title), height=height or 140 + 28 * len(y),
                      xaxis=dict(tickangle=0, side="bottom", title=x_title, tickfont=dict(size=13)),
                      yaxis=dict(autorange="reversed", title=y_title, tickfont=dict(size=13)),
                      **{**_LAYOUT, "margin": dict(l=10, r=10, t=40, b=10)})
    return _fit_labels(fig)


def _wrap(label: str) -> str:
    """'scarlet cormorant' -> 'scarlet<br>cormorant': two short lines fit under a column, one long one does not."""
    label = str(label)
    return "<br>".join(_text(part) for part in label.split(" ", 1)) if len(label) > 10 else _text(label)


def lambda_path(points, chosen_nec: float, chosen_accuracy: float, chosen_lam: float | None) -> "go.Figure":
    """The sparsity path (validation accuracy against concepts per class, one point per λ) with the
    model that was built marked on it (``chosen_lam``: its λ, or None for a recipe without one)."""
    go = _go()
    name = "this model" if chosen_lam is None else f"this model, λ={chosen_lam:g}"
    fig = go.Figure(go.Scatter(
        x=[p.nec for p in points], y=[p.val_accuracy for p in points], mode="lines+markers",
        name="sparsity path", marker=dict(color=GREY, size=7), line=dict(color=GREY),
        text=[f"λ={p.lam:.2g}, {p.nonzero_fraction:.0%} non-zero weights" for p in points],
        hovertemplate="%{text}<br>%{x:.1f} concepts per class<br>validation accuracy %{y:.1%}<extra></extra>"))
    fig.add_scatter(x=[chosen_nec], y=[chosen_accuracy], mode="markers+text", name=name,
                    marker=dict(color=BLUE, size=14, symbol="diamond", line=dict(color="white", width=1.5)),
                    text=[name], textposition="bottom right", cliponaxis=False,
                    hovertemplate=name + "<br>%{x:.1f} concepts per class<br>validation accuracy %{y:.1%}<extra></extra>")
    fig.update_layout(title="Sparsity path: validation accuracy vs concepts per class",
                      xaxis=dict(title="concepts per class (non-zero weights per class, on average)", gridcolor="#eee",
                                 rangemode="tozero"),
                      yaxis=dict(tickformat=".0%", title="validation accuracy", gridcolor="#eee"), height=340,
                      legend=dict(orientation="h", y=-0.3, x=0.0), **{**_LAYOUT, "margin": dict(l=10, r=10, t=40, b=10)})
    return _fit_labels(fig)


def nec_curves(rows, nec: float) -> "go.Figure":
    """The Compare page's curves: each recipe's validation accuracy against concepts per class (its
    ``RecipeScore.path``), baselines dashed, and the NEC the table compares them at."""
    go = _go()
    palette = [BLUE, TEAL, "#8e6c8a", "#d4a017", "#5b8c5a", "#b5651d", "#4f6d7a", RED]
    fig = go.Figure()
    for n, row in enumerate(r for r in rows if r.path):
        points = sorted(row.path, key=lambda p: p.nec)
        label = _text(row.recipe) + (" (baseline)" if row.baseline else "")
        fig.add_scatter(x=[p.nec for p in points], y=[p.val_accuracy for p in points], mode="lines+markers",
                        name=label,
                        line=dict(color=GREY if row.baseline else palette[n % len(palette)],
                                  dash="dash" if row.baseline else "solid"),
                        hovertemplate=_text(row.recipe) + "<br>%{x:.1f} concepts per class<br>validation accuracy "
                                                          "%{y:.1%}<extra></extra>")
    fig.add_vline(x=nec, line=dict(color="#888", dash="dot"), annotation_text=f"compared at NEC ≤ {nec:g}",
                  annotation_position="top right")
    fig.update_layout(title="Accuracy against concepts per class (validation data)",
                      xaxis=dict(title="concepts per class (NEC)", gridcolor="#eee", rangemode="tozero"),
                      yaxis=dict(tickformat=".0%", title="validation accuracy", gridcolor="#eee"), height=380,
                      legend=dict(orientation="h", y=-0.25, x=0.0), **{**_LAYOUT, "margin": dict(l=10, r=10, t=40, b=10)})
    return _fit_labels(fig)


# -- HTML bar charts (Inspect, the explanation report) -----------------------------------------------

def charts_css() -> str:
    """The stylesheet the HTML bar charts need (a page adds it once; a report inlines it)."""
    return CHARTS_CSS.read_text(encoding="utf-8")


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _span(low: float, high: float) -> tuple[float, float]:
    low, high = min(low, 0.0), max(high, 0.0)
    return low, max(high - low, 1e-9)


def _bar(start: float, end: float, low: float, span: float, cls: str) -> str:
    left = 100 * (min(start, end) - low) / span
    width = max(100 * abs(end - start) / span, 0.4)  # a hairline for a tiny value, never nothing
    return f'<div class="cbm-bar {cls}" style="left:{left:.2f}%;width:{width:.2f}%"></div>'


def _zero(low: float, span: float) -> str:
    return f'<div class="cbm-zero" style="left:{100 * -low / span:.2f}%"></div>'


def _chart(title: str, rows: list[tuple[str, str, str, str]], footer: str = "") -> str:
    """rows: (label, track html, value text, tooltip)."""
    cells = "".join(f'<div class="cbm-label" title="{_e(tip)}">{_e(label)}</div>'
                    f'<div class="cbm-track" title="{_e(tip)}">{track}</div>'
                    f'<div class="cbm-value" title="{_e(tip)}">{value}</div>' for label, track, value, tip in rows)
    return (f'<div class="cbm-chart"><div class="cbm-title">{_e(title)}</div>'
            f'<div class="cbm-grid">{cells}</div>{footer}</div>')


def probability_bars(frame, title: str) -> str:
    """frame: class, probability (top classes first)."""
    rows = []
    for cls, p in zip(frame["class"], frame["probability"]):
        rows.append((cls, _bar(0.0, float(p), 0.0, 1.0, "prob"), _e(f"{p:.1%}"), f"{cls}: {p:.2%}"))
    return _chart(title, rows)


def direction_legend(note: bool = True) -> str:
    """The key to the four directions; ``note`` adds what present / absent and the colours mean (a
    report says that once, at its top)."""
    items = "".join(f'<span class="cbm-key"><span class="cbm-swatch {DIRECTION_STYLE[d]}"></span>{_e(d)}</span>'
                    for d in DIRECTIONS)
    words = ('<div class="cbm-note">Present / absent: the concept scores above / below its average over the training '
             "images (pNN: its percentile among them). Blue pushes towards the class, red away from it.</div>")
    return f'<div class="cbm-legend">{items}</div>' + (words if note else "")


def contribution_bars(frame, title: str, top: int = 10) -> str:
    """frame: ``cbm_core.concept_directions`` rows (concept, percentile, contribution, direction, sentence)."""
    f = frame[frame["contribution"] != 0].head(top)
    if f.empty:
        return _chart(title, [], '<div class="cbm-note">No concept counts towards this class.</div>')
    low, span = _span(float(f["contribution"].min()), float(f["contribution"].max()))
    rows = []
    for r in f.itertuples():
        state, way = r.direction.split(", pushing ")
        value = f'<b>{r.contribution:+.2f}</b> <span class="cbm-dim">{_e(state)} p{r.percentile:.0f} · {_e(way)}</span>'
        rows.append((r.concept, _zero(low, span) + _bar(0.0, float(r.contribution), low, span, DIRECTION_STYLE[r.direction]),
                     value, r.sentence))
    return _chart(title, rows, direction_legend())


def waterfall_bars(frame, directions: dict[str, str], title: str) -> str:
    """frame: ``Explanation.waterfall()`` rows (label, value, kind); directions: concept -> one of
    ``DIRECTIONS``, for the words and the fill of each concept's step."""
    steps, running = [], 0.0
    for label, value, kind in zip(frame["label"], frame["value"], frame["kind"]):
        start, end = (0.0, float(value)) if kind == "total" else (running, running + float(value))
        running = end
        steps.append((label, float(value), kind, start, end))
    low, span = _span(min(min(s[3], s[4]) for s in steps), max(max(s[3], s[4]) for s in steps))
    rows = []
    for label, value, kind, start, end in steps:
        if kind == "concept" and label in directions:
            style = DIRECTION_STYLE[directions[label]]
            state = directions[label].split(",")[0]
            text = f'<b>{value:+.2f}</b> <span class="cbm-dim">{_e(state)}</span>'
            tip = f"{label}: {directions[label]} ({value:+.2f})"
        else:
            style = {"total": "total", "bias": "neutral", "rest": "neutral", "residual": "neutral"}.get(
                kind, "for present" if value >= 0 else "against present")
            text = f"<b>{value:.2f}</b>" if kind == "total" else f"<b>{value:+.2f}</b>"
            tip = f"{label}: {value:+.2f}"
        rows.append((label, _zero(low, span) + _bar(start, end, low, span, style), text, tip))
    return _chart(title, rows)


# -- pictures ------------------------------------------------------------------------------------------

def overlay_picture(picture, saliency, region: tuple[int, int, int, int] | None = None, opacity: float = 0.6):
    """``picture`` (PIL, the maps' size) with a (H, W) saliency map laid over it as Inspect draws it:
    ``overlay.heat_layer`` at ``opacity``, normalised over ``region`` (the part the model saw,
    ``overlay.seen_region``) and outlined when that is not the whole picture. Returns an RGB image."""
    from PIL import Image, ImageDraw

    from ..explain.overlay import heat_layer

    layer = heat_layer(saliency, region)
    alpha = layer.getchannel("A").point(lambda a: round(a * opacity))
    layer.putalpha(alpha)
    out = Image.alpha_composite(picture.convert("RGBA"), layer).convert("RGB")
    if region is not None and tuple(region) != (0, 0, picture.width, picture.height):
        left, top, width, height = region
        ImageDraw.Draw(out).rectangle([left, top, left + width - 1, top + height - 1], outline=(255, 255, 255), width=1)
    return out
