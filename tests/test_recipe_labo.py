"""LaBo: sentence selection (discriminability + facility-location greedy), the association head and
its exact conversion to a linear head over standardised scores; known answers on tiny data."""
import itertools
import math
import zlib

import pytest
import torch
import torch.nn.functional as F

from cbm_core.build import build_cbm
from cbm_core.core.bundle import load_bundle, save_bundle
from cbm_core.data.datasets import ImageDataset
from cbm_core.errors import RecipeError
from cbm_core.core.model import ConceptStats
from cbm_core.recipes import RecipeInputs, get_recipe
from cbm_core.recipes.labo import (LaBo, association_to_head, class_similarity, discriminability, greedy_select,
                                   selection_objective)
from helpers import write_class_folder

D = 8
CLASSES = ("heron", "finch", "gull")
E = torch.eye(D)


def unit(v):
    return F.normalize(torch.as_tensor(v, dtype=torch.float32), dim=0)


# Each class's images sit around one axis; every sentence's text vector is planted by hand.
PLANTED = {
    "a tall crest": E[0],                         # heron's own axis: the discriminative one
    "a crest and a small body": unit(E[0] + E[1]),  # heron and finch alike
    "a loud call": E[5],                          # about nothing the images show
    "webbed feet": E[2],                          # true of the gull, written for the heron
    "a short beak": E[1],
    "small body": unit(E[1] + 0.2 * E[6]),
    "often seen near water": unit(E[2] + E[7]),
    "a hooked beak": E[2],
    "the gull is noisy": unit(E[2] + E[3]),       # names a class: LaBo drops it
}
POOL = {
    "heron": ("a tall crest", "a crest and a small body", "a loud call", "webbed feet", "often seen near water"),
    "finch": ("a short beak", "small body", "a crest and a small body"),
    "gull": ("a hooked beak", "often seen near water", "the gull is noisy"),
}


def text(names, templates):
    """A deterministic text encoder: the planted vectors, else a vector seeded by the name."""
    out = []
    for n in names:
        if n in PLANTED:
            out.append(PLANTED[n])
        else:
            g = torch.Generator().manual_seed(zlib.crc32(n.encode()))
            out.append(unit(torch.randn(D, generator=g)))
    return torch.stack(out)


def data(n_per_class=40, seed=0, noise=0.35):
    """Class c's images around axis c, with noise on axes 0-3 only: axes 4-7 are in no image."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(3).repeat(n_per_class)
    x = F.normalize(E[y] + noise * torch.randn(len(y), D, generator=g) * (torch.arange(D) < 4), dim=1)
    return x, y


def inputs(pool=POOL):
    return RecipeInputs(classes=CLASSES, backbone_spec="tiny-vit:random", text=text, candidate_pool=pool)


def test_class_similarity_is_the_mean_cosine_per_class():
    x, y = data(5)
    vectors = text(list(PLANTED)[:4], ["{}"])
    sim = class_similarity(vectors, x, y, 3)
    for m in range(4):
        for c in range(3):
            want = sum(float(vectors[m] @ x[i]) for i in range(len(y)) if y[i] == c) / 5
            assert float(sim[m, c]) == pytest.approx(want, abs=1e-6)


def test_discriminability_ranks_the_planted_sentence_first():
    x, y = data()
    names = POOL["heron"]
    sim = class_similarity(text(names, ["{}"]), x, y, 3)
    d = discriminability(sim, torch.zeros(len(names), dtype=torch.long), scale=20.0)
    order = [names[int(i)] for i in d.argsort(descending=True)]
    assert order[:2] == ["a tall crest", "a crest and a small body"]  # heron's own, then heron's and finch's
    assert float(d.max()) <= 1.0 and all(abs(float(d[names.index(n)])) < 0.05 for n in ("a loud call", "webbed feet"))
    # the formula by hand: p(y|c) log(C p(y|c)) / log C, p(.|c) the softmax of scale * Sim(., c)
    for m in range(len(names)):
        p = math.exp(20.0 * sim[m, 0]) / sum(math.exp(20.0 * sim[m, c]) for c in range(3))
        assert float(d[m]) == pytest.approx(p * math.log(3 * p) / math.log(3), abs=1e-5)


def _brute_force(quality, similarity, k, weight):
    return max(itertools.combinations(range(len(quality)), k),
               key=lambda s: selection_objective(s, quality, similarity, weight))


def test_greedy_finds_the_known_optimum():
    # two pairs of near-duplicates and two singletons: the best 3 take one of each pair and the
    # better singleton, not both members of the top pair (which the quality alone would pick)
    quality = torch.tensor([0.50, 0.48, 0.30, 0.32, 0.20, 0.05])
    sim = torch.eye(6)
    for i, j in ((0, 1), (2, 3)):
        sim[i, j] = sim[j, i] = 0.95
    picked = greedy_select(quality, sim, 3, coverage_weight=2.0)
    best = _brute_force(quality, sim, 3, 2.0)
    assert sorted(picked) == sorted(best) == [0, 3, 4]
    assert selection_objective(picked, quality, sim, 2.0) == pytest.approx(selection_objective(best, quality, sim, 2.0))
    # without coverage the modular objective is just the top-3 qualities
    assert sorted(greedy_select(quality, sim, 3, coverage_weight=0.0)) == [0, 1, 3]


@pytest.mark.parametrize("seed", range(5))
def test_greedy_is_within_the_submodular_bound_of_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    v = F.normalize(torch.randn(8, 4, generator=g), dim=1)
    sim, quality = (v @ v.T).clamp_min(0), torch.rand(8, generator=g)
    picked = greedy_select(quality, sim, 3, coverage_weight=1.5)
    assert len(set(picked)) == 3
    greedy, opt = (selection_objective(s, quality, sim, 1.5) for s in (picked, _brute_force(quality, sim, 3, 1.5)))
    assert (1 - 1 / math.e) * opt - 1e-9 <= greedy <= opt + 1e-9
    first = max(range(8), key=lambda i: selection_objective([i], quality, sim, 1.5))
    assert picked[0] == first


def test_association_head_converts_exactly():
    g = torch.Generator().manual_seed(0)
    A, s = torch.randn(3, 5, generator=g) * 2, torch.rand(40, 5, generator=g) * 0.6 - 0.1
    stats = ConceptStats.from_scores([f"c{k}" for k in range(5)], s)
    W, b = association_to_head(A, 37.0, stats.mean, stats.std)
    z = (s - stats.mean) / stats.std
    torch.testing.assert_close(z @ W.T + b, 37.0 * s @ A.softmax(1).T, atol=1e-5, rtol=1e-5)


def test_fit_selects_dedupes_drops_class_names_and_keeps_labos_logits():
    x, y = data()
    est = LaBo.from_inputs(inputs(), n_per_class=3, epochs=60, lr=0.05)
    assert not hasattr(est, "model_")
    assert est.fit(x, y, val_features=x, val_labels=y) is est
    model = est.model_
    names = model.concepts.names
    # heron's most discriminative sentence first, then the one it shares with the finch: chosen for
    # both pools, it is one concept associated with both classes
    assert names[:2] == ("a tall crest", "a crest and a small body")
    assert model.concepts.sources[1] == "pool:heron|finch" and est.concept_classes_[1] == (0, 1)
    assert len({n.lower() for n in names}) == len(names) and len(names) < 9
    assert "the gull is noisy" not in names
    assert dict(est.removed_.removed)["the gull is noisy"].startswith("names the class 'gull'")
    assert all(s.startswith("pool:") for s in model.concepts.sources)
    # the model's linear head over standardised scores gives exactly LaBo's own logits
    scores = model.concept_scores(x)
    torch.testing.assert_close(model.head(scores), est.scale * scores @ est.association_.softmax(1).T,
                               atol=1e-4, rtol=1e-5)
    assert model.recipe["name"] == "labo" and model.recipe["n_per_class"] == 3
    assert model.metrics["train_accuracy"] > 0.9
    assert model.sparsity()["nec"] == len(names)  # dense


def test_association_starts_from_the_concept_to_class_map():
    x, y = data()
    est = LaBo.from_inputs(inputs(), n_per_class=3, epochs=1, lr=1e-7, init_val=2.0).fit(x, y)
    assert (0, 1) in est.concept_classes_  # a sentence chosen for two classes starts high for both
    A = est.association_
    for k, classes in enumerate(est.concept_classes_):
        want = torch.zeros(3)
        want[list(classes)] = 2.0
        torch.testing.assert_close(A[:, k], want, atol=1e-5, rtol=0)


def test_fit_is_deterministic_and_works_from_one_shot():
    x, y = data()
    a = LaBo.from_inputs(inputs(), batch_size=16, epochs=5, seed=3).fit(x, y).model_
    b = LaBo.from_inputs(inputs(), batch_size=16, epochs=5, seed=3).fit(x, y).model_
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    one = LaBo.from_inputs(inputs(), epochs=20).fit(x[:3], y[:3], val_features=x, val_labels=y).model_
    assert torch.isfinite(one.weight).all() and one.explain_features(x).logits.isfinite().all()


def test_bundle_round_trip_keeps_logits_and_provenance(tmp_path):
    x, y = data()
    model = LaBo.from_inputs(inputs(), epochs=30).fit(x, y).model_
    loaded = load_bundle(save_bundle(model, tmp_path / "labo"))
    torch.testing.assert_close(loaded.explain_features(x).logits, model.explain_features(x).logits)
    assert loaded.concepts.sources == model.concepts.sources and loaded.recipe["name"] == "labo"


def test_path_truncates_the_dense_head():
    x, y = data(20, noise=0.8)  # overlapping classes: the refits converge quickly
    est = LaBo.from_inputs(inputs(), n_per_class=1, epochs=30)
    points = est.path(x, y, x, y)
    K = len(est.fit(x, y, val_features=x, val_labels=y).model_.concepts)
    assert points[0].nec <= 1 and points[-1].lam == K
    assert all(p.val_accuracy is not None for p in points) and points[-1].train_accuracy > 0.6


def test_pool_must_fit_the_classes():
    with pytest.raises(RecipeError, match="no sentences for class 'gull'"):
        LaBo.from_inputs(inputs({"heron": ("a",), "finch": ("b",)}))
    with pytest.raises(RecipeError, match="classes the data does not have: owl"):
        LaBo.from_inputs(inputs({**POOL, "owl": ("c",)}))
    with pytest.raises(RecipeError, match="No usable candidate"):
        LaBo.from_inputs(inputs({**POOL, "gull": ("the gull",)})).fit(*data())
    assert get_recipe("labo") is LaBo and LaBo.needs == ("labels", "candidate_pool")


def test_build_cbm_end_to_end(tmp_path, tiny_vit, monkeypatch):
    monkeypatch.setenv("CBM_CACHE_DIR", str(tmp_path / "cache"))
    root = write_class_folder(tmp_path / "data", per_class=6)
    pool = {"red": ("a red disc", "warm colours", "a round shape"), "blue": ("a blue disc", "cool colours"),
            "green": ("a green disc", "leafy colours", "a round shape")}
    result = build_cbm(tiny_vit, ImageDataset.from_folder(root), recipe="labo", candidate_pool=pool,
                       templates=["a photo of {}."], n_per_class=2, epochs=20)
    model = result.model
    assert model.recipe["name"] == "labo" and model.concept_layer.kind == "text_cosine"
    assert 0.0 <= result.val_metrics.accuracy <= 1.0
    loaded = load_bundle(save_bundle(model, tmp_path / "bundle.zip"))
    e = result.val_features.embeddings
    torch.testing.assert_close(loaded.explain_features(e).logits, model.explain_features(e).logits)
