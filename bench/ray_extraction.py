"""Feature extraction in process vs on a local Ray (issue 15), and the decode cost behind the cost model.

    python bench/ray_extraction.py [--n 2000] [--repeat 2] [--num-cpus 2]

1. The same N Toy Birds PNGs (96 px, ``world.export``) encoded by the demo model three ways, alternating, each
   ``--repeat`` times: ``extract_features`` in process (the DataLoader path, no cache), ``write_store`` in process
   (the same plus shard writes), and ``write_store`` on a fresh local Ray (``num_cpus``), with Ray's start-up
   timed apart from the extraction. The features of the Ray run are checked equal to the in-process ones.
2. Decode + resize cost per image on one core (what the Ray tasks and DataLoader workers do): the Toy Birds
   PNGs at the demo model's 96 px, and ImageNet-like JPEGs (500 x 375, photo-like noise, quality 90) at
   ViT-B/32's 224 px — the number the cost model in docs/PERFORMANCE.md divides the GPU's rate by.

Each row records the 1-minute load average before and after (other engineers share this machine).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import record  # noqa: E402
from cbm_core import ImageDataset, extract_features, load_backbone  # noqa: E402
from cbm_core.data.features import _Decoded, _PixelNormalizer  # noqa: E402
from cbm_core.demo.world import export  # noqa: E402
from cbm_core.data.store import write_store  # noqa: E402


def load() -> float:
    return os.getloadavg()[0]


def decode_cost(dataset: ImageDataset, preprocess, n: int) -> float:
    """Median-free mean ms per image of decode + resize to uint8 (one process, one core), after a warm-up."""
    normalizer = _PixelNormalizer.split(preprocess)
    decoded = _Decoded(dataset, normalizer.to_uint8)
    for i in range(min(20, len(dataset))):
        decoded[i]
    t = time.perf_counter()
    for i in range(n):
        assert decoded[i % len(dataset)][1] is not None
    return (time.perf_counter() - t) * 1000 / n


def imagenet_like(folder: Path, n: int) -> ImageDataset:
    """n JPEGs of 500 x 375 (ImageNet's typical size) made from Toy Birds renders plus seeded noise,
    so the JPEG holds photo-like detail (~100 KB each, like ImageNet's average)."""
    import numpy as np
    from PIL import Image

    from cbm_core.demo.world import render, sample_bird

    (folder / "bird").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    from cbm_core.data.datasets import ImageRecord

    records = []
    for i in range(n):
        img = render(sample_bird(0, i, "train"), 96)[0].resize((500, 375), Image.BICUBIC)
        arr = np.asarray(img, dtype=np.int16) + rng.integers(-40, 40, size=(375, 500, 3))
        path = folder / "bird" / f"{i:04d}.jpg"
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        records.append(ImageRecord(str(path), 0))
    return ImageDataset(tuple(records), ("bird",))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--num-cpus", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before the import: Ray on 127.0.0.1 only
    import ray

    bb = load_backbone("demo", device="cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ds = ImageDataset.from_csv(export(tmp / "birds", {"train": args.n}))
        reference = None
        for rep in range(args.repeat):
            l0 = load()
            t = time.perf_counter()
            feats = extract_features(bb, ds, use_cache=False, batch_size=64)
            s = time.perf_counter() - t
            reference = feats.embeddings
            rows.append({"what": "in-process extract_features (DataLoader, 1 worker)", "images": args.n,
                         "seconds": s, "img_s": args.n / s, "load_before": l0, "load_after": load(), "run": rep})
            l0 = load()
            t = time.perf_counter()
            write_store(bb, ds, tmp / f"store-in-{rep}", batch_size=64)
            s = time.perf_counter() - t
            rows.append({"what": "in-process write_store (+ shards)", "images": args.n, "seconds": s,
                         "img_s": args.n / s, "load_before": l0, "load_after": load(), "run": rep})
            l0 = load()
            t = time.perf_counter()
            ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False,
                     configure_logging=False, runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)}})
            start = time.perf_counter() - t
            t = time.perf_counter()
            store = write_store(bb, ds, tmp / f"store-ray-{rep}", engine="ray", batch_size=64)
            s = time.perf_counter() - t
            ray.shutdown()
            same = torch.equal(store.load().embeddings, reference)
            rows.append({"what": f"local Ray write_store ({args.num_cpus} CPUs: 1 encoder actor, decode tasks)",
                         "images": args.n, "seconds": s, "img_s": args.n / s, "ray_start_s": start,
                         "img_s_with_start": args.n / (s + start), "bit_identical": same,
                         "load_before": l0, "load_after": load(), "run": rep})
        # decode + resize per image on one core
        torch.set_num_threads(1)
        l0 = load()
        ms = decode_cost(ds, bb.preprocess, 500)
        rows.append({"what": "decode+resize 96 px Toy Birds PNG -> 96 px uint8 (1 core)", "ms_per_image": ms,
                     "img_s_per_core": 1000 / ms, "load_before": l0, "load_after": load()})
        import open_clip

        vit_pre = open_clip.image_transform(224, is_train=False)
        jpegs = imagenet_like(tmp / "jpeg", 100)
        size_kb = sum(os.path.getsize(r.path) for r in jpegs.records) / len(jpegs) / 1024
        l0 = load()
        ms = decode_cost(jpegs, vit_pre, 300)
        rows.append({"what": f"decode+resize 500x375 JPEG ({size_kb:.0f} KB) -> 224 px uint8, ViT-B/32 transform (1 core)",
                     "ms_per_image": ms, "img_s_per_core": 1000 / ms, "load_before": l0, "load_after": load()})
    record("ray_extraction", rows)


if __name__ == "__main__":
    main()
