"""Saliency speed per image: dense maps, batched Grad-CAM and LayerCAM vs one plain forward pass, same run.

    python bench/saliency.py                      # CPU, the demo model
    python bench/saliency.py --model ViT-B-32     # a ViT-B/32-sized tower, random weights (GPU when present)

Budgets: dense maps <= 1.5x a forward pass; batched gradient maps <= 4x.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import record, timeit  # noqa: E402
from cbm_core import DenseConceptMaps, GradCAM, LayerCAM, load_backbone  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo", help="'demo' or an open_clip name (random weights)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    spec = args.model if args.model == "demo" else f"{args.model}:random"
    bb = load_backbone(spec, device=args.device)
    pixels = torch.randn(1, 3, *bb.image_size)
    rows = []
    for K in (16, 128, 512):
        vectors = F.normalize(torch.randn(K, bb.embed_dim), dim=1)
        forward = timeit(lambda: bb.encode_images(pixels), repeat=args.repeat)
        with_spatial = timeit(lambda: bb.encode_images(pixels, with_spatial=True), repeat=args.repeat)
        enc = bb.encode_images(pixels, with_spatial=True)
        dense_cached = timeit(lambda: DenseConceptMaps(bb).attribute(None, vectors, spatial=enc.spatial), repeat=args.repeat)
        dense_full = timeit(lambda: DenseConceptMaps(bb).attribute(pixels, vectors), repeat=args.repeat)
        row = {"model": args.model, "device": str(bb.device), "K": K, "forward_ms": forward,
               "forward+spatial_ms": with_spatial, "dense_from_cache_ms": dense_cached, "dense_full_ms": dense_full,
               "dense_ratio": dense_full / forward}
        if bb.kind == "resnet":
            x3 = timeit(lambda: DenseConceptMaps(bb, scale=3).attribute(pixels, vectors), repeat=args.repeat)
            row.update({"dense_x3_ms": x3, "dense_x3_ratio": x3 / forward})
        gc = timeit(lambda: GradCAM(bb).attribute(pixels, vectors), repeat=max(3, args.repeat // 3))
        row.update({"gradcam_batched_ms": gc, "gradcam_ratio": gc / forward})
        if bb.kind == "resnet":  # Grad-CAM at stage 2, and the ResNet default: LayerCAM at stage 1
            fine = timeit(lambda: GradCAM(bb, layer=2).attribute(pixels, vectors), repeat=max(3, args.repeat // 3))
            finest = timeit(lambda: LayerCAM(bb, layer=1).attribute(pixels, vectors), repeat=max(3, args.repeat // 3))
            row.update({"gradcam_fine_ms": fine, "gradcam_fine_ratio": fine / forward,
                        "layercam_fine_ms": finest, "layercam_fine_ratio": finest / forward})
        if K == 16:
            loop = timeit(lambda: [GradCAM(bb).attribute(pixels, vectors[k:k + 1]) for k in range(K)], repeat=3, warmup=1)
            row["gradcam_loop16_ms"] = loop
        rows.append(row)
    record(f"saliency_{args.model}_{bb.device.type}", rows)


if __name__ == "__main__":
    main()
