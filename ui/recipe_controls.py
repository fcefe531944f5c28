"""Controls generated from a recipe's declaration (``cbm_core.recipes``): the Build and Compare pages
never hard-code a recipe's options."""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import streamlit as st

from cbm_core.recipes import Param, list_recipes


def saved_upload(upload) -> Path:
    """An uploaded text file (a pool, a vocabulary) written to a temporary file: the engine's
    loaders read paths, with their own size and encoding checks."""
    path = Path(tempfile.gettempdir()) / f"cbm_upload_{upload.file_id}{Path(upload.name).suffix}"
    path.write_bytes(upload.getvalue())
    return path


def recipe_names(include_baselines: bool = False) -> list[str]:
    return [r.name for r in list_recipes() if include_baselines or not r.baseline]


def recipe_title(name: str) -> str:
    return next(r.title for r in list_recipes() if r.name == name)


def _log_grid(p: Param) -> list[float]:
    """Half-decade steps around the default, inside the parameter's bounds."""
    base = p.default if p.default > 0 else 1e-3
    values = sorted({float(f"{base * 10 ** (k / 2):.3g}") for k in range(-6, 7)} | {float(p.default)})
    return [v for v in values if (p.low is None or v >= p.low) and (p.high is None or v <= p.high)]


def param_control(p: Param, key: str, container=st):
    """One widget for one parameter; returns its value (checked by the recipe later)."""
    label = p.name.replace("_", " ")
    if p.sparsity:
        label += " (higher = fewer concepts per class)" if p.name == "lam" else " (sparsity)"
    if p.type is bool:
        return container.checkbox(label, value=p.default, key=key, help=p.help)
    if p.type is str and p.choices:
        return container.selectbox(label, list(p.choices), index=list(p.choices).index(p.default), key=key, help=p.help)
    if p.type is float and p.log:
        grid = _log_grid(p)
        return container.select_slider(label, grid, value=float(p.default), key=key, help=p.help,
                                       format_func=lambda v: f"{v:g}")
    if p.type is int:
        return int(container.number_input(label, value=int(p.default), step=1, key=key, help=p.help,
                                          min_value=int(p.low) if p.low is not None else None,
                                          max_value=int(p.high) if p.high is not None and p.high < 2**53 else None))
    step = 10 ** math.floor(math.log10(abs(p.default))) / 10 if p.default else 0.01
    return float(container.number_input(label, value=float(p.default), step=step, format="%g", key=key, help=p.help,
                                        min_value=float(p.low) if p.low is not None else None,
                                        max_value=float(p.high) if p.high is not None else None))


def param_controls(recipe, key: str, main: tuple[str, ...] = (), nested: bool = False) -> dict:
    """Every parameter of ``recipe``: the sparsity knob and ``main`` ones in view, the rest in an
    expander (or all in view when ``nested`` inside another expander, which Streamlit cannot nest).
    Returns ``{name: value}``."""
    values = {}
    shown = [p for p in recipe.params if p.sparsity or p.name in main or nested]
    rest = [p for p in recipe.params if p not in shown]
    cols = st.columns(min(4, max(1, len(shown)))) if shown else []
    cols = [cols[i % len(cols)] for i in range(len(shown))]
    for col, p in zip(cols, shown):
        values[p.name] = param_control(p, f"{key}_{recipe.name}_{p.name}", col)
    if rest:
        with st.expander(f"More {recipe.name} options"):
            for p in rest:
                values[p.name] = param_control(p, f"{key}_{recipe.name}_{p.name}")
    return values
