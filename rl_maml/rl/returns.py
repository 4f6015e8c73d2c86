"""Returns and advantages as pure functions of padded ``[T, ...]`` tensors with masks.

``mask[t]`` is 1 where step t of an episode was taken and 0 after the episode ended; every
function ignores (and returns zeros at) masked steps.
"""

from __future__ import annotations

import torch
from torch import Tensor


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """``R_t = sum_k gamma^k r_{t+k}`` within each episode: ``[T, ...]`` -> ``[T, ...]``."""
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = (rewards[t] + gamma * running) * mask[t]
        out[t] = running
    return out


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> Tensor:
    """Generalised advantage estimation (Schulman et al. 2016, arXiv 1506.02438).

    ``A_t = sum_k (gamma lam)^k delta_{t+k}``, ``delta_t = r_t + gamma V_{t+1} - V_t``, with
    ``V`` taken as 0 after an episode's last step (episodes end at termination or the horizon).
    """
    next_values = torch.cat([values[1:] * mask[1:], torch.zeros_like(values[:1])])
    deltas = (rewards + gamma * next_values - values) * mask
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = (deltas[t] + gamma * lam * running) * mask[t]
        out[t] = running
    return out


def normalize_per_task(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """Standardise ``x [T, M, B]`` to zero mean and unit variance within each task m (masked)."""
    count = mask.sum(dim=(0, 2), keepdim=True).clamp(min=1)
    mean = (x * mask).sum(dim=(0, 2), keepdim=True) / count
    var = (((x - mean) * mask) ** 2).sum(dim=(0, 2), keepdim=True) / count
    return (x - mean) / torch.sqrt(var + eps) * mask
