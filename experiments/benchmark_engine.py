"""Time one MAML meta-iteration: the task-batched engine against a per-task Python loop.

    python -m rl_maml.experiments.benchmark_engine [--threads N] [--repeats R] [--cases sinusoid conv4]

Cases (both first and second order):

- ``sinusoid``: MLP 1-40-40-1, meta-batch 25, K = 10 support and 10 query points, one inner step;
- ``conv4``: the Omniglot conv-4 (64 filters, stride-2 convolutions, batch norm on batch
  statistics) on 28x28 random inputs, meta-batch 32, 5-way 1-shot support, ``--query-per-class``
  queries per class (1 by default, as in the MAML reference code, which scores K images per
  class; 15 is the other common choice), one inner step;
- ``omniglot``: the same network and task shape on a real Omniglot meta-batch (training
  characters, rotations), read from ``--data-root`` (default ``../shared/data/omniglot``).

The batched engine applies conv-4 through :meth:`rl_maml.nn.Conv4.forward_tasks` (the task axis
folded into channels, one grouped convolution per layer); the loop applies it task by task.

Two timings per case: the inner update alone (adapt all tasks), and a whole meta-iteration (inner
update, query loss, backward, Adam step). Each is the median of ``--repeats`` runs after warm-up;
ratios are loop time over batched time measured in the same process. learn2learn's MAML wrapper is
timed as well when it imports.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from rl_maml.functional import TaskBatchedModel, params_of
from rl_maml.inner import ConstantStepSize, InnerLoop
from rl_maml.maml import meta_loss, per_task_meta_loss
from rl_maml.nn import MLP, Conv4
from rl_maml.patterns import time_adaptation


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    return 1e3 * time_adaptation(fn, repeats, warmup)


def make_case(name: str, query_per_class: int = 1, data_root: str | None = None):
    g = torch.Generator().manual_seed(0)
    if name == "sinusoid":
        net, criterion, m = MLP(1, 1, (40, 40)), F.mse_loss, 25
        support = (torch.rand(m, 10, 1, generator=g) * 10 - 5, torch.randn(m, 10, 1, generator=g))
        query = (torch.rand(m, 10, 1, generator=g) * 10 - 5, torch.randn(m, 10, 1, generator=g))
        return net, criterion, support, query, 0.01
    if name == "conv4":
        net, criterion, m, ways = Conv4(1, 5, hidden=64), F.cross_entropy, 32, 5
        support = (torch.randn(m, ways, 1, 28, 28, generator=g), torch.arange(ways).expand(m, ways))
        q = query_per_class
        query = (torch.randn(m, ways * q, 1, 28, 28, generator=g), torch.arange(ways).repeat_interleave(q).expand(m, ways * q))
        return net, criterion, support, query, 0.4
    if name == "omniglot":
        from rl_maml.tasks.fewshot import FewShotTasks
        from rl_maml.tasks.omniglot import load_omniglot, omniglot_splits

        data = load_omniglot(data_root or (None if os.environ.get("RL_MAML_DATA") else DEFAULT_OMNIGLOT))
        train = data.images[torch.from_numpy(omniglot_splits(data.names).train)]
        batch = FewShotTasks(train, 5, 1, query_per_class, rotate=True, invert=True).sample(32, g)
        return Conv4(1, 5, hidden=64), F.cross_entropy, batch.support, batch.query, 0.4
    raise ValueError(f"unknown case {name!r}")


DEFAULT_OMNIGLOT = str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "omniglot")


def learn2learn_iteration(net, criterion, support, query, lr, first_order):
    """One meta-iteration with learn2learn's MAML wrapper (clone/adapt per task), or None."""
    try:
        import learn2learn as l2l
    except Exception:
        return None
    maml = l2l.algorithms.MAML(net, lr=lr, first_order=first_order)
    opt = torch.optim.Adam(maml.parameters(), 1e-3)

    def step():
        opt.zero_grad()
        total = 0.0
        for m in range(support[0].shape[0]):
            learner = maml.clone()
            learner.adapt(criterion(learner(support[0][m]), support[1][m]))
            total = total + criterion(learner(query[0][m]), query[1][m])
        (total / support[0].shape[0]).backward()
        opt.step()

    return step


def run(cases: list[str], repeats: int, query_per_class: int = 1, data_root: str | None = None) -> list[dict]:
    rows = []
    for case in cases:
        net, criterion, support, query, lr = make_case(case, query_per_class, data_root)
        model = TaskBatchedModel(net, criterion)
        params = params_of(net)
        opt = torch.optim.Adam(net.parameters(), 1e-3)
        reps = repeats if case == "sinusoid" else max(3, repeats // 6)
        for first_order in (False, True):
            inner = InnerLoop(ConstantStepSize(lr), 1, first_order)
            row = {"case": case, "order": "first" if first_order else "second"}
            m = support[0].shape[0]

            def adapt_batched():
                return inner.adapt(params, model.task_losses, support, num_tasks=m)

            def adapt_loop():
                return [inner.adapt(params, model.loss_single, (support[0][i], support[1][i])) for i in range(m)]

            def iteration(objective):
                def step():
                    opt.zero_grad(set_to_none=True)
                    objective(model, params, inner, support, query).loss.backward()
                    opt.step()
                return step

            row["adapt_batched_ms"] = median_ms(adapt_batched, reps)
            row["adapt_loop_ms"] = median_ms(adapt_loop, reps)
            row["iter_batched_ms"] = median_ms(iteration(meta_loss), reps)
            row["iter_loop_ms"] = median_ms(iteration(per_task_meta_loss), reps)
            l2l_step = learn2learn_iteration(net, criterion, support, query, lr, first_order)
            row["iter_l2l_ms"] = median_ms(l2l_step, reps) if l2l_step else None
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=30, help="timed repeats per measurement (conv4 uses 1/6)")
    ap.add_argument("--cases", nargs="+", default=["sinusoid", "conv4"], choices=["sinusoid", "conv4", "omniglot"])
    ap.add_argument("--data-root", default=None, help="Omniglot folder for the omniglot case (default: "
                    "../shared/data/omniglot beside the repository)")
    ap.add_argument("--query-per-class", type=int, default=1, help="conv4 query images per class")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args.cases, args.repeats, args.query_per_class, args.data_root)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU; median milliseconds; "
          f"conv4 query: {args.query_per_class} per class")
    print("| case | order | inner update: batched | loop | loop/batched | meta-iteration: batched | loop "
          "| loop/batched | learn2learn |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        l2l = f"{r['iter_l2l_ms']:.1f}" if r["iter_l2l_ms"] else "not installed"
        print(f"| {r['case']} | {r['order']} | {r['adapt_batched_ms']:.2f} | {r['adapt_loop_ms']:.2f} | "
              f"{r['adapt_loop_ms'] / r['adapt_batched_ms']:.1f}x | {r['iter_batched_ms']:.2f} | "
              f"{r['iter_loop_ms']:.2f} | {r['iter_loop_ms'] / r['iter_batched_ms']:.1f}x | {l2l} |")


if __name__ == "__main__":
    main()
