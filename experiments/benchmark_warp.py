"""MuJoCo Warp against the MuJoCo CPU stepper: env steps per second against N, and whole meta-iterations.

    python -m rl_maml.experiments.benchmark_warp --device cuda [--sizes 800 4096 16384 65536]
        [--envs HalfCheetahVel AntVel] [--convention gym] [--iterations 3] [--out DIR]

In one run, on one machine:

1. Stepping. For each family and N: :class:`~rl_maml.envs.warp_locomotion.WarpLocomotion`'s
   whole ``step`` (control, physics, observation, reward and termination on the device; random
   actions made beforehand on the device), and its physics alone (the captured control step
   replayed), in env steps per second (``--deterministic-too`` adds MuJoCo Warp's deterministic
   mode, off by default); beside them the CPU stepper
   (:class:`~rl_maml.envs.batched.BatchedLocomotion`, all cores) at N = 800. Every world is
   simulated every step on Warp; the CPU stepper simulates only live episodes, and its rate counts
   those.
2. Meta-iterations. For each family: a MAML-TRPO iteration at 40 tasks x 20 episodes (exact
   curvature, one inner step; ``benchmark_metarl``'s workload) with ``env.backend=warp`` (all on
   the device) and with ``env.backend=mujoco`` (physics on the CPU cores, the rest on the
   device), split into sampling, inner update and meta-step: the median of ``--iterations`` after
   one warm-up.

``--out DIR`` also writes ``warp_benchmark.json`` and ``warp_benchmark.md`` there. On a CPU-only
machine ``--device cpu`` runs Warp's CPU device (a check that the benchmark runs, not a
measurement worth reporting).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from rl_maml.envs import make_batched
from rl_maml.experiments.benchmark_metarl import measure, raw_rate
from rl_maml.experiments.sinusoid import resolve_device

from rl_maml.config import ConfigError


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warp_rates(env_name: str, n: int, convention: str, device: torch.device, steps: int,
               deterministic: bool = False) -> dict[str, float]:
    """Whole-step and physics-only env steps per second of the Warp stepper at N = ``n``."""
    t0 = time.perf_counter()
    env = make_batched(env_name, n, convention=convention, backend="warp", device=device, deterministic=deterministic)
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    env.reset(env.sample_tasks(n, rng), seeds=0)
    g = torch.Generator(device=device).manual_seed(0)
    actions = torch.rand(steps, n, env.act_dim, generator=g, device=device) * 2 - 1
    env.step(actions[0])
    _sync(device)
    t0 = time.perf_counter()
    for t in range(steps):
        env.step(actions[t])
    _sync(device)
    whole = n * steps / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(steps):
        env._step_physics()
    _sync(device)
    physics = n * steps / (time.perf_counter() - t0)
    return {"whole_step": whole, "physics": physics, "build_s": build_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="torch device for Warp and the agent: cuda, cuda:N or cpu")
    ap.add_argument("--sizes", type=int, nargs="+", default=[800, 4096, 16384, 65536])
    ap.add_argument("--envs", nargs="+", default=["HalfCheetahVel", "AntVel"])
    ap.add_argument("--convention", default="gym", choices=["gym", "maml"])
    ap.add_argument("--steps", type=int, default=50, help="control steps timed per cell")
    ap.add_argument("--iterations", type=int, default=3, help="meta-iterations timed (0: skip them)")
    ap.add_argument("--tasks", type=int, default=40)
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--cpu-size", type=int, default=800, help="N of the CPU stepper's rate")
    ap.add_argument("--out", type=Path, default=None, help="also write warp_benchmark.{json,md} here")
    ap.add_argument("--deterministic-too", action="store_true",
                    help="also time the stepper with MuJoCo Warp's deterministic mode on (the default is off)")
    args = ap.parse_args()
    try:
        device = resolve_device(args.device, option="--device")
    except ConfigError as e:
        ap.error(str(e))
    import warp

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "Warp's CPU device"
    header = (f"MuJoCo Warp {warp.__version__} on {where}, {args.convention} convention, torch {torch.__version__}; "
              f"CPU stepper on {torch.get_num_threads()} threads")
    print(header, flush=True)
    step_lines = ["| env | N | Warp whole step, steps/s | Warp physics only, steps/s | CPU stepper, steps/s |",
                  "|---|---|---|---|---|"]
    iter_lines = [f"Meta-iteration, {args.tasks} tasks x {args.episodes} episodes, exact curvature, median of "
                  f"{args.iterations} after a warm-up (seconds):", "",
                  "| env | backend | sampling | inner update | meta-step | whole iteration | env steps/s |",
                  "|---|---|---|---|---|---|---|"]
    results: dict = {"header": header, "stepping": [], "iterations": []}

    def write() -> None:  # after every row: a run cut short keeps what it measured
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "warp_benchmark.json").write_text(json.dumps(results, indent=2))
            (args.out / "warp_benchmark.md").write_text("\n".join([header, "", *step_lines, "", *iter_lines]) + "\n")

    for name in args.envs:  # one family at a time, its meta-iterations right after its stepping
        cpu = raw_rate(name, args.cpu_size, steps=args.steps, convention=args.convention)
        results["stepping"].append({"env": name, "N": args.cpu_size, "cpu_stepper": cpu})
        step_lines.append(f"| {name} | {args.cpu_size} | | | {cpu:,.0f} |")
        print(step_lines[-1], flush=True)
        for n in args.sizes:
            r = warp_rates(name, n, args.convention, device, args.steps)
            results["stepping"].append({"env": name, "N": n, **r})
            step_lines.append(f"| {name} | {n} | {r['whole_step']:,.0f} | {r['physics']:,.0f} | |")
            print(step_lines[-1], flush=True)
            write()
            if args.deterministic_too:
                r = warp_rates(name, n, args.convention, device, args.steps, deterministic=True)
                results["stepping"].append({"env": name, "N": n, "deterministic": True, **r})
                step_lines.append(f"| {name} (deterministic mode) | {n} | {r['whole_step']:,.0f} | "
                                  f"{r['physics']:,.0f} | |")
                print(step_lines[-1], flush=True)
                write()
        for backend in ("warp", "mujoco") if args.iterations else ():
            ns = argparse.Namespace(workload="mujoco", env=name, convention=args.convention, backend=backend,
                                    tasks=args.tasks, episodes=args.episodes, cg_iters=10, fvp_subsample=1.0,
                                    fvp="auto", meta_step_threads=0, iterations=args.iterations)
            m = measure(ns, device)
            results["iterations"].append({"env": name, "backend": backend, **m})
            iter_lines.append(f"| {name} | {backend} | {m['time/sampling_s']:.3f} | {m['time/adapting_s']:.3f} | "
                              f"{m['time/meta_step_s']:.3f} | {m['total']:.3f} | "
                              f"{m['charts/env_steps'] / m['total']:,.0f} |")
            print(iter_lines[-1], flush=True)
            write()


if __name__ == "__main__":
    main()
