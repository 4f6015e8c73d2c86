"""Figures for evaluation results (matplotlib, written to PNG, never shown)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {
    "maml": {"color": "tab:red", "marker": "o", "label": "MAML"},
    "pretrained": {"color": "tab:blue", "marker": "s", "label": "pretrained"},
    "random": {"color": "tab:gray", "marker": "x", "label": "random init"},
    "oracle": {"color": "tab:green", "linestyle": "--", "label": "oracle"},
}


def plot_adaptation_curves(ax, methods: Mapping[str, Mapping[str, Sequence[float]]], steps: Sequence[int],
                           ylabel: str, constant: Sequence[str] = ("oracle",),
                           labels: Mapping[str, str] | None = None) -> None:
    """Mean +- 95% CI against the number of gradient steps (MAML paper, Figures 3-5).

    ``methods[name] = {"mean": [...], "ci95": [...]}`` per step. Methods in ``constant`` are drawn
    as a horizontal dashed line at their 0-step value.
    """
    for name, res in methods.items():
        style = dict(STYLE.get(name, {"label": name}))
        if labels and name in labels:
            style["label"] = labels[name]
        mean, ci = list(res["mean"]), list(res["ci95"])
        if name in constant:
            ax.axhline(mean[0], color=style.get("color"), linestyle="--", label=style["label"])
            continue
        ax.plot(steps, mean, **{k: v for k, v in style.items()})
        ax.fill_between(steps, [m - c for m, c in zip(mean, ci)], [m + c for m, c in zip(mean, ci)],
                        color=style.get("color"), alpha=0.2)
    ax.set_xlabel("number of gradient steps")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()


def save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
