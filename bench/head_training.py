"""Head training, side by side: our FISTA elastic net against the peers' solvers on the same
standardised concept scores, the same λ and l1 ratio, the same objective

    mean cross-entropy + λ · (α |W|_1 + (1 - α) / 2 · |W|²)      (α = l1 ratio; bias unpenalised)

- scikit-learn ``LogisticRegression(solver="saga", penalty="elasticnet")`` (its C = 1 / (N λ));
- ``glm-saga`` (Label-free CBM's solver) at LF-CBM's settings: step size 0.1, up to 1,000 epochs,
  tol 1e-4, mini-batches of 256, one λ.

Each solver runs with its own stopping rule under a wall-clock cap; we report the time, the
objective it reached (evaluated by one function for all), accuracy and non-zeros, and how long
ours takes to reach each peer's objective.

    pip install -r bench/requirements.txt
    python bench/head_training.py                 # LF-CBM's size: 20,000 x 512 concepts x 100 classes
    python bench/head_training.py --size small    # 4,000 x 64 x 8, a minute
"""
from __future__ import annotations

import argparse
import functools
import multiprocessing as mp
import os
import queue
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import record  # noqa: E402
from cbm_core.recipes.elastic_net import fit_elastic_net  # noqa: E402

SIZES = {"lfcbm": (20_000, 512, 100), "small": (4_000, 64, 8)}


def problem(n: int, k: int, c: int, seed: int = 0):
    """Standardised 'concept scores' with class structure: each class raises a sparse few of the
    concepts (like a concept set where each class has a handful of telling concepts), plus noise.
    Train and test drawn alike."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(c, k, generator=g) * (torch.rand(c, k, generator=g) < 0.04) * 1.5
    def draw(m):
        y = torch.randint(0, c, (m,), generator=g)
        return means[y] + torch.randn(m, k, generator=g), y
    (x, y), (xt, yt) = draw(n), draw(n // 4)
    mu, sd = x.mean(0), x.std(0)
    return (x - mu) / sd, y, (xt - mu) / sd, yt


def objective(w, b, x, y, lam, alpha) -> float:
    logits = x @ w.T + b
    return float(F.cross_entropy(logits, y) + lam * alpha * w.abs().sum() + 0.5 * lam * (1 - alpha) * (w ** 2).sum())


def _in_child(target, threads: int, *args) -> None:
    """Run ``target`` and send its result home as numpy arrays: a torch tensor put on a Queue travels as
    a shared-memory handle that the parent can only open while this process lives, and it exits now."""
    torch.set_num_threads(threads)  # as many threads as the parent measures with
    *args, out = args
    label, seconds, w, b, extra = target(*args)
    out.put((label, seconds, w.numpy(), b.numpy(), extra))


def _ours(x, y, c, lam, alpha, cap_s: float = 1e9):
    """Our solver at the recipes' own tolerance; the objective is traced every 25 iterations (its
    evaluation is kept off the clock), and the run stops at the cap."""
    trace, spent = [], [0.0, time.perf_counter()]

    def note(it, w, b):
        spent[0] += time.perf_counter() - spent[1]
        trace.append((spent[0], objective(w, b, x, y, lam, alpha)))
        spent[1] = time.perf_counter()
        return spent[0] > cap_s

    res = fit_elastic_net(x, y, c, lam, alpha, max_iter=100_000, tol=1e-5, callback=note, callback_every=25)
    spent[0] += time.perf_counter() - spent[1]
    return "ours", spent[0], res.weight, res.bias, {"iterations": res.n_iter, "converged": res.converged,
                                                   "trace": trace}


def _sklearn(x, y, c, lam, alpha):
    from sklearn.linear_model import LogisticRegression

    t = time.perf_counter()
    sk = LogisticRegression(solver="saga", l1_ratio=alpha, C=1.0 / (len(y) * lam), max_iter=10_000,
                            tol=1e-4, random_state=0).fit(x.numpy(), y.numpy())
    return ("scikit-learn saga", time.perf_counter() - t, torch.from_numpy(sk.coef_).float(),
            torch.from_numpy(sk.intercept_).float(), {"epochs": int(np.max(sk.n_iter_))})


def _glm_saga(x, y, c, lam, alpha):
    from glm_saga.elasticnet import train_saga

    linear = torch.nn.Linear(x.shape[1], c)
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    data = torch.utils.data.TensorDataset(x, y, torch.arange(len(y)))
    loader = torch.utils.data.DataLoader(data, batch_size=256, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    t = time.perf_counter()
    train_saga(linear, loader, 0.1, 1000, lam, alpha, group=False, verbose=None, tol=1e-4, logger=lambda *a: None)
    return ("glm-saga (LF-CBM settings)", time.perf_counter() - t, linear.weight.detach().clone(),
            linear.bias.detach().clone(), {})


def run_capped(target, args, cap_s: float):
    """Run a solver in its own process (a cap that cannot be honoured in-process)."""
    ctx = mp.get_context("spawn")  # not fork: a forked child of a process with OpenMP threads can hang
    out = ctx.Queue()
    proc = ctx.Process(target=_in_child, args=(target, torch.get_num_threads(), *args, out))
    proc.start()
    deadline = time.perf_counter() + cap_s
    try:
        while True:  # poll, so a child that crashed is noticed at once, not at the cap
            try:
                label, seconds, w, b, extra = out.get(timeout=1.0)
                break
            except queue.Empty:
                if not proc.is_alive() or time.perf_counter() > deadline:
                    return None
    finally:
        proc.kill()
        proc.join()
    return label, seconds, torch.from_numpy(w), torch.from_numpy(b), extra


def time_to_reach(trace, target: float) -> float | None:
    """The first time in our objective trace at or below ``target`` (every 25 iterations)."""
    return next((t for t, obj in trace if obj <= target + 1e-6), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=list(SIZES), default="lfcbm")
    ap.add_argument("--lam", type=float, default=2e-3)
    ap.add_argument("--alpha", type=float, default=0.99, help="l1 ratio")
    ap.add_argument("--cap", type=float, default=1200.0, help="wall-clock cap per solver, seconds")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n, k, c = SIZES[args.size]
    x, y, xt, yt = problem(n, k, c)
    rows = []
    trace = []
    for name, target in (("ours", functools.partial(_ours, cap_s=args.cap)), ("scikit-learn saga", _sklearn),
                         ("glm-saga", _glm_saga)):
        load_before = os.getloadavg()[0]  # other work on the machine slows every solver alike
        got = run_capped(target, (x, y, c, args.lam, args.alpha), args.cap + 60)
        loads = {"load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}
        if got is None:
            rows.append({"solver": name, "seconds": None, "finished": False, "note": f"not finished after {args.cap:.0f} s",
                         **loads})
            continue
        label, seconds, w, b, extra = got
        acc = float(((xt @ w.T + b).argmax(1) == yt).float().mean())
        trace = extra.pop("trace", trace)
        rows.append({"solver": label, "seconds": seconds, "finished": True,
                     "objective": objective(w, b, x, y, args.lam, args.alpha), "test_accuracy": acc,
                     "nonzero_fraction": float((w != 0).float().mean()), **extra, **loads})
        print(rows[-1], flush=True)
    for row in rows[1:]:
        if row.get("finished"):
            row["ours_seconds_to_this_objective"] = time_to_reach(trace, row["objective"])
            if row["ours_seconds_to_this_objective"]:
                row["speedup_of_ours"] = row["seconds"] / row["ours_seconds_to_this_objective"]
    problem_info = {"n": n, "concepts": k, "classes": c, "lam": args.lam, "l1_ratio": args.alpha}
    record(f"head_training_{args.size}", [{**problem_info, **row} for row in rows])


if __name__ == "__main__":
    main()
