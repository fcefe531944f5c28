"""Every kind of concept layer behind one model: everything downstream works unchanged.

Parametrised over the kinds in ``concept_layer.LAYER_KINDS``; each check has a known answer
(the layer's own formula, the head's arithmetic, a textbook one-concept Grad-CAM)."""
import json

import pytest
import torch
import torch.nn.functional as F

from cbm_core import (HeadSlice, Intervention, Pipeline, counterfactual, evaluate, load_bundle, prune_concepts,
                      save_bundle)
from cbm_core.core.bundle import _canonical, _sha
from cbm_core.core.concept_layer import (LAYER_KINDS, LinearProjection, SparseAutoencoderEncoder, TextCosine,
                                    layer_from_parts)
from cbm_core.core.concepts import ConceptBank
from cbm_core.demo.paths import DEMO_BUNDLE
from cbm_core.core.model import ConceptBottleneckModel, ConceptStats
from cbm_core.explain.saliency import DenseConceptMaps, GradCAM

K, C, D = 5, 3, 32


def make_layer(kind: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if kind == "text_cosine":
        return TextCosine(F.normalize(torch.randn(K, D, generator=g), dim=1))
    if kind == "linear":
        return LinearProjection(torch.randn(K, D, generator=g), torch.randn(K, generator=g) * 0.1)
    return SparseAutoencoderEncoder(torch.randn(K, D, generator=g), torch.full((K,), 0.3),
                                    torch.randn(D, generator=g) * 0.01)


def formula(layer, e):
    if isinstance(layer, TextCosine):
        return e @ layer.vectors.T
    if isinstance(layer, LinearProjection):
        return e @ layer.weight.T + layer.bias
    return torch.relu((e - layer.input_bias) @ layer.weight.T + layer.bias)


def make_model(kind: str, spec: str = "tiny-vit:random"):
    layer = make_layer(kind)
    g = torch.Generator().manual_seed(1)
    train = F.normalize(torch.randn(300, D, generator=g), dim=1)
    names = tuple(f"concept {k}" for k in range(K))
    return ConceptBottleneckModel(
        backbone_spec=spec, concepts=ConceptBank(names), concept_layer=layer, classes=("a", "b", "c"),
        stats=ConceptStats.from_scores(names, layer(train)), weight=torch.randn(C, K, generator=g),
        bias=torch.randn(C, generator=g), recipe={"name": "hand-built", "lam": 1e-3}), train


KINDS = sorted(LAYER_KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_layer_computes_its_formula_and_subsets(kind):
    layer = make_layer(kind)
    e = F.normalize(torch.randn(7, D), dim=1)
    torch.testing.assert_close(layer(e), formula(layer, e))
    assert layer.n_concepts == K and layer.embed_dim == D
    torch.testing.assert_close(layer.subset([3, 1])(e), layer(e)[:, [3, 1]])
    rebuilt = layer_from_parts(kind, layer.config(), layer.tensors())
    torch.testing.assert_close(rebuilt(e), layer(e))
    e.requires_grad_(True)
    layer(e).sum().backward()  # differentiable: Grad-CAM and training go through it
    assert e.grad is not None and torch.isfinite(e.grad).all()


def test_layer_parts_are_checked():
    with pytest.raises(ValueError, match="unknown concept layer"):
        layer_from_parts("magic", {}, {})
    with pytest.raises(ValueError, match="missing"):
        layer_from_parts("sae", {}, {"weight": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match="activation"):
        layer_from_parts("linear", {"activation": "tanh"}, {"weight": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        LinearProjection(torch.zeros(2, 3), torch.zeros(3))


@pytest.mark.parametrize("kind", KINDS)
def test_everything_downstream_works_for_every_kind(kind, tmp_path):
    model, train = make_model(kind)
    e = train[:20]
    exp = model.explain_features(e)
    torch.testing.assert_close(exp.scores, formula(model.concept_layer, e))
    # the head's arithmetic: logits = W z + b, contributions sum to the logit
    torch.testing.assert_close(exp.contributions().sum(-1) + model.bias, exp.logits)
    # interventions: switching a concept off puts it at its training mean
    off = model.explain_features(e, Intervention().ablate("concept 2"))
    torch.testing.assert_close(off.scores[:, 2], model.stats.mean[2].expand(20))
    # the browser panel's slice equals the model
    head = HeadSlice.from_model(model, e[0], ["concept 0", "concept 3"])
    settings = {"concept 0": {"off": True}, "concept 3": {"percentile": 90.0}}
    torch.testing.assert_close(head.logits(settings), model.explain_features(e[:1], head.intervention_with(settings)).logits[0])
    # counterfactual, edit, evaluation
    target = int(exp.logits[0].argsort()[-2])
    cf = counterfactual(model, e[0], target)
    if cf.success:
        assert int(model.explain_features(e[:1], cf.intervention).predicted[0]) == target
    pruned = prune_concepts(model, ["concept 1"]).model
    assert bool((pruned.weight[:, 1] == 0).all()) and pruned.concept_layer is model.concept_layer
    assert 0.0 <= evaluate(pruned, e, exp.predicted).accuracy <= 1.0
    # bundle v2 round trip, folder and zip
    for name in ("b", "b.zip"):
        loaded = load_bundle(save_bundle(pruned, tmp_path / name))
        assert loaded.concept_layer.kind == kind
        torch.testing.assert_close(loaded.explain_features(e).logits, pruned.explain_features(e).logits)
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["format_version"] == 2 and manifest["concept_layer"]["kind"] == kind
    assert all(t.startswith("concept_layer.") for t in manifest["tensors"] if t not in
               ("weight", "bias", "stats.mean", "stats.std", "stats.quantiles"))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fixture", ["tiny_vit", "tiny_rn"])
def test_dense_maps_apply_the_layer_to_every_position(kind, fixture, request):
    bb = request.getfixturevalue(fixture)
    layer = make_layer(kind)
    pixels = torch.randn(1, 3, *bb.image_size)
    enc = bb.encode_images(pixels, with_spatial=True)
    maps = DenseConceptMaps(bb).attribute(None, layer, spatial=enc.spatial).maps
    cosine = DenseConceptMaps(bb).attribute(None, torch.eye(D)[:D], spatial=enc.spatial).maps  # identity: embeddings
    position_embeddings = cosine[0].flatten(1).T  # (positions, D), unit norm
    torch.testing.assert_close(maps[0].flatten(1).T, formula(layer, position_embeddings), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fixture", ["tiny_vit", "tiny_rn"])
def test_gradcam_equals_textbook_gradcam_for_every_kind(kind, fixture, request):
    bb = request.getfixturevalue(fixture)
    layer = make_layer(kind)
    torch.manual_seed(0)
    pixels = torch.randn(1, 3, *bb.image_size)
    cam = GradCAM(bb)
    maps = cam.attribute(pixels, layer).maps[0]
    for k in range(K):
        act = cam._trunk(pixels).detach().requires_grad_(True)
        score = layer(F.normalize(cam._tail(act).float(), dim=-1))[0, k]
        if not score.requires_grad:  # an SAE latent that is off everywhere has no gradient: its map is 0
            assert maps[k].abs().max() == 0
            continue
        (grad,) = torch.autograd.grad(score, act)
        if bb.kind == "vit":
            heat = F.relu(act[0, 1:].detach() @ grad[0, 1:].mean(0))
            heat = heat.reshape(maps.shape[1:])
        else:
            heat = F.relu(torch.einsum("c,chw->hw", grad[0].mean(dim=(1, 2)), act[0].detach()))
        torch.testing.assert_close(maps[k], heat, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_pipeline_saliency_runs_for_every_kind(kind, tiny_vit):
    from helpers import shape_image
    import io

    model, _ = make_model(kind)
    pipe = Pipeline(tiny_vit, model)
    buf = io.BytesIO()
    shape_image("red", 1).save(buf, format="PNG")
    enc = pipe.encode(buf.getvalue(), "red.png")
    for method in ("dense", "dense-surgery", "gradcam"):
        maps = pipe.saliency(enc, method, ["concept 4", "concept 0"], out_size=(40, 30))
        assert maps.shape == (2, 30, 40) and torch.isfinite(maps).all()


def test_the_demo_bundle_is_the_current_format_and_loads():
    """(Version 1 bundles, which the demo shipped until 2026-12-01, load too: the test below.)"""
    from cbm_core.core.bundle import FORMAT_VERSION

    manifest = json.loads((DEMO_BUNDLE / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    model = load_bundle(DEMO_BUNDLE)
    assert model.concept_layer.kind == "text_cosine" and model.n_concepts == 26


def test_a_hand_written_version_1_bundle_loads_as_a_cosine_model(tmp_path):
    model, train = make_model("text_cosine")
    path = save_bundle(model, tmp_path / "v2")
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path / "tensors.safetensors"))
    tensors["concept_vectors"] = tensors.pop("concept_layer.vectors")
    save_file(tensors, str(path / "tensors.safetensors"))
    m = json.loads((path / "manifest.json").read_text())
    del m["integrity"], m["concept_layer"]
    m["format_version"] = 1
    m["tensors"]["concept_vectors"] = m["tensors"].pop("concept_layer.vectors")
    m["integrity"] = {"tensors_sha256": _sha((path / "tensors.safetensors").read_bytes()),
                      "manifest_sha256": _sha(_canonical(m))}
    (path / "manifest.json").write_text(json.dumps(m))
    loaded = load_bundle(path)
    torch.testing.assert_close(loaded.explain_features(train[:5]).logits, model.explain_features(train[:5]).logits)


@pytest.mark.parametrize("method", ["gradcam", "layercam"])
def test_a_saturated_probability_still_gets_its_map(method, tiny_rn):
    """A sigmoid concept the model is sure of has p = 1.0 in float32, whose gradient is 0; maps read its log-odds
    (as Grad-CAM reads a class's score before its softmax), so its map is the same as the projection's and not
    blank."""
    from cbm_core.explain.saliency import LayerCAM

    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(K, D, generator=g) * 5, torch.full((K,), 100.0)  # logits 70-130: p is 1.0
    probs, logits = LinearProjection(weight, bias, "sigmoid"), LinearProjection(weight, bias, "none")
    pixels = torch.randn(1, 3, *tiny_rn.image_size, generator=g)
    e = F.normalize(tiny_rn.encode_images(pixels).embeddings, dim=-1).requires_grad_(True)
    p = probs(e)
    p.sum().backward()
    assert bool((p == 1.0).all()) and float(e.grad.abs().max()) == 0.0  # through the sigmoid: no gradient at all
    cam = (GradCAM if method == "gradcam" else LayerCAM)(tiny_rn)
    maps = cam.attribute(pixels, probs).maps[0]
    torch.testing.assert_close(maps, cam.attribute(pixels, logits).maps[0])
    assert float(maps.max()) > 0
    assert probs.for_maps() is not probs and logits.for_maps() is logits  # a ReLU or no activation stays


def test_the_supervised_demo_draws_a_map_for_every_present_part():
    """On the shipped concept-supervised bundle, the default maps of the parts present in real demo birds are never
    blank (before maps read log-odds, 29 of 129 were: the concepts it was surest of)."""
    from cbm_core.demo.paths import ASSETS_DIR
    from cbm_core.demo.reference_images import part_annotations

    pipe = Pipeline.from_bundle(ASSETS_DIR / "demo_supervised_bundle", device="cpu")
    blank = []
    for name, png, parts in part_annotations(8):
        maps = pipe.concept_maps(pipe.encode(png, name), concepts=list(parts)).maps[0]
        blank += [c for c, m in zip(parts, maps) if float(m.max()) <= 0]
    assert not blank, blank
