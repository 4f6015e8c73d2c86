"""The k-step evaluation's sampling: a fixed episode count, or episodes until a step budget."""

from __future__ import annotations

import pytest
import torch

from rl_maml.functional import TaskBatchedModel, expand_params
from rl_maml.inner import ConstantStepSize, InnerLoop
from rl_maml.rl.baseline import LinearFeatureBaseline
from rl_maml.rl.episodes import episode_seeds, sample_episodes, sample_step_budget
from rl_maml.rl.evaluation import adaptation_returns
from rl_maml.rl.policy import GaussianMLPPolicy
from rl_maml.seeding import torch_generator


class LengthBySeed:
    """A batched env whose episode lengths are set by the reset seeds: 1 + seed % horizon steps,
    reward 1 per step (so an episode's return is its length)."""

    obs_dim = 1
    act_dim = 1

    def __init__(self, num_envs: int, horizon: int):
        self.num_envs, self.horizon = num_envs, horizon

    def reset(self, tasks, seeds):
        self.length = torch.tensor([1 + s % self.horizon for s in seeds])
        self.t = 0
        return torch.zeros(self.num_envs, 1)

    def step(self, actions):
        self.t += 1
        done = self.length <= self.t
        return torch.full((self.num_envs, 1), float(self.t)), torch.ones(self.num_envs), done, {}


def _policy():
    torch.manual_seed(0)
    return GaussianMLPPolicy(1, 1, (4,))


def test_step_budget_keeps_the_fewest_whole_episodes_that_reach_it():
    M, B, T, budget, seed = 3, 4, 10, 25, 7
    env, policy = LengthBySeed(M * B, T), _policy()
    tasks = {"x": torch.zeros(M)}
    params = expand_params(dict(policy.named_parameters()), M)
    eps = sample_step_budget(env, TaskBatchedModel(policy), params, tasks, B, budget, seed, ("eval", 0),
                             torch_generator(seed, "eval-actions", 0))
    lengths, kept = eps.mask.sum(0), eps.kept()
    assert eps.mask.shape[2] > B  # 4 episodes of <= 10 steps cannot hold 25
    assert eps.mask.shape[2] == kept.sum(1).max()  # cut to the most episodes a task keeps
    rounds = 0
    sampled = 0
    while True:  # every round's episodes were simulated whole, kept or not
        keys = ("eval", 0) if rounds == 0 else ("eval", 0, "round", rounds)
        round_lengths = torch.tensor([1 + s % T for s in episode_seeds(seed, *keys, num_tasks=M,
                                                                          episodes_per_task=B)]).view(M, B)
        sampled += int(round_lengths.sum())
        rounds += 1
        if rounds * B >= eps.mask.shape[2] and (lengths.sum(1) >= budget).all():
            break
    assert eps.sampled_steps == sampled and eps.env_steps() == sampled > eps.num_steps()
    for m in range(M):
        n = int(kept[m].sum())
        assert kept[m, :n].all() and not kept[m, n:].any()  # a prefix of the episodes, in sample order
        assert lengths[m, :n].sum() >= budget > lengths[m, :n - 1].sum()  # the fewest that reach the budget
        # Every episode kept is whole: its length is the one its seed gave.
        seeds = [s for r in range(rounds)
                 for s in episode_seeds(seed, *(("eval", 0) if r == 0 else ("eval", 0, "round", r)),
                                        num_tasks=M, episodes_per_task=B)[m * B:(m + 1) * B]]
        assert lengths[m, :n].tolist() == [1 + s % T for s in seeds[:n]]
    assert (eps.rewards.sum(0) == lengths).all()  # dropped episodes carry no reward
    # Round 0 is the fixed-count sampler's batch, draw for draw.
    fixed = sample_episodes(env, TaskBatchedModel(policy), params, tasks, B,
                            episode_seeds(seed, "eval", 0, num_tasks=M, episodes_per_task=B),
                            torch_generator(seed, "eval-actions", 0))
    assert torch.equal(fixed.actions, eps.actions[:, :, :B])


def test_adaptation_returns_average_over_the_kept_episodes_only():
    M, B, T = 2, 3, 6
    env, policy = LengthBySeed(M * B, T), _policy()
    tasks = {"x": torch.zeros(M)}
    args = (policy, env, tasks, B, 1, InnerLoop(ConstantStepSize(0.1), first_order=True), LinearFeatureBaseline(),
            0.99, 1.0, 3)
    returns, eps = adaptation_returns(*args, steps_per_task=20)
    for s, ep in enumerate(eps):
        kept = ep.mask[0]
        expected = ep.mask.sum(0).sum(1) / kept.sum(1)  # return = length: the mean length of the kept episodes
        assert torch.allclose(returns[s], expected)
        assert (ep.mask.sum(dim=(0, 2)) >= 20).all()
    fixed, _ = adaptation_returns(*args)  # B episodes per task: the mean over all of them
    assert fixed.shape == returns.shape
    assert torch.equal(fixed[0], sample_episodes(env, TaskBatchedModel(policy),
                                                 expand_params(dict(policy.named_parameters()), M),
                                                 tasks, B, episode_seeds(3, "eval", 0, num_tasks=M,
                                                                         episodes_per_task=B),
                                                 torch_generator(3, "eval-actions", 0)).returns().mean(1))
    with pytest.raises(ValueError, match="steps_per_task must be >= 1"):
        adaptation_returns(*args, steps_per_task=0)


def test_evaluation_runs_rollouts_with_the_callers_threads_and_fits_and_inner_steps_with_batch_threads(
        thread_counts):
    """As in training: rl-maml eval steps the envs with train.num_threads (MuJoCo's cores) and fits
    the baseline and takes the inner steps with meta_step_threads; the caller's count comes back,
    and the returns do not depend on the split."""
    seen, watch = thread_counts
    watch("rollout", LengthBySeed, "step")
    watch("baseline", LinearFeatureBaseline, "fit_predict")
    watch("inner", InnerLoop, "step")
    M, B, T = 2, 3, 6
    tasks = {"x": torch.zeros(M)}

    def run(**kwargs):
        return adaptation_returns(_policy(), LengthBySeed(M * B, T), tasks, B, 2,
                                  InnerLoop(ConstantStepSize(0.1), first_order=True), LinearFeatureBaseline(),
                                  0.99, 1.0, 3, steps_per_task=10, **kwargs)[0]

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        split = run(batch_threads=2)
        assert torch.get_num_threads() == 1
        assert seen == {"rollout": {1}, "baseline": {2}, "inner": {2}}
        for found in seen.values():
            found.clear()
        same = run()  # no batch_threads: everything with the caller's count
        assert seen == {"rollout": {1}, "baseline": {1}, "inner": {1}}
    finally:
        torch.set_num_threads(before)
    assert torch.allclose(split, same)


class Recording(LengthBySeed):
    """LengthBySeed that keeps every action it was stepped with."""

    def reset(self, tasks, seeds):
        self.seen = []
        return super().reset(tasks, seeds)

    def step(self, actions):
        self.seen.append(actions.clone())
        return super().step(actions)


def test_checking_every_few_steps_keeps_the_same_episodes():
    """The GPU sampler's mode (no wait per step) keeps exactly the episodes of the per-step mode."""
    M, B, T = 3, 4, 10
    env, policy = Recording(M * B, T), _policy()
    tasks = {"x": torch.zeros(M)}
    params = expand_params(dict(policy.named_parameters()), M)
    seeds = episode_seeds(5, "x", num_tasks=M, episodes_per_task=B)
    every = sample_episodes(env, TaskBatchedModel(policy), params, tasks, B, seeds, torch_generator(5, "a"),
                            check_every=1)
    steps_every = len(env.seen)
    lazy = sample_episodes(env, TaskBatchedModel(policy), params, tasks, B, seeds, torch_generator(5, "a"),
                           check_every=4)
    assert steps_every < T and len(env.seen) == min(T, 4 * -(-steps_every // 4))  # ran on to the next check
    assert torch.equal(lazy.mask, every.mask) and torch.equal(lazy.rewards, every.rewards)
    kept = every.mask.bool()
    assert torch.equal(lazy.actions[kept], every.actions[kept]) and torch.equal(lazy.obs[kept], every.obs[kept])
    with torch.no_grad():
        next(policy.parameters()).fill_(float("nan"))
    bad = expand_params(dict(policy.named_parameters()), M)
    with pytest.raises(FloatingPointError, match="not finite"):
        sample_episodes(env, TaskBatchedModel(policy), bad, tasks, B, seeds, torch_generator(5, "a"), check_every=4)
    assert len(env.seen) == 4 and all(torch.equal(a, torch.zeros_like(a)) for a in env.seen)  # raised at the check
    with pytest.raises(ValueError, match="check_every must be >= 1"):
        sample_episodes(env, TaskBatchedModel(policy), params, tasks, B, seeds, torch_generator(5, "a"), check_every=0)


class Stoppable(LengthBySeed):
    """LengthBySeed with ``stop(ids)``: stopped episodes report done from then on."""

    def reset(self, tasks, seeds):
        self.stopped = torch.zeros(self.num_envs, dtype=torch.bool)
        self.stop_calls = 0
        return super().reset(tasks, seeds)

    def stop(self, ids):
        self.stop_calls += 1
        self.stopped[torch.as_tensor(ids)] = True

    def step(self, actions):
        obs, reward, done, info = super().step(actions)
        return obs, reward, done | self.stopped, info


def test_checking_every_few_steps_still_stops_what_a_step_budget_drops():
    M, B, T = 2, 4, 10
    env, policy = Stoppable(M * B, T), _policy()
    tasks = {"x": torch.zeros(M)}
    params = expand_params(dict(policy.named_parameters()), M)
    seeds = episode_seeds(2, "x", num_tasks=M, episodes_per_task=B)
    needed = torch.tensor([6.0, 9.0])
    runs = []
    for every in (1, 3):
        eps = sample_episodes(env, TaskBatchedModel(policy), params, tasks, B, seeds, torch_generator(2, "a"),
                              steps_needed=needed, check_every=every)
        runs.append((eps, env.stop_calls))
    (every, calls_every), (lazy, calls_lazy) = runs
    assert torch.equal(lazy.mask, every.mask) and torch.equal(lazy.rewards, every.rewards)
    assert calls_every > 0 and calls_lazy > 0  # the env was told in both modes
    assert (every.mask.sum(0) < torch.tensor([1 + s % T for s in seeds]).view(M, B)).any()  # something was cut
