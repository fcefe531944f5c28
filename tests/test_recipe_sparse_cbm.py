"""Sparse-CBM (the CBL objectives, the CBL as a projection, the paper's head converted exactly, the
elastic-net head) and Concept Matrix Search (against its formula by hand); known answers on tiny data."""
import io
import math

import pytest
import torch
import torch.nn.functional as F

from cbm_core.build import build_cbm
from cbm_core.core.bundle import load_bundle, save_bundle
from cbm_core.core.concepts import ConceptBank
from cbm_core.data.datasets import ImageDataset
from cbm_core.errors import RecipeError
from cbm_core.explain.pipeline import Pipeline
from cbm_core.recipes import RecipeInputs, get_recipe
from cbm_core.recipes.cms import CMS, class_concept_matrix, fit_temperature, paper_scores, row_normalise
from cbm_core.recipes.sparse_cbm import (SparseCBM, cbl_to_layer, contrastive_loss, gumbel_contrastive_loss,
                                         gumbel_noise, l1_loss)
from helpers import shape_image, write_class_folder

D = 8
CLASSES = ("heron", "finch", "gull")
NAMES = ("crest", "short beak", "hooked beak", "water", "long legs")
E = torch.eye(D)


def concept_vectors():
    return F.normalize(torch.stack([E[0] + 0.2 * E[4], E[1], E[2], E[2] + E[3], E[0] + E[4]]), dim=1)


def data(n_per_class=30, seed=0, noise=0.4):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(3).repeat(n_per_class)
    x = F.normalize(E[y] + 0.5 * E[4] + noise * torch.randn(len(y), D, generator=g), dim=1)
    return x, y


def sparse_cbm(**params):
    return SparseCBM(concepts=ConceptBank(NAMES), concept_vectors=concept_vectors(), classes=CLASSES,
                     backbone_spec="tiny-vit:random", **{"epochs": 8, "batch_size": 32, **params})


# -- Sparse-CBM -----------------------------------------------------------------------------------
def test_gumbel_noise_is_minus_log_minus_log_uniform():
    u = torch.rand(4, 3, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(gumbel_noise((4, 3), torch.Generator().manual_seed(5)), -torch.log(-torch.log(u)))


def test_gumbel_contrastive_loss_against_its_formula():
    c = [[1.0, -0.5, 2.0], [0.3, 0.8, -1.2]]
    tau = 0.7
    g = torch.Generator().manual_seed(11)
    g0, g1 = gumbel_noise((2, 3), g), gumbel_noise((2, 3), g)
    # by hand: the mean of -log of each Gumbel-softmax sample, over images (columns) and over concepts (rows)
    def neg_log_sample(noise, i, k, over_images):
        logit = lambda a, b: (c[a][b] + float(noise[a, b])) / tau  # noqa: E731
        others = [logit(a, k) for a in range(2)] if over_images else [logit(i, b) for b in range(3)]
        return -(logit(i, k) - math.log(sum(math.exp(v) for v in others)))
    cells = [(i, k) for i in range(2) for k in range(3)]
    want = (sum(neg_log_sample(g0, i, k, True) for i, k in cells) / 6
            + sum(neg_log_sample(g1, i, k, False) for i, k in cells) / 6) / 2
    got = gumbel_contrastive_loss(torch.tensor(c), tau, (g0, g1))
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_contrastive_and_l1_losses_against_their_formulas():
    c = torch.tensor([[2.0, 0.0, 1.0], [0.5, 1.5, -1.0]])
    col = [-math.log(math.exp(c[i, i]) / sum(math.exp(c[a, i]) for a in range(2))) for i in range(2)]
    row = [-math.log(math.exp(c[i, i]) / sum(math.exp(c[i, b]) for b in range(3))) for i in range(2)]
    assert float(contrastive_loss(c)) == pytest.approx((sum(col) / 2 + sum(row) / 2) / 2, rel=1e-6)
    A = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    assert float(l1_loss(A, 0.1)) == pytest.approx(0.1 * 3.5 / 2)


def test_the_cbl_is_a_linear_projection_of_the_embedding():
    g = torch.Generator().manual_seed(0)
    A, V = torch.randn(5, 5, generator=g), concept_vectors()
    x, _ = data(4)
    layer = cbl_to_layer(A, V, 30.0)
    assert layer.kind == "linear" and layer.weight.shape == (5, D) and layer.bias is None
    torch.testing.assert_close(layer(x), (30.0 * x @ V.T) @ A.T, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("objective", ["gumbel", "contrastive", "l1"])
def test_lam_zero_keeps_the_papers_head_exactly(objective):
    x, y = data()
    est = sparse_cbm(objective=objective, lam=0.0).fit(x, y, val_features=x, val_labels=y)
    model = est.model_
    c = (est.logit_scale * x @ concept_vectors().T) @ est.cbl_.T
    torch.testing.assert_close(model.concept_scores(x), c, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(model.head(model.concept_scores(x)), c @ est.head_.T, atol=1e-3, rtol=1e-4)
    assert model.recipe["objective"] == objective and len(est.history_) == 8
    assert 1 <= est.best_epoch_ <= 8 and model.sparsity()["nec"] == 5


def test_identity_init_starts_each_activation_at_its_concept_and_random_does_not():
    x, y = data()
    near = sparse_cbm(lr=1e-6, epochs=1, lam=0.0).fit(x, y)
    torch.testing.assert_close(near.cbl_, torch.eye(5), atol=1e-4, rtol=0)
    far = sparse_cbm(lr=1e-6, epochs=1, lam=0.0, init="random").fit(x, y)
    assert float((far.cbl_ - torch.eye(5)).abs().max()) > 0.1


def test_elastic_net_head_is_sparse_deterministic_and_has_a_path():
    x, y = data(noise=0.8)  # overlapping classes: the elastic-net fits converge in few iterations
    a = sparse_cbm(lam=0.05, seed=4).fit(x, y).model_
    b = sparse_cbm(lam=0.05, seed=4).fit(x, y).model_
    assert torch.equal(a.weight, b.weight) and torch.equal(a.concept_layer.weight, b.concept_layer.weight)
    assert a.sparsity()["nec"] < 5 and a.metrics["train_accuracy"] > 0.6
    assert a.recipe["converged"] and SparseCBM.sparsity_param().name == "lam"
    points = sparse_cbm().path(x, y, x, y, n_points=4)
    assert len(points) == 4 and points[0].nec == 0 and points[-1].nec > points[0].nec


def test_sparse_cbm_bundle_round_trip(tmp_path):
    x, y = data()
    model = sparse_cbm(lam=0.01).fit(x, y).model_
    loaded = load_bundle(save_bundle(model, tmp_path / "scbm"))
    assert loaded.concept_layer.kind == "linear"
    torch.testing.assert_close(loaded.explain_features(x).logits, model.explain_features(x).logits)


# -- Concept Matrix Search --------------------------------------------------------------------------
def cms_inputs(text=None):
    class_vectors = F.normalize(torch.stack([E[0] + E[4], E[1] + E[4], E[2] + E[3]]), dim=1)
    table = dict(zip(NAMES, concept_vectors())) | dict(zip(CLASSES, class_vectors))
    return RecipeInputs(classes=CLASSES, backbone_spec="tiny-vit:random", concepts=ConceptBank(NAMES),
                        text=text or (lambda names, templates: torch.stack([table[n] for n in names])))


def test_cms_matches_its_formula_by_hand():
    x, y = data(6, noise=0.2)
    assert bool(((x @ concept_vectors().T).sum(1) > 0).all())  # where the paper's row normalisation keeps signs
    est = CMS.from_inputs(cms_inputs()).fit(x, y)
    V = concept_vectors()
    cls = F.normalize(torch.stack([E[0] + E[4], E[1] + E[4], E[2] + E[3]]), dim=1)
    # T: the class-name/concept cosines, each row divided by its sum
    t = [[float(cls[c] @ V[k]) for k in range(5)] for c in range(3)]
    T = [[v / sum(row) for v in row] for row in t]
    torch.testing.assert_close(est.class_matrix_, torch.tensor(T), atol=1e-6, rtol=1e-5)
    s = (x @ V.T).tolist()
    for i in range(len(s)):
        v = [a / sum(s[i]) for a in s[i]]
        cos = [sum(a * b for a, b in zip(v, T[c])) / math.sqrt(sum(a * a for a in v) * sum(b * b for b in T[c]))
               for c in range(3)]
        torch.testing.assert_close(paper_scores(torch.tensor([s[i]]), est.class_matrix_)[0], torch.tensor(cos),
                                   atol=1e-5, rtol=1e-5)
        # the CBM's logits are scale * s . T_c / |T_c|: the paper's cosine times scale * |s|, whatever the class
        logits = est.model_.head(torch.tensor([s[i]]))[0]
        norm_s = math.sqrt(sum(a * a for a in s[i]))
        torch.testing.assert_close(logits, torch.tensor(cos) * est.scale_ * norm_s, atol=1e-3, rtol=1e-4)
        assert int(logits.argmax()) == max(range(3), key=cos.__getitem__)
    assert est.agreement_ == 1.0 and est.model_.recipe["warnings"] == []


def test_cms_from_training_images_and_its_temperature():
    x, y = data(6)
    est = CMS.from_inputs(cms_inputs(), class_matrix="images").fit(x, y)
    rows = row_normalise(x @ concept_vectors().T)
    want = torch.stack([rows[y == c].mean(0) for c in range(3)])
    torch.testing.assert_close(est.class_matrix_, want)
    torch.testing.assert_close(class_concept_matrix(concept_vectors(), scores=x @ concept_vectors().T, labels=y,
                                                    n_classes=3), want)
    u = (x @ concept_vectors().T) @ F.normalize(want, dim=1).T
    ce = lambda t: float(F.cross_entropy(t * u, y))  # noqa: E731
    assert ce(est.scale_) <= min(ce(est.scale_ * 1.05), ce(est.scale_ / 1.05))
    fixed = CMS.from_inputs(cms_inputs(), class_matrix="images", scale=5.0).fit(x, y)
    assert fixed.scale_ == 5.0 and torch.equal(fixed.model_.predict(x), est.model_.predict(x))
    assert fit_temperature(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([1, 0])) < 1e-3  # wrong way round
    with pytest.raises(RecipeError, match="class 'gull' has none"):
        CMS.from_inputs(cms_inputs(), class_matrix="images").fit(x[y < 2], y[y < 2])


def test_cms_reports_rows_the_papers_normalisation_flips():
    x, y = data(6)
    flipped = torch.cat([x, -x[:3]])  # cosines summing to < 0: the paper's row normalisation flips them
    est = CMS.from_inputs(cms_inputs(), class_matrix="names").fit(flipped, torch.cat([y, y[:3]]))
    assert est.agreement_ < 1.0 and "flips the row" in est.model_.recipe["warnings"][0]


def test_cms_path_and_bundle(tmp_path):
    x, y = data(10, noise=0.8)
    est = CMS.from_inputs(cms_inputs()).fit(x, y)
    points = est.path(x, y, x, y)
    assert [p.lam for p in points] == [1.0, 2.0, 3.0, 5.0] and points[-1].val_accuracy is not None
    loaded = load_bundle(save_bundle(est.model_, tmp_path / "cms.zip"))
    torch.testing.assert_close(loaded.explain_features(x).logits, est.model_.explain_features(x).logits)
    assert get_recipe("cms") is CMS and get_recipe("sparse-cbm") is SparseCBM


# -- end to end ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("recipe,params", [("sparse-cbm", {"epochs": 3, "batch_size": 8, "lam": 0.05}),
                                           ("cms", {"class_matrix": "names"})])
def test_build_cbm_end_to_end(recipe, params, tmp_path, tiny_vit, monkeypatch):
    monkeypatch.setenv("CBM_CACHE_DIR", str(tmp_path / "cache"))
    root = write_class_folder(tmp_path / "data", per_class=6)
    bank = ConceptBank.from_list(["round shape", "warm colour", "cool colour", "leafy"])
    result = build_cbm(tiny_vit, ImageDataset.from_folder(root), bank, recipe=recipe, templates=["a photo of {}."],
                       **params)
    model = result.model
    assert model.recipe["name"] == recipe and 0.0 <= result.val_metrics.accuracy <= 1.0
    e = result.val_features.embeddings
    loaded = load_bundle(save_bundle(model, tmp_path / "bundle"))
    torch.testing.assert_close(loaded.explain_features(e).logits, model.explain_features(e).logits)
    # the concept layer works through saliency unchanged (dense maps and Grad-CAM)
    buf = io.BytesIO()
    shape_image("red", 1).save(buf, format="PNG")
    pipe = Pipeline(tiny_vit, model)
    enc = pipe.encode(buf.getvalue(), "red.png")
    for method in ("dense", "gradcam"):
        maps = pipe.saliency(enc, method, ["round shape", "leafy"], out_size=(20, 16))
        assert maps.shape == (2, 16, 20) and torch.isfinite(maps).all()
