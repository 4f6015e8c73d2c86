"""Any Gymnasium meta-env as a batched task env, through Gymnasium's vector envs.

A user's meta-environment needs only Gymnasium's ``Env`` API plus the task API rl_maml's own
envs have (and pytorch-maml-rl's):

- ``sample_tasks(n)`` or ``sample_tasks(n, rng)``: a list of ``n`` tasks, each a dict of numbers
  or arrays (``{"velocity": 1.3}``) or a single number;
- ``set_task(task)``: switch to a task (takes effect at the next ``reset``).

Register it with Gymnasium (``gymnasium.register("MyMeta-v0", entry_point=..., max_episode_steps=200)``)
and ``env.id=MyMeta-v0`` trains and evaluates it with MAML-TRPO; from the command line, name the
module that registers it as Gymnasium does, ``env.id=my_package.my_module:MyMeta-v0``. Observations
and actions must be flat ``Box`` spaces.

:class:`VectorTaskEnv` runs the N = M x B episodes of a meta-batch in a ``SyncVectorEnv`` (all in
this process; right for cheap envs) or an ``AsyncVectorEnv`` (one process per env; for slow
envs). Actions are clipped to the action space's bounds, as stable-baselines3 does. An episode
that ends is masked, as in the built-in batched envs: its observation stays, its reward is 0 and
``done`` stays True (Gymnasium restarts it underneath; those steps are ignored).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from rl_maml.envs.base import check_batched_actions
from torch import Tensor

__all__ = ["VectorTaskEnv", "sample_env_tasks", "stack_tasks", "unstack_tasks"]

# The key under which tasks that are not dicts (a bare number) travel in rl_maml's task dicts.
SCALAR_TASK_KEY = "task"


def _task_api(env: gymnasium.Env, what: str) -> gymnasium.Env:
    inner = env.unwrapped
    missing = [m for m in ("sample_tasks", "set_task") if not callable(getattr(inner, m, None))]
    if missing:
        raise TypeError(
            f"{what} ({type(inner).__name__}) lacks the task API ({', '.join(missing)}): a meta-env needs "
            "sample_tasks(n[, rng]) returning a list of tasks and set_task(task). See rl_maml.envs.vector.")
    return inner


def sample_env_tasks(env: gymnasium.Env, n: int, rng: np.random.Generator) -> list[Any]:
    """``n`` tasks from a meta-env's ``sample_tasks``, drawn from ``rng``.

    rl_maml's envs take the generator (``sample_tasks(n, rng)``); envs written as pytorch-maml-rl's
    take only ``n`` and draw from ``env.np_random``, which is set to ``rng`` first, so both are
    seeded the same way."""
    inner = _task_api(env, "the env")
    fn = inner.sample_tasks
    try:
        takes_rng = len(inspect.signature(fn).parameters) >= 2
    except (TypeError, ValueError):  # builtins without a signature
        takes_rng = False
    if takes_rng:
        tasks = fn(n, rng)
    else:
        inner.np_random = rng
        tasks = fn(n)
    tasks = list(tasks)
    if len(tasks) != n:
        raise ValueError(f"{type(inner).__name__}.sample_tasks({n}) returned {len(tasks)} tasks")
    return tasks


def stack_tasks(tasks: Sequence[Any]) -> dict[str, np.ndarray]:
    """A list of tasks (dicts of numbers/arrays, or numbers) -> a dict of arrays with a leading axis."""
    if not tasks:
        raise ValueError("no tasks to stack")
    dicts = [t if isinstance(t, Mapping) else {SCALAR_TASK_KEY: t} for t in tasks]
    keys = list(dicts[0])
    for t in dicts:
        if list(t) != keys:
            raise ValueError(f"tasks disagree on their keys: {keys} and {list(t)}")
    try:
        return {k: np.stack([np.asarray(t[k], dtype=np.float64) for t in dicts]) for k in keys}
    except (TypeError, ValueError) as err:
        raise ValueError(f"task values must be numbers or numeric arrays of one shape per key: {err}") from None


def unstack_tasks(tasks: Mapping[str, Any], scalar: bool) -> list[Any]:
    """Inverse of :func:`stack_tasks` (numbers as Python floats, arrays as NumPy arrays)."""
    arrays = {k: v.detach().cpu().numpy() if isinstance(v, Tensor) else np.asarray(v) for k, v in tasks.items()}
    n = len(next(iter(arrays.values())))

    def value(a: np.ndarray):
        return float(a) if a.ndim == 0 else a.copy()

    out = [{k: value(a[i]) for k, a in arrays.items()} for i in range(n)]
    return [t[SCALAR_TASK_KEY] for t in out] if scalar else out


class _TaskSlot(gymnasium.Wrapper):
    """Sets the task written into ``pending_task`` (by the vector env's ``set_attr``) at the next reset."""

    pending_task: Any = None

    def reset(self, *, seed=None, options=None):
        if self.pending_task is not None:
            self.env.unwrapped.set_task(self.pending_task)
        return self.env.reset(seed=seed, options=options)


class VectorTaskEnv:
    """A Gymnasium meta-env with the task API, batched through a Gymnasium vector env.

    Args:
        env: a registered id (``"MyMeta-v0"`` or ``"module:MyMeta-v0"``) or a function returning a
            new env.
        num_envs: N.
        horizon: the most steps per episode; default the spec's ``max_episode_steps`` (one of the
            two is needed).
        vectorization: ``sync`` (one process) or ``async`` (a process per env).
        make_kwargs: keyword arguments of ``gymnasium.make``.
        dtype, device: of the returned tensors.
    """

    def __init__(self, env: str | Callable[[], gymnasium.Env], num_envs: int, horizon: int | None = None,
                 vectorization: Literal["sync", "async"] = "sync", make_kwargs: Mapping[str, Any] | None = None,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if vectorization not in ("sync", "async"):
            raise ValueError(f"vectorization must be 'sync' or 'async', got {vectorization!r}")
        kwargs = dict(make_kwargs or {})
        self.env_id = env if isinstance(env, str) else getattr(env, "__name__", "env")
        make = (lambda: gymnasium.make(env, **kwargs)) if isinstance(env, str) else env
        self.proto = make()
        _task_api(self.proto, f"env {self.env_id!r}")
        self.observation_space, self.action_space = self.proto.observation_space, self.proto.action_space
        for name, space in (("observation", self.observation_space), ("action", self.action_space)):
            if not isinstance(space, spaces.Box) or len(space.shape) != 1:
                raise TypeError(f"env {self.env_id!r}: MAML-TRPO's Gaussian policy needs a flat Box {name} space, "
                                f"got {space}")
        spec_steps = self.proto.spec.max_episode_steps if self.proto.spec is not None else None
        self.horizon = int(horizon or spec_steps or 0)
        if self.horizon < 1:
            raise ValueError(f"env {self.env_id!r} has no max_episode_steps in its spec; give the horizon "
                             "(env.horizon=...) or register the env with max_episode_steps")
        self.num_envs = num_envs
        self.obs_dim = int(self.observation_space.shape[0])
        self.act_dim = int(self.action_space.shape[0])
        self.dtype, self.device = dtype, torch.device(device)
        fns = [lambda: _TaskSlot(make()) for _ in range(num_envs)]
        self.vec = gymnasium.vector.SyncVectorEnv(fns) if vectorization == "sync" else \
            gymnasium.vector.AsyncVectorEnv(fns)
        self._low = np.asarray(self.action_space.low, dtype=np.float64)
        self._high = np.asarray(self.action_space.high, dtype=np.float64)
        self._scalar_tasks: bool | None = None
        self.ended = np.ones(num_envs, dtype=bool)

    def sample_tasks(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        tasks = sample_env_tasks(self.proto, n, rng)
        self._scalar_tasks = not isinstance(tasks[0], Mapping)
        return stack_tasks(tasks)

    def _tensor(self, array) -> Tensor:
        return torch.as_tensor(np.asarray(array), dtype=self.dtype).to(self.device)

    def reset(self, tasks: Mapping[str, Any], seeds: Sequence[int] | int) -> Tensor:
        scalar = self._scalar_tasks if self._scalar_tasks is not None else set(tasks) == {SCALAR_TASK_KEY}
        task_list = unstack_tasks(tasks, scalar)
        if len(task_list) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} tasks (one per env), got {len(task_list)}")
        seeds = [seeds + i for i in range(self.num_envs)] if isinstance(seeds, (int, np.integer)) else \
            [int(s) for s in seeds]
        if len(seeds) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} seeds, got {len(seeds)}")
        self.vec.set_attr("pending_task", task_list)
        obs, _ = self.vec.reset(seed=seeds)
        self.ended = np.zeros(self.num_envs, dtype=bool)
        self.steps = 0
        self._obs = np.asarray(obs, dtype=np.float64).reshape(self.num_envs, self.obs_dim)
        return self._tensor(self._obs)

    def step(self, actions: Tensor | np.ndarray) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        a = check_batched_actions(actions, (self.num_envs, self.act_dim))
        before = self.ended.copy()
        obs, reward, terminated, truncated, _ = self.vec.step(np.clip(a, self._low, self._high).astype(
            self.action_space.dtype))
        obs = np.asarray(obs, dtype=np.float64).reshape(self.num_envs, self.obs_dim)
        self._obs = np.where(before[:, None], self._obs, obs)
        reward = np.where(before, 0.0, np.asarray(reward, dtype=np.float64))
        self.steps += 1
        self.ended = before | np.asarray(terminated, dtype=bool) | np.asarray(truncated, dtype=bool)
        done = self.ended | (self.steps >= self.horizon)
        return self._tensor(self._obs), self._tensor(reward), torch.from_numpy(done).to(self.device), {}

    def close(self) -> None:
        self.vec.close()
        self.proto.close()
