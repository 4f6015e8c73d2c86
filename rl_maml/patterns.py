"""Lambda patterns (Khabarlak 2022, arXiv 2206.05930): which layers adapt at which inner step.

A :class:`LayerPattern` is a boolean table ``[inner steps][layers]``. Work for what does not adapt
is skipped for real:

- only adapted tensors are handed to autograd (:class:`~rl_maml.inner.AdaptationMask`), so no
  weight gradient is computed for the others and backpropagation stops at the lowest adapted
  layer;
- the leading layers that no step adapts (the *frozen prefix*) run once per task on the support
  and query images; the inner steps run only the layers after it
  (:meth:`rl_maml.functional.TaskBatchedModel.forward_range`).

Full MAML and ANIL (only the head adapts) are named patterns. :func:`subset_family` and
:func:`top_k_family` enumerate candidates; :func:`adapt_with_pattern` adapts a meta-batch with a
pattern; :func:`time_adaptation` measures a pattern's adaptation time per task (median of repeats
after warm-up); :func:`select_pattern` picks the fastest pattern whose accuracy is within epsilon
of full MAML.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor

from rl_maml.aliases import Params
from rl_maml.functional import TaskBatchedModel, expand_params
from rl_maml.inner import AdaptationMask, InnerLoop, StepSize


@dataclass(frozen=True)
class LayerPattern:
    """``table[s][l]``: layer l adapts at inner step s (steps past the table reuse its last row)."""

    name: str
    table: tuple[tuple[bool, ...], ...]

    def __post_init__(self) -> None:
        if not self.table or len({len(r) for r in self.table}) != 1:
            raise ValueError(f"pattern {self.name!r}: the table needs rows of equal length, got {self.table}")

    @property
    def num_layers(self) -> int:
        return len(self.table[0])

    @property
    def num_steps(self) -> int:
        return len(self.table)

    @property
    def frozen_prefix(self) -> int:
        """Leading layers that no step adapts (computed once per task)."""
        k = 0
        while k < self.num_layers and not any(row[k] for row in self.table):
            k += 1
        return k

    def mask(self, groups: Sequence[Sequence[str]]) -> AdaptationMask:
        if len(groups) != self.num_layers:
            raise ValueError(f"pattern {self.name!r} has {self.num_layers} layers; the model has {len(groups)}")
        return AdaptationMask.from_table(self.table, groups)

    def __str__(self) -> str:
        return " / ".join("".join("x" if a else "." for a in row) for row in self.table)


def full_maml(num_layers: int, num_steps: int) -> LayerPattern:
    return LayerPattern("maml", tuple((True,) * num_layers for _ in range(num_steps)))


def anil(num_layers: int, num_steps: int) -> LayerPattern:
    """Only the head (last layer) adapts (Raghu et al. 2020, arXiv 1909.09157)."""
    return LayerPattern("anil", tuple((False,) * (num_layers - 1) + (True,) for _ in range(num_steps)))


def named_pattern(name: str, num_layers: int, num_steps: int) -> LayerPattern:
    if name == "maml":
        return full_maml(num_layers, num_steps)
    if name == "anil":
        return anil(num_layers, num_steps)
    raise ValueError(f"unknown named pattern {name!r}; choose 'maml' or 'anil'")


def subset_family(num_layers: int, num_steps: int) -> list[LayerPattern]:
    """Every non-empty subset of layers, adapted at every step (2^L - 1 patterns)."""
    out = []
    for bits in itertools.product((False, True), repeat=num_layers):
        if any(bits):
            out.append(LayerPattern("".join("x" if b else "." for b in bits), tuple(bits for _ in range(num_steps))))
    return out


def top_k_family(num_layers: int, num_steps: int) -> list[LayerPattern]:
    """The top k layers adapt for the first j steps and only the head afterwards (k = 1..L, j = 1..S)."""
    out = []
    for k in range(1, num_layers + 1):
        top = tuple(i >= num_layers - k for i in range(num_layers))
        head = tuple(i == num_layers - 1 for i in range(num_layers))
        for j in range(1, num_steps + 1):
            if k == 1 and j < num_steps:
                continue  # same as j = num_steps
            out.append(LayerPattern(f"top{k}-steps{j}", tuple(top if s < j else head for s in range(num_steps))))
    return out


def adapt_with_pattern(model: TaskBatchedModel, params: Params, step_size: StepSize, pattern: LayerPattern,
                       support: tuple[Tensor, Tensor], query_x: Tensor | None = None, *, first_order: bool = False,
                       create_graph: bool | None = None) -> tuple[Params, Tensor | None, int]:
    """Adapt every task of a meta-batch with ``pattern``.

    The frozen prefix runs once on the support (and ``query_x``); the inner steps run the rest.

    Returns:
        (adapted parameters ``[M, ...]``, the query's prefix output or None, the prefix length);
        score the query with ``model.task_losses_from(adapted, (features, y), prefix)``.
    """
    groups = model.module.layer_groups()
    inner = InnerLoop(step_size, pattern.num_steps, first_order, pattern.mask(groups))
    k = pattern.frozen_prefix
    num_tasks = support[0].shape[0]
    start = expand_params(params, num_tasks)
    sx, qx = support[0], query_x
    if k > 0:
        sx = model.forward_range(start, sx, 0, k)
        qx = model.forward_range(start, qx, 0, k) if qx is not None else None

    def loss(p: Params, data: tuple[Tensor, Tensor]) -> Tensor:
        return model.task_losses_from(p, data, k)

    adapted = inner.adapt(start, loss, (sx, support[1]), create_graph=create_graph)
    return adapted, qx, k


def time_adaptation(fn: Callable[[], object], repeats: int = 7, warmup: int = 2) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def select_pattern(rows: Sequence[dict], epsilon: float, reference: str = "maml", higher_is_better: bool = True) -> dict:
    """The fastest row whose ``score`` is within ``epsilon`` of the reference row's.

    Each row has ``name``, ``seconds_per_task`` and ``score`` (accuracy in points, or an error
    when ``higher_is_better`` is False). The reference itself is always admissible.
    """
    by_name = {r["name"]: r for r in rows}
    if reference not in by_name:
        raise ValueError(f"no reference row {reference!r} among {sorted(by_name)}")
    ref = by_name[reference]["score"]
    ok = [r for r in rows if (r["score"] >= ref - epsilon if higher_is_better else r["score"] <= ref + epsilon)]
    return min(ok, key=lambda r: r["seconds_per_task"])


def parse_pattern(text: str, num_layers: int, num_steps: int) -> LayerPattern:
    """``"maml"``, ``"anil"``, or rows of ``x`` (adapts) and ``.`` per layer, one row per step separated
    by ``/`` (``"...xx/....x"``); a single row applies to every step."""
    text = text.strip()
    if text in ("maml", "anil"):
        return named_pattern(text, num_layers, num_steps)
    rows = [r.strip() for r in text.split("/")]
    if any(set(r) - {"x", "."} or len(r) != num_layers for r in rows):
        raise ValueError(f"pattern {text!r}: expected 'maml', 'anil' or rows of {num_layers} characters 'x'/'.' "
                         "separated by '/'")
    if len(rows) not in (1, num_steps):
        raise ValueError(f"pattern {text!r} has {len(rows)} rows; give one, or one per inner step ({num_steps})")
    table = tuple(tuple(c == "x" for c in r) for r in rows)
    if not any(any(r) for r in table):
        raise ValueError(f"pattern {text!r} adapts nothing")
    return LayerPattern(text, table * (num_steps if len(rows) == 1 else 1))
