"""Propagation to correlated concepts on hand-built dependencies, and the conditional-probability table."""
import pytest
import torch

from cbm_core.core.propagation import ConceptDependencies, PropagationError, conditional_table, propagate
from cbm_core.explain.tti import answers_intervention
from test_tti import NAMES, embedding_for, prob_model


def co_occurring(n=400, seed=0):
    """'red crown' and 'long beak' always together; 'striped wing' independent; 'water' = the class."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    a = (torch.rand(n, generator=g) < 0.5).float()
    C = torch.stack([a, a, (torch.rand(n, generator=g) < 0.5).float(), y.float()], 1)
    return C, y


@pytest.mark.parametrize("structure", ["class", "pairwise"])
def test_fixing_one_of_two_co_occurring_concepts_moves_the_other(structure):
    C, y = co_occurring()
    if structure == "class":  # the class must carry the pair: make it the pair itself
        y = C[:, 0].long()
    dep = ConceptDependencies(structure=structure).fit(C, y, 2, NAMES)
    probs0 = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    observed = torch.tensor([[1.0, float("nan"), float("nan"), float("nan")]])
    after = propagate(dep, probs0, observed)
    assert float(after[0, 0]) == 1.0, "the answer itself stays as answered"
    assert float(after[0, 1]) > 0.9, "its inseparable partner follows"
    assert abs(float(after[0, 2]) - 0.5) < 0.1, "an independent concept barely moves"
    observed[0, 0] = 0.0
    assert float(propagate(dep, probs0, observed)[0, 1]) < 0.25, "and when it is absent, so is its partner"
    # the image's own evidence still counts: a partner the image is sure about stays put
    sure = torch.tensor([[0.5, 0.001, 0.5, 0.5]])
    observed[0, 0] = 1.0
    assert float(propagate(dep, sure, observed)[0, 1]) < float(after[0, 1])


def test_no_answers_move_nothing_and_json_round_trips():
    C, y = co_occurring()
    for structure in ("class", "pairwise"):
        dep = ConceptDependencies(structure=structure).fit(C, y, 2, NAMES)
        probs0 = torch.tensor([[0.2, 0.7, 0.4, 0.9]])
        none = torch.full_like(probs0, float("nan"))
        torch.testing.assert_close(propagate(dep, probs0, none), probs0)
        back = ConceptDependencies.from_dict(dep.to_dict())
        observed = torch.tensor([[1.0, float("nan"), float("nan"), float("nan")]])
        torch.testing.assert_close(propagate(back, probs0, observed), propagate(dep, probs0, observed), atol=1e-4,
                                   rtol=1e-4)
    bad = dep.to_dict()
    bad["rate"][0] = 1.5
    with pytest.raises(PropagationError, match="impossible numbers"):
        ConceptDependencies.from_dict(bad)
    with pytest.raises(PropagationError, match="malformed"):
        ConceptDependencies.from_dict({"structure": "class"})


def test_missing_labels_are_allowed_and_class_structure_needs_classes():
    C, y = co_occurring()
    C[::7, 1] = float("nan")
    dep = ConceptDependencies(structure="class").fit(C, y, 2, NAMES)
    assert torch.isfinite(dep.theta_).all()
    assert dep.log_likelihood(C) > ConceptDependencies(structure="class").fit(
        torch.rand(400, 4).round(), y, 2, NAMES).log_likelihood(C), "learnt structure beats noise on its own data"
    with pytest.raises(PropagationError, match="class labels"):
        ConceptDependencies(structure="class").fit(C)


def test_answers_intervention_reports_what_propagation_moved():
    C, y = co_occurring()
    dep = ConceptDependencies(structure="pairwise").fit(C, y, 2, NAMES)
    model = prob_model()
    emb = embedding_for([0.5, 0.5, 0.5, 0.5])
    out = answers_intervention(model, emb, {"red crown": "present"}, dependencies=dep)
    moved = dict((name, (before, after)) for name, before, after in out.moved)
    assert "long beak" in moved and moved["long beak"][1] > 0.9
    assert "red crown" not in moved, "the answered concept is the expert's, not propagation's"
    k = model.concepts.index("long beak")
    # propagation is itself a set-to-percentile change, so the prediction reflects it
    assert float(model.explain_features(emb[None], out.intervention).scores[0, k]) == pytest.approx(
        moved["long beak"][1], abs=0.02)
    assert list(out.moved_frame().columns) == ["concept", "before", "after", "change"]


def test_conditional_table_counts():
    C = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 1], [0, 0, 1, 1], [0, 1, 0, 1]], dtype=torch.float32)
    y = torch.tensor([0, 0, 1, 1, 1])
    t = conditional_table(C, NAMES, "red crown", prior=0.0).set_index("concept")
    assert t.loc["long beak", "p_given_present"] == pytest.approx(2 / 3)
    assert t.loc["long beak", "p_given_absent"] == pytest.approx(1 / 2)
    assert t.loc["long beak", "n_present"] == 3
    per_class = conditional_table(C, NAMES, "red crown", labels=y, classes=("cardinal", "heron"),
                                  class_name="cardinal", prior=0.0).set_index("concept")
    assert per_class.loc["long beak", "p_given_present"] == pytest.approx(1.0)
    with pytest.raises(PropagationError, match="Unknown concept"):
        conditional_table(C, NAMES, "blue crown")
