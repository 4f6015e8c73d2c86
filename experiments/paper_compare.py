"""An evaluation against the MAML paper's own per-task returns, task by task.

The paper's locomotion figures (MAML, Finn et al. 2017, Figure 5) come from the test scripts of its
rllab code, which pickled the average return of every one of the 40 test tasks after 0-3 gradient
steps. ``paper_results/maml_rl_per_task.json`` holds those numbers (see its ``source``). An
evaluation run with ``eval.test_tasks=reference`` uses the same 40 goals in the same order, so the
two can be compared task by task instead of only by their means::

    rl-maml compare docs/results/ant_dir_maml_reference/results_575its.json --out docs/results/ant_dir_maml_reference

writes ``paper_per_task.md`` (the returns grouped by goal: by direction for the ``Dir`` families,
by thirds of the goal velocity range for the ``Vel`` ones, and the correlation over tasks) and
``paper_per_task.png`` (the return of every task after each step, ours beside the paper's).
``rl-maml eval`` writes the same two files into ``RUN_DIR/eval/`` whenever it evaluates a ``maml``
convention family on the reference tasks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rl_maml.config import ConfigError

from . import plots

PAPER_FILE = Path(__file__).with_name("paper_results") / "maml_rl_per_task.json"
# our method names -> the reference's pickle names
METHOD_NAMES = {"maml": "maml", "random": "random", "pretrained": "pretrain"}


def load_paper(path: Path = PAPER_FILE) -> dict:
    with open(path) as f:
        return json.load(f)


def goal_groups(family: str) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """The 40 reference goals of ``family`` (velocity or direction) and the named task groups."""
    from .metarl import REFERENCE_TEST_TASKS, reference_test_tasks

    tasks = reference_test_tasks(family)
    if "direction" in tasks:
        goal = tasks["direction"].numpy()
        return goal, [("backward (-1)", goal < 0), ("forward (+1)", goal > 0)]
    goal = tasks["velocity"].numpy()
    edges = np.linspace(0.0, REFERENCE_TEST_TASKS[family][1], 4)  # thirds of the sampled range
    return goal, [(f"velocity {lo:.1f}-{hi:.1f}", (goal >= lo) & (goal < hi) if i < 2 else (goal >= lo))
                  for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:]))]


def compare(results: dict, paper: dict) -> dict:
    """Per-group means of ours and the paper's, per step and method, and the per-task correlations."""
    family = results.get("env")
    if results.get("benchmark") != "metarl":
        raise ConfigError("rl-maml compare takes a meta-RL evaluation's results.json (RUN_DIR/eval/results.json)")
    if family not in paper["families"]:
        raise ConfigError(f"the paper's per-task returns cover {sorted(paper['families'])}, not {family!r}")
    if results.get("convention", "maml") != "maml":
        raise ConfigError(f"{family}: these results are of the {results['convention']!r} convention, whose returns "
                          "are not comparable with the paper's; the paper's task is the 'maml' convention")
    if results.get("test_tasks") != "reference":
        raise ConfigError(f"{family}: these results were evaluated on sampled test tasks; the paper's per-task "
                          "returns are for its 40 reference goals: evaluate with eval.test_tasks=reference")
    goal, groups = goal_groups(family)
    ref = paper["families"][family]
    steps = [int(s) for s in results["steps"]]
    out: dict = {"family": family, "steps": steps, "goal": goal.tolist(), "groups": [g for g, _ in groups],
                 "methods": {}, "trained_inner_steps": results.get("trained_inner_steps")}
    for ours_name, ref_name in METHOD_NAMES.items():
        if ours_name not in results["methods"] or ref_name not in ref:
            continue
        if "per_task" not in results["methods"][ours_name]:
            raise ConfigError(f"{family}/{ours_name}: the results hold no per-task returns (written by an older "
                              "rl-maml eval): re-evaluate with rl-maml eval --overwrite")
        mine = np.asarray(results["methods"][ours_name]["per_task"], dtype=float)
        theirs = np.asarray(ref[ref_name], dtype=float)
        if mine.shape[-1] != theirs.shape[-1]:
            raise ConfigError(f"{family}/{ours_name}: the results hold {mine.shape[-1]} tasks' returns, the paper "
                              f"{theirs.shape[-1]}: re-evaluate with eval.test_tasks=reference")
        n = min(len(mine), len(theirs))
        rows = {}
        for name, mask in [("all tasks", np.ones_like(goal, dtype=bool)), *groups]:
            rows[name] = {"tasks": int(mask.sum()), "ours": mine[:n, mask].mean(1).tolist(),
                          "paper": theirs[:n, mask].mean(1).tolist()}
        corr = [float(np.corrcoef(mine[s], theirs[s])[0, 1]) for s in range(n)]
        out["methods"][ours_name] = {"rows": rows, "correlation": corr, "ours": mine[:n].tolist(),
                                     "paper": theirs[:n].tolist()}
    if "maml" not in out["methods"]:
        raise ConfigError(f"{family}: the results hold no MAML per-task returns to compare")
    return out


def markdown(cmp: dict, source: str) -> str:
    lines = [f"# {cmp['family']}: our returns beside the MAML paper's, task by task", "",
             f"Mean return per group of the 40 reference test tasks (ours / the paper's). Paper: {source}.", ""]
    if cmp.get("trained_inner_steps") == 0:
        lines += ["Ours was trained with no inner step (`inner.num_inner_steps=0`: plain TRPO); its `maml` rows "
                  "set that policy beside the paper's MAML policy, not beside a policy trained like it.", ""]
    for method, res in cmp["methods"].items():
        steps = cmp["steps"][:len(res["correlation"])]
        lines += [f"## {method}", "",
                  "| tasks | n | " + " | ".join(f"{s} step" if s == 1 else f"{s} steps" for s in steps) + " |",
                  "|---|---|" + "---|" * len(steps)]
        for name, row in res["rows"].items():
            cells = " | ".join(f"{o:.1f} / {p:.1f}" for o, p in zip(row["ours"], row["paper"]))
            lines.append(f"| {name} | {row['tasks']} | {cells} |")
        corr = " | ".join(f"{c:.2f}" for c in res["correlation"])
        lines += [f"| correlation over tasks | | {corr} |", ""]
    return "\n".join(lines)


def figure(cmp: dict, path: Path) -> None:
    res = cmp["methods"]["maml"]
    steps = cmp["steps"][:len(res["correlation"])]
    goal = np.asarray(cmp["goal"])
    direction = cmp["groups"][0].startswith("backward")
    # direction tasks: sorted by direction, then by index; velocity tasks: by goal velocity
    order = np.lexsort((np.arange(len(goal)), goal)) if direction else np.argsort(goal, kind="stable")
    x = np.arange(len(goal)) if direction else goal[order]
    fig, axes = plots.plt.subplots(1, len(steps), figsize=(3.6 * len(steps), 3.4), sharey=True)
    for ax, s in zip(np.atleast_1d(axes), range(len(steps))):
        ax.plot(x, np.asarray(res["paper"][s])[order], "o", ms=3.5, color="tab:blue", label="paper")
        ax.plot(x, np.asarray(res["ours"][s])[order], "o", ms=3.5, color="tab:red", label="ours")
        ax.set_title(f"after {steps[s]} step{'' if steps[s] == 1 else 's'} (r = {res['correlation'][s]:.2f})")
        if direction:
            split = int((goal < 0).sum()) - 0.5
            ax.axvline(split, color="gray", lw=0.8)
            ax.set_xlabel("test task (backward | forward)")
        else:
            ax.set_xlabel("goal velocity")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("return")
    np.atleast_1d(axes)[0].legend()
    what = ("MAML per test task, ours and the paper's" if cmp.get("trained_inner_steps") != 0 else
            "per test task, ours (trained with no inner step) and the paper's MAML")
    fig.suptitle(f"{cmp['family']}: {what}")
    plots.save(fig, path)


def comparable(results: dict, paper: dict | None = None) -> bool:
    """Whether ``results`` can be set beside the paper's per-task returns (see :func:`compare`)."""
    paper = load_paper() if paper is None else paper
    return (results.get("benchmark") == "metarl" and results.get("env") in paper["families"]
            and results.get("convention", "maml") == "maml" and results.get("test_tasks") == "reference")


def write_results_comparison(results: dict, name: str, out: Path, paper: dict | None = None) -> tuple[Path, Path]:
    """``paper_per_task.md`` and ``.png`` in ``out`` for an evaluation's ``results`` (read from ``name``)."""
    paper = load_paper() if paper is None else paper
    cmp = compare(results, paper)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "paper_per_task.md"
    md.write_text(markdown(cmp, paper["source"]) + f"\nOurs: {name}, checkpoint iteration "
                  f"{results.get('checkpoint_iteration')}.\n")
    png = out / "paper_per_task.png"
    figure(cmp, png)
    return md, png


def write_comparison(results_path: Path, out: Path, paper_path: Path = PAPER_FILE) -> tuple[Path, Path]:
    results_path = Path(results_path)
    if not results_path.is_file():
        raise ConfigError(f"{results_path} is not a file: give an evaluation's results.json "
                          "(RUN_DIR/eval/results.json)")
    with open(results_path) as f:
        results = json.load(f)
    return write_results_comparison(results, results_path.name, out, load_paper(paper_path))
