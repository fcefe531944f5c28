"""Plotly figures shared by the pages (layout only; every number comes from cbm_core)."""
from __future__ import annotations

import plotly.graph_objects as go

BLUE, RED, GREY, TEAL = "#2f6f9f", "#c8553d", "#9aa5b1", "#3a9d8f"
_LAYOUT = dict(margin=dict(l=10, r=40, t=36, b=10), plot_bgcolor="white", paper_bgcolor="white",
               font=dict(size=13), hoverlabel=dict(bgcolor="white"))


def probabilities(frame, title="Prediction") -> go.Figure:
    """frame: class, probability (top classes first)."""
    f = frame.iloc[::-1]
    fig = go.Figure(go.Bar(x=f["probability"], y=f["class"], orientation="h", marker_color=BLUE,
                           text=[f"{p:.1%}" for p in f["probability"]], textposition="auto",
                           hovertemplate="%{y}: %{x:.2%}<extra></extra>"))
    fig.update_layout(title=title, xaxis=dict(range=[0, 1], tickformat=".0%", gridcolor="#eee"),
                      height=60 + 34 * len(f), **_LAYOUT)
    return fig


def probability_change(frame, title="Class probabilities") -> go.Figure:
    """frame: class, before, after, change."""
    f = frame.iloc[::-1]
    fig = go.Figure()
    fig.add_bar(x=f["before"], y=f["class"], orientation="h", name="original", marker_color=GREY, opacity=0.6,
                hovertemplate="%{y} originally: %{x:.2%}<extra></extra>")
    fig.add_bar(x=f["after"], y=f["class"], orientation="h", name="with changes", marker_color=BLUE,
                text=[f"{a:.0%} ({c * 100:+.0f} pts)" if abs(c) >= 0.005 else f"{a:.0%}" for a, c in zip(f["after"], f["change"])],
                textposition="auto", cliponaxis=False, hovertemplate="%{y} now: %{x:.2%}<extra></extra>")
    fig.update_layout(title=title, barmode="overlay", xaxis=dict(range=[0, 1.0], tickformat=".0%", gridcolor="#eee"),
                      height=90 + 30 * len(f), legend=dict(orientation="h", y=-0.18, x=0.0), **_LAYOUT)
    return fig


def concepts(frame, title="Top concepts", top=10) -> go.Figure:
    """frame: Explanation.to_frame() rows (concept, score, percentile, contribution)."""
    f = frame[frame["contribution"] != 0].head(top).iloc[::-1]
    colours = [BLUE if c >= 0 else RED for c in f["contribution"]]
    fig = go.Figure(go.Bar(
        x=f["contribution"], y=f["concept"], orientation="h", marker_color=colours,
        customdata=list(zip(f["score"], f["percentile"])),
        text=[f"p{p:.0f}" for p in f["percentile"]], textposition="auto",
        hovertemplate="%{y}<br>contribution %{x:+.2f}<br>score %{customdata[0]:.3f} "
                      "(percentile %{customdata[1]:.0f} of training images)<extra></extra>"))
    fig.update_layout(title=title, xaxis=dict(title="contribution to the class logit", zeroline=True,
                                              zerolinecolor="#888", gridcolor="#eee"),
                      height=70 + 28 * len(f), **_LAYOUT)
    return fig


def waterfall(frame, title=None) -> go.Figure:
    """frame: Explanation.waterfall() rows (label, value, kind)."""
    measure = ["absolute" if k == "bias" else "total" if k == "total" else "relative" for k in frame["kind"]]
    fig = go.Figure(go.Waterfall(
        orientation="h", y=frame["label"], x=[0 if k == "total" else v for k, v in zip(frame["kind"], frame["value"])],
        measure=measure, text=[f"{v:+.2f}" for v in frame["value"]], textposition="outside", cliponaxis=False,
        increasing=dict(marker_color=BLUE), decreasing=dict(marker_color=RED), totals=dict(marker_color=TEAL),
        connector=dict(line=dict(color="#bbb", width=1))))
    steps = [v for k, v in zip(frame["kind"], frame["value"]) if k != "total"]
    running = [sum(steps[: i + 1]) for i in range(len(steps))] + [0.0]
    lo, hi = min(running), max(running)
    pad = 0.25 * max(hi - lo, 1e-6)  # room for the value labels outside the bars
    fig.update_layout(title=title or f"Why {frame.attrs.get('class', '')}: the logit, concept by concept",
                      yaxis=dict(autorange="reversed"), xaxis=dict(gridcolor="#eee", range=[lo - pad * (lo < 0), hi + pad]),
                      height=80 + 30 * len(frame), **_LAYOUT)
    return fig


def heatmap(values, x, y, title, colorscale="RdBu", zmid=0.0, height=None, fmt=".2f") -> go.Figure:
    fig = go.Figure(go.Heatmap(z=values, x=x, y=y, colorscale=colorscale, zmid=zmid,
                               hovertemplate="%{y} · %{x}: %{z:" + fmt + "}<extra></extra>"))
    fig.update_layout(title=title, height=height or 120 + 26 * len(y), xaxis=dict(tickangle=-40), **_LAYOUT)
    return fig
