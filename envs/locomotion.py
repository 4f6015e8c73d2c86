"""MuJoCo locomotion task families: HalfCheetah and Ant with velocity, direction and goal tasks.

Dynamics come from Gymnasium's HalfCheetah and Ant models (its ``MujocoEnv`` base and the
``mujoco`` bindings); the rewards are the MAML paper's, written here (Gymnasium's v5 rewards use
other weights and a healthy reward). Observations, rewards and terminations are pure functions of
batched arrays (leading axis N) so that the single envs and the batched stepper
(:mod:`rl_maml.envs.batched`) compute them with the same code.

Two conventions, whose returns are not comparable (say which one every result used):

| convention | horizon | HalfCheetah time step | Ant time step | actions | control cost on |
|---|---|---|---|---|---|
| ``maml`` (MAML paper, rllab) | 200 | 0.01 (frame skip 1) | 0.02 (frame skip 1, RK4) | used as given | the clipped action |
| ``gym`` (pytorch-maml-rl, ProMP) | 100 | 0.05 (frame skip 5) | 0.05 (frame skip 5) | scaled by 10 | the action as passed |

In both, the control sent to MuJoCo is ``clip(action_scale * action, -1, 1)``. In ``maml``, the
control cost is computed on that clipped control divided by ``action_scale`` (rllab's ``normalize``
wrapper clipped the policy's action before the environment computed its cost, so an action
beyond the limits costs no more than the limit); in ``gym``, on the action as passed to ``step``.
The ``cost_on_clipped`` argument overrides the convention's choice.

``maml`` is the task of the MAML paper's code (cbfinn/maml_rl, an rllab fork; read there, not
copied), everywhere it differs from Gymnasium's:

- Model. The reference's ``half_cheetah.xml`` equals Gymnasium's. Its ``ant.xml`` differs from
  Gymnasium's in three places, which :func:`load_model` applies to Gymnasium's file: time step
  0.02 (Gymnasium 0.01), every geom with ``solref="0.02 1" solimp="0.8 0.8 0.01"`` (Gymnasium:
  MuJoCo's defaults), and motors with ``ctrlrange`` +-150 and gear 1 where Gymnasium has +-1 and
  gear 150, the same torques for actions in [-1, 1] (kept as Gymnasium's). No file of either is
  shipped: Gymnasium (MIT) is a dependency.
- Initial state: the model's ``init_qpos`` (the Ant's numeric field: torso at z 0.55, ankles
  bent; the cheetah's ``qpos0``) plus N(0, 0.01) noise, velocities N(0, 0.1) (rllab's
  ``reset_mujoco``). ``gym``: ``qpos0`` plus U(-0.1, 0.1), velocities 0.1 N(0, 1) (Gymnasium's).
- State after the step: ``mj_forward`` runs after each control step (rllab's
  ``forward_dynamics``), so contact forces, centre of mass and its velocity are the new state's.
- Observation: the cheetah's last three entries are the torso subtree's centre of mass (the whole
  robot's); the Ant's are ``qpos, qvel, clip(cfrc_ext, -1, 1)`` of all 14 bodies, the torso's
  rotation matrix and the centre of mass (125 dims). ``gym``: the torso's origin, and for the Ant
  107 dims (no world body, rotation or centre of mass).
- Rewards: the forward term uses the centre of mass's x velocity at the new state (rllab's
  ``get_body_comvel("torso")``, MuJoCo's ``subtree_linvel``), AntGoal the centre of mass's xy.
  ``gym``: the torso origin's finite-difference x velocity over the step, and its xy.

What could not be matched: the reference ran MuJoCo 1.31, whose contact solver and ``solimp``
interpolation predate MuJoCo 2; the models here run on the installed MuJoCo (``solimp``'s two
later parameters at their defaults, 0.5 and 2).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import gymnasium
import mujoco
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.envs.mujoco.mujoco_env import MujocoEnv
from rl_maml.envs.base import TaskEnvMixin, check_action
from rl_maml.envs.tasks import (
    ANT_DIR_TASKS,
    ANT_GOAL_TASKS,
    ANT_VEL_TASKS,
    CHEETAH_DIR_TASKS,
    CHEETAH_VEL_TASKS,
)

_ASSETS = os.path.join(os.path.dirname(gymnasium.__file__), "envs", "mujoco", "assets")


@dataclass(frozen=True)
class Convention:
    """Resolved simulation settings of one env instance."""

    name: str
    horizon: int
    action_scale: float
    frame_skip: int
    cost_on_clipped: bool  # control cost on clip(action) (rllab) instead of the raw action
    reference: bool  # maml: the reference's model, reset, post-step forward, observation and rewards


_CONVENTIONS = {
    # name: (horizon, action_scale, {robot: frame_skip}, cost_on_clipped)
    "maml": (200, 1.0, {"half_cheetah": 1, "ant": 1}, True),
    "gym": (100, 10.0, {"half_cheetah": 5, "ant": 5}, False),
}


def resolve_convention(robot: str, convention: str, horizon: int | None = None,
                       action_scale: float | None = None, cost_on_clipped: bool | None = None) -> Convention:
    """The settings of ``convention`` for ``robot``, with optional overrides."""
    if convention not in _CONVENTIONS:
        raise ValueError(f"convention must be one of {sorted(_CONVENTIONS)}, got {convention!r}")
    default_h, default_scale, skips, default_clipped = _CONVENTIONS[convention]
    horizon = default_h if horizon is None else horizon
    action_scale = default_scale if action_scale is None else action_scale
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    if not (np.isfinite(action_scale) and action_scale > 0):
        raise ValueError(f"action_scale must be a finite number > 0, got {action_scale}")
    if cost_on_clipped is None:
        cost_on_clipped = default_clipped
    elif not isinstance(cost_on_clipped, (bool, np.bool_)):
        raise ValueError(f"cost_on_clipped must be True, False or None, got {cost_on_clipped!r}")
    return Convention(convention, int(horizon), float(action_scale), skips[robot], bool(cost_on_clipped),
                      convention == "maml")


# The reference's Ant (cbfinn/maml_rl, vendor/mujoco_models/ant.xml) where it differs from Gymnasium's.
REFERENCE_ANT_TIMESTEP = 0.02
REFERENCE_ANT_SOLREF = (0.02, 1.0)
REFERENCE_ANT_SOLIMP = (0.8, 0.8, 0.01, 0.5, 2.0)  # the last two: MuJoCo's defaults (MuJoCo 1.31 had three)
REFERENCE_QPOS_STD, REFERENCE_QVEL_STD = 0.01, 0.1  # rllab's reset noise (Gaussian)


def load_model(robot: str, convention: str = "gym") -> mujoco.MjModel:
    """Gymnasium's MuJoCo model of ``robot``, as the convention runs it.

    The Ant gains an accelerometer: an acceleration-stage sensor makes MuJoCo run
    ``mj_rnePostConstraint`` inside every forward pass, so ``cfrc_ext`` (the Ant's contact forces,
    in its observation and contact cost) is filled by plain ``mj_step`` / ``mj_forward`` calls, in
    the single envs and in ``mujoco.batch`` alike. In ``maml`` both robots gain a
    ``subtreelinvel`` sensor on the torso, for the same reason: forward passes then fill
    ``subtree_linvel`` (the centre of mass's velocity, the reference's forward reward), and the
    Ant takes the reference's time step and contact parameters (module docstring). Sensors do not
    change the dynamics.
    """
    spec = mujoco.MjSpec.from_file(os.path.join(_ASSETS, f"{robot}.xml"))
    if robot == "ant":
        spec.body("torso").add_site(name="rl_maml_accelerometer")
        spec.add_sensor(type=mujoco.mjtSensor.mjSENS_ACCELEROMETER, objtype=mujoco.mjtObj.mjOBJ_SITE,
                        objname="rl_maml_accelerometer")
    if convention == "maml":
        spec.add_sensor(name="rl_maml_com_velocity", type=mujoco.mjtSensor.mjSENS_SUBTREELINVEL,
                        objtype=mujoco.mjtObj.mjOBJ_BODY, objname="torso")
        if robot == "ant":
            spec.option.timestep = REFERENCE_ANT_TIMESTEP
            for geom in spec.geoms:  # the floor too: the reference sets these in its default class
                geom.solref = list(REFERENCE_ANT_SOLREF)
                geom.solimp = list(REFERENCE_ANT_SOLIMP)
    with warnings.catch_warnings():  # Gymnasium's half_cheetah.xml sets the deprecated settotalmass
        warnings.filterwarnings("ignore", message="compiler attribute 'settotalmass' is deprecated")
        return spec.compile()


def initial_qpos(model: mujoco.MjModel, convention: str) -> np.ndarray:
    """The state resets start from: ``maml``, the model's ``init_qpos`` numeric if it has one (rllab); else ``qpos0``."""
    if convention == "maml":
        try:
            return np.array(model.numeric("init_qpos").data, dtype=np.float64)
        except KeyError:
            pass
    return model.qpos0.copy()


def reset_state(rng: np.random.Generator, init_qpos: np.ndarray, init_qvel: np.ndarray,
                noise_scale: float, reference: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Initial ``(qpos, qvel)``.

    Gymnasium's rule (``reference=False``): ``U(-s, s)`` noise on positions, ``s N(0, 1)`` on
    velocities. rllab's (``reference=True``): ``0.1 s N(0, 1)`` on positions, then ``s N(0, 1)``
    on velocities, so that the default ``s = 0.1`` gives the reference's 0.01 and 0.1.
    """
    if reference:
        qpos = init_qpos + 0.1 * noise_scale * rng.standard_normal(init_qpos.shape)
    else:
        qpos = init_qpos + rng.uniform(-noise_scale, noise_scale, size=init_qpos.shape)
    qvel = init_qvel + noise_scale * rng.standard_normal(init_qvel.shape)
    return qpos, qvel


@dataclass
class SimState:
    """What observations, rewards and terminations read, batched over a leading axis N."""

    qpos: np.ndarray  # [N, nq]
    qvel: np.ndarray  # [N, nv]
    cfrc_ext: np.ndarray  # [N, nbody, 6]
    torso_xpos: np.ndarray  # [N, 3] the torso frame's origin
    torso_xmat: np.ndarray  # [N, 9]
    com: np.ndarray  # [N, 3] the torso subtree's centre of mass (the whole robot's)
    com_velocity: np.ndarray | None  # [N, 3] its linear velocity (maml models only)


def read_state(qpos, qvel, cfrc_ext, xpos, xmat, subtree_com, subtree_linvel, torso: int) -> SimState:
    """A :class:`SimState` from MjData-shaped arrays with a leading axis N (copies)."""
    n = qpos.shape[0]
    return SimState(qpos.copy(), qvel.copy(), cfrc_ext.copy(), xpos[:, torso].copy(),
                    xmat[:, torso].reshape(n, 9).copy(), subtree_com[:, torso].copy(),
                    None if subtree_linvel is None else subtree_linvel[:, torso].copy())


# --- robots: observations, costs, terminations (batched over a leading axis N) -----------------
# Written once for NumPy arrays (the MuJoCo steppers) and torch tensors (the Warp stepper, on its
# device): ``_xp`` picks the namespace, and only operations both share are used.


def _xp(array):
    return torch if isinstance(array, torch.Tensor) else np


def _full(like, value):
    """``[N]`` filled with ``value``, of ``like``'s kind, dtype and device (``like`` is ``[N, ...]``)."""
    if isinstance(like, torch.Tensor):
        return torch.full((like.shape[0],), value, dtype=like.dtype, device=like.device)
    return np.full(like.shape[0], value)


def _copy(array):
    return array.clone() if isinstance(array, torch.Tensor) else array.copy()


class HalfCheetahRobot:
    name = "half_cheetah"
    ctrl_cost_weight = 0.05

    @staticmethod
    def obs_dim(reference: bool) -> int:
        return 20

    @staticmethod
    def observation(state: SimState, reference: bool) -> np.ndarray:
        # [N, 8] positions without x, [N, 9] velocities, [N, 3] the centre of mass (maml) or the
        # torso's origin (gym) -> [N, 20]
        last = state.com if reference else state.torso_xpos
        return _xp(last).concatenate([state.qpos[:, 1:], state.qvel, last], axis=1)

    @classmethod
    def costs(cls, action, cfrc_ext) -> dict[str, np.ndarray]:
        return {"reward_ctrl": -cls.ctrl_cost_weight * (action * action).sum(axis=1)}

    @staticmethod
    def terminated(qpos, qvel) -> np.ndarray:
        return _full(qpos, 0) != 0


class AntRobot:
    name = "ant"
    ctrl_cost_weight = 0.005
    contact_cost_weight = 0.0005
    survive_reward = 0.05
    healthy_z_range = (0.2, 1.0)

    @staticmethod
    def obs_dim(reference: bool) -> int:
        return 15 + 14 + 14 * 6 + 9 + 3 if reference else 15 + 14 + 13 * 6

    @staticmethod
    def observation(state: SimState, reference: bool) -> np.ndarray:
        n = state.qpos.shape[0]
        if reference:
            # [N, 15] positions, [N, 14] velocities, [N, 14 * 6] contact forces of all bodies
            # (world included) clipped to [-1, 1], [N, 9] torso rotation, [N, 3] centre of mass -> [N, 125]
            contact = state.cfrc_ext.clip(-1.0, 1.0).reshape(n, -1)
            return _xp(contact).concatenate([state.qpos, state.qvel, contact, state.torso_xmat, state.com], axis=1)
        # [N, 15] positions, [N, 14] velocities, [N, 13 * 6] contact forces of the bodies (world
        # excluded) clipped to [-1, 1] -> [N, 107]
        contact = state.cfrc_ext[:, 1:].clip(-1.0, 1.0).reshape(n, -1)
        return _xp(contact).concatenate([state.qpos, state.qvel, contact], axis=1)

    @classmethod
    def costs(cls, action, cfrc_ext) -> dict[str, np.ndarray]:
        contact = cfrc_ext.clip(-1.0, 1.0).reshape(action.shape[0], -1)
        return {
            "reward_ctrl": -cls.ctrl_cost_weight * (action * action).sum(axis=1),
            "reward_contact": -cls.contact_cost_weight * (contact * contact).sum(axis=1),
            "reward_survive": _full(action, cls.survive_reward),
        }

    @classmethod
    def terminated(cls, qpos, qvel) -> np.ndarray:
        xp = _xp(qpos)
        finite = xp.isfinite(qpos).all(axis=1) & xp.isfinite(qvel).all(axis=1)
        z = qpos[:, 2]
        return ~(finite & (z >= cls.healthy_z_range[0]) & (z <= cls.healthy_z_range[1]))


# --- task rewards: the forward term of each family ------------------------------------------


def velocity_forward(task, x_velocity, xy, offset=0.0):
    return -abs(x_velocity - task["velocity"]) + offset


def direction_forward(task, x_velocity, xy):
    return task["direction"] * x_velocity


def goal_forward(task, x_velocity, xy):
    return -abs(xy - task["goal"]).sum(axis=1) + 4.0


def step_reward(robot, forward_fn, task, qpos_before, state: SimState, action, dt, reference: bool):
    """Reward ``[N]`` and its terms (each ``[N]``) of one step, for a batch of N envs.

    ``maml`` (``reference``): the forward term reads the centre of mass's velocity and position at
    the new state; ``gym``: the torso origin's finite-difference velocity over the step, and its xy.
    """
    if reference:
        x_velocity, xy = state.com_velocity[:, 0], state.com[:, :2]
    else:
        x_velocity, xy = (state.qpos[:, 0] - qpos_before[:, 0]) / dt, state.qpos[:, :2]
    terms = {"reward_forward": forward_fn(task, x_velocity, xy)}
    terms.update(robot.costs(action, state.cfrc_ext))
    reward = sum(terms.values())
    terms["x_velocity"] = _copy(x_velocity)
    terms["x_position"] = _copy(state.com[:, 0] if reference else state.qpos[:, 0])
    return reward, terms


# --- single environments -------------------------------------------------------------------


class LocomotionEnv(TaskEnvMixin, MujocoEnv):
    """Shared machinery of the locomotion families (see the concrete classes' docstrings)."""

    ROBOT: type[HalfCheetahRobot] | type[AntRobot]
    metadata = {"render_modes": ["human", "rgb_array", "depth_array", "rgbd_tuple"]}

    @staticmethod
    def forward_reward(task, x_velocity, xy):  # pragma: no cover - set by subclasses
        raise NotImplementedError

    def __init__(self, task: Mapping | None = None, convention: str = "gym", horizon: int | None = None,
                 action_scale: float | None = None, cost_on_clipped: bool | None = None,
                 reset_noise_scale: float = 0.1, render_mode: str | None = None, **kwargs):
        self.convention = resolve_convention(self.ROBOT.name, convention, horizon, action_scale, cost_on_clipped)
        self.horizon = self.convention.horizon
        if not (np.isfinite(reset_noise_scale) and reset_noise_scale >= 0):
            raise ValueError(f"reset_noise_scale must be a finite number >= 0, got {reset_noise_scale}")
        self.reset_noise_scale = reset_noise_scale
        self.obs_dim = self.ROBOT.obs_dim(self.convention.reference)
        obs_space = spaces.Box(-np.inf, np.inf, (self.obs_dim,), np.float64)
        MujocoEnv.__init__(self, os.path.join(_ASSETS, f"{self.ROBOT.name}.xml"), self.convention.frame_skip,
                           observation_space=obs_space, render_mode=render_mode, **kwargs)
        self.init_qpos = initial_qpos(self.model, self.convention.name)
        self.metadata = {**self.metadata, "render_fps": int(np.round(1.0 / self.dt))}
        self._torso = self.model.body("torso").id
        self._ctrl_low, self._ctrl_high = self.model.actuator_ctrlrange.T.copy()
        self._steps = 0
        self._init_task(task)

    def _initialize_simulation(self):
        model = load_model(self.ROBOT.name, self.convention.name)
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, self.height)
        return model, mujoco.MjData(model)

    def _step_mujoco_simulation(self, ctrl, n_frames):
        # cfrc_ext is already current (see load_model); Gymnasium's extra mj_rnePostConstraint
        # call is not needed and the batched stepper does not make it either. maml: the state is
        # read after a forward pass at the new positions, as rllab's forward_dynamics did.
        self.data.ctrl[:] = ctrl
        mujoco.mj_step(self.model, self.data, nstep=n_frames)
        if self.convention.reference:
            mujoco.mj_forward(self.model, self.data)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = super().reset(seed=seed, options=None)
        self._apply_reset_options(options)
        return obs, {**info, "task": self.get_task()}

    def initial_state(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(qpos, qvel)`` of a new episode, drawn from ``rng`` (the convention's rule)."""
        return reset_state(rng, self.init_qpos, self.init_qvel, self.reset_noise_scale, self.convention.reference)

    def reset_model(self):
        self.set_state(*self.initial_state(self.np_random))
        self._steps = 0
        return self._get_obs()

    def sim_state(self) -> SimState:
        d = self.data
        linvel = d.subtree_linvel[None] if self.convention.reference else None
        return read_state(d.qpos[None], d.qvel[None], d.cfrc_ext[None], d.xpos[None], d.xmat[None],
                          d.subtree_com[None], linvel, self._torso)

    def _get_obs(self):
        return self.ROBOT.observation(self.sim_state(), self.convention.reference)[0]

    def control(self, action: np.ndarray) -> np.ndarray:
        return np.clip(self.convention.action_scale * action, self._ctrl_low, self._ctrl_high)

    def cost_action(self, action: np.ndarray, control: np.ndarray) -> np.ndarray:
        """The action the control cost is computed on (see the module docstring's table)."""
        return control / self.convention.action_scale if self.convention.cost_on_clipped else action

    def step(self, action):
        action = check_action(action, self.action_space.shape)
        qpos_before = self.data.qpos[None].copy()
        control = self.control(action)
        self.do_simulation(control, self.frame_skip)
        task = {k: v[None] for k, v in self._task.items()}
        state = self.sim_state()
        reward, terms = step_reward(self.ROBOT, type(self).forward_reward, task, qpos_before, state,
                                    self.cost_action(action, control)[None], self.dt, self.convention.reference)
        terminated = bool(self.ROBOT.terminated(state.qpos, state.qvel)[0])
        self._steps += 1
        truncated = not terminated and self._steps >= self.horizon
        info = {k: float(v[0]) for k, v in terms.items()}
        return self.ROBOT.observation(state, self.convention.reference)[0], float(reward[0]), terminated, \
            truncated, info


_CHEETAH_DOC = """
    ## Observation Space (20 dimensions, both conventions)

    | indices | observation |
    |---|---|
    | 0-7 | joint positions without the root's x coordinate (rootz, rooty, 6 hinge angles) |
    | 8-16 | joint velocities (rootx, rootz, rooty, 6 hinges) |
    | 17-19 | ``maml``: the torso subtree's (the robot's) centre of mass; ``gym``: the torso frame's origin |

    ## Action Space

    ``Box(-1, 1, (6,))``: torques of the six hinges. MuJoCo receives
    ``clip(action_scale * action, -1, 1)``; NaN or infinite actions raise ``ValueError``. The
    control cost's ``action`` is the clipped one in ``maml`` and the one passed in ``gym``.

    ## Episode End

    Never terminated; truncated after ``horizon`` steps (``maml``: 200, ``gym``: 100).

    ## Arguments

    ``task``, ``convention`` (``"gym"`` default, or ``"maml"``), ``horizon``, ``action_scale`` and
    ``cost_on_clipped`` (override the convention's), ``reset_noise_scale`` (0.1; ``maml``: the
    velocity noise's standard deviation, a tenth of it on positions), ``render_mode``.

    ## Version History

    * v0: initial version. Since 2026-11-22 the ``maml`` convention's control cost uses the clipped
      action, as rllab's did. Since 2026-12-01 ``maml`` is the reference code's task (module
      docstring): Gaussian reset noise N(0, 0.01) / N(0, 0.1), the state read after a forward
      pass, the centre of mass as the last three observation entries and its velocity in the
      reward. ``maml`` returns from before either date are not comparable. Since 2026-12-02 the
      spec sets ``max_episode_steps=200`` (the longest default horizon; dynamics unchanged).
"""

_ANT_DOC = """
    ## Observation Space (``maml``: 125 dimensions, ``gym``: 107)

    | indices (``maml``) | indices (``gym``) | observation |
    |---|---|---|
    | 0-14 | 0-14 | positions: torso x, y, z, orientation quaternion, 8 hinge angles |
    | 15-28 | 15-28 | velocities: torso linear and angular, 8 hinges |
    | 29-112 | 29-106 | external contact forces clipped to [-1, 1], 6 per body: all 14 bodies (``maml``, world first) or the 13 robot bodies (``gym``) |
    | 113-121 | | the torso's rotation matrix (row-major) |
    | 122-124 | | the torso subtree's (the robot's) centre of mass |

    ## Action Space

    ``Box(-1, 1, (8,))``: hinge torques; MuJoCo receives ``clip(action_scale * action, -1, 1)``.
    The control cost's ``action`` is the clipped one in ``maml`` and the one passed in ``gym``.

    ## Episode End

    Terminated when the torso height leaves [0.2, 1.0] or the state is not finite; truncated
    after ``horizon`` steps (``maml``: 200, ``gym``: 100).

    ## Arguments

    ``task``, ``convention`` (``"gym"`` default, or ``"maml"``), ``horizon``, ``action_scale``,
    ``cost_on_clipped`` (override the convention's), ``reset_noise_scale`` (0.1; ``maml``: the
    velocity noise's standard deviation, a tenth of it on positions), ``render_mode``.

    ## Version History

    * v0: initial version. Since 2026-11-22 the ``maml`` convention's control cost uses the clipped
      action, as rllab's did. Since 2026-12-01 ``maml`` is the reference code's task (module
      docstring): its time step 0.02 (was Gymnasium's 0.05) and contact parameters, its
      ``init_qpos`` with Gaussian noise, the state read after a forward pass, the 125-dim
      observation, and the centre of mass's velocity (AntGoal: position) in the reward. ``maml``
      returns from before either date are not comparable. Since 2026-12-02 the spec sets
      ``max_episode_steps=200`` (the longest default horizon; dynamics unchanged).
"""

_ANT_COSTS = ("``ctrl = 0.005 * sum(action^2)``, ``contact = 0.0005 * sum(clip(cfrc_ext, -1, 1)^2)``, "
              "survive bonus 0.05")


class HalfCheetahVelEnv(LocomotionEnv):
    __doc__ = """HalfCheetah must run forward at a target velocity (MAML paper, section 5.3).

    ## Rewards

    ``reward = -|v_x - velocity| - 0.05 * sum(action^2)``, with ``v_x`` the centre of mass's x
    velocity after the step (``maml``) or the root's over the step (``gym``). ``info``:
    ``reward_forward``, ``reward_ctrl``, ``x_velocity``, ``x_position``.

    ## Task Distribution

    ``{"velocity": v}``, ``v ~ U[0, 2]``.
    """ + _CHEETAH_DOC
    ROBOT = HalfCheetahRobot
    TASKS = CHEETAH_VEL_TASKS
    forward_reward = staticmethod(velocity_forward)


class HalfCheetahDirEnv(LocomotionEnv):
    __doc__ = """HalfCheetah must run forward or backward (MAML paper, section 5.3).

    ## Rewards

    ``reward = direction * v_x - 0.05 * sum(action^2)``.

    ## Task Distribution

    ``{"direction": d}``, ``d = +1`` or ``-1`` with probability 1/2 each.
    """ + _CHEETAH_DOC
    ROBOT = HalfCheetahRobot
    TASKS = CHEETAH_DIR_TASKS
    forward_reward = staticmethod(direction_forward)


def _ant_velocity_forward(task, x_velocity, xy):
    return velocity_forward(task, x_velocity, xy, offset=1.0)


class AntVelEnv(LocomotionEnv):
    __doc__ = f"""Ant must walk forward at a target velocity (MAML paper, section 5.3).

    ## Rewards

    ``reward = -|v_x - velocity| + 1 - ctrl - contact + 0.05``, with {_ANT_COSTS}. ``info`` holds
    each term.

    ## Task Distribution

    ``{{"velocity": v}}``, ``v ~ U[0, 3]``.
    """ + _ANT_DOC
    ROBOT = AntRobot
    TASKS = ANT_VEL_TASKS
    forward_reward = staticmethod(_ant_velocity_forward)


class AntDirEnv(LocomotionEnv):
    __doc__ = f"""Ant must walk forward or backward along x (MAML paper, section 5.3).

    ## Rewards

    ``reward = direction * v_x - ctrl - contact + 0.05``, with {_ANT_COSTS}.

    ## Task Distribution

    ``{{"direction": d}}``, ``d = +1`` or ``-1`` with probability 1/2 each.
    """ + _ANT_DOC
    ROBOT = AntRobot
    TASKS = ANT_DIR_TASKS
    forward_reward = staticmethod(direction_forward)


class AntGoalEnv(LocomotionEnv):
    __doc__ = f"""Ant must walk to a goal position in the plane.

    ## Rewards

    ``reward = -(|x - gx| + |y - gy|) + 4 - ctrl - contact + 0.05``, with {_ANT_COSTS}; ``(x, y)``
    the centre of mass's (``maml``) or the torso's (``gym``).

    ## Task Distribution

    ``{{"goal": [gx, gy]}}``, each coordinate ``~ U[-3, 3]``.
    """ + _ANT_DOC
    ROBOT = AntRobot
    TASKS = ANT_GOAL_TASKS
    forward_reward = staticmethod(goal_forward)
