"""The sinusoid task distribution."""

from __future__ import annotations

import math

import pytest
import torch

from rl_maml.seeding import derive_seed, torch_generator
from rl_maml.tasks import SinusoidTasks


def test_ranges_shapes_and_targets():
    tasks = SinusoidTasks()
    batch = tasks.sample(500, 10, 7, torch.Generator().manual_seed(0))
    amp, phase = batch.tasks["amplitude"], batch.tasks["phase"]
    assert amp.shape == (500,) and batch.support[0].shape == (500, 10, 1) and batch.query[1].shape == (500, 7, 1)
    assert amp.min() >= 0.1 and amp.max() <= 5.0 and phase.min() >= 0 and phase.max() <= math.pi
    x = batch.support[0]
    assert x.min() >= -5 and x.max() <= 5
    expected = amp.view(-1, 1, 1) * torch.sin(x - phase.view(-1, 1, 1))
    torch.testing.assert_close(batch.support[1], expected)
    # Uniform distributions: the sample means are near the centres of the ranges.
    assert abs(amp.mean().item() - 2.55) < 0.2 and abs(phase.mean().item() - math.pi / 2) < 0.15


def test_same_seed_same_tasks_and_independent_streams():
    tasks = SinusoidTasks()
    a = tasks.sample(5, 3, 3, torch_generator(0, "train", 7))
    b = tasks.sample(5, 3, 3, torch_generator(0, "train", 7))
    c = tasks.sample(5, 3, 3, torch_generator(0, "train", 8))
    assert torch.equal(a.support[0], b.support[0]) and not torch.equal(a.support[0], c.support[0])
    assert derive_seed(0, "train", 7) != derive_seed(0, "train", 8) != derive_seed(1, "train", 7)


def test_out_of_range_tasks_and_bad_ranges():
    tasks = SinusoidTasks()
    with pytest.raises(ValueError, match=r"'amplitude' must lie in \[0.1, 5.0\]"):
        tasks.validate_tasks({"amplitude": torch.tensor([7.0]), "phase": torch.tensor([0.0])})
    with pytest.raises(ValueError, match="missing the field 'phase'"):
        tasks.validate_tasks({"amplitude": torch.tensor([1.0])})
    with pytest.raises(ValueError, match="x_range"):
        SinusoidTasks(x_range=(5.0, -5.0))
