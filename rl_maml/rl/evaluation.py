"""The MAML paper's meta-RL evaluation: returns after 0, 1, 2, ... policy-gradient steps."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from rl_maml.inner import AdaptationMask, ConstantStepSize, InnerLoop, StepSize, step_scale
from rl_maml.rl.episodes import Episodes, episode_seeds, sample_episodes
from rl_maml.rl.maml_trpo import MAMLTRPO, TRPOSettings
from rl_maml.rl.policy import GaussianMLPPolicy
from rl_maml.seeding import torch_generator


def _concat(parts: list[Episodes]) -> Episodes:
    return Episodes(*(torch.cat([getattr(p, f) for p in parts], dim=2) for f in ("obs", "actions", "rewards", "mask")))


def sample_step_budget(env, policy, params, tasks: Mapping[str, Tensor], episodes_per_task: int, steps_per_task: int,
                       seed: int, step: int, generator: torch.Generator) -> Episodes:
    """Episodes of every task until they hold at least ``steps_per_task`` env steps.

    Rounds of ``episodes_per_task`` episodes (round 0's reset seeds are those of a fixed-count
    evaluation) are sampled until every task has the budget; each task then keeps its fewest
    first episodes whose lengths sum to at least the budget, whole episodes as rllab's sampler
    kept them. Dropped episodes are masked out (mask and rewards 0), so that every masked
    computation (baseline fit, advantages, the inner loss) ignores them; ``Episodes.mask[0]``
    tells which episodes are kept.
    """
    M = len(next(iter(tasks.values())))
    parts, total, r = [], torch.zeros(M), 0
    while not parts or bool((total < steps_per_task).any()):
        keys = ("eval", step) if r == 0 else ("eval", step, "round", r)
        seeds = episode_seeds(seed, *keys, num_tasks=M, episodes_per_task=episodes_per_task)
        parts.append(sample_episodes(env, policy, params, tasks, episodes_per_task, seeds, generator))
        total += parts[-1].mask.sum(dim=(0, 2)).cpu()
        r += 1
    episodes = _concat(parts)
    lengths = episodes.mask.sum(0)  # [M, B]
    keep = (lengths.cumsum(1) - lengths < steps_per_task).to(episodes.mask.dtype)
    episodes.mask = episodes.mask * keep
    episodes.rewards = episodes.rewards * keep
    return episodes


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
                                          seed, s, generator)
        kept = episodes.mask[0]  # [M, B]: every episode takes its first step
        returns.append(episodes.returns().sum(1) / kept.sum(1))
        all_episodes.append(episodes)
        if s < num_steps:
            episodes.compute_advantages(baseline, gamma, gae_lambda)
            leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
            params = {k: v.detach() for k, v in meta.adapt_step(leaves, episodes, s, create_graph=False).items()}
    return torch.stack(returns), all_episodes
