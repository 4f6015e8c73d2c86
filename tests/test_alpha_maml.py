"""Alpha MAML: hypergradients of the inner and outer step sizes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rl_maml.agents import AlphaMAMLLearner
from rl_maml.checkpoint import load_checkpoint, save_checkpoint
from rl_maml.functional import TaskBatchedModel, params_of
from rl_maml.hypergradient import HypergradientAdam, HypergradientSGD, HypergradientStepSize, group_names
from rl_maml.inner import ConstantStepSize, InnerLoop
from rl_maml.maml import meta_loss
from rl_maml.nn import MLP
from rl_maml.tasks.sinusoid import SinusoidTasks


def sinusoid_batch(seed=0, m=6):
    return SinusoidTasks().sample(m, 10, 10, torch.Generator().manual_seed(seed))


def query_loss(net, alpha, batch, steps, first_order):
    model = TaskBatchedModel(net, F.mse_loss)
    inner = InnerLoop(ConstantStepSize(alpha), steps, first_order)
    return meta_loss(model, params_of(net), inner, batch.support, batch.query).loss


@pytest.mark.parametrize("steps,first_order", [(1, False), (2, False), (1, True)])
def test_alpha_hypergradient_equals_finite_difference(float64, steps, first_order):
    torch.manual_seed(0)
    net = MLP(1, 1, (16, 16))
    batch = sinusoid_batch()
    batch = type(batch)(tuple(t.double() for t in batch.support), tuple(t.double() for t in batch.query), batch.tasks)
    alpha, h = 0.05, 1e-6
    step_size = HypergradientStepSize(params_of(net), alpha)
    model = TaskBatchedModel(net, F.mse_loss)
    meta_loss(model, params_of(net), InnerLoop(step_size, steps, first_order), batch.support, batch.query).loss.backward()
    fd = (query_loss(net, alpha + h, batch, steps, first_order) - query_loss(net, alpha - h, batch, steps, first_order)) / (2 * h)
    assert step_size.alpha("alpha").grad.item() == pytest.approx(fd.item(), rel=1e-6, abs=1e-9)


def test_per_layer_alpha_hypergradients_sum_to_the_scalar_one(float64):
    torch.manual_seed(0)
    net = MLP(1, 1, (8,))
    batch = sinusoid_batch()
    batch = type(batch)(tuple(t.double() for t in batch.support), tuple(t.double() for t in batch.query), batch.tasks)
    model = TaskBatchedModel(net, F.mse_loss)
    totals = {}
    for granularity in ("scalar", "layer", "tensor"):
        s = HypergradientStepSize(params_of(net), 0.1, granularity)
        net.zero_grad()
        meta_loss(model, params_of(net), InnerLoop(s, 1), batch.support, batch.query).loss.backward()
        totals[granularity] = sum(a.grad.item() for a in s.parameters())
        assert len(s.groups) == {"scalar": 1, "layer": 2, "tensor": 4}[granularity]
    assert totals["layer"] == pytest.approx(totals["scalar"]) and totals["tensor"] == pytest.approx(totals["scalar"])
    assert group_names(["a.b.weight", "a.b.bias", "c.weight"], "layer") == {"a.b.weight": "a.b", "a.b.bias": "a.b",
                                                                              "c.weight": "c"}


def test_alpha_update_follows_the_rule_and_clips_with_a_warning():
    p = {"w": torch.zeros(3, requires_grad=True)}
    s = HypergradientStepSize(p, 0.1, hyper_lr=0.01, min_value=1e-4)
    s.alpha("alpha").grad = torch.tensor(2.0)
    assert s.update() == [] and s.as_dict()["alpha"] == pytest.approx(0.1 - 0.02)
    s.alpha("alpha").grad = torch.tensor(1e3)
    (warning,) = s.update()
    assert "clipped to 0.0001" in warning and s.as_dict()["alpha"] == pytest.approx(1e-4)
    s.alpha("alpha").grad = torch.tensor(float("nan"))
    (warning,) = s.update()
    assert "kept" in warning and s.as_dict()["alpha"] == pytest.approx(1e-4)


def test_beta_follows_the_hypergradient_rule_on_a_quadratic():
    """f(theta) = 1/2 theta^T H theta: beta_t = beta_{t-1} + hyper_lr * <grad_t, grad_{t-1}> (SGD)."""
    h = torch.diag(torch.tensor([1.0, 4.0], dtype=torch.float64))
    theta = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
    opt = HypergradientSGD([theta], lr=0.05, hyper_lr=0.01)
    expected_theta, expected_beta, prev = theta.detach().clone(), 0.05, None
    for _ in range(4):
        opt.zero_grad()
        (0.5 * theta @ h @ theta).backward()
        g = h @ expected_theta
        if prev is not None:
            expected_beta += 0.01 * (g @ prev).item()
        opt.step()
        expected_theta = expected_theta - expected_beta * g
        prev = g
        assert opt.lr == pytest.approx(expected_beta) and torch.allclose(theta.detach(), expected_theta)
    assert opt.lr > 0.05  # gradients kept pointing the same way: beta grew


def test_adam_beta_uses_the_previous_update_direction():
    theta = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    opt = HypergradientAdam([theta], lr=0.1, hyper_lr=0.5)
    theta.grad = torch.tensor([0.3, -0.1], dtype=torch.float64)
    opt.step()
    u1 = opt.previous[0].clone()
    assert torch.allclose(u1, torch.sign(theta.grad), atol=1e-6)  # Adam's first direction is sign(g)
    theta.grad = torch.tensor([0.2, 0.4], dtype=torch.float64)
    before = opt.lr
    opt.step()
    assert opt.lr == pytest.approx(before + 0.5 * (theta.grad @ u1).item())


def test_learner_with_frozen_step_sizes_is_maml_with_sgd():
    torch.manual_seed(0)
    net = MLP(1, 1, (8,))
    reference = {k: v.detach().clone() for k, v in params_of(net).items()}
    learner = AlphaMAMLLearner(net, F.mse_loss, alpha=0.01, beta=0.1, alpha_hyper_lr=0.0, beta_hyper_lr=0.0, outer="sgd")
    batch = sinusoid_batch()
    ref_net = MLP(1, 1, (8,))
    for k, v in ref_net.named_parameters():
        v.data.copy_(reference[k])
    loss = query_loss(ref_net, 0.01, batch, 1, False)
    grads = torch.autograd.grad(loss, list(ref_net.parameters()))
    metrics = learner.train_step(batch)
    for (k, v), g in zip(ref_net.named_parameters(), grads):
        assert torch.allclose(learner.params[k], v - 0.1 * g, atol=1e-6)
    assert metrics["charts/alpha/alpha"] == pytest.approx(0.01) and metrics["charts/beta"] == 0.1


def test_learner_adapts_step_sizes_logs_them_and_survives_a_bad_hypergradient(tmp_path):
    torch.manual_seed(0)
    learner = AlphaMAMLLearner(MLP(1, 1, (16,)), F.mse_loss, alpha=0.01, beta=1e-3, granularity="layer",
                               alpha_hyper_lr=1e-5, beta_hyper_lr=1e-6)
    for i in range(5):
        metrics = learner.train_step(sinusoid_batch(i))
    assert {"charts/alpha/layers.0", "charts/alpha/layers.2", "charts/beta", "charts/clipped_updates"} <= set(metrics)
    assert metrics["charts/alpha/layers.0"] != 0.01 and metrics["charts/beta"] != 1e-3
    save_checkpoint(tmp_path / "c.pt", {"learner": learner.state_dict()})
    fresh = AlphaMAMLLearner(MLP(1, 1, (16,)), F.mse_loss, alpha=0.5, beta=1.0, granularity="layer")
    fresh.load_state_dict(load_checkpoint(tmp_path / "c.pt")["learner"])
    assert fresh.step_size.as_dict() == learner.step_size.as_dict() and fresh.optimizer.lr == learner.optimizer.lr
    # An overshooting alpha makes dL/dalpha > 0; a huge hypergradient step would then turn alpha negative.
    for a in learner.step_size.parameters():
        a.data.fill_(0.5)
    learner.step_size.hyper_lr = 1e9
    with pytest.warns(RuntimeWarning, match="clipped"):
        metrics = learner.train_step(sinusoid_batch(9))
    assert metrics["charts/clipped_updates"] >= 1
    assert all(v > 0 for v in learner.step_size.as_dict().values())


def test_alpha_grid_script_quick(tmp_path):
    import json

    from rl_maml.experiments import alpha_grid

    results = alpha_grid.main(["sinusoid", "--quick", "--out", str(tmp_path)])
    assert set(results["grid"]) == {"maml", "alpha_maml"}
    cells = [c for row in results["grid"]["alpha_maml"] for c in row]
    assert len(cells) == 4 and all("final_alpha" in c and c["final_alpha"] > 0 for c in cells)
    # Same start and batches: with step sizes that barely move, both learners score alike.
    maml = [c["score"] for row in results["grid"]["maml"] for c in row]
    assert all(abs(a["score"] - m) < 0.5 for a, m in zip(cells, maml))
    assert json.loads((tmp_path / "results.json").read_text())["summary"]["maml"]["cells"] == 4
    assert (tmp_path / "grid.png").stat().st_size > 10_000


def test_hypergradient_step_size_follows_step_scales():
    """step_scales (1, 0.5): alpha at step 0, alpha/2 after; the hypergradient carries the scale."""
    import torch

    from rl_maml.hypergradient import HypergradientStepSize

    params = {"w": torch.zeros(2), "b": torch.zeros(1)}
    step_size = HypergradientStepSize(params, 0.4, "scalar", step_scales=(1.0, 0.5))
    assert step_size(0, "w").item() == pytest.approx(0.4) and step_size(3, "b").item() == pytest.approx(0.2)
    (grad,) = torch.autograd.grad(step_size(1, "w") * 3.0, [step_size.alpha(step_size.groups[0])])
    assert grad.item() == pytest.approx(1.5)
    with pytest.raises(ValueError, match="step scale must be a finite number >= 0"):
        HypergradientStepSize(params, 0.4, step_scales=(1.0, -1.0))
