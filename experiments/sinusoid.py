"""Sinusoid regression (MAML paper, section 5.1 and Figures 2-3): MAML, pretrained (NAL), oracle.

``rl-maml train sinusoid --run-dir runs/sinusoid`` meta-trains all methods on the same stream of
meta-batches; ``rl-maml eval runs/sinusoid`` adapts each to 600 seeded test tasks and reports the
mean squared error (95% confidence interval) after 0 to 10 gradient steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from rl_maml.agents import SupervisedLearner, make_supervised_learner

from rl_maml.config import ConfigError, InnerConfig, TrainConfig, VariantConfig
from rl_maml.nn import MLP
from rl_maml.seeding import seed_everything, torch_generator
from rl_maml.stats import mean_ci95
from rl_maml.tasks.sinusoid import SinusoidTasks
from rl_maml.training import Trainer, load_learners

from . import plots
from .report import markdown_table, write_results

Method = Literal["maml", "alpha_maml", "lambda_maml", "pretrained", "oracle"]
LABELS = {"maml": "MAML", "alpha_maml": "Alpha MAML", "lambda_maml": "Lambda MAML", "pretrained": "pretrained (NAL)",
          "oracle": "oracle"}


@dataclass
class SinusoidTaskConfig:
    """The task distribution and the number of points per task."""

    amplitude_range: tuple[float, float] = (0.1, 5.0)
    """Amplitude A ~ U[low, high]."""
    phase_range: tuple[float, float] = (0.0, math.pi)
    """Phase phi ~ U[low, high] (radians)."""
    x_range: tuple[float, float] = (-5.0, 5.0)
    """Inputs x ~ U[low, high]."""
    num_support: int = 10
    """K: points per task used for adaptation (the paper uses 5, 10 or 20)."""
    num_query: int = 10
    """Points per task on which the adapted model is scored during meta-training."""

    def __post_init__(self) -> None:
        if self.num_support < 1 or self.num_query < 1:
            raise ConfigError("task.num_support and task.num_query must be >= 1")
        if self.amplitude_range[0] < 0:
            raise ConfigError(f"task.amplitude_range must not be negative, got {self.amplitude_range}")


@dataclass
class ModelConfig:
    """The regression network."""

    hidden_sizes: tuple[int, ...] = (40, 40)
    """Hidden layer widths (1-40-40-1 in the paper)."""
    activation: Literal["relu", "tanh"] = "relu"
    """Hidden activation."""


@dataclass
class EvalConfig:
    """Test-time evaluation."""

    num_tasks: int = 600
    """Held-out test tasks."""
    max_steps: int = 10
    """Report the error after 0..max_steps inner gradient steps."""
    num_query: int = 100
    """Points per test task on which the adapted model is scored."""
    seed: int = 2017
    """Seed of the test tasks (independent of the training seed, so runs share a test set)."""
    finetune_lr: float = 0.01
    """Step size with which the pretrained baseline is fine-tuned at test time."""

    def __post_init__(self) -> None:
        if self.num_tasks < 2 or self.max_steps < 0 or self.num_query < 1:
            raise ConfigError("eval.num_tasks must be >= 2, eval.max_steps >= 0, eval.num_query >= 1")
        if self.finetune_lr < 0:
            raise ConfigError(f"eval.finetune_lr must be >= 0, got {self.finetune_lr}")


@dataclass
class SinusoidConfig:
    """A sinusoid experiment: which methods, on which tasks, trained how."""

    benchmark: Literal["sinusoid"] = "sinusoid"
    """Which experiment this config is for."""
    name: str = "sinusoid"
    """A label for the run."""
    seed: int = 0
    """Drives initialisation and the training task stream."""
    methods: list[Method] = field(default_factory=lambda: ["maml", "pretrained", "oracle"])
    """Learners trained side by side on the same meta-batches."""
    task: SinusoidTaskConfig = field(default_factory=SinusoidTaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    inner: InnerConfig = field(default_factory=InnerConfig)
    variant: VariantConfig = field(default_factory=VariantConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if not self.methods or len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"methods must be a non-empty list without repeats, got {self.methods}")


CONFIG = SinusoidConfig
"""The config dataclass the command line builds for ``benchmark: sinusoid``."""


def resolve_device(name: str, option: str = "train.device") -> torch.device:
    """``cpu``, ``cuda[:i]`` or ``auto`` -> a device; ``option`` names the setting in error messages."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"{option} {name!r} is not a torch device (use cpu, cuda, cuda:N or auto): {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{option} is {name!r} but CUDA is not available; use {option}=cpu")
    return device


def make_tasks(cfg: SinusoidConfig) -> SinusoidTasks:
    t = cfg.task
    return SinusoidTasks(t.amplitude_range, t.phase_range, t.x_range)


def build_learners(cfg: SinusoidConfig, device: torch.device) -> dict[str, SupervisedLearner]:
    """Create the configured learners, initialised from ``cfg.seed``."""
    seed_everything(cfg.seed)
    m = cfg.model
    learners: dict[str, SupervisedLearner] = {}
    for method in cfg.methods:
        in_features = 3 if method == "oracle" else 1  # the oracle also sees amplitude and phase
        net = MLP(in_features, 1, m.hidden_sizes, m.activation).to(device)
        learners[method] = make_supervised_learner(method, net, F.mse_loss, cfg.inner, cfg.variant, cfg.train.outer_lr,
                                                   finetune_lr=cfg.eval.finetune_lr, task_keys=("amplitude", "phase"))
    return learners


def train(cfg: SinusoidConfig, run_dir: Path, resume: bool, progress: bool = True) -> dict[str, float]:
    """Meta-train every configured method; checkpoints and TensorBoard logs go under ``run_dir``."""
    if cfg.train.num_threads is not None:
        torch.set_num_threads(cfg.train.num_threads)
    device = resolve_device(cfg.train.device)
    from rl_maml.distributed import context, shard_learners

    shard = context(cfg.train.meta_batch_size, device)  # None in one process
    learners = build_learners(cfg, device)
    shard_learners(learners, shard)
    tasks = make_tasks(cfg)

    def sample_batch(iteration: int):
        g = torch_generator(cfg.seed, "sinusoid-train", iteration)
        batch = tasks.sample(cfg.train.meta_batch_size, cfg.task.num_support, cfg.task.num_query, g).to(device)
        return batch if shard is None else batch.tasks_slice(shard.offset, shard.count)

    trainer = Trainer(
        run_dir, learners, sample_batch, cfg.train.num_iterations, cfg.train.checkpoint_every,
        cfg.train.keep_checkpoints, cfg.train.log_every, progress, shard=shard,
    )
    start = trainer.resume(str(device)) if resume else 0
    return trainer.run(start)


def evaluate(cfg: SinusoidConfig, run_dir: Path, checkpoint: Path, out: Path | None = None,
             progress: bool = True) -> dict:
    """Adapt each trained method to the seeded test tasks; write results under ``out`` (default
    ``run_dir/eval``). ``progress``: a progress bar over the methods (on stderr)."""
    out = run_dir / "eval" if out is None else Path(out)
    if cfg.train.num_threads is not None:
        torch.set_num_threads(cfg.train.num_threads)
    device = resolve_device(cfg.train.device)
    learners = build_learners(cfg, device)
    iteration = load_learners(checkpoint, learners, str(device))
    e = cfg.eval
    tasks = make_tasks(cfg)
    batch = tasks.sample(e.num_tasks, cfg.task.num_support, e.num_query,
                         torch_generator(e.seed, "sinusoid-test")).to(device)
    steps = list(range(e.max_steps + 1))
    methods = {}
    for name, learner in tqdm(learners.items(), desc="evaluate", unit="method", disable=not progress,
                              dynamic_ncols=True):
        mean, ci = mean_ci95(learner.evaluate(batch, e.max_steps).cpu().double(), dim=1)
        methods[name] = {"mean": mean.tolist(), "ci95": ci.tolist()}
    results = {
        "benchmark": "sinusoid",
        "metric": "mean squared error (mean over test tasks, 95% CI)",
        "num_test_tasks": e.num_tasks,
        "num_support": cfg.task.num_support,
        "num_query": e.num_query,
        "inner_lr": cfg.inner.inner_lr,
        "finetune_lr": e.finetune_lr,
        "test_seed": e.seed,
        "checkpoint_iteration": iteration,
        "steps": steps,
        "methods": methods,
    }
    title = (f"Sinusoid, K={cfg.task.num_support}: MSE on {e.num_tasks} test tasks after k steps "
             f"(checkpoint at iteration {iteration}; oracle needs no steps)")
    md = f"# {title}\n\n" + markdown_table(methods, steps, labels=LABELS)
    write_results(out, results, md)
    plot_sinusoid(cfg, learners, batch, results, out / "adaptation.png")
    return results


def plot_sinusoid(cfg: SinusoidConfig, learners: dict[str, SupervisedLearner], batch, results: dict,
                  path: Path) -> None:
    """MAML paper Figure 2 (one test task: before, after 1 and after 10 steps) and Figure 3 (MSE curve)."""
    adaptive = [n for n in learners if n != "oracle"]
    fig, axes = plots.plt.subplots(1, len(adaptive) + 1, figsize=(5 * (len(adaptive) + 1), 4))
    axes = list(axes) if hasattr(axes, "__len__") else [axes]
    task = {k: v[:1] for k, v in batch.tasks.items()}
    lo, hi = cfg.task.x_range
    grid = torch.linspace(lo, hi, 200, device=batch.support[0].device).view(1, -1, 1)
    truth = SinusoidTasks.function(task, grid)
    one = type(batch)((batch.support[0][:1], batch.support[1][:1]), (batch.query[0][:1], batch.query[1][:1]), task)
    shown_steps = [0, 1, cfg.eval.max_steps] if cfg.eval.max_steps > 1 else list(range(cfg.eval.max_steps + 1))
    for ax, name in zip(axes, adaptive):
        learner = learners[name]
        ax.plot(grid[0, :, 0].cpu(), truth[0, :, 0].cpu(), color="tab:red", label="ground truth")
        for s, params in enumerate(learner.trajectory(one, max(shown_steps))):
            if s in shown_steps:
                pred = learner.predict(params, grid, task, steps_taken=s)
                ax.plot(grid[0, :, 0].cpu(), pred[0, :, 0].cpu(), linestyle=":" if s == 0 else "--",
                        label="pre-update" if s == 0 else f"{s} grad step{'s' if s > 1 else ''}")
        ax.scatter(one.support[0][0, :, 0].cpu(), one.support[1][0, :, 0].cpu(), marker="^", color="k",
                   zorder=5, label=f"{cfg.task.num_support} points used for gradient")
        ax.set_title(f"{LABELS[name]}, K={cfg.task.num_support}")
        ax.legend(fontsize=7)
    plots.plot_adaptation_curves(axes[-1], results["methods"], results["steps"], "mean squared error", labels=LABELS)
    axes[-1].set_title(f"{results['num_test_tasks']} test tasks, 95% CI")
    plots.save(fig, path)
