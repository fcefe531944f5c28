"""DN-CBM: the sparse autoencoder (reconstruction, sparsity against the ℓ1 weight, resampling of a
planted dead latent), naming (the planted nearest word, its similarity, unique names), dead
latents dropped and reported, the fitted model through a bundle, and build_cbm end to end."""
import pytest
import torch
import torch.nn.functional as F

from cbm_core import load_bundle, save_bundle
from cbm_core.errors import RecipeError
from cbm_core.recipes import DNCBM, RecipeInputs, get_recipe
from cbm_core.recipes.dn_cbm import SparseAutoencoder, name_latents, train_sae

D = 8
ATOMS = F.normalize(torch.tensor([[1.0, 1, 0, 0, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 0, 0],
                                  [0, 0, 0, 0, 0, 0, 1, 1], [1, -1, 0, 0, 0, 0, 0, 0], [0, 0, 1, -1, 0, 0, 0, 0]]),
                    dim=1)
WORDS = ("red crown", "long tail", "water", "striped wing", "hooked beak", "forked tail")


def sparse_world(n=600, seed=0):
    """Each embedding: a base point plus 1-2 of six dictionary atoms with random strengths; the
    class is the first atom used (0..2), so the atoms are the concepts that matter."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    second = torch.randint(3, 6, (n,), generator=g)
    codes = torch.zeros(n, len(ATOMS))
    codes[torch.arange(n), y] = 0.5 + torch.rand(n, generator=g)
    use = torch.rand(n, generator=g) < 0.5
    codes[torch.arange(n)[use], second[use]] = 0.5 + torch.rand(int(use.sum()), generator=g)
    x = 0.5 * torch.ones(D) / D ** 0.5 + codes @ ATOMS + 0.01 * torch.randn(n, D, generator=g)
    return x, y


def text(names, templates):
    """A stand-in text tower: the six planted words are the atoms; any other word is a fixed random direction."""
    out = []
    for n in names:
        if n in WORDS:
            out.append(ATOMS[WORDS.index(n)])
        else:
            g = torch.Generator().manual_seed(sum(map(ord, n)))
            out.append(F.normalize(torch.randn(D, generator=g), dim=0))
    return torch.stack(out)


VOCAB = WORDS + ("sky", "grass", "bird", "beak", "feathers", "nest")


def test_sae_reconstructs_and_sparsity_grows_with_the_l1_weight():
    X, _ = sparse_world()
    fits = {l1: train_sae(X, 24, l1=l1, steps=400, lr=3e-3, batch_size=128, resample_every=100,
                          generator=torch.Generator().manual_seed(0)) for l1 in (0.01, 0.1, 1.0)}
    for l1, fit in fits.items():
        first, last = fit.history[0], fit.history[-1]
        assert last[1] < first[1]  # the loss went down
        if l1 < 1.0:
            assert last[2] < 0.5 * first[2]  # and so did the reconstruction error (at l1 = 1, sparsity wins)
        torch.testing.assert_close(fit.sae.decoder_weight.norm(dim=0), torch.ones(24))  # unit decoder columns
    assert fits[0.01].sae.fvu(X) < 0.1
    l0 = [fits[l1].sae.l0(X) for l1 in (0.01, 0.1, 1.0)]
    fvu = [fits[l1].sae.fvu(X) for l1 in (0.01, 0.1, 1.0)]
    assert l0[0] > l0[1] > l0[2] > 0, l0  # more ℓ1: fewer active latents ...
    assert fvu[0] < fvu[1] < fvu[2], fvu  # ... bought with reconstruction
    # the FVU is what it says: error energy over centred energy
    sae = fits[0.1].sae
    err = ((X - sae.decode(sae.encode(X))) ** 2).sum() / ((X - X.mean(0)) ** 2).sum()
    assert sae.fvu(X) == pytest.approx(float(err), rel=1e-5)


def planted_dead(X, n_latents=12, dead=3):
    g = torch.Generator().manual_seed(1)
    W_dec = F.normalize(torch.randn(D, n_latents, generator=g), dim=0)
    b_enc = torch.zeros(n_latents)
    b_enc[dead] = -100.0  # never fires on any input
    return SparseAutoencoder(W_dec.T.clone(), b_enc, W_dec, X.mean(0))


def test_resampling_revives_a_planted_dead_latent():
    X, _ = sparse_world()
    init = planted_dead(X)
    assert (init.encode(X)[:, 3] == 0).all()
    fit = train_sae(X, 12, l1=0.05, steps=100, batch_size=128, resample_every=50, init=init,
                    generator=torch.Generator().manual_seed(0))
    assert fit.resampled and fit.resampled[0][0] == 50 and 3 in fit.resampled[0][1]
    assert (fit.sae.encode(X)[:, 3] > 0).any()  # alive again
    assert abs(float(fit.sae.decoder_weight[:, 3].norm()) - 1.0) < 1e-5
    # without resampling it stays dead
    fit = train_sae(X, 12, l1=0.05, steps=100, batch_size=128, resample_every=0, init=init,
                    generator=torch.Generator().manual_seed(0))
    assert not fit.resampled and (fit.sae.encode(X)[:, 3] == 0).all()


def test_naming_picks_the_nearest_word_keeps_its_similarity_and_disambiguates():
    vocab_vectors = text(VOCAB, ["{}"])
    noise = torch.Generator().manual_seed(0)
    directions = torch.stack([
        ATOMS[1] + 0.30 * F.normalize(torch.randn(D, generator=noise), dim=0),  # long tail, less close
        ATOMS[1] + 0.05 * F.normalize(torch.randn(D, generator=noise), dim=0),  # long tail, closest
        ATOMS[0] * 3.0,  # red crown (scale does not matter)
        ATOMS[1] + 0.60 * F.normalize(torch.randn(D, generator=noise), dim=0),  # long tail, farthest
    ])
    names, sims, sources = name_latents(directions, VOCAB, vocab_vectors, threshold=-1.0, latent_ids=[10, 11, 12, 13])
    by_hand = (F.normalize(directions, dim=1) @ vocab_vectors.T).max(dim=1).values
    assert sims == pytest.approx(by_hand.tolist(), abs=1e-6)
    assert sims[2] == pytest.approx(1.0, abs=1e-6) and names[2] == "red crown"
    # three latents nearest 'long tail': the closest keeps the word, then by decreasing similarity
    order = sorted([0, 1, 3], key=lambda i: -sims[i])
    assert [names[i] for i in order] == ["long tail", "long tail · 2", "long tail · 3"]
    assert sources[2] == "vocabulary:red crown" and sources[0] == "vocabulary:long tail"
    # a threshold between the similarities: below it, unnamed (by latent id), the similarity still kept
    cut = sorted(sims)[1] + 1e-4
    names2, sims2, sources2 = name_latents(directions, VOCAB, vocab_vectors, threshold=cut, latent_ids=[10, 11, 12, 13])
    assert sims2 == sims
    for k, latent in enumerate([10, 11, 12, 13]):
        if sims[k] < cut:
            assert names2[k] == f"(unnamed latent {latent})"
            assert sources2[k].startswith("unnamed: nearest vocabulary entry 'long tail'")
        else:
            assert not names2[k].startswith("(unnamed")
    assert sum(n.startswith("(unnamed") for n in names2) == 2 and "long tail" in names2
    assert len(set(names2)) == len(names2)


def test_a_suffixed_name_never_takes_a_vocabulary_entry_another_latent_uses():
    vocab = ("long tail", "long tail · 2", "sky")
    vectors = torch.stack([ATOMS[1], ATOMS[2], ATOMS[3]])
    directions = torch.stack([ATOMS[1], ATOMS[1] + 0.1 * ATOMS[0], ATOMS[2]])  # 2 x 'long tail', 1 x 'long tail · 2'
    names, _, _ = name_latents(directions, vocab, vectors)
    assert names == ("long tail", "long tail · 3", "long tail · 2")


def dn_inputs(vocab=VOCAB):
    return RecipeInputs(classes=("a", "b", "c"), backbone_spec="toy:text", text=text, vocabulary=vocab)


@pytest.fixture(scope="module")
def fitted():
    X, y = sparse_world()
    Xv, yv = sparse_world(240, seed=1)
    est = get_recipe("dn-cbm").from_inputs(dn_inputs(), expansion=2, sae_l1=0.05, sae_epochs=150, sae_lr=3e-3,
                                           sae_batch_size=128, resample_every=35, lam=1e-3, name_threshold=0.5)
    return est.fit(X, y, val_features=Xv, val_labels=yv), (X, y, Xv, yv)


def test_fit_names_latents_by_their_decoder_directions(fitted):
    est, (X, y, Xv, yv) = fitted
    model = est.model_
    live = model.recipe["latent_ids"]
    assert len(model.concepts) == len(live) == 16 - len(est.dead_latents_)
    # every similarity shown is the cosine of that latent's decoder column with its word's text vector
    for k, (name, sim) in enumerate(zip(model.concepts.names, model.concepts.name_similarity)):
        if name.startswith("(unnamed"):
            assert sim < 0.5 and name == f"(unnamed latent {live[k]})"
            continue
        word = name.split(" · ")[0]
        cos = F.cosine_similarity(est.sae_.decoder_weight[:, live[k]], text([word], ["{}"])[0], dim=0)
        assert sim == pytest.approx(float(cos), abs=1e-5) and sim >= 0.5
    # the planted atoms were discovered and named after their words
    named = {n.split(" · ")[0] for n in model.concepts.names}
    assert {"red crown", "long tail", "water"} <= named
    assert model.concepts.sources[model.concepts.names.index("red crown")] == "vocabulary:red crown"
    assert (est.predict(Xv) == yv).float().mean() > 0.9


def test_sae_quality_is_reported(fitted):
    est, (X, *_rest) = fitted
    info = est.model_.recipe["sae"]
    assert info["fvu_train"] == pytest.approx(est.sae_.fvu(X), rel=1e-6)
    assert info["l0_train"] == pytest.approx(est.sae_.l0(X), rel=1e-6)
    assert "fvu_val" in info and est.model_.metrics["sae_fvu_train"] == info["fvu_train"]
    assert est.model_.metrics["sae_l0_val"] == info["l0_val"] and info["n_latents"] == 16


def test_dead_latents_are_dropped_and_reported():
    X, y = sparse_world()
    est = DNCBM.from_inputs(dn_inputs(), expansion=8, sae_l1=2.0, sae_epochs=50, sae_batch_size=128,
                            resample_every=0, lam=1e-3).fit(X, y)
    dead = list(est.dead_latents_)
    assert dead and est.model_.recipe["dropped_latents"] == dead
    assert est.model_.n_concepts == 64 - len(dead)
    acts = est.sae_.encode(X)
    assert (acts[:, dead] == 0).all()  # truly never active on the training data
    assert ((acts[:, est.model_.recipe["latent_ids"]] > 0).any(0)).all()  # and every kept one is
    torch.testing.assert_close(est.model_.concept_scores(X), acts[:, est.model_.recipe["latent_ids"]])


def test_an_sae_with_every_latent_dead_is_an_error():
    X, y = sparse_world(120)
    with pytest.raises(RecipeError, match="Every SAE latent is dead") as caught:
        DNCBM.from_inputs(dn_inputs(), expansion=1, sae_l1=100.0, sae_epochs=300, sae_lr=0.05, sae_batch_size=120,
                          resample_every=0).fit(X, y)
    assert "sae_l1 (100)" in str(caught.value) and "sae_lr (0.05)" in str(caught.value)  # both knobs named


def test_fit_model_bundle_round_trip_and_path(fitted, tmp_path):
    est, (X, y, Xv, yv) = fitted
    model = est.model_
    loaded = load_bundle(save_bundle(model, tmp_path / "dn.zip"))
    assert loaded.concept_layer.kind == "sae"
    torch.testing.assert_close(loaded.explain_features(Xv).logits, model.explain_features(Xv).logits)
    assert loaded.concepts.name_similarity == pytest.approx(model.concepts.name_similarity)
    assert loaded.recipe["dropped_latents"] == model.recipe["dropped_latents"]
    points = est.path(X, y, Xv, yv, n_points=5)
    assert len(points) == 5 and points[0].nec == 0 and points[-1].nec > 0


def test_seeded_and_deterministic():
    X, y = sparse_world(200)
    kw = dict(expansion=2, sae_epochs=30, sae_batch_size=64, resample_every=10)
    a = DNCBM.from_inputs(dn_inputs(), seed=5, **kw).fit(X, y)
    b = DNCBM.from_inputs(dn_inputs(), seed=5, **kw).fit(X, y)
    assert torch.equal(a.sae_.encoder_weight, b.sae_.encoder_weight) and torch.equal(a.coef_, b.coef_)
    assert a.model_.concepts == b.model_.concepts


def test_build_cbm_dn_cbm_end_to_end(tmp_path, tiny_vit, monkeypatch):
    from cbm_core.build import build_cbm
    from cbm_core.data.datasets import ImageDataset
    from helpers import write_class_folder

    monkeypatch.setenv("CBM_CACHE_DIR", str(tmp_path / "cache"))
    root = write_class_folder(tmp_path / "data", per_class=8)
    result = build_cbm(tiny_vit, ImageDataset.from_folder(root), recipe="dn-cbm", templates=["a photo of {}."],
                       vocabulary=["red", "blue", "green", "round", "square", "bright", "dark"], lam=1e-3,
                       expansion=2, sae_epochs=100, name_threshold=-1.0)
    model = result.model
    assert model.recipe["name"] == "dn-cbm" and model.concept_layer.kind == "sae"
    assert len(model.concepts.name_similarity) == len(model.concepts)
    assert all(s.startswith("vocabulary:") for s in model.concepts.sources)
    assert 0.0 <= result.val_metrics.accuracy <= 1.0 and "sae_fvu_train" in model.metrics
