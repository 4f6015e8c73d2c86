"""Run logging: TensorBoard event files, with fixed metric namespaces.

Namespaces follow CleanRL's habit: ``losses/...``, ``charts/...`` (step sizes, returns),
``time/...`` (seconds, always). Meta-RL runs also log their returns against the cumulative env
steps (``env_steps/...``, the env steps as TensorBoard's step axis); the run's config is logged as
hyperparameters (the HPARAMS tab) and as text. The console shows a progress bar (see
:mod:`rl_maml.training`); everything numeric also goes here.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path


class RunLogger:
    """Writes scalars to TensorBoard under ``log_dir``.

    Args:
        log_dir: folder for the event files (``<run>/tb``).
        purge_step: when resuming, events at or after this step left by the interrupted run are
            hidden by TensorBoard, so curves do not double back.
    """

    def __init__(self, log_dir: Path, purge_step: int | None = None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            value = float(value)
            if math.isfinite(value):
                self.writer.add_scalar(key, value, step)

    def log_config(self, path: Path) -> None:
        """The run's config.yaml as hyperparameters (flattened dotted keys) and as text."""
        import yaml
        from torch.utils.tensorboard.summary import hparams

        text = Path(path).read_text()
        flat: dict[str, object] = {}

        def walk(node, prefix=""):
            for key, value in node.items():
                if isinstance(value, dict):
                    walk(value, f"{prefix}{key}.")
                else:
                    flat[f"{prefix}{key}"] = value if isinstance(value, (bool, int, float, str)) else str(value)

        walk(yaml.safe_load(text) or {})
        exp, ssi, sei = hparams(flat, {})
        for summary in (exp, ssi, sei):
            self.writer.file_writer.add_summary(summary)
        self.writer.add_text("config", "```yaml\n" + text + "\n```", 0)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
