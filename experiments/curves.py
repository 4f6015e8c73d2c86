"""Learning curves of a meta-RL run from its TensorBoard events: a CSV and a plot.

``rl-maml curves runs/ant_vel_maml --out docs/results/ant_vel_maml_reference`` writes
``curves.csv`` (one row per logged iteration: returns before and after adaptation, episodes per
task, env steps, wall-clock time) and ``curves.png`` (the returns against iterations and against
cumulative env steps).
"""

from __future__ import annotations

import csv
from pathlib import Path

from rl_maml.checkpoint import CheckpointError

from . import plots

COLUMNS = {
    "return_pre": "maml/charts/return_pre",
    "return_post": "maml/charts/return_post",
    "episodes_per_task": "maml/charts/episodes_per_task",
    "env_steps": "maml/charts/env_steps",
    "total_env_steps": "charts/total_env_steps",
    "total_wall_clock_s": "time/total_wall_clock_s",
    "meta_step_s": "maml/time/meta_step_s",
    "sampling_s": "maml/time/sampling_s",
}


def read_curves(run_dir: Path) -> list[dict[str, float]]:
    """One dict per logged iteration, with the :data:`COLUMNS` the run logged."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = Path(run_dir) / "tb"
    if not tb.is_dir():
        raise CheckpointError(f"{run_dir} has no TensorBoard folder {tb}: is it a run folder?")
    events = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    if COLUMNS["return_post"] not in tags:
        raise CheckpointError(f"{tb} holds no meta-RL returns ({COLUMNS['return_post']}): is it a meta-RL run?")
    rows: dict[int, dict[str, float]] = {}
    for name, tag in COLUMNS.items():
        if tag in tags:
            for event in events.Scalars(tag):
                rows.setdefault(event.step, {"iteration": event.step})[name] = event.value
    return [rows[k] for k in sorted(rows)]


def read_history(path: Path, before: int) -> list[dict[str, float]]:
    """Rows of an earlier ``curves.csv`` of the same run for iterations below ``before``: a run
    resumed from an exported checkpoint has only its own TensorBoard events."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--history {path} is not a file: give the curves.csv written for the run's earlier pieces")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if "iteration" not in (reader.fieldnames or []):
            raise CheckpointError(f"--history {path} has no 'iteration' column: is it a curves.csv?")
        return [{k: float(v) if k != "iteration" else int(float(v)) for k, v in row.items() if v not in ("", None)}
                for row in reader if int(float(row["iteration"])) < before]


def write_curves(run_dir: Path, out: Path, title: str | None = None, history: Path | None = None
                 ) -> tuple[Path, Path]:
    rows = read_curves(run_dir)
    if history is not None:
        rows = read_history(history, rows[0]["iteration"] if rows else 1 << 62) + rows
    out.mkdir(parents=True, exist_ok=True)
    fields = ["iteration", *[k for k in COLUMNS if any(k in r for r in rows)]]
    with open(out / "curves.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    fig, axes = plots.plt.subplots(1, 2, figsize=(10, 4))
    for ax, x in zip(axes, ("iteration", "total_env_steps")):
        xs = [r.get(x) for r in rows]
        if None in xs:  # runs from before the env-step total was logged
            ax.set_visible(False)
            continue
        xs = [v / 1e6 for v in xs] if x == "total_env_steps" else xs
        for key, label in (("return_pre", "before adaptation"), ("return_post", "after one step")):
            ax.plot(xs, [r.get(key) for r in rows], label=label)
        ax.set_xlabel("iteration" if x == "iteration" else "env steps (millions)")
        ax.set_ylabel("training return per episode")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title or Path(run_dir).name)
    plots.save(fig, out / "curves.png")
    return out / "curves.csv", out / "curves.png"
