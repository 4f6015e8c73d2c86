"""N-way K-shot classification tasks drawn from a pool of classes, a whole meta-batch at a time.

A data set is held as one ``uint8`` tensor ``[classes, examples, H, W]`` (grey) or
``[classes, examples, H, W, C]`` (colour). :class:`FewShotTasks` draws a meta-batch of M tasks
with a handful of tensor ops (no Python loop per task or image): for each task N distinct
classes, for each class K + Q distinct examples, optionally a random multiple of 90 degrees of
rotation per class (Omniglot's augmentation); labels are 0..N-1 in a random class order.

The loaders (:mod:`rl_maml.tasks.omniglot`, :mod:`rl_maml.tasks.miniimagenet`) decode images once
and keep them in a cache file written atomically (:func:`save_array_cache`), so later runs start in
seconds; :class:`DatasetError` names the offending file and the fix.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from rl_maml.checkpoint import atomic_write_bytes
from rl_maml.tasks.base import TaskBatch


class DatasetError(RuntimeError):
    """A data file is missing, truncated, corrupt or laid out unexpectedly; the message says how to fix it."""


def file_md5(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_array_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as one ``.npz`` file atomically (a crash leaves no half-written cache)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_array_cache(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The arrays of a cache file, or ``None`` when it is absent or unreadable (it is rebuilt then)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in keys}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return None


class FewShotTasks:
    """Samples N-way K-shot tasks from ``images`` ``[classes, examples, H, W(, C)]`` (uint8).

    Args:
        images: the pool of classes this sampler draws from (e.g. the meta-training characters).
        ways: N, classes per task.
        shots: K, support examples per class.
        query: Q, query examples per class (K + Q must not exceed the examples per class).
        rotate: rotate each class of a task by a random multiple of 90 degrees (Omniglot).
        invert: use ``1 - x / 255`` instead of ``x / 255`` (Omniglot's strokes become 1).
        mean, std: per-channel normalisation applied after scaling to [0, 1] (None: none).

    Batches are ``TaskBatch``es with support ``x`` ``[M, N*K, C, H, W]`` (float32), ``y``
    ``[M, N*K]`` (int64), the query likewise, and ``tasks = {"classes": [M, N]}`` (indices into
    ``images``) plus ``"rotations"`` ``[M, N]`` when rotating.
    """

    def __init__(self, images: Tensor, ways: int, shots: int, query: int, rotate: bool = False,
                 invert: bool = False, mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None):
        if images.dtype != torch.uint8 or images.dim() not in (4, 5):
            raise ValueError(f"images must be uint8 [classes, examples, H, W(, C)], got {images.dtype} {tuple(images.shape)}")
        num_classes, per_class = images.shape[:2]
        if ways < 1 or shots < 1 or query < 1:
            raise ValueError(f"ways, shots and query must be >= 1, got {ways}, {shots}, {query}")
        if ways > num_classes:
            raise ValueError(f"{ways}-way tasks need at least {ways} classes; this split has {num_classes}")
        if shots + query > per_class:
            raise ValueError(f"shots + query = {shots + query} exceeds the {per_class} examples per class")
        self.images = images
        self.ways, self.shots, self.query = ways, shots, query
        self.rotate, self.invert = rotate, invert
        channels = 1 if images.dim() == 4 else images.shape[-1]
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(channels, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).view(channels, 1, 1)

    @property
    def num_classes(self) -> int:
        return self.images.shape[0]

    def _to_float(self, x: Tensor) -> Tensor:
        # x: uint8 [..., H, W] or [..., H, W, C] -> float [..., C, H, W]
        x = x.unsqueeze(-3) if self.images.dim() == 4 else x.movedim(-1, -3)
        x = x.float().div_(255.0)
        if self.invert:
            x = 1.0 - x
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x

    def sample(self, num_tasks: int, generator: torch.Generator) -> TaskBatch:
        m, n, k, q = num_tasks, self.ways, self.shots, self.query
        classes = torch.rand(m, self.num_classes, generator=generator).argsort(dim=1)[:, :n]  # [M, N]
        per_class = self.images.shape[1]
        examples = torch.rand(m, n, per_class, generator=generator).argsort(dim=2)[:, :, : k + q]  # [M, N, K+Q]
        x = self.images[classes.unsqueeze(-1), examples]  # [M, N, K+Q, H, W(, C)]
        tasks = {"classes": classes}
        if self.rotate:
            rotations = torch.randint(0, 4, (m, n), generator=generator)
            tasks["rotations"] = rotations
            x = x.clone()
            for r in (1, 2, 3):
                sel = rotations == r
                if sel.any():  # x[sel]: [classes rotated by r, K+Q, H, W(, C)]
                    x[sel] = torch.rot90(x[sel], r, dims=(2, 3))
        x = self._to_float(x)  # [M, N, K+Q, C, H, W]
        labels = torch.arange(n).view(1, n, 1).expand(m, n, k + q)
        support = (x[:, :, :k].flatten(1, 2), labels[:, :, :k].flatten(1, 2))
        query = (x[:, :, k:].flatten(1, 2), labels[:, :, k:].flatten(1, 2))
        return TaskBatch(support, query, tasks)


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-task accuracy: logits ``[M, Q, N]``, labels ``[M, Q]`` -> ``[M]``."""
    return (logits.argmax(dim=-1) == labels).float().mean(dim=-1)
