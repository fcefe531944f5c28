"""HeadSlice: the few numbers the browser recomputes a prediction from must give the engine's answer."""
import json
import random

import pytest
import torch

from cbm_core import HeadSlice, Intervention
from conftest import make_model


@pytest.mark.parametrize("residual", [False, True])
def test_slice_logits_equal_the_model_under_the_same_settings(residual):
    model, train = make_model(residual=residual)
    emb = train[7]
    rng = random.Random(0)
    already = Intervention().scale("long tail", 2.0).set("water", percentile=80)  # e.g. an imported one
    for trial in range(40):
        shown = rng.sample(model.concepts.names, rng.randint(1, 4))
        head = HeadSlice.from_model(model, emb, shown, already if trial % 2 else None)
        settings = {}
        for name in rng.sample(shown, rng.randint(0, len(shown))):
            settings[name] = rng.choice([{"off": True}, {}, {"percentile": rng.uniform(0, 100)},
                                         {"percentile": rng.randint(0, 100)}])
        expected = model.explain_features(emb[None], head.intervention_with(settings))
        assert torch.allclose(head.logits(settings), expected.logits[0], atol=1e-5)
        assert torch.allclose(head.probs(settings), expected.probs[0], atol=1e-6)


def test_slice_without_settings_is_the_current_prediction_and_the_original_is_kept():
    model, train = make_model()
    iv = Intervention().ablate("water")
    head = HeadSlice.from_model(model, train[3], ["water", "red crown"], iv)
    now, original = model.explain_features(train[3:4], iv), model.explain_features(train[3:4])
    assert torch.allclose(head.probs(), now.probs[0], atol=1e-6)
    assert torch.allclose(head.original_probs, original.probs[0])
    assert float(head.z[0]) == pytest.approx(0.0, abs=1e-6)  # off = the training mean
    restored = head.intervention_with({"water": {}})
    assert not restored
    assert torch.allclose(head.probs({"water": {}}), original.probs[0], atol=1e-6)


def test_percentile_grid_matches_the_training_stats():
    model, train = make_model()
    head = HeadSlice.from_model(model, train[0], ["long tail"])
    for p in (0, 3.25, 50, 99.5, 100):
        want = model.standardize(model.stats.values_at(p))[model.concepts.index("long tail")]
        assert head.z_at(0, p) == pytest.approx(float(want), abs=1e-5)


def test_to_dict_is_plain_json_with_the_shapes_the_browser_reads():
    model, train = make_model()
    head = HeadSlice.from_model(model, train[0], ["water", "long tail"], Intervention().ablate("water"))
    data = json.loads(json.dumps(head.to_dict()))
    assert data["off"] == [True, False] and data["changed"] == [True, False]
    assert len(data["weight"]) == 3 and len(data["weight"][0]) == 2 and len(data["z_grid"][0]) == 101
    assert len(data["base"]) == len(data["original_probs"]) == 3


def test_unknown_concept_is_refused():
    model, train = make_model()
    with pytest.raises(Exception, match="Unknown concept"):
        HeadSlice.from_model(model, train[0], ["purple feet"])
