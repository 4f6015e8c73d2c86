"""Summary statistics for evaluation tables."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def mean_ci95(values: Tensor, dim: int = -1) -> tuple[Tensor, Tensor]:
    """Mean and half-width of the normal 95% confidence interval (1.96 standard errors) along ``dim``."""
    n = values.shape[dim]
    mean = values.mean(dim=dim)
    if n < 2:
        return mean, torch.full_like(mean, math.nan)
    half = 1.96 * values.std(dim=dim, unbiased=True) / math.sqrt(n)
    return mean, half
