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
from rl_maml.envs.vector import sample_env_tasks
from torch import nn

from rl_maml.rl.policy import GaussianMLPPolicy

_ACT = {"relu": nn.ReLU, "tanh": nn.Tanh}


def flat_task(task) -> np.ndarray:
    """A task (a dict of numbers/arrays, or a number) as one flat float32 vector, in key order."""
    values = task.values() if isinstance(task, Mapping) else [task]
    return np.concatenate([np.ravel(np.asarray(v, dtype=np.float32)) for v in values])


class TaskDistributionWrapper(gymnasium.Wrapper):
    """Draws a fresh task from the family's distribution at every reset; optionally appends it
    (flattened) to the observation, which makes the oracle's input. Works for any meta-env with
    ``sample_tasks`` / ``set_task`` (see :func:`rl_maml.envs.vector.sample_env_tasks`)."""

    def __init__(self, env: gymnasium.Env, append_task: bool = False):
        super().__init__(env)
        self.append_task = append_task
        self._rng = np.random.default_rng(0)
        self._task = None
        if append_task:
            base = env.observation_space
            extra = flat_task(sample_env_tasks(env, 1, np.random.default_rng(0))[0]).size
            self.observation_space = spaces.Box(-np.inf, np.inf, (base.shape[0] + extra,), np.float32)

    def _augment(self, obs):
        if not self.append_task:
            return obs
        return np.concatenate([np.asarray(obs, dtype=np.float32), flat_task(self._task)])

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        options = dict(options or {})
        task = options.pop("task", None)
        if task is None:
            task = sample_env_tasks(self.env, 1, self._rng)[0]
        self._task = task
        self.env.unwrapped.set_task(task)
        obs, info = self.env.reset(seed=seed, options=options or None)
        return self._augment(obs), info

    def step(self, action):
        obs, reward, term, trunc, info = self.env.step(action)
        return self._augment(obs), reward, term, trunc, info


def make_family_env(family: str, env_kwargs: Mapping, append_task: bool = False):
    """The single env of ``family`` over its task distribution.

    ``family``: a built-in family (``env_kwargs``: convention, horizon, action scale) or the id of
    any registered Gymnasium meta-env (``env_kwargs``: its ``gymnasium.make`` arguments). Episodes
    are cut at the env's own horizon where it has one."""
    env_id = ENV_IDS.get(family, family)
    env = gymnasium.make(env_id, **env_kwargs)
    horizon = getattr(env.unwrapped, "horizon", None)
    if isinstance(horizon, int) and env.spec is not None and env.spec.max_episode_steps != horizon:
        env = gymnasium.make(env_id, max_episode_steps=horizon, **env_kwargs)
    return TaskDistributionWrapper(env, append_task)


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
    """A batched env whose observations carry each env's task, flattened (the oracle's input)."""

    def __init__(self, env):
        self.env = env
        self.num_envs, self.horizon, self.act_dim, self.device = env.num_envs, env.horizon, env.act_dim, env.device
        self.action_space = env.action_space
        self.task_dim = self._flat(env.sample_tasks(1, np.random.default_rng(0))).shape[1]
        self.obs_dim = env.obs_dim + self.task_dim
        self.observation_space = spaces.Box(-np.inf, np.inf, (self.obs_dim,), np.float32)

    @staticmethod
    def _flat(tasks: Mapping) -> torch.Tensor:
        return torch.cat([torch.as_tensor(np.asarray(v, dtype=np.float32) if not isinstance(v, torch.Tensor) else v,
                                          dtype=torch.float32).reshape(len(v), -1) for v in tasks.values()], dim=1)

    def sample_tasks(self, n: int, rng: np.random.Generator):
        return self.env.sample_tasks(n, rng)

    def _augment(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.cat([obs, self._task.to(obs)], dim=1)

    def reset(self, tasks: Mapping, seeds) -> torch.Tensor:
        obs = self.env.reset(tasks, seeds)
        self._task = self._flat(tasks)
        return self._augment(obs)

    def step(self, actions):
        obs, reward, done, info = self.env.step(actions)
        return self._augment(obs), reward, done, info
