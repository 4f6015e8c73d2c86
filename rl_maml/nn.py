"""Networks used by the benchmarks, written so that ``vmap`` over tasks is exact.

Batch norm here computes its statistics from basic tensor ops: ``vmap`` over
``torch.nn.BatchNorm2d`` silently gives wrong second-order meta-gradients (see DESIGN.md), while
this version matches a per-task loop to float64 precision (tested).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


def _activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}") from None


class MLP(nn.Module):
    """A fully connected network ``in -> hidden... -> out`` (the sinusoid net is 1-40-40-1 ReLU).

    Parameter names are ``layers.<i>.weight`` / ``layers.<i>.bias``.
    """

    def __init__(self, in_features: int, out_features: int, hidden_sizes: Sequence[int] = (40, 40),
                 activation: str = "relu"):
        super().__init__()
        sizes = [in_features, *hidden_sizes]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), _activation(activation)]
        layers.append(nn.Linear(sizes[-1], out_features))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class TaskBatchNorm2d(nn.Module):
    """Batch norm on the statistics of the current batch (the MAML paper's setting).

    Normalises over ``(N, H, W)`` of an ``[N, C, H, W]`` input with the biased variance, then
    applies a per-channel affine map. No running statistics: every task is normalised by its own
    support or query batch, at training and at test time, as in the MAML reference code.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: Tensor) -> Tensor:
        # Per-channel statistics [1, C, 1, 1]; the affine map is folded into one scale and shift
        # so that only one full-size elementwise op (addcmul) touches the activations.
        var, mean = torch.var_mean(x, dim=(0, 2, 3), keepdim=True, correction=0)
        scale = self.weight.view(1, -1, 1, 1) * torch.rsqrt(var + self.eps)
        return torch.addcmul(self.bias.view(1, -1, 1, 1) - mean * scale, x, scale)


class Conv4(nn.Module):
    """The four-block convolutional network of the MAML paper's few-shot experiments.

    Each block is a 3x3 convolution with ``hidden`` filters, batch norm and ReLU, then either a
    stride-2 convolution (``downsample="stride"``, Omniglot: features are averaged over the
    remaining spatial positions) or 2x2 max-pooling (``downsample="maxpool"``, MiniImageNet:
    features are flattened). A linear head gives ``num_classes`` logits.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 5, hidden: int = 64, image_size: int = 28,
                 downsample: str = "stride"):
        super().__init__()
        if downsample not in ("stride", "maxpool"):
            raise ValueError(f"downsample must be 'stride' or 'maxpool', got {downsample!r}")
        self.downsample = downsample
        blocks: list[nn.Module] = []
        channels, size = in_channels, image_size
        for _ in range(4):
            stride = 2 if downsample == "stride" else 1
            blocks += [nn.Conv2d(channels, hidden, 3, stride=stride, padding=1), TaskBatchNorm2d(hidden), nn.ReLU()]
            if downsample == "maxpool":
                blocks.append(nn.MaxPool2d(2))
                size //= 2
            else:
                size = (size + 1) // 2
            channels = hidden
        self.features = nn.Sequential(*blocks)
        head_in = hidden if downsample == "stride" else hidden * size * size
        self.head = nn.Linear(head_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.features(x)  # [N, hidden, h, w]
        h = h.mean(dim=(2, 3)) if self.downsample == "stride" else h.flatten(1)
        return self.head(h)
