"""Time one MAML-TRPO meta-iteration of HalfCheetahVel at the standard size, split by phase.

    python -m rl_maml.experiments.benchmark_metarl [--iterations 3] [--tasks 40] [--episodes 20] [--device cpu]
    python -m rl_maml.experiments.benchmark_metarl --contend 1        # also beside one busy process
    python -m rl_maml.experiments.benchmark_metarl --workload navigation  # the MAML paper's 2D navigation
    python -m rl_maml.experiments.benchmark_metarl --preset ant_dir_maml --no-products  # a preset as it trains

40 tasks x 20 episodes, ``gym`` convention (horizon 100), 2x100 ReLU policy, one inner step:
160,000 env steps per iteration (training and validation episodes). Reports the median over
``--iterations`` iterations (after one warm-up) of the seconds spent sampling, adapting and in the
TRPO meta-step, and the whole iteration's env steps per second beside the batched stepper's raw
rate at N = 800, measured in the same run; the split again with ``--contend N`` busy-loop
processes beside (started and stopped by the benchmark); conjugate gradient's products and final
residual; and one exact Fisher-vector product's time, FLOPs and rate (``FlopCounterMode``) beside
a plain ``bmm`` of the policy's hidden-layer shapes, and beside the autograd products. With
``--device cuda`` the policy, the inner update and the meta-step run on the GPU; MuJoCo steps on the
CPU unless ``--backend warp`` (MuJoCo Warp on the same device; ``benchmark_warp`` sets the two side
by side).
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import statistics
import time

import numpy as np
import torch
from rl_maml.envs import make_batched
from rl_maml.experiments.metarl import MetaRLConfig, build_agent
from rl_maml.experiments.sinusoid import resolve_device

from rl_maml.config import ConfigError, from_dict
from rl_maml.patterns import time_adaptation


def raw_rate(env_name: str, num_envs: int, steps: int = 100, convention: str = "gym", backend: str = "mujoco",
             device: torch.device | str = "cpu") -> float:
    """Env steps per second of the batched stepper alone (random actions made beforehand on ``device``)."""
    device = torch.device(device)
    env = make_batched(env_name, num_envs, convention=convention, backend=backend,
                       **({"device": device} if backend == "warp" else {}))
    rng = np.random.default_rng(0)
    env.reset(env.sample_tasks(num_envs, rng), seeds=0)
    actions = torch.as_tensor(rng.standard_normal((steps, num_envs, env.act_dim)), dtype=torch.float32,
                              device=device if backend == "warp" else "cpu")
    env.step(actions[0])
    _sync(device)
    t0 = time.perf_counter()
    for t in range(1, steps):
        env.step(actions[t])
    _sync(device)
    return num_envs * (steps - 1) / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def product_costs(agent, repeats: int = 3) -> dict[str, float]:
    """One exact Fisher-vector product three ways on the same episodes: autograd through the whole
    graph, the structured ``J^T F' J`` by double backward, and the meta-step's own (``trpo.fvp``:
    closed form where it applies), whose FLOPs (``FlopCounterMode``) and rate are set beside a plain
    ``bmm`` of the policy's hidden-layer shapes ``[M, K, H] x [M, H, H]`` timed the same way."""
    from torch.utils.flop_counter import FlopCounterMode

    from rl_maml.rl.trpo import fisher_vector_product

    meta = agent.meta
    tasks = agent.sample_tasks(0)
    train = [agent._sample(meta.initial_params(agent.M), tasks, 0, 0)]
    adapted = meta.adapt_all(train)
    valid = agent._sample(adapted[-1], tasks, 0, "valid")
    params = list(meta.policy.parameters())
    v = torch.randn(sum(p.numel() for p in params), device=agent.device)
    fvp = meta.fisher_vector_product(train, valid, 1e-5, states=adapted)
    with FlopCounterMode(display=False) as counter:
        fvp(v)
    own = meta.trpo
    meta.trpo = dataclasses.replace(own, fvp="autograd", fvp_dtype="same")
    try:
        structured = meta.fisher_vector_product(train, valid, 1e-5, states=adapted)
    finally:
        meta.trpo = own
    _, kl, _ = meta.meta_objective(adapted, train, valid)
    whole = fisher_vector_product(kl, params, 1e-5)
    seconds = {name: _median_s(lambda f=f: f(v), agent.device, repeats)
               for name, f in (("whole_graph", whole), ("structured", structured), ("own", fvp))}
    M, K = valid.num_tasks, valid.per_task(valid.mask).shape[1]
    H = meta.policy.hidden_sizes[-1]
    a = torch.randn(M, K, H, device=agent.device)
    b = torch.randn(M, H, H, device=agent.device)
    bmm_seconds = _median_s(lambda: torch.bmm(a, b), agent.device, 10)
    flops = counter.get_total_flops()
    out = {**seconds, "gflop": flops / 1e9, "rate": flops / seconds["own"] / 1e9,
           "bmm_rate": 2 * M * K * H * H / bmm_seconds / 1e9, "bmm_shape": f"[{M}, {K}, {H}] x [{M}, {H}, {H}]"}
    if own.fvp_dtype == "bfloat16":  # the same bmm in the products' precision
        a16, b16 = a.to(torch.bfloat16), b.to(torch.bfloat16)
        out["bmm_rate_bf16"] = 2 * M * K * H * H / _median_s(lambda: torch.bmm(a16, b16), agent.device, 10) / 1e9
    return out


def _median_s(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn()`` after one warm-up (each call ends with a device sync)."""
    return time_adaptation(lambda: (fn(), _sync(device)), repeats, warmup=1)


def _busy_loop() -> None:  # pragma: no cover - runs in a child process until terminated
    while True:
        pass


class Contention:
    """``count`` busy-loop processes for the duration of a ``with`` block (stopped on exit, errors included)."""

    def __init__(self, count: int):
        self.count = count
        self.procs = []

    def __enter__(self):
        ctx = multiprocessing.get_context("spawn")
        self.procs = [ctx.Process(target=_busy_loop, daemon=True) for _ in range(self.count)]
        for p in self.procs:
            p.start()
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.join()


NAVIGATION_PAPER = ["inner.num_inner_steps=1", "inner.step_scales=[1.0]", "trpo.surrogate_steps=final",
                    "trpo.inner_objective=reinforce", "trpo.fvp_subsample=1.0"]
"""Overrides of the ``navigation`` preset that give the MAML paper's workload: 20 tasks x 20
episodes, one inner step, REINFORCE, exact curvature, 10 CG iterations."""


def _dtype(args) -> str:
    return getattr(args, "fvp_dtype", "same")


def config(args):
    from rl_maml.api import load_config

    if getattr(args, "preset", None):
        return load_config(args.preset, [f"train.meta_batch_size={args.tasks}", f"trpo.cg_iters={args.cg_iters}",
                                         f"trpo.fvp={args.fvp}", f"trpo.fvp_subsample={args.fvp_subsample}",
                                         f"trpo.fvp_dtype={_dtype(args)}",
                                         f"train.meta_step_threads={args.meta_step_threads}"])
    if args.workload == "navigation":
        return load_config("navigation", [*NAVIGATION_PAPER, f"trpo.cg_iters={args.cg_iters}", f"trpo.fvp={args.fvp}",
                                          f"trpo.fvp_dtype={_dtype(args)}",
                                          f"train.meta_step_threads={args.meta_step_threads}"])
    return from_dict(MetaRLConfig, {
        "env": {"name": args.env, "convention": getattr(args, "convention", "gym"),
                "backend": getattr(args, "backend", "mujoco")},
        "trpo": {"cg_iters": args.cg_iters, "fvp_subsample": args.fvp_subsample, "fvp": args.fvp,
                 "fvp_dtype": _dtype(args)},
        "train": {"meta_batch_size": args.tasks, "fast_batch_size": args.episodes,
                  "meta_step_threads": args.meta_step_threads},
    })


def measure(args, device: torch.device) -> dict:
    """Median phase times over ``args.iterations`` iterations after a warm-up, and the meta-step's own figures."""
    cfg = config(args)
    if cfg.train.num_threads is not None:
        torch.set_num_threads(cfg.train.num_threads)
    agent = build_agent(cfg, device)
    rows = [agent.train_step(i) for i in range(args.iterations + 1)][1:]

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    out = {k: med(k) for k in ("time/sampling_s", "time/adapting_s", "time/meta_step_s", "charts/env_steps",
                               "charts/cg_products", "charts/cg_residual")}
    out["total"] = out["time/sampling_s"] + out["time/adapting_s"] + out["time/meta_step_s"]
    out["meta_step_threads"] = agent.meta_step_threads
    return out


def main() -> None:
    from rl_maml import runtime

    runtime.apply(tune_malloc=True)  # as `rl-maml train` runs (RL_MAML_TUNE_MALLOC=0: glibc's default)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--workload", default="mujoco", choices=["mujoco", "navigation"],
                    help="mujoco: --env at --tasks x --episodes; navigation: the MAML paper's 2D-navigation workload")
    ap.add_argument("--preset", default=None,
                    help="time a meta-RL preset as it trains (its env, sizes and step budget; --tasks, --cg-iters, "
                         "--fvp and --fvp-subsample still apply), e.g. ant_dir_maml")
    ap.add_argument("--no-products", action="store_true",
                    help="skip the single Fisher-vector products (their autograd references are slow on large batches)")
    ap.add_argument("--env", default="HalfCheetahVel", help="a MuJoCo family")
    ap.add_argument("--convention", default="gym", choices=["gym", "maml"])
    ap.add_argument("--backend", default="mujoco", choices=["mujoco", "warp"],
                    help="env.backend: MuJoCo on the CPU, or MuJoCo Warp on --device")
    ap.add_argument("--tasks", type=int, default=40)
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--cg-iters", type=int, default=10)
    ap.add_argument("--fvp-subsample", type=float, default=1.0, help="fraction of episodes for Fisher products")
    ap.add_argument("--fvp", default="auto", choices=["auto", "closed_form", "autograd"],
                    help="how Fisher-vector products are computed (trpo.fvp)")
    ap.add_argument("--fvp-dtype", default="same", choices=["same", "bfloat16"],
                    help="precision of the closed-form Fisher products (trpo.fvp_dtype)")
    ap.add_argument("--meta-step-threads", type=int, default=0,
                    help="train.meta_step_threads (0: all cores)")
    ap.add_argument("--contend", type=int, default=0,
                    help="also measure with this many busy-loop processes running beside (started and stopped here)")
    ap.add_argument("--device", default="cpu", help="torch device of the policy and the meta-step: cpu, cuda or auto")
    args = ap.parse_args()
    try:
        device = resolve_device(args.device, option="--device")
    except ConfigError as e:  # not a device, or CUDA asked for but absent
        ap.error(str(e))
    runs = {"alone": measure(args, device)}
    if args.contend:
        with Contention(args.contend):
            runs[f"{args.contend} busy process(es) beside"] = measure(args, device)
    navigation = args.workload == "navigation" and not args.preset
    cfg = config(args)
    n_envs = cfg.train.meta_batch_size * cfg.train.fast_batch_size
    raw = None if navigation else raw_rate(cfg.env.name, n_envs, convention=cfg.env.convention,
                                           backend=cfg.env.backend, device=device)
    alone = runs["alone"]
    torch.set_num_threads(alone["meta_step_threads"])
    rates = None if args.no_products else product_costs(
        build_agent(config(argparse.Namespace(**{**vars(args), "fvp_subsample": 1.0})), device))
    if args.preset:
        print(f"preset {args.preset} ({cfg.env.name}, {cfg.env.convention} convention, {cfg.train.meta_batch_size} tasks, "
              f"batch_steps {cfg.train.batch_steps}), fvp {args.fvp} ({args.fvp_dtype}), fvp_subsample {args.fvp_subsample}, "
              f"cg_iters {args.cg_iters}, "
              f"torch {torch.__version__}, device {device}; median of {args.iterations} iterations")
    elif navigation:
        print("2D navigation with the MAML paper's workload (20 tasks x 20 episodes, one inner step, REINFORCE, "
              f"exact curvature), fvp {args.fvp} ({args.fvp_dtype}), cg_iters {args.cg_iters}, torch {torch.__version__}, device "
              f"{device}; median of {args.iterations} iterations")
    else:
        print(f"{args.env}, {args.convention} convention, backend {args.backend}, {args.tasks} tasks x {args.episodes} episodes, 2x100 ReLU policy, "
              f"fvp {args.fvp} ({args.fvp_dtype}), fvp_subsample {args.fvp_subsample}, cg_iters {args.cg_iters}, "
              f"meta_step_threads {args.meta_step_threads}, "
              f"torch {torch.__version__}, device {device}; median of {args.iterations} iterations")
    print(f"allocator tuned (rl_maml.runtime): {runtime.apply()['malloc_tuned']}")
    names = list(runs)
    print("| phase | " + " | ".join(f"{n}: seconds | share" for n in names) + " |")
    print("|---|" + "---|---|" * len(names))
    for key, label in (("time/sampling_s", "sampling (train + valid)"), ("time/adapting_s", "inner update"),
                       ("time/meta_step_s", "TRPO meta-step")):
        print(f"| {label} | " + " | ".join(f"{runs[n][key]:.2f} | {runs[n][key] / runs[n]['total']:.0%}"
                                          for n in names) + " |")
    print("| whole iteration | " + " | ".join(f"{runs[n]['total']:.2f} | " for n in names) + " |")
    print("| iteration env steps/s | " + " | ".join(f"{runs[n]['charts/env_steps'] / runs[n]['total']:,.0f} | "
                                                   for n in names) + " |")
    if raw is not None:
        print("| share of the stepper's raw rate | " + " | ".join(
            f"{runs[n]['charts/env_steps'] / runs[n]['total'] / raw:.0%} | " for n in names) + " |")
    print("| CG products, final residual |g - Fx|/|g| | " + " | ".join(
        f"{runs[n]['charts/cg_products']:.0f}, {runs[n]['charts/cg_residual']:.1e} | " for n in names) + " |")
    if raw is not None:
        print(f"\nbatched stepper raw (N = {n_envs}): {raw:,.0f} env steps/s")
    if args.contend:
        n = names[1]
        print(f"with {n}: iteration {runs[n]['total'] / alone['total']:.2f}x its time alone")
    if rates is None:
        return
    print(f"one exact Fisher-vector product ({alone['meta_step_threads']} threads, fvp {args.fvp}): "
          f"{rates['own'] * 1000:.0f} ms, {rates['gflop']:.2f} GFLOP at {rates['rate']:.1f} GFLOP/s; plain bmm "
          f"{rates['bmm_shape']}: {rates['bmm_rate']:.1f} GFLOP/s; products at {rates['rate'] / rates['bmm_rate']:.0%} "
          "of the bmm rate")
    if "bmm_rate_bf16" in rates:
        print(f"the same bmm in bfloat16: {rates['bmm_rate_bf16']:.1f} GFLOP/s; products at "
              f"{rates['rate'] / rates['bmm_rate_bf16']:.0%} of it")
    print(f"one Fisher-vector product by autograd: through the whole graph {rates['whole_graph']:.2f} s, structured "
          f"J^T F' J {rates['structured']:.2f} s; fvp {args.fvp}: {rates['own']:.2f} s "
          f"({rates['structured'] / rates['own']:.1f}x faster than the structured autograd product)")


if __name__ == "__main__":
    main()
