"""The tables of the reports, as pandas frames a person reads (columns named in words), and one
HTML renderer that escapes every cell.

Builders take engine objects (a model, an explanation, a comparison) and return frames; ``html_table``
turns any frame into an HTML table. Nothing here draws a chart (``figures.py``) or lays out a page
(``export.py``).
"""
from __future__ import annotations

import html
import json
import math
from typing import TYPE_CHECKING, Callable, Mapping

if TYPE_CHECKING:  # pandas is imported when a table is made, so `import cbm_core` stays light
    import pandas as pd

# Recorded metrics, in the order and the words a model card uses; values that are fractions show as %.
METRIC_LABELS = {
    "train_accuracy": "accuracy on the training images",
    "val_accuracy": "accuracy on the validation images",
    "val_worst_group": "worst-group accuracy on the validation images",
    "test_accuracy": "accuracy on the test images",
    "test_worst_group": "worst-group accuracy on the test images",
    "nonzero_fraction": "non-zero weights",
    "nec": "concepts per class (NEC)",
    "concepts_used": "concepts used by some class",
    "n_train": "training images",
    "n_val": "validation images",
    "skipped_images": "unreadable images skipped while building",
}
_PERCENT = {"train_accuracy", "val_accuracy", "val_worst_group", "test_accuracy", "test_worst_group",
            "nonzero_fraction"}


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def html_table(frame: pd.DataFrame, formats: Mapping[str, Callable] | None = None, css: str = "",
               numeric: tuple[str, ...] = ()) -> str:
    """``frame`` as an HTML table; every header and cell is escaped (a bundle's names are text).
    ``formats``: column -> function of a value returning text; ``numeric``: right-aligned columns."""
    formats = formats or {}
    head = "".join(f'<th class="{"num" if c in numeric else ""}">{_e(c)}</th>' for c in frame.columns)
    rows = []
    for record in frame.itertuples(index=False, name=None):
        cells = []
        for column, value in zip(frame.columns, record):
            text = "–" if _missing(value) else formats[column](value) if column in formats else value
            cells.append(f'<td class="{"num" if column in numeric else ""}">{_e(text)}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="{_e(css)}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def pct(value) -> str:
    return f"{float(value):.1%}"


def pts(value) -> str:
    """A change of a fraction, in percentage points."""
    return f"{float(value) * 100:+.1f} pts"


# -- one image -----------------------------------------------------------------------------------------

def probability_change(before, after, index: int = 0, top: int = 5) -> pd.DataFrame:
    """Class probabilities before and after an intervention (``Explanation.compare``): the classes
    most likely before or after, with the change."""
    frame = before.compare(after, index)
    keep = set(frame.nlargest(top, "after")["class"]) | set(frame.nlargest(top, "before")["class"])
    return frame[frame["class"].isin(keep)].reset_index(drop=True)


# -- the model -------------------------------------------------------------------------------------------

def _short(value, limit: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# What the fit facts a recipe records (beside its declared parameters) mean, in words.
_RECIPE_FACTS = {
    "name": "the method that fitted the model",
    "tol": "the solver stops when its steps get smaller than this",
    "n_iter": "iterations the solver ran",
    "converged": "whether the solver settled before its iteration cap",
}


def recipe_table(model) -> pd.DataFrame:
    """The recipe's name and every hyper-parameter or fit fact it recorded (warnings are listed apart),
    each with what it means: the recipe's own help for its parameters."""
    import pandas as pd

    from ..recipes import RECIPES

    recipe = RECIPES.get(str(model.recipe.get("name", "")))
    helps = {p.name: p.help for p in getattr(recipe, "params", ())}
    rows = []
    for key, value in model.recipe.items():
        if key == "warnings":
            continue
        if key == "concept_dependencies" and isinstance(value, dict):
            value = f"{value.get('structure', '?')} model over {len(value.get('names', []))} concepts"
        rows.append((str(key).replace("_", " "), _short(value), helps.get(key) or _RECIPE_FACTS.get(key, "")))
    return pd.DataFrame(rows, columns=["setting", "value", "what it means"])


# Stored in ``metrics`` but not measures of the model: fitted reliability data (``cbm_core.explain.reliability``).
_NOT_MEASURES = {"concept_presence", "ood_reference", "name_stability", "concept_audit", "concept_pointing"}


def metrics_table(metrics: Mapping, skip: tuple[str, ...] = ()) -> pd.DataFrame:
    """The metrics a bundle recorded when it was built (or after its last edit), in words; ``skip``: keys
    shown elsewhere."""
    import pandas as pd

    rows = []
    keys = [k for k in METRIC_LABELS if k in metrics] + [k for k in metrics if k not in METRIC_LABELS]
    for key in [k for k in keys if k not in skip and k not in _NOT_MEASURES]:
        value = metrics[key]
        if isinstance(value, dict):  # per-concept measures (a supervised model's AUROC): summarised
            numbers = [v for v in value.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if not numbers or len(numbers) != len(value):
                continue  # a stored record (an audit, a fit), not a measure: the card shows what it says elsewhere
            text = f"{len(value)} values, mean {sum(numbers) / len(numbers):.3f}, lowest {min(numbers):.3f}"
        elif key in _PERCENT and isinstance(value, (int, float)):
            text = pct(value)
        elif isinstance(value, float):
            text = f"{value:.3g}" if key != "nec" else f"{value:.2f}"
        else:
            text = _short(value)
        rows.append((METRIC_LABELS.get(key, str(key).replace("_", " ")), text))
    return pd.DataFrame(rows, columns=["measure", "value"])


def concepts_table(model, limit: int = 300) -> tuple[pd.DataFrame, int]:
    """Every concept the head uses (largest total |weight| first): where it came from, how well its
    name fits (DN-CBM's name similarity, where recorded) and the classes it counts for or against.
    Returns the table (at most ``limit`` rows) and the number of concepts no class uses."""
    import pandas as pd

    weight = model.weight
    names, sources = model.concepts.names, model.concepts.sources
    similarity = model.concepts.name_similarity
    strength = weight.abs().sum(dim=0)
    used = [k for k in strength.argsort(descending=True).tolist() if float(strength[k]) > 0]
    rows = []
    for k in used[:limit]:
        col = weight[:, k]
        pos = [model.classes[c] for c in (col > 0).nonzero().flatten().tolist()]
        neg = [model.classes[c] for c in (col < 0).nonzero().flatten().tolist()]
        row = {"concept": names[k], "where it came from": provenance(sources[k])}
        if similarity:
            row["name similarity"] = similarity[k]
        row["evidence for"] = _listing(pos)
        row["evidence against"] = _listing(neg)
        rows.append(row)
    return pd.DataFrame(rows), len(names) - len(used)


def provenance(source: str) -> str:
    """A concept's recorded source (``ConceptBank.sources``) in words."""
    kind, _, detail = str(source).partition(":")
    words = {"user": "typed by a user", "file": f"concept file {detail}", "template": "a prompt template",
             "generated": f"generated ({detail})" if detail else "generated", "toybirds": "the Toy Birds attribute list"}
    return words.get(kind, str(source))


def _listing(items, limit: int = 6) -> str:
    if not items:
        return ""
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def class_concepts_table(model, top: int = 4, limit: int = 60) -> pd.DataFrame:
    """For each class (at most ``limit``): the concepts with the largest weights for and against it."""
    import pandas as pd

    rows = []
    for c, cls in enumerate(model.classes[:limit]):
        w = model.weight[c]
        order = w.argsort(descending=True).tolist()
        pos = [f"{model.concepts.names[k]} ({float(w[k]):+.2f})" for k in order[:top] if float(w[k]) > 0]
        neg = [f"{model.concepts.names[k]} ({float(w[k]):+.2f})" for k in order[::-1][:top] if float(w[k]) < 0]
        rows.append({"class": cls, "concepts": int((w != 0).sum()), "strongest evidence for": ", ".join(pos),
                     "strongest evidence against": ", ".join(neg)})
    return pd.DataFrame(rows)


def describe_edit_entry(entry: Mapping) -> tuple[str, str, str]:
    """(what, concepts, classes) of one edit-log entry, in the words the Edit page uses."""
    op = entry.get("op")
    if op == "set_weight":
        return (f"weight {entry.get('old', float('nan')):+.3f} → {entry.get('new', float('nan')):+.3f}",
                str(entry.get("concept", "")), str(entry.get("class_name", "")))
    if op == "adapt":
        concepts = [f"mask {c}" for c in entry.get("mask", [])] + \
                   [f"{c} ×{f:g}" for c, f in (entry.get("amplify") or {}).items()]
        return f"adapt (from {entry.get('n_images', '?')} images)", ", ".join(concepts), "all"
    if op == "prune":
        classes = entry.get("classes", "all")
        return "prune", ", ".join(entry.get("concepts", [])), ", ".join(classes) if isinstance(classes, list) else str(classes)
    return str(op), "", ""


def comparison_table(comparison) -> pd.DataFrame:
    """The Compare page's table: each recipe at matched sparsity and as fitted (test split)."""
    import pandas as pd

    nec = comparison.nec
    return pd.DataFrame([{
        "recipe": r.recipe + (" (baseline)" if r.baseline else ""),
        f"test accuracy at NEC ≤ {nec:g}": r.at_nec.get("accuracy"),
        "worst group": r.at_nec.get("worst_group"),
        "NEC reached": r.at_nec.get("nec"),
        "test accuracy as fitted": r.accuracy if r.error is None else None,
        "NEC as fitted": r.nec if r.error is None else None,
        "how the sparsity was matched": r.at_nec.get("how") or r.error} for r in comparison.rows])
