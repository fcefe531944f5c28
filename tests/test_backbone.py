import pytest
import torch
from PIL import Image

from cbm_core.backbone import export_local_dir, load_backbone, parse_spec
from cbm_core.errors import BackboneError, ConceptError
from conftest import TINY_VIT


@pytest.mark.parametrize("fixture", ["tiny_vit", "tiny_rn"])
def test_encodings_are_unit_norm_and_keep_the_spatial_map(fixture, request):
    bb = request.getfixturevalue(fixture)
    pixels = bb.preprocess_images([Image.new("RGB", (50, 70), (200, 20, 20)), Image.new("RGB", (30, 30), (0, 0, 0))])
    enc = bb.encode_images(pixels, with_spatial=True)
    assert enc.embeddings.shape == (2, bb.embed_dim)
    torch.testing.assert_close(enc.embeddings.norm(dim=1), torch.ones(2))
    assert enc.spatial.ndim == 4 and enc.spatial.shape[0] == 2
    plain = bb.encode_images(pixels)
    assert plain.spatial is None
    torch.testing.assert_close(plain.embeddings, enc.embeddings)


def test_small_batches_give_the_same_embeddings(tiny_vit):
    pixels = torch.randn(5, 3, 32, 32)
    torch.testing.assert_close(tiny_vit.encode_images(pixels, batch_size=2).embeddings,
                               tiny_vit.encode_images(pixels).embeddings, atol=1e-5, rtol=1e-5)


def test_text_embeddings_are_cached_and_templates_averaged(tiny_vit):
    a = tiny_vit.encode_texts(["red wing", "blue crown"])
    b = tiny_vit.encode_texts(["blue crown", "red wing"])
    torch.testing.assert_close(a, b.flip(0))
    avg = tiny_vit.embed_prompts(["red wing"], ["a photo of {}.", "{}"])
    parts = tiny_vit.encode_texts(["a photo of red wing.", "red wing"]).mean(0)
    torch.testing.assert_close(avg[0], parts / parts.norm())
    with pytest.raises(ConceptError, match="placeholder"):
        tiny_vit.embed_prompts(["x"], ["no slot"])


def test_bf16_precision_encodes(tiny_configs):
    bb = load_backbone("tiny-vit:random", device="cpu", precision="bf16")
    enc = bb.encode_images(torch.randn(2, 3, 32, 32))
    assert enc.embeddings.dtype == torch.float32 and torch.isfinite(enc.embeddings).all()


@pytest.mark.parametrize("spec, message", [
    ("ViT-B-33:openai", "Unknown open_clip model 'ViT-B-33'.*ViT-B-32"),
    ("ViT-B-32", "names no weights"),
    ("ViT-B-32:no-such-tag", "neither a pretrained tag"),
    ("", "empty"),
    ("local-dir:/nonexistent/folder", "no open_clip_config.json"),
])
def test_bad_specs_fail_clearly(spec, message):
    with pytest.raises(BackboneError, match=message):
        load_backbone(spec, device="cpu")


def test_missing_weights_offline_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CBM_CACHE_DIR", str(tmp_path))
    with pytest.raises(BackboneError, match="ViT-B-32:openai.*not in the local cache.*network"):
        load_backbone("ViT-B-32:openai", device="cpu")


def test_local_dir_and_checkpoint_file_round_trip(tiny_vit, tmp_path):
    folder = export_local_dir(tiny_vit.model, TINY_VIT, tmp_path / "tiny")
    from_dir = load_backbone(f"local-dir:{folder}", device="cpu")
    from_file = load_backbone(f"tiny-vit:{folder / 'open_clip_model.safetensors'}", device="cpu")
    pixels = torch.randn(2, 3, 32, 32)
    want = tiny_vit.encode_images(pixels).embeddings
    torch.testing.assert_close(from_dir.encode_images(pixels).embeddings, want)
    torch.testing.assert_close(from_file.encode_images(pixels).embeddings, want)
    assert from_dir.fingerprint != tiny_vit.fingerprint


def test_parse_spec():
    assert parse_spec("ViT-B-32:openai") == ("ViT-B-32", "openai")
    assert parse_spec("ViT-B-32:random") == ("ViT-B-32", None)
    assert parse_spec("hf-hub:org/repo") == ("hf-hub:org/repo", None)
    assert parse_spec("demo")[0].startswith("local-dir:")


def test_compiled_single_image_path_gives_the_eager_encodings(tiny_configs):
    torch.manual_seed(0)
    eager = load_backbone("tiny-rn:random", device="cpu")
    torch.manual_seed(0)
    compiled = load_backbone("tiny-rn:random", device="cpu", compile=True)
    assert compiled.compiled and not eager.compiled
    one = torch.randn(1, 3, *eager.image_size)
    a, b = compiled.encode_images(one, with_spatial=True), eager.encode_images(one, with_spatial=True)
    torch.testing.assert_close(a.embeddings, b.embeddings, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a.spatial, b.spatial, atol=1e-5, rtol=1e-4)
    many = torch.randn(3, 3, *eager.image_size)  # batches take the eager path
    torch.testing.assert_close(compiled.encode_images(many).embeddings, eager.encode_images(many).embeddings)
