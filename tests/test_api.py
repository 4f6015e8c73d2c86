"""A user's own meta-env (defined here, not in the package) trained from the CLI and from Python,
evaluated, adapted and acting through the public API."""

from __future__ import annotations

import json

import gymnasium
import numpy as np
import pytest
import torch
import yaml
from gymnasium import spaces

import rl_maml
from rl_maml.config import ConfigError
from rl_maml.experiments.cli import main
from rl_maml.inner import ConstantStepSize, InnerLoop
from rl_maml.rl.baseline import LinearFeatureBaseline
from rl_maml.rl.evaluation import adapt_to_tasks, evaluation_inner
from rl_maml.rl.policy import GaussianMLPPolicy


class PointGoal1D(gymnasium.Env):
    """A point on a line must reach a goal it cannot see; written as pytorch-maml-rl's envs are
    (``sample_tasks(n)`` draws from ``self.np_random``)."""

    def __init__(self):
        self.observation_space = spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.goal = 0.0

    def sample_tasks(self, n):
        return [{"goal": g} for g in self.np_random.uniform(-1.0, 1.0, size=n)]

    def set_task(self, task):
        self.goal = float(task["goal"])

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = float(self.np_random.uniform(-0.05, 0.05))
        return np.array([self.pos], np.float32), {}

    def step(self, action):
        self.pos += 0.1 * float(action[0])
        distance = abs(self.pos - self.goal)
        return np.array([self.pos], np.float32), -distance, distance < 0.02, False, {}


ENV_ID = "TestPointGoal1D-v0"
if ENV_ID not in gymnasium.registry:
    gymnasium.register(ENV_ID, entry_point=PointGoal1D, max_episode_steps=10)

CONFIG = {
    "benchmark": "metarl", "name": "pointgoal", "seed": 3,
    "env": {"id": ENV_ID},
    "policy": {"hidden_sizes": [8]},
    "inner": {"inner_lr": 0.5},
    "train": {"num_iterations": 2, "meta_batch_size": 3, "fast_batch_size": 4, "checkpoint_every": 1},
    "eval": {"num_tasks": 3, "fast_batch_size": 4, "num_steps": 2, "baselines": ["random"]},
}


def test_vector_env_runs_the_users_env_episode_by_episode():
    env = rl_maml.VectorTaskEnv(ENV_ID, 4)
    rl_maml.check_batched_env(env)
    assert (env.horizon, env.obs_dim, env.act_dim) == (10, 1, 1)
    tasks = env.sample_tasks(4, np.random.default_rng(0))
    again = env.sample_tasks(4, np.random.default_rng(0))
    assert tasks["goal"].shape == (4,) and np.array_equal(tasks["goal"], again["goal"])  # seeded by rng
    single = PointGoal1D()
    start = single.reset(seed=10)[0][0]
    tasks["goal"][:] = [start + 0.3, -0.3, 0.5, 0.0]  # env 0 reaches its goal after 3 steps
    obs = env.reset(tasks, [10, 11, 12, 13])
    actions = torch.tensor([[1.0], [-1.0], [3.0], [0.0]])  # 3.0 is clipped to the bound 1.0
    for i in range(4):  # each env is the single env with its task and seed, step by step
        single.set_task({"goal": tasks["goal"][i]})
        o, _ = single.reset(seed=10 + i)
        assert obs[i].item() == pytest.approx(o[0])
    rewards, dones = [], []
    for _ in range(10):
        obs, reward, done, _ = env.step(actions)
        rewards.append(reward)
        dones.append(done)
    ended = torch.stack(dones)
    assert ended[-1].all()  # the horizon ends every episode
    # env 0 reaches its goal (terminated) and is masked from then on: reward 0, done stays True
    first = int(ended[:, 0].nonzero()[0])
    assert first == 2 and ended[first:, 0].all() and not ended[:9, 1:].any()
    assert all(r[0].item() == 0.0 for r in rewards[first + 1:])
    single.set_task({"goal": tasks["goal"][0]})
    single.reset(seed=10)
    for t in range(first + 1):
        _, r, term, _, _ = single.step(np.array([1.0]))
        assert rewards[t][0].item() == pytest.approx(r, abs=1e-6)
    assert term


def test_env_without_the_task_api_or_unregistered_is_a_clear_error():
    with pytest.raises(TypeError, match="sample_tasks"):
        rl_maml.VectorTaskEnv(lambda: gymnasium.make("Pendulum-v1"), 2)
    cfg = rl_maml.load_config(CONFIG, ["env.id=NoSuchMetaEnv-v0"])
    with pytest.raises(ConfigError, match="gymnasium.register"):
        cfg.env.make(2, torch.device("cpu"))
    with pytest.raises(ConfigError, match="env.goal_region applies to the built-in families"):
        rl_maml.load_config(CONFIG, ["env.goal_region=disc"])


def _write(tmp_path, data) -> str:
    path = tmp_path / "pointgoal.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_users_env_trains_from_the_cli_and_from_python_alike_and_the_adapted_policy_acts(tmp_path, capsys):
    config = _write(tmp_path, CONFIG)
    assert main(["train", config, "--run-dir", str(tmp_path / "cli"), "--no-progress"]) == 0
    assert main(["eval", str(tmp_path / "cli")]) == 0
    results = json.loads((tmp_path / "cli" / "eval" / "results.json").read_text())
    assert results["env"] == ENV_ID and len(results["methods"]["maml"]["mean"]) == 3  # after 0, 1, 2 steps
    assert results["provenance"]["packages"]["torch"] == torch.__version__.split("+")[0] or \
        results["provenance"]["packages"]["torch"].startswith(torch.__version__.split("+")[0])
    assert results["device"] == "cpu"
    assert (tmp_path / "cli" / "config.yaml").read_text().startswith("# written by rl_maml ")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "cli" / "tb"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    # returns after every inner step, in seconds, and against the cumulative env steps
    assert {"maml/charts/return_after_0_steps", "maml/charts/return_after_1_steps", "time/iteration_s"} <= scalars
    by_env_steps = EventAccumulator(str(tmp_path / "cli" / "tb" / "env_steps"))  # their own folder
    by_env_steps.Reload()
    steps = [e.step for e in by_env_steps.Scalars("env_steps/maml/charts/return_post")]
    assert steps == sorted(steps) and 0 < steps[0] <= 3 * 4 * 10 * 2  # 3 tasks x 4 episodes x <= 10 steps, twice
    assert "config" in "".join(events.Tags()["tensors"])  # the config as text

    meta = rl_maml.meta_train(rl_maml.load_config(config), tmp_path / "py", progress=False)
    assert isinstance(meta, rl_maml.MetaPolicy) and meta.iteration == 2
    from_cli = rl_maml.MetaPolicy.load(tmp_path / "cli")
    for (name, a), b in zip(meta.policy.state_dict().items(), from_cli.policy.state_dict().values()):
        assert torch.equal(a, b), name  # one seed, one result, whichever way the run was started

    adapted = meta.adapt({"goal": 0.6}, num_steps=1, episodes=4, seed=5)
    assert adapted.returns.shape == (2, 1)
    moved = [n for n, v in adapted.params.items() if not torch.equal(v[0], dict(meta.policy.named_parameters())[n])]
    assert moved  # the step changed the policy
    action, state = adapted.predict(np.array([0.2], np.float32), deterministic=True)
    assert state is None and action.shape == (1,) and -1.0 <= action[0] <= 1.0
    batch, _ = adapted.predict(np.zeros((5, 1), np.float32))
    assert batch.shape == (5, 1)
    same = meta.adapt({"goal": 0.6}, num_steps=1, episodes=4, seed=5)
    assert all(torch.equal(adapted.params[n], same.params[n]) for n in adapted.params)  # seeded
    adapted.save(tmp_path / "adapted.pt")
    loaded = rl_maml.AdaptedPolicy.load_policy(tmp_path / "adapted.pt")
    with torch.no_grad():
        mean, _ = loaded(torch.tensor([[0.2]]))
    assert mean[0, 0].item() == pytest.approx(float(np.clip(adapted.predict(np.array([0.2]))[0][0], -1, 1)), abs=1e-6)
    several = meta.adapt(meta.sample_tasks(2, seed=1), num_steps=2, episodes=3)
    assert several.returns.shape == (3, 2)
    with pytest.raises(ValueError, match="say which one acts"):
        several.predict(np.zeros(1))


def test_evaluation_adapts_with_the_training_step_scales_unless_told_otherwise():
    """eval.step_scales null: the training's inner loop, step by step (here a second step of size 0)."""
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(1, 1, (8,))
    env = rl_maml.VectorTaskEnv(ENV_ID, 2 * 3)
    tasks = {"goal": torch.tensor([0.5, -0.5], dtype=torch.float64)}
    trained = InnerLoop(ConstantStepSize(0.3, (1.0, 0.0)), num_steps=2)

    def run(scales):
        return adapt_to_tasks(policy, env, tasks, evaluation_inner(trained, scales), 2, 3, LinearFeatureBaseline(),
                              0.99, 1.0, seed=4).params

    p0, p1, p2 = run(None)
    assert not torch.equal(p1["log_std"], p0["log_std"]) and all(torch.equal(p1[n], p2[n]) for n in p1)
    q0, q1, q2 = run([1.0, 0.5])  # the paper's alpha, then alpha/2: the second step moves
    assert all(torch.equal(p1[n], q1[n]) for n in p1) and not torch.equal(q2["log_std"], q1["log_std"])


def test_supervised_maml_on_a_users_module():
    """The documented path: a plain nn.Module and a task sampler, meta-trained with meta_loss."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(1, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    model = rl_maml.TaskBatchedModel(net, torch.nn.functional.mse_loss)
    inner = rl_maml.InnerLoop(rl_maml.ConstantStepSize(0.1), num_steps=1)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)

    def sample_tasks(m, k):  # lines y = a x + b, a and b per task
        a, b = torch.randn(m, 1, 1), torch.randn(m, 1, 1)
        x = torch.rand(m, 2 * k, 1) * 2 - 1
        y = a * x + b
        return (x[:, :k], y[:, :k]), (x[:, k:], y[:, k:])

    losses = []
    for _ in range(300):
        support, query = sample_tasks(16, 10)
        out = rl_maml.meta_loss(model, rl_maml.params_of(net), inner, support, query)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append((out.support_losses.mean().item(), out.loss.item()))
    before, after = np.mean([l[0] for l in losses[-50:]]), np.mean([l[1] for l in losses[-50:]])
    assert after < 0.7 * before  # one inner step helps the meta-trained initialisation


def test_a_module_named_in_env_id_registers_the_env_for_the_command_line(tmp_path):
    """`env.id=my_module:Env-v0`: Gymnasium imports the module before the lookup, so a user's env
    trains and evaluates from the console script, PPO baselines included."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    beside = Path(sys.executable).parent / "rl-maml"
    script = str(beside) if beside.exists() else shutil.which("rl-maml")
    assert script, "the rl-maml console script is not installed: pip install -e ."

    (tmp_path / "user_envs.py").write_text(
        "import gymnasium\nimport numpy as np\n\n"
        "class Goal1D(gymnasium.Env):\n"
        "    observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (1,), np.float32)\n"
        "    action_space = gymnasium.spaces.Box(-1.0, 1.0, (1,), np.float32)\n"
        "    def sample_tasks(self, n):\n"
        "        return [{'goal': g} for g in self.np_random.uniform(-1, 1, size=n)]\n"
        "    def set_task(self, task):\n"
        "        self.goal = task['goal']\n"
        "    def reset(self, *, seed=None, options=None):\n"
        "        super().reset(seed=seed)\n"
        "        self.pos = 0.0\n"
        "        return np.array([self.pos], np.float32), {}\n"
        "    def step(self, action):\n"
        "        self.pos += 0.1 * float(action[0])\n"
        "        return np.array([self.pos], np.float32), -abs(self.pos - self.goal), False, False, {}\n\n"
        "gymnasium.register('Goal1D-v0', entry_point=Goal1D, max_episode_steps=8)\n")
    config = _write(tmp_path, {**CONFIG, "env": {"id": "user_envs:Goal1D-v0"},
                               "eval": {**CONFIG["eval"], "baselines": ["random", "pretrained", "oracle"],
                                        "baseline_timesteps": 256}})
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "MPLBACKEND": "Agg"}
    run = tmp_path / "run"
    train = subprocess.run([script, "train", config, "--run-dir", str(run), "--no-progress"],
                           capture_output=True, text=True, env=env, cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    ev = subprocess.run([script, "eval", str(run)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    assert "| oracle (PPO, task observed) |" in ev.stdout and "| pretrained (PPO, adapted) |" in ev.stdout


def test_async_vectorization_gives_the_sync_episodes():
    tasks = {"goal": np.array([0.3, -0.4, 0.8])}
    actions = torch.linspace(-1, 1, 3).view(3, 1)
    out = []
    for vectorization in ("sync", "async"):
        env = rl_maml.VectorTaskEnv(ENV_ID, 3, vectorization=vectorization)
        obs = [env.reset(tasks, [1, 2, 3])]
        rewards = []
        for _ in range(4):
            o, r, _, _ = env.step(actions)
            obs.append(o)
            rewards.append(r)
        env.close()
        out.append((torch.stack(obs), torch.stack(rewards)))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])
