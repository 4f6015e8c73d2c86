"""Environment steps per second: the batched MuJoCo stepper against the alternatives.

    python -m rl_maml.experiments.benchmark_envs [--sizes 40 400 800] [--seconds 2]

For HalfCheetahVel and AntVel (``gym`` convention: frame skip 5) at each N, measured in one
process, one after the other:

- ``batched``: :class:`rl_maml.envs.batched.BatchedLocomotion` (``mujoco.batch``, all cores),
  observations and rewards included;
- ``mj_step loop``: a single-thread Python loop of ``mj_step`` over N ``MjData`` (physics only);
- ``SyncVectorEnv``: Gymnasium's synchronous vector env over N single envs;
- ``AsyncVectorEnv``: Gymnasium's one-process-per-env vector env (N = 40 only: N processes of a
  MuJoCo env each do not fit a 2-core machine beyond that).

Random actions in [-0.1, 0.1] (times the convention's action scale). Ant episodes that fall stop
being simulated by the batched stepper, so every rate counts the env steps actually simulated.
"""

from __future__ import annotations

import argparse
import time

import gymnasium
import mujoco
import numpy as np
import torch
from rl_maml.envs import ENV_IDS, make_batched

import rl_maml  # noqa: F401  (registers the envs)


def rate(step_fn, seconds: float) -> float:
    """Env steps per second of ``step_fn() -> env steps done``, over about ``seconds``."""
    step_fn()  # warm-up
    done, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        done += step_fn()
    return done / elapsed


def batched_rate(name: str, n: int, seconds: float, rng: np.random.Generator) -> float:
    env = make_batched(name, n)
    tasks = env.TASKS.sample(n, rng)

    def step() -> int:
        if env.steps >= env.horizon or not env.alive.any():
            env.reset(tasks, seeds=0)
        live = int(env.alive.sum())
        env.step(torch.as_tensor(rng.uniform(-0.1, 0.1, (n, env.act_dim)), dtype=torch.float32))
        return live

    env.reset(tasks, seeds=0)
    return rate(step, seconds)


def loop_rate(name: str, n: int, seconds: float, rng: np.random.Generator) -> float:
    proto = gymnasium.make(ENV_IDS[name]).unwrapped
    model, skip, scale = proto.model, proto.frame_skip, proto.convention.action_scale
    datas = [mujoco.MjData(model) for _ in range(n)]
    for d in datas:
        mujoco.mj_forward(model, d)

    def step() -> int:
        ctrl = np.clip(scale * rng.uniform(-0.1, 0.1, (n, model.nu)), -1, 1)
        for d, c in zip(datas, ctrl):
            d.ctrl[:] = c
            mujoco.mj_step(model, d, nstep=skip)
        return n

    return rate(step, seconds)


def vector_rate(name: str, n: int, seconds: float, rng: np.random.Generator, asynchronous: bool) -> float:
    fns = [lambda: gymnasium.make(ENV_IDS[name]) for _ in range(n)]
    env = gymnasium.vector.AsyncVectorEnv(fns) if asynchronous else gymnasium.vector.SyncVectorEnv(fns)
    env.reset(seed=0)
    act_dim = env.single_action_space.shape[0]

    def step() -> int:
        env.step(rng.uniform(-0.1, 0.1, (n, act_dim)))
        return n  # autoreset keeps every env stepping

    try:
        return rate(step, seconds)
    finally:
        env.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[40, 400, 800])
    ap.add_argument("--seconds", type=float, default=2.0, help="measuring time per cell")
    ap.add_argument("--envs", nargs="+", default=["HalfCheetahVel", "AntVel"])
    args = ap.parse_args()
    torch.set_num_threads(1)  # torch's spinning threads would steal the physics threads' cores
    rng = np.random.default_rng(0)
    print(f"mujoco {mujoco.__version__}, gymnasium {gymnasium.__version__}, 'gym' convention; env steps per second")
    print("| env | N | batched | mj_step loop | SyncVectorEnv | AsyncVectorEnv | batched/loop | batched/sync |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.envs:
        for n in args.sizes:
            b = batched_rate(name, n, args.seconds, rng)
            lp = loop_rate(name, n, args.seconds, rng)
            sync = vector_rate(name, n, args.seconds, rng, asynchronous=False)
            asyn = f"{vector_rate(name, n, args.seconds, rng, asynchronous=True):,.0f}" if n <= 40 else "n/a"
            print(f"| {name} | {n} | {b:,.0f} | {lp:,.0f} | {sync:,.0f} | {asyn} | {b / lp:.2f}x | {b / sync:.2f}x |",
                  flush=True)


if __name__ == "__main__":
    main()
