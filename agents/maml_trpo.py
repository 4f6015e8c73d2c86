"""The MAML-TRPO agent: policy + linear baseline + batched sampler + :class:`~rl_maml.rl.maml_trpo.MAMLTRPO`.

Composition only; the math lives in :mod:`rl_maml.rl`.
"""

from __future__ import annotations

import os
import sys
import time

import torch

from rl_maml.envs.protocol import check_batched_env
from rl_maml.inner import InnerLoop
from rl_maml.rl.baseline import LinearFeatureBaseline
from rl_maml.rl.adaptation import Adaptation, adapt_policy
from rl_maml.rl.episodes import Episodes, episode_seeds, sample_episodes, sample_step_budget
from rl_maml.rl.maml_trpo import MAMLTRPO, TRPOSettings
from rl_maml.rl.policy import GaussianMLPPolicy
from rl_maml.runtime import torch_threads
from rl_maml.seeding import numpy_generator, torch_generator
from rl_maml.training import TrainingError


class MAMLTRPOAgent:
    """Meta-trains a Gaussian policy's initialisation on a task family.

    Args:
        env: the batched env (a :class:`~rl_maml.envs.protocol.BatchedTaskEnv`), with
            ``num_envs = meta_batch_size * fast_batch_size``.
        policy: the policy (its parameters are the meta-parameters).
        inner: the inner loop (``inner_lr``, ``num_inner_steps``, ``first_order``).
        trpo: the meta-step settings.
        meta_batch_size: tasks per meta-batch (M).
        fast_batch_size: episodes per task and inner step (B).
        gamma, gae_lambda: discount and GAE parameter.
        seed: drives tasks (per iteration), episode resets and action noise.
        meta_step_threads: torch threads for the batch computations: the meta-step, the inner
            updates and the baseline fits (0: all cores). The rollouts keep the caller's setting
            (``train.num_threads``: one thread leaves the cores to MuJoCo's own threads).
        batch_steps: env steps per task and inner step: episodes are sampled, ``fast_batch_size``
            at a time, until each task holds this many steps (rllab's sampler; see
            :func:`~rl_maml.rl.episodes.sample_step_budget`). ``None``: exactly
            ``fast_batch_size`` episodes per task.
        shard: this process's share of each meta-batch (:mod:`rl_maml.distributed`); the env then
            holds ``shard.count * fast_batch_size`` envs, and the meta-step is reduced over the ranks.
    """

    name = "maml"

    def __init__(self, env, policy: GaussianMLPPolicy, inner: InnerLoop, trpo: TRPOSettings, meta_batch_size: int,
                 fast_batch_size: int, gamma: float = 0.99, gae_lambda: float = 1.0, seed: int = 0,
                 meta_step_threads: int = 0, batch_steps: int | None = None, shard=None):
        if batch_steps is not None and batch_steps < 1:
            raise ValueError(f"batch_steps must be >= 1 (or None for fast_batch_size episodes), got {batch_steps}")
        check_batched_env(env, "MAMLTRPOAgent's env")
        self.batch_steps = batch_steps
        self.env = env
        self.policy = policy
        self.meta = MAMLTRPO(policy, inner, trpo)
        self.meta.shard = shard
        self.shard = shard
        self.baseline = LinearFeatureBaseline()
        self.M_total, self.B = meta_batch_size, fast_batch_size
        self.M = meta_batch_size if shard is None else shard.count  # this process's tasks
        if shard is not None and shard.total != meta_batch_size:
            raise ValueError(f"the shard splits {shard.total} tasks, the meta-batch has {meta_batch_size}")
        self.gamma, self.gae_lambda = gamma, gae_lambda
        self.seed = seed
        self.device = next(policy.parameters()).device
        self.meta_step_threads = meta_step_threads or os.cpu_count() or 1

    def sample_tasks(self, iteration: int) -> dict[str, torch.Tensor]:
        """Iteration ``iteration``'s meta-batch (this process's share of it when split)."""
        tasks = self.env.sample_tasks(self.M_total, numpy_generator(self.seed, "tasks", iteration))
        tasks = {k: torch.as_tensor(v) for k, v in tasks.items()}
        return tasks if self.shard is None else {k: self.shard.slice(v) for k, v in tasks.items()}

    def _sample(self, params, tasks, *keys, rollout_threads: int | None = None) -> Episodes:
        """Episodes of ``params`` on ``tasks``, with advantages. The rollouts run with
        ``rollout_threads`` torch threads (default: the current count), the baseline fit with
        ``meta_step_threads``."""
        offset = 0 if self.shard is None else self.shard.offset
        seeds = episode_seeds(self.seed, *keys, num_tasks=self.M, episodes_per_task=self.B, task_offset=offset)
        gen = torch_generator(self.seed, "actions", *keys, device=self.device)
        params = {k: v.detach() for k, v in params.items()}
        with torch_threads(rollout_threads or torch.get_num_threads()):
            if self.batch_steps is None:
                episodes = sample_episodes(self.env, self.meta.batched, params, tasks, self.B, seeds, gen,
                                           shard=self.shard)
            else:
                episodes = sample_step_budget(self.env, self.meta.batched, params, tasks, self.B, self.batch_steps,
                                              self.seed, keys, gen, shard=self.shard)
        with torch_threads(self.meta_step_threads):  # the baseline's float64 normal equations
            episodes.compute_advantages(self.baseline, self.gamma, self.gae_lambda)
        return episodes

    def adapt(self, tasks: dict[str, torch.Tensor], iteration: int) -> Adaptation:
        """Sample and adapt on iteration ``iteration``'s tasks, keeping the graph for the meta-step.

        Episodes of inner step s are keyed ``(iteration, s)``, the adapted policies' ``(iteration,
        "valid")``; the returned :class:`~rl_maml.rl.adaptation.Adaptation` holds both."""
        S = self.meta.inner.num_steps
        rollout_threads = torch.get_num_threads()  # the caller's (train.num_threads)

        def sample(params, k: int) -> Episodes:
            t0 = time.perf_counter()
            episodes = self._sample(params, tasks, iteration, k if k < S else "valid", rollout_threads=rollout_threads)
            self._t_sample += time.perf_counter() - t0
            return episodes

        self._t_sample = 0.0
        with torch_threads(self.meta_step_threads):  # the inner updates; the rollouts switch back
            return adapt_policy(self.meta.batched, self.meta.initial_params(self.M), self.meta.inner, sample, S,
                                objective=self.meta.trpo.inner_objective)

    def train_step(self, iteration: int) -> dict[str, float]:
        """One meta-iteration: sample, adapt (fresh episodes after each step), TRPO meta-step."""
        t0 = time.perf_counter()
        tasks = self.sample_tasks(iteration)
        adaptation = self.adapt(tasks, iteration)
        states, train, valid = adaptation.params, adaptation.episodes[:-1], adaptation.episodes[-1]
        t_sample = self._t_sample
        t2 = time.perf_counter()
        t_adapt = t2 - t0 - t_sample
        with torch_threads(self.meta_step_threads):
            logs = self.meta.meta_step(train, valid, adapted=states)
        t3 = time.perf_counter()
        self._watch_line_search(iteration, logs)
        if self.shard is not None and iteration % self.CHECK_EVERY == 0:
            self.shard.check_same(list(self.policy.parameters()))
        steps = sum(e.env_steps() for e in train) + valid.env_steps()
        mean = (lambda x: x) if self.shard is None else self.shard.mean_float
        logs.update({
            "charts/return_pre": mean(train[0].mean_return()) if train else float("nan"),
            "charts/return_post": mean(valid.mean_return()),
            **{f"charts/return_after_{k}_steps": mean(e.mean_return()) for k, e in enumerate(adaptation.episodes)},
            "charts/episodes_per_task": mean(valid.kept().sum(1).float().mean().item()),
            "charts/env_steps": float(steps) if self.shard is None else self.shard.sum_float(float(steps)),
            "time/env_steps_per_s": steps / (t3 - t0),
            "time/sampling_s": t_sample,
            "time/adapting_s": t_adapt,
            "time/meta_step_s": t3 - t2,
        })
        return logs

    WARN_REJECTED = 5
    CHECK_EVERY = 10  # iterations between checks that the ranks' parameters agree

    def _watch_line_search(self, iteration: int, logs: dict[str, float]) -> None:
        """Count meta-steps in a row whose line search kept no step; warn, then stop (trpo.max_rejected_steps)."""
        streak = 0 if logs.get("charts/ls_accepted", 1.0) else getattr(self, "_rejected", 0) + 1
        self._rejected = streak
        logs["charts/rejected_in_a_row"] = float(streak)
        advice = ("trpo.max_kl is too large for the KL estimate (every candidate step overshoots) or the surrogate "
                  "cannot improve: lower trpo.max_kl (the paper: 0.01), or check inner.inner_lr")
        limit = self.meta.trpo.max_rejected_steps
        if streak == self.WARN_REJECTED and (not limit or limit > streak):
            print(f"MAML-TRPO, iteration {iteration}: the line search rejected every step {streak} times in a row; "
                  f"{advice}", file=sys.stderr, flush=True)
        if limit and streak >= limit:
            raise TrainingError(f"MAML-TRPO, iteration {iteration}: the line search rejected every step "
                                f"{streak} times in a row (trpo.max_rejected_steps={limit}); the policy is not "
                                f"changing. {advice}. Earlier checkpoints are intact.")

    def state_dict(self) -> dict:
        state = {"policy": self.policy.state_dict()}
        if self.meta.warm_direction is not None:  # trpo.cg_warm_start: resume from the same direction
            state["cg_warm_direction"] = self.meta.warm_direction
        return state

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.meta.warm_direction = state.get("cg_warm_direction")


class AlphaMAMLTRPOAgent(MAMLTRPOAgent):
    """MAML-TRPO whose inner step size alpha adapts online by hypergradient descent (Alpha MAML).

    TRPO chooses the outer step itself, so only alpha adapts: after each meta-step it moves along
    ``-d(surrogate)/d(alpha)``, which the meta-step's own backward pass computed. ``inner`` must use
    a :class:`~rl_maml.hypergradient.HypergradientStepSize`.
    """

    name = "alpha_maml"

    def train_step(self, iteration: int) -> dict[str, float]:
        logs = super().train_step(iteration)
        step_size = self.meta.inner.step_size
        notes = step_size.update()
        for note in notes:
            print(f"Alpha MAML-TRPO, iteration {iteration}: {note}", flush=True)
        logs["charts/clipped_updates"] = float(len(notes))
        for g, a in step_size.as_dict().items():
            logs[f"charts/alpha/{g}"] = a
        return logs

    def state_dict(self) -> dict:
        return {**super().state_dict(), "step_size": self.meta.inner.step_size.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.meta.inner.step_size.load_state_dict(state["step_size"])
