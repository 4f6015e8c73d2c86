"""The engine: batched inner update, meta-gradients, step sizes and masks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rl_maml.functional import TaskBatchedModel, params_of
from rl_maml.inner import (
    AdaptationMask,
    ConstantStepSize,
    InnerLoop,
    LearnedStepSize,
    PerTensorStepSize,
)
from rl_maml.maml import meta_loss, per_task_meta_loss
from rl_maml.nn import MLP, Conv4


def regression_data(num_tasks=4, k=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_tasks, k, 1, generator=g)
    a = 1 + torch.rand(num_tasks, 1, 1, generator=g)
    return (x, a * torch.sin(x)), (x + 0.3, a * torch.sin(x + 0.3))


def classification_data(num_tasks=3, ways=5, shots=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = ways * shots
    xs = torch.randn(num_tasks, n, 1, 28, 28, generator=g)
    xq = torch.randn(num_tasks, n, 1, 28, 28, generator=g)
    y = torch.arange(ways).repeat_interleave(shots).expand(num_tasks, n)
    return (xs, y), (xq, y)


def grads_of(loss, tensors):
    return torch.autograd.grad(loss, list(tensors))


def assert_close_dicts(a, b, atol):
    assert a.keys() == b.keys()
    for k in a:
        err = (a[k] - b[k]).abs().max().item()
        assert err <= atol, f"{k}: max abs difference {err:.3e} > {atol}"


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize(
    "step_size",
    ["constant", "per_tensor", "learned", "masked"],
)
def test_batched_equals_per_task_loop_mlp(float64, first_order, step_size):
    torch.manual_seed(0)
    net = MLP(1, 1, (16, 16))
    model = TaskBatchedModel(net, F.mse_loss)
    params = params_of(net)
    mask = None
    extra = []
    if step_size == "constant":
        lr = ConstantStepSize(0.1, step_scales=(1.0, 0.5))
    elif step_size == "per_tensor":
        lr = PerTensorStepSize({n: 0.05 + 0.01 * i for i, n in enumerate(params)})
    elif step_size == "learned":
        lr = LearnedStepSize(params, 0.1, per_element=True)
        extra = list(lr.parameters())
    else:
        lr = ConstantStepSize(0.1)
        mask = AdaptationMask((frozenset({"layers.4.weight", "layers.4.bias"}), frozenset({"layers.2.weight"})))
    inner = InnerLoop(lr, num_steps=3, first_order=first_order, mask=mask)
    support, query = regression_data()
    batched = meta_loss(model, params, inner, support, query)
    loop = per_task_meta_loss(model, params, inner, support, query)
    assert_close_dicts(batched.adapted, loop.adapted, 1e-12)
    wrt = list(params.values()) + extra
    for gb, gl in zip(grads_of(batched.loss, wrt), grads_of(loop.loss, wrt)):
        assert (gb - gl).abs().max().item() < 1e-10


@pytest.mark.parametrize("first_order", [False, True])
def test_batched_equals_per_task_loop_conv_batchnorm(float64, first_order):
    torch.manual_seed(0)
    net = Conv4(1, 5, hidden=8)
    model = TaskBatchedModel(net, F.cross_entropy)
    params = params_of(net)
    inner = InnerLoop(ConstantStepSize(0.4), num_steps=2, first_order=first_order)
    support, query = classification_data()
    batched = meta_loss(model, params, inner, support, query)
    loop = per_task_meta_loss(model, params, inner, support, query)
    assert_close_dicts(batched.adapted, loop.adapted, 1e-10)
    for n, gb, gl in zip(params, grads_of(batched.loss, params.values()), grads_of(loop.loss, params.values())):
        assert (gb - gl).abs().max().item() < 1e-10, n


def test_second_order_matches_finite_differences_and_differs_from_first_order(float64):
    torch.manual_seed(1)
    net = MLP(1, 1, (8, 8), activation="tanh")
    model = TaskBatchedModel(net, F.mse_loss)
    params = params_of(net)
    support, query = regression_data(num_tasks=3)

    def outer(p, first_order=False):
        return meta_loss(model, p, InnerLoop(ConstantStepSize(0.3), 2, first_order), support, query).loss

    second = grads_of(outer(params), params.values())
    first = grads_of(outer(params, first_order=True), params.values())
    g = torch.Generator().manual_seed(0)
    eps = 1e-5
    for _ in range(3):
        direction = {k: torch.randn(v.shape, generator=g) for k, v in params.items()}
        with torch.enable_grad():
            plus = outer({k: v.detach() + eps * direction[k] for k, v in params.items()}).item()
            minus = outer({k: v.detach() - eps * direction[k] for k, v in params.items()}).item()
        fd = (plus - minus) / (2 * eps)
        exact = sum((s * direction[k]).sum() for s, k in zip(second, params)).item()
        approx = sum((f * direction[k]).sum() for f, k in zip(first, params)).item()
        assert abs(exact - fd) < 1e-7 * max(1.0, abs(fd))
        assert abs(approx - fd) > 1e-3 * max(1.0, abs(fd)), "first-order should miss the second-order terms"


def test_one_inner_step_lowers_support_loss():
    torch.manual_seed(0)
    net = MLP(1, 1)
    model = TaskBatchedModel(net, F.mse_loss)
    support, _ = regression_data(num_tasks=8)
    inner = InnerLoop(ConstantStepSize(0.01), num_steps=1)
    before = model.task_losses({k: v.expand(8, *v.shape) for k, v in params_of(net).items()}, support)
    after = model.task_losses(inner.adapt(params_of(net), model.task_losses, support, num_tasks=8), support)
    assert (after < before).all()


class _Probe(nn.Module):
    """Identity whose backward records that backpropagation passed through it."""

    calls: list[str] = []

    class _Fn(torch.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(x, tag):
            return x.clone()

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.tag = inputs[1]

        @staticmethod
        def backward(ctx, grad):
            _Probe.calls.append(ctx.tag)
            return grad, None

    def __init__(self, tag):
        super().__init__()
        self.tag = tag

    def forward(self, x):
        return self._Fn.apply(x, self.tag)


def test_masked_tensors_unchanged_and_not_differentiated():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 8), _Probe("below-1"), nn.Tanh(), nn.Linear(8, 8), _Probe("below-2"),
                        nn.Tanh(), nn.Linear(8, 1))
    model = TaskBatchedModel(net, F.mse_loss)
    params = params_of(net)
    support, query = regression_data()

    def adapt_recording(names, steps):
        """Adapt with a mask; return the adapted params and which per-task tensors got gradients."""
        _Probe.calls.clear()
        batched = {k: v.unsqueeze(0).expand(4, *v.shape) for k, v in params.items()}
        graded = set()
        for k, v in batched.items():
            v.register_hook(lambda g, k=k: graded.add(k))
        inner = InnerLoop(ConstantStepSize(0.1), steps, mask=AdaptationMask.only(names))
        return inner.adapt(batched, model.task_losses, support), graded, inner

    # Head only: gradients for the head alone, and no backpropagation below it.
    adapted, graded, _ = adapt_recording({"6.weight", "6.bias"}, steps=2)
    assert graded == {"6.weight", "6.bias"}
    assert _Probe.calls == []
    for name in ("0.weight", "0.bias", "3.weight", "3.bias"):
        assert adapted[name] is not None and torch.equal(adapted[name], params[name].expand_as(adapted[name]))
    assert not torch.equal(adapted["6.weight"], params["6.weight"].expand_as(adapted["6.weight"]))

    # Middle layer only: backpropagation reaches it but stops there (nothing below layer 3).
    adapted, graded, inner = adapt_recording({"3.weight"}, steps=1)
    assert graded == {"3.weight"}
    assert _Probe.calls == ["below-2"]
    assert torch.equal(adapted["6.weight"], params["6.weight"].expand_as(adapted["6.weight"]))

    # Meta-gradients still reach every initial tensor (through the forward pass).
    result = meta_loss(model, params, inner, support, query)
    grads = grads_of(result.loss, params.values())
    assert all(g.abs().sum() > 0 for g in grads)


def test_a_tensor_adapted_after_a_step_that_left_it_alone_takes_the_same_step_with_the_graph(float64):
    """Head first, then the hidden layer: with the graph kept (second order), the hidden layer's
    gradient at the second step must be its partial derivative there, as without the graph, not
    the total derivative through the head's first step (which depended on it); and the
    meta-gradient through such a schedule matches finite differences."""
    torch.manual_seed(2)
    net = MLP(1, 1, (8, 8), activation="tanh")
    model = TaskBatchedModel(net, F.mse_loss)
    params = params_of(net)
    support, query = regression_data(num_tasks=3)
    mask = AdaptationMask((frozenset({"layers.4.weight", "layers.4.bias"}), frozenset({"layers.2.weight"})))
    inner = InnerLoop(ConstantStepSize(0.3), 2, mask=mask)
    with_graph = inner.adapt(params, model.task_losses, support, num_tasks=3, create_graph=True)
    without = inner.adapt({k: v.detach() for k, v in params.items()}, model.task_losses, support, num_tasks=3,
                          create_graph=False)
    assert_close_dicts({k: v.detach() for k, v in with_graph.items()}, without, 1e-14)
    assert not torch.equal(without["layers.2.weight"], params["layers.2.weight"].detach().expand(3, 8, 8))

    def outer(p):
        return meta_loss(model, p, inner, support, query).loss

    exact = grads_of(outer(params), params.values())
    g = torch.Generator().manual_seed(0)
    eps = 1e-5
    for _ in range(3):
        direction = {k: torch.randn(v.shape, generator=g) for k, v in params.items()}
        plus = outer({k: v.detach() + eps * direction[k] for k, v in params.items()}).item()
        minus = outer({k: v.detach() - eps * direction[k] for k, v in params.items()}).item()
        fd = (plus - minus) / (2 * eps)
        assert abs(sum((e * direction[k]).sum() for e, k in zip(exact, params)).item() - fd) < 1e-7 * max(1.0, abs(fd))


def test_mask_schedule_and_validation():
    torch.manual_seed(0)
    net = MLP(1, 1, (4,))
    params = params_of(net)
    mask = AdaptationMask.from_table([[True, False], [False, True]], [["layers.0.weight", "layers.0.bias"],
                                                                       ["layers.2.weight", "layers.2.bias"]])
    assert mask.names_at(0) == {"layers.0.weight", "layers.0.bias"}
    assert mask.names_at(5) == {"layers.2.weight", "layers.2.bias"}  # past the end: last row
    bad = InnerLoop(ConstantStepSize(0.1), 1, mask=AdaptationMask.only({"layers.9.weight"}))
    model = TaskBatchedModel(net, F.mse_loss)
    with pytest.raises(ValueError, match="layers.9.weight"):
        bad.adapt(params, model.task_losses, regression_data()[0], num_tasks=4)
    with pytest.raises(ValueError, match="one per group"):
        AdaptationMask.from_table([[True]], [["a"], ["b"]])


def test_learned_step_sizes_receive_gradients():
    torch.manual_seed(0)
    net = MLP(1, 1, (8,))
    model = TaskBatchedModel(net, F.mse_loss)
    params = params_of(net)
    for per_element in (False, True):
        lr = LearnedStepSize(params, 0.05, per_element=per_element)
        support, query = regression_data()
        loss = meta_loss(model, params, InnerLoop(lr, 2), support, query).loss
        grads = grads_of(loss, lr.parameters())
        assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
        assert all(g.shape == p.shape for g, p in zip(grads, lr.parameters()))


def test_step_size_errors():
    with pytest.raises(ValueError, match="inner_lr"):
        ConstantStepSize(-0.1)
    with pytest.raises(ValueError, match="inner_lr"):
        ConstantStepSize(float("nan"))
    with pytest.raises(KeyError, match="no step size for parameter 'b'"):
        PerTensorStepSize({"a": 0.1})(0, "b")
    with pytest.raises(RuntimeError, match="no_grad"):
        with torch.no_grad():
            InnerLoop(ConstantStepSize(0.1)).adapt({"w": torch.ones(1)}, lambda p, d: p["w"].sum(), None)


def test_zero_steps_returns_expanded_initial_parameters():
    net = MLP(1, 1, (4,))
    params = params_of(net)
    model = TaskBatchedModel(net, F.mse_loss)
    out = InnerLoop(ConstantStepSize(0.1), num_steps=0).adapt(params, model.task_losses, None, num_tasks=3)
    for k, v in params.items():
        assert out[k].shape == (3, *v.shape) and torch.equal(out[k][2], v)


def test_config_step_scales_set_each_inner_step():
    """inner.step_scales [1, 0.5]: the second step moves by exactly half of alpha times its gradient."""
    from rl_maml.config import ConfigError, InnerConfig
    from rl_maml.inner import make_inner_loop

    w0 = torch.tensor([3.0])
    inner, _ = make_inner_loop(InnerConfig(inner_lr=0.1, num_inner_steps=3, step_scales=[1.0, 0.5]), {"w": w0})
    assert [inner.step_size(s, "w") for s in range(3)] == [0.1, 0.05, 0.05]
    out = inner.adapt({"w": w0}, lambda p, d: (p["w"] ** 2).sum(-1) / 2, None, num_tasks=1)
    # d/dw (w^2/2) = w: w <- w (1 - lr) per step
    assert out["w"].item() == pytest.approx(3.0 * 0.9 * 0.95 * 0.95)
    with pytest.raises(ConfigError, match="inner.step_scales must be finite numbers >= 0"):
        InnerConfig(step_scales=[1.0, -0.5])
    with pytest.raises(ConfigError, match="step_scales applies to step_size: fixed"):
        InnerConfig(step_scales=[1.0], step_size="learned")


@pytest.mark.parametrize("shared", [True, False])
def test_mlp_forward_tasks_equals_vmapped_forward_with_per_task_second_order_gradients(shared, float64):
    """The policy's and the sinusoid net's batched layers (one product per layer; one plain GEMM for
    parameters expanded over the tasks when no gradient is recorded) give vmap's outputs, and
    the per-task gradients and second-order meta-gradient of an inner step from expanded
    parameters, where a single GEMM would pool every task's gradient onto task 0."""
    from torch.func import functional_call, vmap

    from rl_maml.functional import expand_params
    from rl_maml.rl.policy import GaussianMLPPolicy

    torch.manual_seed(0)
    M = 3
    policy = GaussianMLPPolicy(4, 2, (5, 6), "tanh", init_std=0.7)
    base = params_of(policy)
    params = expand_params(base, M)
    if not shared:
        params = {n: v + 0.1 * torch.randn_like(v) for n, v in params.items()}
    obs = torch.randn(M, 7, 2, 4)  # an extra leading axis, as episodes [M, B, T] would have
    looped = vmap(lambda p, x: functional_call(policy, p, (x,)))
    with torch.no_grad():
        for a, b in zip(TaskBatchedModel(policy)(params, obs), looped(params, obs)):
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-12)
    mlp = policy.mean
    mlp_params = {n[len("mean."):]: v for n, v in params.items() if n.startswith("mean.")}
    hidden = torch.randn(M, 7, 5)  # the second layer's input: forward from layer 1 on (rl_maml.patterns)
    with torch.no_grad():
        assert torch.allclose(mlp.forward_tasks(mlp_params, {}, hidden, start=1),
                              vmap(lambda p, x: functional_call(mlp, p, (x,), {"start": 1}))(mlp_params, hidden),
                              atol=1e-12)

    def inner_then_outer(forward):
        mean, log_std = forward(params, obs)
        loss = ((mean - 1) ** 2 * torch.exp(-2 * log_std)).sum() + log_std.sum()  # a Gaussian's NLL
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        adapted = {n: v - 0.1 * g for (n, v), g in zip(params.items(), grads)}
        mean, log_std = forward(adapted, obs + 1)
        return grads, torch.autograd.grad((mean ** 2).sum() + (log_std ** 2).sum(), list(base.values()))

    (g1, m1), (g2, m2) = inner_then_outer(TaskBatchedModel(policy)), inner_then_outer(looped)
    for a, b in zip(g1 + m1, g2 + m2):
        assert torch.allclose(a, b, atol=1e-10)
    assert all((g[1:] != g[0]).any() for g in g1)  # every task has its own inner gradient


def test_a_subclass_that_overrides_forward_alone_runs_its_own_forward():
    """TaskBatchedModel uses ``forward_tasks`` only where it stands for the module's ``forward``."""
    from rl_maml.functional import batches_itself, expand_params
    from rl_maml.rl.policy import GaussianMLPPolicy

    class Scaled(GaussianMLPPolicy):
        def forward(self, obs):
            return super().forward(obs / 10)

    torch.manual_seed(0)
    plain, scaled = GaussianMLPPolicy(3, 2, (4,)), Scaled(3, 2, (4,))
    scaled.load_state_dict(plain.state_dict())
    assert batches_itself(plain) and not batches_itself(scaled) and batches_itself(Conv4(1, 5))
    obs = torch.randn(2, 5, 3)
    with torch.no_grad():
        mean = TaskBatchedModel(scaled)(expand_params(params_of(scaled), 2), obs)[0]
        assert torch.allclose(mean, scaled(obs)[0]) and not torch.allclose(mean, plain(obs)[0])
