"""Episodes as padded tensors, and the sampler that collects M tasks x B episodes in one batch."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from rl_maml.aliases import Params
from rl_maml.functional import TaskBatchedModel, check_per_task
from rl_maml.seeding import derive_seed


NONFINITE_POLICY = (
    "the policy's actions are not finite (NaN or infinite), usually after an inner step that was too large: lower "
    "inner.inner_lr (or eval.step_scales for evaluation); the env was not stepped with them and no checkpoint changed")
LIVE_CHECK_EVERY = 10
"""On a CUDA device, :func:`sample_episodes` checks the actions and whether any episode is still
running every this many steps (not every step: each check waits for the device)."""
NONFINITE_ADVANTAGES = ("the returns or advantages are not finite: the env's rewards or observations overflowed, or "
                        "the baseline fit did; check the env's rewards and inner.inner_lr")

# per_task packs the rows when the busiest task took fewer than this fraction of the T x B steps.
PACK_BELOW = 0.9


@dataclass
class Episodes:
    """B episodes for each of M tasks, padded to the horizon T.

    Attributes:
        obs: ``[T, M, B, obs_dim]`` observation before each step.
        actions: ``[T, M, B, act_dim]``.
        rewards: ``[T, M, B]`` (0 at masked steps).
        mask: ``[T, M, B]``, 1 where the step was taken, 0 after the episode ended.
        advantages: ``[T, M, B]``, filled by :meth:`compute_advantages`.
    """

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor
    advantages: Tensor | None = None
    sampled_steps: int | None = None
    """Env steps simulated to collect these episodes, when more than the mask holds (a step budget
    drops the episodes past it); ``None``: the mask's count."""
    pack_rows: int | None = None
    """The row count K of :meth:`per_task`'s packed layout when set (the most steps any task of the
    whole meta-batch took, when it is split across processes, so that every rank packs like one
    process); ``None``: this batch's own."""

    @property
    def num_tasks(self) -> int:
        return self.obs.shape[1]

    def returns(self) -> Tensor:
        """Undiscounted return of every episode, ``[M, B]`` (0 for an episode slot left empty)."""
        return (self.rewards * self.mask).sum(0)

    def kept(self) -> Tensor:
        """``[M, B]``: 1 for every episode slot that holds an episode (every episode takes a first step)."""
        return self.mask[0]

    def task_returns(self) -> Tensor:
        """Mean undiscounted return per task over its episodes, ``[M]``."""
        return self.returns().sum(1) / self.kept().sum(1).clamp(min=1)

    def mean_return(self) -> float:
        """Mean undiscounted return per episode, over all tasks' episodes."""
        return (self.returns().sum() / self.kept().sum().clamp(min=1)).item()

    def env_steps(self) -> int:
        """Env steps simulated for these episodes (see ``sampled_steps``)."""
        return self.num_steps() if self.sampled_steps is None else self.sampled_steps

    def first_episodes(self, count: int) -> Episodes:
        """The first ``count`` episodes of every task (a subsample; episodes are i.i.d.)."""
        adv = None if self.advantages is None else self.advantages[:, :, :count]
        return Episodes(self.obs[:, :, :count], self.actions[:, :, :count], self.rewards[:, :, :count],
                        self.mask[:, :, :count], adv)

    def num_steps(self) -> int:
        return int(self.mask.sum().item())

    def per_task(self, x: Tensor) -> Tensor:
        """``[T, M, B, ...]`` -> ``[M, K, ...]``: each task's steps as rows (the layout the
        task-batched policy takes).

        When many steps are masked (episodes that ended early, slots a step budget left empty),
        only the K = most steps any task took are kept: each task's steps first, in ``(t, b)``
        order, then masked rows up to K. Every consumer reduces with ``per_task(mask)``, so the
        values are those of the dense ``[M, T * B]`` layout (up to the order of floating-point
        sums) at a fraction of the policy evaluations. Otherwise K = T * B, the dense layout.
        """
        T, M, B = x.shape[:3]
        index = self._packed_rows()
        if index is None:
            return x.transpose(0, 1).reshape(M, T * B, *x.shape[3:])
        t, m, b = index
        return x[t, m, b]  # [M, K, ...]: one advanced-indexing copy, as cheap as the dense reshape

    def _packed_rows(self) -> tuple[Tensor, Tensor, Tensor] | None:
        """``(t, m, b)`` indices ``[M, K]`` of :meth:`per_task`'s packed rows, or ``None`` for the dense layout.

        Cached per mask tensor (and its version counter, so an in-place change of the mask recomputes it)."""
        key = (self.mask.data_ptr(), self.mask._version, tuple(self.mask.shape))
        cached = getattr(self, "_rows_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        T, M, B = self.mask.shape
        K = int((self.mask != 0).sum(dim=(0, 2)).max().item()) if self.pack_rows is None else self.pack_rows
        index = None
        if K < PACK_BELOW * T * B:
            rows = valid_rows_first(self.mask, K)
            tasks = torch.arange(M, device=rows.device).view(M, 1).expand_as(rows)
            index = (rows // B, tasks, rows % B)
        self._rows_cache = (key, index)
        return index

    def compute_advantages(self, baseline, gamma: float, gae_lambda: float, normalize: bool = True) -> Tensor:
        """Fit ``baseline`` per task to the discounted returns, then GAE (optionally normalised per task)."""
        from rl_maml.rl.returns import discounted_returns, gae, normalize_per_task

        returns = discounted_returns(self.rewards, self.mask, gamma)
        values = baseline.fit_predict(self.obs, returns, self.mask)
        adv = gae(self.rewards, values, self.mask, gamma, gae_lambda)
        self.advantages = normalize_per_task(adv, self.mask) if normalize else adv
        if not torch.isfinite(self.advantages).all():
            raise FloatingPointError(NONFINITE_ADVANTAGES)
        return self.advantages


def valid_rows_first(mask: Tensor, rows: int | None = None) -> Tensor:
    """Each task's unmasked steps as flat ``t * B + b`` positions ``[M, K]`` of ``mask [T, M, B]``,
    in ``(t, b)`` order, then masked positions up to ``K = rows`` (default: the most unmasked steps
    of any task, at least 1). The positions of a task are distinct."""
    T, M, B = mask.shape
    valid = mask.transpose(0, 1).reshape(M, T * B) != 0
    K = int(valid.sum(1).max().item()) if rows is None else rows
    return torch.sort((~valid).to(torch.uint8), dim=1, stable=True).indices[:, :max(K, 1)]  # a stable sort of "is masked"


def episode_seeds(seed: int, *keys: int | str, num_tasks: int, episodes_per_task: int,
                  task_offset: int = 0) -> list[int]:
    """Reset seeds of the M x B episodes, each derived from ``(seed, *keys, task, episode)``; tasks
    are numbered from ``task_offset`` (a rank's share of a meta-batch keeps the global numbers)."""
    return [derive_seed(seed, *keys, m, b) % (1 << 32) for m in range(task_offset, task_offset + num_tasks)
            for b in range(episodes_per_task)]


@torch.no_grad()
def sample_episodes(env, policy: TaskBatchedModel, params: Params, tasks: Mapping[str, Tensor], episodes_per_task: int,
                    reset_seeds: list[int], generator: torch.Generator, deterministic: bool = False,
                    steps_needed: Tensor | None = None, shard=None, check_every: int | None = None) -> Episodes:
    """Roll out B episodes per task with each task's own policy parameters, all N = M x B at once.

    Args:
        env: a batched env with ``num_envs = M * B`` (env ``m * B + b`` runs episode b of task m).
        policy: the policy applied per task (a :class:`~rl_maml.functional.TaskBatchedModel`).
        params: per-task policy parameters ``[M, ...]`` (expand shared ones with
            :func:`~rl_maml.functional.expand_params`).
        tasks: task fields with leading axis M.
        episodes_per_task: B.
        reset_seeds: one seed per episode (see :func:`episode_seeds`).
        generator: drives the action noise (on the policy's device).
        deterministic: act with the mean action.
        steps_needed: ``[M]`` env steps each task still needs (a step budget's remainder). An
            episode b is stopped, and no longer simulated, as soon as the steps already taken by
            episodes 0..b-1 of its task reach that: the budget's fewest first episodes cannot
            include it (:func:`sample_step_budget`). The episodes kept are unchanged draw for draw
            (envs are independent and the action noise is drawn for every env); only the
            simulation of episodes that would be dropped is saved, for envs with a ``stop(ids)``
            method.
        shard: this process's :class:`~rl_maml.distributed.TaskShard` when the meta-batch is split
            across processes: the action noise is drawn for the whole meta-batch and sliced, and the
            loop ends on every rank together, so each task's episodes are those of one process.
        check_every: check the actions and whether any episode still runs every this many steps
            instead of every step (default: 1 on the CPU, :data:`LIVE_CHECK_EVERY` on a GPU; 1 when
            the meta-batch is split). Between checks nothing waits for the device; non-finite
            actions reach the env as 0 and raise at the next check. The episodes kept are the same
            for any value (steps after all ended are masked); only the generator's state afterwards
            can differ.
    """
    M = len(next(iter(tasks.values())))
    B = episodes_per_task
    N = M * B
    if env.num_envs != N:
        raise ValueError(f"the batched env has {env.num_envs} envs, expected M x B = {M} x {B} = {N}")
    check_per_task(policy, params, M)
    device = next(iter(params.values())).device
    env_tasks = {k: torch.as_tensor(v).repeat_interleave(B, dim=0) for k, v in tasks.items()}
    obs = env.reset(env_tasks, reset_seeds).to(device)
    T = env.horizon
    obs_buf = torch.zeros(T, M, B, env.obs_dim, device=device)
    act_buf = torch.zeros(T, M, B, env.act_dim, device=device)
    rew_buf = torch.zeros(T, M, B, device=device)
    mask_buf = torch.zeros(T, M, B, device=device)
    alive = torch.ones(N, dtype=torch.bool, device=device)
    taken = torch.zeros(M, B, device=device)
    # On a GPU the loop does not wait for the device every step (a wait would drain the queue that
    # overlaps this step's launches with the last step's physics): the actions' check accumulates on
    # the device, non-finite actions reach the env as 0, and both the check and the all-ended exit
    # run every check_every steps (steps after every episode ended are masked like any other).
    if check_every is None:
        check_every = LIVE_CHECK_EVERY if device.type == "cuda" else 1
    if check_every < 1:
        raise ValueError(f"check_every must be >= 1, got {check_every}")
    lazy = check_every > 1 and shard is None
    bad_actions = torch.zeros((), dtype=torch.bool, device=device)
    to_stop = torch.zeros(N, dtype=torch.bool, device=device)  # lazy: episodes to stop at the next check
    for t in range(T):
        mean, log_std = policy(params, obs.view(M, B, -1).to(obs_buf.dtype))  # [M, B, act_dim]
        if deterministic:
            action = mean
        else:
            shape = mean.shape if shard is None else (shard.total, *mean.shape[1:])
            noise = torch.randn(shape, generator=generator, device=device)
            action = mean + torch.exp(log_std) * (noise if shard is None else shard.slice(noise))
        obs_buf[t] = obs.view(M, B, -1)
        act_buf[t] = action
        mask_buf[t] = alive.view(M, B)
        if lazy:
            bad_actions |= ~torch.isfinite(action).all()
            env_action = torch.nan_to_num(action, nan=0.0, posinf=0.0, neginf=0.0)
        elif not bool(torch.isfinite(action).all()):  # before the env sees them
            raise FloatingPointError(NONFINITE_POLICY)
        else:
            env_action = action
        obs, reward, done, _ = env.step(env_action.reshape(N, -1))
        obs = obs.to(device)
        rew_buf[t] = reward.to(device).view(M, B) * alive.view(M, B)
        alive = alive & ~done.to(device)
        if steps_needed is not None and hasattr(env, "stop"):
            taken = taken + mask_buf[t]  # [M, B] steps taken so far, a lower bound of each length
            unneeded = (taken.cumsum(1) - taken >= steps_needed.to(device).view(M, 1)).view(N) & alive
            if lazy:  # the same mask without a wait; the env is told at the next check
                alive = alive & ~unneeded
                to_stop |= unneeded
            elif unneeded.any():
                env.stop(unneeded.nonzero().view(-1).cpu().numpy())
                alive = alive & ~unneeded
        if lazy and (t + 1) % check_every and t + 1 < T:
            continue
        if lazy and bool(bad_actions):
            raise FloatingPointError(NONFINITE_POLICY)
        if lazy and bool(to_stop.any()):
            env.stop(to_stop.nonzero().view(-1).cpu().numpy())
            to_stop.zero_()
        if not (bool(alive.any()) if shard is None else shard.any(bool(alive.any()))):
            break
    return _packed_like_one_process(Episodes(obs_buf, act_buf, rew_buf, mask_buf), shard)


def _packed_like_one_process(episodes: Episodes, shard) -> Episodes:
    """Under a split meta-batch, the packed layout's row count of the whole meta-batch (see ``pack_rows``)."""
    if shard is not None:
        local = int(episodes.mask.sum(dim=(0, 2)).max().item())
        episodes.pack_rows = shard.max_int(local)
    return episodes


def concat_episodes(parts: list[Episodes]) -> Episodes:
    """Episodes side by side along the episode axis B (advantages are not carried)."""
    return Episodes(*(torch.cat([getattr(p, f) for p in parts], dim=2) for f in ("obs", "actions", "rewards", "mask")),
                    sampled_steps=sum(p.env_steps() for p in parts))


def sample_step_budget(env, policy: TaskBatchedModel, params: Params, tasks: Mapping[str, Tensor],
                       episodes_per_task: int, steps_per_task: int, seed: int, keys: tuple,
                       generator: torch.Generator, shard=None) -> Episodes:
    """Episodes of every task until they hold at least ``steps_per_task`` env steps (rllab's sampler).

    rllab's samplers collected whole episodes for each task until the task held its share of the
    batch (``fast_batch_size x max_path_length`` steps in MAML's training, ``batch_size`` steps in
    its test scripts), starting a new episode whenever one ended early. Here rounds of
    ``episodes_per_task`` episodes per task are sampled until every task has the budget (round 0
    uses the reset seeds of a fixed-count batch with the same ``keys``, later rounds
    ``(*keys, "round", r)``); each task then keeps its fewest first episodes whose lengths sum to
    at least the budget. The episodes past that are masked out (mask and rewards 0), so that every
    masked computation (baseline fit, advantages, inner loss, surrogate, KL) ignores them, and the
    episode axis is cut to the most episodes any task keeps. ``kept()`` tells which slots hold
    episodes; ``sampled_steps`` counts every simulated step. ``shard``: as for
    :func:`sample_episodes`; rounds continue on every rank while any rank's tasks need more.
    """
    if steps_per_task < 1:
        raise ValueError(f"steps_per_task must be >= 1, got {steps_per_task}")
    M = len(next(iter(tasks.values())))
    parts, total, r = [], torch.zeros(M), 0
    offset = 0 if shard is None else shard.offset

    def more() -> bool:
        short = bool((total < steps_per_task).any())
        return short if shard is None else shard.any(short)

    while not parts or more():
        round_keys = keys if r == 0 else (*keys, "round", r)
        seeds = episode_seeds(seed, *round_keys, num_tasks=M, episodes_per_task=episodes_per_task,
                              task_offset=offset)
        needed = (steps_per_task - total).clamp(min=0)
        parts.append(sample_episodes(env, policy, params, tasks, episodes_per_task, seeds, generator,
                                     steps_needed=needed, shard=shard))
        total += parts[-1].mask.sum(dim=(0, 2)).cpu()
        r += 1
    episodes = concat_episodes(parts)
    lengths = episodes.mask.sum(0)  # [M, B * rounds]
    keep = (lengths.cumsum(1) - lengths < steps_per_task).to(episodes.mask.dtype)
    width = int(keep.sum(1).max().item())
    width = width if shard is None else shard.max_int(width)  # the whole meta-batch's, as in one process
    keep = keep[:, :width]
    kept = Episodes(episodes.obs[:, :, :width], episodes.actions[:, :, :width],
                    episodes.rewards[:, :, :width] * keep, episodes.mask[:, :, :width] * keep,
                    sampled_steps=episodes.sampled_steps)
    return _packed_like_one_process(kept, shard)
