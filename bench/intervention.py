"""Head recompute after an intervention, for K concepts x C classes (budget: < 1 ms at 2048 x 1000).

    python bench/intervention.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import random_cbm, record, timeit  # noqa: E402
from cbm_core import Intervention  # noqa: E402


def main() -> None:
    torch.set_grad_enabled(False)
    rows = []
    for K in (128, 512, 2048):
        for C in (10, 200, 1000):
            model = random_cbm(K, C)
            emb = torch.nn.functional.normalize(torch.randn(1, 512), dim=1)
            scores = model.concept_scores(emb)
            iv = Intervention().ablate("concept 3").set("concept 7", percentile=95).scale("concept 11", 0.5)
            full = timeit(lambda: model.explain_features(emb, iv, scores=scores), repeat=50)
            head = timeit(lambda: model.head(iv.apply(scores, model.stats), emb), repeat=50)
            rows.append({"K": K, "C": C, "explanation_ms": full, "logits_only_ms": head})
    record("intervention", rows)


if __name__ == "__main__":
    main()
