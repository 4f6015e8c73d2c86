"""Alpha MAML (Behl, Baydin and Torr 2019, arXiv 1905.07435): MAML whose step sizes adapt online.

A sibling of :class:`~rl_maml.agents.supervised.MAMLLearner` with the same verbs. The inner step
size alpha (scalar, per layer or per tensor) and the outer step size beta (plain SGD or Adam) move
by hypergradient descent (:mod:`rl_maml.hypergradient`), from quantities the MAML step already
computes. Clipping warnings (a step size that would turn negative or non-finite) are counted in
the logged metrics and printed once each.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Literal

from torch import Tensor, nn

from rl_maml.agents.supervised import SupervisedLearner
from rl_maml.functional import params_of
from rl_maml.hypergradient import Granularity, HypergradientAdam, HypergradientSGD, HypergradientStepSize
from rl_maml.inner import InnerLoop
from rl_maml.maml import meta_loss
from rl_maml.tasks.base import TaskBatch


class AlphaMAMLLearner(SupervisedLearner):
    """MAML with hypergradient-adapted inner (alpha) and outer (beta) step sizes.

    Args:
        module: the network whose initialisation is meta-learned.
        criterion: per-task loss.
        alpha: initial inner step size.
        beta: initial outer step size.
        num_inner_steps: inner steps in meta-training.
        first_order: first-order meta-gradient (alpha's hypergradient then uses it too).
        granularity: ``scalar``, ``layer`` or ``tensor`` step sizes alpha.
        alpha_hyper_lr, beta_hyper_lr: hypergradient step sizes (0 freezes that step size, so
            ``alpha_hyper_lr = beta_hyper_lr = 0`` with ``outer="sgd"`` is MAML with SGD).
        outer: ``adam`` or ``sgd`` outer loop.
    """

    name = "alpha_maml"
    nonfinite_hint = ("Lower the initial alpha or beta (or their hypergradient step sizes), or resume from an "
                      "earlier checkpoint.")

    def __init__(self, module: nn.Module, criterion: Callable[[Tensor, Tensor], Tensor], alpha: float, beta: float,
                 num_inner_steps: int = 1, first_order: bool = False, granularity: Granularity = "scalar",
                 alpha_hyper_lr: float = 1e-4, beta_hyper_lr: float = 1e-7, outer: Literal["adam", "sgd"] = "adam"):
        self.step_size = HypergradientStepSize(params_of(module), alpha, granularity, alpha_hyper_lr)
        self.inner = InnerLoop(self.step_size, num_inner_steps, first_order)
        super().__init__(module, criterion, beta, self.inner, {"step_size": self.step_size})
        # The outer loop is ours (hypergradient on beta); alpha is updated by its own rule, not by it.
        opt_cls = HypergradientAdam if outer == "adam" else HypergradientSGD
        self.optimizer = opt_cls(self.params.values(), beta, beta_hyper_lr)  # type: ignore[assignment]
        self._warned: set[str] = set()

    def loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        support, query = self._prepared(batch)
        result = meta_loss(self.model, self.params, self.inner, support, query)
        return result.loss, {"losses/support_pre": result.support_losses.mean().item(),
                             "losses/query_post": result.loss.item()}

    def train_step(self, batch: TaskBatch) -> dict[str, float]:
        loss, metrics = self.checked_loss(batch)
        self.optimizer.zero_grad()
        for a in self.step_size.parameters():
            a.grad = None
        loss.backward()  # fills the meta-gradient and, through the inner steps, dL/dalpha
        notes = self.step_size.update() + self.optimizer.step()
        for note in notes:
            kind = note.split(":", 1)[0]
            if kind not in self._warned:  # once per step size; the count goes to the log every time
                warnings.warn(f"Alpha MAML: {note}", RuntimeWarning, stacklevel=2)
                self._warned.add(kind)
        metrics["charts/clipped_updates"] = float(len(notes))
        metrics["charts/beta"] = self.optimizer.lr
        for g, a in self.step_size.as_dict().items():
            metrics[f"charts/alpha/{g}"] = a
        return metrics

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                "extra": {"step_size": self.step_size.state_dict()}}
