"""Feature extraction over an image folder (decode + preprocess + encode, DataLoader workers) vs the
bare model on pre-decoded, preprocessed tensors — img/s and the ratio (budget >= 0.8 where data
loading has the cores).

    python bench/feature_extraction.py [--n 2000]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import record  # noqa: E402
from cbm_core import ImageDataset, decode_image, extract_features, load_backbone  # noqa: E402
from cbm_core.demo.world import export  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--model", default="demo")
    args = ap.parse_args()
    bb = load_backbone(args.model if args.model == "demo" else f"{args.model}:random")
    with tempfile.TemporaryDirectory() as tmp:
        manifest = export(tmp, {"train": args.n})
        ds = ImageDataset.from_csv(manifest)
        pixels = bb.preprocess_images([decode_image(r.path) for r in ds.records])
        t = time.perf_counter()
        bb.encode_images(pixels, batch_size=64)
        bare = args.n / (time.perf_counter() - t)
        rows = []
        for workers in sorted({0, 1, min(2, os.cpu_count() or 1), min(4, os.cpu_count() or 1)}):
            t = time.perf_counter()
            extract_features(bb, ds, use_cache=False, num_workers=workers, batch_size=64)
            ours = args.n / (time.perf_counter() - t)
            rows.append({"device": str(bb.device), "images": args.n, "workers": workers, "bare_img_s": bare,
                         "pipeline_img_s": ours, "ratio": ours / bare, "cpu_cores": os.cpu_count()})
    record(f"feature_extraction_{args.model}_{bb.device.type}", rows)


if __name__ == "__main__":
    main()
