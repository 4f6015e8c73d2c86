"""The batched task-env protocol: what the sampler, the evaluation and the baselines need of an env.

A batched task env runs N = M tasks x B episodes at once as torch tensors. Three implementations
ship with rl_maml: :class:`~rl_maml.envs.navigation.BatchedNavigation2D` (pure torch, any
device), :class:`~rl_maml.envs.batched.BatchedLocomotion` (MuJoCo's threaded batch stepper) and
:class:`~rl_maml.envs.vector.VectorTaskEnv`, which runs any registered Gymnasium env that has the
task API (``sample_tasks`` / ``set_task``) through Gymnasium's vector envs. Anything else that
satisfies :class:`BatchedTaskEnv` plugs into MAML-TRPO as well; :func:`check_batched_env` says
what is missing.

Tasks travel as a dict of arrays with a leading task axis (``{"velocity": array [N]}``), the
form :meth:`BatchedTaskEnv.sample_tasks` returns and :meth:`BatchedTaskEnv.reset` takes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

__all__ = ["BatchedTaskEnv", "check_batched_env"]


@runtime_checkable
class BatchedTaskEnv(Protocol):
    """N episodes of one task family, stepped together.

    Attributes:
        num_envs: N; env ``m * B + b`` runs episode b of task m.
        horizon: the most steps an episode takes (T); the sampler's buffers are ``[T, M, B, ...]``.
        obs_dim, act_dim: flat observation and action sizes.
        device: where the returned tensors live.
        observation_space, action_space: one env's Gymnasium spaces (``Box``).

    An env may also define ``stop(ids)``, ending the episodes of envs ``ids`` at once (they report
    ``done`` and are no longer simulated): the step-budget sampler uses it to skip episodes it will
    not keep.
    """

    num_envs: int
    horizon: int
    obs_dim: int
    act_dim: int
    device: torch.device
    observation_space: Any
    action_space: Any

    def sample_tasks(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``n`` tasks from the family's distribution, as a dict of arrays with leading axis ``n``,
        drawn from ``rng`` only (the same generator state gives the same tasks)."""
        ...

    def reset(self, tasks: Mapping[str, Any], seeds: Sequence[int]) -> Tensor:
        """Start N episodes: ``tasks`` with leading axis N, one reset seed per episode.

        Returns:
            The first observations ``[N, obs_dim]``.
        """
        ...

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """Advance every episode that has not ended by one step.

        Returns:
            ``obs [N, obs_dim]``; ``reward [N]``, 0 where the episode had already ended; ``done
            [N]``, True once an episode has ended (terminated, truncated or at the horizon) and
            True from then on (the sampler masks every later step); ``info``, a dict of ``[N]``
            tensors (reward terms, for example).
        """
        ...


def check_batched_env(env: object, what: str = "the env") -> None:
    """Raise ``TypeError`` naming each member of :class:`BatchedTaskEnv` that ``env`` lacks."""
    missing = [name for name in ("num_envs", "horizon", "obs_dim", "act_dim", "device", "observation_space",
                                 "action_space", "sample_tasks", "reset", "step") if not hasattr(env, name)]
    if missing:
        raise TypeError(
            f"{what} ({type(env).__name__}) is not a batched task env: it lacks {', '.join(missing)}. "
            "Implement rl_maml.envs.BatchedTaskEnv, or wrap a Gymnasium env that has sample_tasks/set_task "
            "with rl_maml.envs.VectorTaskEnv.")
    for name in ("num_envs", "horizon", "obs_dim", "act_dim"):
        value = getattr(env, name)
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise TypeError(f"{what}.{name} must be an int >= 1, got {value!r}")
