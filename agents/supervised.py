"""Learners for supervised task distributions: MAML and its two reference points.

- :class:`MAMLLearner`: meta-trains an initialisation through the inner loop (Finn, Abbeel and
  Levine 2017, arXiv 1703.03400); first-order, learned step sizes and masks come from its
  :class:`~rl_maml.inner.InnerLoop`.
- :class:`PretrainedLearner`: the non-adaptive baseline (NAL, "pretrained" in the MAML paper):
  one network regressed on the pooled data of all training tasks, fine-tuned on the K shots at
  test time.
- :class:`OracleLearner`: sees each task's parameters as extra inputs; needs no adaptation.

All three adapt with the same engine at evaluation time and share the verbs below.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from rl_maml.aliases import Params
from rl_maml.config import MAMLPlusPlusConfig
from rl_maml.functional import TaskBatchedModel, expand_params, params_of
from rl_maml.inner import ConstantStepSize, InnerLoop, LearnedStepSize, at_inner_step, query_step
from rl_maml.maml import meta_loss, multi_step_loss_weights
from rl_maml.patterns import LayerPattern, adapt_with_pattern
from rl_maml.tasks.base import TaskBatch


class SupervisedLearner:
    """The shared protocol: a model, its parameters, an Adam outer loop and an evaluation inner loop.

    Subclasses implement :meth:`loss` (what training minimises) and may override
    :meth:`prepare_inputs` (what the network sees).

    Args:
        module: the network.
        criterion: per-task loss ``criterion(prediction, target) -> scalar``.
        outer_lr: Adam step size.
        eval_inner: how the learner adapts at test time (step size, mask).
        extra_modules: other modules whose parameters the outer loop trains (learned step sizes).
    """

    name = "learner"

    def __init__(
        self,
        module: nn.Module,
        criterion: Callable[[Tensor, Tensor], Tensor],
        outer_lr: float,
        eval_inner: InnerLoop,
        extra_modules: dict[str, nn.Module] | None = None,
    ):
        self.module = module
        self.model = TaskBatchedModel(module, criterion)
        self.params: Params = params_of(module)
        self.extra_modules = dict(extra_modules or {})
        trainable = list(self.params.values()) + [p for m in self.extra_modules.values() for p in m.parameters()]
        self.optimizer = torch.optim.Adam(trainable, lr=outer_lr)
        self.eval_inner = eval_inner

    # -- what subclasses change ---------------------------------------------------------------
    def prepare_inputs(self, x: Tensor, tasks: dict[str, Tensor]) -> Tensor:
        """The network's input for raw inputs ``x`` ``[M, K, ...]`` of the given tasks."""
        return x

    def loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        """The training loss on one meta-batch and the metrics to log."""
        raise NotImplementedError

    # -- shared verbs -------------------------------------------------------------------------
    nonfinite_hint = ("Lower train.outer_lr or inner.inner_lr and start a new run (the run is deterministic: "
                      "resuming it repeats the same computation).")

    def checked_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        """:meth:`loss` in training mode; raises ``FloatingPointError`` (naming the fix) if it is not finite."""
        self.module.train()
        loss, metrics = self.loss(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"{self.name}: training loss became {loss.item()}; parameters were not updated. {self.nonfinite_hint}"
            )
        return loss, metrics

    def _prepared(self, batch: TaskBatch) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        sx, sy = batch.support
        qx, qy = batch.query
        return (self.prepare_inputs(sx, batch.tasks), sy), (self.prepare_inputs(qx, batch.tasks), qy)

    def train_step(self, batch: TaskBatch) -> dict[str, float]:
        """One outer step on ``batch``; returns the logged metrics.

        Raises:
            FloatingPointError: the loss is NaN or infinite (the parameters are left unchanged).
        """
        loss, metrics = self.checked_loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        shard = getattr(self, "shard", None)
        if shard is not None:  # a share of the meta-batch: the gradient of the mean over all tasks
            for group in self.optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.grad = shard.mean(p.grad)
        self.optimizer.step()
        if shard is not None:  # running statistics (batch norm) from each share, averaged
            for b in self.module.buffers():
                if b.is_floating_point():
                    b.copy_(shard.mean(b))
        return metrics

    def trajectory(self, batch: TaskBatch, num_steps: int) -> Iterator[Params]:
        """Detached per-task parameters ``[M, ...]`` before and after each of ``num_steps`` test-time steps.

        The module is put in eval mode (batch norm with running statistics uses them).
        """
        self.module.eval()
        support, _ = self._prepared(batch)
        init = {k: v.detach() for k, v in self.params.items()}
        for p in self.eval_inner.trajectory(
            init, self.model.task_losses, support, num_tasks=batch.num_tasks, num_steps=num_steps, create_graph=False
        ):
            yield {k: v.detach() for k, v in p.items()}

    def evaluate(self, batch: TaskBatch, num_steps: int,
                 score: Callable[[Tensor, Tensor], Tensor] | None = None,
                 score_steps: Sequence[int] | None = None) -> Tensor:
        """Per-task query scores after 0..num_steps test-time steps: ``[num_steps + 1, M]``.

        The score is the training criterion (the query loss) unless ``score(predictions [M, Q, ...],
        targets [M, Q, ...]) -> [M]`` is given, e.g. :func:`rl_maml.tasks.fewshot.accuracy`.
        ``score_steps`` scores only after those step counts (rows in that order): scoring the query
        set costs about as much as a step when it is larger than the support set.
        """
        _, query = self._prepared(batch)
        if score_steps is not None:
            bad = [k for k in score_steps if not 0 <= k <= num_steps]
            if bad or not score_steps:
                raise ValueError(f"score_steps must be a non-empty list of step counts in 0..{num_steps}, got "
                                 f"{list(score_steps)}")
        wanted = set(range(num_steps + 1) if score_steps is None else score_steps)
        scored: dict[int, Tensor] = {}
        for k, p in enumerate(self.trajectory(batch, num_steps)):
            if k not in wanted:
                continue
            with torch.no_grad(), at_inner_step(query_step(k)):
                scored[k] = (self.model.task_losses(p, query) if score is None else
                             score(self.model.forward(p, query[0]), query[1]))
        return torch.stack([scored[k] for k in (range(num_steps + 1) if score_steps is None else score_steps)])

    def predict(self, params: Params, x: Tensor, tasks: dict[str, Tensor], steps_taken: int = 0) -> Tensor:
        """Predictions of per-task ``params`` at raw inputs ``x`` ``[M, N, ...]``.

        ``steps_taken``: how many inner steps produced ``params``; a model with per-step parts
        (MAML++'s per-step batch norm) then uses the last step's, as the evaluation does.
        """
        with torch.no_grad(), at_inner_step(query_step(steps_taken)):
            return self.model.forward(params, self.prepare_inputs(x, tasks))

    def state_dict(self) -> dict:
        return {
            "module": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "extra": {k: m.state_dict() for k, m in self.extra_modules.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        for k, m in self.extra_modules.items():
            m.load_state_dict(state["extra"][k])


class MAMLLearner(SupervisedLearner):
    """Model-Agnostic Meta-Learning (arXiv 1703.03400) on a supervised task distribution.

    Args:
        module: the network whose initialisation is meta-learned.
        criterion: per-task loss.
        inner: the inner loop used in training and (with its step sizes and mask) at test time.
        outer_lr: Adam step size of the meta-update.
        learned_step_size: the inner loop's learned step sizes, if any (trained by the outer loop).
    """

    name = "maml"

    def __init__(
        self,
        module: nn.Module,
        criterion: Callable[[Tensor, Tensor], Tensor],
        inner: InnerLoop,
        outer_lr: float,
        learned_step_size: LearnedStepSize | None = None,
        mamlpp: MAMLPlusPlusConfig | None = None,
        num_iterations: int | None = None,
    ):
        extra = {"step_size": learned_step_size} if learned_step_size is not None else None
        super().__init__(module, criterion, outer_lr, inner, extra)
        self.inner = inner
        self.learned_step_size = learned_step_size
        self.mamlpp = mamlpp if mamlpp is not None else MAMLPlusPlusConfig()
        if self.mamlpp.multi_step_loss and inner.num_steps < 1:
            raise ValueError("mamlpp.multi_step_loss needs inner.num_inner_steps >= 1")
        if self.mamlpp.cosine_outer_lr and not num_iterations:
            raise ValueError("mamlpp.cosine_outer_lr needs the run's num_iterations")
        self.outer_lr = outer_lr
        self.num_iterations = num_iterations
        self._first_order_inner = dataclasses.replace(inner, first_order=True)
        self.iterations = 0
        """Meta-updates taken so far (checkpointed; the MAML++ schedules follow it)."""

    def training_inner(self) -> InnerLoop:
        """The inner loop of the next meta-update (first order during derivative-order annealing)."""
        return self._first_order_inner if self.iterations < self.mamlpp.first_order_iterations else self.inner

    def step_weights(self) -> list[float] | None:
        """The multi-step-loss weights of the next meta-update, or None (the last step only)."""
        if not self.mamlpp.multi_step_loss:
            return None
        return multi_step_loss_weights(self.inner.num_steps, self.iterations / self.mamlpp.msl_anneal_iterations)

    def outer_lr_at(self, iteration: int) -> float:
        """The outer step size of meta-update ``iteration`` (0-based): cosine-annealed or constant."""
        if not self.mamlpp.cosine_outer_lr:
            return self.outer_lr
        lo, t = self.mamlpp.min_outer_lr, min(iteration / max(self.num_iterations - 1, 1), 1.0)
        return lo + 0.5 * (self.outer_lr - lo) * (1 + math.cos(math.pi * t))

    def train_step(self, batch: TaskBatch) -> dict[str, float]:
        lr = self.outer_lr_at(self.iterations)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        second_order = not self.training_inner().first_order
        metrics = super().train_step(batch)
        self.iterations += 1
        if self.mamlpp.enabled():
            metrics["charts/outer_lr"] = lr
            metrics["charts/second_order"] = float(second_order)
        return metrics

    def state_dict(self) -> dict:
        return {**super().state_dict(), "counters": {"iterations": self.iterations}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.iterations = int(state.get("counters", {}).get("iterations", 0))

    def loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        support, query = self._prepared(batch)
        weights = self.step_weights()
        result = meta_loss(self.model, self.params, self.training_inner(), support, query, step_weights=weights)
        metrics = {
            "losses/support_pre": result.support_losses.mean().item(),
            "losses/query_post": result.query_losses.mean().item(),
        }
        if weights is not None:
            metrics["losses/multi_step"] = result.loss.item()
            metrics["charts/msl_last_step_weight"] = weights[-1]
        for n in self.params:  # step sizes of the first inner step (learned ones change)
            lr = self.inner.step_size(0, n)
            metrics[f"charts/inner_lr/{n}"] = lr.detach().mean().item() if isinstance(lr, Tensor) else float(lr)
        return result.loss, metrics


class PretrainedLearner(SupervisedLearner):
    """The non-adaptive baseline (NAL): one network fitted to all training tasks' data at once.

    At test time it is fine-tuned on each task's K shots by plain gradient descent with
    ``finetune_lr``, through the same engine as MAML.
    """

    name = "pretrained"

    def __init__(self, module: nn.Module, criterion: Callable[[Tensor, Tensor], Tensor], outer_lr: float,
                 finetune_lr: float):
        super().__init__(module, criterion, outer_lr, InnerLoop(ConstantStepSize(finetune_lr), first_order=True))

    def loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        support, query = self._prepared(batch)
        shared = expand_params(self.params, batch.num_tasks)
        loss = 0.5 * (self.model.task_losses(shared, support).mean() + self.model.task_losses(shared, query).mean())
        return loss, {"losses/train": loss.item()}


class OracleLearner(PretrainedLearner):
    """Receives the task's parameters as extra inputs (a lower bound on the achievable error).

    The network's input is the raw input concatenated with the task's parameters (for the
    sinusoid: amplitude and phase). It needs no adaptation, so :meth:`evaluate` reports the same
    loss for every number of steps.
    """

    name = "oracle"

    def __init__(self, module: nn.Module, criterion: Callable[[Tensor, Tensor], Tensor], outer_lr: float,
                 task_keys: tuple[str, ...]):
        super().__init__(module, criterion, outer_lr, finetune_lr=0.0)
        self.task_keys = task_keys

    def prepare_inputs(self, x: Tensor, tasks: dict[str, Tensor]) -> Tensor:
        # x: [M, K, d]; each task parameter [M] is broadcast over the K points -> [M, K, d + n_keys]
        extra = [tasks[k].view(-1, 1, 1).expand(x.shape[0], x.shape[1], 1).to(x) for k in self.task_keys]
        return torch.cat([x, *extra], dim=-1)

    def trajectory(self, batch: TaskBatch, num_steps: int) -> Iterator[Params]:
        init = expand_params({k: v.detach() for k, v in self.params.items()}, batch.num_tasks)
        for _ in range(num_steps + 1):
            yield init


class LambdaMAMLLearner(SupervisedLearner):
    """MAML restricted to a Lambda pattern (arXiv 2206.05930) during meta-training and at test time.

    The frozen prefix runs once per task; only the pattern's tensors adapt (see
    :mod:`rl_maml.patterns`). With the pattern ``anil`` this is ANIL.
    """

    name = "lambda_maml"

    def __init__(self, module: nn.Module, criterion: Callable[[Tensor, Tensor], Tensor], inner: InnerLoop,
                 outer_lr: float, pattern: LayerPattern):
        groups = module.layer_groups()
        super().__init__(module, criterion, outer_lr,
                         InnerLoop(inner.step_size, inner.num_steps, inner.first_order, pattern.mask(groups)))
        self.inner = inner
        self.pattern = pattern

    def loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        support, query = self._prepared(batch)
        adapted, q_features, k = adapt_with_pattern(self.model, self.params, self.inner.step_size, self.pattern,
                                                    support, query[0], first_order=self.inner.first_order)
        loss = self.model.task_losses_from(adapted, (q_features, query[1]), k).mean()
        return loss, {"losses/query_post": loss.item()}
