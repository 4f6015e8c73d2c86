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


@pytest.fixture
def thread_counts(monkeypatch):
    """``(seen, watch)``: ``watch(name, owner, attr)`` wraps ``owner.attr`` so that ``seen[name]``
    collects torch's intra-op thread count at each of its calls."""
    seen: dict[str, set[int]] = {}

    def watch(name: str, owner, attr: str) -> None:
        fn = getattr(owner, attr)
        seen[name] = set()

        def wrapped(*args, **kwargs):
            seen[name].add(torch.get_num_threads())
            return fn(*args, **kwargs)

        monkeypatch.setattr(owner, attr, wrapped)

    return seen, watch
