"""Meta-batches split across processes with ``torch.distributed``.

Started by ``torchrun`` (``python -m torch.distributed.run --nproc_per_node K -m
rl_maml.experiments.cli train ...``), every process (rank) takes a contiguous share of each
meta-batch's tasks. The tasks and episodes do not depend on the number of ranks: every rank
samples the same meta-batch from ``(seed, iteration)`` and keeps its share; episode resets are
keyed by the task's global index; the action noise is drawn for the whole meta-batch and sliced,
and the samplers' loops end on all ranks together. Meta-RL then reduces, as openai/baselines'
``trpo_mpi`` does, the gradient, every Fisher-vector product, and the surrogate and KL of every
line-search candidate, so that every rank takes the same step, the step of one process. Ranks
weight their share by its number of tasks. Only rank 0 writes the run folder.

With one process (no ``torchrun``) :func:`context` returns ``None`` and nothing here is used.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["TaskShard", "context", "shard_of"]


@dataclass(frozen=True)
class TaskShard:
    """This rank's share of a meta-batch of ``total`` tasks: tasks ``offset .. offset + count - 1``."""

    rank: int
    world_size: int
    offset: int
    count: int
    total: int

    @property
    def weight(self) -> float:
        """This share's weight in a mean over all tasks."""
        return self.count / self.total

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def slice(self, x):
        """Rows ``offset .. offset + count`` of a tensor or array with the task axis first."""
        return x[self.offset:self.offset + self.count]

    def mean(self, local: Tensor) -> Tensor:
        """The mean over all tasks of a quantity whose per-rank value is the mean over this rank's
        tasks (a scalar or a tensor, e.g. a gradient): ``sum_r weight_r * local_r`` on every rank."""
        out = local.detach().to(torch.float64) * self.weight
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out.to(local.dtype)

    def mean_float(self, local: float) -> float:
        return self.mean(torch.tensor(local, dtype=torch.float64)).item()

    def sum_float(self, local: float) -> float:
        """The sum over the ranks."""
        t = torch.tensor(local, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.item()

    def sum_tensor(self, local: Tensor) -> Tensor:
        """The elementwise sum of ``local`` over the ranks (a new tensor on every rank)."""
        out = local.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any."""
        t = torch.tensor(1 if flag else 0, dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def max_int(self, value: int) -> int:
        """The largest ``value`` over the ranks."""
        t = torch.tensor(int(value), dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def check_same(self, tensors: list[Tensor], what: str = "parameters", rtol: float = 1e-6) -> None:
        """Raise if any rank's ``tensors`` differ from rank 0's (they must, by construction, agree)."""
        flat = torch.cat([t.detach().reshape(-1).to(torch.float64).cpu() for t in tensors])
        ref = flat.clone()
        dist.broadcast(ref, src=0)
        gap = torch.tensor((flat - ref).abs().max().item() / max(ref.abs().max().item(), 1e-12))
        dist.all_reduce(gap, op=dist.ReduceOp.MAX)
        if gap.item() > rtol:
            raise RuntimeError(f"distributed: the ranks' {what} differ from rank 0's (relative {gap.item():.2e}); "
                               "every rank must run the same code, config and library versions")

    def barrier(self) -> None:
        dist.barrier()


def shard_of(total: int, rank: int, world_size: int) -> TaskShard:
    """Contiguous shares of ``total`` tasks, the first ``total % world_size`` ranks one task more."""
    if total < world_size:
        from rl_maml.config import ConfigError

        raise ConfigError(f"{world_size} processes need at least as many tasks per meta-batch, got {total}; "
                         f"raise train.meta_batch_size or use fewer processes")
    base, extra = divmod(total, world_size)
    count = base + (rank < extra)
    offset = rank * base + min(rank, extra)
    return TaskShard(rank, world_size, offset, count, total)


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process: from an initialised process group, else torchrun's
    environment variables, else ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def context(total_tasks: int, device: torch.device | str = "cpu") -> TaskShard | None:
    """This process's :class:`TaskShard` under torchrun (initialising the process group: gloo on
    the CPU; on CUDA nccl for CUDA tensors and gloo for CPU ones), or ``None`` in a single process."""
    rank, world_size = world()
    if world_size <= 1:
        return None
    if not dist.is_initialized():
        cuda = torch.device(device).type == "cuda"
        if cuda:  # one GPU per process: "cuda" then means this node's GPU LOCAL_RANK
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        # nccl reduces CUDA tensors only; the small CPU reductions (loop control, flags, the
        # parameter check, validation counts) go through gloo in the same group
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo")
        atexit.register(_shutdown)
    return shard_of(total_tasks, rank, world_size)


def finish() -> None:
    """End a run that every rank completed: wait for all ranks (rank 0 may still be writing the
    last checkpoint), then destroy the process group while the interpreter is fully alive. Left
    to exit time, ranks tore their groups down at different moments and a gloo rank could abort
    ("terminate called without an active exception") after the run had succeeded, which torchrun
    then reports as a failed run. A no-op in one process."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _shutdown() -> None:
    """The fallback for runs that did not reach :func:`finish` (an error on some rank): tear the
    process group down before the interpreter's teardown, where gloo's worker threads could
    abort the process."""
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - a peer that died first; nothing left to save at exit
            pass


def shard_learners(learners, shard: TaskShard | None) -> None:
    """Give supervised learners their share of each meta-batch: their gradients (and float buffers)
    are then averaged over the ranks after every step, and all start from rank 0's parameters."""
    if shard is None:
        return
    for name, learner in learners.items():
        if type(learner).train_step not in _shardable_train_steps():
            raise NotImplementedError(f"the {name} learner does not split across processes yet; run it in one process")
        learner.shard = shard
        for tensor in [*learner.module.parameters(), *learner.module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def _shardable_train_steps():
    """The train steps that average gradients over ranks: the shared one, and MAML's, which sets
    its schedules' step size and then calls it."""
    from rl_maml.agents.supervised import MAMLLearner, SupervisedLearner

    return (SupervisedLearner.train_step, MAMLLearner.train_step)
