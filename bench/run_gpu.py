"""The GPU benchmark suite in one command, for a machine with CUDA:

    pip install -r bench/requirements.txt && python bench/run_gpu.py

A ViT-B/32-sized open_clip tower with random weights, bf16: image -> explanation at batch 1,
eager and compiled with CUDA graphs (``bench/explain.py``), saliency ratios at K = 16 / 128 / 512
(``bench/saliency.py``), feature extraction (``bench/feature_extraction.py``), then the demo-model
rows for comparison. JSON records land in bench/results/ with the GPU's name.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import run_suite  # noqa: E402

SUITE = [
    ["explain.py", "--model", "ViT-B-32", "--device", "cuda", "--precision", "bf16"],
    ["saliency.py", "--model", "ViT-B-32", "--device", "cuda"],
    ["feature_extraction.py", "--model", "ViT-B-32"],
    ["explain.py", "--device", "cuda"],
    ["saliency.py", "--device", "cuda"],
    ["intervention.py"],
]

if __name__ == "__main__":
    import torch

    if not torch.cuda.is_available():
        sys.exit("No CUDA device here; use bench/run_cpu.py.")
    sys.exit(run_suite(SUITE))
