"""2D point navigation (MAML paper, section 5.3), as a single Gymnasium env and batched in torch."""

from __future__ import annotations

from collections.abc import Mapping

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from rl_maml.envs.base import TaskEnvMixin, check_action
from rl_maml.envs.tasks import NAVIGATION_TASKS
from torch import Tensor


class Navigation2DEnv(TaskEnvMixin, gymnasium.Env):
    """A point in the plane must reach a goal it cannot see.

    The task is the goal position; the agent observes only its own position, so it must find the
    goal from rewards (and, after meta-training, adapt to it in a few gradient steps).

    ## Observation Space

    | index | observation | min | max |
    |---|---|---|---|
    | 0 | x position | -inf | inf |
    | 1 | y position | -inf | inf |

    ## Action Space

    ``Box(-0.1, 0.1, (2,), float32)``: a displacement (velocity command) added to the position.
    Actions outside the box are clipped to it; NaN or infinite actions raise ``ValueError``.

    ## Rewards

    ``reward = -||position - goal||_2`` after the move (the MAML paper's text says the squared
    distance; the reference implementations and rl_maml use the distance). ``info`` holds
    ``distance``.

    ## Task Distribution

    ``{"goal": [gx, gy]}`` with ``gx, gy ~ U[-0.5, 0.5]``; out-of-range goals raise ``ValueError``.

    ## Starting State

    The origin, always.

    ## Episode End

    Terminated when the distance to the goal is below ``goal_radius`` (0.01); truncated after
    ``horizon`` steps (100).

    ## Arguments

    ``task`` (initial task; default: a fixed sample), ``horizon`` (100), ``max_action`` (0.1),
    ``goal_radius`` (0.01), ``convention`` (``"gym"`` or ``"maml"``: both give the paper's
    setting for this family; accepted for uniformity with the locomotion families).

    ## Version History

    * v0: initial version.
    """

    metadata = {"render_modes": []}
    TASKS = NAVIGATION_TASKS

    def __init__(self, task: Mapping | None = None, horizon: int = 100, max_action: float = 0.1,
                 goal_radius: float = 0.01, convention: str = "gym"):
        if convention not in ("gym", "maml"):
            raise ValueError(f"convention must be 'gym' or 'maml', got {convention!r}")
        if horizon < 1 or max_action <= 0 or goal_radius < 0:
            raise ValueError("horizon must be >= 1, max_action > 0 and goal_radius >= 0")
        self.convention = convention
        self.horizon = horizon
        self.max_action = max_action
        self.goal_radius = goal_radius
        self.observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = spaces.Box(-max_action, max_action, (2,), np.float32)
        self._init_task(task)
        self._position = np.zeros(2, np.float32)
        self._steps = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._apply_reset_options(options)
        self._position = np.zeros(2, np.float32)
        self._steps = 0
        return self._position.copy(), {"task": self.get_task()}

    def step(self, action):
        move = np.clip(check_action(action, (2,)), -self.max_action, self.max_action).astype(np.float32)
        self._position = self._position + move
        distance = np.float32(np.sqrt(np.sum(np.square(self._position - self._task["goal"].astype(np.float32)))))
        self._steps += 1
        terminated = bool(distance < self.goal_radius)
        truncated = not terminated and self._steps >= self.horizon
        return self._position.copy(), -float(distance), terminated, truncated, {"distance": float(distance)}


class BatchedNavigation2D:
    """N independent Navigation2D episodes stepped as one batch of torch tensors (any device).

    Episodes that end (goal reached) are frozen and masked: their observation stays, their reward
    is 0 and ``alive`` turns False; they are not reset. Same dynamics and float32 arithmetic as
    :class:`Navigation2DEnv`.
    """

    obs_dim = 2
    act_dim = 2
    TASKS = NAVIGATION_TASKS

    def __init__(self, num_envs: int, horizon: int = 100, max_action: float = 0.1, goal_radius: float = 0.01,
                 device: str | torch.device = "cpu", convention: str = "gym"):
        self.num_envs = num_envs
        self.horizon = horizon
        self.max_action = max_action
        self.goal_radius = goal_radius
        self.device = torch.device(device)
        self.convention = convention

    def reset(self, tasks: Mapping, seeds: object = None) -> Tensor:
        """Start N episodes for ``tasks`` (``{"goal": [N, 2]}``); ``seeds`` are unused (no randomness)."""
        checked = self.TASKS.validate_batch(tasks)
        if checked["goal"].shape[0] != self.num_envs:
            raise ValueError(f"expected {self.num_envs} tasks, got {checked['goal'].shape[0]}")
        self.goal = torch.as_tensor(checked["goal"], dtype=torch.float32, device=self.device)  # [N, 2]
        self.position = torch.zeros(self.num_envs, 2, device=self.device)
        self.alive = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        self.steps = 0
        return self.position.clone()

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """Advance the live episodes.

        Returns:
            ``obs [N, 2]``, ``reward [N]`` (0 where the episode had ended), ``done [N]`` (ended by
            now, goal or horizon), ``info`` with ``distance [N]``.
        """
        if actions.shape != (self.num_envs, 2):
            raise ValueError(f"actions must have shape {(self.num_envs, 2)}, got {tuple(actions.shape)}")
        if not torch.isfinite(actions).all():
            raise ValueError("actions contain NaN or infinite values; check the policy's outputs")
        move = actions.to(self.position).clamp(-self.max_action, self.max_action)
        live = self.alive.unsqueeze(1)
        self.position = torch.where(live, self.position + move, self.position)
        distance = torch.sqrt(torch.sum(torch.square(self.position - self.goal), dim=1))  # [N]
        reward = torch.where(self.alive, -distance, torch.zeros_like(distance))
        self.alive = self.alive & ~(distance < self.goal_radius)
        self.steps += 1
        done = ~self.alive | (self.steps >= self.horizon)
        return self.position.clone(), reward, done, {"distance": distance}
