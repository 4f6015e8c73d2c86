"""Meta-environments: Gymnasium and SB3 checkers, rewards by hand, tasks, errors, batched agreement."""

from __future__ import annotations

import warnings

import gymnasium
import numpy as np
import pytest
import torch
from rl_maml.envs import ENV_IDS, make_batched

import rl_maml  # noqa: F401  (registers the envs)

MUJOCO = ["HalfCheetahVel", "HalfCheetahDir", "AntVel", "AntDir", "AntGoal"]
ALL = ["Navigation2D", *MUJOCO]


def make(name, **kwargs):
    return gymnasium.make(ENV_IDS[name], **kwargs).unwrapped


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("convention", ["gym", "maml"])
def test_gymnasium_env_checker(name, convention):
    from gymnasium.utils.env_checker import check_env

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the checker's notes on unbounded observation spaces
        check_env(gymnasium.make(ENV_IDS[name], convention=convention).unwrapped, skip_render_check=True)


@pytest.mark.parametrize("name", ALL)
def test_stable_baselines3_env_checker(name):
    from stable_baselines3.common.env_checker import check_env

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(make(name), warn=False)


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_rollout(name):
    def rollout(seed):
        env = make(name)
        task = env.sample_tasks(1, np.random.default_rng(3))[0]
        obs, _ = env.reset(seed=seed, options={"task": task})
        env.action_space.seed(seed)
        out = [obs]
        for _ in range(20):
            obs, reward, term, trunc, _ = env.step(env.action_space.sample() * 0.1)
            out += [obs, np.array([reward])]
            if term or trunc:
                break
        return np.concatenate([np.ravel(o) for o in out])

    assert np.array_equal(rollout(7), rollout(7))
    if name != "Navigation2D":  # navigation starts at the origin: only the actions differ
        assert not np.array_equal(rollout(7)[:20], rollout(8)[:20])


@pytest.mark.parametrize("convention, horizon, dt", [("gym", 100, 0.05), ("maml", 200, 0.01)])
def test_cheetah_conventions(convention, horizon, dt):
    env = make("HalfCheetahVel", convention=convention)
    assert env.horizon == horizon and env.dt == pytest.approx(dt)
    assert env.observation_space.shape == (20,)
    assert env.convention.action_scale == (10.0 if convention == "gym" else 1.0)
    env.reset(seed=0)
    for t in range(horizon):
        _, _, term, trunc, _ = env.step(np.zeros(6))
        assert not term and trunc == (t == horizon - 1)
    custom = make("HalfCheetahVel", convention="maml", horizon=7, action_scale=2.0)
    assert custom.horizon == 7 and custom.convention.action_scale == 2.0
    with pytest.raises(ValueError, match="convention must be one of"):
        make("HalfCheetahVel", convention="rllab")


def test_navigation_rewards_by_hand():
    env = make("Navigation2D")
    env.reset(seed=0, options={"task": {"goal": [0.3, 0.0]}})
    obs, reward, term, _, info = env.step([0.1, 0.0])
    np.testing.assert_allclose(obs, [0.1, 0.0], atol=1e-7)
    assert reward == pytest.approx(-0.2, abs=1e-6) and not term
    obs, reward, _, _, _ = env.step([5.0, -5.0])  # clipped to (0.1, -0.1)
    np.testing.assert_allclose(obs, [0.2, -0.1], atol=1e-7)
    assert reward == pytest.approx(-np.hypot(0.1, 0.1), abs=1e-6)
    obs, reward, term, trunc, _ = env.step([0.1, 0.095])  # lands 0.005 from the goal
    assert term and not trunc and reward == pytest.approx(-0.005, abs=1e-6)


@pytest.mark.parametrize("region", ["square", "disc"])
def test_navigation_goal_region(region):
    """The episode ends within 0.01 of the goal in both coordinates (square, the reference code's
    ``abs(x) < 0.01 and abs(y) < 0.01``) or in Euclidean distance (disc); single and batched agree."""
    goal = [0.05, -0.04]  # one move (at most 0.1 per coordinate) from the origin
    corner = [0.05 - 0.009, -0.04 + 0.009]  # 0.0127 from the goal: inside the square, outside the disc
    env = make("Navigation2D", goal_region=region)
    env.reset(seed=0, options={"task": {"goal": goal}})
    _, reward, term, _, _ = env.step(corner)
    assert reward == pytest.approx(-0.009 * np.sqrt(2), abs=1e-6)
    assert term == (region == "square")
    batched = make_batched("Navigation2D", 2, goal_region=region)
    batched.reset({"goal": np.array([goal, goal])})
    _, reward, done, _ = batched.step(torch.tensor([corner, [0.05 - 0.009, -0.04 + 0.011]]))
    assert done.tolist() == [region == "square", False]  # 0.011 off in y: outside both
    assert reward[0].item() == pytest.approx(-0.009 * np.sqrt(2), abs=1e-6)
    assert make("Navigation2D").goal_region == "square"
    with pytest.raises(ValueError, match="goal_region must be one of"):
        make("Navigation2D", goal_region="circle")


def test_navigation_maml_convention_normalises_actions():
    """maml (rllab's normalize): actions in [-1, 1] map onto displacements in [-0.1, 0.1]."""
    env = make("Navigation2D", convention="maml")
    assert env.action_space.low.tolist() == [-1, -1] and env.action_space.high.tolist() == [1, 1]
    env.reset(seed=0, options={"task": {"goal": [0.3, 0.0]}})
    obs, reward, _, _, _ = env.step([1.0, 0.5])
    np.testing.assert_allclose(obs, [0.1, 0.05], atol=1e-7)
    assert reward == pytest.approx(-np.hypot(0.2, 0.05), abs=1e-6)
    obs, _, _, _, _ = env.step([30.0, -30.0])  # clipped to (0.1, -0.1)
    np.testing.assert_allclose(obs, [0.2, -0.05], atol=1e-7)
    batched = make_batched("Navigation2D", 1, convention="maml")
    batched.reset({"goal": np.array([[0.3, 0.0]])})
    np.testing.assert_allclose(batched.step(torch.tensor([[1.0, 0.5]]))[0].numpy(), [[0.1, 0.05]], atol=1e-7)
    assert make("Navigation2D").action_scale == 1.0
    assert make("Navigation2D", convention="maml", action_scale=0.05).action_space.high.tolist() == [2, 2]
    with pytest.raises(ValueError, match="action_scale must be a finite number > 0"):
        make("Navigation2D", action_scale=0.0)


@pytest.mark.parametrize("name", MUJOCO)
def test_locomotion_rewards_by_hand(name):
    env = make(name)
    task = env.sample_tasks(1, np.random.default_rng(0))[0]
    env.reset(seed=1, options={"task": task})
    action = np.linspace(-0.08, 0.08, env.action_space.shape[0])
    x_before = env.data.qpos[0]
    _, reward, _, _, info = env.step(action)
    v = (env.data.qpos[0] - x_before) / env.dt
    assert info["x_velocity"] == pytest.approx(v)
    if name.startswith("HalfCheetah"):
        costs = -0.05 * np.sum(action**2)
    else:
        contact = np.clip(env.data.cfrc_ext, -1, 1)
        costs = -0.005 * np.sum(action**2) - 0.0005 * np.sum(contact**2) + 0.05
        assert info["reward_contact"] == pytest.approx(-0.0005 * np.sum(contact**2))
    if name.endswith("Vel"):
        forward = -abs(v - float(task["velocity"])) + (1.0 if name.startswith("Ant") else 0.0)
    elif name.endswith("Dir"):
        forward = float(task["direction"]) * v
    else:
        forward = -np.sum(np.abs(env.data.qpos[:2] - task["goal"])) + 4.0
    assert info["reward_forward"] == pytest.approx(forward)
    assert reward == pytest.approx(forward + costs)


@pytest.mark.parametrize("name", ["HalfCheetahDir", "AntDir"])
def test_maml_convention_costs_the_clipped_action(name):
    """rllab clipped the action before the env costed it; ``gym`` costs the action as passed."""
    dim = make(name).action_space.shape[0]
    big = np.full(dim, 3.0)
    big[::2] = -3.0
    weight = 0.05 if name.startswith("HalfCheetah") else 0.005
    ctrl = {}
    for convention in ("maml", "gym"):
        env = make(name, convention=convention)
        env.reset(seed=0, options={"task": {"direction": 1.0}})
        ctrl[convention] = env.step(big)[4]["reward_ctrl"]
        np.testing.assert_allclose(env.data.ctrl, np.sign(big))  # MuJoCo gets the clipped control in both
    assert ctrl["maml"] == pytest.approx(-weight * dim)  # |clip(a)| = 1
    assert ctrl["gym"] == pytest.approx(-weight * dim * 9.0)  # |a| = 3
    env = make(name, convention="maml", action_scale=0.5)  # cost on clip(0.5 a) / 0.5: |a| <= 2 counts
    env.reset(seed=0, options={"task": {"direction": 1.0}})
    assert env.step(big)[4]["reward_ctrl"] == pytest.approx(-weight * dim * 4.0)
    env = make(name, convention="maml", cost_on_clipped=False)  # the override: the raw action again
    env.reset(seed=0, options={"task": {"direction": 1.0}})
    assert env.step(big)[4]["reward_ctrl"] == pytest.approx(-weight * dim * 9.0)
    batched = make_batched(name, 2, convention="maml", cost_on_clipped=False, dtype=torch.float64)
    batched.reset(batched.TASKS.sample(2, np.random.default_rng(0)), seeds=[0, 1])
    info = batched.step(torch.as_tensor(np.stack([big, big])))[3]
    np.testing.assert_allclose(info["reward_ctrl"].numpy(), -weight * dim * 9.0)
    with pytest.raises(ValueError, match="cost_on_clipped must be True, False or None, got 'yes'"):
        make(name, convention="maml", cost_on_clipped="yes")


def test_ant_contact_forces_are_live_and_falling_terminates():
    env = make("AntVel")
    env.reset(seed=0)
    forces = []
    for _ in range(10):
        obs, *_ = env.step(np.zeros(8))
        forces.append(np.abs(obs[29:]).max())
    assert max(forces) > 0  # cfrc_ext is filled (Gymnasium's Ant needed an extra call for this)
    env.reset(seed=0)
    env.data.qpos[2] = 1.5  # torso above the healthy range [0.2, 1.0]
    *_, term, trunc, _ = env.step(np.zeros(8))
    assert term and not trunc


@pytest.mark.parametrize(
    "name, field, lo, hi",
    [("Navigation2D", "goal", -0.5, 0.5), ("HalfCheetahVel", "velocity", 0, 2), ("AntVel", "velocity", 0, 3),
     ("AntGoal", "goal", -3, 3)],
)
def test_task_ranges(name, field, lo, hi):
    env = make(name)
    tasks = env.sample_tasks(2000, np.random.default_rng(0))
    values = np.array([t[field] for t in tasks])
    assert values.min() >= lo and values.max() <= hi
    assert abs(values.mean() - (lo + hi) / 2) < 0.05 * (hi - lo)
    bad = {field: np.full(np.shape(tasks[0][field]), hi + 1.0)}
    with pytest.raises(ValueError, match=rf"task field '{field}' must be within \[{lo:g}, {hi:g}\]"):
        env.set_task(bad)
    with pytest.raises(ValueError, match=rf"'{field}' must be within"):
        env.reset(options={"task": bad})


@pytest.mark.parametrize("name", ["HalfCheetahDir", "AntDir"])
def test_direction_tasks(name):
    env = make(name)
    d = np.array([t["direction"] for t in env.sample_tasks(1000, np.random.default_rng(0))])
    assert set(np.unique(d)) == {-1.0, 1.0} and abs(d.mean()) < 0.1
    with pytest.raises(ValueError, match=r"'direction' must be one of -1, 1, got 0.5"):
        env.set_task({"direction": 0.5})


def test_task_shape_type_and_key_errors():
    env = make("AntGoal")
    with pytest.raises(ValueError, match=r"'goal' must have shape \(2,\), got \(3,\)"):
        env.set_task({"goal": [0.0, 0.0, 0.0]})
    with pytest.raises(ValueError, match="'goal' must be numeric"):
        env.set_task({"goal": "north"})
    with pytest.raises(ValueError, match=r"has the keys \['goal'\], got \['velocity'\]"):
        env.set_task({"velocity": 1.0})
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"goal": [0, 0]})
    assert env.get_task()["goal"].shape == (2,)


@pytest.mark.parametrize("name", ALL)
def test_nan_actions_raise(name):
    env = make(name)
    env.reset(seed=0)
    action = np.zeros(env.action_space.shape)
    action[0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        env.step(action)
    batched = make_batched(name, 2)
    batched.reset(batched.TASKS.sample(2, np.random.default_rng(0)), seeds=[0, 1])
    with pytest.raises(ValueError, match="NaN or infinite"):
        batched.step(torch.full((2, env.action_space.shape[0]), float("inf")))


def run_both(name, num, action_scale, seed=0, **kwargs):
    """Roll out the batched env and N single envs with the same tasks, seeds and actions."""
    batched = make_batched(name, num, dtype=torch.float64, **kwargs) if name != "Navigation2D" else \
        make_batched(name, num, **kwargs)
    tasks = batched.TASKS.sample(num, np.random.default_rng(seed))
    seeds = [100 + i for i in range(num)]
    rng = np.random.default_rng(seed + 1)
    actions = rng.uniform(-action_scale, action_scale, (batched.horizon, num, batched.act_dim))
    b_obs = [batched.reset(tasks, seeds).double().numpy()]
    b_rew, b_done = [], []
    for t in range(batched.horizon):
        o, r, d, _ = batched.step(torch.as_tensor(actions[t], dtype=torch.float32 if name == "Navigation2D"
                                                  else torch.float64))
        b_obs.append(o.double().numpy())
        b_rew.append(r.double().numpy())
        b_done.append(d.numpy())
    return batched, tasks, seeds, actions, np.array(b_obs), np.array(b_rew), np.array(b_done)


@pytest.mark.parametrize("name, convention", [(n, "gym") for n in ALL] +
                         [("Navigation2D", "maml"), ("HalfCheetahDir", "maml"), ("AntVel", "maml"), ("AntGoal", "maml")])
def test_batched_agrees_with_single_envs(name, convention):
    num = 8
    # The maml Ant (dt 0.02) falls later than gym's (dt 0.05): its whole 200-step horizon
    horizon = 200 if name.startswith("Ant") and convention == "maml" else 60
    kwargs = {"convention": convention} if name == "Navigation2D" else {"convention": convention, "horizon": horizon}
    # gym locomotion scales actions by 10: +-0.1 already reaches the control limits; in maml,
    # actions up to +-2 exercise the clipping of the control and of the control cost
    scale = {("Navigation2D", "gym"): 0.1, ("Navigation2D", "maml"): 1.0}.get(
        (name, convention), 0.1 if convention == "gym" else 2.0)
    batched, tasks, seeds, actions, b_obs, b_rew, b_done = run_both(name, num, action_scale=scale, **kwargs)
    ended_early = 0
    for i in range(num):
        env = make(name, **kwargs)
        obs, _ = env.reset(seed=seeds[i], options={"task": {k: v[i] for k, v in tasks.items()}})
        np.testing.assert_allclose(b_obs[0, i], obs, atol=1e-6, rtol=0)
        for t in range(batched.horizon):
            obs, reward, term, trunc, _ = env.step(actions[t, i].astype(np.float32) if name == "Navigation2D"
                                                    else actions[t, i])
            np.testing.assert_allclose(b_obs[t + 1, i], obs, atol=1e-6, rtol=0, err_msg=f"task {i} step {t}")
            assert b_rew[t, i] == pytest.approx(reward, abs=1e-6)
            assert bool(b_done[t, i]) == (term or trunc)
            if term or trunc:
                break
        if term:  # masked afterwards, not reset: frozen observation, zero reward
            ended_early += 1
            assert (b_rew[t + 1:, i] == 0).all() and (b_obs[t + 1:, i] == b_obs[t + 1, i]).all()
            assert b_done[t:, i].all()
    if name.startswith("Ant"):
        assert ended_early > 0, f"full-scale random actions should make some Ant fall within {horizon} steps"


def test_sb3_ppo_learns_fixed_goal_navigation():
    """A short PPO run on one fixed goal improves the return (about 4 s on 2 cores)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor

    def env_fn():
        return Monitor(gymnasium.make(ENV_IDS["Navigation2D"], task={"goal": [0.4, -0.3]}, horizon=30))

    torch.manual_seed(0)
    model = PPO("MlpPolicy", env_fn(), n_steps=256, batch_size=64, learning_rate=3e-3, seed=0, verbose=0,
                policy_kwargs={"net_arch": [32, 32]}, device="cpu")
    before, _ = evaluate_policy(model, env_fn(), n_eval_episodes=3, deterministic=True)
    model.learn(total_timesteps=4000)
    after, _ = evaluate_policy(model, env_fn(), n_eval_episodes=3, deterministic=True)
    assert after > before + 5.0, (before, after)  # measured: -15.0 -> -2.6


def test_registered_specs_carry_max_episode_steps_and_navigation_renders():
    import gymnasium

    from rl_maml.envs.registration import ENV_IDS

    assert gymnasium.spec(ENV_IDS["Navigation2D"]).max_episode_steps == 100
    assert gymnasium.spec(ENV_IDS["AntVel"]).max_episode_steps == 200
    env = gymnasium.make(ENV_IDS["Navigation2D"], render_mode="rgb_array")
    env.reset(seed=0, options={"task": {"goal": [0.4, 0.4]}})
    first = env.render()
    for _ in range(5):
        env.step(np.array([0.1, 0.1], np.float32))
    image = env.render()
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    drawn = (image != 255).any(axis=2)
    assert drawn.sum() > (first != 255).any(axis=2).sum()  # the path grew
    assert tuple(image[int(255 - (0.4 + 0.6) / 1.2 * 255 + 0.5), int((0.4 + 0.6) / 1.2 * 255 + 0.5)]) == (220, 30, 30)
    from rl_maml.envs.navigation import Navigation2DEnv

    with pytest.raises(ValueError, match="render_mode"):
        Navigation2DEnv(render_mode="human")
