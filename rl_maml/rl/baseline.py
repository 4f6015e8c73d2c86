"""The linear feature baseline (Duan et al. 2016, arXiv 1604.06778), fitted per task in one solve."""

from __future__ import annotations

import torch
from torch import Tensor

from rl_maml.rl.episodes import valid_rows_first


class LinearFeatureBaseline:
    """Predicts returns from ``[o, o^2, t, t^2, t^3, 1]`` (``o`` clipped to [-10, 10], ``t`` = step/100).

    :meth:`fit_predict` fits one ridge regression per task on that task's episodes and returns the
    fitted values; all M tasks are solved in one batched Cholesky factorisation in float64. When
    a system is ill-conditioned the ridge term is made ten times larger (five tries in all).

    Args:
        reg_coeff: initial ridge coefficient (> 0).
    """

    def __init__(self, reg_coeff: float = 1e-5):
        if not reg_coeff > 0:
            raise ValueError(f"LinearFeatureBaseline: reg_coeff must be > 0 (the ridge keeps each task's system "
                             f"positive definite; the default is 1e-5), got {reg_coeff}")
        self.reg_coeff = reg_coeff

    @staticmethod
    def features(obs: Tensor) -> Tensor:
        """``obs [T, M, B, d]`` -> features ``[T, M, B, 2d + 4]``."""
        o = obs.clamp(-10, 10)
        t = torch.arange(obs.shape[0], dtype=obs.dtype, device=obs.device).view(-1, 1, 1, 1) / 100.0
        t = t.expand(*obs.shape[:-1], 1)
        return torch.cat([o, o * o, t, t * t, t * t * t, torch.ones_like(t)], dim=-1)

    @staticmethod
    def features_at(obs: Tensor, steps: Tensor) -> Tensor:
        """Float64 features ``[..., 2d + 4]`` of observations ``obs [..., d]`` taken at time steps
        ``steps [...]`` (integers): :meth:`features` for any layout of the steps."""
        d = obs.shape[-1]
        x = obs.new_empty(*obs.shape[:-1], 2 * d + 4, dtype=torch.float64)
        x[..., :d] = obs.clamp(-10, 10)
        torch.mul(x[..., :d], x[..., :d], out=x[..., d:2 * d])
        t = steps.to(obs.dtype) / 100.0  # as features(): the time in the observations' precision
        x[..., 2 * d] = t
        x[..., 2 * d + 1] = t * t
        x[..., 2 * d + 2] = t * t * t
        x[..., 2 * d + 3] = 1
        return x

    @staticmethod
    def _ridge_solve(xtx: Tensor, xty: Tensor, reg_coeff: float) -> Tensor:
        """``(xtx + reg I)^-1 xty`` per task by Cholesky (the matrix is symmetric positive definite),
        the ridge ``reg`` made ten times larger while any task's factorisation fails or gives a
        non-finite solution (five tries in all).

        Cholesky, not ``torch.linalg.solve``: the batched LU behind ``solve`` fails with
        "Intel oneMKL ERROR: Parameter 6 was incorrect on entry to DLASWP" and then hangs when
        torch runs more than one thread and the systems are larger than about 150 x 150
        (pytorch/pytorch#142815, #141358): Ant's 125-dimensional observation gives 254 features."""
        eye = torch.eye(xtx.shape[-1], dtype=xtx.dtype, device=xtx.device)
        reg = reg_coeff
        for _ in range(5):
            factor, info = torch.linalg.cholesky_ex(xtx + reg * eye)
            if not info.any():
                coef = torch.cholesky_solve(xty, factor)
                if torch.isfinite(coef).all():
                    return coef
            reg *= 10
        raise FloatingPointError("linear baseline: the ridge regression has no finite solution; "
                                 "check the observations for NaN or huge values")

    CHUNK_ROWS = 16384
    """Rows (steps) of tasks whose features are built at a time (they stay in the CPU's caches)."""

    def fit_predict(self, obs: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
        """Values ``[T, M, B]`` from a per-task fit of ``returns [T, M, B]`` (masked steps excluded).

        Only each task's unmasked steps enter the fit (packed as in
        :meth:`~rl_maml.rl.episodes.Episodes.per_task`): a step budget or early ends can leave half
        of the dense ``T x B`` slots empty. The features are built a few tasks at a time, once for
        the normal equations and again for the fitted values, instead of one float64 tensor of the
        whole batch (about 0.9 GB for AntDir's 40 x 8,000 steps)."""
        T, M, B = returns.shape
        rows = valid_rows_first(mask)  # [M, K] flat (t, b) positions, each task's steps first
        K = rows.shape[1]
        t, b = rows // B, rows % B
        m = torch.arange(M, device=rows.device).view(M, 1).expand_as(rows)
        size = max(1, self.CHUNK_ROWS // max(K, 1)) if obs.device.type == "cpu" else M
        chunks = [slice(i, min(i + size, M)) for i in range(0, M, size)]
        weight = mask[t, m, b].double()  # [M, K]: 0 on the padding rows

        def features(c: slice) -> Tensor:
            return self.features_at(obs[t[c], m[c], b[c]], t[c]) * weight[c].unsqueeze(-1)

        F = 2 * obs.shape[-1] + 4
        xtx = obs.new_empty(M, F, F, dtype=torch.float64)
        xty = obs.new_empty(M, F, 1, dtype=torch.float64)
        y = (returns[t, m, b].double() * weight).unsqueeze(-1)  # [M, K, 1]
        for c in chunks:
            x = features(c)
            torch.bmm(x.transpose(1, 2), x, out=xtx[c])
            torch.bmm(x.transpose(1, 2), y[c], out=xty[c])
        coef = self._ridge_solve(xtx, xty, self.reg_coeff)
        fitted = torch.cat([torch.bmm(features(c), coef[c]) for c in chunks]).squeeze(-1)  # [M, K]
        values = torch.zeros_like(returns)
        values[t, m, b] = fitted.to(returns.dtype)  # rows are distinct; the padding rows' values are 0
        return values
