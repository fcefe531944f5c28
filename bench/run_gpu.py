"""The GPU benchmark suite in one command, for a machine with CUDA:

    pip install -r bench/requirements.txt && python bench/run_gpu.py

A ViT-B/32-sized open_clip tower with random weights, bf16: image -> explanation at batch 1,
eager and compiled with CUDA graphs (``bench/explain.py``), saliency ratios at K = 16 / 128 / 512
(``bench/saliency.py``), feature extraction (``bench/feature_extraction.py``), then the demo-model
rows for comparison. JSON records land in bench/results/ with the GPU's name.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUITE = [
    ["explain.py", "--model", "ViT-B-32", "--device", "cuda", "--precision", "bf16"],
    ["saliency.py", "--model", "ViT-B-32", "--device", "cuda"],
    ["feature_extraction.py", "--model", "ViT-B-32"],
    ["explain.py", "--device", "cuda"],
    ["saliency.py", "--device", "cuda"],
    ["intervention.py"],
]


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("No CUDA device here; use bench/run_cpu.py.")
        return 2
    failed = []
    for args in SUITE:
        print(f"\n== {' '.join(args)}", flush=True)
        t = time.perf_counter()
        if subprocess.call([sys.executable, str(HERE / args[0]), *args[1:]], cwd=HERE.parent) != 0:
            failed.append(" ".join(args))
        print(f"   ({time.perf_counter() - t:.0f} s)", flush=True)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
