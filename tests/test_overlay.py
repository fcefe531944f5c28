"""Saliency layers a browser can lay over the picture, and the part of the picture the model saw."""
import numpy as np


def test_a_heat_layer_over_the_picture_looks_like_the_blended_overlay():
    from PIL import Image

    from cbm_core.explain.overlay import heat_layer, overlay

    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8))
    saliency = rng.random((12, 20)).astype(np.float32)
    blended = np.asarray(overlay(picture, saliency, 0.6), dtype=np.float32)
    layer = np.asarray(heat_layer(saliency), dtype=np.float32)
    alpha = 0.6 * layer[..., 3:] / 255.0  # what a browser does with the layer at opacity 0.6
    composited = np.asarray(picture, dtype=np.float32) * (1 - alpha) + layer[..., :3] * alpha
    assert np.abs(composited - blended).max() <= 2.0  # 8-bit rounding of alpha and colour


def test_seen_region_is_the_centre_square_and_the_layer_is_clear_outside_it():
    from cbm_core.explain.overlay import heat_layer, seen_region

    assert seen_region((1200, 800), "shortest") == (200, 0, 800, 800)
    assert seen_region((1200, 800), "shortest", out_size=(300, 200)) == (50, 0, 200, 200)
    assert seen_region((600, 900), "shortest") == (0, 150, 600, 600)
    assert seen_region((1200, 800), "longest") == (0, 0, 1200, 800)
    assert seen_region((96, 96), "shortest") == (0, 0, 96, 96)
    saliency = np.zeros((200, 300), dtype=np.float32)
    saliency[80:120, 140:160] = 1.0  # a hot spot inside the centre square
    layer = np.asarray(heat_layer(saliency, seen_region((1200, 800), "shortest", (300, 200))))
    assert layer[:, :50, 3].max() == 0 and layer[:, 250:, 3].max() == 0  # cropped away: transparent
    assert layer[100, 150, 3] == 255 and layer[10, 60, 3] == round(0.25 * 255)  # the range is the square's
