"""The inner update: gradient steps that adapt the initial parameters to every task at once.

One call adapts all M tasks of a meta-batch. The per-task losses ``[M]`` are summed and
differentiated once with respect to the batched parameters ``[M, ...]``: since tasks do not
interact, the gradient of the sum with respect to task m's copy is task m's own gradient, so a
single ``autograd.grad`` gives all M gradients (the same result as ``vmap(grad(loss))``).

Keeping the graph (``create_graph=True``) makes the adapted parameters differentiable functions
of the initial ones: the outer loss then yields the exact second-order MAML meta-gradient
(Finn, Abbeel and Levine 2017, arXiv 1703.03400). First-order MAML drops the graph of the
gradients but keeps the identity path ``theta' = theta - alpha * g``.

Step sizes and masks are small objects:

- :class:`ConstantStepSize` (one scalar, optionally scaled per step),
  :class:`PerTensorStepSize` (one float per parameter tensor) and
  :class:`LearnedStepSize` (tensors the outer loop optimises; per tensor or per element as in
  Meta-SGD, arXiv 1707.09835, optionally one per inner step as MAML++'s LSLR);
- :class:`AdaptationMask`: which parameter tensors adapt at which inner step. Tensors left out
  are not differentiated at all: autograd is asked only for the adapted ones, so it computes no
  weight gradient for the others and stops backpropagating below the lowest adapted layer.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor, nn

from rl_maml.aliases import Params
from rl_maml.config import InnerConfig
from rl_maml.functional import expand_params

__all__ = [
    "StepSize",
    "ConstantStepSize",
    "PerTensorStepSize",
    "LearnedStepSize",
    "AdaptationMask",
    "InnerLoop",
    "make_inner_loop",
    "current_inner_step",
    "at_inner_step",
    "query_step",
]


_INNER_STEP: contextvars.ContextVar[int | None] = contextvars.ContextVar("rl_maml_inner_step", default=None)


def current_inner_step() -> int | None:
    """The inner step whose loss is being computed (set by :meth:`InnerLoop.trajectory` around
    each support loss, and by the objectives around each query loss: after ``s + 1`` steps, the
    step index ``s``), or None outside. Modules with per-step parts read it (MAML++'s per-step
    batch norm, :class:`rl_maml.nn.TaskBatchNorm2d` with ``num_steps``)."""
    return _INNER_STEP.get()


@contextlib.contextmanager
def at_inner_step(step: int) -> Iterator[None]:
    """Compute what runs inside as at inner step ``step`` (see :func:`current_inner_step`)."""
    token = _INNER_STEP.set(step)
    try:
        yield
    finally:
        _INNER_STEP.reset(token)


def query_step(steps_taken: int) -> int:
    """The step index a query pass after ``steps_taken`` inner steps runs at: the last step's
    (``steps_taken - 1``), or 0 before any (MAML++ scores the query with the last step's parts)."""
    return max(steps_taken - 1, 0)


class StepSize(Protocol):
    """``step_size(step, name)``: the inner learning rate for tensor ``name`` at inner step ``step``."""

    def __call__(self, step: int, name: str) -> float | Tensor: ...


def _check_rate(value: float, what: str) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {value}")
    return value


def step_scale(step_scales: Sequence[float], step: int) -> float:
    """The multiplier of inner step ``step``: ``step_scales[step]``, the last one past the end, 1 if empty."""
    return step_scales[min(step, len(step_scales) - 1)] if step_scales else 1.0


@dataclass(frozen=True)
class ConstantStepSize:
    """One scalar step size for every tensor.

    Args:
        value: the step size alpha.
        step_scales: optional multipliers per inner step; steps past the end use the last one.
            ``(1.0, 0.5)`` gives the MAML paper's RL evaluation schedule (alpha, then alpha/2).
    """

    value: float
    step_scales: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        _check_rate(self.value, "inner_lr")
        for s in self.step_scales:
            _check_rate(s, "step scale")

    def __call__(self, step: int, name: str) -> float:
        return self.value * step_scale(self.step_scales, step)


@dataclass(frozen=True)
class PerTensorStepSize:
    """A fixed step size per parameter tensor; names missing from ``values`` use ``default``."""

    values: Mapping[str, float]
    default: float | None = None

    def __post_init__(self) -> None:
        for name, v in self.values.items():
            _check_rate(v, f"step size of {name!r}")
        if self.default is not None:
            _check_rate(self.default, "default step size")

    def __call__(self, step: int, name: str) -> float:
        if name in self.values:
            return self.values[name]
        if self.default is None:
            raise KeyError(
                f"no step size for parameter {name!r}: give it one in PerTensorStepSize.values "
                f"or set a default (known: {sorted(self.values)})"
            )
        return self.default


def _key(name: str) -> str:
    # nn.ParameterDict keys may not contain '.', parameter names do.
    return name.replace(".", "__")


class LearnedStepSize(nn.Module):
    """Step sizes that are themselves parameters of the outer loop.

    Args:
        params: the model parameters whose step sizes are learned (names and shapes).
        init: initial value of every step size.
        per_element: one step size per parameter entry (Meta-SGD) instead of one per tensor.
        per_step: if > 0, a separate step size per inner step for the first ``per_step`` steps
            (MAML++'s per-layer per-step learning rates, LSLR, arXiv 1810.09502); later steps
            (e.g. more steps at test time) use the last one.
    """

    def __init__(self, params: Params, init: float, per_element: bool = False, per_step: int = 0):
        super().__init__()
        _check_rate(init, "initial step size")
        if per_step < 0:
            raise ValueError(f"per_step must be >= 0, got {per_step}")
        self.names = tuple(params)
        self.per_element = per_element
        self.per_step = per_step
        lead = (per_step,) if per_step else ()
        self.rates = nn.ParameterDict(
            {
                _key(n): nn.Parameter(
                    torch.full((*lead, *(p.shape if per_element else ())), float(init), dtype=p.dtype,
                               device=p.device)
                )
                for n, p in params.items()
            }
        )

    def __call__(self, step: int, name: str) -> Tensor:  # type: ignore[override]
        rate = self.rates[_key(name)]
        return rate[min(step, self.per_step - 1)] if self.per_step else rate

    def as_dict(self) -> dict[str, Tensor]:
        """Name -> current step-size tensor (for logging)."""
        return {n: self.rates[_key(n)] for n in self.names}


@dataclass(frozen=True)
class AdaptationMask:
    """Which parameter tensors adapt at each inner step.

    ``steps[s]`` is the set of names adapted at inner step ``s``; steps past the end reuse the
    last entry (so a one-row mask applies to every step). Names not listed keep their current
    value and cost no gradient computation.
    """

    steps: tuple[frozenset[str], ...]

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError("an AdaptationMask needs at least one step")

    @classmethod
    def only(cls, names: Collection[str]) -> AdaptationMask:
        """Adapt the same tensors at every step (e.g. the head only, as in ANIL)."""
        return cls((frozenset(names),))

    @classmethod
    def from_table(cls, table: Sequence[Sequence[bool]], groups: Sequence[Collection[str]]) -> AdaptationMask:
        """From a boolean table ``[steps][groups]`` and the parameter names of each group."""
        rows = []
        for s, row in enumerate(table):
            if len(row) != len(groups):
                raise ValueError(f"mask row {s} has {len(row)} entries, expected one per group ({len(groups)})")
            rows.append(frozenset(n for adapt, names in zip(row, groups) if adapt for n in names))
        return cls(tuple(rows))

    def names_at(self, step: int) -> frozenset[str]:
        return self.steps[min(step, len(self.steps) - 1)]

    def validate(self, names: Collection[str]) -> None:
        unknown = set().union(*self.steps) - set(names)
        if unknown:
            raise ValueError(
                f"adaptation mask names unknown parameters {sorted(unknown)}; model parameters are {sorted(names)}"
            )


@dataclass
class InnerLoop:
    """Gradient-descent adaptation shared by every learner in rl_maml.

    Args:
        step_size: a :class:`StepSize` (constant, per tensor or learned).
        num_steps: inner gradient steps taken by :meth:`adapt`.
        first_order: drop second-order terms (first-order MAML).
        mask: which tensors adapt at each step; ``None`` adapts every tensor at every step.
    """

    step_size: StepSize
    num_steps: int = 1
    first_order: bool = False
    mask: AdaptationMask | None = None
    _validated: set[tuple[str, ...]] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.num_steps < 0:
            raise ValueError(f"num_inner_steps must be >= 0, got {self.num_steps}")

    def adapted_names(self, step: int, params: Params) -> list[str]:
        """Names of the tensors adapted at ``step``, in the order of ``params``."""
        if self.mask is None:
            return list(params)
        key = tuple(params)
        if key not in self._validated:
            self.mask.validate(key)
            self._validated.add(key)
        chosen = self.mask.names_at(step)
        return [n for n in params if n in chosen]

    def step(self, params: Params, losses: Tensor, step: int, *, create_graph: bool | None = None) -> Params:
        """One gradient step on ``losses`` (``[M]`` per-task losses, or a scalar for one task).

        Args:
            params: current parameters, batched ``[M, ...]`` (or unbatched for a single task);
                ``losses`` must be computed from them.
            losses: the inner losses; their sum is differentiated.
            step: the index of this inner step (selects step size and mask row).
            create_graph: keep the graph for second-order gradients; defaults to
                ``not first_order``.

        Returns:
            New parameters. Tensors not adapted at this step keep their values; with ``create_graph``
            they are returned as aliases (``view_as``), new graph nodes, so that a later step's
            gradient with respect to them is the partial derivative at that step. Without the
            alias, autograd would also follow the paths through the tensors an earlier step adapted
            (their gradients depend on the unadapted ones), and a mask that adapts a tensor only
            at a later step would take a wrong step there.
        """
        if create_graph is None:
            create_graph = not self.first_order
        names = self.adapted_names(step, params)
        if not names:
            return _aliased(params, names) if create_graph else dict(params)
        if not losses.requires_grad:
            raise RuntimeError(
                "inner loss does not require grad: compute it from params that require grad, "
                "outside torch.no_grad() (use InnerLoop.adapt, which prepares them)"
            )
        grads = torch.autograd.grad(
            losses.sum(), [params[n] for n in names], create_graph=create_graph, allow_unused=True
        )
        new = _aliased(params, names) if create_graph else dict(params)
        for n, g in zip(names, grads):
            if g is not None:  # a tensor the loss does not depend on stays as it is
                new[n] = params[n] - self.step_size(step, n) * g
        return new

    def trajectory(
        self,
        params: Params,
        loss_fn: Callable[[Params, object], Tensor],
        data: object,
        *,
        num_tasks: int | None = None,
        num_steps: int | None = None,
        create_graph: bool | None = None,
    ) -> Iterator[Params]:
        """Yield the parameters before adaptation and after each of ``num_steps`` steps.

        Args:
            params: initial parameters: unbatched (expanded to ``num_tasks`` tasks) or already
                batched when ``num_tasks`` is None.
            loss_fn: ``loss_fn(params, data) -> [M]`` per-task losses (a scalar for one task).
            data: the support data passed to ``loss_fn``.
            num_tasks: expand unbatched ``params`` to this many tasks.
            num_steps: overrides ``self.num_steps``.
            create_graph: see :meth:`step`.
        """
        if not torch.is_grad_enabled():
            raise RuntimeError("the inner update needs autograd: do not call it under torch.no_grad()")
        num_steps = self.num_steps if num_steps is None else num_steps
        # Tensors that do not require grad (e.g. detached evaluation copies) and that some step
        # adapts become fresh leaves, so they can be differentiated without linking to anything;
        # tensors no step adapts stay as they are (no graph is built through them).
        adaptable = set(params) if self.mask is None else \
            {n for s in range(num_steps) for n in self.adapted_names(s, params)}
        current = {k: v if v.requires_grad or k not in adaptable else v.detach().requires_grad_(True)
                   for k, v in params.items()}
        if num_tasks is not None:
            current = expand_params(current, num_tasks)
        yield current
        for s in range(num_steps):
            with at_inner_step(s):
                losses = loss_fn(current, data)
            current = self.step(current, losses, s, create_graph=create_graph)
            yield current

    def adapt(
        self,
        params: Params,
        loss_fn: Callable[[Params, object], Tensor],
        data: object,
        *,
        num_tasks: int | None = None,
        num_steps: int | None = None,
        create_graph: bool | None = None,
    ) -> Params:
        """The parameters after ``num_steps`` inner steps (see :meth:`trajectory`)."""
        last = params
        for last in self.trajectory(
            params, loss_fn, data, num_tasks=num_tasks, num_steps=num_steps, create_graph=create_graph
        ):
            pass
        return last


def _aliased(params: Params, adapted: list[str]) -> Params:
    """``params`` with each tensor not in ``adapted`` that carries a graph replaced by an alias of
    it (a new graph node); the adapted ones are replaced by the caller."""
    skip = set(adapted)
    return {n: v.view_as(v) if v.requires_grad and n not in skip else v for n, v in params.items()}


def make_inner_loop(config: InnerConfig, params: Params) -> tuple[InnerLoop, LearnedStepSize | None]:
    """Build the :class:`InnerLoop` an :class:`~rl_maml.config.InnerConfig` describes.

    Returns:
        The inner loop, and the learned step-size module (to optimise with the outer loop) or None.
    """
    learned = None
    step_size: StepSize
    if config.step_size == "fixed":
        if config.per_tensor_lr:
            unknown = set(config.per_tensor_lr) - set(params)
            if unknown:
                raise ValueError(f"inner.per_tensor_lr names unknown parameters {sorted(unknown)}; known: {sorted(params)}")
            step_size = PerTensorStepSize(dict(config.per_tensor_lr), default=config.inner_lr)
        else:
            step_size = ConstantStepSize(config.inner_lr, tuple(float(x) for x in config.step_scales))
    else:
        learned = LearnedStepSize(params, config.inner_lr, per_element=config.step_size == "learned_per_element",
                                  per_step=max(config.num_inner_steps, 1) if config.step_size == "learned_per_step" else 0)
        step_size = learned
    mask = None
    if config.adapt is not None:
        chosen = {n for n in params for pre in config.adapt if n == pre or n.startswith(pre + ".")}
        unmatched = [pre for pre in config.adapt if not any(n == pre or n.startswith(pre + ".") for n in params)]
        if unmatched:
            raise ValueError(f"inner.adapt entries {unmatched} match no parameter; parameters are {sorted(params)}")
        mask = AdaptationMask.only(chosen)
    return InnerLoop(step_size, config.num_inner_steps, config.first_order, mask), learned
