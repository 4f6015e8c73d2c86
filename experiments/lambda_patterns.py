"""Lambda-pattern search on a trained run (post hoc): adaptation time and quality per pattern.

    python -m rl_maml.experiments.lambda_patterns RUN_DIR [--family subsets|topk] [--steps S]
        [--val-tasks 200] [--timing-tasks 32] [--epsilons 0.5 1 2] [--out DIR]

RUN_DIR is an ``rl-maml train`` run of the ``fewshot`` (accuracy, higher is better; epsilon in
points), ``sinusoid`` (mean squared error, lower is better; epsilon in percent of full MAML's
error) or ``metarl`` benchmark (return after adaptation on held-out tasks, higher is better;
epsilon in return units; the policy has no frozen-prefix path, so only the gradient work of
frozen layers is skipped). For every pattern of the family it measures the adaptation time per task (the
frozen prefix on the support images plus the inner steps, median of repeats after warm-up, for a
batch of ``--timing-tasks`` tasks) and the quality on validation tasks, then reports the fastest
pattern within each epsilon of full MAML. Writes ``results.json``, ``results.md`` and
``patterns.png`` to ``--out`` (default ``RUN_DIR/lambda``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from rl_maml.checkpoint import atomic_write_bytes, latest_checkpoint
from rl_maml.config import from_dict, load_yaml
from rl_maml.functional import TaskBatchedModel
from rl_maml.patterns import LayerPattern, adapt_with_pattern, full_maml, select_pattern, subset_family, \
    time_adaptation, top_k_family
from rl_maml.seeding import torch_generator
from rl_maml.tasks.fewshot import accuracy
from rl_maml.training import load_learners

from . import plots


def load_run(run_dir: Path):
    """(learner, sample_val(num_tasks, generator) -> TaskBatch, benchmark name, config)."""
    raw = load_yaml(run_dir / "config.yaml")
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    if ckpt is None:
        raise SystemExit(f"{run_dir} has no checkpoint; train it first")
    if raw.get("benchmark") == "fewshot":
        from . import fewshot

        cfg = from_dict(fewshot.FewShotConfig, raw)
        dataset = fewshot.load_dataset(cfg.data)
        learner = fewshot.build_learner(cfg, torch.device("cpu"), dataset)
        load_learners(ckpt, {cfg.method: learner})
        val = dataset.tasks("val", cfg.task.ways, cfg.task.shots, cfg.eval.num_query)
        return learner, val.sample, "fewshot", cfg
    if raw.get("benchmark") == "sinusoid":
        from . import sinusoid

        cfg = from_dict(sinusoid.SinusoidConfig, raw)
        learners = sinusoid.build_learners(cfg, torch.device("cpu"))
        load_learners(ckpt, learners)
        tasks = sinusoid.make_tasks(cfg)

        def sample(n, g):
            return tasks.sample(n, cfg.task.num_support, 100, g)

        return learners["maml"], sample, "sinusoid", cfg
    if raw.get("benchmark") == "metarl":
        from . import metarl

        cfg = from_dict(metarl.MetaRLConfig, raw)
        agent = metarl.build_agent(cfg, torch.device("cpu"))
        load_learners(ckpt, {"maml": agent})
        return agent, None, "metarl", cfg
    raise SystemExit(f"{run_dir}: lambda patterns support the fewshot, sinusoid and metarl benchmarks, not {raw.get('benchmark')!r}")


def measure(learner, sample, benchmark: str, patterns: list[LayerPattern], val_tasks: int, timing_tasks: int,
            repeats: int, chunk: int = 100) -> list[dict]:
    model: TaskBatchedModel = learner.model
    learner.module.eval()
    params = {k: v.detach() for k, v in learner.params.items()}
    step_size = learner.inner.step_size
    timing_batch = sample(timing_tasks, torch_generator(0, "lambda-timing"))
    rows = []
    for pattern in patterns:
        def adapt():
            return adapt_with_pattern(model, params, step_size, pattern, timing_batch.support, create_graph=False)

        seconds = time_adaptation(adapt, repeats=repeats) / timing_tasks
        g = torch_generator(0, "lambda-val")
        scores, done = [], 0
        while done < val_tasks:
            n = min(chunk, val_tasks - done)
            batch = sample(n, g)
            adapted, qf, k = adapt_with_pattern(model, params, step_size, pattern, batch.support, batch.query[0],
                                                create_graph=False)
            with torch.no_grad():
                adapted = {name: v.detach() for name, v in adapted.items()}
                if benchmark == "fewshot":
                    scores.append(100 * accuracy(model.forward_range(adapted, qf, k), batch.query[1]))
                else:
                    scores.append(model.task_losses_from(adapted, (qf, batch.query[1]), k))
            done += n
        rows.append({"name": pattern.name, "pattern": str(pattern), "frozen_prefix": pattern.frozen_prefix,
                     "seconds_per_task": seconds, "score": torch.cat(scores).mean().item()})
    return rows


def measure_rl(agent, cfg, patterns: list[LayerPattern], val_tasks: int, repeats: int) -> list[dict]:
    """Meta-RL: time one inner step on a fixed episode batch; score = return after the steps."""
    from rl_maml.functional import expand_params
    from rl_maml.rl.baseline import LinearFeatureBaseline
    from rl_maml.rl.evaluation import adaptation_returns, evaluation_inner
    from rl_maml.seeding import numpy_generator

    env = cfg.env.make(val_tasks * cfg.eval.fast_batch_size, torch.device("cpu"))
    tasks = {k: torch.as_tensor(v) for k, v in env.sample_tasks(val_tasks, numpy_generator(1, "lambda-val")).items()}
    eval_inner = evaluation_inner(agent.meta.inner, cfg.eval.step_scales)
    groups = agent.policy.layer_groups()
    steps = patterns[0].num_steps
    rows, episodes = [], None
    for pattern in patterns:
        inner = dataclasses.replace(eval_inner, mask=pattern.mask(groups))
        returns, eps = adaptation_returns(agent.policy, env, tasks, cfg.eval.fast_batch_size, steps, inner,
                                          LinearFeatureBaseline(), cfg.train.gamma, cfg.train.gae_lambda, seed=1)
        episodes = episodes or eps[0]  # the same pre-adaptation episodes time every pattern
        params = {k: v.detach() for k, v in agent.meta.params().items()}

        adapted_names = set(inner.adapted_names(0, params))

        def adapt():
            leaves = {k: v.detach().requires_grad_(k in adapted_names) for k, v in params.items()}
            return agent.meta.adapt_step(expand_params(leaves, val_tasks), episodes, 0, inner=inner,
                                         create_graph=False)

        seconds = time_adaptation(adapt, repeats=repeats) * steps / val_tasks
        rows.append({"name": pattern.name, "pattern": str(pattern), "frozen_prefix": pattern.frozen_prefix,
                     "seconds_per_task": seconds, "score": returns[-1].mean().item()})
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--family", choices=["subsets", "topk"], default="subsets")
    ap.add_argument("--steps", type=int, default=None, help="inner steps (default: the run's training steps)")
    ap.add_argument("--val-tasks", type=int, default=200)
    ap.add_argument("--timing-tasks", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--epsilons", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    learner, sample, benchmark, cfg = load_run(args.run_dir)
    steps = args.steps or max(cfg.inner.num_inner_steps, 1)
    module = learner.policy if benchmark == "metarl" else learner.module
    num_layers = len(module.layer_groups())
    patterns = subset_family(num_layers, steps) if args.family == "subsets" else top_k_family(num_layers, steps)
    patterns = [full_maml(num_layers, steps)] + [p for p in patterns if str(p) != str(full_maml(num_layers, steps))]
    if benchmark == "metarl":
        rows = measure_rl(learner, cfg, patterns, min(args.val_tasks, 40), args.repeats)
    else:
        rows = measure(learner, sample, benchmark, patterns, args.val_tasks, args.timing_tasks, args.repeats)
    ref = rows[0]
    higher = benchmark != "sinusoid"
    for r in rows:
        r["speedup"] = ref["seconds_per_task"] / r["seconds_per_task"]
    selected = {}
    for eps in args.epsilons:
        tolerance = eps if higher else ref["score"] * eps / 100
        selected[str(eps)] = select_pattern(rows, tolerance, higher_is_better=higher)["name"]
    unit = {"fewshot": "accuracy (%)", "sinusoid": "MSE", "metarl": "return after adaptation"}[benchmark]
    results = {"run_dir": str(args.run_dir), "benchmark": benchmark, "steps": steps, "family": args.family,
               "metric": unit, "epsilon_unit": {"fewshot": "points", "sinusoid": "% of full MAML's MSE",
                                                "metarl": "return units"}[benchmark],
               "val_tasks": args.val_tasks, "timing_tasks": args.timing_tasks, "threads": torch.get_num_threads(),
               "rows": rows, "selected": selected}
    out = args.out or args.run_dir / "lambda"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "results.json", (json.dumps(results, indent=2) + "\n").encode())
    md = [f"# Lambda patterns on {args.run_dir} ({benchmark}, {steps} inner step(s), family {args.family})", "",
          "Pattern rows: one string per inner step, one character per layer from input to head (x adapts).", "",
          f"| pattern | frozen prefix | adaptation ms/task | speedup | {unit} | vs full MAML |",
          "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["seconds_per_task"]):
        md.append(f"| `{r['pattern']}`{' (full MAML)' if r is ref else ''} | {r['frozen_prefix']} | "
                  f"{1e3 * r['seconds_per_task']:.3f} | {r['speedup']:.2f}x | {r['score']:.3f} | "
                  f"{r['score'] - ref['score']:+.3f} |")
    md += ["", "| epsilon | selected pattern | speedup | " + unit + " |", "|---|---|---|---|"]
    by_name = {r["name"]: r for r in rows}
    for eps, name in selected.items():
        r = by_name[name]
        md.append(f"| {eps} {results['epsilon_unit']} | `{r['pattern']}` | {r['speedup']:.2f}x | {r['score']:.3f} |")
    text = "\n".join(md) + "\n"
    atomic_write_bytes(out / "results.md", text.encode())
    fig, ax = plots.plt.subplots(figsize=(6, 4))
    ax.scatter([r["speedup"] for r in rows], [r["score"] for r in rows], color="tab:blue")
    ax.scatter([ref["speedup"]], [ref["score"]], color="tab:red", label="full MAML")
    for name in set(selected.values()):
        r = by_name[name]
        ax.annotate(r["pattern"], (r["speedup"], r["score"]), fontsize=7)
    ax.set_xlabel("adaptation speedup over full MAML")
    ax.set_ylabel(unit)
    ax.grid(alpha=0.3)
    ax.legend()
    plots.save(fig, out / "patterns.png")
    print(text)
    return results


if __name__ == "__main__":
    main()
