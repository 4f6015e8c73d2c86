"""Atomic checkpoints that load without executing code.

A checkpoint is written to a temporary file in the same folder, flushed to disk and renamed over
its final name, so a crash never leaves a half-written checkpoint under a real name. Loading uses
``torch.load(weights_only=True)``: only tensors and plain containers are accepted, never pickled
code. A truncated or corrupt file raises :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1
_PATTERN = re.compile(r"^iter_(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt or of an unknown format."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Serialise ``state`` (tensors and plain containers only) atomically to ``path``."""
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (no code is executed)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        # torch's own message may suggest weights_only=False, which would run code from the file: never.
        first = next((line.strip() for line in str(e).splitlines() if line.strip() and "weights_only" not in line
                      and "WeightsUnpickler" not in line), "")
        raise CheckpointError(
            f"checkpoint {path} is truncated, corrupt or not a plain-tensor checkpoint and cannot be loaded safely "
            f"({type(e).__name__}{': ' + first[:200] if first else ''}). Delete it to resume from the previous "
            "checkpoint in the same folder; do not load it with weights_only=False (that runs code from the file)."
        ) from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} is not an rl_maml checkpoint of format {FORMAT_VERSION} "
            f"(found {state.get('format_version') if isinstance(state, dict) else type(state).__name__})"
        )
    return state


def checkpoint_path(folder: Path, iteration: int) -> Path:
    return Path(folder) / f"iter_{iteration:07d}.pt"


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """``(iteration, path)`` of every checkpoint in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _PATTERN.match(p.name))]
    return sorted(found)


def latest_checkpoint(folder: Path) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1][1] if found else None


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints, and the temporary files of checkpoint writes
    that a killed process left behind (the caller holds the run folder's lock and has finished its
    own write, so any such file is stale)."""
    for _, path in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        path.unlink(missing_ok=True)
    folder = Path(folder)
    if folder.is_dir():
        for path in folder.glob(".iter_*.pt.*.tmp"):
            path.unlink(missing_ok=True)
