"""Time one MAML meta-iteration: the task-batched engine against a per-task Python loop.

    python -m rl_maml.experiments.benchmark_engine [--threads N] [--repeats R] [--cases sinusoid conv4]
        [--ways 5 20] [--query-per-class 1 15]

Cases (both first and second order):

- ``sinusoid``: MLP 1-40-40-1, meta-batch 25, K = 10 support and 10 query points, one inner step;
- ``conv4``: the Omniglot conv-4 (64 filters, stride-2 convolutions, batch norm on batch
  statistics) on 28x28 random inputs, ``--ways`` N-way 1-shot support (meta-batch 32 at 5 ways,
  16 at 20, as the MAML paper), ``--query-per-class`` queries per class (1 by default, as in the
  MAML reference code, which scores K images per class; 15 is the other common choice), one
  inner step; several ``--ways`` and ``--query-per-class`` values give one row per pair;
- ``omniglot``: the same network and task shapes on real Omniglot meta-batches (training
  characters, rotations), read from ``--data-root`` (default ``../shared/data/omniglot``).

The batched engine applies conv-4 through :meth:`rl_maml.nn.Conv4.forward_tasks` (grouped
convolutions over the folded task axis for small per-task batches, dense per-task convolutions
for large ones); the loop applies the module task by task.

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


def make_case(name: str, query_per_class: int = 1, data_root: str | None = None, ways: int = 5):
    g = torch.Generator().manual_seed(0)
    if name == "sinusoid":
        net, criterion, m = MLP(1, 1, (40, 40)), F.mse_loss, 25
        support = (torch.rand(m, 10, 1, generator=g) * 10 - 5, torch.randn(m, 10, 1, generator=g))
        query = (torch.rand(m, 10, 1, generator=g) * 10 - 5, torch.randn(m, 10, 1, generator=g))
        return net, criterion, support, query, 0.01
    if name == "conv4":
        net, criterion, m = Conv4(1, ways, hidden=64), F.cross_entropy, meta_batch(ways)
        support = (torch.randn(m, ways, 1, 28, 28, generator=g), torch.arange(ways).expand(m, ways))
        q = query_per_class
        query = (torch.randn(m, ways * q, 1, 28, 28, generator=g), torch.arange(ways).repeat_interleave(q).expand(m, ways * q))
        return net, criterion, support, query, 0.4
    if name == "omniglot":
        from rl_maml.tasks.fewshot import FewShotTasks
        from rl_maml.tasks.omniglot import load_omniglot, omniglot_splits

        data = load_omniglot(data_root or (None if os.environ.get("RL_MAML_DATA") else DEFAULT_OMNIGLOT))
        train = data.images[torch.from_numpy(omniglot_splits(data.names).train)]
        batch = FewShotTasks(train, ways, 1, query_per_class, rotate=True, invert=True).sample(meta_batch(ways), g)
        return Conv4(1, ways, hidden=64), F.cross_entropy, batch.support, batch.query, 0.4
    raise ValueError(f"unknown case {name!r}")


def meta_batch(ways: int) -> int:
    """The MAML paper's Omniglot meta-batch: 32 tasks at 5 ways, 16 at 20."""
    return 32 if ways <= 5 else 16


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


def run(cases: list[str], repeats: int, query_per_class: int | list[int] = 1, data_root: str | None = None,
        ways: int | list[int] = 5) -> list[dict]:
    queries = [query_per_class] if isinstance(query_per_class, int) else list(query_per_class)
    way_list = [ways] if isinstance(ways, int) else list(ways)
    rows = []
    combos = [(case, w, q) for case in cases for w in ((5,) if case == "sinusoid" else way_list)
              for q in ((1,) if case == "sinusoid" else queries)]
    for case, w, q in combos:
        net, criterion, support, query, lr = make_case(case, q, data_root, w)
        model = TaskBatchedModel(net, criterion)
        params = params_of(net)
        opt = torch.optim.Adam(net.parameters(), 1e-3)
        reps = repeats if case == "sinusoid" else max(3, repeats // 6)
        for first_order in (False, True):
            inner = InnerLoop(ConstantStepSize(lr), 1, first_order)
            row = {"case": case, "order": "first" if first_order else "second",
                   "ways": None if case == "sinusoid" else w, "query_per_class": None if case == "sinusoid" else q,
                   "meta_batch": support[0].shape[0]}
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


def time_evaluation(ways: int, num_tasks: int, data_root: str | None = None, num_steps: int = 10) -> list[dict]:
    """Seconds to evaluate ``num_tasks`` Omniglot test tasks (N-way 1-shot, 15 query images per
    class, ``num_steps`` steps, chunks of 100) as ``rl-maml eval`` does, scoring after every step
    count and after the last only (an untrained network: the time does not depend on the weights)."""
    import time

    from rl_maml.config import from_dict

    from .fewshot import FewShotConfig, build_learner, evaluate_tasks, load_dataset

    root = data_root or (None if os.environ.get("RL_MAML_DATA") else DEFAULT_OMNIGLOT)
    cfg = from_dict(FewShotConfig, {"data": {"root": root}, "task": {"ways": ways}})
    data = load_dataset(cfg.data)
    learner = build_learner(cfg, torch.device("cpu"), data)
    tasks = data.tasks("test", ways, 1, cfg.eval.num_query)
    rows = []
    for steps in (None, [num_steps]):
        t = time.perf_counter()
        evaluate_tasks(learner, tasks, num_tasks, num_steps, cfg.eval.seed, "fewshot-test", cfg.eval.chunk_size,
                       torch.device("cpu"), score_steps=steps)
        rows.append({"ways": ways, "num_tasks": num_tasks, "scored": "every step" if steps is None else
                     f"after {num_steps} only", "seconds": time.perf_counter() - t})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=30, help="timed repeats per measurement (conv4 uses 1/6)")
    ap.add_argument("--cases", nargs="+", default=["sinusoid", "conv4"], choices=["sinusoid", "conv4", "omniglot"])
    ap.add_argument("--data-root", default=None, help="Omniglot folder for the omniglot case (default: "
                    "../shared/data/omniglot beside the repository)")
    ap.add_argument("--query-per-class", type=int, nargs="+", default=[1],
                    help="conv4/omniglot query images per class (several: one row each)")
    ap.add_argument("--ways", type=int, nargs="+", default=[5],
                    help="conv4/omniglot classes per task (several: one row each; meta-batch 32 at 5 ways, 16 at 20)")
    ap.add_argument("--eval-tasks", type=int, default=0,
                    help="also time the evaluation of this many Omniglot test tasks per --ways (e.g. 600)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.eval_tasks:
        print("| evaluation | tasks | query scored | seconds |")
        print("|---|---|---|---|")
        for w in args.ways:
            for r in time_evaluation(w, args.eval_tasks, args.data_root):
                print(f"| Omniglot {w}-way 1-shot, 15 query/class, 10 steps | {r['num_tasks']} | {r['scored']} | "
                      f"{r['seconds']:.1f} |", flush=True)
    rows = run(args.cases, args.repeats, args.query_per_class, args.data_root, args.ways)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU; median milliseconds")
    print("| case | ways | query/class | meta-batch | order | inner update: batched | loop | loop/batched "
          "| meta-iteration: batched | loop | loop/batched | learn2learn |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        l2l = f"{r['iter_l2l_ms']:.1f}" if r["iter_l2l_ms"] else "not installed"
        shape = "| - | - " if r["ways"] is None else f"| {r['ways']} | {r['query_per_class']} "
        print(f"| {r['case']} {shape}| {r['meta_batch']} | {r['order']} | {r['adapt_batched_ms']:.2f} | "
              f"{r['adapt_loop_ms']:.2f} | "
              f"{r['adapt_loop_ms'] / r['adapt_batched_ms']:.1f}x | {r['iter_batched_ms']:.2f} | "
              f"{r['iter_loop_ms']:.2f} | {r['iter_loop_ms'] / r['iter_batched_ms']:.1f}x | {l2l} |")


if __name__ == "__main__":
    main()
