"""The Python API: configure and meta-train, load a trained meta-policy, adapt it, act with it.

    import rl_maml

    cfg = rl_maml.load_config("navigation", ["train.num_iterations=50"])
    meta = rl_maml.meta_train(cfg, "runs/nav")            # or rl_maml.MetaPolicy.load("runs/nav")
    adapted = meta.adapt({"goal": [0.3, -0.2]}, num_steps=1, episodes=20)
    action, _ = adapted.predict(obs, deterministic=True)  # as stable-baselines3's predict
    adapted.save("adapted.pt")

:class:`MetaPolicy` adapts through the same routine as meta-training and ``rl-maml eval``
(:func:`rl_maml.rl.adaptation.adapt_policy`), on the env of the run's config (a built-in family
or ``env.id``) or on any batched task env passed in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rl_maml.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from rl_maml.config import ConfigError

__all__ = ["AdaptedPolicy", "MetaPolicy", "load_config", "meta_train"]


def load_config(config: str | Path | Mapping[str, Any], overrides: Sequence[str] = ()):
    """A resolved, validated config object from a preset name, a YAML file or a dict, with
    ``key=value`` overrides (as ``rl-maml train`` takes them)."""
    from rl_maml.config import apply_overrides, load_yaml
    from rl_maml.experiments.cli import build_config, resolve_config_path

    raw = dict(config) if isinstance(config, Mapping) else load_yaml(resolve_config_path(str(config)))
    return build_config(apply_overrides(raw, list(overrides)))[1]


def meta_train(config, run_dir: str | Path, resume: bool = False, progress: bool = True):
    """Meta-train ``config`` (from :func:`load_config`, or a config dataclass built by hand) in
    ``run_dir``, exactly as ``rl-maml train`` does (config.yaml, checkpoints, TensorBoard logs;
    ``resume`` continues from the newest checkpoint).

    Returns:
        The trained :class:`MetaPolicy` for a meta-RL config; the training's final logs for the
        supervised benchmarks.
    """
    from rl_maml.experiments.cli import start_run
    from rl_maml.runlock import RunLock

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir, "train"):  # one writer per run folder, as for rl-maml train
        module = start_run(config, run_dir, resume)
        logs = module.train(config, run_dir, resume=resume, progress=progress)
    if getattr(config, "benchmark", None) == "metarl":
        return MetaPolicy.load(run_dir)
    return logs


def _stack_tasks(tasks) -> tuple[dict[str, Tensor], int]:
    """One task (a mapping of values), a list of them, or a batch (a mapping of arrays with a leading
    axis, flagged by a list/array value for every key and a matching first dimension) -> tensors."""
    from rl_maml.envs.vector import stack_tasks

    if isinstance(tasks, Mapping):
        tasks = [tasks]
    elif not isinstance(tasks, Sequence) or isinstance(tasks, str):
        tasks = [tasks]
    stacked = stack_tasks(list(tasks))
    return {k: torch.as_tensor(v) for k, v in stacked.items()}, len(tasks)


class MetaPolicy:
    """A meta-trained Gaussian policy initialisation and the config it was trained with.

    Build it with :meth:`load` (a run folder or a checkpoint file) or get it from
    :func:`meta_train`. ``policy`` is the :class:`~rl_maml.rl.policy.GaussianMLPPolicy` (an
    ``nn.Module``); ``inner`` the inner loop it was meta-trained with.
    """

    def __init__(self, agent, config, iteration: int | None = None):
        self.agent = agent
        self.config = config
        self.iteration = iteration
        self.policy = agent.policy
        self.inner = agent.meta.inner
        self.device = next(self.policy.parameters()).device

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> MetaPolicy:
        """Load from a run folder (its newest checkpoint) or from a checkpoint file in a run folder's
        ``checkpoints/`` (the run's ``config.yaml`` says how to rebuild the policy)."""
        from rl_maml.config import load_yaml
        from rl_maml.experiments.cli import build_config
        from rl_maml.experiments.metarl import build_agent
        from rl_maml.training import load_learners

        path = Path(path)
        if path.is_dir():
            run_dir, checkpoint = path, latest_checkpoint(path / "checkpoints")
            if checkpoint is None:
                raise CheckpointError(f"{path / 'checkpoints'} holds no checkpoint: train the run first")
        elif path.is_file():
            checkpoint, run_dir = path, path.parent.parent
        else:
            raise CheckpointError(f"{path} is neither a run folder nor a checkpoint file")
        stored = run_dir / "config.yaml"
        if not stored.is_file():
            raise ConfigError(f"{stored} does not exist: MetaPolicy.load needs a run folder (config.yaml and "
                              "checkpoints/) or a checkpoint inside one")
        cfg = build_config(load_yaml(stored))[1]
        if getattr(cfg, "benchmark", None) != "metarl":
            raise ConfigError(f"{stored} is a {cfg.benchmark!r} run; MetaPolicy loads meta-RL runs")
        # One env slot is enough to rebuild the policy; adapt() builds the envs it needs.
        small = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, meta_batch_size=1, fast_batch_size=1))
        agent = build_agent(small, torch.device(device))
        iteration = load_learners(checkpoint, {"maml": agent}, str(device))
        return cls(agent, cfg, iteration)

    def make_env(self, num_envs: int):
        """The run's batched env (its family or ``env.id``) with ``num_envs`` episodes."""
        return self.config.env.make(num_envs, self.device)

    def sample_tasks(self, n: int, seed: int = 0) -> list[dict[str, Any]]:
        """``n`` tasks of the run's family, drawn with ``seed``."""
        from rl_maml.envs.vector import unstack_tasks

        return unstack_tasks(self.agent.env.sample_tasks(n, np.random.default_rng(seed)), scalar=False)

    def adapt(self, tasks, num_steps: int = 1, episodes: int | None = None, batch_steps: int | None = None,
              step_scales: Sequence[float] | None = None, seed: int = 0, env=None) -> AdaptedPolicy:
        """Adapt to ``tasks`` with ``num_steps`` policy-gradient steps, sampling fresh episodes before each.

        Args:
            tasks: one task (``{"velocity": 1.5}``) or a list of tasks.
            num_steps: inner steps.
            episodes: episodes per task and step (default: the config's ``train.fast_batch_size``).
            batch_steps: sample by env-step budget per task and step instead (default: the config's
                ``eval.batch_steps``).
            step_scales: per-step multipliers of the first step size (default: the config's
                ``eval.step_scales``; None there: the training's schedule).
            seed: drives the episodes' resets and action noise.
            env: a batched task env with ``len(tasks) * episodes`` envs (default: the run's).

        Returns:
            The :class:`AdaptedPolicy`, with the returns after 0..num_steps steps.
        """
        from rl_maml.rl.baseline import LinearFeatureBaseline
        from rl_maml.rl.evaluation import adapt_to_tasks, evaluation_inner

        cfg = self.config
        task_tensors, M = _stack_tasks(tasks)
        B = episodes if episodes is not None else cfg.train.fast_batch_size
        if B < 1 or num_steps < 0:
            raise ValueError(f"need episodes >= 1 and num_steps >= 0, got episodes={B}, num_steps={num_steps}")
        env = env if env is not None else self.make_env(M * B)
        if env.num_envs != M * B:
            raise ValueError(f"the env has {env.num_envs} envs; {M} tasks x {B} episodes need {M * B}")
        scales = cfg.eval.step_scales if step_scales is None else step_scales
        inner = evaluation_inner(self.inner, scales)
        adaptation = adapt_to_tasks(self.policy, env, task_tensors, inner, num_steps, B, LinearFeatureBaseline(),
                                    cfg.train.gamma, cfg.train.gae_lambda, seed,
                                    cfg.eval.batch_steps if batch_steps is None else batch_steps)
        return AdaptedPolicy(self.policy, adaptation.adapted, task_tensors, adaptation.returns(),
                             env.action_space, seed=seed)

    def predict(self, obs, deterministic: bool = True):
        """The meta-policy (before adaptation) acting: ``(action, None)`` as in stable-baselines3."""
        from rl_maml.functional import expand_params, params_of

        params = expand_params({k: v.detach() for k, v in params_of(self.policy).items()}, 1)
        space = getattr(self.agent.env, "action_space", None)
        return AdaptedPolicy(self.policy, params, {}, torch.zeros(1, 1), space).predict(obs, deterministic)


class AdaptedPolicy:
    """The policies adapted to each of M tasks.

    Attributes:
        params: the adapted parameters ``[M, ...]`` by name.
        tasks: the tasks, as tensors with a leading axis M.
        returns: mean undiscounted return per task after 0..S steps, ``[S + 1, M]`` (on the
            episodes the adaptation sampled).
    """

    def __init__(self, policy, params: Mapping[str, Tensor], tasks: Mapping[str, Tensor], returns: Tensor,
                 action_space=None, seed: int = 0):
        from rl_maml.functional import TaskBatchedModel

        self._template = policy
        self._model = TaskBatchedModel(policy)
        self.params = {k: v.detach() for k, v in params.items()}
        self.tasks = dict(tasks)
        self.returns = returns
        self.action_space = action_space
        self.num_tasks = next(iter(self.params.values())).shape[0]
        self._generator = torch.Generator(device=next(policy.parameters()).device).manual_seed(seed)

    def _task_index(self, task: int | None) -> int:
        if task is None:
            if self.num_tasks != 1:
                raise ValueError(f"adapted to {self.num_tasks} tasks: say which one acts (task=0..{self.num_tasks - 1})")
            return 0
        if not 0 <= task < self.num_tasks:
            raise IndexError(f"task must be in 0..{self.num_tasks - 1}, got {task}")
        return task

    def predict(self, obs, deterministic: bool = True, task: int | None = None):
        """Actions for observations ``[obs_dim]`` or ``[n, obs_dim]`` of task ``task``.

        Returns ``(action, None)`` as stable-baselines3's ``predict``: a NumPy array, sampled from
        the Gaussian unless ``deterministic`` (its mean), clipped to the action space's bounds when
        known."""
        m = self._task_index(task)
        device = next(iter(self.params.values())).device
        x = torch.as_tensor(np.asarray(obs), dtype=torch.float32, device=device)
        single = x.dim() == 1
        x = x.view(1, 1, -1) if single else x.unsqueeze(0)
        params = {k: v[m:m + 1] for k, v in self.params.items()}
        with torch.no_grad():
            mean, log_std = self._model(params, x)
            action = mean if deterministic else mean + torch.exp(log_std) * torch.randn(
                mean.shape, generator=self._generator, device=device)
        action = action[0].cpu().numpy()
        if self.action_space is not None and hasattr(self.action_space, "low"):
            action = np.clip(action, self.action_space.low, self.action_space.high)
        return (action[0] if single else action), None

    def policy(self, task: int | None = None):
        """Task ``task``'s adapted policy as a standalone :class:`~rl_maml.rl.policy.GaussianMLPPolicy`."""
        import copy

        m = self._task_index(task)
        module = copy.deepcopy(self._template)
        module.load_state_dict({k: v[m] for k, v in self.params.items()}, strict=False)
        return module

    def state_dict(self, task: int | None = None) -> dict[str, Tensor]:
        """Task ``task``'s adapted parameters (a ``GaussianMLPPolicy`` state dict)."""
        return self.policy(task).state_dict()

    def save(self, path: str | Path, task: int | None = None) -> None:
        """Write task ``task``'s adapted policy atomically (load it with :meth:`load_policy`)."""
        m = self._task_index(task)
        p = self._template
        save_checkpoint(Path(path), {
            "policy": self.state_dict(m), "obs_dim": p.obs_dim, "act_dim": p.act_dim,
            "hidden_sizes": list(p.hidden_sizes), "activation": p.activation,
            "task": {k: v[m].tolist() for k, v in self.tasks.items()},
        })

    @staticmethod
    def load_policy(path: str | Path):
        """A policy written by :meth:`save`, as a ``GaussianMLPPolicy``."""
        from rl_maml.rl.policy import GaussianMLPPolicy

        state = load_checkpoint(Path(path))
        policy = GaussianMLPPolicy(state["obs_dim"], state["act_dim"], state["hidden_sizes"], state["activation"])
        policy.load_state_dict(state["policy"])
        return policy
