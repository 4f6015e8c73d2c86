"""Learning curves of a run: a CSV and a plot.

``rl-maml curves runs/ant_vel_maml --out docs/results/ant_vel_maml_reference`` writes, for a
meta-RL run, ``curves.csv`` (one row per logged iteration from the TensorBoard events: returns
before and after adaptation, episodes per task, env steps, wall-clock time) and ``curves.png``
(the returns against iterations and against cumulative env steps).

For a run that validates as it trains (few-shot classification, every ``eval.val_every``
iterations, into ``validation.jsonl``) it writes ``validation.csv`` (one row per validation:
the accuracy or loss after each scored step, and the recorded wall-clock time at that
iteration from the TensorBoard events) and ``validation.png`` (the curve after adaptation against
iterations and against wall-clock time).
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


def read_curves(run_dir: Path, scalars: tuple[object, set[str]] | None = None) -> list[dict[str, float]]:
    """One dict per logged iteration, with the :data:`COLUMNS` the run logged."""
    events, tags = scalars or _scalars(run_dir)
    if COLUMNS["return_post"] not in tags:
        raise CheckpointError(f"{Path(run_dir) / 'tb'} holds no meta-RL returns ({COLUMNS['return_post']}) and the "
                              "run has no validation.jsonl: is it a training run's folder?")
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
        raise CheckpointError(f"--history {path} is not a file: give the curves.csv (or validation.csv) written for "
                              "the run's earlier pieces")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if "iteration" not in (reader.fieldnames or []):
            raise CheckpointError(f"--history {path} has no 'iteration' column: is it a curves.csv?")
        return [{k: float(v) if k != "iteration" else int(float(v)) for k, v in row.items() if v not in ("", None)}
                for row in reader if int(float(row["iteration"])) < before]


def _scalars(run_dir: Path) -> tuple[object, set[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = Path(run_dir) / "tb"
    if not tb.is_dir():
        raise CheckpointError(f"{run_dir} has no TensorBoard folder {tb}: is it a run folder?")
    events = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    events.Reload()
    return events, set(events.Tags()["scalars"])


def read_validation(run_dir: Path, scalars: tuple[object, set[str]] | None = None) -> list[dict[str, float]]:
    """The rows of ``run_dir/validation.jsonl``, each with ``wall_clock_s``: the run's recorded
    wall-clock time at that iteration, interpolated between the iterations TensorBoard logged."""
    import numpy as np

    from .fewshot import read_curve

    path = Path(run_dir) / "validation.jsonl"
    rows = [{"iteration": int(r["iteration"]), **{k: float(v) for k, v in r.items() if k.startswith("val/")}}
            for r in read_curve(path) if isinstance(r, dict) and "iteration" in r]  # read_curve drops torn lines
    if not rows:
        raise CheckpointError(f"{path} holds no validation rows: was the run validated (eval.val_every)?")
    events, tags = scalars or _scalars(run_dir)
    if COLUMNS["total_wall_clock_s"] in tags:
        logged = events.Scalars(COLUMNS["total_wall_clock_s"])
        steps, times = [e.step for e in logged], [e.value for e in logged]
        for row in rows:
            if steps[0] <= row["iteration"] <= steps[-1]:
                row["wall_clock_s"] = float(np.interp(row["iteration"], steps, times))
    return sorted(rows, key=lambda r: r["iteration"])


def write_validation_curves(run_dir: Path, out: Path, title: str | None = None, history: Path | None = None,
                            paper: float | None = None, scalars: tuple[object, set[str]] | None = None
                            ) -> tuple[Path, Path]:
    """``validation.csv`` and ``validation.png`` of a run that validates as it trains (see the module's docstring)."""
    rows = read_validation(run_dir, scalars)
    if history is not None:
        # Earlier rows come first; and where the run's own rows predate its TensorBoard events (a
        # run resumed from an exported checkpoint keeps the whole validation.jsonl but has only
        # its own events), the history's row of the same iteration supplies what is missing
        # (its wall-clock time); the run's own values win.
        earlier = {r["iteration"]: r for r in read_history(history, rows[-1]["iteration"] + 1)}
        rows = [r for i, r in sorted(earlier.items()) if i < rows[0]["iteration"]] + \
            [{**earlier.get(r["iteration"], {}), **r} for r in rows]
    out.mkdir(parents=True, exist_ok=True)
    metrics = sorted({k for r in rows for k in r if k.startswith("val/")},
                     key=lambda k: (k.rsplit("_after_", 1)[0], int(k.rsplit("_after_", 1)[-1].split("_")[0])
                                    if "_after_" in k else 0))
    fields = ["iteration", "wall_clock_s", *metrics]
    with open(out / "validation.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    timed = [r for r in rows if "wall_clock_s" in r]
    hours = bool(timed) and timed[-1]["wall_clock_s"] > 3 * 3600
    fig, axes = plots.plt.subplots(1, 2 if timed else 1, figsize=(10 if timed else 5.5, 4), squeeze=False)
    # before adaptation the few-shot accuracy sits at chance: drawn only when nothing else was scored
    drawn = [k for k in metrics if not k.endswith("_after_0_steps")] or metrics
    for ax, x in zip(axes[0], ("iteration", "wall_clock_s")):
        for k in drawn:
            points = [r for r in (rows if x == "iteration" else timed) if k in r]
            scale = 100.0 if "accuracy" in k else 1.0
            xs = [r[x] / (3600 if hours else 60) if x == "wall_clock_s" else r[x] for r in points]
            n = int(k.rsplit("_after_", 1)[-1].split("_")[0]) if "_after_" in k else None
            ax.plot(xs, [scale * r[k] for r in points], marker=".",
                    label=k if n is None else f"after {n} step{'' if n == 1 else 's'}")
        if paper is not None:
            ax.axhline(paper, color="gray", linestyle="--", label="paper")
        ax.set_xlabel("iteration" if x == "iteration" else f"wall-clock ({'h' if hours else 'min'})")
        ax.set_ylabel("validation accuracy (%)" if any("accuracy" in k for k in metrics) else "validation loss")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.suptitle(title or Path(run_dir).name)
    plots.save(fig, out / "validation.png")
    return out / "validation.csv", out / "validation.png"


def write_any_curves(run_dir: Path, out: Path, title: str | None = None, history: Path | None = None,
                     paper: float | None = None) -> tuple[Path, Path]:
    """A meta-RL run's returns (:func:`write_curves`), else a validating run's validation curve."""
    scalars = _scalars(run_dir)  # the TensorBoard events are read once
    if COLUMNS["return_post"] not in scalars[1] and (Path(run_dir) / "validation.jsonl").is_file():
        return write_validation_curves(run_dir, out, title, history, paper, scalars)
    if paper is not None:
        raise CheckpointError("--paper draws a few-shot run's reference accuracy; this is a meta-RL run")
    return write_curves(run_dir, out, title, history, scalars)


def write_curves(run_dir: Path, out: Path, title: str | None = None, history: Path | None = None,
                 scalars: tuple[object, set[str]] | None = None) -> tuple[Path, Path]:
    rows = read_curves(run_dir, scalars)
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


OVERLAY_KEYS = ("return_post", "return_pre")


def read_any_curves(source: Path) -> list[dict[str, float]]:
    """The rows of a meta-RL run's curves: from a run folder's TensorBoard events, or from a
    ``curves.csv`` written by ``rl-maml curves``."""
    source = Path(source)
    if source.is_dir():
        return read_curves(source)
    if source.is_file():
        rows = read_history(source, 1 << 62)
        if rows and not any(k in rows[0] for k in OVERLAY_KEYS):
            raise CheckpointError(f"{source} has neither {' nor '.join(OVERLAY_KEYS)}: is it a meta-RL curves.csv?")
        return rows
    raise CheckpointError(f"{source} is neither a run folder nor a curves.csv")


def window_means(runs: dict[str, list[dict[str, float]]], key: str, window: int
                 ) -> tuple[list[str], dict[str, list[float | None]]]:
    """Means of ``key`` over consecutive windows of ``window`` iterations (1-20, 21-40, ...), for
    every run over the same windows, up to the longest run's last iteration; the last window ends
    there. ``None`` where a run logged nothing in a window."""
    if window < 1:
        raise CheckpointError(f"--window must hold at least one iteration, got {window}")
    last = max((int(r["iteration"]) for rows in runs.values() for r in rows if key in r), default=0)
    if last == 0:
        raise CheckpointError(f"no run logged {key}")
    starts = range(1, last + 1, window)
    labels = [f"{s}-{min(s + window - 1, last)}" for s in starts]
    means: dict[str, list[float | None]] = {}
    for name, rows in runs.items():
        values = {int(r["iteration"]): r[key] for r in rows if key in r}
        means[name] = []
        for s in starts:
            inside = [v for i, v in values.items() if s <= i <= min(s + window - 1, last)]
            means[name].append(sum(inside) / len(inside) if inside else None)
    return labels, means


def write_overlay(sources: list[tuple[str, Path]], out: Path, window: int = 20, title: str | None = None
                  ) -> tuple[Path, Path, Path]:
    """Several meta-RL runs' training returns beside each other: ``overlay.md`` (window means of
    the return after adaptation, and before it: a row per window, a column per run),
    ``overlay.csv`` (the same, long format) and ``overlay.png`` (the returns as trailing means over
    ``window`` iterations, against iterations and against env steps; before adaptation dashed)."""
    if len(sources) < 1:
        raise CheckpointError("overlay needs at least one run (LABEL=PATH)")
    labels = [label for label, _ in sources]
    if len(set(labels)) != len(labels):
        raise CheckpointError(f"overlay: labels must differ, got {labels}")
    runs = {label: read_any_curves(path) for label, path in sources}
    out.mkdir(parents=True, exist_ok=True)
    tables = {key: window_means(runs, key, window) for key in OVERLAY_KEYS
              if any(key in r for rows in runs.values() for r in rows)}

    def cell(v: float | None) -> str:
        return "" if v is None else f"{v:.1f}"

    lines = [f"# {title or 'Training returns'}: means over {window}-iteration windows", ""]
    with open(out / "overlay.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["quantity", "run", "iterations", "mean"])
        for key, (windows, means) in tables.items():
            what = "after adaptation" if key == "return_post" else "before adaptation"
            lines += [f"Return per episode {what}:", "", "| iterations | " + " | ".join(means) + " |",
                      "|---|" + "---|" * len(means)]
            lines += [f"| {w} | " + " | ".join(cell(row[i]) for row in means.values()) + " |"
                      for i, w in enumerate(windows)]
            for name, row in means.items():
                writer.writerows([key, name, w, "" if v is None else f"{v:.4f}"] for w, v in zip(windows, row))
            lines.append("")
    (out / "overlay.md").write_text("\n".join(lines))

    fig, axes = plots.plt.subplots(1, 2, figsize=(10, 4))
    colors = plots.plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, x in zip(axes, ("iteration", "total_env_steps")):
        drawn = False
        for n, (name, rows) in enumerate(runs.items()):
            for key, style in (("return_post", "-"), ("return_pre", "--")):
                points = [r for r in rows if key in r and x in r]
                if not points:
                    continue
                xs = [r[x] / 1e6 if x == "total_env_steps" else r[x] for r in points]
                ys = _trailing_means([r[key] for r in points], window)
                ax.plot(xs, ys, style, color=colors[n % len(colors)],
                        label=name if key == "return_post" else None)
                drawn = True
        if not drawn:  # curves from before the env-step total was logged
            ax.set_visible(False)
            continue
        ax.set_xlabel("iteration" if x == "iteration" else "env steps (millions)")
        ax.set_ylabel(f"training return ({window}-iteration mean)")
        ax.grid(alpha=0.3)
    axes[0].legend(title="after adaptation (before: dashed)", fontsize=8, title_fontsize=8)
    fig.suptitle(title or "training returns")
    plots.save(fig, out / "overlay.png")
    return out / "overlay.md", out / "overlay.csv", out / "overlay.png"


def _trailing_means(ys: list[float], window: int) -> list[float]:
    """Means over the last ``window`` points (fewer at the start)."""
    out, total = [], 0.0
    for i, y in enumerate(ys):
        total += y
        if i >= window:
            total -= ys[i - window]
        out.append(total / min(i + 1, window))
    return out
