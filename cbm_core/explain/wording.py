"""What an explanation means, in words: which way each concept points, what an edit changes, and
which class a file name states.

A contribution ``W[c, k] z_k`` has two signs that a bar's length hides. ``z_k`` is the concept's
score relative to its training average (the head's zero point): above it, the concept counts as
*present*; below, as *absent*. ``W[c, k]`` says whether the concept's presence is evidence for or
against class c. So a positive contribution can mean "present and pushing for" or "absent and
pushing for" — the model may be using the *absence* of water. Every chart and caption that shows a
contribution should say which of the four it is; this module is the one place that decides.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

PRESENT_FOR = "present, pushing for"
ABSENT_FOR = "absent, pushing for"
PRESENT_AGAINST = "present, pushing against"
ABSENT_AGAINST = "absent, pushing against"
NO_EFFECT = "no effect"
# In the order a legend lists them: evidence for the class first, present before absent.
DIRECTIONS = (PRESENT_FOR, ABSENT_FOR, PRESENT_AGAINST, ABSENT_AGAINST)


def direction(z: float, contribution: float) -> str:
    """One of ``DIRECTIONS`` (or ``NO_EFFECT``) for a standardised score ``z`` and its contribution."""
    if contribution == 0 or z == 0:
        return NO_EFFECT
    present = z > 0
    if contribution > 0:
        return PRESENT_FOR if present else ABSENT_FOR
    return PRESENT_AGAINST if present else ABSENT_AGAINST


def concept_directions(explanation, index: int = 0, class_index: int | None = None):
    """``Explanation.to_frame(index, class_index)`` plus what each row means:

    present (bool: the score is above its training average, z > 0), pushes (``for`` / ``against`` /
    ``none``: the contribution's sign), direction (one of ``DIRECTIONS`` or ``NO_EFFECT``) and
    sentence (e.g. "water background is absent (p12) and pushes for azure finch (+0.62)").
    Sorted like ``to_frame``: by |contribution|."""
    frame = explanation.to_frame(index, class_index)
    cls = frame.attrs["class"]
    frame["present"] = frame["z"] > 0
    frame["pushes"] = ["none" if c == 0 else "for" if c > 0 else "against" for c in frame["contribution"]]
    frame["direction"] = [direction(z, c) for z, c in zip(frame["z"], frame["contribution"])]
    frame["sentence"] = [sentence(n, z, p, c, cls) for n, z, p, c in
                         zip(frame["concept"], frame["z"], frame["percentile"], frame["contribution"])]
    return frame


def sentence(concept: str, z: float, percentile: float, contribution: float, class_name: str) -> str:
    """One contribution in words: "<concept> is absent (p12) and pushes for <class> (+0.62)"."""
    state = "present" if z > 0 else "absent"
    if contribution == 0:
        return f"{concept} is {state} (p{percentile:.0f}) and does not count towards {class_name}"
    way = "for" if contribution > 0 else "against"
    return f"{concept} is {state} (p{percentile:.0f}) and pushes {way} {class_name} ({contribution:+.2f})"


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[^0-9a-z]+", text.lower()) if w]


def label_from_filename(name: str, classes: Sequence[str]) -> str | None:
    """The class a file name states, or None when it names none or several.

    A class counts when its words appear in a row in the file name, ignoring case and separators
    ("09_azure_diver_on_land.png" and "Azure-Diver 3.jpg" both say "azure diver"). When one match
    lies inside a longer one ("gull" inside "golden gull"), the longer wins."""
    stem = name.rsplit("/", 1)[-1]
    stem = stem.rsplit(".", 1)[0] if "." in stem else stem
    words = _words(stem)
    spans = []  # (start, end, class)
    for cls in classes:
        target = _words(cls)
        if not target:
            continue
        for start in range(len(words) - len(target) + 1):
            if words[start:start + len(target)] == target:
                spans.append((start, start + len(target), cls))
    kept = {cls for s, e, cls in spans
            if not any(s2 <= s and e <= e2 and (e2 - s2) > (e - s) for s2, e2, _ in spans)}
    return kept.pop() if len(kept) == 1 else None


@dataclass(frozen=True)
class EditSummary:
    """What a global edit changes in the head: how many weights, of which concepts, for which classes."""

    changed_weights: int
    concepts: tuple[str, ...]
    classes: tuple[str, ...]

    @property
    def changes_anything(self) -> bool:
        return self.changed_weights > 0

    def __str__(self) -> str:
        if not self.changes_anything:
            return "This edit changes nothing: those weights already have these values (was it applied already?)."
        return (f"Changes {self.changed_weights} weight{'s' * (self.changed_weights != 1)}: "
                f"{_listing(self.concepts, 'concept')} for {_listing(self.classes, 'class', 'classes')}.")


def _listing(names: Sequence[str], one: str, many: str | None = None) -> str:
    many = many or one + "s"
    if len(names) == 1:
        return f"{one} {names[0]}"
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return f"{len(names)} {many} ({shown})"


def describe_edit(before, after) -> EditSummary:
    """Compare two models' heads (``weight``: (C, K), same concepts and classes), e.g. a model and
    ``prune_concepts(model, ...).model``."""
    diff = before.weight != after.weight  # (C, K)
    concepts = tuple(before.concepts.names[k] for k in diff.any(dim=0).nonzero().flatten().tolist())
    classes = tuple(before.classes[c] for c in diff.any(dim=1).nonzero().flatten().tolist())
    return EditSummary(int(diff.sum()), concepts, classes)


def baseline_verdict(model_accuracy: float, random_accuracy: float) -> str:
    """What ``random_concept_baseline`` means for a user, in words: how far the named concepts beat
    as many random directions in the same embedding, and what to conclude from it."""
    gap = 100 * (model_accuracy - random_accuracy)
    numbers = f"{model_accuracy:.1%} with the named concepts against {random_accuracy:.1%} with random directions"
    if gap < 0:
        return (f"The named concepts do worse than random directions ({numbers}, {gap:+.1f} pts): as many random "
                "directions in the same embedding predict better, so the names are not what makes the model work, and "
                "may even hold it back. Check whether the concepts describe these images at all (their scores, maps "
                "and ground truth), try other concept lists or templates, or a less sparse model (lower λ).")
    if gap < 2:
        return (f"The named concepts barely beat random directions ({numbers}, {gap:+.1f} pts). The accuracy comes from "
                "the backbone's embedding, not from what the concepts are called: any set of directions this large "
                "would do about as well. So do not read the accuracy as evidence that the explanations are right; check "
                "the concepts themselves — does each score track its concept (ground truth, or images you know), do the "
                "maps land on it, does switching it off change what it should — and prefer a sparser model (higher λ), "
                "where each named concept has to carry more of the prediction.")
    if gap < 5:
        return (f"The named concepts beat random directions by a modest margin ({numbers}, {gap:+.1f} pts): they carry "
                "some information random directions do not, but much of the accuracy comes from the embedding itself. "
                "Check the concepts the model leans on most before trusting its explanations.")
    return (f"The named concepts beat random directions clearly ({numbers}, {gap:+.1f} pts): the model's accuracy "
            "depends on what the concepts describe, which is what makes its explanations worth reading.")
