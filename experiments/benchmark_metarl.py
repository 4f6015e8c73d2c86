"""Time one MAML-TRPO meta-iteration of HalfCheetahVel at the standard size, split by phase.

    python -m rl_maml.experiments.benchmark_metarl [--iterations 3] [--tasks 40] [--episodes 20] [--device cpu]

40 tasks x 20 episodes, ``gym`` convention (horizon 100), 2x100 ReLU policy, one inner step:
160,000 env steps per iteration (training and validation episodes). Reports the median over
``--iterations`` iterations (after one warm-up) of the seconds spent sampling, adapting and in the
TRPO meta-step, and the whole iteration's env steps per second beside the batched stepper's raw
rate at N = 800, measured in the same run. With ``--device cuda`` the policy, the inner update and
the meta-step run on the GPU; MuJoCo always steps on the CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from rl_maml.envs import make_batched
from rl_maml.experiments.metarl import MetaRLConfig, build_agent
from rl_maml.experiments.sinusoid import resolve_device

from rl_maml.config import ConfigError, from_dict


def raw_rate(num_envs: int, steps: int = 100) -> float:
    env = make_batched("HalfCheetahVel", num_envs)
    rng = np.random.default_rng(0)
    env.reset(env.sample_tasks(num_envs, rng), seeds=0)
    actions = torch.as_tensor(rng.standard_normal((steps, num_envs, env.act_dim)), dtype=torch.float32)
    env.step(actions[0])
    t0 = time.perf_counter()
    for t in range(1, steps):
        env.step(actions[t])
    return num_envs * (steps - 1) / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fvp_costs(agent, repeats: int = 3) -> tuple[float, float]:
    """Seconds per Fisher-vector product: autograd through the whole graph vs the structured form."""
    from rl_maml.rl.trpo import fisher_vector_product

    meta = agent.meta
    tasks = agent.sample_tasks(0)
    train = [agent._sample(meta.initial_params(agent.M), tasks, 0, 0)]
    adapted = meta.adapt_step(meta.initial_params(train[0].num_tasks), train[0], 0)
    valid = agent._sample(adapted, tasks, 0, "valid")
    params = list(meta.policy.parameters())
    v = torch.randn(sum(p.numel() for p in params), device=agent.device)
    _, kl, _ = meta.surrogate(adapted, valid)
    products = {"generic": fisher_vector_product(kl, params, 1e-5),
                "structured": meta.fisher_vector_product(train, valid, 1e-5)}
    out = []
    for fvp in products.values():
        fvp(v)
        _sync(agent.device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            fvp(v)
        _sync(agent.device)
        out.append((time.perf_counter() - t0) / repeats)
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=40)
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--cg-iters", type=int, default=10)
    ap.add_argument("--fvp-subsample", type=float, default=1.0, help="fraction of episodes for Fisher products")
    ap.add_argument("--device", default="cpu", help="torch device of the policy and the meta-step: cpu, cuda or auto")
    args = ap.parse_args()
    try:
        device = resolve_device(args.device, option="--device")
    except ConfigError as e:  # not a device, or CUDA asked for but absent
        ap.error(str(e))
    cfg = from_dict(MetaRLConfig, {
        "env": {"name": "HalfCheetahVel", "convention": "gym"},
        "train": {"meta_batch_size": args.tasks, "fast_batch_size": args.episodes},
        "trpo": {"cg_iters": args.cg_iters, "fvp_subsample": args.fvp_subsample},
    })
    torch.set_num_threads(cfg.train.num_threads)
    agent = build_agent(cfg, device)
    rows = [agent.train_step(i) for i in range(args.iterations + 1)][1:]

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    total = med("time/sampling_s") + med("time/adapting_s") + med("time/meta_step_s")
    steps = med("charts/env_steps")
    raw = raw_rate(args.tasks * args.episodes)
    torch.set_num_threads(agent.meta_step_threads)
    generic, structured = fvp_costs(agent)
    torch.set_num_threads(cfg.train.num_threads)
    print(f"HalfCheetahVel, gym convention, {args.tasks} tasks x {args.episodes} episodes, 2x100 ReLU policy, "
          f"torch threads {torch.get_num_threads()} sampling / {agent.meta_step_threads} meta-step, "
          f"fvp_subsample {args.fvp_subsample}, device {device}; median of {args.iterations} iterations")
    print("| phase | seconds | share |")
    print("|---|---|---|")
    for key, label in (("time/sampling_s", "sampling (train + valid)"), ("time/adapting_s", "inner update"),
                       ("time/meta_step_s", "TRPO meta-step")):
        print(f"| {label} | {med(key):.2f} | {med(key) / total:.0%} |")
    print(f"| whole iteration | {total:.2f} | |")
    print(f"\nenv steps per iteration: {steps:,.0f}; iteration: {steps / total:,.0f} env steps/s; "
          f"batched stepper raw (N = {args.tasks * args.episodes}): {raw:,.0f} env steps/s; "
          f"ratio {steps / total / raw:.0%}")
    print(f"one Fisher-vector product on all episodes ({agent.meta_step_threads} threads): autograd through the "
          f"whole graph {generic:.2f} s, structured J^T F' J {structured:.2f} s ({generic / structured:.1f}x)")


if __name__ == "__main__":
    main()
