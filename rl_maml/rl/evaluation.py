"""The MAML paper's meta-RL evaluation: returns after 0, 1, 2, ... policy-gradient steps."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from rl_maml.functional import TaskBatchedModel, expand_params, params_of
from rl_maml.inner import InnerLoop, StepSize, step_scale
from rl_maml.rl.adaptation import Adaptation, adapt_policy
from rl_maml.rl.episodes import Episodes, episode_seeds, sample_episodes, sample_step_budget
from rl_maml.rl.policy import GaussianMLPPolicy
from rl_maml.runtime import torch_threads
from rl_maml.seeding import torch_generator


@dataclass(frozen=True)
class RescaledStepSize:
    """Step k of ``base`` at its first step's value times ``step_scales[k]`` (the last entry repeats).

    An evaluation protocol's schedule on a trained inner loop: the MAML paper's test scripts used
    alpha, then alpha/2 (AntDir: alpha/100), whatever the training's schedule; per-tensor and learned
    step sizes (Alpha MAML's) keep their per-tensor values."""

    base: StepSize
    step_scales: tuple[float, ...]

    def __call__(self, step: int, name: str):
        value = self.base(0, name)
        if isinstance(value, Tensor):
            value = value.detach()
        return value * step_scale(self.step_scales, step)


def evaluation_inner(inner: InnerLoop, step_scales: Sequence[float] | None = None) -> InnerLoop:
    """The inner loop evaluation adapts with: the training's (step sizes per step, mask), or, with
    ``step_scales``, the training's first-step sizes rescaled per step (:class:`RescaledStepSize`).
    Always first order (evaluation needs no meta-gradient)."""
    step_size = inner.step_size if step_scales is None else RescaledStepSize(inner.step_size, tuple(step_scales))
    return InnerLoop(step_size, inner.num_steps, first_order=True, mask=inner.mask)


def evaluation_sampler(env, model: TaskBatchedModel, tasks: Mapping[str, Tensor], episodes_per_task: int,
                       baseline, gamma: float, gae_lambda: float, seed: int, steps_per_task: int | None = None,
                       device: torch.device | str = "cpu", rollout_threads: int | None = None,
                       batch_threads: int | None = None):
    """``sample(params, k)`` for :func:`~rl_maml.rl.adaptation.adapt_policy`: evaluation's episodes of step k.

    Step k's episodes are keyed ``("eval", k)`` (reset seeds) and ``("eval-actions", k)`` (action
    noise): every policy evaluated with the same ``seed`` meets the same starts. ``steps_per_task``:
    sample by env-step budget instead of ``episodes_per_task`` episodes (:func:`sample_step_budget`).
    The rollouts run with ``rollout_threads`` torch threads, the baseline fit with
    ``batch_threads`` (``None``: whatever count is set when ``sample`` is called)."""
    M = len(next(iter(tasks.values())))

    def sample(params, k: int) -> Episodes:
        generator = torch_generator(seed, "eval-actions", k, device=device)
        with torch_threads(rollout_threads):
            if steps_per_task is None:
                seeds = episode_seeds(seed, "eval", k, num_tasks=M, episodes_per_task=episodes_per_task)
                episodes = sample_episodes(env, model, params, tasks, episodes_per_task, seeds, generator)
            else:
                episodes = sample_step_budget(env, model, params, tasks, episodes_per_task, steps_per_task, seed,
                                              ("eval", k), generator)
        with torch_threads(batch_threads):
            episodes.compute_advantages(baseline, gamma, gae_lambda)
        return episodes

    return sample


def adapt_to_tasks(policy: GaussianMLPPolicy, env, tasks: Mapping[str, Tensor], inner: InnerLoop, num_steps: int,
                   episodes_per_task: int, baseline, gamma: float, gae_lambda: float, seed: int,
                   steps_per_task: int | None = None, objective: str = "reinforce",
                   batch_threads: int | None = None, on_sample: Callable[[], object] | None = None) -> Adaptation:
    """Adapt ``policy`` to each of ``tasks`` (no meta-gradient) with fresh episodes after every step.

    ``batch_threads``: torch threads for the baseline fits and the inner updates, while the
    rollouts keep the caller's count (as in training: ``train.meta_step_threads`` and
    ``train.num_threads``). ``None``: everything with the caller's count. ``on_sample``: called
    after each of the ``num_steps + 1`` samplings (a progress bar's update)."""
    if steps_per_task is not None and steps_per_task < 1:
        raise ValueError(f"steps_per_task must be >= 1 (or None for a fixed episode count), got {steps_per_task}")
    model = TaskBatchedModel(policy)
    M = len(next(iter(tasks.values())))
    device = next(policy.parameters()).device
    rollout_threads = None if batch_threads is None else torch.get_num_threads()
    sample = evaluation_sampler(env, model, tasks, episodes_per_task, baseline, gamma, gae_lambda, seed,
                                steps_per_task, device, rollout_threads, batch_threads)
    if on_sample is not None:
        sample = _counted(sample, on_sample)
    params = expand_params({k: v.detach() for k, v in params_of(policy).items()}, M)
    with torch_threads(batch_threads):  # the inner updates; the sampler switches back for the rollouts
        return adapt_policy(model, params, inner, sample, num_steps, create_graph=False, objective=objective)


def adaptation_returns(policy: GaussianMLPPolicy, env, tasks: Mapping[str, Tensor], episodes_per_task: int,
                       num_steps: int, inner: InnerLoop, baseline, gamma: float, gae_lambda: float, seed: int,
                       steps_per_task: int | None = None, objective: str = "reinforce",
                       batch_threads: int | None = None,
                       on_sample: Callable[[], object] | None = None) -> tuple[Tensor, list[Episodes]]:
    """The MAML paper's test: adapt ``policy`` to each task and record the returns after 0..num_steps steps.

    Step k adapts with ``inner``'s step size for step k and its mask (build it with
    :func:`evaluation_inner`); fresh episodes are sampled after every step:
    ``episodes_per_task`` per task, or, with ``steps_per_task``, as many as hold that many env
    steps (the MAML paper's test script sampled 4000 env steps per step). ``batch_threads`` and
    ``on_sample``: see :func:`adapt_to_tasks`.

    Returns:
        Mean undiscounted return per task (over its episodes) after 0..num_steps steps,
        ``[num_steps + 1, M]``, and the episodes of every step.
    """
    adaptation = adapt_to_tasks(policy, env, tasks, inner, num_steps, episodes_per_task, baseline, gamma,
                                gae_lambda, seed, steps_per_task, objective, batch_threads, on_sample)
    return adaptation.returns(), adaptation.episodes


def _counted(sample: Callable, on_sample: Callable[[], object]) -> Callable:
    """``sample`` calling ``on_sample`` after each call."""
    def counted(*args, **kwargs):
        out = sample(*args, **kwargs)
        on_sample()
        return out
    return counted
