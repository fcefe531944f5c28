"""Baselines a CBM must be compared with, on the same cached features: random concept directions
(what named concepts must beat by a wide margin to mean anything), a linear probe on the raw
embedding (the accuracy a bottleneck gives up) and zero-shot CLIP (no training at all)."""
from __future__ import annotations

import torch

from .evaluation import evaluate
from ..core.model import ConceptBottleneckModel


def random_concept_baseline(model: ConceptBottleneckModel, train_x: torch.Tensor, train_y: torch.Tensor,
                            test_x: torch.Tensor, test_y: torch.Tensor, seed: int = 0) -> dict:
    """Accuracy of an elastic-net CBM at the model's λ over as many *random* unit directions as
    the model has concepts — what the named concepts must beat by a wide margin to mean anything."""
    from ..core.concepts import ConceptBank
    from ..recipes import PCBM

    g = torch.Generator().manual_seed(seed)
    K, D = model.n_concepts, model.embed_dim
    vectors = torch.nn.functional.normalize(torch.randn(K, D, generator=g), dim=1)
    bank = ConceptBank(tuple(f"random {k}" for k in range(K)))
    est = PCBM(concepts=bank, concept_vectors=vectors, classes=model.classes, backbone_spec=model.backbone_spec,
               lam=float(model.recipe.get("lam", 1e-3)), l1_ratio=float(model.recipe.get("l1_ratio", 0.99))).fit(train_x, train_y)
    base = evaluate(est.model_, test_x, test_y)
    return {"random_accuracy": base.accuracy, "random_nec": est.model_.sparsity()["nec"],
            "model_accuracy": evaluate(model, test_x, test_y).accuracy, "model_nec": model.sparsity()["nec"]}
