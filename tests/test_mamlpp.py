"""MAML++ options on the supervised engine: per-step learned step sizes (LSLR), the annealed
multi-step loss, derivative-order annealing, cosine outer step sizes; resume keeps the schedules."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rl_maml.agents import MAMLLearner, make_supervised_learner
from rl_maml.config import ConfigError, InnerConfig, MAMLPlusPlusConfig, VariantConfig
from rl_maml.functional import TaskBatchedModel, params_of
from rl_maml.inner import ConstantStepSize, InnerLoop, LearnedStepSize, make_inner_loop
from rl_maml.maml import meta_loss, multi_step_loss_weights
from rl_maml.nn import MLP, Conv4
from rl_maml.tasks.fewshot import FewShotTasks


def mlp_case(float64=True):
    torch.manual_seed(0)
    net = MLP(1, 1, (8, 8))
    if float64:
        net = net.double()
    g = torch.Generator().manual_seed(1)
    dtype = torch.float64 if float64 else torch.float32
    support = (torch.randn(4, 5, 1, generator=g, dtype=dtype), torch.randn(4, 5, 1, generator=g, dtype=dtype))
    query = (torch.randn(4, 6, 1, generator=g, dtype=dtype), torch.randn(4, 6, 1, generator=g, dtype=dtype))
    return net, TaskBatchedModel(net, F.mse_loss), support, query


def test_multi_step_loss_weights_anneal_onto_the_last_step():
    assert multi_step_loss_weights(5, 0.0) == pytest.approx([0.2] * 5)
    half = multi_step_loss_weights(5, 0.5)
    assert half[:4] == pytest.approx([0.1] * 4) and half[4] == pytest.approx(0.6)
    end = multi_step_loss_weights(5, 1.0)
    assert end[:4] == pytest.approx([0.006] * 4)  # MAML++ keeps a small floor on the earlier steps
    assert multi_step_loss_weights(5, 7.0) == end
    lasts = [multi_step_loss_weights(3, t)[-1] for t in (0, 0.25, 0.5, 0.75, 1)]
    assert lasts == sorted(lasts)
    for t in (0, 0.3, 1):
        assert sum(multi_step_loss_weights(4, t)) == pytest.approx(1.0)
    assert multi_step_loss_weights(1, 0.4) == [1.0]


def test_multi_step_loss_is_the_weighted_sum_of_the_query_losses_after_each_step(float64):
    net, model, support, query = mlp_case()
    params = params_of(net)
    inner = InnerLoop(ConstantStepSize(0.1), num_steps=3)
    weights = [0.2, 0.3, 0.5]
    msl = meta_loss(model, params, inner, support, query, step_weights=weights)
    by_hand = sum(w * meta_loss(model, params, InnerLoop(ConstantStepSize(0.1), num_steps=s + 1), support, query).loss
                  for s, w in enumerate(weights))
    assert abs(msl.loss - by_hand) < 1e-12
    ga = torch.autograd.grad(msl.loss, list(params.values()))
    gb = torch.autograd.grad(by_hand, list(params.values()))
    assert max((a - b).abs().max().item() for a, b in zip(ga, gb)) < 1e-12
    # all weight on the last step is plain MAML
    plain = meta_loss(model, params, inner, support, query)
    last_only = meta_loss(model, params, inner, support, query, step_weights=[0, 0, 1])
    assert abs(plain.loss - last_only.loss) < 1e-12
    assert torch.equal(msl.query_losses, plain.query_losses)
    with pytest.raises(ValueError, match="one weight per inner step"):
        meta_loss(model, params, inner, support, query, step_weights=[0.5, 0.5])


def test_per_step_learned_step_sizes(float64):
    net, model, support, query = mlp_case()
    params = params_of(net)
    lslr = LearnedStepSize(params, 0.1, per_step=2).double()
    assert all(r.shape == (2,) for r in lslr.rates.values())
    name = next(iter(params))
    with torch.no_grad():
        lslr.rates[name.replace(".", "__")].copy_(torch.tensor([0.1, 0.2]))
    assert [lslr(s, name).item() for s in (0, 1, 5)] == pytest.approx([0.1, 0.2, 0.2])
    loss = meta_loss(model, params, InnerLoop(lslr, num_steps=2), support, query).loss
    loss.backward()
    grads = [r.grad for r in lslr.rates.values()]
    assert all(g is not None and g.shape == (2,) and g[0] != g[1] for g in grads)  # each step its own rate
    inner, learned = make_inner_loop(InnerConfig(inner_lr=0.3, num_inner_steps=4, step_size="learned_per_step"),
                                     params)
    assert learned is not None and learned.per_step == 4 and inner.step_size is learned
    assert all(torch.equal(r, torch.full((4,), 0.3, dtype=r.dtype)) for r in learned.rates.values())


def image_tasks():
    images = torch.randint(0, 256, (10, 6, 14, 14), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    return FewShotTasks(images, ways=3, shots=1, query=2)


def make_learner(mamlpp: MAMLPlusPlusConfig, num_iterations=6, steps=2) -> MAMLLearner:
    torch.manual_seed(0)
    net = Conv4(1, 3, hidden=4, image_size=14)
    inner_cfg = InnerConfig(inner_lr=0.3, num_inner_steps=steps, step_size="learned_per_step")
    learner = make_supervised_learner("maml", net, F.cross_entropy, inner_cfg, VariantConfig(), 1e-2,
                                      mamlpp=mamlpp, num_iterations=num_iterations)
    assert isinstance(learner, MAMLLearner)
    return learner


def test_schedules_follow_the_iteration_and_resume_exactly():
    cfg = MAMLPlusPlusConfig(multi_step_loss=True, msl_anneal_iterations=4, first_order_iterations=2,
                             cosine_outer_lr=True, min_outer_lr=1e-4)
    tasks = image_tasks()
    batches = [tasks.sample(3, torch.Generator().manual_seed(i)) for i in range(6)]

    straight = make_learner(cfg)
    seen = [straight.train_step(b) for b in batches]
    assert [m["charts/second_order"] for m in seen] == [0, 0, 1, 1, 1, 1]  # first order for 2 updates
    lrs = [m["charts/outer_lr"] for m in seen]
    assert lrs[0] == pytest.approx(1e-2) and lrs[-1] == pytest.approx(1e-4)
    assert lrs == sorted(lrs, reverse=True)
    assert lrs[1] == pytest.approx(1e-4 + 0.5 * (1e-2 - 1e-4) * (1 + math.cos(math.pi / 5)))
    last = [m["charts/msl_last_step_weight"] for m in seen]
    assert last[0] == pytest.approx(0.5) and last[4] == pytest.approx(1 - 0.03 / 2) and last == sorted(last)

    first = make_learner(cfg)
    for b in batches[:3]:
        first.train_step(b)
    state = first.state_dict()
    assert state["counters"] == {"iterations": 3}
    resumed = make_learner(cfg)
    resumed.load_state_dict(state)
    for b in batches[3:]:
        resumed.train_step(b)
    for k, v in straight.module.state_dict().items():
        assert torch.equal(resumed.module.state_dict()[k], v), k
    for k, v in straight.learned_step_size.state_dict().items():
        assert torch.equal(resumed.learned_step_size.state_dict()[k], v), k


def test_first_order_phase_uses_first_order_gradients():
    tasks = image_tasks()
    batch = tasks.sample(3, torch.Generator().manual_seed(0))
    annealed = make_learner(MAMLPlusPlusConfig(first_order_iterations=1))
    fo = make_learner(MAMLPlusPlusConfig())
    fo.inner.first_order = True
    so = make_learner(MAMLPlusPlusConfig())
    for learner in (annealed, fo, so):
        learner.train_step(batch)
    params = lambda lr: [p.detach() for p in lr.module.parameters()]  # noqa: E731
    assert all(torch.equal(a, b) for a, b in zip(params(annealed), params(fo)))
    assert not all(torch.equal(a, b) for a, b in zip(params(annealed), params(so)))
    assert not annealed.training_inner().first_order  # second order from the second update on


def test_mamlpp_errors_name_the_fix():
    with pytest.raises(ConfigError, match="method maml only"):
        make_supervised_learner("lambda_maml", Conv4(1, 3, hidden=4), F.cross_entropy, InnerConfig(),
                                VariantConfig(), 1e-3, mamlpp=MAMLPlusPlusConfig(multi_step_loss=True))
    with pytest.raises(ConfigError, match="num_inner_steps >= 1"):
        make_supervised_learner("maml", Conv4(1, 3, hidden=4), F.cross_entropy, InnerConfig(num_inner_steps=0),
                                VariantConfig(), 1e-3, mamlpp=MAMLPlusPlusConfig(multi_step_loss=True))
    with pytest.raises(ConfigError, match="msl_anneal_iterations"):
        MAMLPlusPlusConfig(msl_anneal_iterations=0)
    with pytest.raises(ConfigError, match="min_outer_lr"):
        MAMLPlusPlusConfig(min_outer_lr=-1.0)


@pytest.mark.parametrize("running", [False, True])
def test_per_step_batch_norm_batched_equals_the_loop(float64, running):
    """Per-step batch norm (S = 2 rows, 3 inner steps: the third reuses row 1) on both batched
    paths gives the per-task loop's second-order meta-gradient."""
    from rl_maml.maml import per_task_meta_loss

    torch.manual_seed(0)
    net = Conv4(1, 3, hidden=4, image_size=14, per_step_bn=2, running_stats=running, per_task_min_batch=6)
    with torch.no_grad():  # distinct rows, so that using the wrong one shows
        for name, p in net.named_parameters():
            if p.dim() == 2 and p.shape[0] == 2:
                p.add_(torch.randn_like(p) * 0.3)
    if running:
        net.eval()
        for mod in net.modules():
            if hasattr(mod, "running_mean"):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    model = TaskBatchedModel(net, F.cross_entropy)
    params = params_of(net)
    g = torch.Generator().manual_seed(1)
    support = (torch.randn(3, 3, 1, 14, 14, generator=g), torch.arange(3).expand(3, 3))
    query = (torch.randn(3, 6, 1, 14, 14, generator=g), torch.arange(3).repeat(2).expand(3, 6))
    inner = InnerLoop(ConstantStepSize(0.3), num_steps=3)
    batched = meta_loss(model, params, inner, support, query)
    loop = per_task_meta_loss(model, params, inner, support, query)
    gb = torch.autograd.grad(batched.loss, list(params.values()))
    gl = torch.autograd.grad(loop.loss, list(params.values()))
    for k, a, b in zip(params, gb, gl):
        assert (a - b).abs().max() < 1e-10, k
    bn_grad = dict(zip(params, gb))["features.1.weight"]
    assert (bn_grad[0] != 0).all() and (bn_grad[1] != 0).all()  # both rows are used


def test_per_step_batch_norm_uses_the_step_row_and_updates_its_statistics():
    from rl_maml.inner import at_inner_step

    torch.manual_seed(0)
    net = Conv4(1, 3, hidden=4, image_size=14, per_step_bn=2, running_stats=True)
    with torch.no_grad():
        net.features[1].weight[1].mul_(3.0)
    x = torch.randn(5, 1, 14, 14) + 2
    with at_inner_step(1):
        net(x)  # training mode: updates row 1 only
    bn = net.features[1]
    assert torch.equal(bn.running_mean[0], torch.zeros(4)) and not torch.equal(bn.running_mean[1], torch.zeros(4))
    net.eval()
    with at_inner_step(0):
        a = net(x)
    with at_inner_step(1):
        b = net(x)
    with at_inner_step(7):  # past the rows: the last
        c = net(x)
    assert not torch.allclose(a, b) and torch.equal(b, c)


def test_per_step_batch_norm_is_for_maml_only():
    from rl_maml.config import from_dict
    from rl_maml.experiments.fewshot import FewShotConfig, build_learner

    cfg = from_dict(FewShotConfig, {"method": "lambda_maml", "model": {"per_step_bn": True}})
    with pytest.raises(ConfigError, match="per_step_bn applies to method maml only"):
        build_learner(cfg, torch.device("cpu"), None)
