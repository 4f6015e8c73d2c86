"""The ``maml`` locomotion convention against the reference code's task (cbfinn/maml_rl, rllab).

Each expected value here is computed by hand from MuJoCo's raw data, the way the reference's
environments computed it, not by calling the code under test a second time.
"""

from __future__ import annotations

import gymnasium
import mujoco
import numpy as np
import pytest
import torch
from rl_maml.envs import ENV_IDS, make_batched
from rl_maml.envs.locomotion import REFERENCE_ANT_SOLIMP, REFERENCE_ANT_SOLREF

import rl_maml  # noqa: F401  (registers the envs)

ANT_INIT_QPOS = [0.0, 0.0, 0.55, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0, -1.0, 0.0, 1.0]
# Mean length of 200-step AntVel episodes under clipped N(0, 1) actions with the reference's
# model and reset, as measured with it (our gym-model Ant of before fell after about 57 steps).
REFERENCE_RANDOM_EPISODE_LENGTH = 144


def make(name, **kwargs):
    return gymnasium.make(ENV_IDS[name], **kwargs).unwrapped


def com_velocity_by_hand(model, data, root: int) -> np.ndarray:
    """rllab's ``get_body_comvel``: mass-weighted mean of the bodies' linear velocities at their
    centres of mass (``mj_objectVelocity``, world frame) over the root's subtree."""
    total, momentum = 0.0, np.zeros(3)
    for b in range(model.nbody):
        ancestor = b
        while ancestor not in (0, root):
            ancestor = model.body_parentid[ancestor]
        if ancestor != root:
            continue
        vel = np.zeros(6)
        mujoco.mj_objectVelocity(model, data, mujoco.mjtObj.mjOBJ_BODY, b, vel, 0)
        momentum += model.body_mass[b] * vel[3:]
        total += model.body_mass[b]
    return momentum / total


def com_by_hand(model, data, root: int) -> np.ndarray:
    ids = [b for b in range(model.nbody) if b == root or model.body_rootid[b] == model.body_rootid[root] and b != 0]
    mass = model.body_mass[ids]
    return (mass[:, None] * data.xipos[ids]).sum(0) / mass.sum()


def test_maml_models_are_the_references():
    ant = make("AntVel", convention="maml")
    assert ant.dt == pytest.approx(0.02) and ant.frame_skip == 1
    assert ant.model.opt.integrator == mujoco.mjtIntegrator.mjINT_RK4
    np.testing.assert_allclose(ant.model.geom_solref, np.tile(REFERENCE_ANT_SOLREF, (ant.model.ngeom, 1)))
    np.testing.assert_allclose(ant.model.geom_solimp, np.tile(REFERENCE_ANT_SOLIMP, (ant.model.ngeom, 1)))
    # gear 150 on controls in [-1, 1]: the reference's ctrlrange +-150 with gear 1
    np.testing.assert_allclose(ant.model.actuator_gear[:, 0], 150.0)
    np.testing.assert_allclose(ant.model.actuator_ctrlrange, np.tile([-1.0, 1.0], (8, 1)))
    np.testing.assert_allclose(ant.init_qpos, ANT_INIT_QPOS)
    cheetah = make("HalfCheetahVel", convention="maml")
    assert cheetah.dt == pytest.approx(0.01) and cheetah.frame_skip == 1
    np.testing.assert_allclose(cheetah.init_qpos, 0.0)
    assert cheetah.model.body_subtreemass[cheetah.model.body("torso").id] == pytest.approx(14.0)
    gym_ant = make("AntVel", convention="gym")  # the gym convention is unchanged
    assert gym_ant.dt == pytest.approx(0.05) and gym_ant.observation_space.shape == (107,)
    np.testing.assert_allclose(gym_ant.model.geom_solimp[:, :3], np.tile([0.9, 0.95, 0.001], (14, 1)))


@pytest.mark.parametrize("name", ["AntVel", "AntDir", "AntGoal"])
def test_ant_observation_layout_is_the_new_state(name):
    env = make(name, convention="maml")
    assert env.observation_space.shape == (125,)
    env.reset(seed=3)
    for _ in range(25):  # 0.5 s: the legs are on the ground
        obs, *_ = env.step(np.linspace(-1, 1, 8))
    d, torso = env.data, env.model.body("torso").id
    after = mujoco.MjData(env.model)  # a forward pass of our own at the same state
    after.qpos[:], after.qvel[:], after.ctrl[:] = d.qpos, d.qvel, d.ctrl
    after.qacc_warmstart[:] = d.qacc_warmstart
    mujoco.mj_forward(env.model, after)
    mujoco.mj_rnePostConstraint(env.model, after)
    np.testing.assert_array_equal(obs[:15], d.qpos)
    np.testing.assert_array_equal(obs[15:29], d.qvel)
    np.testing.assert_allclose(obs[29:113], np.clip(after.cfrc_ext, -1, 1).ravel(), atol=1e-9)
    assert np.abs(obs[29:113]).max() > 0  # contact forces are there
    np.testing.assert_allclose(obs[113:122], after.xmat[torso], atol=1e-12)
    np.testing.assert_allclose(obs[122:125], com_by_hand(env.model, after, torso), atol=1e-12)


def test_cheetah_observation_ends_with_the_centre_of_mass():
    env = make("HalfCheetahVel", convention="maml")
    env.reset(seed=0)
    obs, *_ = env.step(np.full(6, 0.5))
    torso = env.model.body("torso").id
    np.testing.assert_array_equal(obs[:8], env.data.qpos[1:])
    np.testing.assert_array_equal(obs[8:17], env.data.qvel)
    np.testing.assert_allclose(obs[17:], com_by_hand(env.model, env.data, torso), atol=1e-12)
    assert np.abs(obs[17:] - env.data.xpos[torso]).max() > 1e-3  # not the torso's origin (gym's)


@pytest.mark.parametrize("name", ["HalfCheetahVel", "HalfCheetahDir", "AntVel", "AntDir", "AntGoal"])
def test_rewards_by_hand_from_a_known_state(name):
    env = make(name, convention="maml")
    task = env.sample_tasks(1, np.random.default_rng(4))[0]
    env.reset(seed=0, options={"task": task})
    rng = np.random.default_rng(1)
    qpos = env.init_qpos + 0.05 * rng.standard_normal(env.model.nq)
    qvel = 0.5 * rng.standard_normal(env.model.nv)
    env.set_state(qpos, qvel)
    action = 1.5 * rng.standard_normal(env.action_space.shape[0])  # some entries beyond [-1, 1]
    _, reward, _, _, info = env.step(action)
    torso = env.model.body("torso").id
    v = com_velocity_by_hand(env.model, env.data, torso)[0]
    com = com_by_hand(env.model, env.data, torso)
    a = np.clip(action, -1, 1)
    assert info["x_velocity"] == pytest.approx(v, abs=1e-9)
    if name.startswith("HalfCheetah"):
        costs = -0.05 * np.sum(a**2)
    else:
        contact = np.clip(env.data.cfrc_ext, -1, 1)
        assert info["reward_contact"] == pytest.approx(-0.0005 * np.sum(contact**2), abs=1e-12)
        costs = -0.005 * np.sum(a**2) - 0.0005 * np.sum(contact**2) + 0.05
    if name.endswith("Vel"):
        forward = -abs(v - float(task["velocity"])) + (1.0 if name.startswith("Ant") else 0.0)
    elif name.endswith("Dir"):
        forward = float(task["direction"]) * v
    else:
        forward = -np.sum(np.abs(com[:2] - task["goal"])) + 4.0
    assert info["reward_forward"] == pytest.approx(forward, abs=1e-9)
    assert info["reward_ctrl"] == pytest.approx(-(0.05 if name.startswith("Half") else 0.005) * np.sum(a**2))
    assert reward == pytest.approx(forward + costs, abs=1e-9)


@pytest.mark.parametrize("name", ["HalfCheetahVel", "AntVel"])
def test_reset_distribution_is_rllabs(name):
    env = make(name, convention="maml")
    qpos, qvel = [], []
    for seed in range(300):
        env.reset(seed=seed)
        qpos.append(env.data.qpos.copy())
        qvel.append(env.data.qvel.copy())
    dq = np.array(qpos) - env.init_qpos
    dv = np.array(qvel)
    assert dq.std() == pytest.approx(0.01, rel=0.05) and abs(dq.mean()) < 1e-3
    assert dv.std() == pytest.approx(0.1, rel=0.05) and abs(dv.mean()) < 1e-2
    assert (np.abs(dq) > 0.025).mean() > 0.005  # Gaussian tails (Gymnasium's uniform noise would give none here)
    if name == "AntVel":
        assert np.array(qpos)[:, 2].mean() == pytest.approx(0.55, abs=2e-3)
    batched = make_batched(name, 2, convention="maml", dtype=torch.float64)
    obs = batched.reset(batched.TASKS.sample(2, np.random.default_rng(0)), [7, 8])
    env.reset(seed=8)
    np.testing.assert_allclose(obs[1].numpy(), env._get_obs(), atol=1e-12)


def test_random_action_episode_length_matches_the_reference():
    """Clipped N(0, 1) actions: the Ant falls about as late as the reference's (dt 0.02)."""
    lengths = {}
    for convention in ("maml", "gym"):
        n = 64
        env = make_batched("AntVel", n, convention=convention, horizon=200, dtype=torch.float64)
        env.reset(env.TASKS.sample(n, np.random.default_rng(0)), list(range(n)))
        rng = np.random.default_rng(0)
        length = np.zeros(n)
        for _ in range(200):
            alive = env.alive.copy()
            length += alive
            _, _, done, _ = env.step(np.clip(rng.standard_normal((n, 8)), -1, 1))
            if not env.alive.any():
                break
        lengths[convention] = length.mean()
    assert abs(lengths["maml"] / REFERENCE_RANDOM_EPISODE_LENGTH - 1) < 0.15, lengths
    assert lengths["gym"] < 0.6 * lengths["maml"], lengths
