"""Task spaces of the meta-RL environment families.

A task is a small dict of named values, e.g. ``{"velocity": 1.3}`` or ``{"goal": [0.2, -0.1]}``.
Batched code carries a meta-batch of tasks as the same dict with a leading axis
(``{"velocity": array [M]}``). A :class:`TaskSpace` samples tasks and validates them: a task
outside its family's range, of the wrong shape or of the wrong type raises ``ValueError`` naming
the field and the allowed values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class TaskField:
    """One field of a task: uniform on ``[low, high]^shape``, or one of ``choices`` (equally
    likely, or with the probabilities ``weights``)."""

    name: str
    shape: tuple[int, ...] = ()
    low: float | None = None
    high: float | None = None
    choices: tuple[float, ...] | None = None
    weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.weights is not None and (self.choices is None or len(self.weights) != len(self.choices) or
                                         any(not w >= 0 for w in self.weights) or
                                         not np.isclose(sum(self.weights), 1.0)):
            raise ValueError(f"task field {self.name!r}: weights must be one probability per choice, summing to 1; "
                             f"got {self.weights} for {self.choices}")

    def describe(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(f"{c:g}" for c in self.choices)
        dims = "" if not self.shape else f" in each of {int(np.prod(self.shape))} coordinates"
        return f"within [{self.low:g}, {self.high:g}]{dims}"

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.choices is not None:  # without weights, the draws of equally likely choices as before
            return rng.choice(np.asarray(self.choices, dtype=np.float64), size=(n, *self.shape),
                              **({} if self.weights is None else {"p": np.asarray(self.weights)}))
        return rng.uniform(self.low, self.high, size=(n, *self.shape))

    def check(self, value: object, batched: bool) -> np.ndarray:
        """The value as a float64 array, or ``ValueError`` naming this field."""
        if isinstance(value, (bool, np.bool_)) or (isinstance(value, np.ndarray) and value.dtype == np.bool_) or (
                isinstance(value, (list, tuple)) and any(isinstance(v, (bool, np.bool_)) for v in value)):
            raise ValueError(f"task field {self.name!r} must be numeric, got {value!r} (a boolean)")
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"task field {self.name!r} must be numeric, got {value!r}") from None
        want = self.shape if not batched else (arr.shape[:1] + self.shape if arr.ndim else None)
        if want is None or arr.shape != want:
            raise ValueError(
                f"task field {self.name!r} must have shape {('[N]' if batched else '') + str(self.shape)}, "
                f"got {arr.shape}"
            )
        bad = ~np.isfinite(arr)
        if self.choices is not None:
            bad |= ~np.isin(arr, self.choices)
        else:
            bad |= (arr < self.low) | (arr > self.high)
        if bad.any():
            raise ValueError(f"task field {self.name!r} must be {self.describe()}, got {arr.tolist()}")
        return arr


@dataclass(frozen=True)
class TaskSpace:
    """The task distribution of one environment family."""

    family: str
    fields: tuple[TaskField, ...]

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``n`` tasks as a dict of arrays with leading axis ``n`` (fields drawn in order)."""
        return {f.name: f.sample(n, rng) for f in self.fields}

    def weighted(self, name: str, weights: Mapping[float, float]) -> TaskSpace:
        """The same space with field ``name``'s choices drawn with probabilities ``{choice: p}``."""
        fields = []
        for f in self.fields:
            if f.name == name:
                if f.choices is None or set(weights) != set(f.choices):
                    raise ValueError(f"task field {name!r}: weights must give each of its choices {f.choices}, "
                                     f"got {sorted(weights)}")
                f = replace(f, weights=tuple(float(weights[c]) for c in f.choices))
            fields.append(f)
        return TaskSpace(self.family, tuple(fields))

    def _check_keys(self, task: Mapping) -> None:
        if not isinstance(task, Mapping):
            raise ValueError(f"a {self.family} task must be a dict with keys {[f.name for f in self.fields]}, got {task!r}")
        names = {f.name for f in self.fields}
        if set(task) != names:
            raise ValueError(f"a {self.family} task has the keys {sorted(names)}, got {sorted(task)}")

    def validate(self, task: Mapping) -> dict[str, np.ndarray]:
        """One task, checked and converted to float64 arrays."""
        self._check_keys(task)
        return {f.name: f.check(task[f.name], batched=False) for f in self.fields}

    def validate_batch(self, tasks: Mapping) -> dict[str, np.ndarray]:
        """A batch of tasks (leading axis N), checked; all fields must agree on N."""
        self._check_keys(tasks)
        out = {f.name: f.check(_numpy(tasks[f.name]), batched=True) for f in self.fields}
        sizes = {v.shape[0] for v in out.values()}
        if len(sizes) != 1:
            raise ValueError(f"{self.family} task fields disagree on the batch size: {sizes}")
        return out

    def unstack(self, tasks: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        n = len(next(iter(tasks.values())))
        return [{k: np.asarray(v[i]) for k, v in tasks.items()} for i in range(n)]


def _numpy(value: object) -> object:
    if hasattr(value, "detach"):  # a torch tensor
        return value.detach().cpu().numpy()
    return value


NAVIGATION_TASKS = TaskSpace("Navigation2D", (TaskField("goal", (2,), -0.5, 0.5),))
CHEETAH_VEL_TASKS = TaskSpace("HalfCheetahVel", (TaskField("velocity", (), 0.0, 2.0),))
CHEETAH_DIR_TASKS = TaskSpace("HalfCheetahDir", (TaskField("direction", (), choices=(-1.0, 1.0)),))
ANT_VEL_TASKS = TaskSpace("AntVel", (TaskField("velocity", (), 0.0, 3.0),))
ANT_DIR_TASKS = TaskSpace("AntDir", (TaskField("direction", (), choices=(-1.0, 1.0)),))
ANT_GOAL_TASKS = TaskSpace("AntGoal", (TaskField("goal", (2,), -3.0, 3.0),))
