"""Exact Fisher-vector products beside the MAML paper's code's finite differences, on one batch.

The reference's TensorFlow conjugate-gradient optimizer computed each product as a symmetric
difference of the KL's gradient at ``theta +- v / |theta|`` (``trpo.fvp=finite_difference``);
rl_maml computes them exactly. This samples one meta-batch with a run's newest checkpoint (the
tasks and episodes of the iteration after it, as training would draw them) and reports how far
the two are apart: the products at the meta-gradient, conjugate gradient's directions, and the
steps each would take::

    python -m rl_maml.experiments.fvp_check experiments/checkpoints/half_cheetah_dir_maml

About 10 s on a 2-core CPU for HalfCheetahDir (40 tasks x 20 episodes). Meta-RL runs only.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from rl_maml.checkpoint import CheckpointError, latest_checkpoint
from rl_maml.config import ConfigError
from rl_maml.rl.trpo import conjugate_gradient, flat
from rl_maml.training import load_learners


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a @ b / (a.norm() * b.norm())).item()


def check(run_dir: Path, checkpoint: Path | None = None) -> dict:
    """The figures of the module docstring, for the run folder ``run_dir``."""
    from .cli import load_run_config
    from .metarl import MetaRLConfig, build_agent

    stored = run_dir / "config.yaml"
    if not stored.is_file():
        raise ConfigError(f"{run_dir} is not a run folder: {stored} does not exist")
    _, cfg = load_run_config(stored)
    if not isinstance(cfg, MetaRLConfig):
        raise ConfigError(f"{run_dir} is not a meta-RL run; the Fisher products belong to the TRPO meta-step")
    if cfg.trpo.inner_objective != "reinforce":
        raise ConfigError(f"{run_dir} trains with trpo.inner_objective={cfg.trpo.inner_objective}; the finite-difference "
                          "products apply to the REINFORCE inner loss (the reference's) only")
    checkpoint = checkpoint or latest_checkpoint(run_dir / "checkpoints")
    if checkpoint is None:
        raise CheckpointError(f"{run_dir / 'checkpoints'} holds no checkpoint")
    agent = build_agent(cfg, torch.device("cpu"))
    iteration = load_learners(checkpoint, {"maml": agent}) + 1  # a checkpoint of another model: CheckpointError
    adaptation = agent.adapt(agent.sample_tasks(iteration), iteration)
    states, train, valid = adaptation.params, adaptation.episodes[:-1], adaptation.episodes[-1]
    meta = agent.meta
    params = list(meta.policy.parameters())
    loss, _, old = meta.meta_objective(states, train, valid)
    g = flat(torch.autograd.grad(loss, params))
    damping, max_kl = meta.trpo.cg_damping, meta.trpo.max_kl
    theta = flat([p.detach() for p in params])
    exact = meta.fisher_vector_product(train, valid, damping, states=states)
    finite = meta.finite_difference_fvp(train, valid, damping, old)
    at_g_exact, at_g_finite = exact(g), finite(g)
    out = {"checkpoint": str(checkpoint), "theta_norm": theta.norm().item(), "gradient_norm": g.norm().item(),
           "eps": meta.finite_difference_eps(),
           "product_at_gradient": {"cosine": _cos(at_g_exact, at_g_finite),
                                   "relative_difference": ((at_g_finite - at_g_exact).norm() / at_g_exact.norm()).item()}}
    directions = {}
    for name, product in (("exact", exact), ("finite_difference", finite)):
        x, _ = conjugate_gradient(product, g, meta.trpo.cg_iters)
        step = x * (2 * max_kl / (x @ product(x))).sqrt()  # the full step before the line search
        directions[name] = x
        out[name] = {"step_norm": step.norm().item(), "quadratic_kl_of_step": 0.5 * (step @ exact(step)).item(),
                     "surrogate_gain_first_order": (g @ step).item()}
    out["direction_cosine"] = _cos(directions["exact"], directions["finite_difference"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rl_maml.experiments.fvp_check", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="a meta-RL run folder (or a committed checkpoint folder)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: the folder's newest")
    args = parser.parse_args(argv)
    try:
        out = check(args.run_dir, args.checkpoint)
    except (ConfigError, CheckpointError) as e:
        print(f"fvp_check: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
