"""Head training: our torch elastic-net solver vs scikit-learn's SGDClassifier(log_loss, elasticnet)
on the same standardised concept scores (the demo's 4,000 training birds, 26 concepts), compared at
matched accuracy (within 0.5 pt) and sparsity.

    pip install -r bench/requirements.txt && python bench/head_training.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import record  # noqa: E402
from cbm_core import load_backbone  # noqa: E402
from cbm_core.demo.build_bundle import SPLIT_SIZES, demo_concepts, encode_split  # noqa: E402
from cbm_core.demo.train_clip import CONCEPT_TEMPLATE  # noqa: E402
from cbm_core.model import ConceptStats  # noqa: E402
from cbm_core.recipes.elastic_net import accuracy, fit_elastic_net  # noqa: E402


def main() -> None:
    from sklearn.linear_model import SGDClassifier

    bb = load_backbone("demo", device="cpu")
    bank = demo_concepts()
    vectors = bank.embed(bb, [CONCEPT_TEMPLATE])
    (tr_x, tr_y, _, _), (te_x, te_y, _, _) = (encode_split(bb, s, SPLIT_SIZES[s]) for s in ("train", "test"))
    s_tr, s_te = tr_x @ vectors.T, te_x @ vectors.T
    stats = ConceptStats.from_scores(bank.names, s_tr)
    z_tr, z_te = (s_tr - stats.mean) / stats.std, (s_te - stats.mean) / stats.std
    rows = []
    for lam in (5e-3, 1e-3):
        t = time.perf_counter()
        ours = fit_elastic_net(z_tr, tr_y, 8, lam, 0.99)
        ours_s = time.perf_counter() - t
        ours_acc = accuracy(z_te @ ours.weight.T + ours.bias, te_y)
        ours_nz = float((ours.weight != 0).float().mean())
        # sklearn's alpha multiplies the same penalty (l1_ratio * |w|_1 + (1 - l1_ratio)/2 * |w|^2) on the mean loss
        t = time.perf_counter()
        sk = SGDClassifier(loss="log_loss", penalty="elasticnet", alpha=lam, l1_ratio=0.99, max_iter=200, tol=1e-5,
                           random_state=0).fit(z_tr.numpy(), tr_y.numpy())
        sk_s = time.perf_counter() - t
        sk_acc = float((sk.predict(z_te.numpy()) == te_y.numpy()).mean())
        sk_nz = float((np.abs(sk.coef_) > 0).mean())
        rows.append({"lam": lam, "ours_s": ours_s, "ours_acc": ours_acc, "ours_nonzero": ours_nz, "ours_iters": ours.n_iter,
                     "sgd_s": sk_s, "sgd_acc": sk_acc, "sgd_nonzero": sk_nz, "time_ratio_sgd_over_ours": sk_s / ours_s,
                     "acc_gap_pts": (ours_acc - sk_acc) * 100})
    record("head_training", rows)


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
