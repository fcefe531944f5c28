"""Multinomial logistic regression with an elastic-net penalty, in torch.

    minimise  mean_i CE(W x_i + b + offset_i, y_i) + lam * (l1_ratio * |W|_1 + (1 - l1_ratio) / 2 * |W|_2^2)

solved by FISTA (accelerated proximal gradient, full batch, adaptive restart) with the step
1/L from Böhning's bound on the softmax Hessian, L = ||[X 1]||_2^2 / (2 N). Full-batch and
free of random sampling, so it is deterministic on a CPU and runs on whatever device X is on.
The bias is not penalised.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ElasticNetResult:
    """weight: (C, K); bias: (C,); n_iter; converged; objective at the end."""

    weight: torch.Tensor
    bias: torch.Tensor
    n_iter: int
    converged: bool
    objective: float


@dataclass(frozen=True)
class PathPoint:
    """One point of a regularisation path."""

    lam: float
    train_accuracy: float
    val_accuracy: float | None
    nonzero_fraction: float
    nec: float


def lipschitz(X: torch.Tensor, n_iter: int = 50) -> float:
    """Böhning bound on the gradient's Lipschitz constant for mean softmax CE, with a bias column."""
    N = X.shape[0]
    v = torch.ones(X.shape[1] + 1, device=X.device, dtype=X.dtype)
    for _ in range(n_iter):  # power iteration on [X 1]^T [X 1]
        u = X @ v[:-1] + v[-1]
        v = torch.cat([X.T @ u, u.sum().reshape(1)])
        v = v / v.norm().clamp_min(1e-12)
    u = X @ v[:-1] + v[-1]
    sigma2 = float(u.norm() ** 2)
    return max(sigma2 / (2.0 * N), 1e-8) * 1.01


def lambda_max(X: torch.Tensor, y: torch.Tensor, n_classes: int, l1_ratio: float) -> float:
    """The smallest lam at which every weight is zero (bias at the class log-priors)."""
    prior = torch.bincount(y, minlength=n_classes).to(X.dtype) / len(y)
    grad = (prior[None, :] - F.one_hot(y, n_classes).to(X.dtype)).T @ X / len(y)
    return float(grad.abs().max()) / max(l1_ratio, 1e-3)


def fit_elastic_net(X: torch.Tensor, y: torch.Tensor, n_classes: int, lam: float, l1_ratio: float = 0.99,
                    *, offset: torch.Tensor | None = None, init: tuple[torch.Tensor, torch.Tensor] | None = None,
                    max_iter: int = 3000, tol: float = 1e-5, step_size: float | None = None,
                    mask: torch.Tensor | None = None) -> ElasticNetResult:
    """Fit the head. X: (N, K) float; y: (N,) int64 in [0, C); offset: (N, C) fixed logits added.

    ``init`` warm-starts from ``(weight, bias)``; ``step_size`` (1/L) can be passed to reuse it
    along a path; ``mask`` (C, K) of 0/1 keeps the weights outside it at zero (a head restricted to
    chosen concepts per class). Converged when the relative change of the parameters falls below ``tol``.
    """
    X = X.float()
    N, K = X.shape
    y = y.to(X.device)
    Y = F.one_hot(y, n_classes).float()
    if init is None:
        W = torch.zeros(n_classes, K, device=X.device)
        prior = Y.mean(0).clamp_min(1e-6)
        b = prior.log() - prior.log().mean()
    else:
        W, b = init[0].to(X.device).float().clone(), init[1].to(X.device).float().clone()
    if mask is not None:
        mask = mask.to(X.device, torch.float32)
        W = W * mask
    step = step_size if step_size is not None else 1.0 / lipschitz(X)
    l1, l2 = lam * l1_ratio, lam * (1.0 - l1_ratio)

    def smooth_grad(W_, b_):
        logits = X @ W_.T + b_
        if offset is not None:
            logits = logits + offset
        P = logits.softmax(dim=1)
        G = (P - Y) / N
        return G.T @ X, G.sum(0)

    def objective(W_, b_):
        logits = X @ W_.T + b_ + (offset if offset is not None else 0.0)
        return float(F.cross_entropy(logits, y) + l1 * W_.abs().sum() + 0.5 * l2 * (W_ ** 2).sum())

    W_prev, b_prev = W.clone(), b.clone()
    V, c = W.clone(), b.clone()
    t = 1.0
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        gW, gb = smooth_grad(V, c)
        W_new = V - step * gW
        W_new = torch.sign(W_new) * (W_new.abs() - step * l1).clamp_min(0.0) / (1.0 + step * l2)
        if mask is not None:
            W_new = W_new * mask
        b_new = c - step * gb
        # Adaptive restart (O'Donoghue & Candès): drop momentum when it points uphill.
        if float(((V - W_new) * (W_new - W_prev)).sum() + ((c - b_new) * (b_new - b_prev)).sum()) > 0:
            t = 1.0
        t_next = (1.0 + (1.0 + 4.0 * t * t) ** 0.5) / 2.0
        beta = (t - 1.0) / t_next
        V = W_new + beta * (W_new - W_prev)
        c = b_new + beta * (b_new - b_prev)
        delta = float(torch.sqrt(((W_new - W_prev) ** 2).sum() + ((b_new - b_prev) ** 2).sum()))
        scale = float(torch.sqrt((W_new ** 2).sum() + (b_new ** 2).sum())) + 1e-8
        W_prev, b_prev, t = W_new, b_new, t_next
        if it > 5 and delta / scale < tol:
            converged = True
            break
    return ElasticNetResult(W_prev, b_prev, it, converged, objective(W_prev, b_prev))


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(dim=1) == y.to(logits.device)).float().mean()) if len(y) else float("nan")


def regularization_path(X: torch.Tensor, y: torch.Tensor, n_classes: int, *, l1_ratio: float = 0.99,
                        n_lambdas: int = 12, lam_min_ratio: float = 1e-3, X_val: torch.Tensor | None = None,
                        y_val: torch.Tensor | None = None, max_iter: int = 1500, tol: float = 1e-4,
                        progress=None):
    """Fit a geometric path of lam from ``lambda_max`` down, warm-started; ``progress(fraction)``
    after each lam.

    Returns ``(points, results)``: a ``PathPoint`` per lam (accuracy, % non-zero weights, NEC)
    and the fitted ``ElasticNetResult`` per lam.
    """
    X = X.float()
    lam_hi = lambda_max(X, y.to(X.device), n_classes, l1_ratio)
    lams = torch.logspace(0, torch.log10(torch.tensor(lam_min_ratio)), n_lambdas) * lam_hi
    lams[0] *= 1.001  # just above lambda_max, so the path starts from the empty model despite rounding
    step = 1.0 / lipschitz(X)
    points, results, init = [], [], None
    for lam in lams.tolist():
        res = fit_elastic_net(X, y, n_classes, lam, l1_ratio, init=init, max_iter=max_iter, tol=tol, step_size=step)
        init = (res.weight, res.bias)
        nz = res.weight != 0
        val_acc = accuracy(X_val.float().to(X.device) @ res.weight.T + res.bias, y_val) if X_val is not None else None
        points.append(PathPoint(lam, accuracy(X @ res.weight.T + res.bias, y), val_acc,
                                float(nz.float().mean()), float(nz.sum(1).float().mean())))
        results.append(res)
        if progress:
            progress(len(results) / len(lams))
    return points, results


def truncate_to_nec(X: torch.Tensor, y: torch.Tensor, n_classes: int, weight: torch.Tensor, nec: int, *,
                    lam: float = 1e-4, max_iter: int = 1500, tol: float = 1e-5,
                    init: tuple[torch.Tensor, torch.Tensor] | None = None) -> ElasticNetResult:
    """A head with at most ``nec`` concepts per class: keep each class's ``nec`` largest |weight|
    (of a dense head, e.g. LaBo's or Sparse-CBM's) and refit only those on X (N, K) — how heads
    without a sparsity knob are compared at matched NEC (VLG-CBM's protocol: prune, then fine-tune)."""
    K = weight.shape[1]
    keep = weight.abs().topk(min(int(nec), K), dim=1).indices
    mask = torch.zeros_like(weight, dtype=torch.float32).scatter_(1, keep, 1.0) * (weight != 0)
    start = (init[0] * mask, init[1]) if init is not None else (weight * mask, torch.zeros(n_classes))
    return fit_elastic_net(X, y, n_classes, lam, 1.0, init=start, max_iter=max_iter, tol=tol, mask=mask)


def nec_path(X: torch.Tensor, y: torch.Tensor, n_classes: int, weight: torch.Tensor, *,
             necs=(1, 2, 3, 5, 8, 12, 20, 32), X_val: torch.Tensor | None = None, y_val: torch.Tensor | None = None,
             progress=None) -> list[PathPoint]:
    """The accuracy-vs-sparsity path of a dense head by truncation (``truncate_to_nec``) at each NEC;
    ``PathPoint.lam`` holds the NEC cap."""
    points, res = [], None
    caps = [n for n in necs if n < weight.shape[1]] + [weight.shape[1]]
    for i, nec in enumerate(caps):
        # The caps grow, so each mask contains the last one: warm-start from the last fit.
        res = truncate_to_nec(X, y, n_classes, weight, nec, init=(res.weight, res.bias) if res is not None else None)
        nz = res.weight != 0
        val_acc = accuracy(X_val.float() @ res.weight.T + res.bias, y_val) if X_val is not None else None
        points.append(PathPoint(float(nec), accuracy(X.float() @ res.weight.T + res.bias, y), val_acc,
                                float(nz.float().mean()), float(nz.sum(1).float().mean())))
        if progress:
            progress((i + 1) / len(caps))
    return points
