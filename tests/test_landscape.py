"""Easy/hard linear-regression tasks: closed forms, the sampler, and the sweep script."""

from __future__ import annotations

import json

import pytest
import torch

from rl_maml.experiments import landscape as experiment
from rl_maml.landscape import LinearTaskDistribution, TaskGroup


def dist(hard_scale=0.2, distance=2.0, hard_spread=0.3, dim=2, noise=0.3, spectrum=(1.0, 0.5)):
    return LinearTaskDistribution(dim, TaskGroup(0.6, 1.0, 0.0, 0.8, spectrum),
                                  TaskGroup(0.4, hard_scale, distance, hard_spread), noise=noise)


def simulated_risk(d: LinearTaskDistribution, theta, alpha, n, num_tasks=200_000, seed=0):
    """One inner step on n sampled points (or the exact gradient when n is None), by simulation."""
    g = torch.Generator().manual_seed(seed)
    tasks = d.sample_tasks(num_tasks, g)
    if n is None:
        grad = tasks["cov"] * (theta - tasks["theta"])
    else:
        x, y = d.sample_points(tasks, n, g, torch.float64)
        grad = (x.transpose(1, 2) @ (x @ theta.view(-1, 1) - y)).squeeze(-1) / n
    diff = theta - alpha * grad - tasks["theta"]
    return 0.5 * (diff**2 * tasks["cov"]).sum(1).mean().item()


@pytest.mark.parametrize("n", [None, 4])
def test_excess_risk_matches_simulation(n):
    d = dist()
    theta = torch.tensor([0.7, -0.4], dtype=torch.float64)
    for alpha in (0.0, 0.5):
        closed = d.excess_risk(theta, alpha, n)
        assert simulated_risk(d, theta, alpha, n) == pytest.approx(closed, rel=0.01)


@pytest.mark.parametrize("alpha,n", [(0.0, None), (0.6, None), (0.6, 5)])
def test_closed_form_solutions_minimise_the_risk_by_brute_force(alpha, n):
    """A grid search over theta in d = 2 lands on E[A]^-1 E[A theta*] (E[S]^-1 E[S theta*] for alpha 0)."""
    d = dist()
    axis = torch.linspace(-1.0, 3.0, 401, dtype=torch.float64)
    best, best_theta = float("inf"), None
    for a in axis[::4]:  # coarse, then fine around the coarse optimum
        for b in axis[::4]:
            r = d.excess_risk(torch.stack([a, b]), alpha, n)
            if r < best:
                best, best_theta = r, torch.stack([a, b])
    fine = torch.linspace(-0.04, 0.04, 81, dtype=torch.float64)
    for a in fine:
        for b in fine:
            theta = best_theta + torch.stack([a, b])
            r = d.excess_risk(theta, alpha, n)
            if r < best:
                best, best_found = r, theta
    closed = d.nal_solution() if alpha == 0 else d.maml_solution(alpha, n)
    assert torch.allclose(best_found, closed, atol=1.5e-3)
    assert d.excess_risk(closed, alpha, n) <= best + 1e-12


def test_ratio_is_one_without_hardness_discrepancy_or_centre_shift():
    same = LinearTaskDistribution(3, TaskGroup(0.5, 0.4, (1.0, 2.0, 0.0), 1.0),
                                  TaskGroup(0.5, 0.4, (1.0, 2.0, 0.0), 0.1), noise=0.2)
    for alpha, n in ((0.5, None), (1.2, None), (0.5, 7)):
        assert same.gain_ratio(alpha, n) == pytest.approx(1.0, abs=1e-12)
        assert torch.allclose(same.maml_solution(alpha, n), same.nal_solution(), atol=1e-12)


def test_gain_grows_as_hard_optima_pack_closer_and_move_away():
    alpha = 0.9
    spreads = [dist(hard_spread=r, noise=0.1).gain_ratio(alpha) for r in (2.0, 1.0, 0.5, 0.1)]
    distances = [dist(distance=c, noise=0.1).gain_ratio(alpha) for c in (0.0, 1.0, 2.0, 4.0)]
    assert all(a < b for a, b in zip(spreads, spreads[1:])), spreads
    assert all(a < b for a, b in zip(distances, distances[1:])), distances
    assert distances[-1] > 2.0


def test_sampler_moments_match_parameters():
    d = LinearTaskDistribution(2, TaskGroup(0.7, 2.0, (1.0, -1.0), 0.5), TaskGroup(0.3, 0.1, 3.0, 0.2), noise=0.25)
    g = torch.Generator().manual_seed(0)
    tasks = d.sample_tasks(100_000, g)
    hard = tasks["hard"]
    assert hard.double().mean().item() == pytest.approx(0.3, abs=0.01)
    easy_theta, hard_theta = tasks["theta"][~hard], tasks["theta"][hard]
    assert torch.allclose(easy_theta.mean(0), torch.tensor([1.0, -1.0], dtype=torch.float64), atol=0.01)
    assert torch.allclose(hard_theta.mean(0), torch.tensor([3.0, 0.0], dtype=torch.float64), atol=0.01)
    assert torch.allclose(easy_theta.std(0), torch.full((2,), 0.5, dtype=torch.float64), atol=0.01)
    assert torch.allclose(hard_theta.std(0), torch.full((2,), 0.2, dtype=torch.float64), atol=0.01)
    few = {k: v[:2000] for k, v in tasks.items()}
    x, y = d.sample_points(few, 200, g, torch.float64)
    var = x.pow(2).mean(1)  # [M, d]
    assert var[~few["hard"]].mean().item() == pytest.approx(2.0, rel=0.02)
    assert var[few["hard"]].mean().item() == pytest.approx(0.1, rel=0.02)
    residual = y.squeeze(-1) - (x @ few["theta"].unsqueeze(-1)).squeeze(-1)
    assert residual.std().item() == pytest.approx(0.25, rel=0.02)
    batch = d.sample(5, 3, 4, g)
    assert batch.support[0].shape == (5, 3, 2) and batch.query[1].shape == (5, 4, 1)


def test_bad_parameters_are_named():
    with pytest.raises(ValueError, match="scale"):
        TaskGroup(0.5, 0.0)
    with pytest.raises(ValueError, match="spread"):
        TaskGroup(0.5, 1.0, spread=-1.0)
    with pytest.raises(ValueError, match="center has 3 entries, expected d = 2"):
        LinearTaskDistribution(2, TaskGroup(0.5, 1.0, (0.0, 0.0, 0.0)), TaskGroup(0.5, 1.0))


def test_sweep_script_quick(tmp_path):
    results = experiment.main(["--quick", "--out", str(tmp_path)])
    for name in ("results.json", "results.md", "closed_form.png", "network.png"):
        assert (tmp_path / name).stat().st_size > 500
    assert json.loads((tmp_path / "results.json").read_text())["dim"] == experiment.DIM
    # engine-trained linear MAML and NAL land on the closed forms' risks
    assert all(r["risk_rel_diff"] < 0.02 for r in results["monte_carlo"])
    flat = [v for row in results["closed_form"]["grid"]["ratio_no_discrepancy"] for v in row]
    assert max(abs(v - 1) for v in flat) < 1e-9
