"""The MAML meta-objective for supervised task batches, batched over tasks.

``meta_loss`` adapts all tasks of a meta-batch on their support sets with one
:class:`~rl_maml.inner.InnerLoop` call and evaluates the adapted parameters on the query sets.
Backpropagating its result gives the MAML meta-gradient (second order unless the inner loop is
first order). :func:`per_task_meta_loss` computes the same quantity with a Python loop over tasks;
it is the reference that tests and benchmarks compare against.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from rl_maml.aliases import Params
from rl_maml.functional import TaskBatchedModel, stack_params
from rl_maml.inner import InnerLoop


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
) -> MetaLoss:
    """MAML objective for a meta-batch: support/query tensors are ``[M, K, ...]``."""
    num_tasks = support[0].shape[0]
    pre_losses = None

    def support_loss(p: Params, data: tuple[Tensor, Tensor]) -> Tensor:
        nonlocal pre_losses
        losses = model.task_losses(p, data)
        if pre_losses is None:
            pre_losses = losses.detach()
        return losses

    adapted = inner.adapt(params, support_loss, support, num_tasks=num_tasks)
    if pre_losses is None:  # zero inner steps
        pre_losses = model.task_losses(adapted, support).detach()
    query_losses = model.task_losses(adapted, query)
    return MetaLoss(query_losses.mean(), query_losses, pre_losses, adapted)


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
        pre_losses.append(model.loss_single(params, task_support).detach())
        adapted_m = inner.adapt(params, model.loss_single, task_support)
        adapted_list.append(adapted_m)
        query_losses.append(model.loss_single(adapted_m, task_query))
    q = torch.stack(query_losses)
    return MetaLoss(q.mean(), q, torch.stack(pre_losses), stack_params(adapted_list))
