"""The MAML paper's meta-RL evaluation: returns after 0, 1, 2, ... policy-gradient steps."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from rl_maml.inner import AdaptationMask, ConstantStepSize, InnerLoop, StepSize, step_scale
from rl_maml.rl.episodes import Episodes, episode_seeds, sample_episodes, sample_step_budget
from rl_maml.rl.maml_trpo import MAMLTRPO, TRPOSettings
from rl_maml.rl.policy import GaussianMLPPolicy
from rl_maml.seeding import torch_generator


def adaptation_returns(policy: GaussianMLPPolicy, env, tasks: Mapping[str, Tensor], episodes_per_task: int,
                       num_steps: int, inner_lr: float | StepSize, baseline, gamma: float, gae_lambda: float,
                       seed: int, step_scales: tuple[float, ...] = (1.0, 0.5), mask: AdaptationMask | None = None,
                       steps_per_task: int | None = None) -> tuple[Tensor, list[Episodes]]:
    """Adapt ``policy`` to each task with vanilla policy gradient and record the returns.

    Step k uses step size ``inner_lr * step_scales[k]`` (the paper: alpha, then alpha/2), and
    fresh episodes are sampled after every step; ``mask`` limits which tensors adapt (Lambda
    patterns). ``inner_lr`` may also be a step-size object (e.g.
    Alpha MAML's learned per-layer alphas), whose values are scaled the same way.

    Each step samples ``episodes_per_task`` episodes per task, or, with ``steps_per_task``, as
    many as hold that many env steps (:func:`sample_step_budget`; the MAML paper's test script
    sampled 4000 env steps per step, more episodes once adapted episodes end early).

    Returns:
        Mean undiscounted return per task (over its episodes) after 0..num_steps steps,
        ``[num_steps + 1, M]``, and the episodes of every step.
    """
    if steps_per_task is not None and steps_per_task < 1:
        raise ValueError(f"steps_per_task must be >= 1 (or None for a fixed episode count), got {steps_per_task}")
    if isinstance(inner_lr, (int, float)):
        step_size: StepSize = ConstantStepSize(float(inner_lr), step_scales)
    else:
        base = inner_lr

        def step_size(step: int, name: str) -> Tensor:
            # The object's first-step value (its own per-step schedule, if any, is replaced by step_scales).
            return torch.as_tensor(base(0, name)).detach() * step_scale(step_scales, step)

    meta = MAMLTRPO(policy, InnerLoop(step_size, first_order=True, mask=mask), TRPOSettings())
    M = len(next(iter(tasks.values())))
    params = {k: v.detach() for k, v in meta.params().items()}
    returns, all_episodes = [], []
    device = next(policy.parameters()).device
    for s in range(num_steps + 1):
        generator = torch_generator(seed, "eval-actions", s, device=device)
        if steps_per_task is None:
            seeds = episode_seeds(seed, "eval", s, num_tasks=M, episodes_per_task=episodes_per_task)
            episodes = sample_episodes(env, meta.batched, params, tasks, episodes_per_task, seeds, generator)
        else:
            episodes = sample_step_budget(env, meta.batched, params, tasks, episodes_per_task, steps_per_task,
                                          seed, ("eval", s), generator)
        returns.append(episodes.task_returns())
        all_episodes.append(episodes)
        if s < num_steps:
            episodes.compute_advantages(baseline, gamma, gae_lambda)
            leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
            params = {k: v.detach() for k, v in meta.adapt_step(leaves, episodes, s, create_graph=False).items()}
    return torch.stack(returns), all_episodes
