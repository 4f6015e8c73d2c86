"""The linear feature baseline (Duan et al. 2016, arXiv 1604.06778), fitted per task in one solve."""

from __future__ import annotations

import torch
from torch import Tensor


class LinearFeatureBaseline:
    """Predicts returns from ``[o, o^2, t, t^2, t^3, 1]`` (``o`` clipped to [-10, 10], ``t`` = step/100).

    :meth:`fit_predict` fits one ridge regression per task on that task's episodes and returns the
    fitted values; all M tasks are solved in one batched ``torch.linalg.solve`` in float64. When
    a system is ill-conditioned the ridge term grows tenfold (up to five times).

    Args:
        reg_coeff: initial ridge coefficient.
    """

    def __init__(self, reg_coeff: float = 1e-5):
        self.reg_coeff = reg_coeff

    @staticmethod
    def features(obs: Tensor) -> Tensor:
        """``obs [T, M, B, d]`` -> features ``[T, M, B, 2d + 4]``."""
        o = obs.clamp(-10, 10)
        t = torch.arange(obs.shape[0], dtype=obs.dtype, device=obs.device).view(-1, 1, 1, 1) / 100.0
        t = t.expand(*obs.shape[:-1], 1)
        return torch.cat([o, o * o, t, t * t, t * t * t, torch.ones_like(t)], dim=-1)

    def fit_predict(self, obs: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
        """Values ``[T, M, B]`` from a per-task fit of ``returns [T, M, B]`` (masked steps excluded)."""
        T, M, B = returns.shape
        x = (self.features(obs).double() * mask.double().unsqueeze(-1)).transpose(0, 1).reshape(M, T * B, -1)
        y = (returns.double() * mask.double()).transpose(0, 1).reshape(M, T * B, 1)
        xtx, xty = x.transpose(1, 2) @ x, x.transpose(1, 2) @ y  # [M, F, F], [M, F, 1]
        eye = torch.eye(xtx.shape[-1], dtype=xtx.dtype, device=xtx.device)
        reg = self.reg_coeff
        for _ in range(5):
            try:
                coef = torch.linalg.solve(xtx + reg * eye, xty)
                if torch.isfinite(coef).all():
                    break
            except torch.linalg.LinAlgError:
                pass
            reg *= 10
        else:
            raise FloatingPointError("linear baseline: the ridge regression has no finite solution; "
                                     "check the observations for NaN or huge values")
        values = (x @ coef).reshape(M, T, B).transpose(0, 1)
        return values.to(returns.dtype) * mask
