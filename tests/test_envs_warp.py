"""The MuJoCo Warp backend (``env.backend=warp``) against the MuJoCo CPU stepper, on Warp's CPU device.

Both backends load the same models; from identical states one control step must agree to float32
rounding. The Ant's comparison runs with frictionless contacts (``condim=1``): the two engines
orient a capsule-plane contact's tangent frame differently, and a pyramidal friction cone is not
symmetric about the normal, so where friction binds, the reference Ant's steps differ by more
than rounding (measured in docs/environments.md); without friction, every contact force, contact
cost and observation must agree.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from rl_maml.envs import make_batched
from rl_maml.envs.batched import BatchedLocomotion
from rl_maml.envs.locomotion import AntGoalEnv, AntVelEnv, HalfCheetahDirEnv, HalfCheetahVelEnv

pytest.importorskip("mujoco_warp", reason="the Warp backend needs mujoco-warp (Python 3.11+)")
from rl_maml.envs.warp_locomotion import WarpLocomotion  # noqa: E402


def frictionless(env_cls):
    class Frictionless(env_cls):
        def _initialize_simulation(self):
            model, data = super()._initialize_simulation()
            model.geom_condim[:] = 1
            return model, data

    Frictionless.__name__ = f"Frictionless{env_cls.__name__}"
    return Frictionless


N = 24


def mid_episode_pair(env_cls, convention, steps=12, seed=0):
    """A CPU stepper after ``steps`` random steps and a Warp stepper put in exactly its state."""
    cpu = BatchedLocomotion(env_cls, N, convention=convention, nthread=1)
    gpu_like = WarpLocomotion(env_cls, N, convention=convention)
    tasks = cpu.sample_tasks(N, np.random.default_rng(seed))
    cpu.reset(tasks, seed)
    gpu_like.reset(tasks, seed)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        cpu.step(torch.rand(N, cpu.act_dim, generator=g) * 2 - 1)
    gpu_like.set_state(np.asarray(cpu.qpos), np.asarray(cpu.qvel))
    gpu_like._qacc_warmstart.copy_(torch.as_tensor(np.asarray(cpu.batch.bind("qacc_warmstart"))))
    gpu_like.alive.copy_(torch.as_tensor(cpu.alive))
    gpu_like._obs = torch.as_tensor(cpu._obs, dtype=torch.float32)
    gpu_like.steps = cpu.steps
    return cpu, gpu_like, g


def assert_close(warp_value, cpu_value, what, atol=2e-4, rtol=2e-4):
    w = warp_value.double().cpu().numpy()
    c = np.asarray(cpu_value.double().cpu().numpy() if isinstance(cpu_value, torch.Tensor) else cpu_value)
    np.testing.assert_allclose(w, c, atol=atol, rtol=rtol, err_msg=what)


@pytest.mark.parametrize("env_cls, convention", [
    (HalfCheetahVelEnv, "maml"), (HalfCheetahDirEnv, "gym"),
    (frictionless(AntVelEnv), "maml"), (frictionless(AntGoalEnv), "gym"),
])
def test_one_control_step_equals_the_cpu_stepper(env_cls, convention):
    cpu, warp, g = mid_episode_pair(env_cls, convention)
    if env_cls.ROBOT.name == "ant":  # one world leaves the healthy height: its done flag must agree
        cpu.qpos[0, 2] = warp.qpos[0, 2] = 1.2
        cpu.batch.forward()
        warp._forward()
    actions = torch.rand(N, cpu.act_dim, generator=g) * 2 - 1
    obs_c, rew_c, done_c, info_c = cpu.step(actions)
    obs_w, rew_w, done_w, info_w = warp.step(actions)
    assert obs_w.dtype == torch.float32 and obs_w.shape == obs_c.shape
    assert_close(obs_w, obs_c, "observations")
    assert_close(rew_w, rew_c, "rewards")
    assert torch.equal(done_w.cpu(), done_c.cpu())
    assert set(info_w) == set(info_c)
    for key in info_c:
        assert_close(info_w[key], info_c[key], key)
    if env_cls.ROBOT.name == "ant":
        assert bool(done_c[0]) and bool(info_c["reward_contact"].ne(0).sum() > N // 4), \
            "the comparison must cover a fall and contacts"


def test_resets_follow_the_seeds():
    cpu = BatchedLocomotion(AntVelEnv, 6, convention="maml", nthread=1)
    warp = WarpLocomotion(AntVelEnv, 6, convention="maml")
    tasks = cpu.sample_tasks(6, np.random.default_rng(3))
    seeds = [5, 6, 7, 8, 9, 5]
    cpu.reset(tasks, seeds)
    first = warp.reset(tasks, seeds)
    assert_close(warp.qpos, cpu.qpos, "initial positions", atol=1e-6)
    assert_close(warp.qvel, cpu.qvel, "initial velocities", atol=1e-6)
    torch.testing.assert_close(first[0], first[5])  # same seed, same start
    assert not torch.allclose(first[0], first[1])
    warp.step(torch.zeros(6, warp.act_dim))
    torch.testing.assert_close(warp.reset(tasks, seeds), first)  # a reset clears the episode


def test_stopped_and_ended_episodes_are_masked():
    warp = WarpLocomotion(AntVelEnv, 4, convention="gym")
    warp.reset(warp.sample_tasks(4, np.random.default_rng(0)), 0)
    obs, _, done, _ = warp.step(torch.zeros(4, warp.act_dim))
    assert not done.any()
    warp.stop([1])
    obs2, reward, done, info = warp.step(torch.ones(4, warp.act_dim))
    assert done.tolist() == [False, True, False, False]
    assert reward[1] == 0 and all(v[1] == 0 for v in info.values())
    torch.testing.assert_close(obs2[1], obs[1])  # an ended episode's observation stays
    assert not torch.equal(obs2[0], obs[0])


def test_a_world_that_stops_being_finite_ends_and_cannot_spread():
    warp = WarpLocomotion(AntVelEnv, 3, convention="maml")
    tasks = warp.sample_tasks(3, np.random.default_rng(0))
    warp.reset(tasks, 0)
    reference = WarpLocomotion(AntVelEnv, 3, convention="maml")
    reference.reset(tasks, 0)
    warp.qvel[1] = float("nan")
    _, _, done, _ = warp.step(torch.zeros(3, warp.act_dim))
    _, _, done_ref, _ = reference.step(torch.zeros(3, warp.act_dim))
    assert done.tolist() == [False, True, False]
    assert torch.isfinite(warp.qpos).all() and torch.isfinite(warp.qvel).all()  # world 1 restarted
    for _ in range(3):
        obs, _, _, _ = warp.step(torch.zeros(3, warp.act_dim))
        obs_ref, _, _, _ = reference.step(torch.zeros(3, warp.act_dim))
    torch.testing.assert_close(obs[[0, 2]], obs_ref[[0, 2]])  # the other worlds are untouched


def test_contact_overflow_is_a_clear_error():
    warp = WarpLocomotion(AntVelEnv, 4, convention="maml", nconmax=1)  # the Ant stands on 4 feet
    tasks = warp.sample_tasks(4, np.random.default_rng(0))
    warp.reset(tasks, 0)
    warp.step(torch.zeros(4, warp.act_dim))
    with pytest.raises(RuntimeError, match="raise nconmax"):
        warp.reset(tasks, 0)


def test_bad_input_is_a_clear_error(monkeypatch):
    with pytest.raises(ValueError, match="Navigation2D is plain torch"):
        make_batched("Navigation2D", 2, backend="warp")
    with pytest.raises(ValueError, match="backend must be one of"):
        make_batched("AntVel", 2, backend="jax")
    with pytest.raises(ValueError, match="float32"):
        WarpLocomotion(AntVelEnv, 2, dtype=torch.float64)
    warp = make_batched("HalfCheetahVel", 2, backend="warp")
    warp.reset(warp.sample_tasks(2, np.random.default_rng(0)), 0)
    with pytest.raises(ValueError, match="shape"):
        warp.step(torch.zeros(3, warp.act_dim))
    with pytest.raises(ValueError, match="NaN"):
        warp.step(torch.full((2, warp.act_dim), float("nan")))
    monkeypatch.setitem(sys.modules, "mujoco_warp", None)
    with pytest.raises(ImportError, match=r'pip install "rl_maml\[warp\]"'):
        make_batched("AntVel", 2, backend="warp")


def test_config_checks_the_backend(tmp_path, capsys):
    from rl_maml.experiments.cli import main

    for override, message in [("env.backend=warp", "env.backend=warp steps the MuJoCo locomotion families"),
                              ("env.nconmax=8", "env.nconmax sizes MuJoCo Warp's buffers")]:
        assert main(["train", "navigation", "--run-dir", str(tmp_path / "x"), override]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("preset", ["half_cheetah_vel_maml", "ant_vel_maml"])
def test_maml_trpo_trains_and_evaluates_on_warp(preset, tmp_path, capsys):
    from rl_maml.experiments.cli import main

    tiny = ["train.meta_batch_size=2", "train.fast_batch_size=2", "env.horizon=8", "policy.hidden_sizes=[8]",
            "eval.num_tasks=2", "eval.fast_batch_size=2", "eval.num_steps=1", "eval.test_tasks=sampled",
            "train.batch_steps=16", "eval.batch_steps=16"]
    run = tmp_path / preset
    assert main(["train", preset, "--run-dir", str(run), "--no-progress", "train.num_iterations=2", "env.backend=warp",
                 *tiny]) == 0
    assert main(["eval", "--overwrite", str(run), "eval.baselines=[random]"]) == 0
    assert "| MAML |" in capsys.readouterr().out


def test_the_warp_benchmark_runs_and_writes_its_tables(tmp_path, monkeypatch):
    import json

    from rl_maml.experiments import benchmark_warp

    monkeypatch.setattr(sys, "argv", ["benchmark_warp", "--device", "cpu", "--envs", "HalfCheetahVel", "--sizes", "3",
                                      "--steps", "2", "--iterations", "1", "--tasks", "2", "--episodes", "1",
                                      "--cpu-size", "3", "--out", str(tmp_path)])
    benchmark_warp.main()
    results = json.loads((tmp_path / "warp_benchmark.json").read_text())
    rows = {(r["env"], r["N"]): r for r in results["stepping"]}
    assert rows[("HalfCheetahVel", 3)]["whole_step"] > 0 and rows[("HalfCheetahVel", 3)]["physics"] > 0
    assert {r["backend"] for r in results["iterations"]} == {"warp", "mujoco"}
    assert all(r["total"] > 0 and r["charts/env_steps"] == 2 * 1 * 100 * 2 for r in results["iterations"])
    assert "| HalfCheetahVel | warp |" in (tmp_path / "warp_benchmark.md").read_text()


def test_same_seed_same_episode_on_warps_cpu_device():
    runs = []
    for _ in range(2):
        warp = WarpLocomotion(AntVelEnv, 4, convention="maml")
        obs = warp.reset(warp.sample_tasks(4, np.random.default_rng(1)), 3)
        g = torch.Generator().manual_seed(0)
        for _ in range(15):
            obs, reward, _, _ = warp.step(torch.rand(4, warp.act_dim, generator=g) * 2 - 1)
        runs.append((obs, reward))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
