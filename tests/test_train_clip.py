"""The demo tower's training: the knobs for local colour evidence do what they say, and a run
stopped at its time limit and resumed from its checkpoint ends with the same weights as one
that never stopped."""
import random

import numpy as np
import torch
from safetensors.torch import load_file

from cbm_core.demo.train_clip import COLOUR_PARTS, main, read_checkpoint, recoloured, training_bird
from cbm_core.demo.world import SPECIES, render, sample_bird


def test_decorrelated_birds_draw_part_colours_independently_and_keep_the_rest():
    birds = [training_bird(0, i, decorrelate=0.5) for i in range(400)]
    plain = [sample_bird(0, i, "train") for i in range(400)]
    changed = [b for b, p in zip(birds, plain) if b != p]
    assert 0.35 < len(changed) / len(birds) < 0.65  # about half were redrawn (some redraws equal the typical)
    for b, p in zip(birds, plain):  # species, shapes, background and pose stay
        assert (b.species, b.background, b.pose) == (p.species, p.background, p.pose)
        assert {a: v for a, v in b.attributes.items() if a not in COLOUR_PARTS} == \
               {a: v for a, v in p.attributes.items() if a not in COLOUR_PARTS}
    atypical = sum(b.attributes[a] != SPECIES[b.species].typical[a] for b in birds for a in COLOUR_PARTS)
    assert atypical > sum(p.attributes[a] != SPECIES[p.species].typical[a] for p in plain for a in COLOUR_PARTS) * 2
    assert [training_bird(0, i, 0.0) for i in range(20)] == plain[:20]  # off: the shipped recipe's birds


def test_a_recoloured_twin_differs_only_at_that_part():
    rng = random.Random(0)
    for i in range(6):
        bird = sample_bird(0, i, "train")
        twin, part = recoloured(bird, rng)
        assert twin.attributes[part] != bird.attributes[part]
        a, masks = render(bird, 96)
        b, _ = render(twin, 96)
        diff = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max(axis=2) > 8
        assert diff.any()
        near = masks[part] | (masks["crest"] if part == "crown" else False)  # a crest wears the crown's colour
        # allow the anti-aliased rim: pixels within 2 px of the part (a 5 x 5 dilation)
        rim = torch.nn.functional.max_pool2d(torch.from_numpy(near).float()[None, None], 5, stride=1, padding=2)[0, 0] > 0
        assert diff[~rim.numpy()].mean() < 0.002, part


def _run(tmp_path, name, *extra):
    out = tmp_path / name
    main(["--out", str(out), "--n-train", "64", "--n-val", "16", "--batch-size", "16", "--epochs", "1.0",
          "--device", "cpu", "--threads", "1", "--decorrelate", "0.3", "--part-captions", "0.3",
          "--recolour-pairs", "4", *extra])
    return load_file(str(next(out.glob("*.safetensors"))))


def test_a_stopped_run_resumes_to_the_same_weights(tmp_path):
    whole = _run(tmp_path, "whole")
    ckpt = tmp_path / "ckpt"
    _run(tmp_path, "first", "--checkpoint", str(ckpt), "--minutes", "0")  # stops after one step
    assert read_checkpoint(ckpt)[1]["step"] == 1
    resumed = _run(tmp_path, "resumed", "--checkpoint", str(ckpt), "--resume")
    assert whole.keys() == resumed.keys()
    for k in whole:
        assert torch.equal(whole[k], resumed[k]), k


def test_resuming_with_other_options_is_refused(tmp_path):
    import pytest

    ckpt = tmp_path / "ckpt"
    _run(tmp_path, "first", "--checkpoint", str(ckpt), "--minutes", "0")
    with pytest.raises(SystemExit, match="same options"):
        main(["--out", str(tmp_path / "x"), "--n-train", "64", "--n-val", "16", "--batch-size", "16",
              "--epochs", "1.0", "--device", "cpu", "--checkpoint", str(ckpt), "--resume"])


def test_the_vit_tower_exports_a_model_that_loads_with_a_12_by_12_grid(tmp_path):
    from cbm_core.backbone import load_backbone

    out = tmp_path / "vit"
    main(["--out", str(out), "--tower", "vit-p8", "--n-train", "32", "--n-val", "16", "--batch-size", "16",
          "--epochs", "0.5", "--device", "cpu", "--threads", "1"])
    bb = load_backbone(f"local-dir:{out}", device="cpu")
    pixels = torch.rand(2, 3, 96, 96)
    enc = bb.encode_images(pixels, with_spatial=True)
    assert enc.spatial.shape[-2:] == (12, 12)
    assert torch.isfinite(enc.embeddings).all()


def test_the_resnet_tower_trains_at_another_input_size_and_refuses_one_its_grid_cannot_divide(tmp_path):
    """A finer last grid for a ResNet means a larger input (its grid is 1/32 of it): the birds are rendered at
    that size, and the exported model loads with the larger grid."""
    import pytest

    from cbm_core.backbone import load_backbone

    out = tmp_path / "rn64"
    main(["--out", str(out), "--image-size", "64", "--n-train", "32", "--n-val", "16", "--batch-size", "16",
          "--epochs", "0.5", "--device", "cpu", "--threads", "1", "--recolour-pairs", "2"])
    bb = load_backbone(f"local-dir:{out}", device="cpu")
    assert tuple(bb.image_size) == (64, 64)
    enc = bb.encode_images(torch.rand(1, 3, 64, 64), with_spatial=True)
    assert enc.spatial.shape[-2:] == (2, 2)
    with pytest.raises(SystemExit, match="multiple of 32"):
        main(["--out", str(tmp_path / "x"), "--image-size", "100"])


def test_part_coverage_is_each_cells_share_of_the_part():
    from cbm_core.demo.train_clip import GROUND_PARTS, part_coverage

    _, masks = render(sample_bird(0, 3, "train"), 96)
    cover = part_coverage(masks, 24)
    assert cover.shape == (len(GROUND_PARTS), 24, 24) and cover.dtype == np.uint8
    for p, part in enumerate(GROUND_PARTS):  # a 4 x 4 cell's share, in 1/255ths
        assert abs(cover[p].astype(float).sum() / 255 * 16 - masks[part].sum()) < 24 * 24 * 16 / 255, part
        assert cover[p][~masks[part].reshape(24, 4, 24, 4).any(axis=(1, 3))].max() == 0, part


def test_the_grounding_loss_moves_a_concepts_layercam_onto_its_part():
    """A few optimiser steps on the grounding loss alone move a tiny ResNet's stage-1 map of one concept onto
    a planted square, from about its share of the image; the app's LayerCAM then peaks there."""
    import open_clip

    from cbm_core.backbone import Backbone, register_model_config
    from cbm_core.demo.train_clip import MODEL_CFG, grounding_loss
    from cbm_core.explain.saliency import LayerCAM

    cfg = {**MODEL_CFG, "vision_cfg": {**MODEL_CFG["vision_cfg"], "image_size": 64}}
    register_model_config("toybirds-rn-test64", cfg)
    torch.manual_seed(0)
    model = open_clip.create_model("toybirds-rn-test64")
    pixels = torch.randn(4, 3, 64, 64)
    cover = torch.zeros(4, 16, 16)
    cover[:, 2:6, 9:13] = 1.0  # the "part": 16 of 256 cells
    text = torch.nn.functional.normalize(torch.randn(1, MODEL_CFG["embed_dim"]), dim=-1).expand(4, -1)
    opt = torch.optim.Adam(model.visual.parameters(), lr=3e-3)
    shares = []
    for _ in range(40):
        loss, share = grounding_loss(model.visual, pixels, cover, text, stage=1)
        shares.append(float(share))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert shares[0] < 0.25 and shares[-1] > 0.8, (shares[0], shares[-1])
    model.eval()
    bb = Backbone("test", model, None, None, "cpu", "fp32")
    maps = LayerCAM(bb, layer=1).attribute(pixels[:1], text[:1]).maps[0, 0]
    y, x = divmod(int(maps.argmax()), 16)
    assert 2 <= y < 6 and 9 <= x < 13


def test_a_grounded_fine_tune_starts_from_a_saved_tower_and_records_its_recipe(tmp_path):
    import json

    import pytest

    base = tmp_path / "base"
    _run(tmp_path, "base")
    tuned = _run(tmp_path, "tuned", "--init", str(base), "--ground", "1.0", "--ground-batch", "4", "--lr", "1e-4")
    record = json.loads((tmp_path / "tuned" / "training.json").read_text())
    assert record["init"] == str(base) and record["ground"] == 1.0 and record["init_training"]["steps_run"] == 4
    before = load_file(str(base / "open_clip_model.safetensors"))
    assert before.keys() == tuned.keys()
    assert any(not torch.equal(before[k], tuned[k]) for k in before)  # trained, from the saved weights
    with pytest.raises(SystemExit, match="ResNet tower"):
        main(["--out", str(tmp_path / "x"), "--tower", "vit-p8", "--ground", "1.0"])
    with pytest.raises(SystemExit, match="is not this run's"):  # a tower of another shape is refused, not half-loaded
        main(["--out", str(tmp_path / "y"), "--init", str(base), "--image-size", "64", "--n-train", "32"])
