import pytest
import torch

from cbm_core.explain.counterfactual import counterfactual
from cbm_core.errors import InterventionError
from cbm_core.core.interventions import Intervention
from conftest import make_model


@pytest.mark.parametrize("residual", [False, True])
def test_contributions_plus_bias_plus_residual_equal_the_logit(residual):
    model, train = make_model(residual)
    exp = model.explain_features(train[:7])
    total = exp.contributions().sum(-1) + exp.bias + (exp.residual if residual else 0)
    torch.testing.assert_close(total, exp.logits)
    torch.testing.assert_close(exp.probs.sum(-1), torch.ones(7))
    assert (exp.residual_share() > 0).all() == residual


def test_ablating_a_concept_moves_each_logit_by_exactly_its_contribution(hand_model):
    model, train = hand_model, hand_model[1]
    model, train = hand_model
    emb = train[:5]
    before = model.explain_features(emb)
    after = model.explain_features(emb, Intervention().ablate("long tail"))
    k = model.concepts.index("long tail")
    torch.testing.assert_close(before.logits - after.logits, before.contributions()[:, :, k])


def test_scale_and_set_by_hand(hand_model):
    model, train = hand_model
    emb = train[:1]
    k = model.concepts.index("water")
    s = model.concept_scores(emb)[0, k]
    mean, std = model.stats.mean[k], model.stats.std[k]
    scaled = model.explain_features(emb, Intervention().scale("water", 2.0))
    # scaling the deviation by 2 doubles z, so the logit moves by one more contribution
    z = (s - mean) / std
    torch.testing.assert_close(scaled.logits[0] - model.explain_features(emb).logits[0], model.weight[:, k] * z)
    set_p95 = model.explain_features(emb, Intervention().set("water", percentile=95))
    assert abs(float(set_p95.percentiles[0, k]) - 95.0) < 1e-3
    set_v = model.explain_features(emb, Intervention().set("water", 0.5))
    assert float(set_v.scores[0, k]) == pytest.approx(0.5)


def test_clamp_and_ablate_to_percentile(hand_model):
    model, train = hand_model
    k = model.concepts.index("red crown")
    scores = model.concept_scores(train)
    clamped = Intervention().clamp("red crown", low=10, high=90).apply(scores, model.stats)
    assert clamped[:, k].min() >= model.stats.value_at(k, 10) - 1e-6
    assert clamped[:, k].max() <= model.stats.value_at(k, 90) + 1e-6
    off = Intervention().ablate("red crown", percentile=5).apply(scores, model.stats)
    assert torch.allclose(off[:, k], torch.full((len(train),), model.stats.value_at(k, 5)))


def test_apply_is_pure_and_works_on_one_image_and_a_batch(hand_model):
    model, train = hand_model
    scores = model.concept_scores(train[:3])
    keep = scores.clone()
    iv = Intervention().ablate("water").scale("long tail", 0.5)
    batch = iv.apply(scores, model.stats)
    one = iv.apply(scores[1], model.stats)
    assert torch.equal(scores, keep)
    torch.testing.assert_close(one, batch[1])


def test_interventions_compose_and_round_trip_through_json(hand_model):
    a = Intervention().set("water", percentile=5).scale("long tail", 1.5)
    b = Intervention().clamp("red crown", high=80).ablate("striped wing", percentile=10)
    both = a.then(b)
    assert len(both) == 4 and a == Intervention.from_json(a.to_json())
    assert Intervention.from_json(both.to_json()) == both
    assert both.without("water").concepts == ("long tail", "red crown", "striped wing")
    model, train = hand_model
    s = model.concept_scores(train[:4])
    torch.testing.assert_close(both.apply(s, model.stats), b.apply(a.apply(s, model.stats), model.stats))


@pytest.mark.parametrize("bad, message", [
    ('{"format": "other"}', "not an intervention"),
    ('{"format": "cbm-intervention", "version": 9, "changes": []}', "version 9"),
    ('{"format": "cbm-intervention", "version": 1, "changes": [{"op": "melt", "concept": "x"}]}', "Unknown intervention op"),
    ('{"format": "cbm-intervention", "version": 1, "changes": [{"op": "set", "concept": "x", "percentile": 140}]}', "not a percentile"),
    ("not json", "not valid JSON"),
    ('{"format": "cbm-intervention", "version": 1, "changes": 5}', "must be a list of objects"),
    ('{"format": "cbm-intervention", "version": 1, "changes": [{"op": "scale", "concept": 3, "factor": 2}]}', "must be a name"),
    ('{"format": "cbm-intervention", "version": 1, "changes": [{"op": "scale", "concept": "x", "factor": "2"}]}', "finite number"),
    ('{"format": "cbm-intervention", "version": 1, "changes": [{"op": "set", "concept": "x", "value": NaN}]}', "finite number"),
    ('{"format": "cbm-intervention", "version": 1, "changes": [{"op": "clamp", "concept": "x", "low": 90, "high": 10}]}',
     "above high"),
])
def test_bad_intervention_files(bad, message):
    with pytest.raises(InterventionError, match=message):
        Intervention.from_json(bad)


def test_unknown_concept_in_intervention(hand_model):
    model, train = hand_model
    with pytest.raises(Exception, match="Unknown concept 'beak'"):
        Intervention().ablate("beak").apply(model.concept_scores(train[:1]), model.stats)


def test_percentiles_invert_value_at(hand_model):
    model, train = hand_model
    for k in range(model.n_concepts):
        for p in (5.0, 37.5, 50.0, 95.0):
            v = model.stats.value_at(k, p)
            scores = torch.zeros(1, model.n_concepts)
            scores[0, k] = v
            assert float(model.stats.percentile_of(scores)[0, k]) == pytest.approx(p, abs=1e-3)


def test_counterfactual_really_flips_the_class(hand_model):
    model, train = hand_model
    flipped = 0
    for i in range(20):
        emb = train[i]
        pred = int(model.predict(emb[None])[0])
        for t in range(3):
            if t == pred:
                continue
            cf = counterfactual(model, emb, t)
            if cf.success:
                flipped += 1
                exp = model.explain_features(emb[None], cf.intervention)
                assert int(exp.predicted[0]) == t
                assert len(cf.changes) == len(cf.intervention)
                for name, _, new, pct in cf.changes:
                    assert pct in (5.0, 95.0)  # stays within the observed 5th-95th range
                    k = model.concepts.index(name)
                    assert model.stats.value_at(k, 5) - 1e-5 <= new <= model.stats.value_at(k, 95) + 1e-5
    assert flipped >= 20


def test_counterfactual_single_change_is_minimal(hand_model):
    """When one change suffices, the search returns one change."""
    model, train = hand_model
    for i in range(20):
        emb = train[i]
        pred = int(model.predict(emb[None])[0])
        for t in range(3):
            if t == pred:
                continue
            one_works = any(
                int(model.explain_features(emb[None], Intervention().set(name, percentile=p)).predicted[0]) == t
                for name in model.concepts.names for p in (5, 95))
            if one_works:
                assert len(counterfactual(model, emb, t).changes) == 1


def test_explanation_tables(hand_model):
    model, train = hand_model
    exp = model.explain_features(train[:2])
    frame = exp.to_frame(1, class_index=2)
    assert frame.attrs["class"] == "gull" and len(frame) == 4
    assert frame.contribution.abs().is_monotonic_decreasing
    torch.testing.assert_close(torch.tensor(frame.contribution.sum()), (exp.logits[1, 2] - exp.bias[2]).double(),
                               check_dtype=False)
    assert list(exp.classes_frame(0, 2).columns) == ["class", "probability", "logit"]


def test_wrong_shaped_embeddings_are_named(hand_model):
    model, _ = hand_model
    with pytest.raises(ValueError, match=r"\(N, 6\)"):
        model.explain_features(torch.randn(2, 5))
