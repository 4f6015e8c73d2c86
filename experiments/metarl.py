"""Meta-RL with MAML-TRPO (MAML paper, section 5.3 and Figures 4-5).

``rl-maml train navigation --run-dir runs/nav`` meta-trains a Gaussian policy's initialisation;
``rl-maml eval runs/nav`` adapts it to 40 held-out tasks (fixed seed) and reports the mean return
after 0..3 policy-gradient steps (alpha, then alpha/2; fresh episodes after every step), beside a
randomly initialised policy adapted the same way.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import gymnasium
import numpy as np
import torch
from tqdm.auto import tqdm
from rl_maml.agents.maml_trpo import AlphaMAMLTRPOAgent, MAMLTRPOAgent
from rl_maml.agents.rl_baselines import TaskAugmentedBatchedEnv
from rl_maml.envs import BatchedTaskEnv, make_batched
from rl_maml.envs.registration import FAMILIES

from rl_maml.checkpoint import load_checkpoint, save_checkpoint
from rl_maml.config import ConfigError, InnerConfig, VariantConfig
from rl_maml.functional import TaskBatchedModel, expand_params, params_of
from rl_maml.hypergradient import HypergradientStepSize
from rl_maml.inner import InnerLoop, make_inner_loop
from rl_maml.rl.baseline import LinearFeatureBaseline
from rl_maml.rl.episodes import episode_seeds, sample_episodes
from rl_maml.rl.evaluation import adaptation_returns, evaluation_inner
from rl_maml.rl.maml_trpo import TRPOSettings
from rl_maml.rl.policy import GaussianMLPPolicy
from rl_maml.seeding import numpy_generator, seed_everything, torch_generator
from rl_maml.stats import mean_ci95
from rl_maml.training import Trainer, load_learners

from . import plots
from .report import markdown_table, write_results


@dataclass
class EnvConfig:
    """The task family and its convention."""

    name: str = "Navigation2D"
    """Family: Navigation2D, HalfCheetahVel, HalfCheetahDir, AntVel, AntDir or AntGoal."""
    convention: Literal["maml", "gym"] = "gym"
    """maml: the MAML paper's horizon, time step and action scale; gym: pytorch-maml-rl's."""
    horizon: int | None = None
    """Override the convention's horizon."""
    action_scale: float | None = None
    """Override the convention's action scale (the env receives ``clip(action_scale * action)``)."""
    cost_on_clipped: bool | None = None
    """Locomotion only: override whether the control cost uses the clipped action (``maml``: true)."""
    goal_region: Literal["square", "disc"] | None = None
    """Navigation2D only: where an episode ends, within 0.01 of the goal in both coordinates
    (``square``, the default and the MAML paper's code) or in Euclidean distance (``disc``, what
    rl_maml's runs before the square used)."""
    id: str | None = None
    """Instead of a built-in family: any registered Gymnasium meta-env with the task API
    (``sample_tasks``, ``set_task``; see ``rl_maml.envs.vector``), e.g. ``MyMeta-v0``, or
    ``my_module:MyMeta-v0`` to import the module that registers it first. ``name``,
    ``convention``, ``action_scale``, ``cost_on_clipped`` and ``goal_region`` then do not apply;
    ``horizon`` defaults to the spec's ``max_episode_steps``."""
    forward_fraction: float | None = None
    """HalfCheetahDir and AntDir only: the probability of a forward task (direction +1) in the
    task distribution (training, and sampled test tasks), null: 1/2, as the MAML paper's final
    code. The paper's evaluated AntDir snapshot was trained with the code of the ICML deadline,
    whose goals U(0.1, 0.8) ran forward from 0.4: a forward fraction of 4/7 (docs/locomotion.md).
    1 (or 0) keeps one direction only: with ``inner.num_inner_steps=0`` that is plain TRPO on a
    single task, the MAML paper's oracle check (docs/locomotion.md)."""
    vectorization: Literal["sync", "async"] = "sync"
    """With ``id``: step the episodes in one process (sync; cheap envs) or one process per env
    (async; slow envs), through Gymnasium's vector envs."""
    make_kwargs: dict[str, Any] = field(default_factory=dict)
    """With ``id``: keyword arguments of ``gymnasium.make``."""
    backend: Literal["mujoco", "warp"] = "mujoco"
    """Locomotion families: the physics stepper. ``mujoco``: MuJoCo's threaded batch on the CPU
    cores (float64). ``warp``: MuJoCo Warp on the run's device (``train.device=cuda``; float32; all
    state stays on the GPU; needs ``pip install "rl_maml[warp]"``). See docs/environments.md."""
    nconmax: int | None = None
    """``backend=warp``: contacts allocated per world (default 32)."""
    njmax: int | None = None
    """``backend=warp``: constraint rows allocated per world (default ``4 * nconmax + 16``)."""

    def __post_init__(self) -> None:
        if self.backend not in ("mujoco", "warp"):
            raise ConfigError(f"env.backend must be 'mujoco' (MuJoCo on the CPU) or 'warp' (MuJoCo Warp), "
                              f"got {self.backend!r}")
        if self.backend == "warp" and (self.id is not None or self.name == "Navigation2D"):
            raise ConfigError(f"env.backend=warp steps the MuJoCo locomotion families; {self.label} "
                              f"{'is plain torch and runs on any device as it is' if self.id is None else 'is a user env'}"
                              "; leave env.backend=mujoco")
        for key in ("nconmax", "njmax"):
            value = getattr(self, key)
            if value is not None and self.backend != "warp":
                raise ConfigError(f"env.{key} sizes MuJoCo Warp's buffers; it applies with env.backend=warp only")
            if value is not None and value < 1:
                raise ConfigError(f"env.{key} must be >= 1 (or null for the default), got {value}")
        if self.id is not None:
            if not self.id.strip():
                raise ConfigError("env.id must name a registered Gymnasium env (or be null for env.name)")
            given = [k for k in ("action_scale", "cost_on_clipped", "goal_region", "forward_fraction")
                     if getattr(self, k) is not None]
            if given:
                raise ConfigError(f"env.{given[0]} applies to the built-in families, not to env.id={self.id!r}; "
                                  f"leave it null")
            if self.horizon is not None and self.horizon < 1:
                raise ConfigError(f"env.horizon must be >= 1 (or null for the spec's), got {self.horizon}")
            return
        if self.make_kwargs:
            raise ConfigError("env.make_kwargs applies with env.id only; set the built-in family's options "
                              "(env.convention, env.horizon, ...) instead")
        if self.name not in FAMILIES:
            raise ConfigError(f"env.name must be one of {sorted(FAMILIES)}, got {self.name!r}")
        if self.horizon is not None and self.horizon < 1:
            raise ConfigError(f"env.horizon must be >= 1 (or null for the convention's), got {self.horizon}")
        if self.action_scale is not None and not (math.isfinite(self.action_scale) and self.action_scale > 0):
            raise ConfigError(f"env.action_scale must be a finite number > 0 (or null for the convention's), "
                              f"got {self.action_scale}")
        if self.cost_on_clipped is not None and self.name == "Navigation2D":
            raise ConfigError("env.cost_on_clipped applies to the locomotion families (Navigation2D has no "
                              "control cost); leave it null")
        if self.forward_fraction is not None and self.name not in ("HalfCheetahDir", "AntDir"):
            raise ConfigError(f"env.forward_fraction applies to the direction families (HalfCheetahDir, AntDir), "
                              f"not {self.name}; leave it null")
        if self.forward_fraction is not None and not 0 <= self.forward_fraction <= 1:
            raise ConfigError(f"env.forward_fraction is a probability in [0, 1] (null: 1/2; 1: forward tasks only), "
                              f"got {self.forward_fraction}")
        if self.goal_region is not None and self.name != "Navigation2D":
            raise ConfigError(f"env.goal_region applies to Navigation2D only ({self.name} has no goal region); "
                              f"leave it null")

    @property
    def label(self) -> str:
        """The env's name in titles and results: the family, or the Gymnasium id."""
        return self.id if self.id is not None else self.name

    def kwargs(self) -> dict:
        """Keyword arguments of the single envs: the convention and the overrides given (with
        ``id``: ``make_kwargs``)."""
        if self.id is not None:
            return dict(self.make_kwargs)
        overrides = (("horizon", self.horizon), ("action_scale", self.action_scale),
                     ("cost_on_clipped", self.cost_on_clipped), ("goal_region", self.goal_region))
        return {"convention": self.convention} | {k: v for k, v in overrides if v is not None}

    def make(self, num_envs: int, device: torch.device) -> BatchedTaskEnv:
        """The batched env of ``num_envs`` episodes (a :class:`~rl_maml.envs.protocol.BatchedTaskEnv`)."""
        if self.id is not None:
            from rl_maml.envs.vector import VectorTaskEnv

            try:
                return VectorTaskEnv(self.id, num_envs, horizon=self.horizon, vectorization=self.vectorization,
                                     make_kwargs=self.make_kwargs, device=device)
            except gymnasium.error.Error as e:
                raise ConfigError(f"env.id={self.id!r}: {e}. Register the env with gymnasium.register, or name "
                                  f"the module that registers it: env.id=my_module:{self.id}") from None
        if self.backend == "warp":
            sizes = {k: v for k, v in (("nconmax", self.nconmax), ("njmax", self.njmax)) if v is not None}
            try:
                env = make_batched(self.name, num_envs, backend="warp", device=device, **self.kwargs(), **sizes)
            except ImportError as e:
                raise ConfigError(str(e)) from None
        else:
            env = make_batched(self.name, num_envs, device=device, **self.kwargs())
        if self.forward_fraction is not None:  # this env's task distribution only
            env.TASKS = env.TASKS.weighted("direction", {-1.0: 1 - self.forward_fraction, 1.0: self.forward_fraction})
        return env


@dataclass
class PolicyConfig:
    """The Gaussian MLP policy."""

    hidden_sizes: tuple[int, ...] = (100, 100)
    """Hidden widths (paper: 100, 100 with ReLU)."""
    activation: Literal["relu", "tanh"] = "relu"
    """Hidden activation (the common alternative: 64, 64 with tanh)."""
    init_std: float = 1.0
    """Initial action standard deviation."""
    output_init_scale: float = 1.0
    """Scale of the output layer's initial weights (0.01 starts the mean action near 0)."""
    init: Literal["torch", "xavier"] = "torch"
    """Initialisation of the mean network: PyTorch's default, or Glorot-uniform weights with zero
    biases as in the MAML paper's code (one inner step then moves the policy further: inner step
    sizes are not comparable between the two)."""

    def __post_init__(self) -> None:
        if self.init_std <= 0 or self.output_init_scale <= 0:
            raise ConfigError(f"policy.init_std and policy.output_init_scale must be > 0, got {self.init_std} and "
                              f"{self.output_init_scale}")


@dataclass
class RLTrainConfig:
    """The outer loop of meta-RL training."""

    num_iterations: int = 500
    """Meta-iterations (one TRPO step each)."""
    meta_batch_size: int = 40
    """Tasks per meta-batch (M)."""
    fast_batch_size: int = 20
    """Episodes per task and inner step (B); with ``batch_steps``, per sampling round."""
    batch_steps: int | None = None
    """Env steps per task and inner step (and for the validation episodes): episodes are sampled,
    ``fast_batch_size`` at a time, until each task holds at least this many steps, whole episodes
    only, as rllab's sampler did for the MAML paper (``fast_batch_size x max_path_length`` = 4000
    steps per task). Episodes that end early (a falling Ant) are then followed by more episodes
    instead of leaving the task with less data. null: exactly ``fast_batch_size`` episodes."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 1.0
    """GAE parameter (1.0: Monte-Carlo returns minus the baseline)."""
    checkpoint_every: int = 10
    """Write a checkpoint every this many iterations (and at the end)."""
    keep_checkpoints: int = 3
    """How many of the newest checkpoints to keep."""
    log_every: int = 1
    """Write TensorBoard scalars every this many iterations."""
    device: str = "cpu"
    """cpu, cuda or auto; MuJoCo physics always runs on the CPU."""
    num_threads: int | None = 1
    """torch threads during the rollouts; one leaves the cores to the MuJoCo threads (torch's threads spin)."""
    meta_step_threads: int = 0
    """torch threads for the batch computations while MuJoCo is idle: the TRPO meta-step, the inner
    updates and the baseline fits (0: all cores); ``rl-maml eval`` uses it for its fits and inner
    updates too."""

    def __post_init__(self) -> None:
        if min(self.num_iterations + 1, self.meta_batch_size, self.fast_batch_size, self.checkpoint_every,
               self.log_every, self.keep_checkpoints) < 1:
            raise ConfigError("train: sizes and intervals must be positive")
        if not (0 < self.gamma <= 1 and 0 <= self.gae_lambda <= 1):
            raise ConfigError("train.gamma must be in (0, 1] and train.gae_lambda in [0, 1]")
        if self.batch_steps is not None and self.batch_steps < 1:
            raise ConfigError(f"train.batch_steps must be >= 1 (or null for fast_batch_size episodes), "
                              f"got {self.batch_steps}")


@dataclass
class RLEvalConfig:
    """Test-time evaluation (MAML paper, Figures 4-5)."""

    num_tasks: int = 40
    """Held-out test tasks."""
    num_steps: int = 3
    """Report returns after 0..num_steps inner steps."""
    fast_batch_size: int = 20
    """Episodes per task and step (with ``batch_steps``: per sampling round)."""
    batch_steps: int | None = None
    """Env steps per task and step: episodes are sampled (``fast_batch_size`` at a time) until they
    hold at least this many steps, as the MAML paper's test scripts did (rllab's
    ``batch_size=4000``), so that once adapted episodes end early there are more of them.
    null: exactly ``fast_batch_size`` episodes. The oracle, which does not adapt, always uses
    ``fast_batch_size`` episodes."""
    step_scales: list[float] | None = None
    """null: adapt with the training's inner loop, step k with its step size for step k
    (``inner.inner_lr`` times ``inner.step_scales[k]``, the last entry repeating). A list: step k's
    step size is the training's first one times ``step_scales[k]`` (the last entry repeats), as the
    MAML paper's test scripts did: alpha, then alpha/2 (``[1.0, 0.5]``, the built-in presets'
    setting); AntDir's alpha, then alpha/100."""
    seed: int = 1234
    """Seed of the test tasks and episodes (shared by every run)."""
    test_tasks: Literal["sampled", "reference"] = "sampled"
    """sampled: ``num_tasks`` tasks drawn from the family's distribution with ``seed``. reference:
    the 40 test tasks of the MAML paper's test scripts (cbfinn/maml_rl ``maml_examples/test_maml_*.py``:
    NumPy's legacy generator seeded 1, AntDir 2), for the families those scripts cover
    (HalfCheetahVel, HalfCheetahDir, AntVel, AntDir). ``extra_draws`` then keeps these 40 tasks and
    draws new episodes."""
    baselines: list[Literal["random", "pretrained", "oracle"]] = field(
        default_factory=lambda: ["random", "pretrained", "oracle"])
    """Reference policies: random and pretrained are adapted like MAML; the oracle sees the task."""
    baseline_inner_lr: dict[str, float] = field(default_factory=dict)
    """The first step size with which the ``random`` and ``pretrained`` baselines adapt (later steps
    scaled by ``step_scales`` like MAML's); a baseline not named adapts with ``inner.inner_lr``. The
    MAML paper's test scripts gave each its own: the random init 1.0 (AntVel, AntDir), 0.1
    (HalfCheetahVel) or 0.5 (HalfCheetahDir), the pretrained policy 0.2 (HalfCheetahVel 0.02); the
    ``*_maml`` presets set those."""
    baseline_timesteps: int = 200_000
    """PPO (stable-baselines3) training steps of the pretrained and oracle policies."""
    extra_draws: int = 0
    """Further independent draws of ``num_tasks`` test tasks (seeds ``seed + 1``, ``seed + 2``, ...)
    on which MAML alone is evaluated again; with ``test_tasks: reference`` the same 40 tasks with
    new episodes (reset states and action noise) from those seeds. The table stays the fixed test
    set's; an added row and ``results.json["maml_draws"]`` give the mean over all draws, which tells
    how much of a difference to a paper's number is the test set's (or the episodes') luck."""

    def __post_init__(self) -> None:
        if min(self.num_tasks, self.fast_batch_size, self.baseline_timesteps) < 1 or self.num_steps < 0:
            raise ConfigError("eval: num_tasks, fast_batch_size and baseline_timesteps must be positive and "
                              "num_steps >= 0")
        if self.extra_draws < 0:
            raise ConfigError(f"eval.extra_draws must be >= 0, got {self.extra_draws}")
        if self.batch_steps is not None and self.batch_steps < 1:
            raise ConfigError(f"eval.batch_steps must be >= 1 (or null for fast_batch_size episodes), "
                              f"got {self.batch_steps}")
        if self.test_tasks == "reference" and self.num_tasks != 40:
            raise ConfigError(f"eval.test_tasks=reference is the reference scripts' 40 tasks; eval.num_tasks must "
                              f"be 40, got {self.num_tasks}")
        for name, lr in self.baseline_inner_lr.items():
            if name not in ("random", "pretrained"):
                raise ConfigError(f"eval.baseline_inner_lr: {name!r} is not an adapted baseline; the keys are "
                                  "'random' and 'pretrained'")
            if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0):
                raise ConfigError(f"eval.baseline_inner_lr.{name} must be a finite number >= 0, got {lr!r}")
        if self.step_scales is not None and (
                not self.step_scales or not all(math.isfinite(x) and x >= 0 for x in self.step_scales)):
            raise ConfigError(f"eval.step_scales must be null or a non-empty list of finite numbers >= 0, "
                              f"got {self.step_scales}")


@dataclass
class MetaRLConfig:
    """A meta-RL experiment: family, policy, inner loop, TRPO meta-step, training and evaluation."""

    benchmark: Literal["metarl"] = "metarl"
    """Which experiment this config is for."""
    name: str = "metarl"
    """A label for the run."""
    seed: int = 0
    """Drives initialisation, training tasks, episode resets and action noise."""
    method: Literal["maml", "alpha_maml"] = "maml"
    """maml: MAML-TRPO; alpha_maml: the inner step size adapts by hypergradient (variant.alpha_*)."""
    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    inner: InnerConfig = field(default_factory=lambda: InnerConfig(inner_lr=0.1))
    trpo: TRPOSettings = field(default_factory=TRPOSettings)
    variant: VariantConfig = field(default_factory=VariantConfig)
    train: RLTrainConfig = field(default_factory=RLTrainConfig)
    eval: RLEvalConfig = field(default_factory=RLEvalConfig)


CONFIG = MetaRLConfig


def _device(name: str) -> torch.device:
    from .sinusoid import resolve_device

    return resolve_device(name)


def make_policy(cfg: MetaRLConfig, env, device: torch.device) -> GaussianMLPPolicy:
    p = cfg.policy
    return GaussianMLPPolicy(env.obs_dim, env.act_dim, p.hidden_sizes, p.activation, p.init_std,
                             p.output_init_scale, init=p.init).to(device)


def build_agent(cfg: MetaRLConfig, device: torch.device, shard=None) -> MAMLTRPOAgent:
    """The agent of ``cfg``; ``shard``: this process's share of each meta-batch (torch.distributed)."""
    seed_everything(cfg.seed)
    t = cfg.train
    local_tasks = t.meta_batch_size if shard is None else shard.count
    env = cfg.env.make(local_tasks * t.fast_batch_size, device)
    policy = make_policy(cfg, env, device)
    inner, learned = make_inner_loop(cfg.inner, dict(policy.named_parameters()))
    if learned is not None:
        raise ConfigError("inner.step_size: learned step sizes are not supported by MAML-TRPO yet; use fixed")

    def alpha_maml() -> MAMLTRPOAgent:
        if shard is not None:
            raise ConfigError("method=alpha_maml does not split across processes yet; run it in one process")
        step_size = HypergradientStepSize(params_of(policy), cfg.inner.inner_lr, cfg.variant.alpha_granularity,
                                          cfg.variant.alpha_hyper_lr, step_scales=tuple(cfg.inner.step_scales))
        alpha_inner = InnerLoop(step_size, inner.num_steps, inner.first_order, inner.mask)
        return AlphaMAMLTRPOAgent(env, policy, alpha_inner, cfg.trpo, t.meta_batch_size, t.fast_batch_size, t.gamma,
                                  t.gae_lambda, cfg.seed, t.meta_step_threads, t.batch_steps)

    factories = {
        "maml": lambda: MAMLTRPOAgent(env, policy, inner, cfg.trpo, t.meta_batch_size, t.fast_batch_size, t.gamma,
                                      t.gae_lambda, cfg.seed, t.meta_step_threads, t.batch_steps, shard=shard),
        "alpha_maml": alpha_maml,
    }
    return factories[cfg.method]()


def train(cfg: MetaRLConfig, run_dir: Path, resume: bool, progress: bool = True) -> dict[str, float]:
    if cfg.train.num_threads is not None:
        torch.set_num_threads(cfg.train.num_threads)
    device = _device(cfg.train.device)
    from rl_maml.distributed import context

    shard = context(cfg.train.meta_batch_size, device)  # None in one process
    agent = build_agent(cfg, device, shard)
    if shard is not None:  # every rank starts from rank 0's parameters
        for p in agent.policy.parameters():
            torch.distributed.broadcast(p.data, src=0)
    trainer = Trainer(run_dir, {"maml": agent}, lambda it: it, cfg.train.num_iterations, cfg.train.checkpoint_every,
                      cfg.train.keep_checkpoints, cfg.train.log_every, progress,
                      progress_keys=("return_post", "return_pre", "ls_accepted"),
                      shard=shard)
    start = trainer.resume(str(device)) if resume else 0
    return trainer.run(start)


def evaluate(cfg: MetaRLConfig, run_dir: Path, checkpoint: Path, out: Path | None = None,
             progress: bool = True) -> dict:
    """Adapt to the test tasks; write results.json/.md and figures under ``out`` (default
    ``run_dir/eval``), and the PPO baselines' cache under ``out/baselines``. ``progress``: progress
    bars (on stderr) for the samplings and for PPO baselines being trained."""
    out = run_dir / "eval" if out is None else Path(out)
    if cfg.train.num_threads is not None:
        torch.set_num_threads(cfg.train.num_threads)
    device = _device(cfg.train.device)
    e = cfg.eval
    agent = build_agent(cfg, device)
    iteration = load_learners(checkpoint, {"maml": agent}, str(device))
    env = cfg.env.make(e.num_tasks * e.fast_batch_size, device)

    def test_tasks(seed: int) -> dict[str, torch.Tensor]:
        return {k: torch.as_tensor(v) for k, v in env.sample_tasks(e.num_tasks, numpy_generator(seed, "test-tasks")).items()}

    if e.test_tasks == "reference" and cfg.env.id is not None:
        raise ConfigError(f"eval.test_tasks=reference covers the built-in families; env.id={cfg.env.id!r} needs "
                          "eval.test_tasks=sampled")
    tasks = reference_test_tasks(cfg.env.name) if e.test_tasks == "reference" else test_tasks(e.seed)
    own = run_dir / "eval" if out != run_dir / "eval" else None  # with --out, the run's own cached PPO baselines
    to_train = [n for n in ("pretrained", "oracle") if n in e.baselines and not baseline_cache(out, n, e, own).is_file()]
    if to_train:
        print(f"rl-maml eval: training the {' and '.join(to_train)} baseline{'s' if len(to_train) > 1 else ''} with "
              f"PPO first ({e.baseline_timesteps} env steps each; cached in {out / 'baselines'})",
              file=sys.stderr)
    policies = {"maml": agent.policy}
    for name in e.baselines:
        if name == "random":  # a freshly initialised policy
            torch.manual_seed(e.seed)
            policies[name] = make_policy(cfg, env, device)
        elif name == "pretrained":
            policies[name] = reference_policy(cfg, out, name, device, own, progress)
    # (the PPO baselines train first, so that their progress bars come before the evaluation's)
    oracle = reference_policy(cfg, out, "oracle", device, own, progress) if "oracle" in e.baselines else None
    methods, episodes = {}, {}

    # MAML adapts with its training's inner loop (Alpha MAML's with its learned alphas), the other
    # policies with the same schedule at the configured inner_lr; eval.step_scales rescales it per step.
    # eval.baseline_inner_lr gives a baseline its own first step size, as the paper's test scripts did.
    named = dict(agent.policy.named_parameters())
    inners = {"maml": evaluation_inner(agent.meta.inner, e.step_scales)}
    baseline_lr = {}
    for name in ("random", "pretrained"):
        lr = e.baseline_inner_lr.get(name, cfg.inner.inner_lr)
        configured = make_inner_loop(dataclasses.replace(cfg.inner, inner_lr=float(lr)), named)[0]
        inners[name] = evaluation_inner(configured, e.step_scales)
        if name in policies:
            baseline_lr[name] = float(lr)

    # as in training: the rollouts with train.num_threads, fits and inner updates with meta_step_threads
    batch_threads = cfg.train.meta_step_threads or os.cpu_count() or 1

    # One bar over every sampling: each adapting policy and each extra draw samples after 0..num_steps
    # steps, the oracle once.
    samplings = (len(policies) + e.extra_draws) * (e.num_steps + 1) + ("oracle" in e.baselines)
    bar = tqdm(total=samplings, desc="evaluate", unit="sampling", disable=not progress, dynamic_ncols=True)

    def adapt(name: str, policy: GaussianMLPPolicy, tasks: dict[str, torch.Tensor], seed: int):
        bar.set_postfix_str(name)
        return adaptation_returns(policy, env, tasks, e.fast_batch_size, e.num_steps,
                                  inners[name], LinearFeatureBaseline(),
                                  cfg.train.gamma, cfg.train.gae_lambda, seed, steps_per_task=e.batch_steps,
                                  batch_threads=batch_threads, on_sample=lambda: bar.update(1))

    episode_counts = {}
    for name, policy in policies.items():
        returns, eps = adapt(name, policy, tasks, e.seed)
        mean, ci = mean_ci95(returns.double().cpu(), dim=1)
        methods[name] = {"mean": mean.tolist(), "ci95": ci.tolist(), "per_task": returns.cpu().tolist()}
        episodes[name] = eps
        episode_counts[name] = [round(ep.mask[0].sum(1).mean().item(), 1) for ep in eps]
    if "oracle" in e.baselines:  # no adaptation: the same returns at every step
        oracle_env = TaskAugmentedBatchedEnv(env)
        bar.set_postfix_str("oracle")
        seeds = episode_seeds(e.seed, "eval", 0, num_tasks=e.num_tasks, episodes_per_task=e.fast_batch_size)
        eps = sample_episodes(oracle_env, TaskBatchedModel(oracle), expand_params(params_of(oracle), e.num_tasks),
                              tasks, e.fast_batch_size, seeds, torch_generator(e.seed, "eval-actions", 0, device=device))
        bar.update(1)
        per_task = eps.returns().mean(1).double().cpu()
        mean, ci = mean_ci95(per_task)
        methods["oracle"] = {"mean": [mean.item()] * (e.num_steps + 1), "ci95": [ci.item()] * (e.num_steps + 1),
                             "per_task": [per_task.tolist()] * (e.num_steps + 1)}
    steps = list(range(e.num_steps + 1))
    eval_scales = list(e.step_scales) if e.step_scales is not None else list(cfg.inner.step_scales or [1.0])
    draws = None
    if e.extra_draws:
        seeds = [e.seed + d for d in range(e.extra_draws + 1)]
        per_draw = [methods["maml"]["mean"]] + [
            adapt("maml", agent.policy, tasks if e.test_tasks == "reference" else test_tasks(seed), seed)[0]
            .double().mean(1).tolist() for seed in seeds[1:]]
        per_draw_t = torch.tensor(per_draw, dtype=torch.float64)
        draws = {"seeds": seeds, "tasks": "reference (new episodes)" if e.test_tasks == "reference" else "sampled",
                 "mean_per_draw": per_draw, "mean": per_draw_t.mean(0).tolist(),
                 "sd_over_draws": per_draw_t.std(0).tolist()}
    bar.close()
    results = {
        "benchmark": "metarl", "env": cfg.env.label, "convention": None if cfg.env.id else cfg.env.convention,
        "metric": "mean undiscounted return per task (mean over test tasks, 95% CI)",
        "num_test_tasks": e.num_tasks, "episodes_per_task": e.fast_batch_size, "batch_steps": e.batch_steps,
        "mean_episodes_per_task": episode_counts, "inner_lr": cfg.inner.inner_lr,
        "step_sizes": step_sizes_text(eval_scales), "step_scales": eval_scales, "baseline_inner_lr": baseline_lr,
        "test_seed": e.seed,
        "test_tasks": e.test_tasks, "checkpoint_iteration": iteration, "device": str(device),
        "trained_inner_steps": cfg.inner.num_inner_steps, "steps": steps, "methods": methods,
    }
    if draws is not None:
        results["maml_draws"] = draws
    title = (f"{cfg.env.label}{'' if cfg.env.id else f' ({cfg.env.convention} convention)'}: return on {e.num_tasks} test tasks after k "
             f"policy-gradient steps (checkpoint at iteration {iteration})")
    labels = {"maml": maml_label(cfg.inner.num_inner_steps), "random": "random init",
              "pretrained": "pretrained (PPO, adapted)", "oracle": "oracle (PPO, task observed)"}
    table = markdown_table(methods, steps, digits=1, labels=labels)
    if draws is not None:
        what = "episode draws on the 40 reference tasks" if e.test_tasks == "reference" else \
            f"draws of {e.num_tasks} test tasks"
        row = f"{labels['maml']}, mean over {len(draws['seeds'])} {what} (± standard deviation over draws)"
        table += markdown_table({row: {"mean": draws["mean"], "ci95": draws["sd_over_draws"]}}, steps,
                                digits=1).split("\n", 2)[2]
    if e.batch_steps is None:
        sampling = f"{e.fast_batch_size} episodes per task and step"
    else:
        counts = " / ".join(f"{c:g}" for c in episode_counts["maml"])
        sampling = (f"episodes per task and step until they hold {e.batch_steps} env steps (MAML: {counts} "
                    f"episodes on average after 0 / 1 / ... steps)")
    alphas = "".join(f"; {labels[n].split(' (')[0]}: {lr:g}" for n, lr in baseline_lr.items()
                     if lr != cfg.inner.inner_lr)
    write_results(out, results, f"# {title}\n\nSampling: {sampling}; step size {step_sizes_text(eval_scales)} "
                                f"(alpha = {cfg.inner.inner_lr:g}{alphas}).\n\n" + table)
    fig, ax = plots.plt.subplots(figsize=(5, 4))
    plots.plot_adaptation_curves(ax, methods, steps, "average return", constant=("oracle",), labels=labels)
    navigation = cfg.env.id is None and cfg.env.name == "Navigation2D"
    ax.set_title(cfg.env.label if navigation or cfg.env.id else f"{cfg.env.name} ({cfg.env.convention})")
    plots.save(fig, out / "adaptation.png")
    if navigation:
        plot_navigation(episodes["maml"], tasks, out / "trajectories.png")
    from .paper_compare import comparable, load_paper, write_results_comparison

    paper = load_paper()
    if comparable(results, paper):  # the paper's own per-task returns exist for these 40 tasks
        write_results_comparison(results, "results.json", out, paper)
    else:  # an earlier evaluation's comparison no longer describes these results
        for name in ("paper_per_task.md", "paper_per_task.png"):
            (out / name).unlink(missing_ok=True)
    return results


# (legacy NumPy seed, range of np.random.uniform, threshold of the direction or None) of the MAML
# paper's test scripts; a direction task is -1 below the threshold, +1 above.
#
# AntDir's threshold is the one behind the paper's own numbers, not the final script's 1.5. The
# reference's history (cbfinn/maml_rl) shows the evaluated snapshot was trained by 13 April 2017
# with the code of the ICML deadline (commit 7fe27d7), whose direction envs drew goals from
# U(0.1, 0.8) and ran backward below 0.4; the final script draws the same 40 numbers from U(0, 3)
# (seed 2), so the old split is u < 3/7, i.e. a goal below 9/7 here. That split, 20 forward and 20
# backward, is the one in the paper's pickled per-task returns (icml/icml_antdirec_results_maml.pkl:
# the five tasks with goals in [9/7, 1.5) score and start as forward tasks); 1.5 would give 15
# forward. For HalfCheetahDir both splits give the same 40 tasks.
REFERENCE_TEST_TASKS = {
    "HalfCheetahVel": (1, 2.0, None),
    "HalfCheetahDir": (1, 2.0, 1.0),
    "AntVel": (1, 3.0, None),
    "AntDir": (2, 3.0, 9 / 7),
}


def reference_test_tasks(family: str) -> dict[str, torch.Tensor]:
    """The 40 test tasks of the MAML paper's test script for ``family`` (``eval.test_tasks=reference``)."""
    if family not in REFERENCE_TEST_TASKS:
        raise ConfigError(f"eval.test_tasks=reference: the MAML paper's test scripts cover "
                          f"{sorted(REFERENCE_TEST_TASKS)}, not {family}; use eval.test_tasks=sampled")
    seed, high, threshold = REFERENCE_TEST_TASKS[family]
    goals = np.random.RandomState(seed).uniform(0.0, high, size=(40,))
    if threshold is None:
        return {"velocity": torch.as_tensor(goals)}
    return {"direction": torch.as_tensor(np.where(goals < threshold, -1.0, 1.0))}


def maml_label(trained_inner_steps: int) -> str:
    """The evaluation's name for the trained policy: "MAML", or what it is when training took no inner step
    (``inner.num_inner_steps=0``: the meta-step was plain TRPO on the tasks' returns)."""
    return "MAML" if trained_inner_steps > 0 else "trained policy (no inner step in training: TRPO)"


def step_sizes_text(scales: list[float]) -> str:
    """``[1.0, 0.5]`` -> ``"alpha, then alpha/2"``."""
    def one(x: float) -> str:
        return "alpha" if x == 1 else f"alpha/{1 / x:g}" if x > 0 and (1 / x).is_integer() else f"{x:g} alpha"

    return one(scales[0]) + (f", then {one(scales[1])}" if len(scales) > 1 else "") + \
        ("".join(f", {one(x)}" for x in scales[2:]))


def baseline_cache(eval_dir: Path, name: str, e: RLEvalConfig, also: Path | None = None) -> Path:
    """Where the trained ``name`` baseline's weights are cached: under ``eval_dir``, or, when only
    there, under ``also`` (the run's own ``eval/`` when ``rl-maml eval --out`` writes elsewhere;
    read, never written)."""
    path = eval_dir / "baselines" / f"{name}_{e.baseline_timesteps}.pt"
    if not path.is_file() and also is not None and (also / "baselines" / path.name).is_file():
        return also / "baselines" / path.name
    return path


def reference_policy(cfg: MetaRLConfig, eval_dir: Path, name: str, device: torch.device,
                     also: Path | None = None, progress: bool = True) -> GaussianMLPPolicy:
    """The pretrained or oracle policy: trained with PPO once, then cached as weights under
    ``eval_dir`` (an existing cache under ``also`` is used as well)."""
    from rl_maml.agents.rl_baselines import to_gaussian_policy, train_ppo

    p, e = cfg.policy, cfg.eval
    path = baseline_cache(eval_dir, name, e, also)
    env_kwargs = cfg.env.kwargs()
    if path.is_file():
        state = load_checkpoint(path)
        policy = GaussianMLPPolicy(state["obs_dim"], state["act_dim"], p.hidden_sizes, p.activation)
        # Caches written before the architecture (or the env arguments) were stored carry none; their
        # tensor shapes are still checked.
        cached = (list(state.get("hidden_sizes", p.hidden_sizes)), state.get("activation", p.activation))
        mismatch = f"it records hidden_sizes={cached[0]}, activation={cached[1]}"
        if state.get("env", env_kwargs) != env_kwargs:
            raise ConfigError(
                f"the cached {name} baseline {path} was trained on another environment than this run's "
                f"(env arguments {env_kwargs}): it records {state['env']}. Delete {path} to train it again "
                f"for this environment.")
        if cached == (list(p.hidden_sizes), p.activation):
            try:
                policy.load_state_dict(state["policy"])
                return policy.to(device)
            except RuntimeError:
                mismatch = "its tensor shapes differ"
        raise ConfigError(
            f"the cached {name} baseline {path} was trained for another policy than this run's "
            f"(policy.hidden_sizes={list(p.hidden_sizes)}, policy.activation={p.activation}): {mismatch}. "
            f"Delete {path} to train it again for this policy.")
    model = train_ppo(cfg.env.label, env_kwargs, p.hidden_sizes, p.activation,
                      e.baseline_timesteps, e.seed, append_task=name == "oracle",
                      progress=f"PPO {name} baseline" if progress else None)
    policy = to_gaussian_policy(model, p.hidden_sizes, p.activation)
    save_checkpoint(path, {"policy": policy.state_dict(), "obs_dim": policy.obs_dim, "act_dim": policy.act_dim,
                           "hidden_sizes": list(p.hidden_sizes), "activation": p.activation, "env": env_kwargs})
    return policy.to(device)


def plot_navigation(episodes, tasks, path: Path, num_tasks: int = 4) -> None:
    """Trajectories of the first episode of a few test tasks, before and after adaptation (paper Figure 4)."""
    num_tasks = min(num_tasks, len(tasks["goal"]))
    fig, axes = plots.plt.subplots(1, num_tasks, figsize=(3.2 * num_tasks, 3.2))
    for m, ax in enumerate(np.atleast_1d(axes)):
        goal = tasks["goal"][m].cpu().numpy()
        for s, eps in enumerate(episodes):
            steps = int(eps.mask[:, m, 0].sum().item())
            xy = eps.obs[:steps, m, 0].cpu().numpy()
            ax.plot(xy[:, 0], xy[:, 1], label="pre-update" if s == 0 else f"{s} step{'s' if s > 1 else ''}")
        ax.scatter([goal[0]], [goal[1]], marker="*", s=150, color="k", label="goal", zorder=5)
        ax.set_xlim(-0.6, 0.6)
        ax.set_ylim(-0.6, 0.6)
        ax.set_aspect("equal")
        ax.set_title(f"test task {m}")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    plots.save(fig, path)
