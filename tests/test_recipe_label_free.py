"""Label-free CBM: the cos³ loss against its formula, each concept filter on a planted concept,
early stopping, the fitted model through a bundle, and build_cbm end to end."""
import math

import pytest
import torch
import torch.nn.functional as F

from cbm_core import load_bundle, save_bundle
from cbm_core.core.concepts import ConceptBank
from cbm_core.errors import RecipeError
from cbm_core.recipes import RecipeInputs, get_recipe
from cbm_core.recipes.label_free import (LabelFreeCBM, cos_cubed_loss, cos_cubed_similarity, top5_activation,
                                         train_projection)


def by_hand(t, a):
    """The paper's similarity for one column, in plain Python: centre, cube, normalise, dot."""
    mt, ma = sum(t) / len(t), sum(a) / len(a)
    ct = [(x - mt) ** 3 for x in t]
    ca = [(x - ma) ** 3 for x in a]
    nt, na = math.sqrt(sum(x * x for x in ct)), math.sqrt(sum(x * x for x in ca))
    return sum(x * y for x, y in zip(ct, ca)) / (nt * na)


def test_cos_cubed_similarity_is_the_formula_computed_by_hand():
    g = torch.Generator().manual_seed(0)
    targets, acts = torch.randn(7, 3, generator=g), torch.randn(7, 3, generator=g)
    sim = cos_cubed_similarity(targets, acts)
    for k in range(3):
        assert sim[k].item() == pytest.approx(by_hand(targets[:, k].tolist(), acts[:, k].tolist()), abs=1e-6)
    assert cos_cubed_loss(targets, acts).item() == pytest.approx(-sim.mean().item(), abs=1e-7)
    # a hand-sized case: targets (0, 0, 3) centre to (-1, -1, 2) -> cubes (-1, -1, 8); activations (1, 2, 3) ->
    # (-1, 0, 1) -> cubes (-1, 0, 1): cosine (1 + 0 + 8) / (sqrt(66) * sqrt(2))
    sim = cos_cubed_similarity(torch.tensor([[0.0], [0.0], [3.0]]), torch.tensor([[1.0], [2.0], [3.0]]))
    assert sim.item() == pytest.approx(9 / math.sqrt(132), abs=1e-6)


def test_similarity_is_one_up_to_positive_scale_and_shift():
    g = torch.Generator().manual_seed(1)
    P = torch.randn(50, 4, generator=g)
    scale, shift = torch.tensor([0.01, 3.0, 250.0, 1.0]), torch.tensor([5.0, -2.0, 0.0, 1e3])
    torch.testing.assert_close(cos_cubed_similarity(P, P * scale + shift), torch.ones(4), atol=1e-5, rtol=0)
    assert cos_cubed_loss(P, P * scale + shift).item() == pytest.approx(-1.0, abs=1e-5)
    torch.testing.assert_close(cos_cubed_similarity(P, -P), -torch.ones(4), atol=1e-5, rtol=0)
    # a column with no spread scores 0, not NaN
    assert cos_cubed_similarity(P[:, :1], torch.full((50, 1), 2.0)).item() == 0.0


def test_top5_activation_is_the_mean_of_the_five_largest():
    P = torch.tensor([[float(i), -float(i)] for i in range(10)])
    torch.testing.assert_close(top5_activation(P), torch.tensor([7.0, -2.0]))


# -- a tiny world with one planted concept per filter ---------------------------------------------
D = 8
E = torch.eye(D)
CLASSES = ("alpha", "beta", "gamma")
TEXT = {
    "c0": E[0], "c1": E[1], "c2": E[2], "c3": F.normalize(E[3] + E[4], dim=0),
    "a concept name far longer than thirty characters": E[1],
    "alpha-like": F.normalize(E[7] + 0.05 * E[5], dim=0),  # next to the class 'alpha'
    "c0 twin": F.normalize(E[0] + 0.1 * E[1], dim=0),  # cosine 0.995 with c0
    "never seen": -E[5],  # every image has a large x5: this concept is never active
    "blind spot": E[6],  # the training images never vary along e6: W_c cannot learn it
    "alpha": E[7], "beta": -E[7], "gamma": F.normalize(E[6] - E[7], dim=0),
}
PLANTED = {"a concept name far longer than thirty characters": "longer than 30 characters",
           "alpha-like": "too similar to class 'alpha'", "c0 twin": "near-duplicate of 'c0'",
           "never seen": "top-5 mean CLIP activation", "blind spot": "validation cos³ similarity"}


def text(names, templates):
    """A deterministic stand-in for a CLIP text tower: (names, templates) -> unit (M, D) vectors."""
    return torch.stack([F.normalize(TEXT[n], dim=0) for n in names])


def world(n, seed, blind=True):
    """n images: the class sits on e0..e2, noise on e3, e4, a constant-ish e5, and e6 constant
    in training (``blind``) but varying in validation."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.randn(n, D, generator=g) * torch.tensor([0.3, 0.3, 0.3, 1.0, 1.0, 0.0, 0.0, 0.0])
    x[torch.arange(n), y] += 1.5
    x[:, 5] = 2.0 + 0.1 * torch.randn(n, generator=g)
    x[:, 6] = 1.5 if blind else 1.5 + 0.3 * torch.randn(n, generator=g)
    x[:, 7] = 0.0
    return x, y


def lf_inputs(names):
    return RecipeInputs(classes=CLASSES, backbone_spec="toy:text", text=text,
                        concepts=ConceptBank.from_list(names, source="file:toy.txt"))


ALL = ["c0", "c1", "c2", "c3", *PLANTED]


@pytest.fixture(scope="module")
def fitted():
    X, y = world(300, 0)
    Xv, yv = world(120, 1, blind=False)
    est = get_recipe("lf-cbm").from_inputs(lf_inputs(ALL), lam=1e-3)
    return est.fit(X, y, val_features=Xv, val_labels=yv), (X, y, Xv, yv)


def test_each_filter_removes_its_planted_concept_with_its_reason(fitted):
    est, _ = fitted
    removed = dict(est.filter_report_.removed)
    assert set(removed) == set(PLANTED)
    for concept, reason in PLANTED.items():
        assert removed[concept].startswith(reason) or reason in removed[concept], (concept, removed[concept])
    assert est.model_.concepts.names == ("c0", "c1", "c2", "c3")
    assert est.concepts_.sources[0] == "file:toy.txt · kept by lf-cbm filters"
    assert est.model_.recipe["filtered"] == [list(row) for row in est.filter_report_.removed]
    assert est.model_.recipe["filter_counts"] == {"given": 9, "length": 1, "class_similar": 1, "near_duplicate": 1,
                                                  "low_activation": 1, "uninterpretable": 1, "kept": 4}
    # the kept concepts were learned: validation similarity above the cutoff, close to 1
    assert (est.val_similarity_ > 0.9).all()


def test_absolute_top5_mode_uses_the_cutoff_and_off_keeps_the_concept():
    X, y = world(300, 0)
    Xv, yv = world(120, 1, blind=False)
    names = ["c0", "c1", "c2", "never seen"]
    quick = dict(proj_steps=50, interpretability_cutoff=-1.0)  # only the activation filter is under test here
    est = LabelFreeCBM.from_inputs(lf_inputs(names), top5_mode="absolute", top5_cutoff=0.0, **quick)
    removed = dict(est.fit(X, y, val_features=Xv).filter_report_.removed)
    assert set(removed) == {"never seen"} and removed["never seen"].endswith("≤ 0")
    est = LabelFreeCBM.from_inputs(lf_inputs(names), top5_mode="off", **quick).fit(X, y, val_features=Xv)
    assert "never seen" in est.model_.concepts.names and est.model_.recipe["filter_counts"]["low_activation"] == 0


def test_calibrated_scores_have_the_mean_and_spread_of_the_clip_similarities(fitted):
    est, (X, *_) = fitted
    V = text(est.model_.concepts.names, ["{}"])
    scores, target = est.model_.concept_scores(X), X @ V.T
    torch.testing.assert_close(scores.mean(0), target.mean(0), atol=1e-4, rtol=0)
    torch.testing.assert_close(scores.std(0), target.std(0), atol=1e-4, rtol=1e-4)
    assert est.model_.concept_layer.kind == "linear" and est.model_.concept_layer.bias is not None


def test_early_stopping_stops_at_the_first_check_that_does_not_improve():
    g = torch.Generator().manual_seed(0)
    X, Xv = torch.randn(200, D, generator=g), torch.randn(80, D, generator=g)
    V = F.normalize(torch.randn(3, D, generator=g), dim=1)
    unrelated = torch.randn(80, 3, generator=g)  # validation targets no projection of Xv can follow
    fit = train_projection(X, X @ V.T, Xv, unrelated, steps=1000, generator=torch.Generator().manual_seed(0))
    assert fit.stopped_early and fit.n_steps < 1000
    steps = [s for s, _, _ in fit.history]
    assert steps == list(range(0, steps[-1] + 1, 50)) and fit.n_steps == steps[-1] + 1
    vals = [v for _, _, v in fit.history]
    assert vals[-1] <= max(vals[:-1])  # it stopped because the last check did not improve ...
    assert all(b > a for a, b in zip(vals[:-2], vals[1:-1]))  # ... and every earlier one did
    best = max(vals)
    assert fit.best_step == steps[vals.index(best)]
    # the weights returned are the best checkpoint's
    assert cos_cubed_similarity(unrelated, Xv @ fit.weight.T).mean().item() == pytest.approx(best, abs=1e-6)
    # with validation targets that follow the same rule, it runs to the end
    fit = train_projection(X, X @ V.T, Xv, Xv @ V.T, steps=300, generator=torch.Generator().manual_seed(0))
    assert not fit.stopped_early and fit.n_steps == 300 and fit.history[-1][2] > 0.9


def test_without_validation_features_it_holds_out_ten_percent_seeded():
    X, y = world(300, 0, blind=False)
    a = LabelFreeCBM.from_inputs(lf_inputs(["c0", "c1", "c2"]), proj_steps=100, seed=3).fit(X, y)
    b = LabelFreeCBM.from_inputs(lf_inputs(["c0", "c1", "c2"]), proj_steps=100, seed=3).fit(X, y)
    assert torch.equal(a.projection_, b.projection_) and torch.equal(a.coef_, b.coef_)
    c = LabelFreeCBM.from_inputs(lf_inputs(["c0", "c1", "c2"]), proj_steps=100, seed=4).fit(X, y)
    assert not torch.equal(a.projection_, c.projection_)


def test_every_concept_filtered_is_an_error_saying_what_to_do():
    X, y = world(60, 0)
    with pytest.raises(RecipeError, match="removed every concept"):
        LabelFreeCBM.from_inputs(lf_inputs(["a concept name far longer than thirty characters"])).fit(X, y)


def test_fit_model_bundle_round_trip_and_path(fitted, tmp_path):
    est, (X, y, Xv, yv) = fitted
    model = est.model_
    assert model.recipe["name"] == "lf-cbm" and model.recipe["lam"] == 1e-3
    assert 0.0 <= model.recipe["projection_text_cosine"] <= 1.0
    assert (est.predict(Xv) == yv).float().mean() > 0.9
    loaded = load_bundle(save_bundle(model, tmp_path / "lf"))
    torch.testing.assert_close(loaded.explain_features(Xv).logits, model.explain_features(Xv).logits)
    assert loaded.recipe["filtered"] == model.recipe["filtered"] and loaded.concepts == model.concepts
    points = est.path(X, y, Xv, yv, n_points=5)
    assert len(points) == 5 and points[0].nec == 0 and points[-1].nec > 0 and points[-1].val_accuracy > 0.9


def test_build_cbm_lf_cbm_end_to_end(tmp_path, tiny_vit, monkeypatch):
    from cbm_core.build import build_cbm
    from cbm_core.data.datasets import ImageDataset
    from helpers import write_class_folder

    monkeypatch.setenv("CBM_CACHE_DIR", str(tmp_path / "cache"))
    root = write_class_folder(tmp_path / "data", per_class=8)
    bank = ConceptBank.from_list(["red", "round shape", "bright colour", "dark outline", "pale background"])
    result = build_cbm(tiny_vit, ImageDataset.from_folder(root), bank, recipe="lf-cbm", templates=["a photo of {}."],
                       lam=1e-3, proj_steps=200, class_cutoff=1.0, duplicate_cutoff=1.0, top5_mode="off",
                       interpretability_cutoff=0.0)
    model = result.model
    assert model.recipe["name"] == "lf-cbm" and model.concept_layer.kind == "linear"
    assert ["red", "is a class name"] in model.recipe["filtered"]
    assert "red" not in model.concepts.names and len(model.concepts) >= 1
    assert 0.0 <= result.val_metrics.accuracy <= 1.0 and model.metrics["n_val"] > 0
