"""Networks used by the benchmarks, written so that batching over tasks is exact.

Batch norm here computes its statistics from basic tensor ops: ``vmap`` over
``torch.nn.BatchNorm2d`` silently gives wrong second-order meta-gradients (see DESIGN.md), while
this version matches a per-task loop to float64 precision (tested).

:class:`Conv4` also applies itself to a whole meta-batch without ``vmap``
(:meth:`Conv4.forward_tasks`): the task axis is folded into the channel axis once, every
convolution becomes one grouped convolution with one group per task, and batch-norm statistics
are taken per (task, channel). :class:`rl_maml.functional.TaskBatchedModel` uses such a
``forward_tasks`` method whenever a module has one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}

UNFOLD_MAX_IN_CHANNELS = 1
"""Conv4.forward_tasks computes a first convolution with at most this many input channels as
unfold + matmul (measured faster for Omniglot's one channel; see docs/performance.md)."""


def _activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}") from None


class MLP(nn.Module):
    """A fully connected network ``in -> hidden... -> out`` (the sinusoid net is 1-40-40-1 ReLU).

    Parameter names are ``layers.<i>.weight`` / ``layers.<i>.bias``. ``forward(x, start, stop)``
    runs only the layers ``start..stop-1`` (a layer is a linear map and its activation), so a
    frozen prefix can be computed once (:mod:`rl_maml.patterns`).
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

    def layer_groups(self) -> list[list[str]]:
        """Parameter names of each layer, input to output."""
        return [[f"layers.{2 * i}.weight", f"layers.{2 * i}.bias"] for i in range(len(self.layers) // 2 + 1)]

    def forward(self, x: Tensor, start: int = 0, stop: int | None = None) -> Tensor:
        n = len(self.layers) // 2 + 1
        for i in range(start, n if stop is None else stop):
            x = self.layers[2 * i](x)
            if 2 * i + 1 < len(self.layers):
                x = self.layers[2 * i + 1](x)
        return x

    def forward_tasks(self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, start: int = 0,
                      stop: int | None = None) -> Tensor:
        """:meth:`forward` with parameters ``[M, ...]`` applied to inputs ``[M, ..., in]``, task by
        task, in one batched matrix product per layer (one plain product over every task's rows
        where a layer's parameters are one tensor expanded over the tasks, as the initial
        parameters are). The same numbers as vmapping :meth:`forward`, without vmap's per-call
        cost: sampling evaluates the policy once per env step."""
        M, lead = x.shape[0], x.shape[1:-1]
        h = x.reshape(M, -1, x.shape[-1])
        n = len(self.layers) // 2 + 1
        for i in range(start, n if stop is None else stop):
            h = task_linear(h, params[f"layers.{2 * i}.weight"], params[f"layers.{2 * i}.bias"])
            if 2 * i + 1 < len(self.layers):
                h = self.layers[2 * i + 1](h)
        return h.reshape(M, *lead, h.shape[-1])


def task_linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``x @ weight^T + bias`` per task: ``x [M, K, in]``, ``weight [M, out, in]``, ``bias [M, out]``.

    Parameters expanded over the tasks (stride 0) take one GEMM over all rows, but only where no
    gradient with respect to them is recorded: the inner loop differentiates with respect to the
    expanded ``[M, ...]`` tensors, and through ``weight[0]`` every task's gradient would land on
    task 0."""
    M = x.shape[0]
    shared = M > 1 and weight.stride(0) == 0 and bias.stride(0) == 0
    if shared and not (torch.is_grad_enabled() and (weight.requires_grad or bias.requires_grad)):
        return torch.addmm(bias[0], x.reshape(-1, x.shape[-1]), weight[0].t()).view(M, -1, weight.shape[1])
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


class TaskBatchNorm2d(nn.Module):
    """Batch norm for meta-learning, on batch statistics (the MAML paper's setting) or running ones.

    With ``track_running_stats=False`` (the default) every call normalises over ``(N, H, W)`` of
    its ``[N, C, H, W]`` input with the biased variance, at training and at test time, so each
    task is normalised by its own support or query batch as in the MAML reference code. With
    ``track_running_stats=True`` training-mode calls still use batch statistics but also update
    running estimates (momentum ``momentum``, averaged over tasks when batched), and eval-mode calls
    normalise with the running estimates instead, so a test task's predictions no longer depend
    on the other images in its batch.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, track_running_stats: bool = False, momentum: float = 0.1,
                 num_steps: int = 0):
        super().__init__()
        if num_steps < 0:
            raise ValueError(f"num_steps must be >= 0, got {num_steps}")
        self.eps = eps
        self.momentum = momentum
        self.track_running_stats = track_running_stats
        self.num_steps = num_steps
        shape = (num_steps, num_features) if num_steps else (num_features,)
        self.weight = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape))
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(shape))
            self.register_buffer("running_var", torch.ones(shape))

    def step_row(self) -> int | None:
        """With ``num_steps`` (MAML++'s per-step batch norm): the row of weights, biases and running
        statistics of the current inner step (:func:`rl_maml.inner.current_inner_step`; 0 outside
        the inner loop, the last row past it). None without."""
        if not self.num_steps:
            return None
        from rl_maml.inner import current_inner_step

        return min(current_inner_step() or 0, self.num_steps - 1)

    def statistics(self, x: Tensor, running_mean: Tensor | None = None, running_var: Tensor | None = None,
                   groups: int = 1) -> tuple[Tensor, Tensor]:
        """Variance and mean ``[1, C, 1, 1]`` to normalise ``x`` with (updating running ones if tracked).

        ``groups`` > 1 means the channels of ``x`` are ``groups`` tasks' channels side by side
        (:meth:`Conv4.forward_tasks`); the running estimates are updated with the tasks' average.
        """
        if self.track_running_stats and not self.training:
            return running_var.repeat(groups).view(1, -1, 1, 1), running_mean.repeat(groups).view(1, -1, 1, 1)
        var, mean = torch.var_mean(x, dim=(0, 2, 3), keepdim=True, correction=0)
        if self.track_running_stats:
            with torch.no_grad():
                n = x.numel() // x.shape[1]
                unbiased = var.view(groups, -1).mean(0) * (n / max(n - 1, 1))
                running_mean.lerp_(mean.view(groups, -1).mean(0), self.momentum)
                running_var.lerp_(unbiased, self.momentum)
        return var, mean

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.weight, self.bias
        running_mean, running_var = getattr(self, "running_mean", None), getattr(self, "running_var", None)
        row = self.step_row()
        if row is not None:  # views: the running estimates of this step's row are updated in place
            weight, bias = weight[row], bias[row]
            running_mean = None if running_mean is None else running_mean[row]
            running_var = None if running_var is None else running_var[row]
        var, mean = self.statistics(x, running_mean, running_var)
        # The affine map is folded into one scale and shift so that only one full-size
        # elementwise op (addcmul) touches the activations.
        scale = weight.view(1, -1, 1, 1) * torch.rsqrt(var + self.eps)
        return torch.addcmul(bias.view(1, -1, 1, 1) - mean * scale, x, scale)


class Conv4(nn.Module):
    """The four-block convolutional network of the MAML paper's few-shot experiments.

    Each block is a 3x3 convolution with ``hidden`` filters, batch norm and ReLU, then either a
    stride-2 convolution (``downsample="stride"``, Omniglot: features are averaged over the
    remaining spatial positions) or 2x2 max-pooling (``downsample="maxpool"``, MiniImageNet:
    features are flattened). A linear head gives ``num_classes`` logits. Batch norm uses batch
    statistics unless ``running_stats`` (see :class:`TaskBatchNorm2d`). ``per_step_bn=S`` gives
    every batch norm S rows of weights, biases (and running statistics), one per inner step
    (MAML++'s BNWB and BNRS); which row is used follows :func:`rl_maml.inner.current_inner_step`.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 5, hidden: int = 64, image_size: int = 28,
                 downsample: str = "stride", running_stats: bool = False, per_task_min_batch: int = 40,
                 per_step_bn: int = 0):
        super().__init__()
        if downsample not in ("stride", "maxpool"):
            raise ValueError(f"downsample must be 'stride' or 'maxpool', got {downsample!r}")
        self.downsample = downsample
        blocks: list[nn.Module] = []
        channels, size = in_channels, image_size
        for _ in range(4):
            stride = 2 if downsample == "stride" else 1
            blocks += [nn.Conv2d(channels, hidden, 3, stride=stride, padding=1),
                       TaskBatchNorm2d(hidden, track_running_stats=running_stats, num_steps=per_step_bn), nn.ReLU()]
            if downsample == "maxpool":
                blocks.append(nn.MaxPool2d(2))
                size //= 2
            else:
                size = (size + 1) // 2
            channels = hidden
        self.features = nn.Sequential(*blocks)
        head_in = hidden if downsample == "stride" else hidden * size * size
        self.head = nn.Linear(head_in, num_classes)
        self.stride = 2 if downsample == "stride" else 1
        per_block = 4 if downsample == "maxpool" else 3
        # How forward_tasks runs (see there): per-task dense convolutions from this many images
        # per task on, and the first convolution as unfold + matmul at few input channels.
        self.per_task_min_batch = per_task_min_batch
        self._unfold_first = in_channels <= UNFOLD_MAX_IN_CHANNELS
        # ... and with batch statistics only, the first block's norm folded into that product
        self._fused_first = self._unfold_first and not running_stats
        # Parameter names of each block's convolution and batch norm, for forward_tasks.
        self._blocks = [(f"features.{per_block * i}", f"features.{per_block * i + 1}") for i in range(4)]

    def layer_groups(self) -> list[list[str]]:
        """Parameter names of each layer (four conv blocks with their batch norm, then the head)."""
        return [[f"{c}.weight", f"{c}.bias", f"{b}.weight", f"{b}.bias"] for c, b in self._blocks] + \
            [["head.weight", "head.bias"]]

    def forward(self, x: Tensor, start: int = 0, stop: int | None = None) -> Tensor:
        """Layers ``start..stop-1`` of the five (four blocks, then the head) on ``x``."""
        stop = 5 if stop is None else stop
        per_block = len(self.features) // 4
        for i in range(start, min(stop, 4)):
            for layer in self.features[per_block * i: per_block * (i + 1)]:
                x = layer(x)
        if stop == 5:  # the head
            h = x.mean(dim=(2, 3)) if self.downsample == "stride" else x.flatten(1)
            x = self.head(h)
        return x

    def forward_tasks(self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, start: int = 0,
                      stop: int | None = None) -> Tensor:
        """Apply per-task parameters ``[M, ...]`` to per-task images ``x`` ``[M, B, C, H, W]``.

        Equal to applying the network to each task separately (tested against a per-task loop in
        float64, second-order gradients included). Returns logits ``[M, B, num_classes]``. Two
        execution paths, chosen by the per-task batch ``B``:

        - ``B < per_task_min_batch`` (support sets, small query sets): one pass over all tasks.
          The activations are held as ``[B, M * channels, H, W]``; each convolution is one grouped
          convolution with ``M`` groups, and batch norm is one ``F.batch_norm`` call whose
          channels are the (task, channel) pairs.
        - larger ``B`` (15 query images per class, evaluation), on the CPU: a dense convolution
          per task (not while training with tracked running statistics, whose update the first
          path averages over tasks). Measured on the CPU only; on a GPU, where a Python loop over
          tasks costs kernel launches, the first path stays.
          Grouped convolutions and whole-meta-batch elementwise ops lose to it there (their
          backward passes stream tensors far larger than the cache).

        The first convolution of a network with few input channels (Omniglot's one) is an
        ``unfold`` and a matrix product on either path, several times faster than the
        convolution kernels at one input channel.

        ``start``/``stop`` run only layers ``start..stop-1`` (as :meth:`forward`), on the first
        path: with ``stop < 5`` the result is the activation in the folded layout, which a later
        call with ``start = stop`` takes as its ``x``.
        """
        stop = 5 if stop is None else stop
        m = params["head.weight"].shape[0]
        params, buffers = self._step_rows(params, buffers)
        if (start == 0 and stop == 5 and x.shape[1] >= self.per_task_min_batch and x.device.type == "cpu"
                and not self._updates_running_stats()):
            return torch.stack([self._forward_one_task(params, buffers, i, x[i]) for i in range(m)])
        if start == 0:
            b = x.shape[1]
            h = None
        else:
            h, b = x, x.shape[0]
        h = self._run_blocks(x, h, lambda name: params[name], buffers, m, range(start, min(stop, 4)))
        if stop < 5:
            return h
        if self.downsample == "stride":
            feats = h.mean(dim=(2, 3)).view(b, m, -1)
        else:
            feats = h.reshape(b, m, -1)  # channels are task-major, so each task's block is (C, h, w)
        w, bias = params["head.weight"], params["head.bias"]  # [M, classes, F], [M, classes]
        return torch.baddbmm(bias.unsqueeze(1), feats.transpose(0, 1), w.transpose(1, 2))

    def _step_rows(self, params: dict[str, Tensor], buffers: dict[str, Tensor]) -> tuple[dict, dict]:
        """With per-step batch norm: the batch norms' tensors of the current inner step's row
        (per-task parameters ``[M, S, C]`` -> ``[M, C]``, buffers ``[S, C]`` -> views ``[C]``)."""
        row = self.get_submodule(self._blocks[0][1]).step_row()
        if row is None:
            return params, buffers
        norms = {bn for _, bn in self._blocks}
        params = {k: v[:, row] if k.rsplit(".", 1)[0] in norms else v for k, v in params.items()}
        buffers = {k: v[row] if k.rsplit(".", 1)[0] in norms else v for k, v in buffers.items()}
        return params, buffers

    def _updates_running_stats(self) -> bool:
        """Training with tracked statistics: the grouped path averages the update over tasks."""
        return self.training and any(getattr(m, "track_running_stats", False) for m in self.modules())

    def _first_conv(self, x: Tensor, w: Tensor, bias: Tensor) -> Tensor:
        """The first 3x3 convolution as unfold + matmul: ``x`` ``[*, B, C, H, W]``, ``w``
        ``[*, O, C, 3, 3]``, ``bias`` ``[*, O]`` -> ``[*, B, O, Ho, Wo]`` (``*``: nothing or tasks)."""
        ho = (x.shape[-2] + 2 - 3) // self.stride + 1
        wo = (x.shape[-1] + 2 - 3) // self.stride + 1
        cols = F.unfold(x.reshape(-1, *x.shape[-3:]), 3, padding=1, stride=self.stride)  # [*B, C*9, Ho*Wo]
        cols = cols.view(*x.shape[:-3], *cols.shape[1:])  # [*, B, C*9, Ho*Wo]
        out = torch.matmul(w.flatten(-3).unsqueeze(-3), cols)
        if bias is not None:
            out = out + bias.unsqueeze(-2).unsqueeze(-1)
        return out.view(*out.shape[:-1], ho, wo)

    def _first_block(self, x: Tensor, w: Tensor, gamma: Tensor, beta: Tensor, conv_bias: Tensor, bn: str) -> Tensor:
        """The first block (convolution, batch norm on batch statistics, ReLU) as one matrix
        product: ``x`` ``[*, B, C, H, W]``, ``w`` ``[*, O, C, 3, 3]``, ``gamma``/``beta`` ``[*, O]``
        -> ``[*, B, O, Ho, Wo]``.

        The convolution is linear in the unfolded input ``cols`` (``C * 9`` rows), so each output
        channel's batch mean and (biased) variance follow from the mean ``mu`` and covariance
        ``S`` of ``cols``: ``w_o . mu`` and ``w_o' S w_o``. The normalisation then folds into the
        weights and a shift, and no pass over the (much larger) activations computes statistics.
        Equal to convolution + batch norm (tested against the per-task loop in float64).
        """
        ho = (x.shape[-2] + 2 - 3) // self.stride + 1
        wo = (x.shape[-1] + 2 - 3) // self.stride + 1
        cols = F.unfold(x.reshape(-1, *x.shape[-3:]), 3, padding=1, stride=self.stride)
        cols = cols.view(*x.shape[:-3], *cols.shape[1:])  # [*, B, K, L]
        n = cols.shape[-3] * cols.shape[-1]
        mu = cols.mean(dim=(-3, -1))  # [*, K]
        centred = cols - mu.unsqueeze(-2).unsqueeze(-1)
        cov = torch.einsum("...bkl,...bjl->...kj", centred, centred) / n  # [*, K, K]
        wf = w.flatten(-3)  # [*, O, K]
        var = ((wf @ cov) * wf).sum(-1)  # [*, O]
        scale = gamma * torch.rsqrt(var + self.get_submodule(bn).eps)
        # the conv bias cancels in the normalisation; kept in the graph with a zero gradient
        shift = beta - scale * (wf @ mu.unsqueeze(-1)).squeeze(-1) + 0 * conv_bias
        out = torch.matmul((wf * scale.unsqueeze(-1)).unsqueeze(-3), cols) + shift.unsqueeze(-2).unsqueeze(-1)
        out = torch.relu(out) if torch.is_grad_enabled() else out.relu_()
        return out.view(*out.shape[:-1], ho, wo)

    def _norm_relu(self, bn: str, h: Tensor, weight: Tensor, bias: Tensor, buffers: dict[str, Tensor],
                   groups: int) -> Tensor:
        """Batch norm and ReLU of ``h`` whose channels are ``groups`` tasks' channels side by side
        (``weight``/``bias`` flattened to match)."""
        norm = self.get_submodule(bn)
        if norm.track_running_stats and norm.training:  # the running estimates are averaged over tasks
            var, mean = norm.statistics(h, buffers.get(f"{bn}.running_mean"), buffers.get(f"{bn}.running_var"), groups)
            scale = weight.view(1, -1, 1, 1) * torch.rsqrt(var + norm.eps)
            return torch.relu(torch.addcmul(bias.view(1, -1, 1, 1) - mean * scale, h, scale))
        if norm.track_running_stats:
            h = F.batch_norm(h, buffers[f"{bn}.running_mean"].repeat(groups), buffers[f"{bn}.running_var"].repeat(groups),
                             weight, bias, False, 0.0, norm.eps)
        else:  # statistics of the batch: biased variance over (B, H, W) per channel, as TaskBatchNorm2d
            h = F.batch_norm(h, None, None, weight, bias, True, 0.0, norm.eps)
        return torch.relu(h) if torch.is_grad_enabled() else h.relu_()

    def _run_blocks(self, x: Tensor, h: Tensor | None, take, buffers: dict[str, Tensor], groups: int,
                    layers: range) -> Tensor:
        """The blocks ``layers`` on either path of :meth:`forward_tasks`.

        ``groups`` > 1: the grouped path, parameters ``[M, ...]`` (``take(name)``), activations in
        the folded layout ``[B, M * C, H, W]`` (``h``; ``None`` to fold the images ``x``
        ``[M, B, C, H, W]``). ``groups`` = 1: one task's parameters and activations ``[B, C, H, W]``
        (``h`` ``None``: start from ``x``)."""
        for layer in layers:
            conv, bn = self._blocks[layer]
            w, gamma, beta, conv_bias = (take(f"{conv}.weight"), take(f"{bn}.weight"), take(f"{bn}.bias"),
                                         take(f"{conv}.bias"))
            # Before a norm on batch statistics the conv bias cancels exactly (its gradient is zero):
            # left out of the convolution, kept in the graph through the shift times zero, so
            # gradients with respect to every parameter exist.
            bias = conv_bias if self.get_submodule(bn).track_running_stats else None
            if layer == 0 and (self._fused_first or self._unfold_first):
                h = (self._first_block(x, w, gamma, beta, conv_bias, bn) if self._fused_first
                     else self._first_conv(x, w, bias))  # [M, B, O, Ho, Wo] (grouped) or [B, O, Ho, Wo]
                if groups > 1:
                    h = h.transpose(0, 1).flatten(1, 2)  # into the folded layout
            else:
                if h is None:
                    h = x.transpose(0, 1).flatten(1, 2) if groups > 1 else x
                h = F.conv2d(h, w.reshape(-1, *w.shape[-3:]), None if bias is None else bias.reshape(-1),
                             stride=self.stride, padding=1, groups=groups)
            if not (layer == 0 and self._fused_first):  # the fused first block has its norm and ReLU
                shift = beta if bias is not None else beta + 0 * conv_bias
                h = self._norm_relu(bn, h, gamma.reshape(-1), shift.reshape(-1), buffers, groups)
            if self.downsample == "maxpool":
                h = F.max_pool2d(h, 2)
        return h

    def _forward_one_task(self, params: dict[str, Tensor], buffers: dict[str, Tensor], i: int, x: Tensor) -> Tensor:
        """Task ``i``'s logits ``[B, classes]`` from its images ``x`` ``[B, C, H, W]`` (dense convolutions)."""
        h = self._run_blocks(x, None, lambda name: params[name][i], buffers, 1, range(4))
        feats = h.mean(dim=(2, 3)) if self.downsample == "stride" else h.flatten(1)
        return torch.addmm(params["head.bias"][i], feats, params["head.weight"][i].t())
