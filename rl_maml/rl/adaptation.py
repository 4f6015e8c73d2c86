"""Policy adaptation: the one routine behind meta-training, evaluation, the Lambda search and the API.

For every inner step k = 0..S-1: sample episodes with the current per-task parameters, fit the
baseline and compute advantages (the sampler's job), take one policy-gradient step with the inner
loop's step size and mask for step k. Then sample once more from the adapted parameters (the
validation episodes of meta-training, the post-adaptation returns of evaluation).

Parameters are always per task, ``[M, ...]``: a caller with shared parameters expands them once
(:func:`~rl_maml.functional.expand_params`); nothing guesses from tensor shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from rl_maml.aliases import Params
from rl_maml.functional import TaskBatchedModel, check_per_task
from rl_maml.inner import InnerLoop
from rl_maml.rl.episodes import Episodes
from rl_maml.rl.policy import log_prob

__all__ = ["Adaptation", "adapt_policy", "check_per_task", "policy_gradient_loss"]

INNER_OBJECTIVES = ("reinforce", "lvc")


def masked_task_mean(x: Tensor, mask: Tensor) -> Tensor:
    """``x, mask [M, K]`` -> per-task mean over unmasked entries ``[M]``."""
    return (x * mask).sum(1) / mask.sum(1).clamp(min=1)


def policy_gradient_loss(model: TaskBatchedModel, params: Params, episodes: Episodes,
                         objective: str = "reinforce") -> Tensor:
    """The inner loss per task ``[M]`` over each task's steps.

    ``reinforce``: ``-mean(log pi(a|s) * A)`` (the MAML paper's). ``lvc``: ``-mean(exp(log pi -
    stop_grad(log pi)) * A)`` (ProMP's low-variance curvature objective), whose value is
    ``-mean(A)`` and whose gradient is REINFORCE's; only its second derivatives differ.
    """
    if objective not in INNER_OBJECTIVES:
        raise ValueError(f"objective must be one of {INNER_OBJECTIVES}, got {objective!r}")
    mean, log_std = model(params, episodes.per_task(episodes.obs))  # [M, K, act_dim]
    logp = log_prob(mean, log_std, episodes.per_task(episodes.actions))  # [M, K]
    adv = episodes.per_task(episodes.advantages)
    weight = torch.exp(logp - logp.detach()) if objective == "lvc" else logp
    return -masked_task_mean(weight * adv, episodes.per_task(episodes.mask))


@dataclass
class Adaptation:
    """What :func:`adapt_policy` did.

    Attributes:
        params: the per-task parameters ``[M, ...]`` after 0, 1, ..., S steps (S + 1 entries).
        episodes: the episodes sampled from each of them (S + 1 entries): ``episodes[k]`` trained
            step k for k < S; ``episodes[S]`` were sampled from the adapted policies.
    """

    params: list[Params]
    episodes: list[Episodes]

    @property
    def num_steps(self) -> int:
        return len(self.params) - 1

    @property
    def adapted(self) -> Params:
        """The parameters after the last step."""
        return self.params[-1]

    def returns(self) -> Tensor:
        """Mean undiscounted return per task after 0..S steps, ``[S + 1, M]``."""
        return torch.stack([e.task_returns() for e in self.episodes])


def adapt_policy(model: TaskBatchedModel, params: Params, inner: InnerLoop,
                 sample: Callable[[Params, int], Episodes], num_steps: int | None = None,
                 create_graph: bool | None = None, objective: str = "reinforce") -> Adaptation:
    """Adapt per-task policy parameters with ``num_steps`` policy-gradient steps, sampling before each.

    Args:
        model: the task-batched policy.
        params: the initial per-task parameters ``[M, ...]``.
        inner: step size (per step and tensor), mask, first order; ``inner.num_steps`` is the
            default number of steps.
        sample: ``sample(params, k) -> Episodes`` with advantages, for k = 0..S; called with
            detached parameters (k = S: from the adapted policies).
        num_steps: S (default ``inner.num_steps``).
        create_graph: keep the graph through the steps (the meta-gradient's), default ``not
            inner.first_order``. ``False``: each step starts from detached leaves and returns
            detached parameters (evaluation, the API).
        objective: the inner loss (:func:`policy_gradient_loss`).

    Returns:
        An :class:`Adaptation` (parameters and episodes after 0..S steps).
    """
    num_steps = inner.num_steps if num_steps is None else num_steps
    if num_steps < 0:
        raise ValueError(f"num_steps must be >= 0, got {num_steps}")
    states, episodes = [dict(params)], []
    for k in range(num_steps + 1):
        current = states[-1]
        eps = sample({n: v.detach() for n, v in current.items()}, k)
        episodes.append(eps)
        if k == num_steps:
            break
        check_per_task(model, current, eps.num_tasks)
        if create_graph is False:
            leaves = {n: v.detach().requires_grad_(True) for n, v in current.items()}
            new = inner.step(leaves, policy_gradient_loss(model, leaves, eps, objective), k, create_graph=False)
            states.append({n: v.detach() for n, v in new.items()})
        else:
            states.append(inner.step(current, policy_gradient_loss(model, current, eps, objective), k,
                                     create_graph=create_graph))
    return Adaptation(states, episodes)
