"""Which way each concept points, in words; and the class a file name states."""
import torch


from cbm_core import DIRECTIONS, Explanation, concept_directions, direction, label_from_filename
from cbm_core.explain.wording import ABSENT_AGAINST, ABSENT_FOR, NO_EFFECT, PRESENT_AGAINST, PRESENT_FOR


def test_the_four_directions_follow_the_signs_of_score_and_contribution():
    assert direction(z=1.2, contribution=0.5) == PRESENT_FOR
    assert direction(z=-1.2, contribution=0.5) == ABSENT_FOR  # a negative weight times an absent concept
    assert direction(z=1.2, contribution=-0.5) == PRESENT_AGAINST
    assert direction(z=-1.2, contribution=-0.5) == ABSENT_AGAINST
    assert direction(z=0.0, contribution=0.0) == NO_EFFECT
    assert set(DIRECTIONS) == {PRESENT_FOR, ABSENT_FOR, PRESENT_AGAINST, ABSENT_AGAINST}


def _explanation():
    """One image, two concepts, two classes, built by hand: no water (z = -1, p12) and a blue wing
    (z = +2, p95). Class 0 ("finch") uses the ABSENCE of water (a negative weight); class 1 ("diver")
    its presence."""
    z = torch.tensor([[-1.0, 2.0]])
    weight = torch.tensor([[-1.0, 0.5], [1.0, 0.0]])
    logits = z @ weight.T
    return Explanation(concept_names=("water background", "blue wing"), class_names=("finch", "diver"),
                       scores=torch.tensor([[0.1, 0.9]]), percentiles=torch.tensor([[12.0, 95.0]]), z=z, weight=weight,
                       bias=torch.zeros(2), residual=None, logits=logits, probs=logits.softmax(-1))


def test_concept_directions_says_a_missing_concept_pushes_for_the_class_that_expects_it_missing():
    exp = _explanation()
    rows = concept_directions(exp, 0, class_index=0).set_index("concept")
    water, wing = rows.loc["water background"], rows.loc["blue wing"]
    assert water.contribution > 0 and not water.present and water.direction == ABSENT_FOR
    assert water.pushes == "for"
    assert wing.present and wing.direction == PRESENT_FOR
    assert water.sentence == "water background is absent (p12) and pushes for finch (+1.00)"
    # The same image, read for the other class: the missing water now counts against "diver".
    rows = concept_directions(exp, 0, class_index=1).set_index("concept")
    assert rows.loc["water background"].direction == ABSENT_AGAINST
    assert rows.loc["blue wing"].direction == NO_EFFECT and "does not count towards diver" in rows.loc["blue wing"].sentence


def test_label_from_filename():
    classes = ["azure diver", "azure finch", "gull", "golden gull"]
    assert label_from_filename("09_azure_diver_on_land.png", classes) == "azure diver"
    assert label_from_filename("uploads/Azure-Finch 3.JPG", classes) == "azure finch"
    assert label_from_filename("golden_gull.png", classes) == "golden gull"  # the longer match wins
    assert label_from_filename("gull_7.png", classes) == "gull"
    assert label_from_filename("IMG_2041.jpg", classes) is None
    assert label_from_filename("azure_diver_vs_gull.png", classes) is None  # two classes named: unknown
    assert label_from_filename("azure divers.png", classes) is None  # words, not substrings



def test_describe_edit_counts_the_changed_weights_and_an_applied_edit_changes_nothing():
    from cbm_core import describe_edit, load_bundle, prune_concepts
    from cbm_core.demo.paths import DEMO_BUNDLE

    model = load_bundle(DEMO_BUNDLE)
    background = [c for c in model.concepts.names if "background" in c]
    pruned = prune_concepts(model, background).model
    k = [model.concepts.index(c) for c in background]
    summary = describe_edit(model, pruned)
    assert summary.changed_weights == int((model.weight[:, k] != 0).sum()) > 0
    assert set(summary.concepts) <= set(background) and summary.changes_anything
    assert str(summary).startswith(f"Changes {summary.changed_weights} weights: ")
    again = describe_edit(pruned, prune_concepts(pruned, background).model)
    assert not again.changes_anything and again.changed_weights == 0 and "changes nothing" in str(again)


def test_baseline_verdict_says_what_a_small_margin_means():
    from cbm_core import baseline_verdict

    close = baseline_verdict(0.950, 0.944)
    assert close.startswith("The named concepts barely beat random directions (95.0% with the named concepts against "
                            "94.4% with random directions, +0.6 pts)")
    assert "do not read the accuracy as evidence" in close
    assert "modest margin" in baseline_verdict(0.95, 0.92)
    assert "clearly" in baseline_verdict(0.95, 0.70)


def test_the_baseline_verdict_says_when_random_directions_do_better():
    from cbm_core.explain.wording import baseline_verdict

    text = baseline_verdict(0.125, 0.931)
    assert "worse than random directions" in text and "-80.6 pts" in text and "barely beat" not in text
    assert "barely beat" in baseline_verdict(0.80, 0.79)
