"""How fast can the `maml` Ant run at all? An open-loop gait searched by the cross-entropy method.

    python -m rl_maml.experiments.ant_gait_check [--iterations 80] [--population 64] [--seeds 10 11 12]

A physics check for AntDir, not a learning method. MAML's AntDir policy after one step returns
about 200 per 200-step episode where the paper's returns 499: is our Ant (the reference's time
step, contacts and reset on the installed MuJoCo) able to run as fast as the paper's at all? Each
candidate is a periodic open-loop controller, ``a_j(t) = clip(amp_j sin(2 pi f t + phase_j) +
bias_j, -1, 1)`` for the eight hinges (25 numbers), scored by the AntDir `maml` return of one
200-step episode (or the mean of ``--train-resets`` episodes) in one direction: the batched
stepper's own rewards, terminations and reset noise, every candidate of a generation from the
same reset seeds. The cross-entropy method keeps the best ``--elite`` of each generation.
Forward and backward are searched separately, and each search's best gait is scored on
``--test-episodes`` fresh resets.

What a search this small finds bounds the attainable return from below; a policy that sees the
state is not tied to one fixed rhythm and can correct the drift that ends open-loop episodes.

``--no-refsafe`` runs the same search with MuJoCo's ``mjDSBL_REFSAFE`` flag set: the contacts'
``solref`` time constant of 0.02 then acts as given instead of being raised to twice the time
step (0.04), which is the one contact setting whose MuJoCo 1.31 behaviour (the reference's) we
could not establish.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import numpy as np
import torch

import mujoco

import rl_maml  # noqa: F401  (registers the envs)
import rl_maml.envs.locomotion as locomotion
from rl_maml.envs import make_batched

NUM_JOINTS = 8
DIM = 3 * NUM_JOINTS + 1  # amplitudes, phases, biases, frequency


def controls(theta: np.ndarray, t: int, dt: float) -> np.ndarray:
    """Actions ``[P, 8]`` of ``P`` gaits ``theta [P, 25]`` at control step ``t``."""
    amp, phase = theta[:, :NUM_JOINTS], theta[:, NUM_JOINTS:2 * NUM_JOINTS]
    bias, freq = theta[:, 2 * NUM_JOINTS:3 * NUM_JOINTS], np.abs(theta[:, -1:])
    return np.clip(amp * np.sin(2 * np.pi * freq * t * dt + phase) + bias, -1.0, 1.0)


@contextlib.contextmanager
def _models_without_refsafe():
    """Ant models built inside set ``mjDSBL_REFSAFE`` (the batched stepper copies its model when it
    is built, so the flag has to be on the model before that)."""
    load_model = locomotion.load_model

    def patched(robot: str, convention: str = "gym") -> mujoco.MjModel:
        model = load_model(robot, convention)
        model.opt.disableflags |= int(mujoco.mjtDisableBit.mjDSBL_REFSAFE)
        return model

    locomotion.load_model = patched
    try:
        yield
    finally:
        locomotion.load_model = load_model


def episode_returns(theta: np.ndarray, direction: float, seeds: list[int], horizon: int = 200,
                    refsafe: bool = True) -> np.ndarray:
    """Undiscounted AntDir (`maml`) returns ``[len(seeds), P]``: one episode of each gait in
    ``theta [P, 25]`` from each reset seed (``refsafe=False``: with MuJoCo's ``mjDSBL_REFSAFE``)."""
    p, k = len(theta), len(seeds)
    with contextlib.nullcontext() if refsafe else _models_without_refsafe():
        env = make_batched("AntDir", p * k, convention="maml", nthread=1, dtype=torch.float64)
    env.reset({"direction": np.full(p * k, direction)}, [s for s in seeds for _ in range(p)])
    gaits = np.tile(theta, (k, 1))
    total = np.zeros(p * k)
    for t in range(horizon):
        _, reward, done, _ = env.step(torch.from_numpy(controls(gaits, t, env.dt)))
        total += reward.numpy()
        if bool(done.all()):
            break
    return total.reshape(k, p)


def search(direction: float, iterations: int, population: int, elite: int, seed: int,
           train_resets: int = 1, refsafe: bool = True) -> tuple[np.ndarray, list[float]]:
    """The cross-entropy method over gaits; returns the best gait found and each generation's best."""
    rng = np.random.default_rng(seed)
    mean = np.concatenate([np.full(NUM_JOINTS, 0.5), np.zeros(NUM_JOINTS), np.zeros(NUM_JOINTS), [2.0]])
    std = np.concatenate([np.full(NUM_JOINTS, 0.5), np.full(NUM_JOINTS, 3.0), np.full(NUM_JOINTS, 0.3), [1.5]])
    best, best_score, history = mean.copy(), -np.inf, []
    for generation in range(iterations):
        theta = mean + std * rng.standard_normal((population, DIM))
        resets = [int(s) for s in rng.integers(0, 2**31 - 1, size=train_resets)]
        scores = episode_returns(theta, direction, resets, refsafe=refsafe).mean(axis=0)
        order = np.argsort(scores)[-elite:]
        mean, std = theta[order].mean(axis=0), theta[order].std(axis=0) + 0.02
        if scores[order[-1]] > best_score:
            best, best_score = theta[order[-1]].copy(), float(scores[order[-1]])
        history.append(float(scores[order[-1]]))
    return best, history


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=80, help="CEM generations")
    parser.add_argument("--population", type=int, default=64)
    parser.add_argument("--elite", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[10, 11, 12], help="one search per seed")
    parser.add_argument("--train-resets", type=int, default=1,
                        help="episodes (reset seeds) averaged per candidate in the search: more finds gaits "
                             "that hold up under the reset noise")
    parser.add_argument("--directions", type=float, nargs="+", default=[1.0, -1.0], choices=[1.0, -1.0])
    parser.add_argument("--test-episodes", type=int, default=20)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--no-refsafe", action="store_true",
                        help="set MuJoCo's mjDSBL_REFSAFE: contact time constants below twice the time step act as given")
    args = parser.parse_args(argv)
    if args.elite < 2 or args.elite > args.population:
        parser.error(f"--elite must be in [2, --population], got {args.elite}")
    if min(args.iterations, args.train_resets, args.test_episodes) < 1:
        parser.error("--iterations, --train-resets and --test-episodes must be at least 1")
    torch.set_num_threads(1)
    rows = []
    for direction in args.directions:
        for seed in args.seeds:
            t0 = time.perf_counter()
            refsafe = not args.no_refsafe
            gait, history = search(direction, args.iterations, args.population, args.elite, seed, args.train_resets,
                                   refsafe)
            test = episode_returns(gait[None], direction, [10_000 + i for i in range(args.test_episodes)],
                                   refsafe=refsafe)[:, 0]
            rows.append({"direction": direction, "seed": seed, "search_best": max(history),
                         "test_mean": float(test.mean()), "test_sd": float(test.std()),
                         "seconds": time.perf_counter() - t0, "gait": gait.tolist()})
            print(f"direction {direction:+.0f}, seed {seed}: best in search {max(history):.1f}, "
                  f"on {args.test_episodes} fresh resets {test.mean():.1f} +- {test.std():.1f} "
                  f"({rows[-1]['seconds']:.0f} s)", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": {k: (str(v) if isinstance(v, Path) else v)
                                                  for k, v in vars(args).items()}, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
