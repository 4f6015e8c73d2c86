"""Type aliases shared across rl_maml.

Parameters are plain dicts from the module's qualified parameter names to tensors. "Batched"
parameters carry a leading task axis ``[M, ...]`` (M = tasks in the meta-batch).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from torch import Tensor

Params = dict[str, Tensor]
"""Parameter name -> tensor. Unbatched: the module's shapes. Batched: ``[M, *shape]``."""

Buffers = Mapping[str, Tensor]
"""Buffer name -> tensor, shared by all tasks (never batched)."""

TaskLossFn = Callable[[Params, "object"], Tensor]
"""``loss_fn(batched_params, data) -> [M]``: one loss per task of the meta-batch."""
