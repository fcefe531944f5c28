"""Multinomial logistic regression with an elastic-net penalty, in torch.

    minimise  mean_i CE(W x_i + b + offset_i, y_i) + lam * (l1_ratio * |W|_1 + (1 - l1_ratio) / 2 * |W|_2^2)

solved by FISTA (accelerated proximal gradient, full batch, adaptive restart) with the step
1/L from Böhning's bound on the softmax Hessian, L = ||[X 1]||_2^2 / (2 N). Full-batch and
free of random sampling, so it is deterministic on a CPU and runs on whatever device X is on.
The bias is not penalised.

X may also be a ``FeatureSource`` (``cbm_core.data.sources``: a sharded feature store, or concept scores
mapped from one) that is never loaded whole: the solver is then *chunked full-batch* — every
gradient, the objective, the power iteration for L and lambda_max are sums over chunks of rows, one
pass over the source each — so it takes the same proximal steps as in memory (equal up to float
rounding of the sums, ~1e-6; not a mini-batch approximation). The price is one pass over the data
per iteration (plus ~50 for L), which is why the step can be passed in along a path.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.sources import DEFAULT_CHUNK, is_source


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


def lipschitz(X: torch.Tensor, n_iter: int = 50, *, chunk_size: int = DEFAULT_CHUNK, device=None) -> float:
    """Böhning bound on the gradient's Lipschitz constant for mean softmax CE, with a bias column.
    X: (N, K) tensor, or a ``FeatureSource`` (one pass per power iteration)."""
    if is_source(X):
        return _lipschitz_chunked(X, n_iter, chunk_size, torch.device(device or "cpu"))
    N = X.shape[0]
    v = torch.ones(X.shape[1] + 1, device=X.device, dtype=X.dtype)
    for _ in range(n_iter):  # power iteration on [X 1]^T [X 1]
        u = X @ v[:-1] + v[-1]
        v = torch.cat([X.T @ u, u.sum().reshape(1)])
        v = v / v.norm().clamp_min(1e-12)
    u = X @ v[:-1] + v[-1]
    sigma2 = float(u.norm() ** 2)
    return max(sigma2 / (2.0 * N), 1e-8) * 1.01


def _lipschitz_chunked(X, n_iter: int, chunk: int, dev: torch.device) -> float:
    N = len(X)
    v = torch.ones(X.dim + 1, device=dev)
    for _ in range(n_iter):
        acc, total = torch.zeros(X.dim, device=dev), torch.zeros((), device=dev)
        for xb in X.iter_batches(chunk):
            xb = xb.to(dev).float()
            u = xb @ v[:-1] + v[-1]
            acc += xb.T @ u
            total += u.sum()
        v = torch.cat([acc, total.reshape(1)])
        v = v / v.norm().clamp_min(1e-12)
    sigma2 = sum(float(((xb.to(dev).float() @ v[:-1] + v[-1]) ** 2).sum()) for xb in X.iter_batches(chunk))
    return max(sigma2 / (2.0 * N), 1e-8) * 1.01


def lambda_max(X: torch.Tensor, y: torch.Tensor, n_classes: int, l1_ratio: float, *,
               chunk_size: int = DEFAULT_CHUNK) -> float:
    """The smallest lam at which every weight is zero (bias at the class log-priors)."""
    if is_source(X):
        y = y.cpu()
        prior = torch.bincount(y, minlength=n_classes).float() / len(y)
        grad, start = torch.zeros(n_classes, X.dim), 0
        for xb in X.iter_batches(chunk_size):
            xb = xb.cpu().float()
            G = prior[None, :].repeat(len(xb), 1)
            G[torch.arange(len(xb)), y[start:start + len(xb)]] -= 1.0
            grad += G.T @ xb
            start += len(xb)
        return float((grad / len(y)).abs().max()) / max(l1_ratio, 1e-3)
    prior = torch.bincount(y, minlength=n_classes).to(X.dtype) / len(y)
    grad = (prior[None, :] - F.one_hot(y, n_classes).to(X.dtype)).T @ X / len(y)
    return float(grad.abs().max()) / max(l1_ratio, 1e-3)


def fit_elastic_net(X: torch.Tensor, y: torch.Tensor, n_classes: int, lam: float, l1_ratio: float = 0.99,
                    *, offset: torch.Tensor | None = None, init: tuple[torch.Tensor, torch.Tensor] | None = None,
                    max_iter: int = 3000, tol: float = 1e-5, step_size: float | None = None,
                    mask: torch.Tensor | None = None, chunk_size: int = DEFAULT_CHUNK,
                    device: str | torch.device | None = None, callback=None,
                    callback_every: int = 50) -> ElasticNetResult:
    """Fit the head. X: (N, K) float; y: (N,) int64 in [0, C); offset: (N, C) fixed logits added.

    ``init`` warm-starts from ``(weight, bias)``; ``step_size`` (1/L) can be passed to reuse it
    along a path; ``mask`` (C, K) of 0/1 keeps the weights outside it at zero (a head restricted to
    chosen concepts per class). Converged when the relative change of the parameters falls below ``tol``.

    X may be a ``FeatureSource`` instead (see the module docstring): chunked full-batch steps over
    ``chunk_size`` rows at a time, computed on ``device`` (default CPU); the same iterates as in memory.
    ``callback(iteration, weight, bias)`` is called every ``callback_every`` iterations of the in-memory
    solver (progress, or a benchmark's objective trace); returning True stops the fit there.
    """
    if is_source(X):
        return _fit_chunked(X, y, n_classes, lam, l1_ratio, offset=offset, init=init, max_iter=max_iter, tol=tol,
                            step_size=step_size, mask=mask, chunk=chunk_size, dev=torch.device(device or "cpu"))
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

    return _fista(W, b, smooth_grad, objective, step, l1, l2, mask, max_iter, tol, callback, callback_every)


def _fista(W, b, smooth_grad, objective, step, l1, l2, mask, max_iter, tol, callback=None,
           callback_every: int = 50) -> ElasticNetResult:
    """FISTA with adaptive restart from (W, b), given the smooth part's gradient and the objective."""
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
        if callback is not None and it % callback_every == 0 and callback(it, W_prev, b_prev):
            break
    return ElasticNetResult(W_prev, b_prev, it, converged, objective(W_prev, b_prev))


def _fit_chunked(X, y, n_classes, lam, l1_ratio, *, offset, init, max_iter, tol, step_size, mask, chunk, dev):
    """``fit_elastic_net`` over a ``FeatureSource``: the same steps, every sum over rows taken chunk by chunk."""
    N, K = len(X), X.dim
    y = torch.as_tensor(y, dtype=torch.long).to(dev)
    if len(y) != N:
        raise ValueError(f"{N} feature rows but {len(y)} labels")
    if init is None:
        W = torch.zeros(n_classes, K, device=dev)
        prior = (torch.bincount(y, minlength=n_classes).float() / N).clamp_min(1e-6)
        b = prior.log() - prior.log().mean()
    else:
        W, b = init[0].to(dev).float().clone(), init[1].to(dev).float().clone()
    if mask is not None:
        mask = mask.to(dev, torch.float32)
        W = W * mask
    step = step_size if step_size is not None else 1.0 / lipschitz(X, chunk_size=chunk, device=dev)
    l1, l2 = lam * l1_ratio, lam * (1.0 - l1_ratio)

    def chunks():
        start = 0
        for xb in X.iter_batches(chunk):
            n = len(xb)
            off = offset[start:start + n].to(dev).float() if offset is not None else None
            yield xb.to(dev).float(), y[start:start + n], off
            start += n

    def smooth_grad(W_, b_):
        gW, gb = torch.zeros_like(W_), torch.zeros_like(b_)
        for xb, yb, off in chunks():
            logits = xb @ W_.T + b_
            if off is not None:
                logits = logits + off
            G = logits.softmax(dim=1)
            G[torch.arange(len(yb), device=dev), yb] -= 1.0  # P - Y without an (N, C) one-hot
            G /= N
            gW += G.T @ xb
            gb += G.sum(0)
        return gW, gb

    def objective(W_, b_):
        ce = 0.0
        for xb, yb, off in chunks():
            logits = xb @ W_.T + b_ + (off if off is not None else 0.0)
            ce += float(F.cross_entropy(logits, yb, reduction="sum"))
        return ce / N + float(l1 * W_.abs().sum() + 0.5 * l2 * (W_ ** 2).sum())

    return _fista(W, b, smooth_grad, objective, step, l1, l2, mask, max_iter, tol)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(dim=1) == y.to(logits.device)).float().mean()) if len(y) else float("nan")


def head_accuracy(X, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, chunk_size: int = DEFAULT_CHUNK) -> float:
    """Accuracy of the head ``X @ weight.T + bias``; X a tensor or a ``FeatureSource`` (chunked)."""
    if not is_source(X):
        return accuracy(X.float().to(weight.device) @ weight.T + bias, y)
    right, start, y = 0, 0, torch.as_tensor(y).cpu()
    for xb in X.iter_batches(chunk_size):
        pred = (xb.float().to(weight.device) @ weight.T + bias).argmax(dim=1).cpu()
        right += int((pred == y[start:start + len(xb)]).sum())
        start += len(xb)
    return right / start if start else float("nan")


def regularization_path(X: torch.Tensor, y: torch.Tensor, n_classes: int, *, l1_ratio: float = 0.99,
                        n_lambdas: int = 12, lam_min_ratio: float = 1e-3, X_val: torch.Tensor | None = None,
                        y_val: torch.Tensor | None = None, max_iter: int = 1500, tol: float = 1e-4,
                        progress=None):
    """Fit a geometric path of lam from ``lambda_max`` down, warm-started; ``progress(fraction)``
    after each lam.

    Returns ``(points, results)``: a ``PathPoint`` per lam (accuracy, % non-zero weights, NEC)
    and the fitted ``ElasticNetResult`` per lam.
    """
    if not is_source(X):
        X = X.float()
        y = y.to(X.device)
    lam_hi = lambda_max(X, y, n_classes, l1_ratio)
    lams = torch.logspace(0, torch.log10(torch.tensor(lam_min_ratio)), n_lambdas) * lam_hi
    lams[0] *= 1.001  # just above lambda_max, so the path starts from the empty model despite rounding
    step = 1.0 / lipschitz(X)
    points, results, init = [], [], None
    for lam in lams.tolist():
        res = fit_elastic_net(X, y, n_classes, lam, l1_ratio, init=init, max_iter=max_iter, tol=tol, step_size=step)
        init = (res.weight, res.bias)
        nz = res.weight != 0
        val_acc = head_accuracy(X_val, y_val, res.weight, res.bias) if X_val is not None else None
        points.append(PathPoint(lam, head_accuracy(X, y, res.weight, res.bias), val_acc,
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
