"""Alpha MAML versus MAML over a grid of initial step sizes (alpha, beta).

    python -m rl_maml.experiments.alpha_grid sinusoid --out docs/results/alpha_grid_sinusoid
    python -m rl_maml.experiments.alpha_grid omniglot --out docs/results/alpha_grid_omniglot

For every cell both learners start from the same initialisation and see the same meta-batches
(``--iterations`` of them, Adam outer loop with initial step size beta); MAML keeps alpha and beta
fixed, Alpha MAML adapts them by hypergradient descent. Each is then evaluated after one inner
step on held-out tasks. A cell *converged* when the final score is finite and better than the
threshold (sinusoid: MSE below 1.0, a third of the unadapted error; Omniglot: accuracy above 50%,
2.5x chance). Writes ``results.json``, ``results.md`` and side-by-side heatmaps ``grid.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from rl_maml.agents import AlphaMAMLLearner, make_supervised_learner
from rl_maml.checkpoint import atomic_write_bytes
from rl_maml.config import InnerConfig, VariantConfig
from rl_maml.nn import MLP, Conv4
from rl_maml.seeding import seed_everything, torch_generator
from rl_maml.tasks.fewshot import accuracy

from . import plots

SETUPS = {
    "sinusoid": {"alphas": [0.001, 0.01, 0.1, 0.3, 1.0], "betas": [1e-4, 1e-3, 1e-2, 3e-2, 1e-1],
                 "iterations": 2000, "alpha_hyper_lr": 1e-5, "beta_hyper_lr": 1e-7},
    "omniglot": {"alphas": [0.04, 0.4, 4.0], "betas": [1e-4, 1e-3, 1e-2],
                 "iterations": 300, "alpha_hyper_lr": 1e-3, "beta_hyper_lr": 1e-7},
}


def make_problem(benchmark: str, data_root: str | None):
    """(make_net, criterion, sample_train(iteration), test batch, score(learner, batch) -> float, converged)."""
    if benchmark == "sinusoid":
        from rl_maml.tasks.sinusoid import SinusoidTasks

        tasks = SinusoidTasks()
        test = tasks.sample(300, 10, 100, torch_generator(2017, "alpha-grid-test"))

        def score(learner, batch):
            return learner.evaluate(batch, 1)[1].mean().item()

        return (lambda: MLP(1, 1, (40, 40)), F.mse_loss,
                lambda it: tasks.sample(25, 10, 10, torch_generator(0, "alpha-grid", it)), test, score,
                lambda s: math.isfinite(s) and s < 1.0)
    from rl_maml.tasks.fewshot import FewShotTasks
    from rl_maml.tasks.omniglot import load_omniglot, omniglot_splits

    data = load_omniglot(data_root)
    split = omniglot_splits(data.names)
    train = FewShotTasks(data.images[torch.from_numpy(split.train)], 5, 1, 1, rotate=True, invert=True)
    val = FewShotTasks(data.images[torch.from_numpy(split.val)], 5, 1, 15, rotate=True, invert=True)
    test = val.sample(200, torch_generator(2017, "alpha-grid-test"))

    def score(learner, batch):
        return 100 * learner.evaluate(batch, 1, score=accuracy)[1].mean().item()

    return (lambda: Conv4(1, 5, hidden=32), F.cross_entropy,
            lambda it: train.sample(32, torch_generator(0, "alpha-grid", it)), test, score,
            lambda s: math.isfinite(s) and s > 50.0)


def run_cell(make_net, criterion, sample, test, score, method: str, alpha: float, beta: float, iterations: int,
             alpha_hyper_lr: float, beta_hyper_lr: float) -> dict:
    seed_everything(0)
    net = make_net()
    inner = InnerConfig(inner_lr=alpha)
    variant = VariantConfig(alpha_hyper_lr=alpha_hyper_lr, beta_hyper_lr=beta_hyper_lr, outer="adam")
    learner = make_supervised_learner(method, net, criterion, inner, variant, beta)
    failed = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # clipping is counted below, not printed per cell
        clipped = 0
        for it in range(iterations):
            try:
                metrics = learner.train_step(sample(it))
            except FloatingPointError:
                failed = it
                break
            clipped += int(metrics.get("charts/clipped_updates", 0))
    result = {"score": float("nan") if failed is not None else score(learner, test), "diverged_at": failed,
              "clipped_updates": clipped}
    if isinstance(learner, AlphaMAMLLearner):
        result["final_alpha"] = learner.step_size.as_dict()["alpha"]
        result["final_beta"] = learner.optimizer.lr
    return result


def plot_grid(results: dict, path: Path) -> None:
    """Side-by-side heatmaps on one shared (log) colour scale; 'x' marks a cell that did not converge."""
    from matplotlib.colors import LogNorm

    higher = results["benchmark"] == "omniglot"
    grid, alphas, betas = results["grid"], results["alphas"], results["betas"]
    finite = [c["score"] for rows in grid.values() for row in rows for c in row if math.isfinite(c["score"])]
    norm = None if higher else LogNorm(vmin=min(finite), vmax=max(finite))
    fig, axes = plots.plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, (method, rows) in zip(axes, grid.items()):
        values = torch.tensor([[c["score"] for c in row] for row in rows]).numpy()
        im = ax.imshow(values, origin="lower", cmap="viridis" if higher else "viridis_r", norm=norm,
                       vmin=min(finite) if higher else None, vmax=max(finite) if higher else None)
        for i, row in enumerate(rows):
            for j, c in enumerate(row):
                text = "diverged" if not math.isfinite(c["score"]) else f"{c['score']:.2f}"
                ax.text(j, i, text + ("" if c["converged"] else "\nx"), ha="center", va="center", fontsize=7,
                        color="k" if c["converged"] else ("w" if math.isfinite(c["score"]) else "tab:red"))
        ax.set_xticks(range(len(betas)), [f"{b:g}" for b in betas])
        ax.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas])
        ax.set_xlabel("initial beta (outer step size)")
        ax.set_ylabel("initial alpha (inner step size)")
        s = results["summary"][method]
        ax.set_title(f"{method}: {s['converged_cells']}/{s['cells']} converged")
        fig.colorbar(im, ax=ax, label=results["metric"])
    plots.save(fig, path)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("benchmark", choices=sorted(SETUPS))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--iterations", type=int, default=None, help="meta-iterations per cell (default per benchmark)")
    ap.add_argument("--data-root", default=None, help="Omniglot folder (default: data.root rules, $RL_MAML_DATA)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="2x2 grid and 20 iterations (for tests)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    setup = dict(SETUPS[args.benchmark])
    if args.quick:
        setup.update(alphas=setup["alphas"][1:3], betas=setup["betas"][1:3], iterations=20)
    iterations = args.iterations or setup["iterations"]
    make_net, criterion, sample, test, score, converged = make_problem(args.benchmark, args.data_root)
    t0 = time.perf_counter()
    grid: dict[str, list[list[dict]]] = {}
    for method in ("maml", "alpha_maml"):
        grid[method] = [[run_cell(make_net, criterion, sample, test, score, method, a, b, iterations,
                                  setup["alpha_hyper_lr"], setup["beta_hyper_lr"]) for b in setup["betas"]]
                        for a in setup["alphas"]]
        for row in grid[method]:
            for cell in row:
                cell["converged"] = converged(cell["score"])
        print(f"{method}: done ({time.perf_counter() - t0:.0f} s)", flush=True)
    higher = args.benchmark == "omniglot"
    summary = {}
    for method, rows in grid.items():
        cells = [c for row in rows for c in row]
        finite = [c["score"] for c in cells if math.isfinite(c["score"])]
        summary[method] = {"converged_cells": sum(c["converged"] for c in cells), "cells": len(cells),
                           "best": (max(finite) if higher else min(finite)) if finite else float("nan")}
    results = {"benchmark": args.benchmark, "alphas": setup["alphas"], "betas": setup["betas"],
               "iterations": iterations, "alpha_hyper_lr": setup["alpha_hyper_lr"],
               "beta_hyper_lr": setup["beta_hyper_lr"], "metric": "accuracy (%) after 1 step" if higher else
               "MSE after 1 step", "grid": grid, "summary": summary, "seconds": time.perf_counter() - t0}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "results.json", (json.dumps(results, indent=2) + "\n").encode())
    md = [f"# Alpha MAML vs MAML over initial (alpha, beta): {args.benchmark}, {iterations} iterations per cell",
          "", f"Metric: {results['metric']} on held-out tasks; * marks a converged cell.", ""]
    for method, rows in grid.items():
        md += [f"## {method}", "", "| alpha \\ beta | " + " | ".join(f"{b:g}" for b in setup["betas"]) + " |",
               "|---|" + "---|" * len(setup["betas"])]
        for a, row in zip(setup["alphas"], rows):
            md.append(f"| {a:g} | " + " | ".join(f"{c['score']:.3f}{'*' if c['converged'] else ''}" for c in row) + " |")
        s = summary[method]
        md += ["", f"converged in {s['converged_cells']} of {s['cells']} cells; best {s['best']:.3f}", ""]
    text = "\n".join(md)
    atomic_write_bytes(args.out / "results.md", text.encode())
    plot_grid(results, args.out / "grid.png")
    print(text)
    return results


if __name__ == "__main__":
    main()
