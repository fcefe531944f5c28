"""Test-time intervention: answers as set-to-percentile changes, the policies on hand-built cases, the
questions, and intervention curves."""
import pytest
import torch

from cbm_core import HeadSlice, Intervention
from cbm_core.core.concept_layer import LinearProjection
from cbm_core.core.concepts import ConceptBank
from cbm_core.core.model import ConceptBottleneckModel, ConceptStats
from cbm_core.explain.tti import (TTIError, answer_percentiles, answer_values, answers_intervention, apply_answer,
                                  intervention_curve, next_question, policy_scores)

NAMES = ("red crown", "long beak", "striped wing", "water")


def prob_model(head=None, scale=4.0, seed=0):
    """A concept-supervised CBM whose concept k is sigmoid(scale * e_k): embedding coordinate k is the
    concept's log-odds / scale. Training probabilities spread over (0, 1) so percentiles mean something."""
    K = len(NAMES)
    layer = LinearProjection(torch.eye(K) * scale, torch.zeros(K), "sigmoid")
    g = torch.Generator().manual_seed(seed)
    train = torch.randn(500, K, generator=g)
    stats = ConceptStats.from_scores(NAMES, layer(train))
    weight = head if head is not None else torch.tensor([[3.0, 0.0, 1.0, 0.5], [-1.0, 2.0, 0.0, -0.5]])
    return ConceptBottleneckModel(backbone_spec="toy", concepts=ConceptBank(NAMES), concept_layer=layer,
                                  classes=("cardinal", "heron"), stats=stats, weight=weight,
                                  bias=torch.zeros(weight.shape[0]), recipe={"name": "supervised"})


def embedding_for(probs, scale=4.0):
    return torch.logit(torch.tensor(probs)) / scale


def test_answers_are_set_to_percentile_changes_that_head_slice_reproduces():
    model = prob_model()
    emb = embedding_for([0.2, 0.9, 0.6, 0.5])
    iv = apply_answer(model, Intervention(), "red crown", "present")
    assert iv.changes[0].op == "set" and iv.changes[0].percentile == 95.0
    iv = apply_answer(model, iv, "long beak", "absent")
    assert [c.percentile for c in iv.changes] == [95.0, 5.0]
    assert apply_answer(model, iv, "red crown", "unsure").concepts == ("long beak",), "unsure undoes an answer"
    exp = model.explain_features(emb[None], iv)
    assert float(exp.scores[0, 0]) == pytest.approx(model.stats.value_at(0, 95.0))
    hs = HeadSlice.from_model(model, emb, list(NAMES))
    settings = {"red crown": {"percentile": 95.0}, "long beak": {"percentile": 5.0}}
    torch.testing.assert_close(hs.probs(settings), exp.probs[0])
    with pytest.raises(TTIError, match="present, absent, unsure"):
        apply_answer(model, iv, "red crown", "maybe")


def test_a_rare_concept_present_means_a_probability_above_one_half():
    model = prob_model()
    # make 'water' rare: its training probabilities all below 0.4 except the top 2 %
    q = model.stats.quantiles.clone()
    q[:, 3] = torch.linspace(0.0, 0.4, 101)
    q[98:, 3] = torch.tensor([0.6, 0.8, 0.95])
    stats = ConceptStats(model.stats.names, model.stats.mean, model.stats.std, q)
    hi, lo = answer_percentiles(model.with_changes(stats=stats))
    assert float(hi[3]) == 98.0 and float(hi[0]) == 95.0 and float(lo[3]) == 5.0


def test_a_concept_no_training_probability_makes_present_is_set_to_one_by_present():
    """No training image's probability reaches 0.5 (an unlearnable, very rare concept): no percentile reads as
    "present", so the answer sets the probability itself, 1; "absent" of a near-universal concept sets 0."""
    model = prob_model()
    q = model.stats.quantiles.clone()
    q[:, 3] = torch.linspace(0.0, 0.4, 101)  # never above 0.4
    q[:, 2] = torch.linspace(0.6, 1.0, 101)  # never below 0.6
    model = model.with_changes(stats=ConceptStats(model.stats.names, model.stats.mean, model.stats.std, q))
    emb = embedding_for([0.02, 0.97, 0.51, 0.2])
    name3, name2 = model.concepts.names[3], model.concepts.names[2]
    iv = apply_answer(model, Intervention(), name3, "present")
    iv = apply_answer(model, iv, name2, "absent")
    scores = model.explain_features(emb[None], iv).scores[0]
    assert float(scores[3]) == 1.0 and float(scores[2]) == 0.0
    hi, lo = answer_values(model)
    assert float(hi[3]) == 1.0 and float(lo[2]) == 0.0 and float(hi[0]) == float(model.stats.value_at(0, 95.0))


def test_uncertainty_picks_the_one_uncertain_concept():
    model = prob_model()
    emb = embedding_for([0.02, 0.97, 0.51, 0.99])
    q = next_question(model, emb, None, [], "uncertainty")
    assert q.concept == "striped wing" and q.probability == pytest.approx(0.51, abs=1e-4)
    assert q.belief == "present" and "striped wing" in q.prompt() and "0.51" in q.prompt()
    coop_entropy_only = next_question(model, emb, None, [], "coop", coop=(1.0, 0.0))
    assert coop_entropy_only.concept == "striped wing"
    # once answered, the next most uncertain one (|0.97 - 0.5| < |0.02 - 0.5|)
    assert next_question(model, emb, None, ["striped wing"], "uncertainty").concept == "long beak"


def test_expected_change_picks_the_answer_that_moves_the_prediction_most():
    # two equally uncertain concepts; only one has weight in the head
    head = torch.tensor([[4.0, 0.0, 0.0, 0.0], [-4.0, 0.0, 0.0, 0.0]])
    model = prob_model(head)
    emb = embedding_for([0.5, 0.5, 0.9, 0.1])
    scores = model.concept_scores(emb[None])
    s = policy_scores(model, scores, torch.zeros(1, 4, dtype=torch.bool), "expected_change")
    assert int(s.argmax()) == 0 and float(s[0, 1]) == pytest.approx(0.0, abs=1e-6)
    # by hand: KL(q_answer || q) for both answers, weighted by p = 0.5
    logits = model.head(scores)[0]
    q = logits.softmax(-1)
    z = model.standardize(scores)[0, 0]
    kls = []
    for pct in (95.0, 5.0):
        qa = (logits + head[:, 0] * ((model.stats.value_at(0, pct) - model.stats.mean[0]) / model.stats.std[0] - z)).softmax(-1)
        kls.append(float((qa * (qa / q).log()).sum()))
    assert float(s[0, 0]) == pytest.approx(0.5 * kls[0] + 0.5 * kls[1], rel=1e-4)


def test_questions_skip_concepts_the_head_ignores_until_the_end():
    head = torch.tensor([[3.0, 0.0, 1.0, 0.5], [-1.0, 0.0, 0.0, -0.5]])
    model = prob_model(head)
    emb = embedding_for([0.9, 0.5, 0.8, 0.2])  # 'long beak' is the most uncertain but unused
    assert next_question(model, emb, None, [], "uncertainty").concept != "long beak"
    assert next_question(model, emb, None, ["red crown", "striped wing", "water"], "uncertainty").concept == "long beak"
    assert next_question(model, emb, None, list(NAMES), "uncertainty") is None


def test_policies_need_concept_probabilities(hand_model):
    model, _ = hand_model  # a PCBM-like model: cosine scores, not probabilities
    with pytest.raises(TTIError, match="concept-supervised bundle"):
        next_question(model, torch.zeros(6), None, [], "coop")
    with pytest.raises(TTIError, match="Unknown policy"):
        next_question(prob_model(), torch.zeros(4), None, [], "oracle")


def test_answers_intervention_changes_the_prediction_as_the_expert_says():
    model = prob_model()
    emb = embedding_for([0.3, 0.6, 0.5, 0.5])  # leans heron
    out = answers_intervention(model, emb, {"red crown": "present", "long beak": "absent"})
    assert int(out.probs_before.argmax()) == 1 and int(out.probs_after.argmax()) == 0
    torch.testing.assert_close(out.probs_after, model.explain_features(emb[None], out.intervention).probs[0])
    assert out.moved == ()  # no dependencies given: nothing else moves


def test_intervention_curve_with_ground_truth_reaches_the_true_concepts_accuracy():
    model = prob_model()
    g = torch.Generator().manual_seed(3)
    truth = (torch.rand(300, 4, generator=g) < 0.5).float()
    # the image's evidence is noisy: predicted probabilities far from the truth for many concepts
    logit = (2 * truth - 1) * 0.8 + 1.5 * torch.randn(300, 4, generator=g)
    emb = logit / 4.0
    perfect = model.explain_features(emb, None, scores=torch.where(truth == 1, model.stats.values_at(95.0),
                                                                   model.stats.values_at(5.0)))
    labels = perfect.predicted  # classes the head gives the true concepts
    for policy in ("random", "uncertainty", "expected_change", "coop"):
        curve = intervention_curve(model, emb, labels, truth, policy)
        assert len(curve.accuracy) == 5 and curve.accuracy[-1] == pytest.approx(1.0)
        assert curve.accuracy[0] < 0.9
    smart = intervention_curve(model, emb, labels, truth, "expected_change", max_answers=1).accuracy[1]
    rand = intervention_curve(model, emb, labels, truth, "random", max_answers=1).accuracy[1]
    assert smart > rand
    with pytest.raises(TTIError, match="concept order"):
        intervention_curve(model, emb, labels, truth[:, :3], "random")
