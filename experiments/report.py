"""Result files: ``results.json`` and a Markdown table of mean +- 95% CI per adaptation step."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rl_maml.checkpoint import atomic_write_bytes


def markdown_table(methods: Mapping[str, Mapping[str, Sequence[float]]], steps: Sequence[int],
                   digits: int = 3, labels: Mapping[str, str] | None = None) -> str:
    """Rows are methods, columns the number of inner steps; cells are ``mean ± ci95``."""
    labels = labels or {}
    header = "| method | " + " | ".join(f"{s} step{'s' if s != 1 else ''}" for s in steps) + " |"
    rule = "|---|" + "---|" * len(steps)
    rows = [header, rule]
    for name, res in methods.items():
        cells = [f"{m:.{digits}f} ± {c:.{digits}f}" for m, c in zip(res["mean"], res["ci95"])]
        rows.append(f"| {labels.get(name, name)} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def write_results(folder: Path, results: Mapping[str, Any], markdown: str) -> None:
    from rl_maml.provenance import provenance

    folder.mkdir(parents=True, exist_ok=True)
    results = {**results, "provenance": results.get("provenance") or provenance(results.get("device"))}
    atomic_write_bytes(folder / "results.json", (json.dumps(results, indent=2) + "\n").encode())
    atomic_write_bytes(folder / "results.md", markdown.encode())
