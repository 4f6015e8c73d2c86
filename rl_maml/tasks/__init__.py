"""Task distributions for supervised meta-learning benchmarks."""

from rl_maml.tasks.base import TaskBatch
from rl_maml.tasks.sinusoid import SinusoidTasks

__all__ = ["TaskBatch", "SinusoidTasks"]
