"""Seconds per meta-iteration with 1 and K processes (torch.distributed, gloo), side by side.

    python -m rl_maml.experiments.benchmark_distributed --processes 2 --iterations 4 [key=value ...]

Trains the ``navigation`` preset (or ``--config``) for ``--iterations`` iterations in one process
and again under ``torchrun --nproc_per_node K`` (one intra-op thread per process), then reports the
mean seconds per iteration after the first (sampling, adaptation, meta-step) from each run's
TensorBoard logs, and the bytes each rank sends per iteration as counted from the reductions the
meta-step makes (see ``communication_bytes``). A supervised config (``--config omniglot_20w1s``,
``sinusoid``) reports the iteration alone, without validation (``eval.val_every=0``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def communication_bytes(num_params: int, cg_iters: int, ls_steps: float, env_steps_per_call: int,
                        sampling_calls: int) -> int:
    """Bytes all-reduced per meta-iteration by one rank (float64 and int64 payloads): the gradient,
    one Fisher-vector product per conjugate-gradient iteration, surrogate and KL per line-search
    candidate, a loop-control flag per env step of every sampling call, and the parameter check
    every ten iterations (amortised)."""
    vectors = 1 + cg_iters + 0.1  # gradient, CG products, the amortised parameter check
    return int(8 * num_params * vectors + 16 * ls_steps + 8 * env_steps_per_call * sampling_calls)


METARL_TAGS = (("iteration", "time/iteration_s"), ("sampling", "maml/time/sampling_s"),
               ("adapting", "maml/time/adapting_s"), ("meta_step", "maml/time/meta_step_s"),
               ("ls_steps", "maml/charts/ls_steps"))


def _timings(run: Path, tags=METARL_TAGS) -> dict[str, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    out = {}
    for key, tag in tags:
        values = [e.value for e in events.Scalars(tag)][1:]  # the first iteration warms up
        out[key] = sum(values) / len(values)
    return out


def _run(cmd: list[str], env: dict) -> None:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"benchmark_distributed: {' '.join(cmd[2:6])} ... failed:\n{done.stderr[-2000:]}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="navigation")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    from rl_maml.api import load_config
    from rl_maml.experiments.metarl import MetaRLConfig

    cfg = load_config(args.config, args.overrides)
    metarl = isinstance(cfg, MetaRLConfig)
    common = [f"train.num_iterations={args.iterations}", "train.log_every=1", *args.overrides]
    if hasattr(getattr(cfg, "eval", None), "val_every"):  # few-shot: time the iterations, not the validation
        common.append("eval.val_every=0")
    env = {**os.environ, "MPLBACKEND": "Agg"}
    with tempfile.TemporaryDirectory() as tmp:
        one, many = Path(tmp) / "one", Path(tmp) / "many"
        _run([sys.executable, "-m", "rl_maml.experiments.cli", "train", args.config, "--run-dir", str(one),
              "--no-progress", *common], env)
        _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
              str(args.processes), "-m", "rl_maml.experiments.cli", "train", args.config, "--run-dir",
              str(many), "--no-progress", *common, *(["train.meta_step_threads=1"] if metarl else [])],
             {**env, "OMP_NUM_THREADS": "1"})
        if not metarl:
            rows = {"1 process": _timings(one, METARL_TAGS[:1]),
                    f"{args.processes} processes": _timings(many, METARL_TAGS[:1])}
            base = rows["1 process"]["iteration"]
            print(f"{args.config}, {args.iterations} iterations (means over all but the first)\n")
            print("| processes | iteration (s) | speed-up |\n|---|---|---|")
            for name, r in rows.items():
                print(f"| {name} | {r['iteration']:.3f} | {base / r['iteration']:.2f}x |")
            return {"rows": rows}
        rows = {"1 process": _timings(one), f"{args.processes} processes": _timings(many)}
        from rl_maml.api import MetaPolicy

        meta = MetaPolicy.load(one)
        cfg = meta.config
        params = sum(p.numel() for p in meta.policy.parameters())
        steps = meta.agent.env.horizon
        calls = cfg.inner.num_inner_steps + 1
    volume = communication_bytes(params, cfg.trpo.cg_iters, rows["1 process"]["ls_steps"], steps, calls)
    print(f"{args.config}, {cfg.train.meta_batch_size} tasks x {cfg.train.fast_batch_size} episodes, "
          f"{args.iterations} iterations (means over all but the first)\n")
    print("| processes | iteration (s) | sampling (s) | adaptation (s) | meta-step (s) | speed-up |")
    print("|---|---|---|---|---|---|")
    base = rows["1 process"]["iteration"]
    for name, r in rows.items():
        print(f"| {name} | {r['iteration']:.2f} | {r['sampling']:.2f} | {r['adapting']:.2f} | {r['meta_step']:.2f} | "
              f"{base / r['iteration']:.2f}x |")
    print(f"\nall-reduced per iteration and rank: {volume / 1e3:.0f} kB ({params} policy parameters)")
    return {"rows": rows, "bytes_per_iteration": volume, "num_params": params}


if __name__ == "__main__":
    main()
