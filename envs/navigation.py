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


GOAL_REGIONS = ("square", "disc")


def navigation_action_scale(convention: str, horizon: int, max_action: float, goal_radius: float,
                            action_scale: float | None, goal_region: str = "square") -> float:
    """Check Navigation2D's arguments; return the action scale (the convention's unless given)."""
    if convention not in ("gym", "maml"):
        raise ValueError(f"convention must be 'gym' or 'maml', got {convention!r}")
    if goal_region not in GOAL_REGIONS:
        raise ValueError(f"goal_region must be one of {GOAL_REGIONS}, got {goal_region!r}")
    if horizon < 1 or max_action <= 0 or goal_radius < 0:
        raise ValueError("horizon must be >= 1, max_action > 0 and goal_radius >= 0")
    if action_scale is None:
        # gym: the action is the displacement; maml: [-1, 1] maps onto [-max_action, max_action].
        return float(max_action) if convention == "maml" else 1.0
    if not (np.isfinite(action_scale) and action_scale > 0):
        raise ValueError(f"action_scale must be a finite number > 0, got {action_scale}")
    return float(action_scale)


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

    A displacement (velocity command) added to the position: ``clip(action_scale * action,
    -max_action, max_action)``. The two conventions differ here:

    | convention | action space | action_scale | as in |
    |---|---|---|---|
    | ``gym`` | ``Box(-0.1, 0.1, (2,))`` | 1 | pytorch-maml-rl (the action is the displacement) |
    | ``maml`` | ``Box(-1, 1, (2,))`` | 0.1 | the MAML paper's rllab setup, whose ``normalize`` wrapper maps [-1, 1] onto the box |

    The same policy noise is thus ten times smaller in displacement under ``maml``, and the
    paper's numbers (its oracle's -2.3 in particular) need that. NaN or infinite actions raise
    ``ValueError``.

    ## Rewards

    ``reward = -||position - goal||_2`` after the move (the MAML paper's text says the squared
    distance; the reference implementations and rl_maml use the distance). ``info`` holds
    ``distance``.

    ## Task Distribution

    ``{"goal": [gx, gy]}`` with ``gx, gy ~ U[-0.5, 0.5]``; out-of-range goals raise ``ValueError``.

    ## Starting State

    The origin, always.

    ## Episode End

    Terminated when the position is within ``goal_radius`` (0.01) of the goal in both coordinates
    (``goal_region="square"``: ``|x - gx| < r and |y - gy| < r``, as in the MAML paper's code and
    pytorch-maml-rl), or in Euclidean distance with ``goal_region="disc"`` (a region 21% smaller,
    what rl_maml used before; kept to reproduce those results); truncated after ``horizon`` steps (100).

    ## Arguments

    ``task`` (initial task; default: a fixed sample), ``horizon`` (100), ``max_action`` (0.1),
    ``goal_radius`` (0.01), ``goal_region`` (``"square"`` or ``"disc"``, see Episode End),
    ``convention`` (``"gym"`` or ``"maml"``, see Action Space), ``action_scale`` (override the
    convention's), ``render_mode`` (``None`` or ``"rgb_array"``).

    ## Version History

    * v0: initial version; since 2026-11-22 episodes end in the square by default (the disc
      before; ``goal_region="disc"`` restores it). Since 2026-12-02 the spec sets
      ``max_episode_steps=100`` (the default horizon) and ``render_mode="rgb_array"`` draws the
      episode; the dynamics are unchanged.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    TASKS = NAVIGATION_TASKS
    RENDER_SIZE = 256
    RENDER_EXTENT = 0.6  # the image shows [-0.6, 0.6]^2: every goal and the start

    def __init__(self, task: Mapping | None = None, horizon: int = 100, max_action: float = 0.1,
                 goal_radius: float = 0.01, convention: str = "gym", action_scale: float | None = None,
                 goal_region: str = "square", render_mode: str | None = None):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        self._trail: list[np.ndarray] = []
        self.convention = convention
        self.horizon = horizon
        self.max_action = max_action
        self.goal_radius = goal_radius
        self.goal_region = goal_region
        self.action_scale = navigation_action_scale(convention, horizon, max_action, goal_radius, action_scale,
                                                    goal_region)
        bound = max_action / self.action_scale
        self.observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = spaces.Box(-bound, bound, (2,), np.float32)
        self._init_task(task)
        self._position = np.zeros(2, np.float32)
        self._steps = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._apply_reset_options(options)
        self._position = np.zeros(2, np.float32)
        self._steps = 0
        self._trail = [self._position.copy()]
        return self._position.copy(), {"task": self.get_task()}

    def step(self, action):
        move = np.clip(np.float32(self.action_scale) * check_action(action, (2,)).astype(np.float32),
                       -self.max_action, self.max_action).astype(np.float32)
        self._position = self._position + move
        self._trail.append(self._position.copy())
        offset = self._position - self._task["goal"].astype(np.float32)
        distance = np.float32(np.sqrt(np.sum(np.square(offset))))
        self._steps += 1
        reach = np.max(np.abs(offset)) if self.goal_region == "square" else distance
        terminated = bool(reach < self.goal_radius)
        truncated = not terminated and self._steps >= self.horizon
        return self._position.copy(), -float(distance), terminated, truncated, {"distance": float(distance)}


    def render(self) -> np.ndarray | None:
        """``render_mode="rgb_array"``: the episode so far as an image ``[256, 256, 3]`` (uint8) of
        the square ``[-0.6, 0.6]^2``: the path in blue, the current position black, the goal red."""
        if self.render_mode != "rgb_array":
            return None
        n, extent = self.RENDER_SIZE, self.RENDER_EXTENT
        image = np.full((n, n, 3), 255, np.uint8)

        def pixel(xy: np.ndarray) -> tuple[int, int]:
            col, row = np.clip(((np.asarray(xy) + extent) / (2 * extent) * (n - 1)).round().astype(int), 0, n - 1)
            return n - 1 - row, col  # y points up

        def dot(xy: np.ndarray, color: tuple[int, int, int], radius: int) -> None:
            r, c = pixel(xy)
            image[max(r - radius, 0):r + radius + 1, max(c - radius, 0):c + radius + 1] = color

        for a, b in zip(self._trail, self._trail[1:]):  # the path, sampled along each move
            for w in np.linspace(0.0, 1.0, 8):
                dot((1 - w) * a + w * b, (40, 90, 220), 0)
        dot(self._task["goal"], (220, 30, 30), 3)
        dot(self._position, (0, 0, 0), 2)
        return image


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
                 device: str | torch.device = "cpu", convention: str = "gym", action_scale: float | None = None,
                 goal_region: str = "square"):
        self.num_envs = num_envs
        self.horizon = horizon
        self.max_action = max_action
        self.goal_radius = goal_radius
        self.goal_region = goal_region
        self.device = torch.device(device)
        self.convention = convention
        self.action_scale = navigation_action_scale(convention, horizon, max_action, goal_radius, action_scale,
                                                    goal_region)
        bound = max_action / self.action_scale
        self.observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = spaces.Box(-bound, bound, (2,), np.float32)

    def sample_tasks(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``n`` goals ``{"goal": [n, 2]}`` drawn from ``rng``."""
        return self.TASKS.sample(n, rng)

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
        move = (self.action_scale * actions.to(self.position)).clamp(-self.max_action, self.max_action)
        live = self.alive.unsqueeze(1)
        self.position = torch.where(live, self.position + move, self.position)
        offset = self.position - self.goal
        distance = torch.sqrt(torch.sum(torch.square(offset), dim=1))  # [N]
        reward = torch.where(self.alive, -distance, torch.zeros_like(distance))
        reach = offset.abs().amax(dim=1) if self.goal_region == "square" else distance
        self.alive = self.alive & ~(reach < self.goal_radius)
        self.steps += 1
        done = ~self.alive | (self.steps >= self.horizon)
        return self.position.clone(), reward, done, {"distance": distance}
