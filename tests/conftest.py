from __future__ import annotations

import pytest
import torch


@pytest.fixture
def float64():
    """Run a test in float64 (gradients are compared at 1e-10, beyond float32's reach)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
