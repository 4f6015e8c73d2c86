"""Few-shot image classification (MAML paper, section 5.2): Omniglot and MiniImageNet.

``rl-maml train omniglot_5w1s --run-dir runs/omniglot`` meta-trains MAML (or first-order MAML
with ``inner.first_order=true``) on the conv-4 network, validating on held-out characters every
``eval.val_every`` iterations (the learning curve); ``rl-maml eval runs/omniglot`` adapts to 600
seeded test tasks and reports the accuracy (95% confidence interval) after 0 to 10 inner steps.

The data root comes from ``data.root`` or ``$RL_MAML_DATA/<dataset>``; decoded images are cached
under ``data.cache_dir`` (default ``$RL_MAML_CACHE`` or ``~/.cache/rl_maml``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rl_maml.agents import SupervisedLearner, make_supervised_learner
from rl_maml.config import ConfigError, InnerConfig, MAMLPlusPlusConfig, TrainConfig, VariantConfig
from rl_maml.nn import Conv4
from rl_maml.seeding import seed_everything, torch_generator
from rl_maml.stats import mean_ci95
from rl_maml.tasks.fewshot import DatasetError, FewShotTasks, accuracy
from rl_maml.training import Trainer, load_learners

from . import plots
from .report import markdown_table, write_results
from .sinusoid import resolve_device


@dataclass
class DataConfig:
    """Where the images are and how they are split."""

    dataset: Literal["omniglot", "miniimagenet"] = "omniglot"
    """Which data set."""
    root: str | None = None
    """Folder with the data set's files; null: $RL_MAML_DATA/<dataset>."""
    cache_dir: str | None = None
    """Folder for the decoded-image cache; null: $RL_MAML_CACHE or ~/.cache/rl_maml."""
    split_seed: int = 1623
    """Omniglot: seed of the character split (1100 train / 100 validation / 423 test)."""


@dataclass
class FewShotTaskConfig:
    """The N-way K-shot task shape during meta-training."""

    ways: int = 5
    """N: classes per task."""
    shots: int = 1
    """K: support images per class."""
    num_query: int = 1
    """Query images per class scoring the adapted network in meta-training (the MAML reference
    code uses K for Omniglot and 15 for MiniImageNet)."""

    def __post_init__(self) -> None:
        if min(self.ways, self.shots, self.num_query) < 1:
            raise ConfigError(f"task.ways, task.shots and task.num_query must be >= 1, got "
                              f"{self.ways}, {self.shots}, {self.num_query}")


@dataclass
class ConvModelConfig:
    """The conv-4 network."""

    hidden: int | None = None
    """Filters per convolution; null: 64 for Omniglot, 32 for MiniImageNet (the paper's)."""
    batch_norm: Literal["batch", "running"] = "batch"
    """batch: normalise every batch with its own statistics (the paper); running: track running
    statistics in meta-training and use them at test time."""
    per_step_bn: bool = False
    """MAML++: batch-norm weights and biases (and running statistics) per inner step; rows past
    inner.num_inner_steps (more steps at test time) reuse the last."""


@dataclass
class FewShotEvalConfig:
    """Validation during training and the final test evaluation."""

    num_tasks: int = 600
    """Test tasks (drawn from the test classes)."""
    max_steps: int = 10
    """Report accuracy after 0..max_steps inner steps."""
    num_query: int = 15
    """Query images per class of a test task. The MAML reference code tested with one (its
    Omniglot figures); with batch norm on batch statistics the count changes the accuracy
    (docs/results/omniglot.md: 1.1 points for 5-way 1-shot), so compare like with like."""
    seed: int = 2017
    """Seed of the test tasks."""
    chunk_size: int = 100
    """Test tasks adapted at once (bounds memory)."""
    val_every: int = 500
    """Validate every this many meta-iterations (0: never); the learning curve."""
    val_tasks: int = 200
    """Validation tasks (drawn from the validation classes with a fixed seed)."""
    keep_best: bool = False
    """Keep the checkpoint with the best validation accuracy (after the most inner steps
    validated) as checkpoints/best.pt, described by checkpoints/best.json: model selection on the
    validation classes. Evaluate it with rl-maml eval RUN --checkpoint RUN/checkpoints/best.pt."""
    score_steps: list[int] | None = None
    """Score the test tasks only after these step counts, e.g. [0, 1, 5, 10] (null: after every one
    of 0..max_steps). A query pass costs about as much as an inner step, so scoring only after
    max_steps takes about a third of the time (15 query images per class)."""

    def __post_init__(self) -> None:
        if self.score_steps is not None and (not self.score_steps or
                                             any(not 0 <= k <= self.max_steps for k in self.score_steps)):
            raise ConfigError(f"eval.score_steps must be null or a non-empty list of step counts in "
                              f"0..eval.max_steps={self.max_steps}, got {self.score_steps}")
        if self.num_tasks < 2 or self.max_steps < 0 or self.num_query < 1 or self.chunk_size < 1:
            raise ConfigError("eval.num_tasks must be >= 2, eval.max_steps >= 0, eval.num_query and "
                              "eval.chunk_size >= 1")
        if self.val_every < 0 or self.val_tasks < 1:
            raise ConfigError("eval.val_every must be >= 0 and eval.val_tasks >= 1")
        if self.keep_best and not self.val_every:
            raise ConfigError("eval.keep_best selects on the validation curve, which eval.val_every=0 turns off; "
                              "give eval.val_every > 0 (e.g. 500) or eval.keep_best=false")


@dataclass
class FewShotConfig:
    """A few-shot classification experiment."""

    benchmark: Literal["fewshot"] = "fewshot"
    """Which experiment this config is for."""
    name: str = "omniglot-5w1s"
    """A label for the run."""
    seed: int = 0
    """Drives initialisation and the training task stream."""
    method: Literal["maml", "alpha_maml", "lambda_maml"] = "maml"
    """The meta-learner (first-order MAML: method maml with inner.first_order=true)."""
    data: DataConfig = field(default_factory=DataConfig)
    task: FewShotTaskConfig = field(default_factory=FewShotTaskConfig)
    model: ConvModelConfig = field(default_factory=ConvModelConfig)
    inner: InnerConfig = field(default_factory=lambda: InnerConfig(inner_lr=0.4))
    variant: VariantConfig = field(default_factory=VariantConfig)
    mamlpp: MAMLPlusPlusConfig = field(default_factory=MAMLPlusPlusConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(meta_batch_size=32, num_threads=None))
    eval: FewShotEvalConfig = field(default_factory=FewShotEvalConfig)


CONFIG = FewShotConfig


@dataclass
class Dataset:
    """The three class pools of a data set and how its images become network inputs."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    channels: int
    image_size: int
    rotate: bool
    invert: bool
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def tasks(self, split: str, ways: int, shots: int, query: int) -> FewShotTasks:
        images = getattr(self, split)
        try:
            return FewShotTasks(images, ways, shots, query, self.rotate, self.invert, self.mean, self.std)
        except ValueError as e:
            raise ConfigError(f"{split} split: {e}") from None


def image_shape(dataset: str) -> tuple[int, int]:
    """``(channels, size)`` of the images of data set ``dataset`` as the loaders return them."""
    if dataset == "omniglot":
        from rl_maml.tasks.omniglot import IMAGE_SIZE

        return 1, IMAGE_SIZE
    from rl_maml.tasks.miniimagenet import IMAGE_SIZE

    return 3, IMAGE_SIZE


def load_dataset(cfg: DataConfig) -> Dataset:
    """Load (from the cache when possible) and split the configured data set."""
    channels, size = image_shape(cfg.dataset)
    if cfg.dataset == "omniglot":
        from rl_maml.tasks.omniglot import load_omniglot, omniglot_splits

        data = load_omniglot(cfg.root, cfg.cache_dir)
        s = omniglot_splits(data.names, cfg.split_seed)
        idx = {k: torch.from_numpy(v) for k, v in vars(s).items()}
        return Dataset(data.images[idx["train"]], data.images[idx["val"]], data.images[idx["test"]],
                       channels=channels, image_size=size, rotate=True, invert=True)
    from rl_maml.tasks.miniimagenet import load_miniimagenet

    splits = load_miniimagenet(cfg.root, cfg.cache_dir)
    return Dataset(splits["train"], splits["val"], splits["test"], channels=channels, image_size=size,
                   rotate=False, invert=False)


def build_learner(cfg: FewShotConfig, device: torch.device, dataset: Dataset) -> SupervisedLearner:
    if cfg.model.per_step_bn and cfg.method != "maml":
        raise ConfigError(f"model.per_step_bn applies to method maml only (whose objective scores the query with "
                          f"the last step's batch norm), not {cfg.method!r}")
    seed_everything(cfg.seed)
    omniglot = cfg.data.dataset == "omniglot"
    hidden = cfg.model.hidden or (64 if omniglot else 32)
    net = Conv4(dataset.channels, cfg.task.ways, hidden=hidden, image_size=dataset.image_size,
                downsample="stride" if omniglot else "maxpool", running_stats=cfg.model.batch_norm == "running",
                per_step_bn=max(cfg.inner.num_inner_steps, 1) if cfg.model.per_step_bn else 0)
    return make_supervised_learner(cfg.method, net.to(device), F.cross_entropy, cfg.inner, cfg.variant,
                                   cfg.train.outer_lr, mamlpp=cfg.mamlpp, num_iterations=cfg.train.num_iterations)


SAMPLE_BLOCK = 100
"""Evaluation tasks are drawn in blocks of this many, so the test set does not depend on
``eval.chunk_size`` (which only bounds how many are adapted at once)."""


def evaluate_tasks(learner: SupervisedLearner, sampler: FewShotTasks, num_tasks: int, num_steps: int, seed: int,
                   key: str, chunk_size: int, device: torch.device, score_steps: list[int] | None = None,
                   progress: bool = False, desc: str = "evaluate", shard=None) -> torch.Tensor:
    """Accuracy ``[len(score_steps), num_tasks]`` (default: after each of 0..num_steps steps) on
    tasks drawn from ``sampler`` with a fixed seed, adapted ``chunk_size`` at a time (first order:
    no meta-gradient is needed).

    ``shard``: this rank's :class:`~rl_maml.distributed.TaskShard` under torch.distributed. Every
    rank draws the same tasks and adapts every ``world_size``-th chunk of them; every rank returns
    all the accuracies (a task's accuracy does not depend on which rank adapted it)."""
    g = torch_generator(seed, key)
    rows = num_steps + 1 if score_steps is None else len(score_steps)
    out, index = [], 0
    with tqdm(total=num_tasks, desc=desc, unit="task", disable=not progress, dynamic_ncols=True) as bar:
        for block_start in range(0, num_tasks, SAMPLE_BLOCK):
            block = sampler.sample(min(SAMPLE_BLOCK, num_tasks - block_start), g)
            for start in range(0, block.num_tasks, chunk_size):
                n = min(chunk_size, block.num_tasks - start)
                if shard is not None and index % shard.world_size != shard.rank:  # another rank's chunk
                    out.append(torch.zeros(rows, n))
                else:
                    chunk = block if n == block.num_tasks else block.tasks_slice(start, n)
                    out.append(learner.evaluate(chunk.to(device), num_steps, score=accuracy,
                                                score_steps=score_steps).cpu())
                index += 1
                bar.update(n)
    accuracies = torch.cat(out, dim=1)
    return accuracies if shard is None else shard.sum_tensor(accuracies)  # each task's column is nonzero on one rank


def train(cfg: FewShotConfig, run_dir: Path, resume: bool, progress: bool = True) -> dict[str, float]:
    if cfg.train.num_threads is not None:
        torch.set_num_threads(cfg.train.num_threads)
    device = resolve_device(cfg.train.device)
    dataset = _load(cfg)
    from rl_maml.distributed import context, shard_learners

    shard = context(cfg.train.meta_batch_size, device)  # None in one process
    learner = build_learner(cfg, device, dataset)
    shard_learners({cfg.method: learner}, shard)
    t = cfg.task
    train_tasks = dataset.tasks("train", t.ways, t.shots, t.num_query)
    val_tasks = dataset.tasks("val", t.ways, t.shots, cfg.eval.num_query)
    val_steps = max(cfg.inner.num_inner_steps, 1)

    def sample_batch(iteration: int):
        batch = train_tasks.sample(cfg.train.meta_batch_size, torch_generator(cfg.seed, "fewshot-train", iteration))
        return (batch if shard is None else batch.tasks_slice(shard.offset, shard.count)).to(device)

    def validate(iteration: int) -> dict[str, float]:
        acc = evaluate_tasks(learner, val_tasks, cfg.eval.val_tasks, val_steps, cfg.eval.seed, "fewshot-val",
                             cfg.eval.chunk_size, device, shard=shard).mean(dim=1)
        return {f"val/accuracy_after_{k}_steps": acc[k].item() for k in range(val_steps + 1)}

    trainer = Trainer(run_dir, {cfg.method: learner}, sample_batch, cfg.train.num_iterations, cfg.train.checkpoint_every,
                      cfg.train.keep_checkpoints, cfg.train.log_every, progress, validate=validate,
                      validate_every=cfg.eval.val_every, shard=shard,
                      keep_best=f"val/accuracy_after_{val_steps}_steps" if cfg.eval.keep_best else None)
    start = trainer.resume(str(device)) if resume else 0
    return trainer.run(start)


def _load(cfg: FewShotConfig) -> Dataset:
    try:
        return load_dataset(cfg.data)
    except DatasetError as e:
        raise ConfigError(str(e)) from None


def evaluate(cfg: FewShotConfig, run_dir: Path, checkpoint: Path, progress: bool = True,
             out: Path | None = None) -> dict:
    """Adapt to the seeded test tasks; write results.json/.md and plots under ``out`` (default
    ``run_dir/eval``)."""
    out = run_dir / "eval" if out is None else Path(out)
    if cfg.train.num_threads is not None:
        torch.set_num_threads(cfg.train.num_threads)
    device = resolve_device(cfg.train.device)
    dataset = _load(cfg)
    learner = build_learner(cfg, device, dataset)
    iteration = load_learners(checkpoint, {cfg.method: learner}, str(device))
    e, t = cfg.eval, cfg.task
    test_tasks = dataset.tasks("test", t.ways, t.shots, e.num_query)
    steps = list(range(e.max_steps + 1)) if e.score_steps is None else sorted(set(e.score_steps))
    acc = 100.0 * evaluate_tasks(learner, test_tasks, e.num_tasks, e.max_steps, e.seed, "fewshot-test",
                                 e.chunk_size, device, score_steps=steps, progress=progress,
                                 desc="test tasks").double()
    mean, ci = mean_ci95(acc, dim=1)
    method = "fomaml" if cfg.method == "maml" and cfg.inner.first_order else cfg.method
    methods = {method: {"mean": mean.tolist(), "ci95": ci.tolist()}}
    results = {
        "benchmark": "fewshot",
        "dataset": cfg.data.dataset,
        "metric": "accuracy in % (mean over test tasks, 95% CI)",
        "ways": t.ways,
        "shots": t.shots,
        "num_test_tasks": e.num_tasks,
        "query_per_class": e.num_query,
        "inner_lr": cfg.inner.inner_lr,
        "train_inner_steps": cfg.inner.num_inner_steps,
        "test_seed": e.seed,
        "checkpoint_iteration": iteration,
        "steps": steps,
        "methods": methods,
    }
    labels = {"maml": "MAML", "fomaml": "first-order MAML", "alpha_maml": "Alpha MAML", "lambda_maml": "Lambda MAML"}
    query = f"{e.num_query} query image{'s' if e.num_query != 1 else ''} per class"
    title = (f"{cfg.data.dataset} {t.ways}-way {t.shots}-shot: accuracy (%) on {e.num_tasks} test tasks ({query}) "
             f"after k steps (checkpoint at iteration {iteration})")
    write_results(out, results, f"# {title}\n\n" + markdown_table(methods, steps, digits=2, labels=labels))
    plot_fewshot(results, run_dir / "validation.jsonl", out / "accuracy.png", labels)
    return results


def read_curve(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def plot_fewshot(results: dict, curve_path: Path, path: Path, labels: dict[str, str]) -> None:
    """Test accuracy against inner steps, and the validation learning curve of meta-training."""
    curve = read_curve(curve_path)
    fig, axes = plots.plt.subplots(1, 2 if curve else 1, figsize=(11 if curve else 5.5, 4))
    axes = list(axes) if curve else [axes]
    plots.plot_adaptation_curves(axes[0], results["methods"], results["steps"], "test accuracy (%)", labels=labels)
    axes[0].set_title(f"{results['num_test_tasks']} test tasks, 95% CI")
    if curve:
        keys = sorted({k for row in curve for k in row if k.startswith("val/accuracy_after_")})
        for k in keys:
            xs = [r["iteration"] for r in curve if k in r]
            n = int(k.removeprefix("val/accuracy_after_").split("_")[0])
            axes[1].plot(xs, [100 * r[k] for r in curve if k in r], marker=".",
                         label=f"after {n} step{'s' if n != 1 else ''}")
        axes[1].set_xlabel("meta-iteration")
        axes[1].set_ylabel("validation accuracy (%)")
        axes[1].set_title("learning curve (validation classes)")
        axes[1].grid(alpha=0.3)
        axes[1].legend()
    plots.save(fig, path)
