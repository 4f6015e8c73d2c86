"""What every rl_maml meta-environment shares: the task interface and action checks."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from rl_maml.envs.tasks import TaskSpace


class TaskEnvMixin:
    """``sample_tasks`` / ``set_task`` / ``get_task`` on top of a :class:`TaskSpace`.

    Subclasses set ``TASKS`` and call :meth:`_init_task` in their constructor; ``reset`` accepts
    ``options={"task": task}``.
    """

    TASKS: TaskSpace
    np_random: np.random.Generator

    def _init_task(self, task: Mapping | None) -> None:
        if task is None:
            task = self.TASKS.unstack(self.TASKS.sample(1, np.random.default_rng(0)))[0]
        self.set_task(task)

    def sample_tasks(self, n: int, rng: np.random.Generator | None = None) -> list[dict[str, np.ndarray]]:
        """``n`` tasks from the family's distribution, drawn from ``rng`` or the env's own generator."""
        if n < 0:
            raise ValueError(f"the number of tasks must be >= 0, got {n}")
        return self.TASKS.unstack(self.TASKS.sample(n, rng if rng is not None else self.np_random))

    def set_task(self, task: Mapping) -> None:
        """Switch to ``task`` (takes effect immediately; call ``reset`` to start an episode)."""
        self._task = self.TASKS.validate(task)

    def get_task(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self._task.items()}

    def _apply_reset_options(self, options: Mapping | None) -> None:
        if options:
            unknown = set(options) - {"task"}
            if unknown:
                raise ValueError(f"unknown reset options {sorted(unknown)}; the only option is 'task'")
            self.set_task(options["task"])


def check_action(action: object, shape: tuple[int, ...]) -> np.ndarray:
    """The action as a float64 array; ``ValueError`` for a wrong shape or NaN/infinite entries."""
    arr = np.asarray(action, dtype=np.float64)
    if arr.shape != shape:
        raise ValueError(f"action must have shape {shape}, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"action contains NaN or infinite values: {arr.tolist()}; check the policy's outputs")
    return arr


def check_batched_actions(actions: object, shape: tuple[int, int]) -> np.ndarray:
    """A batch of actions ``[N, act_dim]`` (tensor or array) as float64 NumPy; ``ValueError`` for a
    wrong shape or NaN/infinite entries (the batched envs' shared check)."""
    if hasattr(actions, "detach"):  # a torch tensor
        arr = actions.detach().to("cpu").double().numpy()
    else:
        arr = np.asarray(actions, dtype=np.float64)
    if arr.shape != shape:
        raise ValueError(f"actions must have shape {shape}, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("actions contain NaN or infinite values; check the policy's outputs")
    return arr
