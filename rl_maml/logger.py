"""Run logging: TensorBoard event files, with fixed metric namespaces.

Namespaces follow CleanRL's habit: ``losses/...``, ``charts/...`` (step sizes, returns),
``time/...`` (seconds, always). Meta-RL runs also log their returns against the cumulative env
steps (``env_steps/...``, the env steps as TensorBoard's step axis), in a folder of their own
(``<run>/tb/env_steps``, a second run in TensorBoard's list): a resumed run hides the events an
interrupted piece left after its checkpoint, step by step, and on one axis the env-step events of
every earlier piece would count as "after" the resumed iteration. The run's config is logged as
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
        env_steps_purge_step: the same for the env-step axis (:meth:`log_env_steps`): the env
            steps taken up to the resumed checkpoint, plus one.
    """

    def __init__(self, log_dir: Path, purge_step: int | None = None, env_steps_purge_step: int | None = None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from torch.utils.tensorboard import SummaryWriter

        self._writer_cls = SummaryWriter
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
        self._env_steps_purge_step = env_steps_purge_step
        self._env_steps_writer = None  # opened on first use: only meta-RL runs count env steps

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            value = float(value)
            if math.isfinite(value):
                self.writer.add_scalar(key, value, step)

    def log_env_steps(self, env_steps: int, metrics: Mapping[str, float]) -> None:
        """Scalars against the cumulative env steps, in ``<log_dir>/env_steps``."""
        if self._env_steps_writer is None:
            self._env_steps_writer = self._writer_cls(log_dir=str(self.log_dir / "env_steps"),
                                                      purge_step=self._env_steps_purge_step)
        for key, value in metrics.items():
            value = float(value)
            if math.isfinite(value):
                self._env_steps_writer.add_scalar(key, value, env_steps)

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
        if self._env_steps_writer is not None:
            self._env_steps_writer.flush()

    def close(self) -> None:
        self.writer.close()
        if self._env_steps_writer is not None:
            self._env_steps_writer.close()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
