"""One seed drives everything: tasks, data, environments and torch.

Random streams are derived from ``(seed, *keys)`` rather than drawn from one global generator, so a
stream (say, the tasks of meta-iteration 1234) is the same whether a run was interrupted or not,
and adding a consumer of randomness elsewhere does not shift it.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed that depends only on ``seed`` and ``keys``."""
    digest = hashlib.blake2b(repr((int(seed), *keys)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def torch_generator(seed: int, *keys: int | str, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` seeded with :func:`derive_seed` ``(seed, *keys)``."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, *keys))
    return g


def numpy_generator(seed: int, *keys: int | str) -> np.random.Generator:
    """A ``numpy.random.Generator`` seeded with :func:`derive_seed` ``(seed, *keys)``."""
    return np.random.default_rng(derive_seed(seed, *keys))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch's global generators (model initialisation uses torch's)."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)
