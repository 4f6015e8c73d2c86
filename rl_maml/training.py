"""The meta-training loop, shared by every benchmark (supervised and meta-RL).

One place runs the loop; learners only define their steps. Each iteration draws one meta-batch
deterministically from the iteration number (supervised: a ``TaskBatch`` from a stream seeded by
``(seed, iteration)``; meta-RL: the iteration itself, from which the agent derives its tasks and
episode seeds), so a resumed run sees exactly the batches an uninterrupted one would. Every
learner gets the same batch; metrics are averaged and logged to TensorBoard, a progress bar shows
the run, and atomic checkpoints are written.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from rl_maml.checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from rl_maml import runtime
from rl_maml.logger import RunLogger


class Learner(Protocol):
    name: str

    def train_step(self, batch: Any) -> dict[str, float]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def save_learners(path: Path, iteration: int, learners: Mapping[str, Learner],
                  totals: Mapping[str, float] | None = None) -> None:
    state = {"iteration": iteration, "learners": {k: v.state_dict() for k, v in learners.items()}}
    if totals is not None:
        state["totals"] = dict(totals)
    save_checkpoint(path, state)


BEST_CHECKPOINT = "best.pt"
BEST_RECORD = "best.json"
RUN_RECORD = "run.json"
"""What ``rl-maml export`` writes beside the checkpoint it exports: the checkpoint, its iteration,
wall-clock time and env steps, and the command. A run folder copied from an exported one and
trained on keeps it current (:meth:`Trainer.save`)."""


def write_run_record(folder: Path, checkpoint: str, totals: Mapping[str, float], command: str | None,
                     best: dict | None = None, continued_from: int | None = None) -> dict:
    """Write ``folder/run.json`` (atomically) for checkpoint ``checkpoint`` (relative to ``folder``)
    with the ``totals`` it records (``iteration``, ``wall_clock_s``, ``env_steps``), the command, the
    iteration a copied export went on from, and the best checkpoint's record when it travels with
    it; returns what was written."""
    info = {"checkpoint": checkpoint, **totals, "command": command}
    if continued_from is not None:
        info["continued_from"] = continued_from
    if best is not None:
        info["best"] = {"checkpoint": f"checkpoints/{BEST_CHECKPOINT}", **best}
    atomic_write_bytes(Path(folder) / RUN_RECORD, (json.dumps(info, indent=2) + "\n").encode())
    return info


def best_record(ckpt_dir: Path) -> dict | None:
    """What ``ckpt_dir/best.json`` says of the best checkpoint (``iteration``, ``metric``, ``mode``,
    ``value``), or ``None`` when the run keeps none."""
    path = Path(ckpt_dir) / BEST_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        return {"iteration": int(record["iteration"]), "metric": str(record["metric"]),
                "mode": str(record["mode"]), "value": float(record["value"])}
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is damaged ({type(e).__name__}: {e}); delete it (and {BEST_CHECKPOINT} "
                              "beside it, if it is not wanted) to start selecting afresh") from None


def checkpoint_totals(path: Path) -> dict[str, float]:
    """What a run had spent when checkpoint ``path`` was written: ``iteration``, ``wall_clock_s``
    (seconds of iterations, summed over resumed pieces) and ``env_steps`` (meta-RL), as far as recorded."""
    state = load_checkpoint(path)
    return {"iteration": int(state["iteration"]), **state.get("totals", {})}


def load_learners(path: Path, learners: Mapping[str, Learner], device: str = "cpu",
                  state: dict | None = None) -> int:
    """Restore every learner from checkpoint ``path`` (or its already loaded ``state``); returns
    the checkpoint's iteration."""
    state = load_checkpoint(path, map_location=device) if state is None else state
    missing = set(learners) - set(state["learners"])
    if missing:
        raise CheckpointError(f"checkpoint {path} has no state for {sorted(missing)} (it holds {sorted(state['learners'])})")
    for name, learner in learners.items():
        try:
            learner.load_state_dict(state["learners"][name])
        except RuntimeError as e:  # torch's shape/key mismatch: the checkpoint is for another model
            raise CheckpointError(
                f"checkpoint {path} does not fit this run's {name!r} model (was the run's config.yaml edited, "
                f"e.g. the network sizes?): {str(e).strip().splitlines()[-1].strip()}") from None
    return int(state["iteration"])


def _curve_iteration(line: str) -> float:
    """The iteration of a validation.jsonl line (infinity for a torn or foreign line, so it is dropped)."""
    try:
        return int(json.loads(line)["iteration"])
    except (ValueError, KeyError, TypeError):
        return float("inf")


class TrainingError(RuntimeError):
    """Training cannot make progress (e.g. every TRPO step rejected); the message names the setting."""


class TrainingInterrupted(RuntimeError):
    """Ctrl-C or SIGTERM stopped training; the message says what was saved and how to resume."""


class Trainer:
    """Runs meta-training for one or more learners on a shared stream of meta-batches.

    Args:
        run_dir: the run's folder; checkpoints go to ``run_dir/checkpoints``, TensorBoard events to
            ``run_dir/tb``.
        learners: name -> learner; all see the same meta-batches.
        sample_batch: ``sample_batch(iteration)`` -> what every learner's ``train_step`` takes
            (deterministic in ``iteration``).
        num_iterations: total meta-iterations of the run.
        checkpoint_every, keep_checkpoints, log_every: see :class:`rl_maml.config.TrainConfig`.
        progress: show a progress bar.
        progress_keys: metrics whose name contains one of these are shown beside the bar.
        validate: ``validate(iteration) -> metrics``, run every ``validate_every`` iterations (and at
            the last one); its metrics go to TensorBoard and, one JSON line per call, to
            ``run_dir/validation.jsonl`` (the learning curve). Lines written after the checkpoint
            a run resumes from are dropped, so a resumed run's curve has no duplicates.
        validate_every: see ``validate`` (0: never). Under torch.distributed every rank calls
            ``validate`` (which may split its work over the ranks); rank 0 writes the results.
        keep_best: a metric that ``validate`` returns: the learners at the validation with its
            best value so far are kept as ``checkpoints/best.pt`` (a checkpoint like the others,
            never pruned, that ``rl-maml eval --checkpoint`` and ``rl-maml export --checkpoint``
            take), described by ``checkpoints/best.json``. Model selection on validation tasks,
            as MAML++ selects its models. ``None``: no best checkpoint is kept.
        best_mode: ``"max"`` (accuracies, returns) or ``"min"`` (losses): which values are better.
        shard: this rank's :class:`~rl_maml.distributed.TaskShard` under torch.distributed. Only
            rank 0 writes logs, checkpoints and curves, and a stop request (Ctrl-C, SIGTERM) that
            reaches any rank stops every rank after the same iteration, once rank 0 has saved it.
    """

    def __init__(
        self,
        run_dir: Path,
        learners: Mapping[str, Learner],
        sample_batch: Callable[[int], Any],
        num_iterations: int,
        checkpoint_every: int = 1000,
        keep_checkpoints: int = 3,
        log_every: int = 100,
        progress: bool = True,
        progress_keys: tuple[str, ...] = ("losses/",),
        validate: Callable[[int], dict[str, float]] | None = None,
        validate_every: int = 0,
        shard=None,
        keep_best: str | None = None,
        best_mode: str = "max",
    ):
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
        if keep_best is not None and not (validate is not None and validate_every):
            raise ValueError(f"keep_best={keep_best!r} selects on validation metrics, but this run does not validate "
                             "(give validate and validate_every > 0)")
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.learners = dict(learners)
        self.sample_batch = sample_batch
        self.num_iterations = num_iterations
        self.checkpoint_every = checkpoint_every
        self.keep_checkpoints = keep_checkpoints
        self.log_every = log_every
        self.progress = progress
        self.progress_keys = progress_keys
        self.validate = validate
        self.validate_every = validate_every
        self.curve_path = self.run_dir / "validation.jsonl"
        # Under torch.distributed only rank 0 writes (logs, checkpoints, curves); the others train.
        self.is_main = shard is None or shard.is_main
        self.shard = shard
        self.keep_best = keep_best
        self.best_mode = best_mode
        self.best: dict | None = None  # the best validation so far: best.json's record
        # Cumulative cost of the run, kept in every checkpoint and carried over by resume:
        # seconds spent in iterations and, for learners that report charts/env_steps, env steps.
        self.totals = {"wall_clock_s": 0.0, "env_steps": 0.0}

    def resume(self, device: str = "cpu") -> int:
        """Load the newest checkpoint; returns its iteration (0 when there is none)."""
        path = latest_checkpoint(self.ckpt_dir)
        start = 0
        if path is not None:
            state = load_checkpoint(path, map_location=device)
            start = load_learners(path, self.learners, device, state=state)
            self.totals.update(state.get("totals", {}))
        if self.is_main and self.curve_path.is_file():
            kept = [line for line in self.curve_path.read_text().splitlines() if _curve_iteration(line) <= start]
            atomic_write_bytes(self.curve_path, "".join(f"{line}\n" for line in kept).encode())
        if self.keep_best is not None:
            record = best_record(self.ckpt_dir)
            # A best from past the checkpoint resumed from belongs to iterations that are run again
            # (and, with the same seed and threads, found again): it does not count against them.
            if record is not None and record["metric"] == self.keep_best and record["mode"] == self.best_mode \
                    and record["iteration"] <= start:
                self.best = record
        return start

    def _better(self, value: float) -> bool:
        if value != value:  # NaN is never the best
            return False
        if self.best is None:
            return True
        return value > self.best["value"] if self.best_mode == "max" else value < self.best["value"]

    def _keep_if_best(self, iteration: int, metrics: Mapping[str, float]) -> None:
        if self.keep_best is None:
            return
        if self.keep_best not in metrics:
            raise TrainingError(f"keep_best: validation returned no {self.keep_best!r}; it returned {sorted(metrics)}")
        value = float(metrics[self.keep_best])
        if not self._better(value):
            return
        self.best = {"iteration": iteration, "metric": self.keep_best, "mode": self.best_mode, "value": value}
        if self.is_main:  # the checkpoint first: a record never names learners that were not written
            save_learners(self.ckpt_dir / BEST_CHECKPOINT, iteration, self.learners, self.totals)
            atomic_write_bytes(self.ckpt_dir / BEST_RECORD, (json.dumps(self.best, indent=2) + "\n").encode())

    def _validate(self, iteration: int, logger: RunLogger) -> dict[str, float]:
        metrics = self.validate(iteration)
        logger.log(iteration, metrics)
        if self.is_main:
            with open(self.curve_path, "a") as f:
                f.write(json.dumps({"iteration": iteration, **metrics}) + "\n")
        self._keep_if_best(iteration, metrics)
        return metrics

    def save(self, iteration: int) -> Path:
        path = checkpoint_path(self.ckpt_dir, iteration)
        if not self.is_main:
            return path
        save_learners(path, iteration, self.learners, self.totals)
        prune_checkpoints(self.ckpt_dir, self.keep_checkpoints)
        if (self.run_dir / RUN_RECORD).is_file():
            self._refresh_run_record(iteration, path)
        return path

    def _refresh_run_record(self, iteration: int, path: Path) -> None:
        """Make a copied export's ``run.json`` describe the checkpoint just written, so that it never
        names one that ``--resume`` and ``rl-maml eval`` no longer take. The command is kept;
        ``continued_from`` records the exported iteration the training went on from."""
        record = self.run_dir / RUN_RECORD
        try:
            old = json.loads(record.read_text())
        except (OSError, ValueError):
            old = None
        if not isinstance(old, dict):
            old = {}  # damaged: rewritten from what the run itself knows
        start = old.get("continued_from", old.get("iteration"))
        try:
            best = best_record(self.ckpt_dir) if (self.ckpt_dir / BEST_CHECKPOINT).is_file() else None
        except CheckpointError:  # a damaged best.json is reported where it is used (resume, export), not here
            best = None
        write_run_record(self.run_dir, path.relative_to(self.run_dir).as_posix(),
                         {"iteration": iteration, **self.totals}, old.get("command"),
                         best=best if best is not None and best["iteration"] <= iteration else None,
                         continued_from=start if isinstance(start, int) and start < iteration else None)

    def run(self, start_iteration: int = 0) -> dict[str, float]:
        """Train from ``start_iteration`` to ``num_iterations``; returns the last logged metrics.

        Ctrl-C or SIGTERM (in the main thread) stops training cleanly at the end of the running
        iteration: that iteration is checkpointed and :class:`TrainingInterrupted` says how to
        resume. A second Ctrl-C stops at once (the newest checkpoint is then the last one written).
        """
        if self.is_main:
            runtime.warn_if_openmp_spins()
        window: dict[str, float] = defaultdict(float)
        count = 0
        last: dict[str, float] = {}
        bar = tqdm(
            total=self.num_iterations, initial=start_iteration, desc="meta-train",
            disable=not (self.progress and self.is_main),
            dynamic_ncols=True, mininterval=1.0,
        )
        stop = _StopRequest()
        saved = start_iteration
        logger_cm = RunLogger(self.run_dir / "tb", purge_step=start_iteration + 1 if start_iteration else None,
                              env_steps_purge_step=int(self.totals["env_steps"]) + 1 if start_iteration else None) \
            if self.is_main else _NullLogger()
        with logger_cm as logger, stop:
            if start_iteration == 0 and (self.run_dir / "config.yaml").is_file():
                logger.log_config(self.run_dir / "config.yaml")
            for iteration in range(start_iteration + 1, self.num_iterations + 1):
                t0 = time.perf_counter()
                batch = self.sample_batch(iteration)
                window["time/sample_s"] += time.perf_counter() - t0
                for name, learner in self.learners.items():
                    t1 = time.perf_counter()
                    for key, value in learner.train_step(batch).items():
                        window[f"{name}/{key}"] += value
                        if key == "charts/env_steps":
                            self.totals["env_steps"] += value
                    window[f"time/{name}_step_s"] += time.perf_counter() - t1
                window["time/iteration_s"] += time.perf_counter() - t0
                self.totals["wall_clock_s"] += time.perf_counter() - t0
                count += 1
                if iteration % self.log_every == 0 or iteration == self.num_iterations:
                    last = {k: v / count for k, v in window.items()}
                    last["charts/total_env_steps"] = self.totals["env_steps"]
                    last["time/total_wall_clock_s"] = self.totals["wall_clock_s"]
                    logger.log(iteration, last)
                    if self.totals["env_steps"] > 0:  # the same returns against cumulative env steps
                        logger.log_env_steps(int(self.totals["env_steps"]), {
                            f"env_steps/{k}": v for k, v in last.items() if "/charts/return" in k})
                    shown = {k.split("/", 1)[0] + ":" + k.rsplit("/", 1)[-1]: f"{v:.3g}"
                             for k, v in last.items() if any(p in k for p in self.progress_keys)}
                    bar.set_postfix(shown, refresh=False)
                    window.clear()
                    count = 0
                if self.validate is not None and self.validate_every and (
                        iteration % self.validate_every == 0 or iteration == self.num_iterations):
                    shown = {k.rsplit("/", 1)[-1]: f"{v:.3g}" for k, v in self._validate(iteration, logger).items()}
                    if self.is_main:
                        bar.write(f"iteration {iteration}: validation {shown}")
                # Read the request once: a signal landing between the save and the exit check would
                # otherwise stop the run without checkpointing the iteration it reports.
                stopping = stop.requested
                if self.shard is not None:  # a signal may reach one rank only (or ranks apart)
                    anyone = self.shard.any(stopping is not None)
                    stopping = stopping or ("a stop request on another rank" if anyone else None)
                if iteration % self.checkpoint_every == 0 or iteration == self.num_iterations or stopping:
                    self.save(iteration)
                    saved = iteration
                    logger.flush()
                bar.update(1)
                if stopping and iteration < self.num_iterations:
                    if self.shard is not None:  # no rank exits (torchrun then ends the others) before rank 0 has saved
                        self.shard.barrier()
                    bar.close()
                    raise TrainingInterrupted(
                        f"interrupted by {stopping} after iteration {saved} (checkpointed); continue with: "
                        f"rl-maml train --run-dir {self.run_dir} --resume")
        bar.close()
        if start_iteration >= self.num_iterations and latest_checkpoint(self.ckpt_dir) is None:
            self.save(start_iteration)
        return last


class _NullLogger:
    """What ranks other than 0 log to: nothing."""

    def log(self, step, metrics) -> None:
        pass

    def log_env_steps(self, env_steps, metrics) -> None:
        pass

    def log_config(self, path) -> None:
        pass

    def flush(self) -> None:
        pass

    def __enter__(self) -> _NullLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class _StopRequest:
    """While active (main thread only), the first SIGINT or SIGTERM only records a request to stop
    after the running iteration; a second SIGINT raises KeyboardInterrupt as usual."""

    def __init__(self):
        self.requested: str | None = None
        self._old: dict[int, object] = {}

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        print(f"\n{self.requested}: stopping after this iteration (Ctrl-C again to stop now)", file=sys.stderr,
              flush=True)

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
