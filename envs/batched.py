"""Batched MuJoCo stepping: N = M tasks x B episodes advanced by one call.

:class:`BatchedLocomotion` holds N copies of a family's model in a ``mujoco.batch.Batch``, whose
threaded ``step`` runs ``mj_step`` for every live simulation on all CPU cores (results are
bit-identical to single ``mj_step`` calls). Observations, rewards and terminations come from the
same functions as the single envs in :mod:`rl_maml.envs.locomotion`, and per-episode reset noise
from the same generator (``gymnasium.utils.seeding.np_random(seed)``), so a batched episode and a
single-env episode with the same seed, task and actions agree step by step (tested).

Episodes that end early (the Ant falling) are masked, not reset: they are no longer simulated,
their observation stays, their reward is 0. (Sampling by env-step budget,
``train.batch_steps``, starts further episodes in later rounds instead; see
:func:`rl_maml.rl.episodes.sample_step_budget`.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import mujoco
import numpy as np
import torch
from gymnasium.utils import seeding
from mujoco import batch as mjbatch
from rl_maml.envs.base import check_batched_actions
from rl_maml.envs.locomotion import LocomotionEnv, SimState, read_state, step_reward
from torch import Tensor


class LocomotionBatchBase:
    """What the batched locomotion steppers share: the single env they describe, the task
    sampler, and the checks of ``reset``'s tasks and seeds."""

    def _describe(self, env_cls: type[LocomotionEnv], num_envs: int, **env_kwargs) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.proto = env_cls(**env_kwargs)
        self.env_cls, self.TASKS, self.robot = env_cls, env_cls.TASKS, env_cls.ROBOT
        self.num_envs = num_envs
        self.horizon = self.proto.horizon
        self.dt = self.proto.dt
        self.frame_skip = self.proto.frame_skip
        self.reference = self.proto.convention.reference
        self.obs_dim = self.proto.obs_dim
        self.act_dim = self.proto.action_space.shape[0]
        self.observation_space, self.action_space = self.proto.observation_space, self.proto.action_space
        self._torso = self.proto._torso

    def sample_tasks(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``n`` tasks of the family (a dict of arrays with leading axis ``n``) drawn from ``rng``."""
        return self.TASKS.sample(n, rng)

    def _reset_args(self, tasks: Mapping, seeds: Sequence[int] | int) -> tuple[dict[str, np.ndarray], list[int]]:
        """``reset``'s tasks checked (one per env) and its seeds as one int per episode."""
        checked = self.TASKS.validate_batch(tasks)
        n = len(next(iter(checked.values())))
        if n != self.num_envs:
            raise ValueError(f"expected {self.num_envs} tasks (one per env), got {n}")
        seeds = [seeds + i for i in range(n)] if isinstance(seeds, (int, np.integer)) else list(seeds)
        if len(seeds) != n:
            raise ValueError(f"expected {n} seeds, got {len(seeds)}")
        return checked, seeds


class BatchedLocomotion(LocomotionBatchBase):
    """N episodes of one locomotion family, stepped together.

    Args:
        env_cls: the single-env class (e.g. ``HalfCheetahVelEnv``); gives model, task space,
            observation and reward.
        num_envs: N.
        convention, horizon, action_scale, cost_on_clipped, reset_noise_scale: as for the single env.
        nthread: MuJoCo worker threads (0: all cores).
        dtype, device: of the returned tensors (physics runs on the CPU in float64).
    """

    def __init__(self, env_cls: type[LocomotionEnv], num_envs: int, convention: str = "gym",
                 horizon: int | None = None, action_scale: float | None = None, cost_on_clipped: bool | None = None,
                 reset_noise_scale: float = 0.1, nthread: int = 0, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu"):
        self._describe(env_cls, num_envs, convention=convention, horizon=horizon, action_scale=action_scale,
                       cost_on_clipped=cost_on_clipped, reset_noise_scale=reset_noise_scale)
        self.dtype, self.device = dtype, torch.device(device)
        model = self.proto.model
        self.batch = mjbatch.Batch(model, num_envs, nthread)
        self.qpos = self.batch.bind("qpos")  # [N, nq], live
        self.qvel = self.batch.bind("qvel")  # [N, nv], live
        self.ctrl = self.batch.bind("ctrl")  # [N, nu], live
        self.xpos = self.batch.bind("xpos")  # [N, nbody, 3], refreshed after each call
        self.cfrc_ext = self.batch.bind("cfrc_ext")  # [N, nbody, 6], refreshed after each call
        self.xmat = self.batch.bind("xmat")  # [N, nbody, 9]
        self.subtree_com = self.batch.bind("subtree_com")  # [N, nbody, 3]
        # [N, nbody, 3]; filled by the maml models' subtreelinvel sensor (see load_model)
        self.subtree_linvel = self.batch.bind("subtree_linvel") if self.reference else None
        self.alive = np.zeros(num_envs, dtype=bool)

    def _state(self) -> SimState:
        return read_state(self.qpos, self.qvel, self.cfrc_ext, self.xpos, self.xmat, self.subtree_com,
                          self.subtree_linvel, self._torso)

    def _tensor(self, array: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.dtype).to(self.device)

    def reset(self, tasks: Mapping, seeds: Sequence[int] | int) -> Tensor:
        """Start N episodes; ``tasks`` has a leading axis N; ``seeds`` one int per episode (or a base).

        Returns:
            Observations ``[N, obs_dim]``.
        """
        self.task, seeds = self._reset_args(tasks, seeds)
        n = self.num_envs
        self.batch.reset(stage=mujoco.mjtStage.mjSTAGE_NONE)
        for i, seed in enumerate(seeds):
            rng, _ = seeding.np_random(int(seed))
            self.qpos[i], self.qvel[i] = self.proto.initial_state(rng)
        self.batch.forward()
        self.alive = np.ones(n, dtype=bool)
        self.steps = 0
        self._obs = self.robot.observation(self._state(), self.reference)
        return self._tensor(self._obs)

    def stop(self, ids) -> None:
        """End the episodes of envs ``ids`` now (a sampler that no longer needs them): they are not
        simulated further and report ``done``."""
        self.alive[np.asarray(ids, dtype=np.int64)] = False

    def step(self, actions: Tensor | np.ndarray) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """Advance every live episode by one control step.

        Returns:
            ``obs [N, obs_dim]``, ``reward [N]`` (0 where the episode had ended), ``done [N]``
            (ended by now: terminated or at the horizon), ``info`` with the reward terms ``[N]``.
        """
        a = check_batched_actions(actions, (self.num_envs, self.act_dim))
        live = self.alive.copy()
        control = self.proto.control(a)
        self.ctrl[:] = control
        qpos_before = self.qpos.copy()
        ids = None if live.all() else np.flatnonzero(live)
        self.batch.step(ids=ids, nstep=self.frame_skip)
        if self.reference:  # the state after a forward pass at the new positions (rllab's forward_dynamics)
            self.batch.forward(ids=ids)
        state = self._state()
        reward, terms = step_reward(self.robot, self.env_cls.forward_reward, self.task, qpos_before, state,
                                    self.proto.cost_action(a, control), self.dt, self.reference)
        obs = self.robot.observation(state, self.reference)
        self._obs = np.where(live[:, None], obs, self._obs)
        terminated = self.robot.terminated(state.qpos, state.qvel) & live
        self.alive = live & ~terminated
        self.steps += 1
        reward = np.where(live, reward, 0.0)
        done = ~self.alive | (self.steps >= self.horizon)
        info = {k: self._tensor(np.where(live, v, 0.0)) for k, v in terms.items()}
        return self._tensor(self._obs), self._tensor(reward), torch.from_numpy(done).to(self.device), info
