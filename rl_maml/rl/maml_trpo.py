"""MAML with a TRPO meta-step (Finn, Abbeel and Levine 2017, arXiv 1703.03400, section 5.3).

Inner loop: REINFORCE on each task's training episodes (advantages from the linear baseline and
GAE), through the engine's :class:`~rl_maml.inner.InnerLoop`, for all M tasks at once. Outer
loop: TRPO on the validation episodes of the adapted policies, differentiating through the
adaptation (second order unless ``first_order``): surrogate, mean KL, conjugate gradient with
Fisher-vector products, backtracking line search.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from rl_maml.aliases import Params
from rl_maml.functional import TaskBatchedModel, expand_params, params_of
from rl_maml.inner import InnerLoop
from rl_maml.rl.adaptation import check_per_task, masked_task_mean, policy_gradient_loss
from rl_maml.rl.curvature import GaussianMLPCurvature
from rl_maml.rl.curvature import supports as curvature_supports
from rl_maml.rl.episodes import Episodes
from rl_maml.rl.policy import GaussianMLPPolicy, kl_divergence, log_prob
from rl_maml.rl.trpo import conjugate_gradient, flat, line_search, set_flat_
from rl_maml.runtime import warn_if_bfloat16_is_emulated


@dataclass(frozen=True)
class TRPOSettings:
    """Hyperparameters of the TRPO meta-step (the ``trpo`` section of a meta-RL config)."""

    max_kl: float = 0.01
    """Largest mean KL divergence between the adapted policies before and after the step."""
    cg_iters: int = 10
    """Conjugate-gradient iterations for the natural-gradient direction."""
    cg_tolerance: float = 0.0
    """Also stop conjugate gradient once the residual is this small relative to the gradient
    (``|F x - g| <= cg_tolerance |g|``); 0 runs ``cg_iters`` iterations (rllab's rule)."""
    cg_warm_start: bool = False
    """Start conjugate gradient from the previous meta-step's direction instead of zero (one more
    Fisher-vector product for its residual; a guess worse than zero is dropped). The direction
    is part of the checkpoint, so a resumed run continues identically. On 2D navigation it
    started worse than zero and hurt learning (docs/metarl.md): an option to study, not a speed-up."""
    cg_damping: float = 1e-5
    """Added to the Fisher matrix's diagonal."""
    ls_max_steps: int = 15
    """Backtracking line-search candidates before giving up (parameters unchanged)."""
    ls_backtrack_ratio: float = 0.8
    """Each candidate step is this fraction of the previous one."""
    max_rejected_steps: int = 50
    """Stop with an error after this many meta-steps in a row whose line search rejected every
    candidate (the policy no longer changes; a warning comes after 5); 0 never stops."""
    fvp_subsample: float = 1.0
    """Fraction of each task's episodes used for the Fisher-vector products (the gradient and the
    line search use all); 1.0 is exact, smaller values trade curvature accuracy for speed."""
    fvp: str = "auto"
    """How the Hessian-vector products inside each Fisher-vector product are computed.
    ``closed_form``: written out layer by layer for the Gaussian MLP policy
    (:mod:`rl_maml.rl.curvature`; exact, about 1.8x faster than double backward on
    HalfCheetahVel). ``autograd``: double backward,
    for any policy. ``auto``: ``closed_form`` where it applies, else ``autograd``.
    ``finite_difference``: what the MAML paper's code ran, not the exact curvature: the symmetric
    difference of the KL's gradient (through the adaptation) at ``theta +- eps v``, with ``eps =
    fd_eps / |theta|`` (rllab's TensorFlow ``ConjugateGradientOptimizer`` defaulted to
    ``FiniteDifferenceHvp(num_slices)``, whose first argument is the base eps: 1). At that eps the
    product is not linear in ``v``; ``x^T A x`` for the step size is then one more product at the
    direction, as the reference computed it. Any policy, with the REINFORCE inner loss (the
    reference's); two meta-gradient passes per product. ``python -m rl_maml.experiments.fvp_check
    RUN`` sets it beside the exact product on one batch."""
    fd_eps: float = 1.0
    """``trpo.fvp=finite_difference`` only: the perturbation is ``fd_eps / |theta|`` along ``v``
    (1.0: the reference's)."""
    fvp_dtype: str = "same"
    """The precision of the closed-form Fisher-vector products. ``same``: the policy's (float32).
    ``bfloat16``: the products' inputs, intermediate tensors and matrix products in bfloat16
    (float32 accumulation inside each matrix product; the direction, the gradient, conjugate
    gradient's own arithmetic and the line search stay in the policy's precision). About three
    significant digits per product. Measured 1.7x faster per product on a CPU with AMX (native
    bfloat16 matrix units); on a CPU without them (AVX2 only) a bfloat16 ``bmm`` of the policy's
    shapes ran 15x slower than in float32, and the meta-step warns once
    (:func:`rl_maml.runtime.warn_if_bfloat16_is_emulated`): use ``same`` there. May change on
    ``--resume``. Conjugate gradient's
    later iterations reach the Fisher's near-null directions, where the rounding grows: after
    ten iterations the direction differed from float32's by 0.15% on HalfCheetahVel and by 15%
    on 2D navigation (whose policy sees a 2-dimensional observation); docs/metarl.md has
    learning curves. Needs ``fvp`` ``closed_form`` or ``auto`` with a Gaussian MLP policy."""
    fisher_order: str = "inner"
    """The Jacobian of the adaptation inside the Fisher-vector products, apart from the
    meta-gradient's. ``inner``: the meta-gradient's (second order unless ``inner.first_order``).
    ``first``: ``J = I``, the Fisher of the adapted policies in their own parameters (first-order
    MAML's). ``second``: through the inner steps (``J^T F' J``) even with ``inner.first_order``.
    ``first`` with a second-order meta-gradient, or ``second`` with a first-order one, separates
    the two halves of first-order MAML (docs/locomotion.md, HalfCheetahDir). The line search
    measures the KL of the adapted policies either way."""
    surrogate_steps: str = "final"
    """Which adapted policies the meta-step scores. ``final``: the policy after the last inner step,
    on the validation episodes (MAML). ``every``: the mean over inner steps 1..S of each adapted
    policy's surrogate and KL, each on the episodes sampled from that policy (the next step's
    training episodes, the validation episodes for the last); no extra sampling. With several
    inner steps it trains every evaluation step, not just the last."""
    inner_objective: str = "reinforce"
    """The inner loss the meta-step differentiates through. ``reinforce``: ``-mean(log pi(a|s) A)``
    (the MAML paper's). ``lvc``: ``-mean(pi(a|s) / stop_grad(pi(a|s)) A)``, the low-variance
    curvature objective of Rothfuss et al. 2019 (ProMP, arXiv 1810.06784). Both give the same inner
    gradient, so the adapted policies are identical; ``lvc``'s Hessian also holds the
    score-function term ``-mean(A grad log pi grad log pi^T)``, the part of the true
    policy-gradient Hessian that ``reinforce`` drops, through which the meta-gradient credits the
    initial policy for the episodes it samples before adaptation."""

    def __post_init__(self) -> None:
        if self.max_rejected_steps < 0:
            raise ValueError(f"max_rejected_steps must be >= 0 (0: never stop), got {self.max_rejected_steps}")
        if not 0 <= self.cg_tolerance < 1:
            raise ValueError(f"cg_tolerance must be in [0, 1) (0: run cg_iters iterations), got {self.cg_tolerance}")
        if not (self.max_kl > 0 and self.cg_iters >= 1 and self.cg_damping >= 0 and self.ls_max_steps >= 1
                and 0 < self.ls_backtrack_ratio < 1 and 0 < self.fvp_subsample <= 1):
            raise ValueError("need max_kl > 0, cg_iters >= 1, cg_damping >= 0, ls_max_steps >= 1, "
                             f"0 < ls_backtrack_ratio < 1 and 0 < fvp_subsample <= 1, got {self}")
        if self.surrogate_steps not in ("final", "every"):
            raise ValueError(f"surrogate_steps must be 'final' or 'every', got {self.surrogate_steps!r}")
        if self.fvp not in ("auto", "closed_form", "autograd", "finite_difference"):
            raise ValueError(f"fvp must be 'auto', 'closed_form', 'autograd' or 'finite_difference', got {self.fvp!r}")
        if self.fvp_dtype not in ("same", "bfloat16"):
            raise ValueError(f"fvp_dtype must be 'same' or 'bfloat16', got {self.fvp_dtype!r}")
        if self.fvp_dtype != "same" and self.fvp in ("autograd", "finite_difference"):
            raise ValueError(f"fvp_dtype=bfloat16 needs the closed-form products: set trpo.fvp=auto "
                             f"(or closed_form), or trpo.fvp_dtype=same to keep fvp={self.fvp}")
        if not self.fd_eps > 0:
            raise ValueError(f"fd_eps must be > 0 (the reference's: 1.0), got {self.fd_eps}")
        if self.fvp == "finite_difference" and self.inner_objective != "reinforce":
            raise ValueError("fvp=finite_difference differentiates the adapted parameters themselves, whose Jacobian "
                             "the lvc objective's Hessian does not give (the product would not be symmetric); use "
                             "inner_objective=reinforce (the reference's) or the exact products (fvp=auto)")
        if self.fvp == "finite_difference" and self.fvp_subsample < 1:
            raise ValueError("fvp=finite_difference differentiates the KL on all episodes; set trpo.fvp_subsample=1.0 "
                             "or use the exact products (fvp=auto)")
        if self.fisher_order not in ("inner", "first", "second"):
            raise ValueError(f"fisher_order must be 'inner', 'first' or 'second', got {self.fisher_order!r}")
        if self.inner_objective not in ("reinforce", "lvc"):
            raise ValueError(f"inner_objective must be 'reinforce' or 'lvc', got {self.inner_objective!r}")


_masked_task_mean = masked_task_mean


class MAMLTRPO:
    """The meta-learner: inner REINFORCE adaptation and the TRPO meta-step.

    Args:
        policy: the policy whose initial parameters are meta-learned (updated in place).
        inner: the inner loop (step size, number of steps, first order, mask).
        trpo: meta-step settings.
    """

    def __init__(self, policy: GaussianMLPPolicy, inner: InnerLoop, trpo: TRPOSettings):
        self.policy = policy
        self.batched = TaskBatchedModel(policy)
        self.inner = inner
        self.trpo = trpo
        self.shard = None  # a TaskShard when the meta-batch is split across processes (rl_maml.distributed)
        self.warm_direction: Tensor | None = None  # the last natural-gradient direction (trpo.cg_warm_start)
        if trpo.fvp_dtype != "same" and not self.closed_form_curvature(list(self.params())):
            raise ValueError(self._no_low_precision())

    def fisher_second_order(self) -> bool:
        """Whether the Fisher-vector products run through the inner steps (``TRPOSettings.fisher_order``)."""
        if self.trpo.fisher_order == "inner":
            return not self.inner.first_order
        return self.trpo.fisher_order == "second"

    def _no_low_precision(self) -> str:
        return (f"trpo.fvp_dtype={self.trpo.fvp_dtype} needs the closed-form products, which do not cover this "
                f"policy ({type(self.policy).__name__}); set trpo.fvp_dtype=same")

    def _mean(self, local: Tensor) -> Tensor:
        """The mean over the whole meta-batch of a per-rank mean over this rank's tasks."""
        return local if self.shard is None else self.shard.mean(local)

    def params(self) -> Params:
        return params_of(self.policy)

    # -- inner loop ---------------------------------------------------------------------------
    def inner_loss(self, params: Params, episodes: Episodes) -> Tensor:
        """Policy-gradient loss per task ``[M]`` (``TRPOSettings.inner_objective``; see
        :func:`~rl_maml.rl.adaptation.policy_gradient_loss`)."""
        return policy_gradient_loss(self.batched, params, episodes, self.trpo.inner_objective)

    def adapt_step(self, params: Params, episodes: Episodes, step: int, inner: InnerLoop | None = None,
                   create_graph: bool | None = None) -> Params:
        """One inner step from per-task ``params`` ``[M, ...]`` on ``episodes``."""
        inner = inner or self.inner
        check_per_task(self.batched, params, episodes.num_tasks)
        return inner.step(params, self.inner_loss(params, episodes), step, create_graph=create_graph)

    def initial_params(self, num_tasks: int) -> Params:
        """The current (shared) parameters expanded to ``[M, ...]``, a view that carries the gradient."""
        return expand_params(self.params(), num_tasks)

    def adapt(self, train: list[Episodes], create_graph: bool | None = None) -> Params:
        """Adapted parameters ``[M, ...]`` after one step per list entry, from the current policy."""
        return self.adapt_all(train, create_graph)[-1]

    def adapt_all(self, train: list[Episodes], create_graph: bool | None = None,
                  num_tasks: int | None = None) -> list[Params]:
        """The per-task parameters after 0, 1, ..., len(train) steps on the given episodes (the
        first entry is the current one, expanded); ``num_tasks`` is needed only without episodes."""
        if num_tasks is None:
            if not train:
                raise ValueError("adapt_all without episodes needs num_tasks")
            num_tasks = train[0].num_tasks
        states = [self.initial_params(num_tasks)]
        for s, episodes in enumerate(train):
            states.append(self.adapt_step(states[-1], episodes, s, create_graph=create_graph))
        return states

    def scored_steps(self, num_steps: int) -> list[int]:
        """Step counts whose adapted policies the meta-step scores (see ``TRPOSettings.surrogate_steps``)."""
        if self.trpo.surrogate_steps == "every" and num_steps > 0:
            return list(range(1, num_steps + 1))
        return [num_steps]

    @staticmethod
    def scoring_episodes(train: list[Episodes], valid: Episodes, k: int) -> Episodes:
        """The episodes sampled from the policy after ``k`` steps: ``train[k]``, or ``valid`` after the last."""
        return train[k] if k < len(train) else valid

    def meta_objective(self, states: list[Params], train: list[Episodes], valid: Episodes,
                       old: list[tuple[Tensor, Tensor]] | None = None
                       ) -> tuple[Tensor, Tensor, list[tuple[Tensor, Tensor]]]:
        """Surrogate and KL averaged over the scored steps (``states`` from :meth:`adapt_all`)."""
        losses, kls, olds = [], [], []
        for i, k in enumerate(self.scored_steps(len(train))):
            loss, kl, o = self.surrogate(states[k], self.scoring_episodes(train, valid, k),
                                         None if old is None else old[i])
            losses.append(loss)
            kls.append(kl)
            olds.append(o)
        return torch.stack(losses).mean(), torch.stack(kls).mean(), olds

    # -- outer loop ---------------------------------------------------------------------------
    def surrogate(self, adapted: Params, valid: Episodes, old: tuple[Tensor, Tensor] | None = None
                  ) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
        """TRPO surrogate loss and mean KL over tasks, on the validation episodes.

        Args:
            adapted: the adapted parameters ``[M, ...]``.
            valid: validation episodes (with advantages).
            old: ``(mean, log_std)`` of the sampling policy; defaults to the detached current one.

        Returns:
            ``(loss, kl, (mean, log_std))``: scalar surrogate ``-E[ratio * A]`` and scalar mean
            ``KL(old || new)``, both averaged over tasks.
        """
        mean, log_std = self.batched(adapted, valid.per_task(valid.obs))
        if old is None:
            old = (mean.detach(), log_std.detach())
        actions, mask = valid.per_task(valid.actions), valid.per_task(valid.mask)
        ratio = torch.exp(log_prob(mean, log_std, actions) - log_prob(*old, actions))
        loss = -_masked_task_mean(ratio * valid.per_task(valid.advantages), mask).mean()
        kl = _masked_task_mean(kl_divergence(*old, mean, log_std), mask).mean()
        return loss, kl, old

    def fisher_vector_product(self, train: list[Episodes], valid: Episodes, damping: float,
                              states: list[Params] | None = None) -> Callable[[Tensor], Tensor]:
        """``v -> (F + damping I) v`` for the Fisher of the adapted policies w.r.t. the initial parameters.

        At the current parameters the KL's gradient w.r.t. the adapted parameters is zero, so the
        Hessian of the KL through the adaptation is exactly ``J^T F' J``: ``F'`` the Fisher of the
        adapted policies, ``J = prod_s (I - alpha_s H_s)`` the Jacobian of the inner steps
        (``H_s`` the per-task Hessian of step s's inner loss). Each product then costs two
        Hessian-vector products per inner step and one through the KL, all second order, instead
        of autograd's third-order pass through the whole graph. First-order MAML uses ``J = I``
        (``TRPOSettings.fisher_order`` sets it apart from the meta-gradient's order).
        With ``surrogate_steps="every"`` the KL is the mean over the scored steps k, whose Hessian
        is the mean of ``J_k^T F'_k J_k``: one more KL product per extra step, the Jacobian
        products shared. Equal to :func:`~rl_maml.rl.trpo.fisher_vector_product` on the full
        graph (tested).

        ``states`` are the parameters after 0..S steps at which the curvature is taken (default:
        adapted on ``train``). The meta-step passes the ones adapted on all episodes and a
        subsample of the episodes (``train`` and ``valid`` alike) as ``train``/``valid``: the
        product is then the subsample's curvature at the true adapted parameters, still positive
        semi-definite. (Adapting again on a subsample instead would move the point: with few
        episodes and several steps, an adapted log-std can overflow.)

        The Hessian-vector products inside are closed-form for the Gaussian MLP policy
        (:mod:`rl_maml.rl.curvature`, ``TRPOSettings.fvp``), run for ``CHUNK_ROWS`` steps' worth of
        tasks at a time on the CPU; double backward through kept graphs otherwise.
        """
        names = list(self.params())
        shared = self.params()
        M = valid.num_tasks
        scored = self.scored_steps(len(train))
        if states is None:
            states = self.adapt_all(train, create_graph=False, num_tasks=M)
        if len(states) != len(train) + 1:
            raise ValueError(f"states must hold the parameters after 0..{len(train)} steps, got {len(states)} entries")
        for st in states:
            check_per_task(self.batched, st, M, "states")
        second_order = self.fisher_second_order()
        dtype = None  # the products' precision (trpo.fvp_dtype), None: the parameters'
        if self.closed_form_curvature(names):
            # Closed-form products (rl_maml.rl.curvature); views of the states keep their layout
            # (the initial parameters stay one tensor expanded over the tasks).
            if self.trpo.fvp_dtype == "bfloat16":
                dtype = torch.bfloat16
            curvature = GaussianMLPCurvature(self.policy, dtype)
            states = [{n: v.detach() for n, v in st.items()} for st in states]
            inner_hvps = [curvature.inner_loss_hvp(states[s], episodes, self.trpo.inner_objective)
                          if second_order else None for s, episodes in enumerate(train)]
            kl_hvps = {k: curvature.kl_hvp(states[k], self.scoring_episodes(train, valid, k)) for k in scored}
            # The chain of products for a few tasks at a time in full precision (tasks are
            # independent; see CHUNK_ROWS), the whole batch at once in bfloat16 (measured faster
            # than any chunking).
            rows = max([e.per_task(e.mask).shape[1] for e in [*train, valid]])
            chunked = torch.device(valid.obs.device).type == "cpu" and dtype is None
            size = max(1, self.CHUNK_ROWS // rows) if chunked else M
            task_chunks = [slice(i, min(i + size, M)) for i in range(0, M, size)]
        else:
            if self.trpo.fvp_dtype != "same":
                raise ValueError(self._no_low_precision())
            inner_hvps, kl_hvps = self._autograd_curvature(train, valid, states, names, scored, second_order)
            task_chunks = [slice(None)]
        adapted_names = [set(self.inner.adapted_names(s, states[s])) for s in range(len(train))]
        shapes = [shared[n].shape for n in names]

        def chain(u: Params, tasks: slice) -> Params:
            """``J^T F' J u`` for the tasks ``tasks`` (``u`` holds their rows)."""
            pushed = [u]  # J_{1..k} u for k = 0..S
            for s in range(len(train)):  # u <- J_s u = u - alpha_s (H_s u) on the adapted tensors
                if second_order:
                    hu = inner_hvps[s](u, tasks)
                    u = {n: u[n] - self.inner.step_size(s, n) * hu[n] if n in adapted_names[s] else u[n]
                         for n in names}
                pushed.append(u)
            w = {n: torch.zeros_like(pushed[0][n]) for n in names}
            for k in range(len(train), -1, -1):
                if k in kl_hvps:
                    w = {n: w[n] + f for n, f in kl_hvps[k](pushed[k], tasks).items()}
                if k > 0 and second_order:  # w <- J_k^T w = w - H_k (alpha_k w on the adapted tensors)
                    s = k - 1
                    z = {n: self.inner.step_size(s, n) * w[n] if n in adapted_names[s] else torch.zeros_like(w[n])
                         for n in names}
                    hz = inner_hvps[s](z, tasks)
                    w = {n: w[n] - hz[n] for n in names}
            return w

        def fvp(v: Tensor) -> Tensor:
            pieces = torch.split(v, [math.prod(sh) for sh in shapes])
            total = None
            with torch.no_grad():
                for tasks in task_chunks:
                    count = len(range(M)[tasks])
                    w = chain({n: c.to(dtype or c.dtype).view(sh).unsqueeze(0).expand(count, *sh)
                               for n, c, sh in zip(names, pieces, shapes)}, tasks)
                    part = flat([w[n].to(v.dtype).sum(0) for n in names])
                    total = part if total is None else total + part
            return total / len(scored) + damping * v

        return fvp

    def finite_difference_eps(self) -> float:
        """The perturbation of :meth:`finite_difference_fvp` at the current parameters:
        ``trpo.fd_eps / (|theta| + 1e-8)``, as the reference's ``FiniteDifferenceHvp``."""
        return self.trpo.fd_eps / (flat([p.detach() for p in self.policy.parameters()]).norm().item() + 1e-8)

    def finite_difference_fvp(self, train: list[Episodes], valid: Episodes, damping: float,
                              old: list[tuple[Tensor, Tensor]], states: list[Params] | None = None
                              ) -> Callable[[Tensor], Tensor]:
        """``v -> (g(theta + eps v) - g(theta - eps v)) / (2 eps) + damping v``, ``g`` the gradient of
        the meta-step's KL (adapted again at each point, against the distributions ``old`` of the
        adapted policies before the step) and ``eps = trpo.fd_eps / |theta|``: the MAML paper's
        code's product (``TRPOSettings.fvp``). The parameters are restored after each product.

        With a first-order Fisher (``TRPOSettings.fisher_order``) the inner steps' updates are
        those at ``theta``, held fixed, so that the difference is ``F' v`` (``J = I``); adapting
        again at ``theta +- eps v`` without the graph would give ``F' J v``, not symmetric.
        ``states``: the parameters after 0..S steps at ``theta`` if already computed (the
        meta-step's), else adapted here."""
        params = list(self.policy.parameters())
        theta = flat([p.detach() for p in params]).clone()
        eps = self.finite_difference_eps()
        M = valid.num_tasks
        second_order = self.fisher_second_order()
        if not second_order:  # each step's update at theta: the adapted parameters are point + update
            if states is None:
                with torch.enable_grad():
                    states = self.adapt_all(train, create_graph=False, num_tasks=M)
            updates = [{n: (st[n] - states[0][n]).detach() for n in st} for st in states]

        def kl_grad(point: Tensor) -> Tensor:
            set_flat_(params, point)
            with torch.enable_grad():
                if second_order:
                    states = self.adapt_all(train, create_graph=True, num_tasks=M)
                else:
                    start = self.initial_params(M)
                    states = [{n: start[n] + u[n] for n in u} for u in updates]
                _, kl, _ = self.meta_objective(states, train, valid, old)
                grads = torch.autograd.grad(kl, params, allow_unused=True)
            return flat([torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)])

        def fvp(v: Tensor) -> Tensor:
            try:
                plus = kl_grad(theta + eps * v)
                minus = kl_grad(theta - eps * v)
            finally:
                set_flat_(params, theta)
            return (plus - minus) / (2 * eps) + damping * v

        return fvp

    CHUNK_ROWS = 16384
    """Rows (steps) per chunk of tasks in the closed-form Fisher-vector products on the CPU, in
    full precision, so that a chunk's intermediate tensors can stay in the CPU's caches. With the
    products' packed operands it no longer matters on the batches measured: one product, quiet
    2-core CPU, HalfCheetahVel (40 tasks x 2,000 rows) 214.7-218.0 ms at 8,192 rows to the whole
    batch; 2D navigation (20 x 2,000) 103.3-107.0 ms. In bfloat16 the whole batch at once was
    fastest (HalfCheetahVel 116 ms against 118 at 16,384 and 129 at 8,192; navigation 58 against
    64 and 67), so those products are not chunked; with ReLU's derivatives as bit masks still
    (navigation 39 ms whole, 44 at 16,000 rows, 49 at 8,000, 94 at 2,000; a quarter of the
    HalfCheetahVel episodes 20 ms against 25, 32 and 50)."""

    def closed_form_curvature(self, names: list[str]) -> bool:
        """Whether the Fisher-vector products use :mod:`rl_maml.rl.curvature` (``TRPOSettings.fvp``)."""
        if self.trpo.fvp in ("autograd", "finite_difference"):
            return False
        ok = curvature_supports(self.policy, names)
        if self.trpo.fvp == "closed_form" and not ok:
            raise ValueError("trpo.fvp=closed_form needs a GaussianMLPPolicy (relu or tanh) whose parameters are all "
                             "meta-trained; use trpo.fvp=auto or autograd for other policies")
        return ok

    def _autograd_curvature(self, train, valid, states, names, scored, second_order):
        """Hessian-vector products of the inner losses and the KLs by double backward (any policy)."""
        # Fresh leaves [M, ...] at the per-task parameters after 0..S steps.
        states = [{n: v.detach().clone().requires_grad_(True) for n, v in st.items()} for st in states]

        def product(leaves: Params, grads: tuple[Tensor, ...]) -> Callable[[Params], Params]:
            def hvp(u: Params, tasks: slice = slice(None)) -> Params:
                with torch.enable_grad():
                    dot = sum((g * u[n]).sum() for g, n in zip(grads, names))
                    return dict(zip(names, torch.autograd.grad(dot, [leaves[n] for n in names], retain_graph=True)))
            return hvp

        inner_hvps = []
        for s, episodes in enumerate(train):
            if not second_order:
                inner_hvps.append(None)
                continue
            leaf = states[s]
            g = torch.autograd.grad(self.inner_loss(leaf, episodes).sum(), [leaf[n] for n in names], create_graph=True)
            inner_hvps.append(product(leaf, g))
        kl_hvps = {}
        for k in scored:
            episodes = self.scoring_episodes(train, valid, k)
            mean, log_std = self.batched(states[k], episodes.per_task(episodes.obs))
            kl = _masked_task_mean(kl_divergence(mean.detach(), log_std.detach(), mean, log_std),
                                   episodes.per_task(episodes.mask)).mean()
            kl_hvps[k] = product(states[k], torch.autograd.grad(kl, [states[k][n] for n in names], create_graph=True))
        return inner_hvps, kl_hvps

    def meta_step(self, train: list[Episodes], valid: Episodes, adapted: list[Params] | None = None
                  ) -> dict[str, float]:
        """One TRPO step on the initial parameters; leaves them unchanged if no step is accepted.

        Args:
            train: training episodes of each inner step (with advantages).
            valid: validation episodes of the adapted policies (with advantages).
            adapted: the parameters after 0..S inner steps with their graph (:meth:`adapt_all`), if
                already computed.

        Raises:
            FloatingPointError: a non-finite loss, gradient or step (the parameters are unchanged).
        """
        params = list(self.policy.parameters())
        if self.trpo.fvp_dtype == "bfloat16":
            warn_if_bfloat16_is_emulated(params[0].device)
        if adapted is None:
            adapted = self.adapt_all(train, num_tasks=valid.num_tasks)
        if len(adapted) != len(train) + 1:
            raise ValueError(f"adapted must hold the parameters after 0..{len(train)} steps, got {len(adapted)} entries")
        loss, _, old = self.meta_objective(adapted, train, valid)
        # Step sizes that are tensors requiring grad (Alpha MAML's alpha) get d(surrogate)/d(alpha)
        # from the same backward pass, left in their .grad for the agent to use.
        online = [t for t in getattr(self.inner.step_size, "parameters", tuple)() if t.requires_grad]
        if online and self.shard is not None:
            raise NotImplementedError("learned inner step sizes (Alpha MAML) are not split across processes")
        all_grads = torch.autograd.grad(loss, params + online, allow_unused=True)
        grads = self._mean(flat(all_grads[:len(params)]))
        for t, g in zip(online, all_grads[len(params):]):
            t.grad = g
        loss = self._mean(loss.detach())
        _require_finite(loss=loss, gradient=grads)

        # Natural gradient direction: solve F x = g with conjugate gradient (curvature optionally
        # estimated on a subsample of the episodes).
        if self.trpo.fvp_subsample < 1.0:
            width = valid.obs.shape[2] if self.shard is None else self.shard.max_int(valid.obs.shape[2])
            count = max(1, math.ceil(self.trpo.fvp_subsample * width))
            train_fvp, valid_fvp = [e.first_episodes(count) for e in train], valid.first_episodes(count)
        else:
            train_fvp, valid_fvp = train, valid
        finite = self.trpo.fvp == "finite_difference"
        if finite:
            local_fvp = self.finite_difference_fvp(train, valid, self.trpo.cg_damping, old, states=adapted)
        else:
            local_fvp = self.fisher_vector_product(train_fvp, valid_fvp, self.trpo.cg_damping, states=adapted)
        fvp = local_fvp if self.shard is None else (lambda v: self._mean(local_fvp(v)))  # damping: weights sum to 1
        warm = self.warm_direction if self.trpo.cg_warm_start else None
        cg_info: dict = {}
        step_dir, residual = conjugate_gradient(fvp, grads, self.trpo.cg_iters, x0=warm, rel_tol=self.trpo.cg_tolerance,
                                                info=cg_info)
        cg_logs = {"charts/cg_products": float(cg_info["products"]), "charts/cg_residual": cg_info["residual"]}
        if finite:  # not linear in the direction: x^T A x from a product at x, as the reference did
            shs = 0.5 * (step_dir @ fvp(step_dir))
        else:
            shs = 0.5 * (step_dir @ (grads - residual))  # = x^T F x / 2, without another product
        _require_finite(step=step_dir, curvature=shs)
        if self.trpo.cg_warm_start:
            self.warm_direction = step_dir.detach().clone()
        if shs <= 0:
            return {"losses/surrogate_before": loss.item(), "charts/ls_accepted": 0.0, "charts/ls_steps": 0.0,
                    **cg_logs}
        full_step = step_dir / torch.sqrt(shs / self.trpo.max_kl)

        def evaluate() -> tuple[float, float]:
            states = self.adapt_all(train, create_graph=False, num_tasks=valid.num_tasks)
            new_loss, new_kl, _ = self.meta_objective(states, train, valid, old)
            if self.shard is not None:  # every rank sees the same numbers and takes the same decision
                return self.shard.mean_float(new_loss.item()), self.shard.mean_float(new_kl.item())
            return new_loss.item(), new_kl.item()

        accepted, steps, new_loss, new_kl = line_search(
            params, full_step, evaluate, loss.item(), self.trpo.max_kl, self.trpo.ls_max_steps,
            self.trpo.ls_backtrack_ratio)
        return {
            "losses/surrogate_before": loss.item(),
            "losses/surrogate_after": new_loss,
            "losses/kl_after": new_kl,
            "charts/ls_steps": float(steps),
            "charts/ls_accepted": float(accepted),
            "charts/step_norm": full_step.norm().item(),
            **cg_logs,
        }


def _require_finite(**values: Tensor) -> None:
    for name, v in values.items():
        if not torch.isfinite(v).all():
            raise FloatingPointError(
                f"TRPO meta-step: the {name} is not finite; the policy was not updated. Lower inner.inner_lr "
                "or trpo.max_kl (with trpo.fvp=finite_difference, trpo.fd_eps) and start a new run (the run is "
                "deterministic: resuming it repeats the same computation)."
            )
