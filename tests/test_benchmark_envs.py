"""The environment benchmark's measuring functions run and count steps (a smoke test, not a timing)."""

from __future__ import annotations

import numpy as np
from rl_maml.experiments.benchmark_envs import batched_rate, loop_rate, vector_rate


def test_rates_are_positive():
    rng = np.random.default_rng(0)
    for name in ("HalfCheetahVel", "AntVel"):
        assert batched_rate(name, 3, 0.05, rng) > 0
        assert loop_rate(name, 3, 0.05, rng) > 0
    assert vector_rate("HalfCheetahVel", 2, 0.05, rng, asynchronous=False) > 0
