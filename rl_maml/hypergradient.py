"""Online hypergradient descent on step sizes (Baydin et al. 2018, arXiv 1703.04782), as used by
Alpha MAML (Behl, Baydin and Torr 2019, arXiv 1905.07435).

Inner step size alpha. The inner step is ``theta' = theta - alpha * g`` with ``g`` the support
gradient. The meta-loss ``L(theta')`` depends on alpha only through that step, so
``dL/dalpha = -<dL/dtheta', g>`` (summed over the steps and tensors that share alpha).
:class:`HypergradientStepSize` holds alpha as leaf tensors used directly in the inner step, so
the backward pass that computes the meta-gradient also leaves exactly this product in
``alpha.grad``: no extra backward pass. :meth:`HypergradientStepSize.update` then takes
``alpha <- alpha - hyper_lr * dL/dalpha``.

Outer step size beta. For plain SGD, ``theta_t = theta_{t-1} - beta * grad_{t-1}``, so
``df(theta_t)/dbeta = -<grad_t, grad_{t-1}>`` and beta moves by ``+hyper_lr * <grad_t, grad_{t-1}>``.
For Adam the previous *update direction* ``u_{t-1} = m_hat / (sqrt(v_hat) + eps)`` takes the place of
``grad_{t-1}``. Both reuse the meta-gradient already computed (:class:`HypergradientSGD`,
:class:`HypergradientAdam`).

A hypergradient step that would make a step size negative, zero or non-finite is not taken as it
is: the step size is clipped to ``min_value`` (or kept, if the update is not finite) and the
update returns a warning for the log.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import torch
from torch import Tensor, nn

from rl_maml.aliases import Params
from rl_maml.inner import _check_rate, step_scale

Granularity = Literal["scalar", "layer", "tensor"]


def group_names(names: Iterable[str], granularity: Granularity) -> dict[str, str]:
    """Parameter name -> its step-size group: one group, one per layer (module path), or one per tensor."""
    if granularity == "scalar":
        return {n: "alpha" for n in names}
    if granularity == "layer":
        return {n: n.rsplit(".", 1)[0] if "." in n else n for n in names}
    if granularity == "tensor":
        return {n: n for n in names}
    raise ValueError(f"granularity must be 'scalar', 'layer' or 'tensor', got {granularity!r}")


def _clip(value: float, proposed: float, min_value: float, what: str) -> tuple[float, str | None]:
    if not math.isfinite(proposed):
        return value, f"{what}: hypergradient update gave {proposed}; kept {value:.4g}"
    if proposed < min_value:
        return min_value, f"{what}: hypergradient update gave {proposed:.4g} < {min_value:g}; clipped to {min_value:g}"
    return proposed, None


class HypergradientStepSize(nn.Module):
    """Inner step sizes alpha that adapt online by hypergradient descent.

    Args:
        params: the model parameters (names and devices).
        init: the initial alpha.
        granularity: one alpha for all tensors (``scalar``), one per layer (``layer``: tensors
            sharing a module path, e.g. a weight and its bias), or one per tensor (``tensor``).
        hyper_lr: the hypergradient step size for alpha.
        min_value: the smallest alpha an update may produce (larger than 0).
        step_scales: fixed multipliers of alpha per inner step (steps past the end use the last);
            ``(1.0, 0.5)`` steps with alpha, then alpha/2. The hypergradient includes the scale.
    """

    def __init__(self, params: Params, init: float, granularity: Granularity = "scalar", hyper_lr: float = 1e-4,
                 min_value: float = 1e-6, step_scales: tuple[float, ...] = ()):
        super().__init__()
        if not (math.isfinite(init) and init > 0):
            raise ValueError(f"initial alpha must be a finite number > 0, got {init}")
        if not (math.isfinite(hyper_lr) and hyper_lr >= 0):
            raise ValueError(f"alpha's hypergradient step size must be >= 0, got {hyper_lr}")
        self.group_of = group_names(params, granularity)
        self.groups = tuple(dict.fromkeys(self.group_of.values()))
        device = next(iter(params.values())).device
        dtype = next(iter(params.values())).dtype
        self.alphas = nn.ParameterDict({
            g.replace(".", "__"): nn.Parameter(torch.tensor(float(init), dtype=dtype, device=device))
            for g in self.groups
        })
        self.hyper_lr = hyper_lr
        self.min_value = min_value
        self.step_scales = tuple(_check_rate(x, "step scale") for x in step_scales)

    def alpha(self, group: str) -> Tensor:
        return self.alphas[group.replace(".", "__")]

    def __call__(self, step: int, name: str) -> Tensor:  # type: ignore[override]
        alpha = self.alpha(self.group_of[name])
        return alpha * step_scale(self.step_scales, step) if self.step_scales else alpha

    def as_dict(self) -> dict[str, float]:
        return {g: self.alpha(g).item() for g in self.groups}

    @torch.no_grad()
    def update(self) -> list[str]:
        """``alpha <- alpha - hyper_lr * alpha.grad`` after a backward pass; returns warnings (clipping)."""
        warnings = []
        for g in self.groups:
            a = self.alpha(g)
            if a.grad is None:
                continue
            proposed = a.item() - self.hyper_lr * a.grad.item()
            value, warning = _clip(a.item(), proposed, self.min_value, f"alpha[{g}]")
            a.fill_(value)
            a.grad = None
            if warning:
                warnings.append(warning)
        return warnings


class HypergradientSGD:
    """SGD whose step size beta follows ``beta += hyper_lr * <grad_t, grad_{t-1}>``.

    Args:
        params: the tensors to optimise (their ``.grad`` is read).
        lr: the initial beta.
        hyper_lr: the hypergradient step size for beta (0 keeps beta fixed).
        min_value: the smallest beta an update may produce.
    """

    def __init__(self, params: Iterable[Tensor], lr: float, hyper_lr: float = 0.0, min_value: float = 1e-8):
        self.params = list(params)
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"outer step size beta must be a finite number > 0, got {lr}")
        self.lr, self.hyper_lr, self.min_value = float(lr), float(hyper_lr), min_value
        self.previous: list[Tensor] | None = None
        self.steps = 0

    def _direction(self, grads: list[Tensor]) -> list[Tensor]:
        return grads

    def _beta_hypergradient(self, grads: list[Tensor]) -> float:
        """``<grad_t, previous update direction>``."""
        return sum((g * d).sum() for g, d in zip(grads, self.previous)).item()

    @torch.no_grad()
    def step(self) -> list[str]:
        """Update beta from the current gradient, then take the step; returns warnings."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        warnings = []
        if self.previous is not None and self.hyper_lr:
            proposed = self.lr + self.hyper_lr * self._beta_hypergradient(grads)
            self.lr, warning = _clip(self.lr, proposed, self.min_value, "beta")
            if warning:
                warnings.append(warning)
        direction = self._direction(grads)
        for p, d in zip(self.params, direction):
            p.sub_(self.lr * d)
        self.previous = [d.clone() for d in direction]
        self.steps += 1
        return warnings

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def state_dict(self) -> dict:
        return {"lr": self.lr, "steps": self.steps, "previous": self.previous}

    def load_state_dict(self, state: dict) -> None:
        self.lr, self.steps, self.previous = float(state["lr"]), int(state["steps"]), state["previous"]


class HypergradientAdam(HypergradientSGD):
    """Adam whose step size beta follows ``beta += hyper_lr * <grad_t, u_{t-1}>``, ``u`` Adam's direction."""

    def __init__(self, params: Iterable[Tensor], lr: float, hyper_lr: float = 0.0, betas=(0.9, 0.999),
                 eps: float = 1e-8, min_value: float = 1e-8):
        super().__init__(params, lr, hyper_lr, min_value)
        self.betas, self.eps = betas, eps
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    def _direction(self, grads: list[Tensor]) -> list[Tensor]:
        b1, b2 = self.betas
        t = self.steps + 1
        out = []
        for g, m, v in zip(grads, self.m, self.v):
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            out.append((m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + self.eps))
        return out

    def state_dict(self) -> dict:
        return {**super().state_dict(), "m": self.m, "v": self.v}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        for dst, src in zip(self.m + self.v, state["m"] + state["v"]):
            dst.copy_(src)
