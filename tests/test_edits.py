import pytest
import torch

from cbm_core.analysis.edits import prune_concepts, replay, set_weight
from cbm_core.analysis.evaluation import compare, evaluate
from cbm_core.errors import ConceptError


def test_prune_returns_a_new_model_and_a_log_entry(hand_model):
    model, train = hand_model
    result = prune_concepts(model, ["water"])
    k = model.concepts.index("water")
    assert (result.model.weight[:, k] == 0).all()
    assert (model.weight[:, k] != 0).any(), "the original model must be untouched"
    assert result.model.edit_log[-1] == result.entry and result.entry["op"] == "prune"
    assert result.entry["concepts"] == ["water"] and result.entry["classes"] == "all"


def test_prune_for_one_class_only(hand_model):
    model, _ = hand_model
    edited = prune_concepts(model, ["red crown"], ["cardinal"]).model
    k = model.concepts.index("red crown")
    assert edited.weight[0, k] == 0 and torch.equal(edited.weight[1:], model.weight[1:])


def test_set_weight_and_replay(hand_model):
    model, _ = hand_model
    r1 = set_weight(model, "long tail", "gull", 7.0)
    r2 = prune_concepts(r1.model, ["water", "red crown"], ["jay"])
    assert r1.entry["old"] == 2.5 and r1.entry["new"] == 7.0
    replayed = replay(model, r2.model.edit_log)
    assert torch.equal(replayed.weight, r2.model.weight)


def test_edit_errors_name_the_problem(hand_model):
    model, _ = hand_model
    with pytest.raises(ConceptError, match="Unknown concept 'beak'"):
        prune_concepts(model, ["beak"])
    with pytest.raises(ConceptError, match="Unknown class 'crow'"):
        prune_concepts(model, ["water"], ["crow"])
    with pytest.raises(ConceptError, match="at least one"):
        prune_concepts(model, [])


def test_evaluate_and_compare_with_groups(hand_model):
    model, train = hand_model
    emb = train[:60]
    pred = model.predict(emb)
    labels = pred.clone()
    labels[:10] = (labels[:10] + 1) % 3  # 10 wrong, all in group "land"
    groups = ["land"] * 20 + ["water"] * 40
    m = evaluate(model, emb, labels, groups)
    assert m.accuracy == pytest.approx(50 / 60)
    assert m.per_group == {"land": pytest.approx(0.5), "water": 1.0} and m.worst_group == pytest.approx(0.5)
    after = prune_concepts(model, ["water"]).model
    frame = compare(model, after, emb, labels, groups)
    acc_row = frame[frame.metric == "accuracy"].iloc[0]
    assert acc_row.before == pytest.approx(m.accuracy)
    assert acc_row.after == pytest.approx(evaluate(after, emb, labels, groups).accuracy)
    assert "worst-group accuracy" in set(frame.metric)


def test_names_match_case_insensitively_and_typos_get_a_suggestion(hand_model):
    model, _ = hand_model
    result = prune_concepts(model, ["Water", "RED CROWN"], ["Cardinal"])
    assert result.entry["concepts"] == ["water", "red crown"] and result.entry["classes"] == ["cardinal"]
    with pytest.raises(ConceptError, match="Unknown concept 'watr'. Did you mean 'water'?"):
        prune_concepts(model, ["watr"])
    with pytest.raises(ConceptError, match="Unknown class 'gul'. Did you mean 'gull'?"):
        set_weight(model, "water", "gul", 1.0)
    with pytest.raises(ConceptError, match="finite"):
        set_weight(model, "water", "gull", float("nan"))


def test_an_edited_model_carries_metrics_of_its_own(hand_model):
    model, _ = hand_model
    model = model.with_changes(metrics={"val_accuracy": 0.9, "n_train": 200, "n_val": 50, **model.sparsity()})
    assert model.metrics["nec"] == pytest.approx(8 / 3) and model.metrics["concepts_used"] == 4
    first = prune_concepts(model, ["water"])
    assert first.model.metrics == {"n_train": 200, "n_val": 50, **first.model.sparsity()}
    assert first.model.metrics["nec"] == 2.0 and first.model.metrics["concepts_used"] == 3  # 'water' gone
    assert first.entry["metrics_before"] == {"val_accuracy": 0.9}  # measured on the old weights: kept, labelled
    second = set_weight(first.model, "striped wing", "jay", 0.0)
    assert second.model.metrics == {"n_train": 200, "n_val": 50, **second.model.sparsity()}
    assert "metrics_before" not in second.entry  # nothing stale left to move
    assert model.metrics["val_accuracy"] == 0.9  # the original is untouched


def test_a_malformed_edit_log_is_a_clear_error(hand_model):
    model, _ = hand_model
    with pytest.raises(ConceptError, match="entry 1 is malformed"):
        replay(model, [{"op": "prune"}])
    with pytest.raises(ConceptError, match="entry 2 is malformed"):
        replay(model, [{"op": "prune", "concepts": ["water"]}, {"op": "set_weight", "concept": "water",
                                                                  "class_name": "gull", "new": "lots"}])
