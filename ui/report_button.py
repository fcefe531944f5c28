"""The "Download report" section of Inspect, Intervene, Edit and Compare: an explanation report or a model
card (``cbm_core.report``) as one self-contained HTML file, and as a PDF where chromium is installed.

A report takes a few seconds to make (heat maps, the smallest change, chromium for the PDF), so it is made
only when a button is clicked: the buttons hand Streamlit a function (deferred download), which runs on a
worker thread, outside the page's run. That function must not touch ``st.session_state``; everything it
needs is captured when the button is drawn.
"""
from __future__ import annotations

import datetime as _dt
import html
import re
from pathlib import Path
from typing import Callable, Mapping, Sequence

import streamlit as st

from cbm_core import CBMError
from cbm_core.report import browser
from cbm_core.report.export import RUNNER_UP, Report, explanation_report, model_card
from ui import common
from ui.reliability_panel import reliable_model


def _stem(text: str) -> str:
    """A file-name-safe stem: 'Model card: PCBM' -> 'model-card-pcbm'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "report"


def _error_page(exc: Exception) -> bytes:
    """What the HTML download holds when the report could not be made: the reason, in words."""
    reason = html.escape(str(exc) if isinstance(exc, CBMError) else f"{type(exc).__name__}: {exc}")
    return (f'<!doctype html><meta charset="utf-8"><title>No report</title><body style="font-family:sans-serif">'
            f"<h1>The report could not be made</h1><p>{reason}</p></body>").encode("utf-8")


def _html(make: Callable[[], Report]) -> Callable[[], bytes]:
    def run() -> bytes:
        try:
            return make().to_html().encode("utf-8")
        except Exception as exc:  # a download gets its reason, never an empty file
            return _error_page(exc)
    return run


def _pdf(make: Callable[[], Report]) -> Callable[[], bytes]:
    return lambda: make().to_pdf()


def buttons(make: Callable[[], Report], name: str, key: str, what: str) -> None:
    """The HTML and PDF download buttons for the report ``make()`` builds; ``name`` names the files."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M")
    cols = st.columns([4, 2, 2], vertical_alignment="center")
    cols[0].markdown(f"**Download report** · {what}")
    cols[1].download_button("HTML", _html(make), file_name=f"{_stem(name)}-{stamp}.html", mime="text/html",
                            on_click="ignore", key=f"{key}_html", icon=":material/download:", width="stretch",
                            help="One self-contained file: opens in any browser, offline; nothing is loaded from "
                                 "the internet. Made when you click (a few seconds; the button spins meanwhile).")
    reason = browser.unavailable()
    cols[2].download_button("PDF", _pdf(make), file_name=f"{_stem(name)}-{stamp}.pdf", mime="application/pdf",
                            on_click="ignore", key=f"{key}_pdf", icon=":material/picture_as_pdf:", width="stretch",
                            disabled=reason is not None,
                            help=reason or "The same report, printed to A4 by chromium (a few seconds more).")


def explanation_section(pipe, images: Mapping[str, bytes], key: str, *, intervention=None,
                        counterfactual: str | None = RUNNER_UP, ask_spurious: bool = True) -> None:
    """The report on ``images`` (name -> bytes) under ``pipe``'s model, with ``intervention``'s effect.
    ``ask_spurious``: let the user mark concepts as spurious (flagged in the report's gallery)."""
    if not images:
        return
    model = pipe.model
    with st.container(border=True):
        spurious: Sequence[str] = ()
        if ask_spurious:
            default = [c for c in model.concepts.names if "background" in c] if common.is_toy_birds(model) else []
            spurious = st.multiselect(
                "Concepts you consider spurious (the report flags images whose prediction leans on them)",
                list(model.concepts.names), default=default, key=f"{key}_spurious", wrap=True,
                help="A spurious concept is a cue that is not a real property of any class, such as the background.")
        names = dict(images)
        chosen = tuple(spurious)
        target = counterfactual if counterfactual in (None, RUNNER_UP) or counterfactual in model.classes else RUNNER_UP
        # The presence calibration and out-of-distribution reference Inspect's reliability panel shows (fitted
        # once per model and process, on the validation data the panel finds), so the report says the same.
        trust = reliable_model(model)

        def make() -> Report:
            return explanation_report(pipe, names, intervention=intervention, spurious=chosen, counterfactual=target,
                                      title=None, reliability_model=trust)

        what = (f"why the model decides as it does for {len(names)} image{'s' * (len(names) != 1)}"
                + (", with your changes" if intervention else ""))
        buttons(make, "explanation " + (next(iter(names)) if len(names) == 1 else f"{len(names)} images"), key, what)


def data_label(key: str) -> str | None:
    """In words, the evaluation data ``ui.data_source.evaluation_features(key)`` offered on this page."""
    from ui.data_source import DISK

    choice = st.session_state.get(f"{key}_source")
    if choice == DISK:
        path, split = st.session_state.get(f"{key}_path"), st.session_state.get(f"{key}_split")
        return f"{path}" + (f" (split {split})" if split else "") if path else None
    return choice


def session_base(model):
    """The model as it was opened (the bundle on disk, or the unsaved build), whose edit log ``model``'s
    starts with: the model card replays and measures the edits made since. None when unknown."""
    path = st.session_state.get("bundle_path")
    try:
        base = (st.session_state.get("unsaved_model") if path == common.UNSAVED else
                common.cached_bundle(path, common._stamp(Path(path))) if path else None)
    except (CBMError, OSError):
        return None
    if base is None or list(model.edit_log[:len(base.edit_log)]) != list(base.edit_log):
        return None
    return base


def model_card_section(model, key: str, *, evaluation=None, evaluation_name: str | None = None, comparison=None,
                       base=None) -> None:
    """The model card of ``model``: with ``evaluation`` (a FeatureSet) measured per class and group, the edits
    since ``base`` replayed and measured on it, and ``comparison`` (a Comparison) when one was run."""
    with st.container(border=True):
        def make() -> Report:
            return model_card(model, evaluation=evaluation, evaluation_name=evaluation_name, comparison=comparison,
                              base=base)

        parts = ["the model card"]
        if evaluation is not None:
            parts.append(f"measured on {evaluation_name or 'the chosen data'}")
        if comparison is not None:
            parts.append("with the recipe comparison")
        buttons(make, f"model card {model.recipe.get('name', 'model')}", key, ", ".join(parts))
