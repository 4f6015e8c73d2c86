"""The MAML meta-objective for supervised task batches, batched over tasks.

``meta_loss`` adapts all tasks of a meta-batch on their support sets with one
:class:`~rl_maml.inner.InnerLoop` call and evaluates the adapted parameters on the query sets.
Backpropagating its result gives the MAML meta-gradient (second order unless the inner loop is
first order). :func:`per_task_meta_loss` computes the same quantity with a Python loop over tasks;
it is the reference that tests and benchmarks compare against.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from rl_maml.aliases import Params
from rl_maml.functional import TaskBatchedModel, stack_params
from rl_maml.inner import InnerLoop, at_inner_step, query_step


class MetaLoss(NamedTuple):
    loss: Tensor
    """Mean query loss over tasks after adaptation (scalar, differentiable)."""
    query_losses: Tensor
    """Per-task query losses after adaptation, ``[M]``."""
    support_losses: Tensor
    """Per-task support losses before adaptation, ``[M]`` (detached)."""
    adapted: Params
    """Adapted parameters ``[M, ...]``."""


def meta_loss(
    model: TaskBatchedModel,
    params: Params,
    inner: InnerLoop,
    support: tuple[Tensor, Tensor],
    query: tuple[Tensor, Tensor],
    step_weights: Sequence[float] | None = None,
) -> MetaLoss:
    """MAML objective for a meta-batch: support/query tensors are ``[M, K, ...]``.

    ``step_weights`` (one per inner step) makes it MAML++'s multi-step loss (arXiv 1810.09502):
    the weighted sum over steps ``s`` of the mean query loss after ``s + 1`` steps, instead of the
    query loss after the last step only. ``query_losses`` are then the last step's.
    """
    num_tasks = support[0].shape[0]
    pre_losses = None

    def support_loss(p: Params, data: tuple[Tensor, Tensor]) -> Tensor:
        nonlocal pre_losses
        losses = model.task_losses(p, data)
        if pre_losses is None:
            pre_losses = losses.detach()
        return losses

    if step_weights is None:
        adapted = inner.adapt(params, support_loss, support, num_tasks=num_tasks)
        with at_inner_step(query_step(inner.num_steps)):
            if pre_losses is None:  # zero inner steps
                pre_losses = model.task_losses(adapted, support).detach()
            query_losses = model.task_losses(adapted, query)
        return MetaLoss(query_losses.mean(), query_losses, pre_losses, adapted)
    if len(step_weights) != inner.num_steps or inner.num_steps < 1:
        raise ValueError(f"step_weights needs one weight per inner step ({inner.num_steps}), got {len(step_weights)}")
    total: Tensor | None = None
    trajectory = inner.trajectory(params, support_loss, support, num_tasks=num_tasks)
    next(trajectory)  # the initial parameters: not scored
    for s, (weight, adapted) in enumerate(zip(step_weights, trajectory)):
        with at_inner_step(s):
            query_losses = model.task_losses(adapted, query)
        if weight:
            term = weight * query_losses.mean()
            total = term if total is None else total + term
    if total is None:
        raise ValueError("step_weights are all zero")
    return MetaLoss(total, query_losses, pre_losses, adapted)


def multi_step_loss_weights(num_steps: int, progress: float, min_weight: float = 0.03) -> list[float]:
    """MAML++'s annealed multi-step-loss weights: uniform (``1 / num_steps`` each) at
    ``progress = 0``, shifting linearly onto the last step until ``progress = 1``, where every
    earlier step keeps ``min_weight / num_steps``. The weights sum to one."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    t = min(max(progress, 0.0), 1.0)
    floor = min_weight / num_steps
    early = [max((1.0 - t) / num_steps, floor) if t < 1 else floor for _ in range(num_steps - 1)]
    return [*early, 1.0 - sum(early)]


def per_task_meta_loss(
    model: TaskBatchedModel,
    params: Params,
    inner: InnerLoop,
    support: tuple[Tensor, Tensor],
    query: tuple[Tensor, Tensor],
) -> MetaLoss:
    """The same objective as :func:`meta_loss`, one task at a time (reference implementation)."""
    num_tasks = support[0].shape[0]
    adapted_list, query_losses, pre_losses = [], [], []
    for m in range(num_tasks):
        task_support = (support[0][m], support[1][m])
        task_query = (query[0][m], query[1][m])
        with at_inner_step(0):
            pre_losses.append(model.loss_single(params, task_support).detach())
        adapted_m = inner.adapt(params, model.loss_single, task_support)
        adapted_list.append(adapted_m)
        with at_inner_step(query_step(inner.num_steps)):
            query_losses.append(model.loss_single(adapted_m, task_query))
    q = torch.stack(query_losses)
    return MetaLoss(q.mean(), q, torch.stack(pre_losses), stack_params(adapted_list))
