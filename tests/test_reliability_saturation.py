"""Scores that saturate and maps that show nothing, read right by every reliability signal.

A concept-supervised bundle's concepts are probabilities, and a concept it is sure of scores exactly 1.0 in
float32 (a quarter of the demo's training images on some concepts); a ReLU layer's inactive concepts score
exactly 0; a coarse Grad-CAM finds no positive evidence for some concepts and draws a blank map; an intervention
by hand can ask for a probability of 1.7. Planted on the shipped supervised demo bundle and its sample birds,
and on hand-made statistics."""
from __future__ import annotations

import pytest
import torch

from cbm_core import Pipeline
from cbm_core.core.model import ConceptStats
from cbm_core.demo.paths import SAMPLES_DIR, load_demo_features
from cbm_core.demo.shifted import SUPERVISED_BUNDLE
from cbm_core.explain import reliability as rel
from cbm_core.explain.atlas import concept_atlas
from cbm_core.explain.concept_metrics import Annotation, pointing_game
from test_reliability import bare


@pytest.fixture(scope="module")
def supervised():
    return Pipeline.from_bundle(SUPERVISED_BUNDLE, device="cpu")


def test_a_score_that_training_images_share_at_the_edge_is_not_outside_them(supervised):
    stats = supervised.model.stats
    edges = torch.stack([stats.quantiles[0], stats.quantiles[-1]])  # (2, K): the lowest and highest training scores
    assert bool((stats.quantiles[-1] == 1.0).any())  # saturated concepts: their top score is exactly 1.0
    assert not rel.extreme_concepts(stats, edges).any()
    assert rel.extreme_concepts(stats, edges + torch.tensor([[-1e-3], [1e-3]])).all()  # strictly past: outside


def test_a_tied_score_reads_at_the_middle_of_its_run_of_percentiles():
    g = torch.Generator().manual_seed(0)
    probability = torch.cat([torch.rand(300, generator=g) * 0.9, torch.ones(100)])  # a quarter at 1.0
    relu = torch.cat([torch.zeros(272), torch.rand(128, generator=g) + 0.1])  # 68 % inactive
    stats = ConceptStats.from_scores(("p", "relu"), torch.stack([probability, relu], 1))
    pct = stats.percentile_of(torch.tensor([[1.0, 0.0]]))[0]
    assert 85 < float(pct[0]) < 90  # the top quarter's middle, not p99.5
    assert 30 < float(pct[1]) < 37  # the inactive two thirds' middle, not its top end
    untied = stats.percentile_of(torch.tensor([[0.45, 0.6]]))[0]  # between distinct percentiles: interpolated
    assert 30 < float(untied[0]) < 45 and 75 < float(untied[1]) < 95  # 0.45: about 150 of 400; 0.6: about 336


def test_presence_of_a_probability_layer_without_labels_is_its_own_probability(supervised):
    model = bare(supervised.model)
    calibration = rel.presence_calibration(model)
    assert calibration.method == "model" and "predictors' own" in calibration.describe()
    scores = torch.tensor([[1e-5] * model.n_concepts, [0.3] * model.n_concepts, [1.0] * model.n_concepts])
    torch.testing.assert_close(calibration.predict(scores), scores)  # no mixture of bumps to misread 1e-5 as present
    again = rel.PresenceCalibration.from_json(calibration.to_json(), model.concepts.names)
    assert again.kind == calibration.kind


def test_a_saturated_concept_is_located_by_its_log_odds(supervised):
    """01's white breast is at p = 1.0: deleting its map's region leaves the probability at 1.0 (the old reading:
    no drop, "not on its evidence") but lowers the log-odds by most of an sd, against a rise elsewhere."""
    encoded = supervised.encode((SAMPLES_DIR / "01_azure_diver_on_water.png").read_bytes(), "01.png")
    k = supervised.model.concepts.index("white breast")
    assert float(supervised.model.concept_scores(encoded.embedding[None])[0, k]) == 1.0
    loc = rel.location_scores(supervised, encoded, ["white breast"])["white breast"]
    assert loc.verdict == rel.ON_EVIDENCE and loc.drop > 0.5 and loc.drop - loc.control_drop > 0.5


def test_a_blank_map_is_blank_and_points_nowhere(supervised):
    """Grad-CAM on the last 3 x 3 grid finds no positive evidence for red crown on 01: the map is 0 everywhere.
    It has no region to delete, and in the pointing game it is a miss even when the part covers the whole
    picture (a blank map's arg-max would be its corner pixel)."""
    data = (SAMPLES_DIR / "01_azure_diver_on_water.png").read_bytes()
    encoded = supervised.encode(data, "01.png")
    assert float(supervised.concept_maps(encoded, "gradcam", ["red crown"]).maps.abs().max()) == 0.0
    loc = rel.location_scores(supervised, encoded, ["red crown"], method="gradcam")["red crown"]
    assert loc.blank and loc.verdict == rel.BLANK and "blank" in loc.sentence()
    W, H = encoded.size
    everywhere = Annotation.from_coords((0, 0, W, H))
    game = pointing_game(supervised, [("01.png", data, {"red crown": everywhere, "black wing": everywhere})],
                         method="gradcam")
    by_concept = game.frame.set_index("concept")["hits"]
    assert by_concept["red crown"] == 0
    drawn = supervised.concept_maps(encoded, "gradcam", ["black wing"]).maps
    assert by_concept["black wing"] == int(float(drawn.max()) > float(drawn.min()))  # a drawn map hits the picture


def test_the_atlas_ranks_tied_probabilities_by_their_log_odds(supervised):
    val = load_demo_features("val")
    model = supervised.model
    k = model.concepts.index("forked tail")
    scores = model.concept_scores(val.embeddings)[:, k]
    assert int((scores == 1.0).sum()) > 100  # hundreds of validation birds tie at the top
    log_odds = model.concept_layer.for_maps().subset([k])(val.embeddings.float())[:, 0]
    atlas = concept_atlas(model, val.embeddings, "forked tail", n=4)
    assert [e.index for e in atlas.top] == log_odds.argsort(descending=True)[:4].tolist()
    assert [e.index for e in atlas.bottom] == log_odds.argsort()[:4].tolist()


def test_an_intervention_keeps_a_probability_a_probability(supervised):
    """Scaling or setting a concept by hand (an imported intervention, the CLI's --intervention) stays inside the
    values its layer can give: a probability in [0, 1], a cosine in [-1, 1]; the concepts it does not touch are
    left bit for bit."""
    from cbm_core import Intervention
    from cbm_core.demo.paths import DEMO_BUNDLE

    model = supervised.model
    emb = load_demo_features("val").embeddings[:50]
    wild = Intervention().scale("water background", 3.0).set("crest", value=1.7).set("red eye", value=-0.4)
    exp = model.explain_features(emb, wild)
    assert float(exp.scores.max()) <= 1.0 and float(exp.scores.min()) >= 0.0
    assert bool((exp.scores[:, model.concepts.index("crest")] == 1.0).all())
    assert bool((exp.scores[:, model.concepts.index("red eye")] == 0.0).all())
    untouched = [k for k, n in enumerate(model.concepts.names) if n not in wild.concepts]
    assert torch.equal(exp.scores[:, untouched], model.concept_scores(emb)[:, untouched])
    pcbm = Pipeline.from_bundle(DEMO_BUNDLE, device="cpu").model
    assert float(pcbm.explain_features(emb, Intervention().scale("red crown", 100.0)).scores.abs().max()) <= 1.0
