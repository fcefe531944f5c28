import io

import pytest
import torch

from cbm_core.core.concept_layer import TextCosine
from cbm_core.core.concepts import ConceptBank
from cbm_core.errors import BackboneError, ImageError
from cbm_core.core.interventions import Intervention
from cbm_core.core.model import ConceptBottleneckModel, ConceptStats
from cbm_core.explain.pipeline import Pipeline
from helpers import shape_image


def _model_for(bb):
    bank = ConceptBank(("red", "blue", "round"))
    vectors = bank.embed(bb)
    g = torch.Generator().manual_seed(0)
    train = torch.nn.functional.normalize(torch.randn(50, bb.embed_dim, generator=g), dim=1)
    return ConceptBottleneckModel(bb.spec, bank, TextCosine(vectors), ("a", "b"), ConceptStats.from_scores(bank.names, train @ vectors.T),
                                  torch.randn(2, 3, generator=g), torch.zeros(2))


def _png(img):
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("fixture", ["tiny_vit", "tiny_rn"])
def test_explain_bytes_and_paths_agree_and_are_cached(fixture, request, tmp_path):
    bb = request.getfixturevalue(fixture)
    pipe = Pipeline(bb, _model_for(bb))
    img = shape_image("red", 1)
    img.save(tmp_path / "x.png")
    a = pipe.explain(_png(img))
    b = pipe.explain(str(tmp_path / "x.png"))
    torch.testing.assert_close(a.logits, b.logits)
    enc = pipe.encode(_png(img))
    assert enc is pipe.encode(_png(img)) and enc.spatial is not None and enc.size == (48, 48)
    off = pipe.explain(_png(img), Intervention().ablate("red"))
    k = 0
    torch.testing.assert_close(a.logits - off.logits, a.contributions()[:, :, k])


def test_bad_upload_raises_and_keeps_the_cache(tiny_vit):
    pipe = Pipeline(tiny_vit, _model_for(tiny_vit))
    pipe.encode(_png(shape_image("blue", 2)))
    with pytest.raises(ImageError):
        pipe.explain(b"\x89PNG\r\n\x1a\n broken")
    assert len(pipe.cache) == 1


def test_backbone_model_mismatch(tiny_vit, hand_model):
    with pytest.raises(BackboneError, match="6-d"):
        Pipeline(tiny_vit, hand_model[0])


@pytest.mark.parametrize("fixture", ["tiny_vit", "tiny_rn"])
def test_dense_maps_are_the_towers_own_grid_from_the_cached_features(fixture, request):
    """The default maps cost one matrix product on the features the encoding cached: the tower's own grid
    (no enlarged re-run of the trunk), the same maps the reliability scores read, aligned to the picture."""
    from cbm_core.explain.reliability import input_maps
    from cbm_core.explain.saliency import DenseConceptMaps

    bb = request.getfixturevalue(fixture)
    pipe = Pipeline(bb, _model_for(bb))
    enc = pipe.encode(_png(shape_image("blue", 2, size=80)))
    maps = pipe.concept_maps(enc, "dense", ["red", "round"])
    assert maps.maps.shape == (1, 2, *enc.spatial.shape[-2:])
    layer = pipe.model.concept_layer.subset([0, 2])
    from_pixels = DenseConceptMaps(bb).attribute(enc.pixels[None], layer)  # encoding afresh gives the same maps
    torch.testing.assert_close(maps.maps, from_pixels.maps, atol=1e-5, rtol=1e-4)
    assert pipe.saliency(enc, "dense", ["red", "round"]).shape == (2, 80, 80)
    assert input_maps(pipe, enc, ["red", "round"]).shape == (2, *enc.pixels.shape[-2:])
    with pytest.raises(ValueError, match="Unknown saliency method"):
        pipe.concept_maps(enc, "occlusion")


def test_the_fine_stage_maps_are_offered_for_resnet_towers_only_and_are_finer(tiny_vit, tiny_rn):
    from cbm_core.explain.pipeline import MAP_METHODS
    from cbm_core.explain.saliency import GradCAM, LayerCAM

    vit, rn = Pipeline(tiny_vit, _model_for(tiny_vit)), Pipeline(tiny_rn, _model_for(tiny_rn))
    assert set(rn.map_methods()) == set(MAP_METHODS) and rn.default_map_method == "layercam-fine"
    assert rn.map_methods()[:2] == ("layercam-fine", "gradcam-fine")
    assert not {"layercam-fine", "gradcam-fine"} & set(vit.map_methods()) and vit.default_map_method == "dense"
    enc = rn.encode(_png(shape_image("red", 3, size=64)))
    layer = rn.model.concept_layer.subset([0, 2])
    fine = rn.concept_maps(enc, "gradcam-fine", ["red", "round"])
    assert fine.maps.shape[-2:] == tuple(4 * n for n in enc.spatial.shape[-2:])
    torch.testing.assert_close(fine.maps, GradCAM(tiny_rn, layer=2).attribute(enc.pixels[None], layer).maps)
    finest = rn.concept_maps(enc, None, ["red", "round"])  # the default: LayerCAM at stage 1
    assert finest.method == "layercam" and finest.maps.shape[-2:] == tuple(8 * n for n in enc.spatial.shape[-2:])
    torch.testing.assert_close(finest.maps, LayerCAM(tiny_rn, layer=1).attribute(enc.pixels[None], layer).maps)
    assert rn.saliency(enc, "gradcam-fine", ["red"]).shape == (1, 64, 64)
    with pytest.raises(ValueError, match="for this vit tower; use dense, dense-surgery, gradcam"):
        vit.concept_maps(vit.encode(_png(shape_image("red", 3))), "gradcam-fine")
    from cbm_core.errors import SaliencyError
    from cbm_core.report.export import explanation_report

    with pytest.raises(SaliencyError, match="for this vit tower"):  # a user-facing error, before any image is read
        explanation_report(vit, {"x.png": b"not read"}, saliency="gradcam-fine")
