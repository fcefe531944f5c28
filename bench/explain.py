"""Image -> explanation at batch 1: the full path vs a bare ``model.encode_image`` on the same
preprocessed tensor, and a new upload -> prediction + scores + maps for all concepts; eager, then
with the image tower compiled (``load_backbone(..., compile=True)``), in the same run.

    python bench/explain.py                                  # the demo bundle on this machine
    python bench/explain.py --model ViT-B-32 --device cuda   # a ViT-B/32 tower (random weights, bf16 on
                                                             # CUDA) under a random 512-concept x 200-class CBM
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import random_cbm, record, timeit  # noqa: E402
from cbm_core import Pipeline, decode_image, load_backbone, load_bundle  # noqa: E402
from cbm_core.demo.paths import DEMO_BUNDLE, SAMPLES_DIR  # noqa: E402
from cbm_core.explain.pipeline import EncodingCache  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo", help="'demo' (the demo bundle) or an open_clip name (random weights)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--precision", default=None)
    args = ap.parse_args()
    if args.model == "demo":
        model = load_bundle(DEMO_BUNDLE)
        spec = model.backbone_spec
    else:
        spec = f"{args.model}:random"
    backbone = load_backbone(spec, device=args.device, precision=args.precision)
    if args.model != "demo":
        model = random_cbm(512, 200, backbone.embed_dim, spec)
    eager = Pipeline(backbone, model)
    t = time.perf_counter()
    mode = "reduce-overhead" if backbone.device.type == "cuda" else None  # CUDA graphs on a GPU
    compiled = Pipeline(load_backbone(spec, device=args.device, precision=args.precision).compile(mode), model)
    compile_s = time.perf_counter() - t
    rows = [measure(eager, "eager"), measure(compiled, f"compiled ({mode or 'default'})") | {"compile_s": compile_s}]
    record(f"explain_{args.model}_{backbone.device.type}", rows)


def measure(pipe: Pipeline, label: str) -> dict:
    bb = pipe.backbone
    data = sorted(SAMPLES_DIR.glob("*.png"))[0].read_bytes()
    pixels = bb.preprocess_images([decode_image(data)])
    with torch.no_grad():
        bare = timeit(lambda: bb.model.encode_image(pixels.to(bb.device, bb.dtype)), repeat=30)

    def cold():
        p = Pipeline(bb, pipe.model, EncodingCache())  # empty cache: decode + preprocess + encode + explain
        enc = p.encode(data)
        p.explain_encoded([enc])
        return p, enc

    full = timeit(lambda: cold(), repeat=30)

    def cold_with_maps(method):
        p, enc = cold()
        p.saliency(enc, method)

    maps = timeit(lambda: cold_with_maps("dense"), repeat=15)
    default_maps = timeit(lambda: cold_with_maps(None), repeat=15)  # the tower's default (gradcam-fine on a ResNet)
    warm_p, warm_enc = cold()
    warm = timeit(lambda: warm_p.explain_encoded([warm_enc]), repeat=50)
    return {"tower": label, "device": str(bb.device), "precision": bb.precision, "bare_encode_ms": bare, "upload_to_explanation_ms": full,
            "ratio_vs_bare": full / bare, "upload_to_explanation_and_all_maps_ms": maps,
            "default_map_method": pipe.default_map_method, "upload_to_explanation_and_all_default_maps_ms": default_maps,
            "warm_explanation_ms": warm}


if __name__ == "__main__":
    main()
