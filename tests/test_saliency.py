import copy

import pytest
import torch
import torch.nn.functional as F

from cbm_core.explain.saliency import DenseConceptMaps, GradCAM, LayerCAM, Occlusion, SaliencyMaps, class_maps


@pytest.fixture
def linear_vit(tiny_vit):
    """The tiny ViT with an identity head (ln_post without affine change, proj = I), so the dense
    map of a concept is exactly the cosine of each planted token with the concept vector."""
    bb = copy.copy(tiny_vit)
    bb.model = copy.deepcopy(tiny_vit.model)
    visual = bb.model.visual
    with torch.no_grad():
        visual.ln_post.weight.fill_(1.0)
        visual.ln_post.bias.zero_()
        visual.proj.copy_(torch.eye(visual.proj.shape[0]))
    return bb


def _standardised(v):
    v = v - v.mean()
    return v / v.std(unbiased=False)  # LayerNorm leaves such a vector unchanged


def test_dense_map_is_known_analytically(linear_vit):
    D = 32
    g = torch.Generator().manual_seed(0)
    concepts = F.normalize(torch.stack([_standardised(torch.randn(D, generator=g)) for _ in range(3)]), dim=1)
    spatial = torch.stack([_standardised(torch.randn(D, generator=g)) for _ in range(16)]).T.reshape(1, D, 4, 4)
    spatial[0, :, 2, 1] = _standardised(concepts[1])  # plant concept 1 at row 2, column 1
    maps = DenseConceptMaps(linear_vit).attribute(None, concepts, spatial=spatial)
    expected = torch.einsum("dhw,kd->khw", F.normalize(spatial[0], dim=0), concepts)
    torch.testing.assert_close(maps.maps[0], expected, atol=1e-4, rtol=0)
    assert maps.maps[0, 1].argmax() == 2 * 4 + 1 and maps.maps[0, 1, 2, 1] == pytest.approx(1.0, abs=1e-4)
    surgery = DenseConceptMaps(linear_vit, surgery=True).attribute(None, concepts, spatial=spatial).maps
    torch.testing.assert_close(surgery.mean(1), torch.zeros(1, 4, 4), atol=1e-5, rtol=0)


@pytest.mark.parametrize("fixture", ["tiny_vit", "tiny_rn"])
def test_dense_maps_match_the_models_own_embedding_path(fixture, request):
    bb = request.getfixturevalue(fixture)
    pixels = torch.randn(2, 3, *bb.image_size)
    enc = bb.encode_images(pixels, with_spatial=True)
    vectors = F.normalize(torch.randn(5, bb.embed_dim), dim=1)
    maps = DenseConceptMaps(bb).attribute(None, vectors, spatial=enc.spatial).maps
    torch.testing.assert_close(DenseConceptMaps(bb).attribute(pixels, vectors).maps, maps, atol=1e-5, rtol=0)
    assert maps.shape == (2, 5, *enc.spatial.shape[2:])
    assert maps.abs().max() <= 1.0 + 1e-5
    if bb.kind == "vit":
        # mean-pooling tokens is not the class token, but every position must be a real cosine
        tokens = enc.spatial.flatten(2).transpose(1, 2)
        emb = F.normalize(bb.model.visual.ln_post(tokens) @ bb.model.visual.proj, dim=-1)
        torch.testing.assert_close(maps.flatten(2), torch.einsum("nld,kd->nkl", emb, vectors), atol=1e-5, rtol=0)


def plain_map(cam: GradCAM, pixels: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """The textbook map of one concept's cosine score, one backward pass, (h, w). Grad-CAM weights each
    channel by its gradient's spatial mean; LayerCAM weights each position by its own positive gradient."""
    act = cam._trunk(pixels).detach().requires_grad_(True)
    score = F.cosine_similarity(cam._tail(act).float(), vector[None]).sum()
    (grad,) = torch.autograd.grad(score, act)
    vit = cam.backbone.kind == "vit"
    grad, act = (grad[0, 1:], act[0, 1:].detach()) if vit else (grad[0], act[0].detach())  # ViT: no class token
    channels = -1 if vit else 0
    if isinstance(cam, LayerCAM):
        heat = F.relu((F.relu(grad) * act).sum(channels))
    else:
        weights = grad.mean(0) if vit else grad.mean(dim=(1, 2))
        heat = F.relu(act @ weights) if vit else F.relu(torch.einsum("c,chw->hw", weights, act))
    if vit:
        side = int(round(heat.numel() ** 0.5))
        return heat.reshape(side, side)
    return heat


@pytest.mark.parametrize("method,fixture,layer", [
    (GradCAM, "tiny_vit", None), (GradCAM, "tiny_rn", None), (GradCAM, "tiny_vit", 0), (GradCAM, "tiny_rn", 2),
    (LayerCAM, "tiny_vit", None), (LayerCAM, "tiny_rn", 1)])
@pytest.mark.parametrize("k", [6, 40])  # fewer and more concepts than the embedding's 32 dimensions
def test_batched_maps_equal_the_per_concept_loop(method, fixture, layer, k, request):
    bb = request.getfixturevalue(fixture)
    torch.manual_seed(k)
    pixels = torch.randn(1, 3, *bb.image_size)
    vectors = F.normalize(torch.randn(k, bb.embed_dim), dim=1)
    cam = method(bb, layer=layer)
    batched = cam.attribute(pixels, vectors)
    looped = torch.stack([plain_map(cam, pixels, vectors[j]) for j in range(k)])[None]
    torch.testing.assert_close(batched.maps, looped, atol=1e-5, rtol=1e-4)
    assert batched.method == method.method and batched.maps.shape[:2] == (1, k)
    assert (batched.maps >= 0).all() and batched.maps.amax() > 0
    if layer == 1:  # stage 1 of a ResNet: 8x the last stage's grid
        assert batched.maps.shape[-1] == 8 * GradCAM(bb).attribute(pixels, vectors[:1]).maps.shape[-1]


def test_gradcam_at_an_earlier_resnet_stage_has_a_finer_grid(tiny_rn):
    pixels = torch.randn(1, 3, *tiny_rn.image_size)
    vectors = F.normalize(torch.randn(2, tiny_rn.embed_dim), dim=1)
    last, earlier = (GradCAM(tiny_rn, layer=n).attribute(pixels, vectors).maps for n in (4, 3))
    assert earlier.shape[-1] == 2 * last.shape[-1]
    with pytest.raises(ValueError, match="stage, 1-4"):
        GradCAM(tiny_rn, layer=5)


def test_gradcam_leaves_no_state_on_the_shared_model(tiny_vit):
    before = {k: v.clone() for k, v in tiny_vit.model.state_dict().items()}
    GradCAM(tiny_vit).attribute(torch.randn(1, 3, 32, 32), F.normalize(torch.randn(3, 32), dim=1))
    assert all(p.grad is None and not p.requires_grad for p in tiny_vit.model.parameters())
    assert all(torch.equal(before[k], v) for k, v in tiny_vit.model.state_dict().items())
    assert not any(m._forward_hooks or m._backward_hooks for m in tiny_vit.model.modules())


def test_occlusion_finds_the_patch_that_carries_the_concept(linear_vit):
    bb = linear_vit
    pixels = torch.zeros(1, 3, 32, 32)
    pixels[0, :, 8:16, 16:24] = 2.0  # a bright patch in one 8x8 cell
    v = bb.encode_images(pixels).embeddings[0] - bb.encode_images(torch.zeros(1, 3, 32, 32)).embeddings[0]
    heat = Occlusion(bb, window=8, stride=8).attribute(pixels, v).maps[0, 0]
    assert heat.shape == (32, 32)
    y, x = divmod(int(heat.argmax()), 32)
    assert 8 <= y < 16 and 16 <= x < 24


def test_maps_are_aligned_to_the_original_image_after_the_centre_crop():
    m = torch.zeros(1, 1, 4, 4)
    m[0, 0, 0, 0] = 1.0  # top-left cell of the model's input
    maps = SaliencyMaps(m, (32, 32), "test")
    out = maps.to_image((200, 100))  # landscape: the model saw the central 100 x 100 square
    assert out.shape == (1, 1, 100, 200)
    assert out[..., :, :50].abs().sum() == 0 and out[..., :, 150:].abs().sum() == 0
    y, x = divmod(int(out[0, 0].argmax()), 200)
    assert 50 <= x < 75 and 0 <= y < 25
    small = maps.to_image((200, 100), out_size=(20, 10))
    assert small.shape == (1, 1, 10, 20)


def test_class_maps_split_evidence_for_and_against(hand_model):
    maps = SaliencyMaps(torch.rand(1, 4, 3, 3), (32, 32), "test")
    weight = torch.tensor([1.0, -2.0, 0.0, 0.5])
    z = torch.tensor([[1.0, 1.0, 3.0, -2.0]])  # contributions: +1, -2, 0, -1
    pos, neg = class_maps(maps, weight, z)
    m = maps.maps / maps.maps.flatten(2).amax(-1)[..., None, None]
    torch.testing.assert_close(pos[0], m[0, 0])
    torch.testing.assert_close(neg[0], 2 * m[0, 1] + m[0, 3])


def test_gradcam_falls_back_to_replication_where_batched_gradients_are_not_supported(tiny_rn, monkeypatch):
    pixels = torch.randn(1, 3, *tiny_rn.image_size)
    vectors = F.normalize(torch.randn(40, tiny_rn.embed_dim), dim=1)
    batched = GradCAM(tiny_rn).attribute(pixels, vectors).maps
    real_grad = torch.autograd.grad

    def no_vmap(*args, is_grads_batched=False, **kwargs):  # as with a fused kernel that has no vmap rule
        if is_grads_batched:
            raise RuntimeError("Batching rule not implemented")
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", no_vmap)
    torch.testing.assert_close(GradCAM(tiny_rn).attribute(pixels, vectors).maps, batched, atol=1e-5, rtol=1e-4)
