"""Meta-RL math: returns and GAE by hand, the baseline fit, conjugate gradient, Fisher-vector
products against explicit matrices, the line search, the sampler's masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rl_maml.inner import AdaptationMask, ConstantStepSize, InnerLoop
from rl_maml.rl.baseline import LinearFeatureBaseline
from rl_maml.rl.episodes import Episodes
from rl_maml.functional import expand_params
from rl_maml.rl.maml_trpo import MAMLTRPO, TRPOSettings
from rl_maml.rl.policy import GaussianMLPPolicy, kl_divergence, log_prob
from rl_maml.rl.returns import discounted_returns, gae, normalize_per_task
from rl_maml.rl.trpo import conjugate_gradient, fisher_vector_product, flat, line_search


def test_discounted_returns_and_gae_by_hand():
    # One episode of 3 steps that ends after step 1 (mask 1, 1, 0), gamma 0.9, lambda 0.8.
    r = torch.tensor([1.0, 2.0, 5.0]).view(3, 1)
    m = torch.tensor([1.0, 1.0, 0.0]).view(3, 1)
    v = torch.tensor([0.5, 1.5, 9.0]).view(3, 1)
    ret = discounted_returns(r, m, 0.9)
    assert ret.flatten().tolist() == pytest.approx([1 + 0.9 * 2, 2.0, 0.0])
    # deltas: d1 = 2 - 1.5 (episode over: V after it is 0); d0 = 1 + 0.9 * 1.5 - 0.5
    d0, d1 = 1 + 0.9 * 1.5 - 0.5, 2 - 1.5
    adv = gae(r, v, m, 0.9, 0.8)
    assert adv.flatten().tolist() == pytest.approx([d0 + 0.9 * 0.8 * d1, d1, 0.0])
    # lambda = 1 and a zero baseline give the discounted returns.
    assert torch.allclose(gae(r, torch.zeros_like(v), m, 0.9, 1.0), ret)


def test_normalize_per_task_ignores_masked_steps():
    x = torch.tensor([[[1.0, 3.0], [10.0, 20.0]], [[100.0, 5.0], [30.0, 40.0]]])  # [T=2, M=2, B=2]
    mask = torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[0.0, 1.0], [1.0, 1.0]]])
    y = normalize_per_task(x, mask)
    for task in range(2):
        vals = y[:, task][mask[:, task] > 0]
        assert abs(vals.mean().item()) < 1e-6 and abs(vals.std(unbiased=False).item() - 1) < 1e-3
    assert y[1, 0, 0] == 0


def test_baseline_recovers_linear_returns_per_task():
    g = torch.Generator().manual_seed(0)
    T, M, B, d = 12, 3, 4, 2
    obs = torch.rand(T, M, B, d, generator=g)
    feats = LinearFeatureBaseline.features(obs)
    coef = torch.randn(M, feats.shape[-1], generator=g)
    returns = torch.einsum("tmbf,mf->tmb", feats, coef)
    mask = torch.ones(T, M, B)
    mask[8:, :, 0] = 0  # one episode per task ends early; its padding holds garbage
    returns = torch.where(mask > 0, returns, torch.full_like(returns, 1e6))
    values = LinearFeatureBaseline(reg_coeff=1e-10).fit_predict(obs, returns, mask)
    assert torch.allclose(values * mask, returns * mask, atol=1e-3)
    assert (values[mask == 0] == 0).all()


@pytest.mark.parametrize("chunk_rows", [1, 16384])
def test_baseline_fits_only_each_tasks_steps_whatever_the_chunking(chunk_rows, monkeypatch):
    """The fit equals a per-task float64 ridge regression on that task's unmasked steps alone,
    with tasks of different lengths, garbage in the padding, and any number of tasks per chunk."""
    monkeypatch.setattr(LinearFeatureBaseline, "CHUNK_ROWS", chunk_rows)
    g = torch.Generator().manual_seed(1)
    T, M, B, d = 15, 3, 4, 2
    obs = torch.randn(T, M, B, d, generator=g) * 4
    returns = torch.randn(T, M, B, generator=g)
    lengths = torch.tensor([[15, 3, 9, 0], [1, 15, 15, 15], [7, 7, 2, 5]])  # [M, B]
    mask = (torch.arange(T).view(T, 1, 1) < lengths).float()
    obs = torch.where(mask.unsqueeze(-1) > 0, obs, torch.full_like(obs, 1e6))
    values = LinearFeatureBaseline(reg_coeff=1e-5).fit_predict(obs, returns, mask)
    feats = LinearFeatureBaseline.features(obs).double()
    for m in range(M):
        keep = mask[:, m] > 0
        x, y = feats[:, m][keep].numpy(), returns[:, m][keep].double().numpy()
        coef = np.linalg.solve(x.T @ x + 1e-5 * np.eye(x.shape[1]), x.T @ y)
        np.testing.assert_allclose(values[:, m][keep].numpy(), x @ coef, rtol=1e-4, atol=1e-4)
    assert (values[mask == 0] == 0).all()


_THREADED_FIT = """
import sys, numpy as np, torch
from rl_maml.rl.baseline import LinearFeatureBaseline
torch.set_num_threads(2)
g = torch.Generator().manual_seed(0)
T, M, B, d = 40, 3, 10, 100  # 204 features, as large as Ant's 254 for the bug
obs, returns = torch.randn(T, M, B, d, generator=g), torch.randn(T, M, B, generator=g)
mask = torch.ones(T, M, B)
values = LinearFeatureBaseline().fit_predict(obs, returns, mask)
feats = LinearFeatureBaseline.features(obs).double()
for m in range(M):
    x, y = feats[:, m].reshape(-1, feats.shape[-1]).numpy(), returns[:, m].reshape(-1).double().numpy()
    coef = np.linalg.solve(x.T @ x + 1e-5 * np.eye(x.shape[1]), x.T @ y)
    np.testing.assert_allclose(values[:, m].reshape(-1).numpy(), x @ coef, rtol=1e-4, atol=1e-4)
print("fitted")
"""


def test_baseline_fit_with_two_threads_and_many_features():
    """With two torch threads and about 200 features (Ant's observation gives 254), the batched
    LU of ``torch.linalg.solve`` printed MKL errors and hung (pytorch/pytorch#142815); the
    Cholesky fit finishes and agrees with numpy. In a subprocess, so that a hang fails the test."""
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", _THREADED_FIT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "fitted" in done.stdout, done.stderr[-2000:]
    assert "MKL ERROR" not in done.stderr


def test_baseline_ridge_grows_until_the_system_is_positive_definite():
    """A system that is not positive definite at the initial ridge gets a ten times larger one,
    five tries in all; past that the fit stops with an error that names the likely cause."""
    xtx = torch.diag(torch.tensor([1.0, -1e-3], dtype=torch.float64)).unsqueeze(0)  # needs reg > 1e-3
    xty = torch.tensor([[[2.0], [3.0]]], dtype=torch.float64)
    coef = LinearFeatureBaseline._ridge_solve(xtx, xty, 1e-5)
    expected = torch.linalg.solve(xtx[0] + 1e-2 * torch.eye(2, dtype=torch.float64), xty[0])  # 1e-5 * 10^3
    torch.testing.assert_close(coef[0], expected)
    with pytest.raises(FloatingPointError, match="no finite solution"):
        LinearFeatureBaseline._ridge_solve(-torch.eye(2, dtype=torch.float64).unsqueeze(0), xty, 1e-5)
    with pytest.raises(ValueError, match="reg_coeff"):
        LinearFeatureBaseline(reg_coeff=0.0)


def test_conjugate_gradient_matches_numpy_solve():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((8, 8))
    spd = a @ a.T + 8 * np.eye(8)
    b = rng.standard_normal(8)
    A = torch.tensor(spd)
    x, r = conjugate_gradient(lambda v: A @ v, torch.tensor(b), iters=20, residual_tol=1e-28)
    np.testing.assert_allclose(x.numpy(), np.linalg.solve(spd, b), rtol=1e-8, atol=1e-10)
    assert torch.allclose(r, torch.tensor(b) - A @ x, atol=1e-10)


def test_fisher_vector_product_equals_explicit_fisher(float64):
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, (3,), "tanh", init_std=0.7)
    obs = torch.randn(5, 2)
    names = [n for n, _ in policy.named_parameters()]
    params = list(policy.parameters())
    mean, log_std = policy(obs)
    kl = kl_divergence(mean.detach(), log_std.detach(), *policy(obs)).mean()
    fvp = fisher_vector_product(kl, params, damping=0.0)

    # Explicit Fisher of a Gaussian policy, averaged over states: J_mu^T diag(1/sigma^2) J_mu for
    # the mean network's parameters and 2 I for the log standard deviations, no cross terms.
    sizes = [p.numel() for p in params]
    starts = dict(zip(names, np.cumsum([0, *sizes[:-1]])))
    mean_names = [n for n in names if n != "log_std"]
    mean_index = torch.cat([torch.arange(starts[n], starts[n] + policy.get_parameter(n).numel()) for n in mean_names])
    std_index = torch.arange(starts["log_std"], starts["log_std"] + 2)
    sigma2 = torch.exp(2 * policy.log_std.detach())
    theta0 = flat([policy.get_parameter(n).detach() for n in mean_names])
    shapes = [policy.get_parameter(n).shape for n in mean_names]

    n = sum(sizes)
    fisher = torch.zeros(n, n)
    for s in obs:
        def mean_of(theta, s=s):
            chunks = torch.split(theta, [math.prod(sh) for sh in shapes])
            named = {k.removeprefix("mean."): c.view(sh) for k, c, sh in zip(mean_names, chunks, shapes)}
            return torch.func.functional_call(policy.mean, named, (s,))

        jac = torch.autograd.functional.jacobian(mean_of, theta0)  # [act_dim, n_mean]
        fisher[mean_index.unsqueeze(1), mean_index] += jac.T @ torch.diag(1 / sigma2) @ jac / len(obs)
    fisher[std_index.unsqueeze(1), std_index] = 2 * torch.eye(2)
    v = torch.randn(n)
    assert torch.allclose(fvp(v), fisher @ v, atol=1e-10)


def tiny_episodes(T=6, M=2, B=3, obs_dim=2, act_dim=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(T, M, B)
    mask[4:, 0, 1] = 0
    eps = Episodes(torch.randn(T, M, B, obs_dim, generator=g), torch.randn(T, M, B, act_dim, generator=g),
                   torch.randn(T, M, B, generator=g) * mask, mask)
    eps.advantages = torch.randn(T, M, B, generator=g) * mask
    return eps


def test_fisher_vector_product_through_the_adaptation_graph(float64):
    """Through MAML's second-order graph the FVP is the Hessian of the KL of the adapted policies."""
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, (3,), "tanh")
    meta = MAMLTRPO(policy, InnerLoop(ConstantStepSize(0.3), 1), TRPOSettings())
    train, valid = [tiny_episodes(seed=1)], tiny_episodes(seed=2)
    params = list(policy.parameters())
    _, kl, old = meta.surrogate(meta.adapt(train), valid)
    fvp = fisher_vector_product(kl, params, damping=0.0)
    shapes = [p.shape for p in params]
    names = [n for n, _ in policy.named_parameters()]

    def kl_of(theta):
        chunks = torch.split(theta, [math.prod(s) for s in shapes])
        named = {n: c.view(s) for n, c, s in zip(names, chunks, shapes)}
        adapted = meta.adapt_step(expand_params(named, train[0].num_tasks), train[0], 0, create_graph=True)
        return meta.surrogate(adapted, valid, old)[1]

    hessian = torch.autograd.functional.hessian(kl_of, flat([p.detach() for p in params]))
    v = torch.randn(hessian.shape[0])
    assert torch.allclose(fvp(v), hessian @ v, atol=1e-9)


@pytest.mark.parametrize("case", ["one step", "two steps", "masked", "first order", "every step",
                                  "every step, three", "every step, first order", "lvc", "two steps, lvc"])
@pytest.mark.parametrize("method", ["closed_form", "autograd"])
def test_structured_fvp_equals_autograd_through_the_full_graph(float64, case, method):
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, (5, 4) if "two" in case else (5,), "relu" if "lvc" in case else "tanh")
    mask = AdaptationMask.only({"mean.layers.2.weight", "mean.layers.2.bias"}) if case == "masked" else None
    steps = 3 if "three" in case else 2 if case.startswith(("two steps", "every step")) else 1
    inner = InnerLoop(ConstantStepSize(0.3, (1.0, 0.5)), steps, first_order="first order" in case, mask=mask)
    meta = MAMLTRPO(policy, inner, TRPOSettings(surrogate_steps="every" if "every" in case else "final",
                                                inner_objective="lvc" if "lvc" in case else "reinforce", fvp=method))
    train, valid = [tiny_episodes(seed=1 + s) for s in range(steps)], tiny_episodes(seed=9)
    params = list(policy.parameters())
    _, kl, old = meta.meta_objective(meta.adapt_all(train), train, valid)
    reference = fisher_vector_product(kl, params, damping=0.01)
    structured = meta.fisher_vector_product(train, valid, damping=0.01)
    for seed in range(3):
        v = torch.randn(sum(p.numel() for p in params), generator=torch.Generator().manual_seed(seed))
        assert torch.allclose(structured(v), reference(v), atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("first_order, fisher_order", [(False, "first"), (True, "second"), (True, "inner"),
                                                       (False, "inner")])
@pytest.mark.parametrize("method", ["closed_form", "autograd", "finite_difference"])
def test_fisher_order_sets_the_products_jacobian_apart_from_the_meta_gradient(float64, first_order, fisher_order,
                                                                             method):
    """trpo.fisher_order: the product is the Hessian of the KL through the adaptation's graph
    (second) or through adapted parameters whose inner gradient is held constant (first, J = I),
    whatever the meta-gradient's order; ``inner`` follows inner.first_order. The two settings'
    products differ (the test would not pass with the option ignored)."""
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, (5, 4), "tanh")
    train, valid = [tiny_episodes(seed=1 + s) for s in range(2)], tiny_episodes(seed=9)
    params = list(policy.parameters())
    second = fisher_order == "second" or (fisher_order == "inner" and not first_order)
    extra = {"fd_eps": 1e-6} if method == "finite_difference" else {}
    meta = MAMLTRPO(policy, InnerLoop(ConstantStepSize(0.3, (1.0, 0.5)), 2, first_order=first_order),
                    TRPOSettings(fvp=method, fisher_order=fisher_order, **extra))
    assert meta.fisher_second_order() == second
    vs = [torch.randn(sum(p.numel() for p in params), generator=torch.Generator().manual_seed(seed))
          for seed in range(2)]
    expected = {}  # before the finite-difference product moves the parameters in place (and back)
    for order in (False, True):
        _, kl, old = meta.meta_objective(meta.adapt_all(train, create_graph=order), train, valid)
        product = fisher_vector_product(kl, params, damping=0.01)
        expected[order] = [product(v) for v in vs]
    if method == "finite_difference":
        fvp = meta.finite_difference_fvp(train, valid, 0.01, old)
    else:
        fvp = meta.fisher_vector_product(train, valid, damping=0.01)
    for v, by_second, by_first in zip(vs, expected[True], expected[False]):
        torch.testing.assert_close(fvp(v), by_second if second else by_first, atol=1e-8, rtol=1e-6)
        assert (by_second - by_first).norm() > 1e-3 * by_second.norm()
    if method == "finite_difference":  # the meta-step passes its adapted parameters: the same product
        given = meta.finite_difference_fvp(train, valid, 0.01, old, states=meta.adapt_all(train))
        torch.testing.assert_close(given(vs[0]), fvp(vs[0]), atol=1e-12, rtol=1e-10)
    with pytest.raises(ValueError, match="fisher_order must be"):
        TRPOSettings(fisher_order="third")


def test_finite_difference_fvp_is_the_references_product(float64):
    """trpo.fvp=finite_difference: the symmetric difference of the KL's gradient through the
    adaptation at theta +- (fd_eps / |theta|) v. With a small fd_eps it is the exact product; with
    the reference's fd_eps=1 it is that difference by hand (not the exact product), and the
    parameters come back bit for bit."""
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, (5,), "tanh")
    train, valid = [tiny_episodes(seed=1)], tiny_episodes(seed=9)
    params = list(policy.parameters())
    before = flat([p.detach() for p in params]).clone()
    exact_meta = MAMLTRPO(policy, InnerLoop(ConstantStepSize(0.3), 1), TRPOSettings())
    _, kl, old = exact_meta.meta_objective(exact_meta.adapt_all(train), train, valid)
    exact = fisher_vector_product(kl, params, damping=0.01)
    v = torch.randn(before.numel(), generator=torch.Generator().manual_seed(3))
    exact_v = exact(v)  # before the products below move the parameters in place (and back)

    small = MAMLTRPO(policy, InnerLoop(ConstantStepSize(0.3), 1), TRPOSettings(fvp="finite_difference", fd_eps=1e-6))
    torch.testing.assert_close(small.finite_difference_fvp(train, valid, 0.01, old)(v), exact_v, rtol=1e-6, atol=1e-8)

    meta = MAMLTRPO(policy, InnerLoop(ConstantStepSize(0.3), 1), TRPOSettings(fvp="finite_difference"))
    product = meta.finite_difference_fvp(train, valid, 0.01, old)(v)
    assert torch.equal(flat([p.detach() for p in params]), before)
    eps = 1.0 / (before.norm().item() + 1e-8)  # the reference: base_eps / (norm(theta) + 1e-8)

    def kl_grad(theta):
        with torch.no_grad():
            for p, c in zip(params, torch.split(theta, [p.numel() for p in params])):
                p.copy_(c.view_as(p))
        _, k, _ = meta.meta_objective(meta.adapt_all(train), train, valid, old)
        return flat(torch.autograd.grad(k, params))

    by_hand = (kl_grad(before + eps * v) - kl_grad(before - eps * v)) / (2 * eps) + 0.01 * v
    torch.testing.assert_close(product, by_hand, rtol=1e-10, atol=1e-12)
    assert (product - exact_v).norm() > 1e-3 * exact_v.norm()  # at eps = 1/|theta| it is not the exact product


def test_finite_difference_meta_step_trains_and_checks_its_settings(float64):
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, (5,), "tanh")
    meta = MAMLTRPO(policy, InnerLoop(ConstantStepSize(0.3), 1), TRPOSettings(fvp="finite_difference", max_kl=1e-3))
    train, valid = [tiny_episodes(seed=1)], tiny_episodes(seed=9)
    before = flat([p.detach() for p in policy.parameters()]).clone()
    logs = meta.meta_step(train, valid)
    assert logs["charts/ls_accepted"] == 1.0 and logs["losses/kl_after"] <= 1e-3
    assert logs["losses/surrogate_after"] < logs["losses/surrogate_before"]
    assert not torch.equal(flat([p.detach() for p in policy.parameters()]), before)
    with pytest.raises(ValueError, match="fd_eps must be > 0"):
        TRPOSettings(fvp="finite_difference", fd_eps=0.0)
    with pytest.raises(ValueError, match="inner_objective=reinforce"):
        TRPOSettings(fvp="finite_difference", inner_objective="lvc")
    with pytest.raises(ValueError, match="trpo.fvp_subsample=1.0"):
        TRPOSettings(fvp="finite_difference", fvp_subsample=0.5)
    with pytest.raises(ValueError, match="keep fvp=finite_difference"):
        TRPOSettings(fvp="finite_difference", fvp_dtype="bfloat16")


def test_line_search_rejects_and_restores_exactly():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    before = w.detach().clone()
    accepted, steps, *_ = line_search([w], torch.tensor([0.5, 0.5]), lambda: (5.0, 0.0), loss_before=1.0,
                                      max_kl=0.01, max_steps=4)
    assert not accepted and steps == 4 and torch.equal(w.detach(), before)
    # A step that improves the loss but breaks the KL bound at full size is shrunk until it fits.
    calls = []

    def evaluate():
        dist = (w.detach() - before).norm().item()
        calls.append(dist)
        return -dist, dist  # loss improves with any step; kl = distance

    accepted, steps, loss, kl = line_search([w], torch.tensor([1.0, 0.0]), evaluate, 0.0, max_kl=0.7,
                                            backtrack_ratio=0.8)
    assert accepted and steps == 3 and kl == pytest.approx(0.64) and torch.allclose(w.detach(), before - 0.64 *
                                                                                      torch.tensor([1.0, 0.0]))


def test_meta_step_improves_surrogate_or_leaves_parameters():
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, (8,))
    meta = MAMLTRPO(policy, InnerLoop(ConstantStepSize(0.1), 1), TRPOSettings(max_kl=0.01))
    train, valid = [tiny_episodes(seed=1)], tiny_episodes(seed=2)
    before = [p.detach().clone() for p in policy.parameters()]
    logs = meta.meta_step(train, valid)
    if logs["charts/ls_accepted"]:
        assert logs["losses/surrogate_after"] < logs["losses/surrogate_before"]
        assert logs["losses/kl_after"] < 0.01
    else:
        assert all(torch.equal(a, b) for a, b in zip(before, policy.parameters()))
    # Non-finite advantages are an error and the parameters stay as they were.
    valid.advantages = valid.advantages * float("nan")
    before = [p.detach().clone() for p in policy.parameters()]
    with pytest.raises(FloatingPointError, match="not finite"):
        meta.meta_step(train, valid)
    assert all(torch.equal(a, b) for a, b in zip(before, policy.parameters()))


def test_every_step_objective_scores_each_adapted_policy_on_its_own_episodes(float64):
    """surrogate_steps="every": the mean over steps k = 1..S of the k-step policy's surrogate on the
    episodes it sampled (train[k], valid for k = S); "final" scores the last one only."""
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, (5,), "tanh")
    inner = InnerLoop(ConstantStepSize(0.3, (1.0, 0.5)), 3)
    train, valid = [tiny_episodes(seed=1 + s) for s in range(3)], tiny_episodes(seed=9)
    every = MAMLTRPO(policy, inner, TRPOSettings(surrogate_steps="every"))
    final = MAMLTRPO(policy, inner, TRPOSettings())
    states = every.adapt_all(train)
    assert every.scored_steps(3) == [1, 2, 3] and final.scored_steps(3) == [3] and every.scored_steps(0) == [0]
    parts = [every.surrogate(states[1], train[1]), every.surrogate(states[2], train[2]),
             every.surrogate(states[3], valid)]
    loss, kl, _ = every.meta_objective(states, train, valid)
    assert torch.allclose(loss, sum(p[0] for p in parts) / 3) and kl.abs() < 1e-12
    assert torch.allclose(final.meta_objective(states, train, valid)[0], parts[2][0])
    # The meta-step on the averaged objective improves it, or leaves the parameters as they were.
    before = [p.detach().clone() for p in policy.parameters()]
    logs = every.meta_step(train, valid)
    if logs["charts/ls_accepted"]:
        assert logs["losses/surrogate_after"] < logs["losses/surrogate_before"] and logs["losses/kl_after"] < 0.01
    else:
        assert all(torch.equal(a, b) for a, b in zip(before, policy.parameters()))
    with pytest.raises(ValueError, match="surrogate_steps must be 'final' or 'every'"):
        TRPOSettings(surrogate_steps="last")
    with pytest.raises(ValueError, match="after 0..3 steps"):
        every.meta_step(train, valid, adapted=states[1:])


def test_log_prob_and_kl_against_torch_distributions():
    mean, log_std = torch.randn(4, 3), torch.randn(4, 3) * 0.3
    a = torch.randn(4, 3)
    ref = torch.distributions.Normal(mean, log_std.exp())
    assert torch.allclose(log_prob(mean, log_std, a), ref.log_prob(a).sum(-1), atol=1e-5)
    mean1, log_std1 = torch.randn(4, 3), torch.randn(4, 3) * 0.3
    ref1 = torch.distributions.Normal(mean1, log_std1.exp())
    assert torch.allclose(kl_divergence(mean, log_std, mean1, log_std1),
                          torch.distributions.kl_divergence(ref, ref1).sum(-1), atol=1e-5)


def test_output_init_scale_starts_the_mean_near_zero():
    torch.manual_seed(0)
    obs = torch.randn(64, 2)
    wide = GaussianMLPPolicy(2, 2, (16,))(obs)[0].abs().mean()
    torch.manual_seed(0)
    small = GaussianMLPPolicy(2, 2, (16,), output_init_scale=0.01)(obs)[0].abs().mean()
    assert small < 0.02 * wide
    with pytest.raises(ValueError, match="output_init_scale"):
        GaussianMLPPolicy(2, 2, output_init_scale=0.0)


def test_xavier_init_is_glorot_uniform_with_zero_biases():
    """``init="xavier"`` (rllab's): weights within the Glorot bound sqrt(6 / (fan_in + fan_out)) with
    about the bound's variance, zero biases; it moves the mean further per gradient step."""
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(20, 6, (100, 100), init="xavier")
    layers = [m for m in policy.mean.modules() if isinstance(m, torch.nn.Linear)]
    assert len(layers) == 3
    for layer in layers:
        fan_out, fan_in = layer.weight.shape
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        assert layer.weight.abs().max() <= bound
        assert abs(layer.weight.var().item() - bound ** 2 / 3) < 0.1 * bound ** 2 / 3
        assert torch.count_nonzero(layer.bias) == 0

    def output_change(p):  # first-order change of sum(mean) after a gradient step of size 1 on it
        obs = torch.randn(64, 20, generator=torch.Generator().manual_seed(1))
        params = [q for n, q in p.named_parameters() if n != "log_std"]
        grads = torch.autograd.grad(p(obs)[0].sum(), params)
        return sum((g * g).sum() for g in grads).item()

    torch.manual_seed(0)
    assert output_change(policy) > 2 * output_change(GaussianMLPPolicy(20, 6, (100, 100)))
    with pytest.raises(ValueError, match="init"):
        GaussianMLPPolicy(2, 2, init="he")


def test_fvp_subsample_uses_the_first_episodes(float64):
    """With fvp_subsample the curvature comes from the first episodes of each task only, taken at
    the parameters adapted on all episodes: ``J_sub^T F_sub J_sub`` with ``J_sub = I - alpha H_sub``."""
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, (5,), "tanh")
    alpha = 0.3
    meta = MAMLTRPO(policy, InnerLoop(ConstantStepSize(alpha), 1), TRPOSettings(fvp_subsample=0.3))
    train, valid = [tiny_episodes(seed=1)], tiny_episodes(seed=9)  # B = 3 episodes: the first one is kept
    sub_train, sub_valid = [train[0].first_episodes(1)], valid.first_episodes(1)
    assert sub_valid.obs.shape[2] == 1 and torch.equal(sub_valid.obs[:, :, 0], valid.obs[:, :, 0])
    names = [n for n, _ in policy.named_parameters()]
    shapes = [p.shape for p in policy.parameters()]
    M = valid.num_tasks
    theta0 = flat([p.detach() for p in policy.parameters()])
    full = {k: v.detach() for k, v in meta.adapt(train).items()}  # adapted on all episodes
    _, _, old = meta.surrogate(full, sub_valid)

    def unflatten(theta):
        chunks = torch.split(theta, [math.prod(sh) for sh in shapes])
        return {n: c.view(sh).unsqueeze(0).expand(M, *sh) for n, c, sh in zip(names, chunks, shapes)}

    def sub_grads(expanded):
        return torch.autograd.grad(meta.inner_loss(expanded, sub_train[0]).sum(), list(expanded.values()),
                                   create_graph=True)

    base, g0 = unflatten(theta0), [g.detach() for g in sub_grads(unflatten(theta0.clone().requires_grad_(True)))]

    def kl_of(theta):  # equals the full-data adapted point at theta0, with the subsample's Jacobian
        expanded = unflatten(theta)
        moved = {n: full[n] + (expanded[n] - base[n]) - alpha * (g - g_0)
                 for n, g, g_0 in zip(names, sub_grads(expanded), g0)}
        return meta.surrogate(moved, sub_valid, old)[1]

    hessian = torch.autograd.functional.hessian(kl_of, theta0)
    calls = []
    original = meta.fisher_vector_product

    def spy(tr, va, damping, states=None):
        calls.append((tr[0].obs.shape, va.obs.shape))
        fvp = original(tr, va, damping, states=states)
        v = torch.randn(theta0.numel())
        assert torch.allclose(fvp(v), hessian @ v + damping * v, atol=1e-10)
        return fvp

    meta.fisher_vector_product = spy
    evaluated = []
    original_adapt = meta.adapt_all
    meta.adapt_all = lambda tr, *a, **kw: evaluated.append(tr[0].obs.shape) or original_adapt(tr, *a, **kw)
    logs = meta.meta_step(train, valid)
    assert calls == [(sub_train[0].obs.shape, sub_valid.obs.shape)]
    # The gradient and the line search use every episode.
    assert set(evaluated) <= {train[0].obs.shape} and len(evaluated) == logs["charts/ls_steps"] + 1
    with pytest.raises(ValueError, match="fvp_subsample"):
        TRPOSettings(fvp_subsample=0.0)


def _inner_grad_and_hessian(objective: str, policy, episodes):
    """Gradient and Hessian of task 0's inner loss w.r.t. the flat parameters."""
    meta = MAMLTRPO(policy, InnerLoop(ConstantStepSize(0.3), 1), TRPOSettings(inner_objective=objective))
    names = [n for n, _ in policy.named_parameters()]
    shapes = [p.shape for p in policy.parameters()]

    def loss_of(theta):
        chunks = torch.split(theta, [math.prod(s) for s in shapes])
        params = {n: c.view(s).unsqueeze(0).expand(episodes.num_tasks, *s) for n, c, s in zip(names, chunks, shapes)}
        return meta.inner_loss(params, episodes)[0]

    theta = flat([p.detach() for p in policy.parameters()])
    return torch.autograd.functional.jacobian(loss_of, theta), torch.autograd.functional.hessian(loss_of, theta), theta


def test_lvc_inner_objective_has_reinforces_gradient_and_the_score_function_hessian_term(float64):
    """LVC (ProMP): same inner gradient as REINFORCE; Hessian plus -mean(A grad log pi grad log pi^T)."""
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, (4,), "tanh", init_std=0.8)
    episodes = tiny_episodes(seed=3)
    g_r, h_r, theta = _inner_grad_and_hessian("reinforce", policy, episodes)
    g_l, h_l, _ = _inner_grad_and_hessian("lvc", policy, episodes)
    assert torch.allclose(g_r, g_l, atol=1e-12)  # the adapted policies are the same
    # The extra term, built from per-sample score vectors of task 0.
    names = [n for n, _ in policy.named_parameters()]
    shapes = [p.shape for p in policy.parameters()]
    obs, act = episodes.per_task(episodes.obs)[0], episodes.per_task(episodes.actions)[0]
    adv, mask = episodes.per_task(episodes.advantages)[0], episodes.per_task(episodes.mask)[0]

    def logp_of(theta):
        chunks = torch.split(theta, [math.prod(s) for s in shapes])
        named = dict(zip(names, (c.view(s) for c, s in zip(chunks, shapes))))
        mean, log_std = torch.func.functional_call(policy, named, (obs,))
        return log_prob(mean, log_std, act)

    scores = torch.autograd.functional.jacobian(logp_of, theta)  # [K, n]
    extra = -(scores.T * (adv * mask)) @ scores / mask.sum()
    assert extra.abs().max() > 1e-3  # not a vacuous comparison
    assert torch.allclose(h_l, h_r + extra, atol=1e-10)


def test_lvc_changes_the_meta_gradient_but_not_the_adapted_policy(float64):
    torch.manual_seed(0)
    train, valid = [tiny_episodes(seed=1)], tiny_episodes(seed=2)
    initial = GaussianMLPPolicy(2, 2, (5,), "tanh").state_dict()
    grads, adapted = [], []
    for objective in ("reinforce", "lvc"):
        policy = GaussianMLPPolicy(2, 2, (5,), "tanh")
        policy.load_state_dict(initial)
        meta = MAMLTRPO(policy, InnerLoop(ConstantStepSize(0.3), 1), TRPOSettings(inner_objective=objective))
        states = meta.adapt_all(train)
        adapted.append(flat([v.detach().reshape(-1) for v in states[-1].values()]))
        loss, _, _ = meta.meta_objective(states, train, valid)
        grads.append(flat(torch.autograd.grad(loss, list(policy.parameters()))))
    assert torch.allclose(adapted[0], adapted[1], atol=1e-12)
    assert not torch.allclose(grads[0], grads[1], atol=1e-6)


def test_inner_objective_is_validated():
    with pytest.raises(ValueError, match="inner_objective"):
        TRPOSettings(inner_objective="dice")


def test_fvp_dtype_is_validated_and_needs_the_closed_form_products():
    with pytest.raises(ValueError, match="fvp_dtype"):
        TRPOSettings(fvp_dtype="float16")
    with pytest.raises(ValueError, match="closed-form"):
        TRPOSettings(fvp_dtype="bfloat16", fvp="autograd")

    class OtherPolicy(GaussianMLPPolicy):  # not covered by the closed-form products
        pass

    with pytest.raises(ValueError, match="OtherPolicy.*fvp_dtype=same"):
        MAMLTRPO(OtherPolicy(2, 2, (8,)), InnerLoop(ConstantStepSize(0.1), 1), TRPOSettings(fvp_dtype="bfloat16"))
    MAMLTRPO(OtherPolicy(2, 2, (8,)), InnerLoop(ConstantStepSize(0.1), 1), TRPOSettings())  # float32: autograd products


def test_bfloat16_meta_step_is_the_full_precision_one_up_to_rounding():
    """trpo.fvp_dtype=bfloat16 changes only the products' rounding. With three conjugate-gradient
    iterations the step is within a percent of the float32 one and both line searches accept it
    alike (later iterations reach the Fisher's near-null directions, where any rounding grows: see
    TRPOSettings.fvp_dtype); the accepted step keeps the KL bound, measured at full precision."""
    steps = {}
    for dtype in ("same", "bfloat16"):
        torch.manual_seed(0)
        policy = GaussianMLPPolicy(10, 2, (32, 32))
        before = torch.cat([p.detach().flatten() for p in policy.parameters()])
        meta = MAMLTRPO(policy, InnerLoop(ConstantStepSize(0.1), 1),
                        TRPOSettings(max_kl=0.01, cg_iters=3, fvp_dtype=dtype))
        episodes = [tiny_episodes(T=50, M=4, B=20, obs_dim=10, seed=s) for s in (1, 2)]
        logs = meta.meta_step(episodes[:1], episodes[1])
        steps[dtype] = (torch.cat([p.detach().flatten() for p in policy.parameters()]) - before, logs)
    (full, full_logs), (low, low_logs) = steps["same"], steps["bfloat16"]
    assert full_logs["charts/ls_accepted"] == low_logs["charts/ls_accepted"] == 1.0
    assert full_logs["charts/ls_steps"] == low_logs["charts/ls_steps"]
    assert low_logs["losses/kl_after"] <= 0.01 and low_logs["losses/surrogate_after"] < low_logs["losses/surrogate_before"]
    assert 0 < ((low - full).norm() / full.norm()).item() < 1e-2
