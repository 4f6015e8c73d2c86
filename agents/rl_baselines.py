"""Non-meta reference policies for the meta-RL evaluation, trained with stable-baselines3.

- ``pretrained``: one PPO policy trained on the whole task distribution (a new task at every
  reset), then converted into a :class:`~rl_maml.rl.policy.GaussianMLPPolicy` and adapted at test
  time exactly like MAML's initialisation.
- ``oracle``: a PPO policy that sees the task appended to its observation; it needs no adaptation
  and is evaluated as is.
- ``random`` (no training): a freshly initialised policy, adapted the same way.

The SB3 policies use the same architecture as ours (two hidden layers of the configured width and
activation, a state-independent log standard deviation), so the conversion is a copy of weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from rl_maml.envs.registration import ENV_IDS
from torch import nn

from rl_maml.rl.policy import GaussianMLPPolicy

_ACT = {"relu": nn.ReLU, "tanh": nn.Tanh}


class TaskDistributionWrapper(gymnasium.Wrapper):
    """Draws a fresh task from the family's distribution at every reset; optionally appends it
    (flattened) to the observation, which makes the oracle's input."""

    def __init__(self, env: gymnasium.Env, append_task: bool = False):
        super().__init__(env)
        self.append_task = append_task
        if append_task:
            base = env.observation_space
            extra = sum(int(np.prod(f.shape)) or 1 for f in env.unwrapped.TASKS.fields)
            self.observation_space = spaces.Box(-np.inf, np.inf, (base.shape[0] + extra,), np.float32)

    def _augment(self, obs):
        if not self.append_task:
            return obs
        task = np.concatenate([np.ravel(v) for v in self.env.unwrapped.get_task().values()])
        return np.concatenate([obs, task]).astype(np.float32)

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        elif not hasattr(self, "_rng"):
            self._rng = np.random.default_rng(0)
        options = dict(options or {})
        options.setdefault("task", self.env.unwrapped.sample_tasks(1, self._rng)[0])
        obs, info = self.env.reset(seed=seed, options=options)
        return self._augment(obs), info

    def step(self, action):
        obs, reward, term, trunc, info = self.env.step(action)
        return self._augment(obs), reward, term, trunc, info


def make_family_env(family: str, env_kwargs: Mapping, append_task: bool = False):
    """The single env of ``family`` (``env_kwargs``: convention, horizon, action scale) over its task distribution."""
    return TaskDistributionWrapper(gymnasium.make(ENV_IDS[family], **env_kwargs), append_task)


def _progress_callback(total: int, desc: str):
    """An SB3 callback that shows PPO's env steps in a tqdm bar (SB3's own bar needs ``rich``)."""
    from stable_baselines3.common.callbacks import BaseCallback
    from tqdm.auto import tqdm

    class Progress(BaseCallback):
        def _on_training_start(self) -> None:
            self.bar = tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, mininterval=1.0)

        def _on_step(self) -> bool:
            self.bar.update(self.model.num_timesteps - self.bar.n)
            return True

        def _on_training_end(self) -> None:
            self.bar.close()

    return Progress()


def train_ppo(family: str, env_kwargs: Mapping, hidden_sizes: Sequence[int], activation: str,
              timesteps: int, seed: int, append_task: bool, progress: str | None = None):
    """A PPO policy trained on the family's task distribution (8 envs in one process).

    ``env_kwargs`` are the meta-learner's env arguments (convention and overrides), so that the
    baselines act in the same action units. ``progress``: the label of a progress bar of the
    env steps (``None``: no bar)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    vec = make_vec_env(lambda: make_family_env(family, env_kwargs, append_task), n_envs=8, seed=seed)
    n_steps = max(16, min(512, timesteps // 8))  # tiny budgets (tests) still get a few updates
    model = PPO("MlpPolicy", vec, seed=seed, verbose=0, device="cpu", n_steps=n_steps,
                batch_size=min(256, n_steps * 8),
                policy_kwargs={"net_arch": {"pi": list(hidden_sizes), "vf": list(hidden_sizes)},
                               "activation_fn": _ACT[activation], "ortho_init": True})
    callback = None if progress is None else _progress_callback(timesteps, progress)
    model.learn(total_timesteps=timesteps, callback=callback)
    return model


def to_gaussian_policy(model, hidden_sizes: Sequence[int], activation: str) -> GaussianMLPPolicy:
    """Copy an SB3 ``MlpPolicy``'s actor into a :class:`GaussianMLPPolicy` of the same shape."""
    sb3 = model.policy
    obs_dim = sb3.observation_space.shape[0]
    act_dim = sb3.action_space.shape[0]
    policy = GaussianMLPPolicy(obs_dim, act_dim, hidden_sizes, activation)
    linear_in = [m for m in sb3.mlp_extractor.policy_net if isinstance(m, nn.Linear)]
    ours = [m for m in policy.mean.layers if isinstance(m, nn.Linear)]
    if len(linear_in) + 1 != len(ours):
        raise ValueError(f"SB3 policy has {len(linear_in)} hidden layers, ours {len(ours) - 1}")
    with torch.no_grad():
        for dst, src in zip(ours, [*linear_in, sb3.action_net]):
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
        policy.log_std.copy_(sb3.log_std)
    return policy


class TaskAugmentedBatchedEnv:
    """A batched env whose observations carry each env's task (the oracle's input)."""

    def __init__(self, env):
        self.env = env
        self.num_envs, self.horizon, self.act_dim = env.num_envs, env.horizon, env.act_dim
        self.TASKS = env.TASKS
        self.task_dim = sum(int(np.prod(f.shape)) or 1 for f in env.TASKS.fields)
        self.obs_dim = env.obs_dim + self.task_dim

    def _augment(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.cat([obs, self._task.to(obs)], dim=1)

    def reset(self, tasks: Mapping, seeds) -> torch.Tensor:
        checked = self.TASKS.validate_batch(tasks)
        self._task = torch.cat([torch.as_tensor(v).reshape(len(v), -1) for v in checked.values()], dim=1)
        return self._augment(self.env.reset(tasks, seeds))

    def step(self, actions):
        obs, reward, done, info = self.env.step(actions)
        return self._augment(obs), reward, done, info
