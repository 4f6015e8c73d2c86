"""Easy and hard linear-regression tasks: when does MAML beat non-adaptive learning (NAL)?

Collins, Mokhtari and Shakkottai, "How Does the Task Landscape Affect MAML Performance?" (arXiv
2010.14672). A task is a linear regression ``y = x^T theta* + noise`` with ``x ~ N(0, S)``. Tasks
come from two groups, easy and hard: each group has a data covariance ``S_g`` (diagonal; its
scale is the group's *hardness*: small eigenvalues mean slow gradient-descent convergence), a
centre ``mu_g`` and a spread ``r_g`` of the task optima (``theta* ~ N(mu_g, r_g^2 I)``), and a
mixture weight.

A task's population loss is ``f(theta) = 1/2 (theta - theta*)^T S (theta - theta*) + sigma^2 / 2``.
The closed forms below follow from it:

- NAL minimises ``E[f(theta)]``: ``theta_NAL = E[S]^-1 E[S theta*]``.
- MAML with one exact gradient step of size alpha minimises ``E[f(theta - alpha grad f(theta))] =
  E[1/2 (theta - theta*)^T A (theta - theta*)] + const`` with ``A = (I - alpha S) S (I - alpha S)``:
  ``theta_MAML = E[A]^-1 E[A theta*]``.
- With the inner gradient estimated from n samples (empirical covariance ``S_hat``), Gaussian
  fourth moments give ``A_n = E[(I - alpha S_hat) S (I - alpha S_hat)] = S - 2 alpha S^2 +
  alpha^2 (S^3 + (S^3 + tr(S^2) S) / n)`` and a noise term ``alpha^2 sigma^2 tr(S^2) / (2n)``.

The *excess risk after adaptation* of an initialisation theta is the expected loss after one
inner step minus the noise floor: ``1/2 E[(theta - theta*)^T A (theta - theta*)]`` (plus the
finite-sample noise term). :func:`gain_ratio` is NAL's excess risk over MAML's, both after
adaptation: 1 when MAML gains nothing, large when it gains a lot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from rl_maml.tasks.base import TaskBatch


@dataclass(frozen=True)
class TaskGroup:
    """One group of tasks (easy or hard).

    Args:
        weight: mixture weight (the two groups' weights are normalised to sum to 1).
        scale: covariance scale; ``S = scale * diag(spectrum)`` (small scale: hard task).
        center: centre of the task optima, a length-d sequence, or a number c meaning ``c * e_1``.
        spread: standard deviation r of the optima around the centre (per coordinate).
        spectrum: relative eigenvalues of S (length d); None: all ones (isotropic).
    """

    weight: float
    scale: float
    center: float | tuple[float, ...] = 0.0
    spread: float = 1.0
    spectrum: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not self.weight >= 0:
            raise ValueError(f"task group weight must be >= 0, got {self.weight}")
        if not self.scale > 0:
            raise ValueError(f"task group scale (hardness) must be > 0, got {self.scale}")
        if not self.spread >= 0:
            raise ValueError(f"task group spread must be >= 0, got {self.spread}")
        if self.spectrum is not None and min(self.spectrum) <= 0:
            raise ValueError(f"task group spectrum must be positive, got {self.spectrum}")

    def covariance_diag(self, dim: int) -> Tensor:
        spec = torch.ones(dim, dtype=torch.float64) if self.spectrum is None else \
            torch.tensor(self.spectrum, dtype=torch.float64)
        if spec.shape != (dim,):
            raise ValueError(f"spectrum has {spec.numel()} entries, expected d = {dim}")
        return self.scale * spec

    def mean(self, dim: int) -> Tensor:
        if isinstance(self.center, (int, float)):
            mu = torch.zeros(dim, dtype=torch.float64)
            mu[0] = float(self.center)
            return mu
        mu = torch.tensor(self.center, dtype=torch.float64)
        if mu.shape != (dim,):
            raise ValueError(f"center has {mu.numel()} entries, expected d = {dim}")
        return mu


@dataclass(frozen=True)
class LinearTaskDistribution:
    """A two-group mixture of linear-regression tasks in dimension ``dim``.

    Args:
        dim: d, the input dimension.
        easy, hard: the two :class:`TaskGroup` s.
        noise: standard deviation sigma of the label noise.
    """

    dim: int
    easy: TaskGroup
    hard: TaskGroup
    noise: float = 0.1
    groups: tuple[TaskGroup, TaskGroup] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")
        if self.easy.weight + self.hard.weight <= 0:
            raise ValueError("at least one task group needs a positive weight")
        if not self.noise >= 0:
            raise ValueError(f"noise must be >= 0, got {self.noise}")
        object.__setattr__(self, "groups", (self.easy, self.hard))
        for g in self.groups:  # validates shapes early
            g.covariance_diag(self.dim), g.mean(self.dim)

    @property
    def weights(self) -> tuple[float, float]:
        total = self.easy.weight + self.hard.weight
        return self.easy.weight / total, self.hard.weight / total

    # -- sampling ------------------------------------------------------------------------------
    def sample_tasks(self, num_tasks: int, generator: torch.Generator) -> dict[str, Tensor]:
        """``{"theta": [M, d], "hard": [M] bool, "cov": [M, d]}`` (float64)."""
        hard = torch.rand(num_tasks, generator=generator, dtype=torch.float64) < self.weights[1]
        mu = torch.stack([g.mean(self.dim) for g in self.groups])[hard.long()]
        spread = torch.tensor([g.spread for g in self.groups], dtype=torch.float64)[hard.long()].unsqueeze(1)
        cov = torch.stack([g.covariance_diag(self.dim) for g in self.groups])[hard.long()]
        theta = mu + spread * torch.randn(num_tasks, self.dim, generator=generator, dtype=torch.float64)
        return {"theta": theta, "hard": hard, "cov": cov}

    def sample_points(self, tasks: dict[str, Tensor], num_points: int, generator: torch.Generator,
                      dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """``x`` ``[M, n, d]`` with ``x ~ N(0, S)`` and ``y = x theta* + noise`` ``[M, n, 1]``."""
        m = tasks["theta"].shape[0]
        z = torch.randn(m, num_points, self.dim, generator=generator, dtype=torch.float64)
        x = z * tasks["cov"].sqrt().unsqueeze(1)
        eps = torch.randn(m, num_points, 1, generator=generator, dtype=torch.float64)
        y = x @ tasks["theta"].unsqueeze(-1) + self.noise * eps
        return x.to(dtype), y.to(dtype)

    def sample(self, num_tasks: int, num_support: int, num_query: int, generator: torch.Generator,
               dtype: torch.dtype = torch.float32) -> TaskBatch:
        """A meta-batch for the engine: support and query points of ``num_tasks`` fresh tasks."""
        tasks = self.sample_tasks(num_tasks, generator)
        return TaskBatch(self.sample_points(tasks, num_support, generator, dtype),
                         self.sample_points(tasks, num_query, generator, dtype), tasks)

    # -- closed forms --------------------------------------------------------------------------
    def _moments(self, alpha: float | None, n: int | None) -> list[tuple[float, Tensor, Tensor, Tensor]]:
        """Per group: (weight, M_g, mu_g, r_g^2) where M_g is S (alpha None) or A (or A_n)."""
        out = []
        for w, g in zip(self.weights, self.groups):
            s = g.covariance_diag(self.dim)
            if alpha is None:
                m = s
            else:
                m = s - 2 * alpha * s**2 + alpha**2 * s**3
                if n is not None:
                    m = m + alpha**2 * (s**3 + (s**2).sum() * s) / n
            out.append((w, torch.diag(m), g.mean(self.dim), torch.tensor(g.spread**2, dtype=torch.float64)))
        return out

    def _solve(self, alpha: float | None, n: int | None) -> Tensor:
        moments = self._moments(alpha, n)
        lhs = sum(w * m for w, m, _, _ in moments)
        rhs = sum(w * m @ mu for w, m, mu, _ in moments)
        return torch.linalg.solve(lhs, rhs)

    def nal_solution(self) -> Tensor:
        """``E[S]^-1 E[S theta*]``: the minimiser of the average task loss."""
        return self._solve(None, None)

    def maml_solution(self, alpha: float, n: int | None = None) -> Tensor:
        """``E[A]^-1 E[A theta*]``; with ``n``, the inner gradient uses n samples (``A_n``)."""
        return self._solve(alpha, n)

    def excess_risk(self, theta: Tensor, alpha: float, n: int | None = None) -> float:
        """Expected loss after one inner step of size ``alpha`` from ``theta``, minus ``sigma^2 / 2``.

        ``alpha = 0`` gives the risk without adaptation. With ``n``, the step uses n samples, and
        the noise that the empirical gradient carries (``alpha^2 sigma^2 tr(S^2) / (2n)``) counts.
        """
        theta = torch.as_tensor(theta, dtype=torch.float64)
        total = 0.0
        for (w, m, mu, r2), g in zip(self._moments(alpha, n), self.groups):
            diff = theta - mu
            total += w * 0.5 * (diff @ m @ diff + r2 * torch.trace(m)).item()
            if n is not None and alpha:
                s = g.covariance_diag(self.dim)
                total += w * 0.5 * alpha**2 * self.noise**2 * (s**2).sum().item() / n
        return total

    def gain_ratio(self, alpha: float, n: int | None = None) -> float:
        """NAL's excess risk after adaptation over MAML's (>= 1; 1 means MAML gains nothing)."""
        return self.excess_risk(self.nal_solution(), alpha, n) / self.excess_risk(self.maml_solution(alpha, n), alpha, n)
