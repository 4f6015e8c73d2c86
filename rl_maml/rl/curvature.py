"""Exact curvature products for the Gaussian MLP policy, written out layer by layer.

The TRPO meta-step spends nearly all its time in Fisher-vector products, each of which needs
Hessian-vector products of the inner loss (one per inner step, twice) and of the KL. Autograd
computes them by a second backward pass through a graph that holds the first one (double
backward): many small elementwise kernels, allocations and a vmapped layout per product.
For :class:`~rl_maml.rl.policy.GaussianMLPPolicy` the same products have a closed form:

* The policy's log-density is a function of the mean ``mu(s)`` and the state-independent
  ``log_std``, whose first and second derivatives are known in closed form. The product with
  the Hessian of ``sum_i c_i f_i(mu_i, log_std)`` is Pearlmutter's R-operator applied to
  backpropagation: a forward tangent pass through the MLP (``dz = dh W^T + h dW^T + db``),
  the second derivatives of ``f`` at the output, and a backward pass that carries both the
  gradient ``delta`` and its directional derivative ``R(delta)``. Nothing is dropped: the
  terms through the network's own second derivatives (the products of two layers' weights, and
  ``tanh''``) are there, so the result is the exact Hessian-vector product (equal to double
  backward in float64, tested).
* The KL's Hessian at the current policy is a Gauss-Newton matrix (its gradient with respect to
  the mean is zero there): ``G^T diag(w / sigma^2) G`` on the mean network plus ``2 w`` on
  ``log_std``, one forward tangent and one backward pass.

Everything that does not depend on the direction (activations, the activations' derivatives,
the gradient's backward pass) is computed once per meta-step, so a product is a handful of
batched matrix products per layer. Where the weights or the direction are the same for every
task (the initial parameters, the first direction of a product), the batched products become
one matrix product over all tasks' rows.

Tasks are independent, so every Hessian here is block diagonal over tasks: parameters and
directions are per task, ``[M, ...]``, and so are the products.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from rl_maml.aliases import Params
from rl_maml.rl.episodes import Episodes
from rl_maml.rl.policy import GaussianMLPPolicy

HessianProduct = Callable[..., Params]
"""``(u, tasks=slice(None)) -> H u`` for the tasks ``tasks`` of the meta-batch (``u`` holds their rows)."""


def supports(policy: nn.Module, names: list[str]) -> bool:
    """Whether :class:`GaussianMLPCurvature` covers ``policy`` with trainable parameters ``names``."""
    if type(policy) is not GaussianMLPPolicy or policy.activation not in ("relu", "tanh"):
        return False
    layers = list(policy.mean.layers)
    if not all(isinstance(m, nn.Linear) for m in layers[::2]):
        return False
    return sorted(names) == sorted(n for n, _ in policy.named_parameters())


def _shared(t: Tensor) -> bool:
    """A tensor ``[M, ...]`` that is one tensor expanded over the task axis (stride 0)."""
    return t.dim() > 0 and t.shape[0] > 1 and t.stride(0) == 0


def _mm(a: Tensor, b: Tensor, bias: Tensor | None = None) -> Tensor:
    """``a @ b (+ bias)`` for ``a [M, K, p]``, ``b [M, p, q]`` and ``bias [M, q]``: one GEMM over
    all tasks' rows when ``b`` is shared by the tasks, a batched GEMM otherwise."""
    M, K, p = a.shape
    if _shared(b):
        flat = a.reshape(M * K, p)
        b0 = b[0] if b[0].stride(0) == 1 else b[0].t().contiguous().t()  # column-major: measured never slower,
        if bias is not None and _shared(bias):                             # up to 5x faster for small p
            return torch.addmm(bias[0], flat, b0).view(M, K, -1)
        out = (flat @ b0).view(M, K, -1)
        return out if bias is None else out + bias.unsqueeze(1)
    return _bmm(a, b, None if bias is None else bias.unsqueeze(1))


def _outer(a: Tensor, b: Tensor, acc: Tensor | None = None) -> Tensor:
    """Per-task ``acc + a^T b`` for ``a [M, K, p]``, ``b [M, K, q]``: ``[M, p, q]``."""
    return _bmm(a.transpose(1, 2), b, acc)


def _padded(t: Tensor) -> bool:
    """A matrix (the last two dims) whose rows or columns are not packed: a slice of a wider buffer."""
    rows, cols = t.shape[-2:]
    return not ((t.stride(-1) == 1 and t.stride(-2) == cols) or (t.stride(-2) == 1 and t.stride(-1) == rows))


def _bmm(a: Tensor, b: Tensor, acc: Tensor | None = None) -> Tensor:
    """Per-task ``acc + a @ b``. In reduced precision PyTorch's CPU ``bmm`` copies every operand
    whose rows are padded (a slice of a wider buffer) while ``mm`` takes them as they are, so there
    a loop over the tasks' ``mm`` replaces the copies. The products' own operands are all packed
    (:class:`_Point`); this covers other callers."""
    if a.device.type != "cpu" or a.dtype not in (torch.bfloat16, torch.float16) or not (_padded(a) or _padded(b)):
        return torch.bmm(a, b) if acc is None else torch.baddbmm(acc, a, b)
    out = a.new_empty(a.shape[0], a.shape[1], b.shape[2])
    for i in range(a.shape[0]):
        if acc is None:
            torch.mm(a[i], b[i], out=out[i])
        else:
            torch.addmm(acc[i], a[i], b[i], out=out[i])
    return out


_BITS = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _mask_dtype(dtype: torch.dtype) -> torch.dtype:
    """The integer of ``dtype``'s width: the dtype of ReLU's masks for tensors of ``dtype``."""
    return _BITS[dtype.itemsize]


def _gate(positive: Tensor, dtype: torch.dtype) -> Tensor:
    """ReLU's derivative, ``positive`` (bool), as a bit mask for tensors of ``dtype``: the integer
    of the same width, all ones where the unit is active and zero elsewhere (see :func:`_gated`)."""
    return positive.to(_mask_dtype(dtype)).neg_()


def _gated(x: Tensor, slope: Tensor, out: Tensor | None = None) -> Tensor:
    """``slope * x`` into ``out`` (in place in ``x`` without it): an elementwise product for a
    floating-point ``slope`` (tanh), a bitwise AND of ``x``'s bits for ReLU's mask (:func:`_gate`).
    The two agree except for the sign of a zero, and where the mask is zero the AND gives zero for
    any ``x`` (the product gives NaN for an infinity). On the CPU the AND, an integer kernel over
    the same bytes, ran 4x faster than the bfloat16 product in place on tensors out of cache (0.47
    against 2.04 ms on [20, 2000, 100]: in-place bfloat16 products are the slowest form) and 1.4x
    faster out of place (0.77 against 1.06 ms)."""
    if slope.is_floating_point():
        return x.mul_(slope) if out is None else torch.mul(x, slope, out=out)
    bits = slope.dtype
    if x.element_size() != slope.element_size():
        raise TypeError(f"a ReLU mask of {bits} gates tensors of its width, got {x.dtype}: cast the point "
                        f"(_Point.cast) to the products' precision first")
    if out is None:
        x.view(bits).bitwise_and_(slope)
        return x
    torch.bitwise_and(x.view(bits), slope, out=out.view(bits))
    return out


def _stack_rows(top: Tensor, bottom: Tensor) -> Tensor:
    """``[M, p, q]`` and ``[M, r, q]`` -> ``[M, p + r, q]``, one tensor expanded over the tasks when both are."""
    if _shared(top) and _shared(bottom):
        return torch.cat([top[0], bottom[0]]).unsqueeze(0).expand(top.shape[0], -1, -1)
    return torch.cat([top.expand(bottom.shape[0], -1, -1) if _shared(top) else top,
                      bottom.expand(top.shape[0], -1, -1) if _shared(bottom) else bottom], dim=1)


def _mm_add_(acc: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``acc += a @ b`` in place for ``acc [M, K, q]`` (contiguous), ``a [M, K, p]``, ``b [M, p, q]``:
    one GEMM over all tasks' rows when ``b`` is shared by the tasks, a batched GEMM otherwise
    (every caller passes packed operands; see :class:`_Point`)."""
    M, K, p = a.shape
    if _shared(b):  # (out= rather than addmm_: FlopCounterMode counts the out= form, not the in-place one)
        b0 = b[0] if b[0].stride(0) == 1 else b[0].t().contiguous().t()
        flat = acc.view(M * K, -1)
        torch.addmm(flat, a.reshape(M * K, p), b0, out=flat)
    else:
        torch.baddbmm(acc, a, b, out=acc)
    return acc


class _Point:
    """What a product needs at one point (per-task parameters and episodes), computed once: the
    layers' weights ``[M, out, in]`` and biases ``[M, out]``, every layer's input with a column of
    ones, ``[h_l | 1]`` (``[x | 1]`` for the first layer), the hidden activations' derivatives, and
    whatever the operator adds.

    The column of ones makes ``h dW^T + db`` one matrix product with ``[dW^T; db]``, and
    ``R(delta)^T [h | 1]`` the weight's and the bias's products at once: no bias is broadcast and
    no sum taken over the rows. Each tensor a batched product reads is packed (its own buffer,
    not a slice of a wider one), so that the products run as one batched GEMM over the tasks in
    any precision: in bfloat16 PyTorch's CPU ``bmm`` copies every padded operand, and a loop of
    one ``mm`` per task, the alternative, is slow at small row counts. ReLU's derivatives are bit
    masks (:func:`_gate`); the gradient pass, when there is one, is ``deltas``."""

    def __init__(self, policy: GaussianMLPPolicy, params: Params, x: Tensor):
        self.weights = [params[n] for n in _names(policy)[0]]
        self.biases = [params[n] for n in _names(policy)[1]]
        self.tanh = policy.activation == "tanh"
        raw = params["log_std"]
        self.free = (raw >= policy.min_log_std).to(raw.dtype)  # 0 where the clamp holds log_std
        self.log_std = raw.clamp(min=policy.min_log_std)
        self.widths = [x.shape[-1]] + [W.shape[1] for W in self.weights[:-1]]  # each layer's input width
        self.h1s, self.slopes = [], []
        M, K = x.shape[:2]
        h = x
        for i, (W, b) in enumerate(zip(self.weights, self.biases)):
            width = self.widths[i]
            h1 = x.new_empty(M, K, width + 1)
            h1[..., width] = 1
            if i == 0:
                h1[..., :width] = x
            elif self.tanh:
                torch.tanh(h, out=h1[..., :width])
                self.slopes.append(1 - h1[..., :width] ** 2)
            else:
                positive = h > 0
                torch.mul(h, positive, out=h1[..., :width])
                self.slopes.append(_gate(positive, x.dtype))
            self.h1s.append(h1)
            h = _mm(h1[..., :width], W.transpose(1, 2), bias=b)  # the next layer's pre-activation
        self.mean = h
        self.deltas: list[Tensor] | None = None  # the gradient pass: gradients at every layer's output
        self.extra: dict[str, object] = {}

    def h(self, i: int) -> Tensor:
        return self.h1s[i][..., :self.widths[i]]

    def cast(self, dtype: torch.dtype | None) -> None:
        """Hold every tensor of the point in ``dtype`` (one conversion per meta-step; a tensor
        expanded over the tasks stays one tensor, expanded)."""
        if dtype is None or dtype == self.log_std.dtype:
            return

        def to(t):
            if t is None:
                return None
            if isinstance(t, list):
                return [to(x) for x in t]
            to_dtype = dtype if t.is_floating_point() else _mask_dtype(dtype)  # ReLU's masks: the new width
            if _shared(t):
                return t[0].to(to_dtype).unsqueeze(0).expand_as(t)
            return t.to(to_dtype)

        for name in ("weights", "biases", "free", "log_std", "mean", "h1s", "slopes", "deltas"):
            setattr(self, name, to(getattr(self, name)))
        self.extra = {k: to(v) for k, v in self.extra.items()}

    def tasks(self, index: slice) -> _Point:
        """The same point restricted to the tasks ``index`` (views, no copies)."""
        out = object.__new__(_Point)
        take = lambda t: None if t is None else t[index]  # noqa: E731
        out.weights, out.biases = [take(t) for t in self.weights], [take(t) for t in self.biases]
        out.tanh, out.free, out.log_std, out.mean = self.tanh, take(self.free), take(self.log_std), take(self.mean)
        out.widths, out.h1s, out.slopes = self.widths, [take(t) for t in self.h1s], [take(t) for t in self.slopes]
        out.deltas = None if self.deltas is None else [take(t) for t in self.deltas]
        out.extra = {k: [take(t) for t in v] if isinstance(v, list) else take(v) for k, v in self.extra.items()}
        return out


def _names(policy: GaussianMLPPolicy) -> tuple[list[str], list[str]]:
    n = len(policy.mean.layers) // 2 + 1
    return [f"mean.layers.{2 * i}.weight" for i in range(n)], [f"mean.layers.{2 * i}.bias" for i in range(n)]


def _tangent(p: _Point, u: Params, weight_names: list[str], bias_names: list[str]
             ) -> tuple[list[Tensor], list[Tensor | None], Tensor]:
    """Forward tangents along ``u``: ``dz_l`` of the hidden layers (kept for tanh only: ReLU's
    products do not read them), ``dh_l`` of every layer's input (``None`` for the first) and the
    output's ``d mu``."""
    dzs, dhs = [], [None]
    for i in range(len(p.weights)):
        dWb = _stack_rows(u[weight_names[i]].transpose(1, 2), u[bias_names[i]].unsqueeze(1))  # [dW^T; db]
        if i > 0:
            if p.tanh:
                dzs.append(dz)
                dhs.append(_gated(dz, p.slopes[i - 1], out=torch.empty_like(dz)))
            else:
                dhs.append(_gated(dz, p.slopes[i - 1]))  # dz is not needed again: in place
        dz = _mm(p.h1s[i], dWb)  # h dW^T + db
        if i > 0:
            _mm_add_(dz, dhs[i], p.weights[i].transpose(1, 2))  # + dh W^T
    return dzs, dhs, dz


def _backward(p: _Point, r_out: Tensor, weight_names: list[str], bias_names: list[str],
              u: Params | None = None, dzs: list[Tensor] | None = None, dhs: list[Tensor | None] | None = None
              ) -> Params:
    """Backward pass of ``R(delta)`` from the output's ``r_out [M, K, A]``: the gradient of
    ``sum_i r_out_i . mu_i`` when the point holds no gradient pass, else the R-operator of that
    gradient pass (with the direction ``u`` and its tangents ``dzs`` and ``dhs`` from
    :func:`_tangent`; for tanh ``extra["curvatures"][l]`` is ``tanh''(z_l) e_l``, the hidden
    layer's second derivative times the gradient at its output)."""
    grad_pass = p.deltas is not None
    curvatures = p.extra.get("curvatures")
    out: Params = {}
    rd = r_out.contiguous()
    for i in range(len(p.weights) - 1, -1, -1):
        width = p.widths[i]
        gWb = _outer(rd, p.h1s[i])  # [R(delta)^T h | R(delta)^T 1]
        gW = gWb[..., :width]
        if grad_pass and i > 0:
            gW = _outer(p.deltas[i], dhs[i], gW.contiguous())
        out[weight_names[i]], out[bias_names[i]] = gW, gWb[..., width]
        if i == 0:
            break
        re = _mm(rd, p.weights[i])
        if grad_pass:  # R(e) = R(delta) W + delta dW
            _mm_add_(re, p.deltas[i], u[weight_names[i]])
        rd = _gated(re, p.slopes[i - 1])
        if grad_pass and curvatures is not None:
            rd.addcmul_(curvatures[i - 1], dzs[i - 1])
    return out


class GaussianMLPCurvature:
    """Closed-form Hessian-vector products of the inner loss and of the KL for a
    :class:`~rl_maml.rl.policy.GaussianMLPPolicy` (ReLU or tanh), batched over tasks.

    The products returned take ``(u, tasks)``: the direction for the tasks ``tasks`` (a slice of
    the meta-batch, all by default) and give those tasks' products. A caller that runs a whole
    chain of products a few tasks at a time keeps the intermediate tensors in the CPU's caches.

    Args:
        policy: the policy (its structure; the parameters come with each call).
        dtype: the precision of the products (their inputs, tensors and results); ``None``: the
            parameters'. Everything a product reuses is computed in the parameters' precision
            first and converted once, so only the products' own arithmetic is in ``dtype``
            (``torch.bfloat16``: about 3 significant digits; on a CPU with AMX a plain ``bmm``
            ran 3.7x faster than in float32; see ``TRPOSettings.fvp_dtype``).
    """

    def __init__(self, policy: GaussianMLPPolicy, dtype: torch.dtype | None = None):
        if not supports(policy, [n for n, _ in policy.named_parameters()]):
            raise ValueError("GaussianMLPCurvature needs a GaussianMLPPolicy with a relu or tanh MLP mean")
        self.policy = policy
        self.dtype = dtype
        self.weight_names, self.bias_names = _names(policy)

    def _in_precision(self, u: Params) -> Params:
        return u if self.dtype is None else {n: t.to(self.dtype) for n, t in u.items()}

    def inner_loss_hvp(self, params: Params, episodes: Episodes, objective: str = "reinforce") -> HessianProduct:
        """``(u, tasks) -> H u`` with ``H`` the per-task Hessian of the inner loss
        (:func:`~rl_maml.rl.adaptation.policy_gradient_loss`) at ``params [M, ...]``."""
        with torch.no_grad():
            point = _Point(self.policy, params, episodes.per_task(episodes.obs))
            mask = episodes.per_task(episodes.mask)
            c = -(mask * episodes.per_task(episodes.advantages)) / mask.sum(1, keepdim=True).clamp(min=1)
            # loss = sum_i c_i logp_i; logp's derivatives at the output: d/dmu = r, d/dls = z^2 - 1
            inv_var = torch.exp(-2 * point.log_std).unsqueeze(1)  # [M, 1, A]
            diff = episodes.per_task(episodes.actions) - point.mean
            r = diff * inv_var
            point.extra.update(c=c.unsqueeze(-1), inv_var=inv_var, r=r, z2=diff * r)
            # The gradient pass of the loss: its gradient at every layer's output.
            deltas = [None] * len(point.weights)
            d = point.extra["c"] * r
            for i in range(len(point.weights) - 1, -1, -1):
                deltas[i] = d
                if i > 0:
                    d = _gated(_mm(d, point.weights[i]), point.slopes[i - 1])
            point.deltas = deltas
            if point.tanh:  # tanh'' e = -2 h tanh' e = -2 h delta (ReLU'' = 0)
                point.extra["curvatures"] = [-2 * point.h(i + 1) * deltas[i] for i in range(len(point.slopes))]
            point.cast(self.dtype)
        lvc = objective == "lvc"

        def hvp(u: Params, tasks: slice = slice(None)) -> Params:
            p = point if tasks == slice(None) else point.tasks(tasks)
            u = self._in_precision(u)
            c, inv_var, r, z2 = (p.extra[k] for k in ("c", "inv_var", "r", "z2"))
            with torch.no_grad():
                dzs, dhs, dmu = _tangent(p, u, self.weight_names, self.bias_names)
                ds = (u["log_std"] * p.free).unsqueeze(1)  # [M, 1, A]
                # logp's second derivatives: d2/dmu2 = -1/sigma^2, d2/dmu dls = -2 r, d2/dls2 = -2 z^2;
                # LVC adds the outer product of logp's gradient with itself.
                r_mu = -dmu * inv_var - 2 * r * ds
                r_ls = -2 * r * dmu - 2 * z2 * ds
                if lvc:
                    q = (r * dmu).sum(-1, keepdim=True) + ((z2 - 1) * ds).sum(-1, keepdim=True)
                    r_mu = r_mu + q * r
                    r_ls = r_ls + q * (z2 - 1)
                out = _backward(p, c * r_mu, self.weight_names, self.bias_names, u, dzs, dhs)
                out["log_std"] = (c * r_ls).sum(1) * p.free
            return out

        return hvp

    def kl_hvp(self, params: Params, episodes: Episodes) -> HessianProduct:
        """``(u, tasks) -> H u`` with ``H`` the Hessian, at ``params [M, ...]``, of the mean over tasks
        of each task's mean ``KL(pi_params || pi)`` over its steps (zero gradient there: Gauss-Newton)."""
        with torch.no_grad():
            point = _Point(self.policy, params, episodes.per_task(episodes.obs))
            mask = episodes.per_task(episodes.mask)
            w = (mask / mask.sum(1, keepdim=True).clamp(min=1) / mask.shape[0]).unsqueeze(-1)  # [M, K, 1]
            point.extra.update(scale=w * torch.exp(-2 * point.log_std).unsqueeze(1),  # w_i / sigma^2
                               ls_weight=2 * w.sum(1) * point.free)  # [M, A]
            point.cast(self.dtype)

        def hvp(u: Params, tasks: slice = slice(None)) -> Params:
            p = point if tasks == slice(None) else point.tasks(tasks)
            u = self._in_precision(u)
            with torch.no_grad():
                _, _, dmu = _tangent(p, u, self.weight_names, self.bias_names)
                out = _backward(p, p.extra["scale"] * dmu, self.weight_names, self.bias_names)
                out["log_std"] = p.extra["ls_weight"] * u["log_std"] * p.free
            return out

        return hvp
