"""How far to believe an explanation (issue 13): planted cases for each signal, on the shipped demo model
and on tiny hand-built models whose answer is known. No mocks: the demo CLIP, the Toy Birds renderer
and the engine run for real."""
from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from PIL import Image

from cbm_core import CBMError, Pipeline, load_bundle, prune_concepts
from cbm_core.explain import reliability as rel
from cbm_core.explain.atlas import atlas_images, atlas_index, concept_atlas
from cbm_core.explain.audit import LEAKAGE_LIMIT, concept_audit, stored_audit, with_audit
from cbm_core.core.concept_layer import TextCosine
from cbm_core.core.concepts import ConceptBank
from cbm_core.demo.ood_proxies import proxy_images, sample_photos
from cbm_core.demo.paths import DEMO_BUNDLE, load_demo_features
from cbm_core.demo.reference_images import image_for
from cbm_core.demo.shifted import SUPERVISED_BUNDLE, load_shifted_features
from cbm_core.demo.world import CONCEPTS, render, sample_bird
from cbm_core.core.model import ConceptBottleneckModel, ConceptStats
from cbm_core.explain.paraphrase import name_stability, paraphrases, with_name_stability

LABEL_NAMES = list(CONCEPTS)
FITS = (rel.PRESENCE_KEY, rel.OOD_KEY, rel.NAMES_KEY, "concept_audit", "concept_pointing")


def bare(model: ConceptBottleneckModel) -> ConceptBottleneckModel:
    """The model without any stored reliability fit (the shipped bundles may carry them)."""
    return model.with_changes(metrics={k: v for k, v in model.metrics.items() if k not in FITS})


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def val():
    return load_demo_features("val")


@pytest.fixture(scope="module")
def test_split():
    return load_demo_features("test")


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.from_bundle(DEMO_BUNDLE, device="cpu")


@pytest.fixture(scope="module")
def fitted(pipe, val):
    """The PCBM demo model with a presence calibration (from the validation labels) and an OOD reference."""
    return rel.fit_reliability(bare(pipe.model), val, label_names=LABEL_NAMES, fitted_on="the Toy Birds validation split")


# -- where? a concept drawn in a known place ---------------------------------------------------------
def _bump(cy: float, cx: float, size: int = 96, sd: float = 8.0) -> torch.Tensor:
    y, x = torch.arange(size).float()[:, None], torch.arange(size).float()[None, :]
    return torch.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sd * sd))


@pytest.fixture(scope="module")
def drawn_wings(pipe):
    """Six test birds drawn twice, once with a solid red wing and once with a blue one: per bird and
    colour, the location score of 'red wing' for a map on the wing and for a map on the far background
    corner, and how much of the dense map of 'red wing' lies on the wing."""
    out = []
    for i in range(6):
        bird = sample_bird(0, i, "test")
        row = {}
        for colour in ("red", "blue"):
            drawn = dataclasses.replace(bird, attributes={**bird.attributes, "wing": colour, "pattern": "solid"})
            image, masks = render(drawn, 96)
            enc = pipe.encode(png(image), f"test bird {i}, {colour} wing")
            assert tuple(enc.pixels.shape[-2:]) == (96, 96)  # the maps below are on the model's input pixels
            wing = torch.tensor(masks["wing"])
            cy, cx = (float(v.float().mean()) for v in wing.nonzero().T)
            far = (8.0 if cy > 48 else 88.0, 8.0 if cx > 48 else 88.0)
            on = rel.location_scores(pipe, enc, ["red wing"], maps=_bump(cy, cx)[None])["red wing"]
            off = rel.location_scores(pipe, enc, ["red wing"], maps=_bump(*far)[None])["red wing"]
            dense = pipe.saliency(enc, "dense", ["red wing"])[0]
            row[colour] = {"on": on, "off": off, "inside": float(dense[wing].mean()), "outside": float(dense[~wing].mean())}
        out.append(row)
    return out


def test_a_map_on_the_drawn_concept_scores_higher_than_a_map_elsewhere(drawn_wings):
    on = [r["red"]["on"].specificity for r in drawn_wings]
    off = [r["red"]["off"].specificity for r in drawn_wings]
    assert sum(a > b for a, b in zip(on, off)) >= 5, (on, off)
    assert np.mean(on) - np.mean(off) > 0.5, (on, off)
    assert sum(r["red"]["on"].verdict == "on its evidence" for r in drawn_wings) >= 4
    assert all(r["red"]["off"].verdict != "on its evidence" for r in drawn_wings if r["red"]["off"].specificity < 0)


def test_the_same_place_scores_higher_when_the_concept_is_drawn_there(drawn_wings):
    # Deleting a red wing lowers 'red wing'; deleting a blue wing in the same place does not.
    for r in drawn_wings:
        assert r["red"]["on"].specificity > r["blue"]["on"].specificity
        assert r["blue"]["on"].verdict != "on its evidence"


def test_the_dense_map_of_a_drawn_concept_lies_on_it(drawn_wings):
    red = [r["red"]["inside"] > r["red"]["outside"] for r in drawn_wings]
    blue = [r["blue"]["inside"] > r["blue"]["outside"] for r in drawn_wings]
    assert sum(red) >= 5 and sum(red) > sum(blue), (red, blue)


def test_location_scores_read_the_maps_as_drawn(pipe):
    """The page hands over maps aligned to the picture at display size; taken back to the model's
    input they are the maps computed there (also for a picture the model saw padded or cropped)."""
    bird, _ = render(sample_bird(0, 3, "test"), 96)
    wide = Image.new("RGB", (150, 96), (90, 120, 90))
    wide.paste(bird, (27, 0))
    for picture in (bird, wide):
        enc = pipe.encode(png(picture), "bird")
        names = ["red wing", "water background"]
        direct = rel.input_maps(pipe, enc, names)  # the tower's default method, as the page draws them
        shown = pipe.saliency(enc, None, names, out_size=(picture.width * 2, picture.height * 2))
        back = rel.maps_on_input(shown, enc.size, pipe.backbone.resize_mode, tuple(enc.pixels.shape[-2:]))
        assert back.shape == direct.shape
        for k in range(len(names)):
            r = torch.corrcoef(torch.stack([back[k].flatten(), direct[k].flatten()]))[0, 1]
            assert r > 0.9, (picture.size, names[k], float(r))


def test_concentration_of_known_maps():
    even = torch.ones(1, 20, 20)
    spot = torch.zeros(1, 20, 20)
    spot[0, 3, 4] = 1.0
    c = rel.concentration(torch.cat([even, spot]))
    assert c[0] == pytest.approx(0.0) and c[1] == pytest.approx(1.0)


# -- is this image like the training data? --------------------------------------------------------------
def _foreign_images() -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    images = {"pixel noise": Image.fromarray(rng.integers(0, 256, (96, 96, 3)).astype(np.uint8)),
              "1 x 1 image": Image.new("RGB", (1, 1), (200, 30, 30)),
              "flat grey": Image.new("RGB", (64, 64), (128, 128, 128)),
              "clip-art shapes": proxy_images("shapes", 1, seed=3)[0]}
    photos = sample_photos()  # scikit-learn's two real photographs
    if photos:
        images["photo (china.jpg)"] = photos[0]
        images["photo crop"] = photos[1].crop((100, 50, 300, 250))
    return images


def test_images_far_from_the_training_data_are_not_typical(pipe, fitted):
    assert sample_photos(), "scikit-learn's sample photographs should be installed (requirements)"
    unfitted = bare(pipe.model)
    for name, image in _foreign_images().items():
        enc = pipe.encode(png(image), name)
        exp = pipe.with_model(fitted).explain_encoded([enc])
        r = rel.reliability(fitted, exp, 0, embedding=enc.embedding)
        assert r.ood.verdict != rel.TYPICAL and r.ood.method == "mahalanobis", (name, r.ood)
        assert r.ood.percentile >= 99 and "unlike the training data" in r.ood.sentence(), (name, r.ood)
        # Without a stored reference the count of concept scores outside every training score decides.
        fallback = rel.ood_check(unfitted, enc.embedding[None])[0]
        if name in ("pixel noise", "1 x 1 image"):
            assert fallback.method == "extreme percentiles" and fallback.verdict != rel.TYPICAL, (name, fallback)


def test_test_birds_are_mostly_typical_and_a_shifted_domain_is_not(fitted, test_split):
    verdicts = [r.verdict for r in rel.ood_check(fitted, test_split.embeddings)]
    typical = verdicts.count(rel.TYPICAL) / len(verdicts)
    assert 0.88 <= typical <= 0.99, typical  # the p95 line is drawn on held-out validation images
    shifted = load_shifted_features("test")
    shifted_typical = [r.verdict for r in rel.ood_check(fitted, shifted.embeddings)].count(rel.TYPICAL) / len(shifted.labels)
    assert shifted_typical < typical - 0.3, (shifted_typical, typical)


def test_the_ood_reference_percentiles_are_out_of_fold(val):
    """A reference fitted on images must not call them all typical by construction: what is typical is
    measured on images left out of each fit."""
    ref = rel.OODReference.fit(val.embeddings)
    pct = ref.percentile(ref.distance(val.embeddings))
    assert float((pct >= 95).float().mean()) < 0.05  # in-sample distances are smaller than out-of-fold ones
    with pytest.raises(ValueError, match="at least"):
        rel.OODReference.fit(val.embeddings[:5])


# -- is the concept there? -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def with_green_crown(pipe, val):
    """The PCBM demo model plus a concept that no Toy Bird ever has, 'green crown' (there is no green in
    the world), embedded by the demo text tower and weighted so that it pushes every class."""
    model = bare(pipe.model)
    names = list(model.concepts.names) + ["green crown"]
    vectors = torch.cat([model.concept_layer.vectors, pipe.backbone.embed_prompts(["green crown"], model.templates)])
    layer = TextCosine(vectors)
    stats = ConceptStats.from_scores(names, layer(val.embeddings))
    weight = torch.cat([model.weight, torch.full((len(model.classes), 1), 3.0)], 1)
    planted = model.with_changes(concepts=ConceptBank(names), concept_layer=layer, stats=stats, weight=weight)
    labels = torch.cat([val.concept_labels.float(), torch.zeros(len(val.labels), 1)], 1)  # never present
    return rel.fit_reliability(planted, dataclasses.replace(val, concept_labels=labels),
                               label_names=LABEL_NAMES + ["green crown"])


def test_a_concept_never_present_gets_a_low_probability_and_is_flagged(with_green_crown, test_split):
    model = with_green_crown
    k = model.concepts.index("green crown")
    exp = model.explain_features(test_split.embeddings[:200])
    p = rel.presence_calibration(model).predict(exp.scores)
    assert float(p[:, k].max()) < 0.01
    flagged = 0
    for i in range(200):
        r = rel.reliability(model, exp, i)
        top5 = r.to_frame(top=5)
        if "green crown" in set(top5.concept) and float(r.z[k]) > 0:
            assert "green crown" in r.probably_absent(5)
            assert top5.set_index("concept").loc["green crown", "flag"].startswith(rel.NOT_THERE)
            flagged += 1
        else:
            assert "green crown" not in r.probably_absent(5)
    assert flagged >= 50  # read as present in about half the images, and then among the top concepts
    # Concepts that are really there and read as present are believed.
    y = rel.labels_in_model_order(model, test_split.concept_labels[:200], LABEL_NAMES)
    there = (exp.z > 0) & (y == 1)
    assert float(p[there].mean()) > 0.8


@pytest.mark.parametrize("bundle", [DEMO_BUNDLE, SUPERVISED_BUNDLE], ids=["pcbm", "supervised"])
def test_calibration_from_labels_is_at_least_as_good_as_the_fallback(bundle, val, test_split):
    """Without labels, PCBM's presence is a mixture over its training scores (a rough guess, which Platt scaling
    on labelled validation birds beats) and the supervised bundle's is its predictors' own probability (which
    its recipe already calibrated on validation labels: as good as Platt's)."""
    model = bare(load_bundle(bundle))
    y_val = rel.labels_in_model_order(model, val.concept_labels, LABEL_NAMES)
    y_test = rel.labels_in_model_order(model, test_split.concept_labels, LABEL_NAMES)
    labelled = rel.PresenceCalibration.fit(model, model.concept_scores(val.embeddings), y_val)
    fallback = rel.PresenceCalibration.fit(model)
    assert labelled.method == "labels" and fallback.method == ("mixture" if bundle == DEMO_BUNDLE else "model")
    s = model.concept_scores(test_split.embeddings)
    ece_lab = rel.expected_calibration_error(labelled.predict(s), y_test)
    ece_fallback = rel.expected_calibration_error(fallback.predict(s), y_test)
    assert ece_lab < 0.03 and labelled.ece is not None, (ece_lab, ece_fallback)
    if bundle == DEMO_BUNDLE:
        assert ece_lab <= ece_fallback and labelled.ece < labelled.ece_mixture, (ece_lab, ece_fallback)
    else:
        assert ece_fallback < 0.03 and labelled.ece_mixture < 0.03, (ece_lab, ece_fallback)
    assert all(a is not None and a > 0.8 for a in labelled.auroc)
    assert "calibrated on 1600 labelled images" in labelled.describe()
    assert ("rough guess" if bundle == DEMO_BUNDLE else "predictors' own") in fallback.describe()


# -- the atlas ------------------------------------------------------------------------------------------
def _tiny_model(train: torch.Tensor) -> ConceptBottleneckModel:
    names = ("red crown", "striped wing", "long tail")
    layer = TextCosine(torch.eye(4)[:3])  # concept k reads embedding axis k
    return ConceptBottleneckModel(backbone_spec="tiny-vit:random", concepts=ConceptBank(names), concept_layer=layer,
                                  classes=("a", "b"), stats=ConceptStats.from_scores(names, layer(train)),
                                  weight=torch.ones(2, 3), bias=torch.zeros(2))


def test_the_atlas_returns_the_known_top_and_bottom_images():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(40, 4, generator=g)
    emb[:, 1] = emb[:, 1].clamp(-0.5, 0.5)  # nobody is far along 'striped wing'...
    e = torch.eye(4)
    emb[17], emb[3], emb[25] = 3 * e[1], 2 * e[1] + 0.1 * e[0], 1.5 * e[1]  # ...but these three, in this order
    emb[8], emb[30] = -4 * e[1], -2 * e[1] + e[2]  # and these two the other way
    model = _tiny_model(emb)
    atlas = concept_atlas(model, emb, "striped wing", n=3)
    assert [a.index for a in atlas.top] == [17, 3, 25]
    assert [a.index for a in atlas.bottom[:2]] == [8, 30]
    assert atlas.top[0].score == pytest.approx(3.0) and atlas.top[0].percentile == pytest.approx(100.0)
    assert atlas.bottom[0].percentile == pytest.approx(0.0) and atlas.n_images == 40
    every = atlas_index(model, emb, n=3)
    assert every["striped wing"] == atlas and set(every) == set(model.concepts.names)
    assert len(concept_atlas(model, emb[:2], "red crown", n=10).top) == 2  # never more than there are
    frame = atlas.to_frame()
    assert list(frame.end) == ["top"] * 3 + ["bottom"] * 3 and list(frame["index"][:3]) == [17, 3, 25]


def test_the_atlas_draws_its_reference_birds_with_maps(pipe, val):
    atlas = concept_atlas(pipe.model, val.embeddings, "red crown", n=1)
    top, bottom = atlas_images(pipe, atlas, image_for("val"), max_side=64)
    assert len(top) == len(bottom) == 1
    best = top[0]
    assert best.entry == atlas.top[0] and best.name.startswith(f"val bird {atlas.top[0].index}:")
    assert best.map.shape == (best.image.height, best.image.width) and max(best.image.size) <= 64
    # The re-rendered bird is the one whose features were ranked: its score is the ranked score.
    enc = pipe.encode(image_for("val")(atlas.top[0].index)[1])
    assert float(pipe.model.concept_scores(enc.embedding[None])[0, 0]) == pytest.approx(atlas.top[0].score, abs=2e-3)
    assert sample_bird(0, atlas.top[0].index, "val").attributes["crown"] == "red"


# -- the bypass and leakage audit ---------------------------------------------------------------------------
def test_the_audit_sees_pcbm_fall_to_chance_with_every_concept_absent(fitted, val, test_split):
    y = rel.labels_in_model_order(fitted, test_split.concept_labels, LABEL_NAMES)
    audit = concept_audit(fitted, val, test_split, test_concept_labels=y, controls=False)
    assert audit.accuracy > 0.85 and audit.chance == pytest.approx(0.125)
    assert audit.absent_accuracy <= audit.chance + 0.02
    assert audit.residual_share == 0 and audit.uses_concepts
    # what leaks through the scores' strength stays within the audit's own limit, so its leakage check passes
    assert audit.accuracy - audit.presence_accuracy <= LEAKAGE_LIMIT and dict(c[:2] for c in audit.checks())["leakage"]
    assert audit.label_auroc > 0.95 and audit.shuffled_label_auroc < 0.6
    assert audit.named_at_nec is None and [c[0] for c in audit.checks()] == ["bypass", "leakage", "names match labels"]


def test_the_audit_detects_a_planted_bypass(fitted, val, test_split):
    """A residual head (PCBM-h) fitted on the embeddings carries the class around the concepts."""
    onehot = torch.nn.functional.one_hot(torch.as_tensor(val.labels), len(fitted.classes)).float()
    X = val.embeddings.float()
    residual = torch.linalg.solve(X.T @ X + 1e-2 * torch.eye(X.shape[1]), X.T @ (onehot - onehot.mean(0))).T * 5
    leaky = fitted.with_changes(residual_weight=residual)
    audit = concept_audit(leaky, val, test_split, controls=False)
    assert audit.absent_accuracy > audit.chance + 0.3
    assert audit.residual_share > 0.1 and not audit.uses_concepts and not audit.passed
    bypass = dict((n, ok) for n, ok, _ in audit.checks())
    assert bypass["bypass"] is False and "a bypass" in audit.checks()[0][2]


def test_the_audit_controls_run_at_matched_nec(fitted, val, test_split, pipe):
    audit = concept_audit(fitted, _head(val, 600), _head(test_split, 600), backbone=pipe.backbone)
    for key in ("named", "random", "shuffled"):
        assert audit.matched_necs[key] is not None and 0 < audit.matched_necs[key] <= audit.nec + 1e-6
    for v in (audit.named_at_nec, audit.random_at_nec, audit.shuffled_at_nec):
        assert v is not None and 0 <= v <= 1
    assert {"random directions", "shuffled names"} <= {n for n, _, _ in audit.name_checks()}
    again = stored_audit(with_audit(fitted, audit))
    assert again == rel_round(audit)


def _head(features, n: int):
    return features.subset(torch.arange(n))


def rel_round(audit):
    """What survives storage (six significant digits)."""
    from cbm_core.explain.audit import ConceptAudit

    return ConceptAudit.from_json(audit.to_json())


# -- are the names robust? ---------------------------------------------------------------------------------------
def test_paraphrases_say_the_name_otherwise():
    out = paraphrases("red crown", ("a bird with {}.",))
    assert out[0] == "red crown" and "a bird with red crown" in out and "the crown is red." in out
    assert "a bird with red crown." not in out and len(set(out)) == len(out)
    assert "the legs are long." in paraphrases("long legs")


def test_paraphrase_stability_flags_a_concept_whose_paraphrases_disagree(pipe, val):
    """'red wing' here is secretly the prompt of 'blue crown': its paraphrases (of 'red wing') disagree
    with its scores. 'water background' is what it says."""
    model = bare(pipe.model)
    names = ["water background", "red wing"]
    layer = TextCosine(pipe.backbone.embed_prompts(["water background", "blue crown"], model.templates))
    planted = model.with_changes(concepts=ConceptBank(names), concept_layer=layer,
                                 stats=ConceptStats.from_scores(names, layer(val.embeddings)),
                                 weight=torch.ones(len(model.classes), 2))
    stability = name_stability(planted, pipe.backbone, val.embeddings)
    assert stability.fragile == (False, True), stability
    assert stability.min_agreement[0] > 0.95 and stability.min_agreement[1] < 0.75
    # Stored, it reaches every explanation's flags.
    stored = with_name_stability(rel.fit_reliability(planted, val), stability)
    exp = stored.explain_features(val.embeddings[:1])
    r = rel.reliability(stored, exp, 0)
    assert r.fragile == (False, True) and "fragile name" in r.flag(1) and "fragile name" not in r.flag(0)


def test_paraphrases_refuse_a_learned_concept_layer(val):
    with pytest.raises(CBMError, match="learned directions"):
        name_stability(load_bundle(SUPERVISED_BUNDLE), None, val.embeddings)


# -- fits travel in the bundle -------------------------------------------------------------------------------
def test_fits_survive_a_bundle_round_trip_and_are_ignored_for_another_concept_list(fitted, pipe, val, tmp_path):
    stability = name_stability(fitted, pipe.backbone, val.embeddings[:400])
    model = with_name_stability(fitted, stability)
    model = with_audit(model, concept_audit(model, _head(val, 400), _head(val, 400), controls=False))
    loaded = load_bundle(model.save(tmp_path / "bundle"))
    scores = model.concept_scores(val.embeddings[:50])
    before, after = rel.presence_calibration(model), rel.presence_calibration(loaded)
    assert after.method == "labels" and after.n_labelled == before.n_labelled
    assert torch.allclose(before.predict(scores), after.predict(scores), atol=1e-4)
    ref0, ref1 = rel.ood_reference(model), rel.ood_reference(loaded)
    assert ref1 is not None and torch.allclose(ref0.distance(val.embeddings[:50]), ref1.distance(val.embeddings[:50]),
                                               rtol=1e-3)
    assert rel.name_stability(loaded) == rel.name_stability(model) and rel.name_stability(loaded)[0][0] is not None
    assert stored_audit(loaded) == stored_audit(model)
    # The same stored fits on a model with another concept list (renamed) are not used for it.
    renamed = loaded.with_changes(concepts=ConceptBank(["x " + n for n in loaded.concepts.names]),
                                  stats=dataclasses.replace(loaded.stats, names=tuple("x " + n for n in loaded.concepts.names)))
    assert renamed.metrics[rel.PRESENCE_KEY]["concepts_sha1"] != rel.concepts_digest(renamed.concepts.names)
    assert rel.presence_calibration(renamed).method == "mixture"
    assert rel.name_stability(renamed) == ((None,) * renamed.n_concepts, (None,) * renamed.n_concepts)
    # A head edit keeps the concept-layer fits (kept in the edit log) and drops the audit (about the head).
    edited = prune_concepts(loaded, ["water background"]).model
    assert rel.presence_calibration(edited).method == "labels" and rel.ood_reference(edited) is not None
    assert stored_audit(edited) is None


def test_a_malformed_stored_fit_falls_back(fitted):
    broken = dict(fitted.metrics[rel.PRESENCE_KEY], slope=[float("nan")] * fitted.n_concepts)
    model = fitted.with_changes(metrics={**fitted.metrics, rel.PRESENCE_KEY: broken,
                                         rel.OOD_KEY: {"method": "mahalanobis", "components": "x"}})
    assert rel.presence_calibration(model).method == "mixture"
    assert rel.ood_reference(model) is None
    assert rel.ood_check(model, torch.nn.functional.normalize(torch.randn(1, 64), dim=1))[0].method == "extreme percentiles"


def test_a_stored_pointing_game_travels_with_the_model_and_only_for_its_concepts(fitted, tmp_path):
    import pandas as pd

    from cbm_core.explain.concept_metrics import PointingResult, stored_pointing, with_pointing

    frame = pd.DataFrame([{"concept": "red wing", "n": 10, "hits": 4, "pointing_game": 0.4, "chance": 0.027},
                          {"concept": "red crown", "n": 5, "hits": 0, "pointing_game": 0.0, "chance": 0.007}])
    model = with_pointing(fitted, PointingResult(frame, (), ()), "dense", "15 Toy Birds test birds")
    loaded = stored_pointing(load_bundle(model.save(tmp_path / "b")))
    assert loaded.method == "dense" and loaded.measured_on == "15 Toy Birds test birds"
    assert loaded.frame.set_index("concept").pointing_game.to_dict() == {"red crown": 0.0, "red wing": 0.4}
    assert loaded.elsewhere() == ["red crown", "red wing"]
    assert stored_pointing(prune_concepts(model, ["red wing"]).model) is not None  # maps: the concept layer's
    renamed = model.with_changes(concepts=ConceptBank(["x " + n for n in model.concepts.names]))
    assert stored_pointing(renamed) is None
    bad = dict(model.metrics["concept_pointing"], concepts=[{"concept": "red wing", "n": 3, "hits": 9, "chance": 0.1}])
    assert stored_pointing(model.with_changes(metrics={**model.metrics, "concept_pointing": bad})) is None
