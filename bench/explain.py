"""Image -> explanation at batch 1: the full path vs a bare ``model.encode_image`` on the same
preprocessed tensor, and a new upload -> prediction + scores + maps for all concepts; eager, then
with the image tower compiled (``load_backbone(..., compile=True)``), in the same run.

    python bench/explain.py            # the demo bundle on this machine
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import record, timeit  # noqa: E402
from cbm_core import Pipeline, decode_image, load_backbone  # noqa: E402
from cbm_core.demo.build_bundle import DEMO_BUNDLE, SAMPLES_DIR  # noqa: E402
from cbm_core.pipeline import EncodingCache  # noqa: E402


def main() -> None:
    eager = Pipeline.from_bundle(DEMO_BUNDLE)
    t = time.perf_counter()
    compiled = Pipeline(load_backbone(eager.model.backbone_spec, compile=True), eager.model)
    compile_s = time.perf_counter() - t
    rows = [measure(eager, "eager"), measure(compiled, "compiled") | {"compile_s": compile_s}]
    record(f"explain_{eager.backbone.device.type}", rows)


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

    def cold_with_maps():
        p, enc = cold()
        p.saliency(enc, "dense")

    maps = timeit(cold_with_maps, repeat=15)
    warm_p, warm_enc = cold()
    warm = timeit(lambda: warm_p.explain_encoded([warm_enc]), repeat=50)
    return {"tower": label, "device": str(bb.device), "bare_encode_ms": bare, "upload_to_explanation_ms": full,
            "ratio_vs_bare": full / bare, "upload_to_explanation_and_all_maps_ms": maps, "warm_explanation_ms": warm}


if __name__ == "__main__":
    main()
