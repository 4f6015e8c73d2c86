"""Functional application of ``nn.Module`` objects, batched over tasks.

Every model in rl_maml is an ordinary ``nn.Module``; the engine never mutates its parameters.
Instead it holds them as a dict (see :mod:`rl_maml.aliases`) and applies the module with
``torch.func.functional_call``. Per-task parameters carry a leading task axis and are applied with
``torch.func.vmap`` so that a whole meta-batch runs in one call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from rl_maml.aliases import Buffers, Params


def params_of(module: nn.Module) -> Params:
    """The module's trainable parameters as a name -> tensor dict (the live tensors, not copies)."""
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


def buffers_of(module: nn.Module) -> dict[str, Tensor]:
    """The module's buffers as a name -> tensor dict."""
    return dict(module.named_buffers())


def expand_params(params: Params, num_tasks: int) -> Params:
    """Give every tensor a leading task axis of size ``num_tasks`` without copying.

    The expansion is a view of the shared tensor, so gradients with respect to the expanded
    tensor are per-task gradients and gradients flow back to the shared initialisation.
    """
    return {k: v.unsqueeze(0).expand(num_tasks, *v.shape) for k, v in params.items()}


def task_slice(params: Params, index: int) -> Params:
    """Parameters of one task out of batched parameters."""
    return {k: v[index] for k, v in params.items()}


def stack_params(per_task: list[Params]) -> Params:
    """Inverse of :func:`task_slice` over all tasks: a list of M dicts -> one batched dict."""
    return {k: torch.stack([p[k] for p in per_task]) for k in per_task[0]}


def check_per_task(model: "TaskBatchedModel", params: Params, num_tasks: int, what: str = "params") -> None:
    """``ValueError`` unless every tensor of ``params`` is ``[num_tasks, *shape of the module's tensor]``."""
    shapes = {n: p.shape for n, p in model.module.named_parameters()}
    for name, value in params.items():
        want = (num_tasks, *shapes[name]) if name in shapes else None
        if want is not None and tuple(value.shape) != want:
            raise ValueError(
                f"{what}[{name!r}] has shape {tuple(value.shape)}; per-task parameters [M, ...] = {want} are "
                f"needed. Expand shared parameters with rl_maml.functional.expand_params(params, {num_tasks}).")


def batches_itself(module: nn.Module) -> bool:
    """Whether ``module.forward_tasks`` stands for its ``forward``: defined by the class that
    defines ``forward``, or by a subclass of it. A subclass that overrides ``forward`` alone (a
    policy with its own observation scaling, say) is vmapped instead, so that its own forward
    is what runs."""
    def owner(name: str) -> type | None:
        return next((c for c in type(module).__mro__ if name in c.__dict__), None)

    tasks = owner("forward_tasks")
    return tasks is not None and issubclass(tasks, owner("forward"))


class TaskBatchedModel:
    """Applies one ``nn.Module`` with a different parameter set per task, for all tasks at once.

    A module may batch over tasks itself by defining ``forward_tasks(params, buffers, x)`` with
    ``params`` ``[M, ...]`` and ``x`` ``[M, K, ...]`` (see :meth:`rl_maml.nn.Conv4.forward_tasks`);
    otherwise, or when a subclass overrides ``forward`` but not ``forward_tasks``
    (:func:`batches_itself`), its ordinary forward is vmapped over the task axis.

    Args:
        module: any module. Its parameters give the names and shapes; its buffers are shared by
            all tasks. Batch norm must compute statistics from basic tensor ops (see
            :class:`rl_maml.nn.TaskBatchNorm2d`), since ``vmap`` over ``nn.BatchNorm2d`` gives
            wrong second-order gradients. Outputs may be tensors or tuples of tensors (a policy's
            mean and log standard deviation).
        criterion: ``criterion(prediction, target) -> scalar`` for one task's batch, e.g.
            ``torch.nn.functional.mse_loss``; only needed for the loss methods.
    """

    def __init__(self, module: nn.Module, criterion: Callable[[Tensor, Tensor], Tensor] | None = None):
        self.module = module
        self.criterion = criterion

        def forward_one(params: Params, buffers: Buffers, x: Tensor) -> Tensor:
            return functional_call(module, (params, buffers), (x,))

        def loss_one(params: Params, buffers: Buffers, x: Tensor, y: Tensor) -> Tensor:
            return criterion(forward_one(params, buffers, x), y)

        self._forward_one = forward_one
        self._loss_one = loss_one
        forward_tasks = getattr(module, "forward_tasks", None) if batches_itself(module) else None
        self._forward_tasks = forward_tasks
        if forward_tasks is not None:
            # The module batches over tasks itself (e.g. Conv4's grouped convolutions); only the
            # criterion is vmapped.
            self._forward = forward_tasks
            per_task_criterion = vmap(criterion) if criterion is not None else None

            def batched_loss(params: Params, buffers: Buffers, x: Tensor, y: Tensor) -> Tensor:
                return per_task_criterion(forward_tasks(params, buffers, x), y)

            self._loss = batched_loss
        else:
            self._forward = vmap(forward_one, in_dims=(0, None, 0))
            self._loss = vmap(loss_one, in_dims=(0, None, 0, 0))

    def buffers(self) -> dict[str, Tensor]:
        return buffers_of(self.module)

    def forward_range(self, params: Params, x: Tensor, start: int = 0, stop: int | None = None) -> Tensor:
        """Batched layers ``start..stop-1`` only, for modules whose forward takes ``start``/``stop``
        (:class:`rl_maml.nn.MLP`, :class:`rl_maml.nn.Conv4`): computes a frozen prefix once, or
        continues from one. The intermediate layout is the module's own."""
        if self._forward_tasks is not None:
            return self._forward_tasks(params, self.buffers(), x, start=start, stop=stop)

        def one(p: Params, b: Buffers, xi: Tensor) -> Tensor:
            return functional_call(self.module, (p, b), (xi,), {"start": start, "stop": stop})

        return vmap(one, in_dims=(0, None, 0))(params, self.buffers(), x)

    def task_losses_from(self, params: Params, data: tuple[Tensor, Tensor], start: int) -> Tensor:
        """Per-task losses ``[M]`` of the layers from ``start`` on, given the prefix's output ``data[0]``."""
        features, y = data
        if start == 0:
            return self.task_losses(params, data)
        return vmap(self.criterion)(self.forward_range(params, features, start), y)

    def forward(self, params: Params, x: Tensor) -> Tensor:
        """Batched predictions: ``params`` ``[M, ...]``, ``x`` ``[M, K, ...]`` -> ``[M, K, ...]``."""
        return self._forward(params, self.buffers(), x)

    __call__ = forward

    def task_losses(self, params: Params, data: tuple[Tensor, Tensor]) -> Tensor:
        """One loss per task: ``data = (x [M, K, ...], y [M, K, ...])`` -> ``[M]``."""
        x, y = data
        return self._loss(params, self.buffers(), x, y)

    def forward_single(self, params: Params, x: Tensor) -> Tensor:
        """Unbatched forward for one task's parameters (used by per-task reference loops)."""
        return self._forward_one(params, self.buffers(), x)

    def loss_single(self, params: Params, data: tuple[Tensor, Tensor]) -> Tensor:
        """Unbatched loss for one task: ``data = (x [K, ...], y [K, ...])`` -> scalar."""
        x, y = data
        return self._loss_one(params, self.buffers(), x, y)
