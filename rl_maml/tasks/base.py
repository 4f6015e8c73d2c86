"""Containers shared by the supervised task distributions."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class TaskBatch(NamedTuple):
    """A meta-batch of M supervised tasks.

    ``support`` and ``query`` are ``(x, y)`` pairs with a leading task axis: ``x`` is
    ``[M, K, ...]`` and ``y`` ``[M, K, ...]`` (K support or Q query points per task).
    ``tasks`` holds each task's defining parameters, ``name -> [M, ...]``.
    """

    support: tuple[Tensor, Tensor]
    query: tuple[Tensor, Tensor]
    tasks: dict[str, Tensor]

    @property
    def num_tasks(self) -> int:
        return self.support[0].shape[0]

    def tasks_slice(self, start: int, count: int) -> TaskBatch:
        """Tasks ``start .. start + count - 1`` of the batch (a process's share of a meta-batch)."""
        part = slice(start, start + count)
        return TaskBatch(tuple(t[part] for t in self.support), tuple(t[part] for t in self.query),  # type: ignore[arg-type]
                         {k: v[part] for k, v in self.tasks.items()})

    def to(self, device: str | torch.device) -> TaskBatch:
        return TaskBatch(
            tuple(t.to(device) for t in self.support),  # type: ignore[arg-type]
            tuple(t.to(device) for t in self.query),  # type: ignore[arg-type]
            {k: v.to(device) for k, v in self.tasks.items()},
        )
