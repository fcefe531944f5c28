import pytest
import torch
import torch.nn.functional as F

from cbm_core.core.concepts import ConceptBank
from cbm_core.recipes import PCBM
from cbm_core.recipes.elastic_net import fit_elastic_net, lambda_max, regularization_path


def blobs(n=300, k=10, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % c
    centers = torch.randn(c, k, generator=g) * 1.5
    return centers[y] + torch.randn(n, k, generator=g), y


def test_solution_satisfies_the_elastic_net_optimality_conditions():
    X, y = blobs()
    lam, alpha = 0.02, 0.9
    res = fit_elastic_net(X, y, 3, lam, alpha, tol=1e-9, max_iter=20000)
    assert res.converged
    logits = X @ res.weight.T + res.bias
    G = (logits.softmax(1) - F.one_hot(y, 3).float()).T @ X / len(y)  # smooth gradient, (C, K)
    nz = res.weight != 0
    smooth = G + lam * (1 - alpha) * res.weight
    # non-zero weights: gradient balances the l1 subgradient exactly; zeros: inside the l1 ball
    torch.testing.assert_close(smooth[nz], -lam * alpha * res.weight[nz].sign(), atol=2e-4, rtol=0)
    assert (smooth[~nz].abs() <= lam * alpha + 2e-4).all()
    assert nz.any() and (~nz).any()
    gb = (logits.softmax(1) - F.one_hot(y, 3).float()).mean(0)
    assert gb.abs().max() < 1e-4  # unpenalised bias is at its optimum


def test_lambda_max_zeroes_every_weight_and_below_it_does_not():
    X, y = blobs()
    lmax = lambda_max(X, y, 3, 0.99)
    assert (fit_elastic_net(X, y, 3, lmax * 1.01, 0.99).weight == 0).all()
    assert (fit_elastic_net(X, y, 3, lmax * 0.5, 0.99).weight != 0).any()


def test_fit_is_deterministic():
    X, y = blobs()
    a = fit_elastic_net(X, y, 3, 0.01)
    b = fit_elastic_net(X, y, 3, 0.01)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


def test_path_trades_sparsity_for_accuracy():
    X, y = blobs(k=20)
    points, _ = regularization_path(X, y, 3, n_lambdas=6, X_val=X, y_val=y)
    assert points[0].nonzero_fraction == 0 and points[0].nec == 0
    assert points[-1].nonzero_fraction > points[1].nonzero_fraction
    assert points[-1].train_accuracy > 0.9 > points[0].train_accuracy
    assert all(p.val_accuracy is not None for p in points)


def _pcbm_inputs(seed=0, n=240, d=16, k=8, c=3):
    g = torch.Generator().manual_seed(seed)
    vectors = F.normalize(torch.randn(k, d, generator=g), dim=1)
    y = torch.arange(n) % c
    emb = F.normalize(torch.randn(c, d, generator=g)[y] * 0.6 + torch.randn(n, d, generator=g) * 0.4, dim=1)
    bank = ConceptBank(tuple(f"concept {i}" for i in range(k)))
    return bank, vectors, emb, y


@pytest.mark.parametrize("residual", [False, True])
def test_pcbm_estimator(residual):
    bank, vectors, emb, y = _pcbm_inputs()
    est = PCBM(concepts=bank, concept_vectors=vectors, classes=["a", "b", "c"], backbone_spec="x:random",
               lam=1e-3, residual=residual)
    assert not hasattr(est, "model_")
    assert est.fit(emb, y) is est
    model = est.model_
    # training standardisation: transform() has zero mean and unit std on the training set
    z = est.transform(emb)
    torch.testing.assert_close(z.mean(0), torch.zeros(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(8), atol=1e-4, rtol=0)
    assert (est.predict(emb) == y).float().mean() > 0.8
    torch.testing.assert_close(est.predict_proba(emb).sum(1), torch.ones(len(y)))
    assert model.recipe["name"] == ("pcbm-h" if residual else "pcbm")
    assert (model.residual_weight is not None) == residual
    assert model.metrics["train_accuracy"] == pytest.approx(float((est.predict(emb) == y).float().mean()))


def test_pcbm_path_helper():
    bank, vectors, emb, y = _pcbm_inputs()
    est = PCBM(concepts=bank, concept_vectors=vectors, classes=["a", "b", "c"], backbone_spec="x:random")
    points = est.path(emb, y, emb, y, n_points=5)
    assert len(points) == 5 and points[-1].nec >= points[0].nec


def test_pcbm_rejects_bad_labels():
    bank, vectors, emb, y = _pcbm_inputs()
    est = PCBM(concepts=bank, concept_vectors=vectors, classes=["a", "b"], backbone_spec="x:random")
    with pytest.raises(ValueError, match="Labels must lie"):
        est.fit(emb, y)
    with pytest.raises(ValueError, match="labels"):
        est.fit(emb, y[:10])
