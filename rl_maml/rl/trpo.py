"""TRPO pieces (Schulman et al. 2015, arXiv 1502.05477): conjugate gradient, Fisher-vector
products and the backtracking line search, on flat parameter vectors."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def flat(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def set_flat_(params: Sequence[Tensor], vector: Tensor) -> None:
    """Copy ``vector`` into ``params`` in place (no autograd history)."""
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(vector[offset:offset + n].view_as(p))
            offset += n


def conjugate_gradient(f_Ax: Callable[[Tensor], Tensor], b: Tensor, iters: int = 10,
                       residual_tol: float = 1e-10, x0: Tensor | None = None, rel_tol: float = 0.0,
                       info: dict | None = None) -> tuple[Tensor, Tensor]:
    """Approximately solve ``A x = b`` for symmetric positive-definite ``A`` given as ``f_Ax``.

    Args:
        iters: the most products with ``A``.
        residual_tol: stop once ``r @ r`` falls below this (rllab's absolute test).
        x0: start from this guess instead of zero (a warm start; costs one more product, for
            its residual ``b - A x0``). A guess whose residual is no smaller than ``b`` (zero's)
            is dropped and the iteration starts from zero.
        rel_tol: also stop once ``|r| <= rel_tol |b|`` (0: never; the iteration count decides).
        info: if given, receives ``products`` (products with ``A``) and ``residual`` (``|r| / |b|``).

    Returns:
        ``(x, r)`` with the residual ``r = b - A x`` (kept by the iteration), so that
        ``x @ A @ x = x @ (b - r)`` costs no further product with ``A``.
    """
    products = 0
    if x0 is None:
        x = torch.zeros_like(b)
        r = b.clone()
    else:
        x = x0.clone()
        r = b - f_Ax(x)
        products += 1
        if not bool(r @ r < b @ b):  # worse than zero (or not finite): start from zero after all
            x = torch.zeros_like(b)
            r = b.clone()
    p = r.clone()
    rdotr = r @ r
    stop = max(residual_tol, (rel_tol ** 2) * float(b @ b))
    for _ in range(iters):
        if rdotr < stop:
            break
        Ap = f_Ax(p)
        products += 1
        alpha = rdotr / (p @ Ap)
        x += alpha * p
        r -= alpha * Ap
        new_rdotr = r @ r
        p = r + (new_rdotr / rdotr) * p
        rdotr = new_rdotr
    if info is not None:
        info["products"] = products
        info["residual"] = float(rdotr.sqrt() / b.norm().clamp(min=torch.finfo(b.dtype).tiny))
    return x, r


def fisher_vector_product(kl: Tensor, params: Sequence[Tensor], damping: float) -> Callable[[Tensor], Tensor]:
    """``v -> (H + damping I) v`` with ``H`` the Hessian of ``kl`` at ``params`` (the Fisher matrix
    when ``kl`` is the KL divergence from the current policy, evaluated there).

    The gradient of ``kl`` is built once with a graph; each product is one more backward pass.
    """
    grads = flat(torch.autograd.grad(kl, params, create_graph=True))

    def fvp(v: Tensor) -> Tensor:
        hv = flat(torch.autograd.grad(grads @ v, params, retain_graph=True))
        return hv + damping * v

    return fvp


def line_search(params: Sequence[Tensor], full_step: Tensor, evaluate: Callable[[], tuple[float, float]],
                loss_before: float, max_kl: float, max_steps: int = 15, backtrack_ratio: float = 0.8
                ) -> tuple[bool, int, float, float]:
    """Try ``theta - ratio^k * full_step`` for k = 0, 1, ...; keep the first with a lower loss and KL < max_kl.

    Args:
        params: the parameters, updated in place.
        full_step: the largest step (flat).
        evaluate: ``() -> (loss, kl)`` at the current ``params``.
        loss_before: the loss at the starting point.

    Returns:
        ``(accepted, steps_tried, loss, kl)``; if nothing is accepted the parameters are restored
        exactly and ``(loss, kl)`` are those of the last candidate tried.
    """
    old = flat([p.detach() for p in params]).clone()
    loss, kl = float("nan"), float("nan")
    scale = 1.0
    for k in range(max_steps):
        set_flat_(params, old - scale * full_step)
        loss, kl = evaluate()
        if loss == loss and kl == kl and loss < loss_before and kl < max_kl:  # NaN-safe comparisons
            return True, k + 1, loss, kl
        scale *= backtrack_ratio
    set_flat_(params, old)
    return False, max_steps, loss, kl
