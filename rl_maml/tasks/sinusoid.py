"""Sinusoid regression (MAML paper, section 5.1).

Each task is ``y = A sin(x - phi)`` with amplitude ``A ~ U[0.1, 5]`` and phase
``phi ~ U[0, pi]``; inputs are drawn ``x ~ U[-5, 5]``. A learner sees K points of a task and
must predict the rest; the loss is the mean squared error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from rl_maml.tasks.base import TaskBatch


def _check_range(name: str, lo_hi: tuple[float, float]) -> None:
    lo, hi = lo_hi
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise ValueError(f"{name} must be a finite range (low, high) with low <= high, got {lo_hi}")


@dataclass(frozen=True)
class SinusoidTasks:
    """The sinusoid task distribution.

    Args:
        amplitude_range: ``(low, high)`` of the uniform amplitude distribution.
        phase_range: ``(low, high)`` of the uniform phase distribution (radians).
        x_range: ``(low, high)`` of the uniform input distribution.
    """

    amplitude_range: tuple[float, float] = (0.1, 5.0)
    phase_range: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)

    def __post_init__(self) -> None:
        _check_range("amplitude_range", self.amplitude_range)
        _check_range("phase_range", self.phase_range)
        _check_range("x_range", self.x_range)

    @staticmethod
    def _uniform(lo_hi: tuple[float, float], shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        lo, hi = lo_hi
        return lo + (hi - lo) * torch.rand(shape, generator=generator)

    def sample_tasks(self, num_tasks: int, generator: torch.Generator) -> dict[str, Tensor]:
        """``{"amplitude": [M], "phase": [M]}``."""
        return {
            "amplitude": self._uniform(self.amplitude_range, (num_tasks,), generator),
            "phase": self._uniform(self.phase_range, (num_tasks,), generator),
        }

    def validate_tasks(self, tasks: dict[str, Tensor]) -> None:
        """Raise ``ValueError`` naming the field if a task lies outside the distribution's range."""
        for field, rng in (("amplitude", self.amplitude_range), ("phase", self.phase_range)):
            if field not in tasks:
                raise ValueError(f"sinusoid task is missing the field {field!r}")
            v = torch.as_tensor(tasks[field])
            if not torch.isfinite(v).all() or (v < rng[0]).any() or (v > rng[1]).any():
                raise ValueError(f"sinusoid task field {field!r} must lie in [{rng[0]}, {rng[1]}], got {v.tolist()}")

    @staticmethod
    def function(tasks: dict[str, Tensor], x: Tensor) -> Tensor:
        """Targets for inputs ``x`` ``[M, K, 1]`` -> ``[M, K, 1]``."""
        amplitude = tasks["amplitude"].view(-1, 1, 1)
        phase = tasks["phase"].view(-1, 1, 1)
        return amplitude * torch.sin(x - phase)

    def sample_points(self, tasks: dict[str, Tensor], num_points: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``num_points`` inputs per task and their targets, each ``[M, num_points, 1]``."""
        num_tasks = tasks["amplitude"].shape[0]
        x = self._uniform(self.x_range, (num_tasks, num_points, 1), generator)
        return x, self.function(tasks, x)

    def sample(self, num_tasks: int, num_support: int, num_query: int, generator: torch.Generator) -> TaskBatch:
        """A meta-batch: ``num_support`` and ``num_query`` independent points for each of ``num_tasks`` tasks."""
        tasks = self.sample_tasks(num_tasks, generator)
        return TaskBatch(
            self.sample_points(tasks, num_support, generator),
            self.sample_points(tasks, num_query, generator),
            tasks,
        )
