"""The ways to compute one Hessian-vector product of the inner loss, side by side.

    python -m rl_maml.experiments.benchmark_curvature [--tasks 40] [--steps 2000] [--obs 20] [--act 6]

The inner loss is MAML-TRPO's (REINFORCE over each task's steps, per-task parameters, a 2x100
ReLU Gaussian policy: HalfCheetah's sizes by default). Each method computes the same product
(checked against the closed form); the median of ``--repeats`` timings in milliseconds:

* forward-over-reverse: ``torch.func.jvp`` of ``torch.func.grad`` of the loss (all in one call);
* double backward: the loss's gradient with a graph, then a backward pass of ``grad . u``;
* double backward, reusing the gradient's graph (what the meta-step did before the closed form:
  the gradient is built once per meta-step, each product is one more backward pass);
* closed form (:mod:`rl_maml.rl.curvature`), its per-point set-up outside the timing as well.
"""

from __future__ import annotations

import argparse

import torch
from torch.func import grad, jvp

from rl_maml.functional import TaskBatchedModel, params_of
from rl_maml.patterns import time_adaptation
from rl_maml.rl.adaptation import policy_gradient_loss
from rl_maml.rl.curvature import GaussianMLPCurvature
from rl_maml.rl.episodes import Episodes
from rl_maml.rl.policy import GaussianMLPPolicy


def _median_ms(fn, repeats: int) -> float:
    return 1000 * time_adaptation(fn, repeats, warmup=1)


def run(tasks: int, steps: int, obs: int, act: int, repeats: int, seed: int = 0) -> dict[str, float]:
    """Milliseconds per product of each method, and the largest relative gap to the closed form."""
    g = torch.Generator().manual_seed(seed)
    episodes = Episodes(torch.randn(steps, tasks, 1, obs, generator=g), torch.randn(steps, tasks, 1, act, generator=g),
                        torch.randn(steps, tasks, 1, generator=g), torch.ones(steps, tasks, 1))
    episodes.advantages = torch.randn(steps, tasks, 1, generator=g)
    torch.manual_seed(seed)
    policy = GaussianMLPPolicy(obs, act, (100, 100))
    model = TaskBatchedModel(policy)
    params = {n: v.detach() + 0.01 * torch.randn(tasks, *v.shape, generator=g) for n, v in params_of(policy).items()}
    u = {n: torch.randn(v.shape, generator=g) for n, v in params.items()}

    def loss(p):
        return policy_gradient_loss(model, p, episodes).sum()

    def forward_over_reverse():
        return jvp(grad(loss), (params,), (u,))[1]

    def double_backward():
        leaves = {n: v.clone().requires_grad_(True) for n, v in params.items()}
        g1 = torch.autograd.grad(loss(leaves), list(leaves.values()), create_graph=True)
        return dict(zip(leaves, torch.autograd.grad(sum((a * u[n]).sum() for a, n in zip(g1, leaves)),
                                                    list(leaves.values()))))

    leaves = {n: v.clone().requires_grad_(True) for n, v in params.items()}
    kept = torch.autograd.grad(loss(leaves), list(leaves.values()), create_graph=True)

    def double_backward_reused():
        return dict(zip(leaves, torch.autograd.grad(sum((a * u[n]).sum() for a, n in zip(kept, leaves)),
                                                    list(leaves.values()), retain_graph=True)))

    closed = GaussianMLPCurvature(policy).inner_loss_hvp(params, episodes)
    methods = {"forward-over-reverse (torch.func)": forward_over_reverse, "double backward": double_backward,
               "double backward, gradient graph reused": double_backward_reused, "closed form": lambda: closed(u)}
    want = closed(u)
    out = {"gap": max(float((fn()[n] - want[n]).abs().max() / want[n].abs().max().clamp(min=1e-30))
                      for fn in methods.values() for n in want)}
    out.update({name: _median_ms(fn, repeats) for name, fn in methods.items()})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=40)
    ap.add_argument("--steps", type=int, default=2000, help="steps per task")
    ap.add_argument("--obs", type=int, default=20)
    ap.add_argument("--act", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    res = run(args.tasks, args.steps, args.obs, args.act, args.repeats)
    print(f"inner-loss Hessian-vector product, {args.tasks} tasks x {args.steps} steps, obs {args.obs}, act {args.act}, "
          f"2x100 ReLU, torch {torch.__version__}, {torch.get_num_threads()} threads; median ms of {args.repeats}")
    print("| method | ms | vs closed form |")
    print("|---|---|---|")
    for name, ms in res.items():
        if name != "gap":
            print(f"| {name} | {ms:.0f} | {ms / res['closed form']:.1f}x |")
    print(f"largest relative gap to the closed form: {res['gap']:.1e}")


if __name__ == "__main__":
    main()
