"""A Gaussian MLP policy and the log-density and KL of its action distribution.

Per-task parameters are applied to all tasks at once with
:class:`rl_maml.functional.TaskBatchedModel` (``(mean, log_std)``, each ``[M, K, act_dim]``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from rl_maml.nn import MLP

_LOG_2PI = math.log(2 * math.pi)


class GaussianMLPPolicy(nn.Module):
    """``a ~ N(mlp(obs), diag(exp(log_std))^2)`` with a learned, state-independent ``log_std``.

    Args:
        obs_dim, act_dim: sizes of observations and actions.
        hidden_sizes: hidden widths ((100, 100) in the MAML paper; (64, 64) with tanh is the other
            common choice).
        activation: ``"relu"`` or ``"tanh"``.
        init_std: initial standard deviation of every action dimension.
        init: initialisation of the mean network's linear layers. ``"torch"``: PyTorch's default
            (uniform in +-1/sqrt(fan_in), weights and biases). ``"xavier"``: Glorot-uniform weights
            and zero biases, as in rllab and the MAML paper's code. Xavier weights are larger in
            the hidden layers, so one inner gradient step of the same size moves the mean several
            times further (about 5x for a 2x100 ReLU net): the inner step size is not
            comparable between the two.
        output_init_scale: multiplies the output layer's initial weights (its bias starts at 0);
            a small value (0.01) starts the mean near 0, so that a small ``init_std`` begins as a
            local random walk rather than a drift in a random direction.
        min_log_std: lower bound applied to ``log_std`` when the distribution is built.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: Sequence[int] = (100, 100),
                 activation: str = "relu", init_std: float = 1.0, output_init_scale: float = 1.0,
                 min_log_std: float = -20.0, init: str = "torch"):
        super().__init__()
        if init_std <= 0 or output_init_scale <= 0:
            raise ValueError(f"init_std and output_init_scale must be > 0, got {init_std}, {output_init_scale}")
        if init not in ("torch", "xavier"):
            raise ValueError(f"init must be 'torch' or 'xavier', got {init!r}")
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.hidden_sizes, self.activation = tuple(hidden_sizes), activation
        self.mean = MLP(obs_dim, act_dim, hidden_sizes, activation)
        if init == "xavier":
            with torch.no_grad():
                for layer in self.mean.modules():
                    if isinstance(layer, nn.Linear):
                        nn.init.xavier_uniform_(layer.weight)
                        layer.bias.zero_()
        if output_init_scale != 1.0:
            head = self.mean.layers[-1]
            with torch.no_grad():
                head.weight.mul_(output_init_scale)
                head.bias.zero_()
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(init_std)))
        self.min_log_std = min_log_std

    def layer_groups(self) -> list[list[str]]:
        """Parameter names per layer, input to output; the last group holds the mean head and log_std."""
        groups = [[f"mean.{n}" for n in g] for g in self.mean.layer_groups()]
        groups[-1].append("log_std")
        return groups

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """``obs [..., obs_dim]`` -> ``(mean [..., act_dim], log_std [..., act_dim])``."""
        mean = self.mean(obs)
        return mean, self.log_std.clamp(min=self.min_log_std).expand_as(mean)

    def forward_tasks(self, params: dict[str, Tensor], buffers: dict[str, Tensor], obs: Tensor
                      ) -> tuple[Tensor, Tensor]:
        """:meth:`forward` for M parameter sets ``[M, ...]`` and observations ``[M, ..., obs_dim]``
        (what :class:`~rl_maml.functional.TaskBatchedModel` calls; see :meth:`MLP.forward_tasks`)."""
        mean = self.mean.forward_tasks({n[len("mean."):]: v for n, v in params.items() if n.startswith("mean.")},
                                       {}, obs)
        log_std = params["log_std"].clamp(min=self.min_log_std)
        return mean, log_std.view(log_std.shape[0], *([1] * (mean.dim() - 2)), -1).expand_as(mean)


def log_prob(mean: Tensor, log_std: Tensor, actions: Tensor) -> Tensor:
    """Log density of ``actions`` under the diagonal Gaussian, summed over the action axis."""
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z * z - log_std - 0.5 * _LOG_2PI).sum(-1)


def kl_divergence(mean0: Tensor, log_std0: Tensor, mean1: Tensor, log_std1: Tensor) -> Tensor:
    """``KL(N0 || N1)`` of diagonal Gaussians, summed over the action axis."""
    var0, var1 = torch.exp(2 * log_std0), torch.exp(2 * log_std1)
    return (log_std1 - log_std0 + (var0 + (mean0 - mean1) ** 2) / (2 * var1) - 0.5).sum(-1)
