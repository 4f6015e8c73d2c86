"""Training by env-step budget (``train.batch_steps``): episodes that end early are followed by more,
and every masked computation sees only the episodes kept."""

from __future__ import annotations

import json

import gymnasium
import torch
from rl_maml.agents.maml_trpo import MAMLTRPOAgent
from rl_maml.experiments.cli import main

from rl_maml.functional import expand_params
from rl_maml.inner import ConstantStepSize, InnerLoop
from rl_maml.rl.baseline import LinearFeatureBaseline
from rl_maml.rl.episodes import Episodes, sample_step_budget
from rl_maml.rl.maml_trpo import MAMLTRPO, TRPOSettings
from rl_maml.rl.policy import GaussianMLPPolicy
from rl_maml.seeding import torch_generator


class ShortEpisodes:
    """A batched env whose episode lengths follow the reset seeds (1 + seed % horizon); the
    observation drifts with the action, the reward is the action's first entry."""

    obs_dim, act_dim = 2, 2
    device = torch.device("cpu")
    observation_space = action_space = gymnasium.spaces.Box(-1, 1, (2,))

    def __init__(self, num_envs: int, horizon: int):
        self.num_envs, self.horizon = num_envs, horizon

    @staticmethod
    def sample_tasks(n, rng):
        return {"x": rng.uniform(-1, 1, size=n)}

    def reset(self, tasks, seeds):
        self.length = torch.tensor([1 + s % self.horizon for s in seeds])
        self.t = 0
        self.obs = torch.as_tensor(tasks["x"], dtype=torch.float32).view(-1, 1).repeat(1, 2)
        return self.obs.clone()

    def step(self, actions):
        self.t += 1
        self.obs = self.obs + 0.1 * actions.float()
        return self.obs.clone(), actions[:, 0].float(), self.length <= self.t, {}


def _sample(M=3, B=4, T=10, budget=25, seed=5):
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, (8,))
    meta = MAMLTRPO(policy, InnerLoop(ConstantStepSize(0.1), first_order=True), TRPOSettings())
    env = ShortEpisodes(M * B, T)
    tasks = {"x": torch.linspace(-0.5, 0.5, M)}
    eps = sample_step_budget(env, meta.batched, meta.initial_params(M), tasks, B, budget, seed, (0, 0),
                             torch_generator(seed, "actions", 0))
    return meta, eps


def _kept_only(eps: Episodes, m: int) -> Episodes:
    """Task m's kept episodes alone, as if sampled without the budget's extra slots."""
    n = int(eps.kept()[m].sum())
    return Episodes(*(getattr(eps, f)[:, m:m + 1, :n] for f in ("obs", "actions", "rewards", "mask")))


def test_baseline_advantages_and_inner_loss_ignore_the_dropped_episodes():
    meta, eps = _sample()
    kept = eps.kept()
    assert (kept.sum(1) > 4).any()  # a task whose first round of 4 episodes fell short got more
    assert (kept.sum(1) < eps.mask.shape[2]).any()  # and some tasks' slots past their budget are empty
    adv = eps.compute_advantages(LinearFeatureBaseline(), 0.99, 1.0)
    assert (adv[eps.mask == 0] == 0).all()
    losses = meta.inner_loss(expand_params(meta.params(), eps.num_tasks), eps)
    for m in range(eps.num_tasks):
        alone = _kept_only(eps, m)
        alone_adv = alone.compute_advantages(LinearFeatureBaseline(), 0.99, 1.0)
        n = alone.mask.shape[2]
        torch.testing.assert_close(adv[:, m:m + 1, :n], alone_adv, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(losses[m:m + 1], meta.inner_loss(expand_params(meta.params(), 1), alone), atol=1e-6, rtol=1e-5)
        # The mean return is over the kept episodes only (empty slots are not zeros in the average).
        assert eps.task_returns()[m].item() == alone.returns().mean().item()


def test_surrogate_and_kl_ignore_the_dropped_episodes():
    meta, eps = _sample()
    eps.compute_advantages(LinearFeatureBaseline(), 0.99, 1.0)
    adapted = meta.adapt_step(meta.initial_params(eps.num_tasks), eps, 0)
    loss, kl, _ = meta.surrogate(adapted, eps)
    per_task = []
    for m in range(eps.num_tasks):
        alone = _kept_only(eps, m)
        alone.advantages = eps.advantages[:, m:m + 1, :alone.mask.shape[2]]
        per_task.append(meta.surrogate({k: v[m:m + 1] for k, v in adapted.items()}, alone)[0])
    torch.testing.assert_close(loss, torch.stack(per_task).mean(), atol=1e-6, rtol=1e-5)
    assert kl.item() == 0.0


def test_agent_trains_on_the_budget_and_is_deterministic():
    def run():
        torch.manual_seed(0)
        policy = GaussianMLPPolicy(2, 2, (8,))
        env = ShortEpisodes(2 * 3, 6)
        agent = MAMLTRPOAgent(env, policy, InnerLoop(ConstantStepSize(0.1)), TRPOSettings(), 2, 3, seed=1,
                              batch_steps=15)
        logs = agent.train_step(1)
        return logs, {k: v.detach().clone() for k, v in policy.state_dict().items()}

    logs, params = run()
    # 3 episodes of at most 6 steps cannot hold 15: every task got more, and every simulated step counts
    assert logs["charts/episodes_per_task"] > 3
    assert logs["charts/env_steps"] >= 2 * 2 * 15  # 2 tasks x (train + valid) x the budget
    logs2, params2 = run()
    untimed = {k: v for k, v in logs.items() if not k.startswith("time/")}
    assert {k: logs2[k] for k in untimed} == untimed and all(torch.equal(params[k], params2[k]) for k in params)


def test_agent_runs_rollouts_with_the_callers_threads_and_the_rest_with_meta_step_threads(thread_counts):
    """Rollouts keep the caller's thread count (train.num_threads, MuJoCo's cores); the baseline
    fits, inner updates and meta-step use meta_step_threads; the caller's count is restored."""
    seen, watch = thread_counts
    watch("rollout", ShortEpisodes, "step")
    watch("baseline", LinearFeatureBaseline, "fit_predict")
    watch("inner", InnerLoop, "step")
    watch("meta", MAMLTRPO, "meta_step")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        agent = MAMLTRPOAgent(ShortEpisodes(2 * 3, 6), GaussianMLPPolicy(2, 2, (8,)), InnerLoop(ConstantStepSize(0.1)),
                              TRPOSettings(), 2, 3, seed=1, batch_steps=15, meta_step_threads=2)
        agent.train_step(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert seen == {"rollout": {1}, "baseline": {2}, "inner": {2}, "meta": {2}}


def test_batch_steps_end_to_end_and_config_error(tmp_path, capsys):
    run = tmp_path / "nav"
    tiny = ["train.meta_batch_size=2", "train.fast_batch_size=2", "env.horizon=8", "policy.hidden_sizes=[8]",
            "eval.num_tasks=2", "eval.fast_batch_size=2", "eval.num_steps=1", "--no-progress"]
    assert main(["train", "navigation", "--run-dir", str(run), "train.num_iterations=1", "train.batch_steps=20",
                 *tiny]) == 0
    assert main(["eval", str(run), "eval.baselines=[random]"]) == 0
    assert json.loads((run / "eval" / "results.json").read_text())["methods"]["maml"]["mean"]
    capsys.readouterr()
    assert main(["train", "navigation", "--run-dir", str(tmp_path / "bad"), "train.batch_steps=0"]) == 2
    assert "train.batch_steps must be >= 1" in capsys.readouterr().err


def test_packed_rows_give_the_dense_layouts_values_in_float64():
    """per_task packs the rows of masked steps away; inner loss, surrogate, KL and the Fisher
    product are those of the dense layout (float64, where only the summation order differs)."""
    from rl_maml.rl import episodes as episodes_module

    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, (8,)).double()
    meta = MAMLTRPO(policy, InnerLoop(ConstantStepSize(0.3)), TRPOSettings())
    T, M, B = 12, 3, 5
    lengths = torch.randint(1, T + 1, (M, B))
    mask = (torch.arange(T).view(T, 1, 1) < lengths).double()
    g = torch.Generator().manual_seed(1)

    def episodes():
        e = Episodes(torch.randn(T, M, B, 2, generator=g, dtype=torch.float64),
                     torch.randn(T, M, B, 2, generator=g, dtype=torch.float64),
                     torch.randn(T, M, B, generator=g, dtype=torch.float64) * mask, mask.clone())
        e.compute_advantages(LinearFeatureBaseline(), 0.99, 1.0)
        return e

    train, valid = episodes(), episodes()
    assert train._packed_rows() is not None and train.per_task(train.obs).shape[1] == int(lengths.sum(1).max())

    def objectives():
        adapted = meta.adapt_all([train])
        loss, kl, _ = meta.meta_objective(adapted, [train], valid)
        grad = torch.autograd.grad(loss, list(policy.parameters()))
        v = torch.cat([p.detach().flatten() for p in policy.parameters()])
        fvp = meta.fisher_vector_product([train], valid, 1e-5, states=adapted)(v)
        return loss.detach(), kl.detach(), torch.cat([x.flatten() for x in grad]), fvp

    packed = objectives()
    old = episodes_module.PACK_BELOW
    try:
        episodes_module.PACK_BELOW = 0.0  # never pack: the dense [M, T * B] rows
        train._rows_cache = valid._rows_cache = None
        assert train._packed_rows() is None
        dense = objectives()
    finally:
        episodes_module.PACK_BELOW = old
    for a, b in zip(packed, dense):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_stopping_unneeded_episodes_keeps_the_same_episodes():
    """Envs with stop(): episodes the budget will drop are not simulated to their end; the kept
    episodes are the same, draw for draw, as without stopping."""
    from rl_maml.envs import make_batched

    from rl_maml.functional import TaskBatchedModel

    class NoStop:  # the same env without its stop method
        def __init__(self, env):
            self.env = env
            self.num_envs, self.horizon, self.obs_dim, self.act_dim = env.num_envs, env.horizon, env.obs_dim, env.act_dim

        def reset(self, tasks, seeds):
            return self.env.reset(tasks, seeds)

        def step(self, actions):
            return self.env.step(actions)

    M, B, budget = 2, 3, 100
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(125, 8, (8,))
    params = expand_params(dict(policy.named_parameters()), M)
    tasks = {"velocity": torch.tensor([0.5, 2.0], dtype=torch.float64)}
    results = []
    for wrap in (lambda e: e, NoStop):
        env = wrap(make_batched("AntVel", M * B, convention="maml", horizon=60))
        results.append(sample_step_budget(env, TaskBatchedModel(policy), params, tasks, B, budget, 3, (0, 0),
                                          torch_generator(3, "actions", 0)))
    stopped, full = results
    assert torch.equal(stopped.mask, full.mask) and torch.equal(stopped.rewards, full.rewards)
    m = full.mask.unsqueeze(-1)
    assert torch.equal(stopped.obs * m, full.obs * m) and torch.equal(stopped.actions * m, full.actions * m)
    # 3 episodes of up to 60 steps for a budget of 100: the third was stopped once the first two held it
    assert stopped.env_steps() < full.env_steps()
