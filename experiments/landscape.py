"""The easy/hard task-landscape analysis of MAML versus non-adaptive learning (arXiv 2010.14672).

    python -m rl_maml.experiments.landscape --out docs/results/landscape [--quick]

Writes ``results.json``, ``results.md`` and figures:

1. Monte-Carlo check: MAML and NAL trained with the engine (a linear model, the engine's inner
   loop with n support points, Adam with iterate averaging) against the closed forms of
   :mod:`rl_maml.landscape`: excess risks after adaptation and distances between solutions.
2. Closed-form sweeps of the gain ratio (NAL's excess risk after one adaptation step over MAML's):
   against the hardness discrepancy (the hard tasks' covariance scale), and over a grid of the
   hard tasks' spread of optima x the distance between the easy and hard centres.
3. The same three sweeps measured for a two-layer ReLU network trained with the engine, MAML and
   NAL side by side, both adapted with one step on n samples at test time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rl_maml.checkpoint import atomic_write_bytes
from rl_maml.functional import TaskBatchedModel, expand_params, params_of
from rl_maml.inner import ConstantStepSize, InnerLoop
from rl_maml.landscape import LinearTaskDistribution, TaskGroup
from rl_maml.maml import meta_loss
from rl_maml.nn import MLP
from rl_maml.seeding import torch_generator

from . import plots

DIM = 2
EASY_SCALE = 1.0
ALPHA = 0.9  # inner step; 1 / EASY_SCALE would solve an easy task in one step
N_CHECK = 10  # support points of the Monte-Carlo check (tests the finite-sample closed form)
N_NETWORK = 50  # support points of the network experiments
NAL_STEPS = (0.9, 0.3, 0.1, 0.03)  # test-time step sizes tried for the network NAL baseline


def half_mse(pred, target):
    """The task loss 1/2 (x^T theta - y)^2, averaged: its population value is f(theta) of the closed forms."""
    return 0.5 * F.mse_loss(pred, target)


def base_distribution(hard_scale=0.1, hard_spread=0.25, distance=3.0, easy_spread=1.0, noise=0.1,
                      hard_weight=0.5) -> LinearTaskDistribution:
    """Easy tasks: scale 1, optima N(0, easy_spread^2 I). Hard: optima around distance * e_1."""
    return LinearTaskDistribution(
        DIM,
        easy=TaskGroup(1 - hard_weight, EASY_SCALE, 0.0, easy_spread),
        hard=TaskGroup(hard_weight, hard_scale, distance, hard_spread),
        noise=noise,
    )


def train_linear(dist: LinearTaskDistribution, method: str, alpha: float, n: int, iterations: int,
                 meta_batch: int, seed: int, model: nn.Module | None = None, lr: float = 0.02) -> nn.Module:
    """Train ``model`` (default: linear, no bias) with the engine as MAML or NAL; returns it.

    MAML: one inner step of size ``alpha`` on ``n`` support points, scored on fresh query points.
    NAL: the average loss of the initialisation over all points. Adam with the step size halved
    at 50% and 75% of the run; the returned parameters average the last quarter's iterates.
    """
    torch.manual_seed(seed)
    net = model if model is not None else nn.Linear(dist.dim, 1, bias=False).double()
    net.weight.data.zero_() if model is None else None
    engine = TaskBatchedModel(net, half_mse)
    params = params_of(net)
    inner = InnerLoop(ConstantStepSize(alpha), num_steps=1)
    opt = torch.optim.Adam(params.values(), lr=lr)
    avg = {k: torch.zeros_like(v) for k, v in params.items()}
    count = 0
    dtype = next(net.parameters()).dtype
    for it in range(iterations):
        if it in (iterations // 2, 3 * iterations // 4):
            for group in opt.param_groups:
                group["lr"] /= 2
        batch = dist.sample(meta_batch, n, 50, torch_generator(seed, method, it), dtype=dtype)
        if method == "maml":
            loss = meta_loss(engine, params, inner, batch.support, batch.query).loss
        else:
            shared = expand_params(params, meta_batch)
            loss = 0.5 * (engine.task_losses(shared, batch.support).mean() + engine.task_losses(shared, batch.query).mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it >= 3 * iterations // 4:
            with torch.no_grad():
                for k, v in params.items():
                    avg[k] += v
            count += 1
    with torch.no_grad():
        for k, v in params.items():
            v.copy_(avg[k] / count)
    return net


def measured_excess_risk(net: nn.Module, dist: LinearTaskDistribution, alpha: float, n: int, num_tasks: int,
                         seed: int) -> float:
    """Monte-Carlo excess risk after one inner step on n points: query loss minus sigma^2 / 2."""
    engine = TaskBatchedModel(net, half_mse)
    params = {k: v.detach() for k, v in params_of(net).items()}
    inner = InnerLoop(ConstantStepSize(alpha), num_steps=1, first_order=True)
    dtype = next(net.parameters()).dtype
    batch = dist.sample(num_tasks, n, 200, torch_generator(seed, "test"), dtype=dtype)
    adapted = inner.adapt(params, engine.task_losses, batch.support, num_tasks=num_tasks, create_graph=False)
    with torch.no_grad():
        return engine.task_losses({k: v.detach() for k, v in adapted.items()}, batch.query).mean().item() \
            - 0.5 * dist.noise**2


def monte_carlo_check(quick: bool) -> list[dict]:
    cases = {
        "same hardness and centre": base_distribution(hard_scale=1.0, distance=0.0, hard_spread=1.0),
        "hard tasks packed far away": base_distribution(),
        "mild discrepancy": base_distribution(hard_scale=0.4, hard_spread=0.6, distance=1.5),
    }
    rows = []
    its = 400 if quick else 3000
    for name, dist in cases.items():
        for method in ("maml", "nal"):
            t0 = time.perf_counter()
            net = train_linear(dist, method, ALPHA, N_CHECK, its, 100, seed=0)
            theta = net.weight.detach().view(-1)
            closed = dist.maml_solution(ALPHA, N_CHECK) if method == "maml" else dist.nal_solution()
            risk_trained = dist.excess_risk(theta, ALPHA, N_CHECK)
            risk_closed = dist.excess_risk(closed, ALPHA, N_CHECK)
            rows.append({
                "case": name, "method": method, "iterations": its,
                "risk_closed_form": risk_closed, "risk_trained": risk_trained,
                "risk_rel_diff": abs(risk_trained - risk_closed) / risk_closed,
                "solution_distance": (theta - closed).norm().item(),
                "closed_form_solution": closed.tolist(),
                "seconds": time.perf_counter() - t0,
            })
    return rows


def closed_form_sweeps(quick: bool) -> dict:
    """Gain ratios with the exact inner gradient (n = None) and with n = N_NETWORK samples."""
    k = 5 if quick else 13
    hardness = torch.logspace(0, -2, k).tolist()
    spreads = torch.linspace(0.05, 2.0, k).tolist()
    distances = torch.linspace(0.0, 5.0, k).tolist()

    def ratio(n=None, **kw):
        return base_distribution(**kw).gain_ratio(ALPHA, n)

    return {
        "hardness": {"hard_scale": hardness,
                     "ratio": [ratio(hard_scale=s) for s in hardness],
                     "ratio_n": [ratio(N_NETWORK, hard_scale=s) for s in hardness],
                     "ratio_equal_centres": [ratio(hard_scale=s, distance=0.0) for s in hardness]},
        "grid": {"hard_spread": spreads, "distance": distances,
                 "ratio": [[ratio(hard_spread=r, distance=c) for c in distances] for r in spreads],
                 "ratio_n": [[ratio(N_NETWORK, hard_spread=r, distance=c) for c in distances] for r in spreads],
                 "ratio_no_discrepancy": [[ratio(hard_scale=EASY_SCALE, hard_spread=r, distance=c) for c in distances]
                                          for r in spreads]},
    }


def network_sweeps(quick: bool, alpha: float = ALPHA, hidden: int = 40) -> dict:
    """Measured gain ratios for a d-40-1 ReLU network (same task distributions, inner step ``alpha``)."""
    its, test_tasks = (100, 200) if quick else (1000, 2000)
    values = {
        "hard_scale": [1.0, 0.3, 0.1, 0.03] if not quick else [1.0, 0.1],
        "hard_spread": [0.1, 0.5, 1.0, 2.0] if not quick else [0.1, 2.0],
        "distance": [0.0, 1.5, 3.0, 4.5] if not quick else [0.0, 4.5],
    }
    out = {}
    for key, grid in values.items():
        ratios, tuned, risks = [], [], []
        for v in grid:
            dist = base_distribution(**{key: v})
            risk = {}
            for method in ("maml", "nal"):
                torch.manual_seed(0)
                net = train_linear(dist, method, alpha, N_NETWORK, its, 50, seed=0,
                                   model=MLP(DIM, 1, (hidden,)).double(), lr=0.003)
                risk[method] = measured_excess_risk(net, dist, alpha, N_NETWORK, test_tasks, seed=1)
                if method == "nal":
                    # The paper's protocol adapts both with the same alpha. NAL was not trained for any
                    # step size, so it also gets the one of NAL_STEPS that does best on separate
                    # validation tasks: a stronger baseline.
                    val = {a: measured_excess_risk(net, dist, a, N_NETWORK, test_tasks, seed=2) for a in NAL_STEPS}
                    risk["nal_step"] = min(val, key=val.get)
                    risk["nal_tuned"] = measured_excess_risk(net, dist, risk["nal_step"], N_NETWORK, test_tasks, seed=1)
            risks.append(risk)
            ratios.append(risk["nal"] / risk["maml"])
            tuned.append(risk["nal_tuned"] / risk["maml"])
        out[key] = {"values": grid, "ratio": ratios, "ratio_tuned_nal": tuned, "risks": risks}
    return out


def plot_all(results: dict, out: Path) -> None:
    cf = results["closed_form"]
    fig, axes = plots.plt.subplots(1, 3, figsize=(16, 4.5))
    ax = axes[0]
    ax.semilogx(cf["hardness"]["hard_scale"], cf["hardness"]["ratio"], marker="o", label="hard centre 3 e1, spread 0.25")
    ax.semilogx(cf["hardness"]["hard_scale"], cf["hardness"]["ratio_n"], marker=".",
                label=f"same, inner step on n = {N_NETWORK} samples")
    ax.semilogx(cf["hardness"]["hard_scale"], cf["hardness"]["ratio_equal_centres"], marker="s",
                label="hard centre = easy centre")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.invert_xaxis()
    ax.set_xlabel("hard tasks' covariance scale (easy: 1)")
    ax.set_ylabel("NAL / MAML excess risk after adaptation")
    ax.set_title("closed form: hardness discrepancy")
    ax.legend(fontsize=8)
    for ax, key, title in ((axes[1], "ratio", "hard scale 0.1 vs easy 1"),
                           (axes[2], "ratio_no_discrepancy", "no hardness discrepancy")):
        grid = torch.tensor(cf["grid"][key]).numpy()
        im = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis",
                       extent=[cf["grid"]["distance"][0], cf["grid"]["distance"][-1],
                               cf["grid"]["hard_spread"][0], cf["grid"]["hard_spread"][-1]])
        fig.colorbar(im, ax=ax, label="gain ratio")
        ax.set_xlabel("distance between easy and hard centres")
        ax.set_ylabel("hard tasks' spread of optima")
        ax.set_title(f"closed form: {title}")
    plots.save(fig, out / "closed_form.png")
    net = results["network"]
    fig, axes = plots.plt.subplots(1, 3, figsize=(15, 4))
    labels = {"hard_scale": "hard tasks' covariance scale", "hard_spread": "hard tasks' spread of optima",
              "distance": "distance between centres"}
    for ax, (key, res) in zip(axes, net.items()):
        ax.plot(res["values"], res["ratio"], marker="o", color="tab:red", label="2-layer ReLU, same alpha (measured)")
        ax.plot(res["values"], res["ratio_tuned_nal"], marker="^", color="tab:orange",
                label="2-layer ReLU, NAL step tuned (measured)")
        lin = [base_distribution(**{key: v}).gain_ratio(ALPHA, N_NETWORK) for v in res["values"]]
        ax.plot(res["values"], lin, marker="s", color="tab:blue", linestyle="--",
                label=f"linear model (closed form, n = {N_NETWORK})")
        if key == "hard_scale":
            ax.set_xscale("log")
            ax.invert_xaxis()
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xlabel(labels[key])
        ax.set_ylabel("NAL / MAML excess risk after adaptation")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    plots.save(fig, out / "network.png")


def markdown(results: dict) -> str:
    lines = ["# MAML versus NAL on easy and hard linear-regression tasks", "",
             f"d = {DIM}; easy tasks: covariance scale {EASY_SCALE}, optima N(0, I); hard tasks (defaults): scale "
             "0.1, optima N(3 e1, 0.25^2 I); equal weights; label noise 0.1; inner step alpha = "
             f"{ALPHA}. Gain ratio = NAL's excess risk after one inner step / MAML's (1: no gain).", "",
             f"## Monte-Carlo check: linear model trained with the engine (inner step on n = {N_CHECK} points) vs the "
             "finite-sample closed form", "",
             "| case | method | closed-form risk | trained risk | relative difference | distance to closed-form solution |",
             "|---|---|---|---|---|---|"]
    for r in results["monte_carlo"]:
        lines.append(f"| {r['case']} | {r['method'].upper()} | {r['risk_closed_form']:.4f} | {r['risk_trained']:.4f} | "
                     f"{100 * r['risk_rel_diff']:.2f}% | {r['solution_distance']:.4f} |")
    cf = results["closed_form"]
    lines += ["", "## Closed form (exact inner gradient): gain ratio against the hard tasks' covariance scale", "",
              "| hard scale | " + " | ".join(f"{v:.3g}" for v in cf["hardness"]["hard_scale"]) + " |",
              "|---|" + "---|" * len(cf["hardness"]["hard_scale"]),
              "| hard centre 3 e1, spread 0.25 | " + " | ".join(f"{v:.2f}" for v in cf["hardness"]["ratio"]) + " |",
              f"| same, n = {N_NETWORK} | " + " | ".join(f"{v:.2f}" for v in cf["hardness"]["ratio_n"]) + " |",
              "| same centres | " + " | ".join(f"{v:.2f}" for v in cf["hardness"]["ratio_equal_centres"]) + " |",
              "", "## Closed form: gain ratio over hard spread (rows) x centre distance (columns), hard scale 0.1", "",
              "| spread \\ distance | " + " | ".join(f"{c:.2f}" for c in cf["grid"]["distance"]) + " |",
              "|---|" + "---|" * len(cf["grid"]["distance"])]
    for r, row in zip(cf["grid"]["hard_spread"], cf["grid"]["ratio"]):
        lines.append(f"| {r:.2f} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    flat = [v for row in cf["grid"]["ratio_no_discrepancy"] for v in row]
    lines += ["", f"Without hardness discrepancy (hard scale = easy scale) the ratio over the same grid lies in "
              f"[{min(flat):.4f}, {max(flat):.4f}].", "",
              f"## Two-layer ReLU network ({DIM}-40-1, measured with the engine; inner step on n = {N_NETWORK} points)",
              "",
              f"Both adapt with alpha = {ALPHA} (the paper's protocol: 'NAL risk', 'gain ratio'); 'tuned' gives NAL "
              f"the step of {list(NAL_STEPS)} that does best on separate validation tasks.", "",
              "| sweep | value | NAL risk | MAML risk | gain ratio | NAL step (tuned) | NAL risk (tuned) | ratio (tuned) "
              "| linear closed form |",
              "|---|---|---|---|---|---|---|---|---|"]
    for key, res in results["network"].items():
        for v, risk, ratio, rt in zip(res["values"], res["risks"], res["ratio"], res["ratio_tuned_nal"]):
            lin = base_distribution(**{key: v}).gain_ratio(ALPHA, N_NETWORK)
            lines.append(f"| {key} | {v:g} | {risk['nal']:.4f} | {risk['maml']:.4f} | {ratio:.2f} | {risk['nal_step']:g} "
                         f"| {risk['nal_tuned']:.4f} | {rt:.2f} | {lin:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/landscape"), help="output folder")
    ap.add_argument("--quick", action="store_true", help="small sweeps and short training (for tests)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (tiny models run fastest on one)")
    args = ap.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run(args.out, args.quick)
    finally:
        torch.set_num_threads(threads)


def run(out: Path, quick: bool) -> dict:
    t0 = time.perf_counter()
    results = {"dim": DIM, "alpha": ALPHA, "n_check": N_CHECK, "n_network": N_NETWORK, "easy_scale": EASY_SCALE,
               "defaults": {"hard_scale": 0.1, "hard_spread": 0.25, "distance": 3.0, "easy_spread": 1.0,
                            "noise": 0.1, "hard_weight": 0.5}}
    results["monte_carlo"] = monte_carlo_check(quick)
    print(f"Monte-Carlo check done ({time.perf_counter() - t0:.0f} s)", flush=True)
    results["closed_form"] = closed_form_sweeps(quick)
    results["network"] = network_sweeps(quick)
    results["seconds"] = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "results.json", (json.dumps(results, indent=2) + "\n").encode())
    md = markdown(results)
    atomic_write_bytes(out / "results.md", md.encode())
    plot_all(results, out)
    print(md)
    print(f"written: {out} (results.json, results.md, closed_form.png, network.png) in {results['seconds']:.0f} s")
    return results


if __name__ == "__main__":
    main()
