"""The locomotion families stepped by MuJoCo Warp: N episodes on one device, state as torch tensors.

:class:`WarpLocomotion` is :class:`~rl_maml.envs.batched.BatchedLocomotion` with MuJoCo Warp
(``mujoco_warp``, on NVIDIA's ``warp``) in place of MuJoCo's threaded CPU batch. Same models
(:func:`~rl_maml.envs.locomotion.load_model`, both conventions), same reset noise from the same
per-episode seeds, and the same observation, reward and termination functions, run on torch
tensors on the env's device. What differs:

- Precision: Warp simulates in float32 (MuJoCo in float64). One control step from the same state
  agrees to float32 rounding (``tests/test_envs_warp.py``); over an episode, contact dynamics
  amplify that difference, as they amplify any, so episodes are statistically alike, not equal.
  For the Ant the two engines also orient a contact's friction pyramid differently (the tangent
  frame of a capsule-floor contact), so where friction binds one step can differ by more.
- Determinism: on a GPU, parallel sums run in any order, so the same seed does not repeat the
  same numbers (Warp's CPU device does); see ``deterministic`` below.
- Where: every array lives on the device. ``step`` writes the actions into Warp's ``ctrl`` and
  reads observations and rewards from zero-copy torch views of Warp's arrays: no host round trip
  per step. On a CUDA device the frame skip (and ``maml``'s forward pass after it) is one captured
  CUDA graph, replayed on torch's current stream, the stream the policy and the reward code run
  on: in order, with no host synchronisation.
- Ended episodes are not frozen: every world is simulated every step (that is what a GPU does
  cheaply), and an ended episode's observation, reward and ``done`` are masked as the CPU
  stepper's are. A world whose state stops being finite is put back at the initial state so that
  it cannot disturb the others.
- Resets draw the initial states on the host (the same generator per seed as the CPU stepper,
  so that the two backends start from the same states) and copy them to the device once per
  reset; the rest of Warp's state is cleared by ``mujoco_warp.reset_data``.

Warp also runs on the CPU (its kernels compiled by LLVM; slow, but it is how the tests run
without a GPU). Contacts and constraint rows are allocated per world up front (``nconmax``,
``njmax``); the defaults cover the Ant's floor contacts with room to spare, and an overflow is
reported at the next reset with the setting to raise.

Install: ``pip install "rl_maml[warp]"`` (``warp-lang`` and ``mujoco-warp``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from gymnasium.utils import seeding
from rl_maml.envs.batched import LocomotionBatchBase
from rl_maml.envs.locomotion import LocomotionEnv, SimState, step_reward
from torch import Tensor

__all__ = ["WarpLocomotion", "import_warp", "WARP_INSTALL_HINT"]

WARP_INSTALL_HINT = ('env.backend=warp needs MuJoCo Warp: pip install "rl_maml[warp]" (the packages warp-lang and '
                     'mujoco-warp), or use env.backend=mujoco (MuJoCo on the CPU)')

# mujoco_warp.OverflowType flags that mean lost contacts or constraints (the solver's iteration
# limits, also flags of that mask, are not overflows of any allocation).
_OVERFLOWS = {"NEFC": "constraint rows (raise njmax)", "NJMAX_NNZ": "constraint Jacobian entries (raise njmax)",
              "BROADPHASE": "broadphase pairs (raise nconmax)", "NARROWPHASE": "contacts (raise nconmax)"}


def import_warp():
    """``(warp, mujoco_warp)``, or ``ImportError`` saying what to install."""
    try:
        import mujoco_warp
        import warp
    except ImportError as err:
        raise ImportError(f"{WARP_INSTALL_HINT} ({err})") from None
    return warp, mujoco_warp


def _warp_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"
    if device.type == "cpu":
        return "cpu"
    raise ValueError(f"env.backend=warp runs on a CUDA device or the CPU, not on {device}")


class WarpLocomotion(LocomotionBatchBase):
    """N episodes of one locomotion family, stepped together by MuJoCo Warp on one device.

    Args:
        env_cls: the single-env class (e.g. ``HalfCheetahVelEnv``); gives model, task space,
            observation and reward.
        num_envs: N (Warp's ``nworld``).
        convention, horizon, action_scale, cost_on_clipped, reset_noise_scale: as for the single env.
        dtype: must be ``torch.float32`` (Warp's precision).
        device: ``cuda[:k]`` or ``cpu`` (Warp's CPU device: slow; for tests).
        nconmax: contacts allocated per world (default 32; the Ant touches the floor at 9 or
            fewer geoms).
        njmax: constraint rows allocated per world (default ``4 * nconmax + 16``: pyramidal
            friction cones of 4 rows per contact, and joint limits).
        graph: capture the control step as a CUDA graph (CUDA devices only; default on).
        deterministic: MuJoCo Warp's deterministic mode (``opt.deterministic``: stable contact
            order, canonical constraint rows, order-invariant atomic sums). Off by default: on an
            H200 it made HalfCheetah stepping 6.5x slower at N = 800, its sort buffers overflow
            graph capture from N = 16,384 on, and two same-seed runs still differed (see
            docs/environments.md). On a GPU, episodes therefore differ from run to run by rounding
            that contacts amplify; Warp's CPU device repeats itself exactly.

    Non-finite actions raise ``ValueError``: at once on the CPU; on a GPU at the next
    :meth:`reset` or :meth:`check` (the check is a flag on the device, not a wait per step), the
    env having stepped with 0 in their place.
    """

    def __init__(self, env_cls: type[LocomotionEnv], num_envs: int, convention: str = "gym",
                 horizon: int | None = None, action_scale: float | None = None, cost_on_clipped: bool | None = None,
                 reset_noise_scale: float = 0.1, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", nconmax: int = 32, njmax: int | None = None, graph: bool = True,
                 deterministic: bool = False):
        if dtype != torch.float32:
            raise ValueError(f"env.backend=warp simulates in float32; dtype must be torch.float32, got {dtype}")
        if nconmax < 1:
            raise ValueError(f"nconmax must be >= 1, got {nconmax}")
        njmax = 4 * nconmax + 16 if njmax is None else njmax
        if njmax < 1:
            raise ValueError(f"njmax must be >= 1, got {njmax}")
        self.device = torch.device(device)
        wp_device = _warp_device(self.device)
        wp, mjw = import_warp()
        self._wp, self._mjw = wp, mjw
        self._describe(env_cls, num_envs, convention=convention, horizon=horizon, action_scale=action_scale,
                       cost_on_clipped=cost_on_clipped, reset_noise_scale=reset_noise_scale)
        self.dtype = dtype
        self.nconmax, self.njmax = nconmax, njmax
        model = self.proto.model
        with wp.ScopedDevice(wp_device):
            self.model = mjw.put_model(model)
            self.model.opt.deterministic = bool(deterministic)
            self.data = mjw.make_data(model, nworld=num_envs, nconmax=nconmax, njmax=njmax)
        self._stream = wp.get_device(wp_device).stream if self.device.type == "cuda" else None
        d = self.data
        view = wp.to_torch
        self.qpos, self.qvel, self.ctrl = view(d.qpos), view(d.qvel), view(d.ctrl)  # [N, nq], [N, nv], [N, nu]
        self._xpos, self._xmat = view(d.xpos), view(d.xmat)  # [N, nbody, 3], [N, nbody, 3, 3]
        self._cfrc_ext, self._subtree_com = view(d.cfrc_ext), view(d.subtree_com)  # [N, nbody, 6], [N, nbody, 3]
        self._subtree_linvel = view(d.subtree_linvel) if self.reference else None
        self._qacc_warmstart = view(d.qacc_warmstart)
        self._overflow = view(d.overflow) if hasattr(d, "overflow") else None
        self._ctrl_low = torch.as_tensor(self.proto._ctrl_low, dtype=dtype, device=self.device)
        self._ctrl_high = torch.as_tensor(self.proto._ctrl_high, dtype=dtype, device=self.device)
        self._init_qpos = torch.as_tensor(self.proto.init_qpos, dtype=dtype, device=self.device)
        self._init_qvel = torch.as_tensor(self.proto.init_qvel, dtype=dtype, device=self.device)
        self.alive = torch.zeros(num_envs, dtype=torch.bool, device=self.device)
        self._bad_actions = torch.zeros((), dtype=torch.bool, device=self.device)
        self._zero = torch.zeros((), dtype=dtype, device=self.device)  # what masked rewards read
        self.steps = 0
        self._graph = None
        self._wp_device = wp_device
        self._streams: dict[int, object] = {}  # torch stream handle -> the same stream as a Warp stream
        with wp.ScopedDevice(wp_device):
            self._advance()  # compiles every kernel the step uses (a CUDA graph cannot capture compilation)
            if graph and self.device.type == "cuda":
                try:
                    with wp.ScopedCapture(stream=self._stream, force_module_load=False) as capture:
                        self._advance()
                    self._graph = capture.graph
                except Exception as err:  # noqa: BLE001 - the eager path computes the same; say why it is used
                    warnings.warn(f"MuJoCo Warp: capturing the control step as a CUDA graph failed ({err}); "
                                  "stepping without a graph (slower)", RuntimeWarning, stacklevel=2)
            mjw.reset_data(self.model, self.data)
        wp.synchronize_device(wp_device)

    # --- simulation -----------------------------------------------------------------------------

    def _advance(self) -> None:
        """One control step: ``frame_skip`` MuJoCo steps, then (``maml``) the forward pass that
        refreshes the state read (rllab's ``forward_dynamics``)."""
        for _ in range(self.frame_skip):
            self._mjw.step(self.model, self.data)
        if self.reference:
            self._mjw.forward(self.model, self.data)

    def _torch_stream(self):
        """torch's current stream on the device, as a Warp stream (cached): Warp's kernels and graph
        replays go on the stream the policy and the reward code run on, in order, with no host wait."""
        stream = torch.cuda.current_stream(self.device)
        if stream.cuda_stream not in self._streams:
            self._streams[stream.cuda_stream] = self._wp.stream_from_torch(stream)
        return self._streams[stream.cuda_stream]

    def _run(self, fn) -> None:
        """Run Warp work on torch's current stream of the device (the CPU: in order anyway)."""
        wp = self._wp
        if self.device.type != "cuda":
            with wp.ScopedDevice(self._wp_device):
                fn()
            return
        with wp.ScopedDevice(self._wp_device), wp.ScopedStream(self._torch_stream(), sync_enter=False):
            fn()

    def _step_physics(self) -> None:
        if self._graph is not None:
            self._run(lambda: self._wp.capture_launch(self._graph, stream=self._torch_stream()))
        else:
            self._run(self._advance)

    def _forward(self) -> None:
        self._run(lambda: self._mjw.forward(self.model, self.data))

    def set_state(self, qpos: Tensor | np.ndarray, qvel: Tensor | np.ndarray) -> None:
        """Put every world at ``qpos [N, nq]``, ``qvel [N, nv]`` (the solver's warm start cleared)
        and recompute the derived quantities (positions of bodies, contacts, forces)."""
        qpos = torch.as_tensor(qpos, dtype=self.dtype).to(self.device)
        qvel = torch.as_tensor(qvel, dtype=self.dtype).to(self.device)
        if qpos.shape != self.qpos.shape or qvel.shape != self.qvel.shape:
            raise ValueError(f"expected qpos {tuple(self.qpos.shape)} and qvel {tuple(self.qvel.shape)}, got "
                             f"{tuple(qpos.shape)} and {tuple(qvel.shape)}")
        self._run(lambda: self._mjw.reset_data(self.model, self.data))
        self.qpos.copy_(qpos)
        self.qvel.copy_(qvel)
        self._forward()

    def check(self) -> None:
        """Raise for what the steps since the last reset could not report without waiting for the
        device: ``ValueError`` for non-finite actions, ``RuntimeError`` for lost contacts or
        constraint rows. A host synchronisation; :meth:`reset` calls it."""
        if bool(self._bad_actions):
            self._bad_actions.zero_()
            raise ValueError("actions contained NaN or infinite values (the env stepped with 0 in their place); "
                             "check the policy's outputs")
        self.check_overflow()

    def check_overflow(self) -> None:
        """``RuntimeError`` if any world lost contacts or constraint rows since the last reset."""
        if self._overflow is None:
            return
        flags = int(np.bitwise_or.reduce(self._overflow.cpu().numpy().astype(np.int64)))
        kinds = self._mjw.OverflowType
        lost = [what for name, what in _OVERFLOWS.items() if name in kinds.__members__ and flags & int(kinds[name])]
        if lost:
            raise RuntimeError(f"MuJoCo Warp ran out of room for {', '.join(lost)}: nconmax={self.nconmax}, "
                               f"njmax={self.njmax}. Pass larger values (make_batched(..., nconmax=..., njmax=...) "
                               f"or env.nconmax / env.njmax in a config); the steps since the last reset are not "
                               f"trustworthy.")

    # --- the batched task-env interface ---------------------------------------------------------

    def _state(self) -> SimState:
        n, t = self.num_envs, self._torso
        return SimState(self.qpos, self.qvel, self._cfrc_ext, self._xpos[:, t], self._xmat[:, t].reshape(n, 9),
                        self._subtree_com[:, t], None if self._subtree_linvel is None else self._subtree_linvel[:, t])

    def reset(self, tasks: Mapping, seeds: Sequence[int] | int) -> Tensor:
        """Start N episodes; ``tasks`` has a leading axis N; ``seeds`` one int per episode (or a base).

        Returns:
            Observations ``[N, obs_dim]`` on the device.
        """
        checked, seeds = self._reset_args(tasks, seeds)
        n = self.num_envs
        if self.steps:
            self.check()
        self.task = {k: torch.as_tensor(v, dtype=self.dtype, device=self.device) for k, v in checked.items()}
        qpos = np.empty((n, self.qpos.shape[1]))
        qvel = np.empty((n, self.qvel.shape[1]))
        for i, seed in enumerate(seeds):  # the CPU stepper's draws, seed for seed
            rng, _ = seeding.np_random(int(seed))
            qpos[i], qvel[i] = self.proto.initial_state(rng)
        self.set_state(qpos, qvel)
        if self._overflow is not None:
            self._overflow.zero_()
        self.alive = torch.ones(n, dtype=torch.bool, device=self.device)
        self.steps = 0
        self._obs = self.robot.observation(self._state(), self.reference)
        return self._obs.clone()

    def stop(self, ids) -> None:
        """End the episodes of envs ``ids`` now: they report ``done`` from here on."""
        self.alive[torch.as_tensor(np.asarray(ids, dtype=np.int64), device=self.device)] = False

    def step(self, actions: Tensor | np.ndarray) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """Advance every episode by one control step (ended ones are masked).

        Returns:
            ``obs [N, obs_dim]``, ``reward [N]`` (0 where the episode had ended), ``done [N]``
            (ended by now: terminated or at the horizon), ``info`` with the reward terms ``[N]``;
            all on the device.
        """
        a = torch.as_tensor(actions).to(device=self.device, dtype=self.dtype)
        if tuple(a.shape) != (self.num_envs, self.act_dim):
            raise ValueError(f"actions must have shape {(self.num_envs, self.act_dim)}, got {tuple(a.shape)}")
        if self.device.type == "cuda":  # no wait here: checked at the next reset (see the class docstring)
            self._bad_actions |= ~torch.isfinite(a).all()
            a = torch.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        elif not bool(torch.isfinite(a).all()):
            raise ValueError("actions contain NaN or infinite values; check the policy's outputs")
        live = self.alive
        control = torch.clamp(self.proto.convention.action_scale * a, self._ctrl_low, self._ctrl_high)
        self.ctrl.copy_(control)
        qpos_before = None if self.reference else self.qpos.clone()  # gym's finite-difference velocity
        self._step_physics()
        state = self._state()
        cost_action = control / self.proto.convention.action_scale if self.proto.convention.cost_on_clipped else a
        reward, terms = step_reward(self.robot, self.env_cls.forward_reward, self.task, qpos_before, state,
                                    cost_action, self.dt, self.reference)
        obs = self.robot.observation(state, self.reference)
        self._obs = torch.where(live[:, None], obs, self._obs)
        terminated = self.robot.terminated(state.qpos, state.qvel) & live
        self.alive = live & ~terminated
        self.steps += 1
        zero = self._zero
        reward = torch.where(live, reward, zero)
        done = ~self.alive | (self.steps >= self.horizon)
        info = {k: torch.where(live, v, zero) for k, v in terms.items()}
        self._sanitize()  # after everything above has read the state: a non-finite one terminates its episode
        return self._obs.clone(), reward, done, info

    def _sanitize(self) -> None:
        """Worlds whose state is no longer finite restart at the initial state (they are masked as
        ended; this keeps NaNs out of the shared contact buffers)."""
        bad = ~(torch.isfinite(self.qpos).all(1) & torch.isfinite(self.qvel).all(1))
        self.qpos.copy_(torch.where(bad[:, None], self._init_qpos, self.qpos))
        self.qvel.copy_(torch.where(bad[:, None], self._init_qvel, self.qvel))
        self._qacc_warmstart.masked_fill_(bad[:, None], 0.0)
