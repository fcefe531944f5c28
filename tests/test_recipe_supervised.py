"""The concept-supervised recipe: its measures and objective against their formulas, missing concept
labels, calibration, the three modes, and what it keeps in a bundle."""
import math

import pytest
import torch
import torch.nn.functional as F

from cbm_core import load_bundle, prune_concepts
from cbm_core.core.concept_layer import LinearProjection
from cbm_core.errors import RecipeError
from cbm_core.recipes import SupervisedCBM
from cbm_core.recipes.supervised import (auroc, concept_report, expected_calibration_error, fit_calibration,
                                         joint_objective, masked_bce, standardize_probs)

NAMES = ("red", "striped", "large")
CLASSES = ("a", "b", "c")


def toy_data(n=240, seed=0, missing=0.0):
    """Embeddings whose first three coordinates carry three concepts (noisily); classes follow concepts."""
    g = torch.Generator().manual_seed(seed)
    C = (torch.rand(n, 3, generator=g) < 0.5).float()
    X = torch.cat([2.0 * C - 1.0 + 0.6 * torch.randn(n, 3, generator=g), torch.randn(n, 5, generator=g)], 1)
    y = (C[:, 0] + C[:, 1]).long()  # 0, 1 or 2 of the first two concepts
    if missing:
        C = torch.where(torch.rand(n, 3, generator=g) < missing, torch.full_like(C, float("nan")), C)
    return X, y, C


def test_auroc_and_ece_match_hand_computed_values():
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8])
    labels = torch.tensor([0, 0, 1, 1])
    assert auroc(scores, labels) == pytest.approx(0.75)  # 3 of the 4 (positive, negative) pairs ordered right
    assert auroc(torch.tensor([0.5, 0.5]), torch.tensor([0, 1])) == pytest.approx(0.5)  # a tie counts half
    assert auroc(scores, torch.ones(4)) is None
    # two bins: [0.1, 0.2] predicted, 1 of 2 positive -> |0.15 - 0.5|; [0.9] predicted, positive -> 0.1
    probs, ys = torch.tensor([0.1, 0.2, 0.9]), torch.tensor([0.0, 1.0, 1.0])
    assert expected_calibration_error(probs, ys, n_bins=2) == pytest.approx((2 * 0.35 + 0.1) / 3)
    assert expected_calibration_error(probs, torch.tensor([float("nan"), 1.0, 1.0]), n_bins=2) == pytest.approx(
        (abs(0.2 - 1.0) + 0.1) / 2)


def test_masked_concept_loss_leaves_unknown_labels_out():
    logits = torch.tensor([[0.3, -1.0], [2.0, 0.5], [-0.4, 1.5]])
    labels = torch.tensor([[1.0, float("nan")], [0.0, 1.0], [float("nan"), float("nan")]])
    bce = lambda l, t: float(F.binary_cross_entropy_with_logits(torch.tensor(l), torch.tensor(t)))  # noqa: E731
    want = (bce(0.3, 1.0) + bce(2.0, 0.0)) / 2 + bce(0.5, 1.0) / 1
    assert float(masked_bce(logits, labels)) == pytest.approx(want, rel=1e-6)


def test_joint_objective_equals_its_formula():
    g = torch.Generator().manual_seed(1)
    N, K, C, D = 7, 3, 2, 4
    logits = torch.randn(N, K, generator=g)
    y = torch.tensor([0, 1, 1, 0, 1, 0, 0])
    labels = (torch.rand(N, K, generator=g) < 0.5).float()
    labels[2, 1] = float("nan")
    V, d = torch.randn(C, K, generator=g), torch.randn(C, generator=g)
    W = torch.randn(K, D, generator=g)
    lam, l1_ratio, lam_c, rho = 0.03, 0.7, 2.5, 0.1
    got = joint_objective(logits, y, labels, V, d, concept_weight=lam_c, lam=lam, l1_ratio=l1_ratio,
                          predictor_weight=W, concept_l2=rho)
    # by hand, in float64, one term at a time
    p = torch.sigmoid(logits.double())
    z = (p - p.mean(0)) / p.std(0, unbiased=False)
    out = z @ V.double().T + d.double()
    task = -sum(float(out[i, y[i]] - torch.logsumexp(out[i], 0)) for i in range(N)) / N
    concept = 0.0
    for j in range(K):
        rows = [i for i in range(N) if not math.isnan(float(labels[i, j]))]
        concept += sum(-(float(labels[i, j]) * math.log(float(p[i, j]))
                         + (1 - float(labels[i, j])) * math.log(1 - float(p[i, j]))) for i in rows) / len(rows)
    penalty = lam * (l1_ratio * float(V.abs().sum()) + 0.5 * (1 - l1_ratio) * float((V ** 2).sum()))
    ridge = 0.5 * rho * float((W ** 2).sum())
    assert float(got) == pytest.approx(task + lam_c * concept + penalty + ridge, rel=1e-5)
    assert torch.allclose(standardize_probs(p.float()), z.float(), atol=1e-5)


def test_platt_calibration_fixes_an_overconfident_predictor():
    g = torch.Generator().manual_seed(2)
    true_logit = torch.randn(2000, 1, generator=g)
    labels = (torch.rand(2000, 1, generator=g) < torch.sigmoid(true_logit)).float()
    overconfident = 4.0 * true_logit + 1.0
    a, c = fit_calibration(overconfident, labels, "platt")
    assert float(a) == pytest.approx(0.25, abs=0.05) and float(c) == pytest.approx(-0.25, abs=0.15)
    before = expected_calibration_error(torch.sigmoid(overconfident), labels)
    after = expected_calibration_error(torch.sigmoid(a * overconfident + c), labels)
    assert after < before / 3
    a_t, c_t = fit_calibration(overconfident, labels, "temperature")
    assert float(c_t) == 0.0 and 0.1 < float(a_t) < 0.5


@pytest.mark.parametrize("mode", ["independent", "sequential", "joint"])
def test_each_mode_fits_calibrated_probability_predictors_and_a_sparse_head(mode):
    X, y, C = toy_data(missing=0.1)
    Xv, yv, Cv = toy_data(n=120, seed=1)
    est = SupervisedCBM(classes=CLASSES, backbone_spec="toy", concept_names=NAMES, mode=mode, lam=1e-2,
                        joint_rounds=4).fit(X, y, val_features=Xv, val_labels=yv, concept_labels=C,
                                            val_concept_labels=Cv)
    model = est.model_
    assert isinstance(model.concept_layer, LinearProjection) and model.concept_layer.activation == "sigmoid"
    p = model.concept_scores(Xv)
    assert ((p >= 0) & (p <= 1)).all()
    m = model.metrics
    assert set(m["concept_auroc"]) == set(NAMES) and all(v > 0.9 for v in m["concept_auroc"].values())
    assert m["concept_metrics_on"].startswith("validation") and m["concept_ece_after"] is not None
    # 'large' carries no class information: the sparse head (all but) drops it
    assert float(model.weight[:, 2].abs().max()) < 0.05 * float(model.weight[:, :2].abs().max())
    assert model.sparsity()["nonzero_fraction"] < 1.0
    assert float((model.predict(Xv) == yv).float().mean()) > 0.85
    if mode == "joint":
        h = est.history_
        assert len(h) == 4 and h[-1] <= h[0] + 1e-6, "alternating minimisation must not raise the objective"


def test_without_validation_concept_labels_a_seeded_share_is_held_out():
    X, y, C = toy_data()
    a = SupervisedCBM(classes=CLASSES, backbone_spec="toy", concept_names=NAMES, seed=3).fit(X, y, concept_labels=C)
    b = SupervisedCBM(classes=CLASSES, backbone_spec="toy", concept_names=NAMES, seed=3).fit(X, y, concept_labels=C)
    assert a.model_.metrics["concept_metrics_on"].startswith("48 training images held out")
    assert torch.equal(a.model_.weight, b.model_.weight), "deterministic for a seed"


def test_missing_concept_labels_errors_say_what_to_do():
    X, y, C = toy_data(n=30)
    est = SupervisedCBM(classes=CLASSES, backbone_spec="toy", concept_names=NAMES)
    with pytest.raises(RecipeError, match="CSV manifest with one 0/1 column per concept"):
        est.fit(X, y)
    with pytest.raises(RecipeError, match="0, 1 or missing"):
        est.fit(X, y, concept_labels=C * 2)
    with pytest.raises(RecipeError, match="3 concept names"):
        est.fit(X, y, concept_labels=C[:, :2])


def test_bundle_keeps_concept_metrics_and_dependencies_through_edits(tmp_path):
    X, y, C = toy_data()
    model = SupervisedCBM(classes=CLASSES, backbone_spec="toy", concept_names=NAMES).fit(X, y, concept_labels=C).model_
    loaded = load_bundle(model.save(tmp_path / "b"))
    assert loaded.metrics["concept_auroc"] == model.metrics["concept_auroc"]
    assert loaded.recipe["concept_dependencies"]["names"] == list(NAMES)
    pruned = prune_concepts(loaded, ["red"]).model
    assert pruned.metrics["concept_auroc"] == model.metrics["concept_auroc"], "a head edit leaves the concept layer"
    report = concept_report(loaded.concept_scores(X), C, NAMES)
    assert report["concept_auroc"]["red"] == pytest.approx(model.metrics["concept_auroc"]["red"], abs=0.05)


def test_a_validation_csv_with_its_concept_columns_in_another_order_is_read_by_name(tmp_path, tiny_vit):
    """build_cbm with a separate validation CSV: its concept columns are matched to the training data's by name,
    so shuffling their order changes nothing; a missing column is refused by name."""
    import csv

    import pytest

    from cbm_core.build import build_cbm
    from cbm_core.data.datasets import ImageDataset
    from cbm_core.demo.world import export
    from cbm_core.errors import DatasetError

    manifest = export(tmp_path / "birds", {"train": 48, "val": 24}, size=32)
    rows = list(csv.DictReader(manifest.open()))
    fields = list(rows[0])
    concepts = [f for f in fields if f not in ("path", "label", "split", "group")]

    def split_csv(name, split, columns):
        path = manifest.parent / name
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(r for r in rows if r["split"] == split)
        return ImageDataset.from_csv(path)

    base = [f for f in fields if f not in concepts]
    train = split_csv("train.csv", "train", base + concepts)
    same = split_csv("val_same.csv", "val", base + concepts)
    shuffled = split_csv("val_shuffled.csv", "val", base + concepts[::-1])
    assert shuffled.concept_names == tuple(concepts[::-1])
    a = build_cbm(tiny_vit, train, val=same, recipe="supervised").model
    b = build_cbm(tiny_vit, train, val=shuffled, recipe="supervised").model
    assert a.metrics["concept_auroc"] == b.metrics["concept_auroc"]
    torch.testing.assert_close(a.weight, b.weight)
    lacking = split_csv("val_lacking.csv", "val", base + concepts[1:])
    with pytest.raises(DatasetError, match=repr(concepts[0])):
        build_cbm(tiny_vit, train, val=lacking, recipe="supervised")


@pytest.mark.parametrize("mode", ["independent", "joint"])
def test_a_concept_the_labels_never_vary_on_gets_no_weight_in_the_head(mode):
    """Labelled in one row only, a concept's predictor learns the base rate; its near-constant probability,
    standardised, must not become a free feature the head (or the joint step) leans on."""
    X, y, C = toy_data()
    C[:, 2] = float("nan")
    C[0, 2] = 1.0  # one label: never varies
    est = SupervisedCBM(classes=CLASSES, backbone_spec="toy", concept_names=NAMES, mode=mode).fit(X, y,
                                                                                                   concept_labels=C)
    assert bool((est.model_.weight[:, 2] == 0).all())
    assert any("head does not use them" in w for w in est.model_.recipe["warnings"])
    assert bool((est.model_.weight[:, :2] != 0).any())  # the labelled concepts still carry the classes
