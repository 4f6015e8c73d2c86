"""Meta-batches split over 2 gloo processes (torchrun) give the parameters of one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rl_maml.checkpoint import latest_checkpoint, load_checkpoint
from rl_maml.experiments.cli import main

NAV = ["train.meta_batch_size=4", "train.fast_batch_size=2", "env.horizon=8", "policy.hidden_sizes=[8]",
       "train.num_iterations=1", "train.checkpoint_every=1", "trpo.fvp_subsample=1.0", "trpo.surrogate_steps=final",
       "inner.num_inner_steps=1", "inner.step_scales=[]", "trpo.inner_objective=reinforce",
       # A well-conditioned Fisher: with the default damping 1e-5 on this tiny problem, conjugate
       # gradient amplifies the rounding of the reductions' different summation order to ~1e-3.
       "trpo.cg_damping=1.0"]
SINUSOID = ["train.num_iterations=3", "train.checkpoint_every=1", "train.meta_batch_size=5", "model.hidden_sizes=[16]"]


def torchrun(run: Path, preset: str, *overrides: str, resume: bool = False) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "rl_maml.experiments.cli", "train", *(() if resume else (preset,)), "--run-dir", str(run),
           "--no-progress", *overrides, *(("--resume",) if resume else ())]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"})
    assert done.returncode == 0, done.stderr[-3000:]


def tensors(run: Path, iteration: int | None = None) -> dict[str, torch.Tensor]:
    path = latest_checkpoint(run / "checkpoints") if iteration is None else \
        run / "checkpoints" / f"iter_{iteration:07d}.pt"
    out = {}

    def walk(x, prefix):
        if isinstance(x, torch.Tensor):
            out[prefix] = x
        elif isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{prefix}.{k}")
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(v, f"{prefix}.{i}")

    walk(load_checkpoint(path)["learners"], "")
    return out


def max_relative_gap(a: dict, b: dict) -> float:
    """The largest entry difference over the largest entry: relative to the parameters' scale (a
    per-tensor ratio would divide by log-stds near 0)."""
    assert a.keys() == b.keys()
    keys = [k for k in a if a[k].is_floating_point()]
    gap = max((a[k].double() - b[k].double()).abs().max().item() for k in keys)
    return gap / max(a[k].double().abs().max().item() for k in keys)


@pytest.mark.parametrize("sampling", [[], ["train.batch_steps=20"]], ids=["episodes", "step_budget"])
def test_meta_rl_on_two_processes_equals_one(tmp_path, sampling):
    assert main(["train", "navigation", "--run-dir", str(tmp_path / "one"), "--no-progress", *NAV, *sampling]) == 0
    torchrun(tmp_path / "two", "navigation", *NAV, *sampling)
    assert max_relative_gap(tensors(tmp_path / "one"), tensors(tmp_path / "two")) < 1e-5
    assert [p.name for p in (tmp_path / "two" / "checkpoints").iterdir()] == ["iter_0000001.pt"]  # rank 0 wrote it


def test_supervised_on_two_processes_equals_one(tmp_path):
    assert main(["train", "sinusoid", "--run-dir", str(tmp_path / "one"), "--no-progress", *SINUSOID]) == 0
    torchrun(tmp_path / "two", "sinusoid", *SINUSOID)  # 5 tasks: shares of 3 and 2, weighted
    assert max_relative_gap(tensors(tmp_path / "one"), tensors(tmp_path / "two")) < 1e-5


def test_a_resumed_two_process_run_equals_an_uninterrupted_one(tmp_path):
    torchrun(tmp_path / "whole", "navigation", *NAV, "train.num_iterations=2")
    torchrun(tmp_path / "pieces", "navigation", *NAV)  # iteration 1, then resumed to 2
    torchrun(tmp_path / "pieces", "navigation", "train.num_iterations=2", resume=True)
    whole, pieces = tensors(tmp_path / "whole"), tensors(tmp_path / "pieces")
    assert all(torch.equal(whole[k], pieces[k]) for k in whole)
    # one process may resume what two began (the checkpoint does not depend on the number of ranks)
    assert main(["train", "--run-dir", str(tmp_path / "pieces"), "--resume", "--no-progress",
                 "train.num_iterations=3"]) == 0
    torchrun(tmp_path / "whole", "navigation", "train.num_iterations=3", resume=True)
    assert max_relative_gap(tensors(tmp_path / "whole"), tensors(tmp_path / "pieces")) < 1e-4


def test_finish_waits_for_the_ranks_and_ends_the_process_group(tmp_path):
    """A completed run ends its group itself (not at interpreter exit, where a gloo rank could abort
    after the run had succeeded); without a group it does nothing."""
    import torch.distributed as dist

    from rl_maml.distributed import finish

    finish()  # one process, no group: nothing to end
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        finish()
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_a_torchrun_rank_ends_without_the_interpreter_teardown():
    """Under torchrun the CLI leaves through os._exit once the command is done: its output is
    flushed and its exit status kept, but no exit-time teardown runs (where gloo's threads could
    abort a rank whose run had succeeded)."""
    code = ("import atexit, sys; atexit.register(lambda: print('TEARDOWN', flush=True)); "
            "from rl_maml.experiments.cli import main; main(sys.argv[1:]); print('RETURNED')")
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "1", "OMP_NUM_THREADS": "1"}
    ok = subprocess.run([sys.executable, "-c", code, "presets"], capture_output=True, text=True, timeout=120, env=env)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "navigation" in ok.stdout and "TEARDOWN" not in ok.stdout and "RETURNED" not in ok.stdout
    bad = subprocess.run([sys.executable, "-c", code, "config", "no_such_preset"], capture_output=True, text=True,
                         timeout=120, env=env)
    assert bad.returncode == 2 and "no_such_preset" in bad.stderr and "TEARDOWN" not in bad.stdout
    alone = subprocess.run([sys.executable, "-c", code, "presets"], capture_output=True, text=True, timeout=120,
                           env={k: v for k, v in env.items() if k not in ("WORLD_SIZE", "RANK")})
    assert alone.returncode == 0 and "RETURNED" in alone.stdout and "TEARDOWN" in alone.stdout


STOP_WORKER = '''
import os, signal, sys
from pathlib import Path
from rl_maml.distributed import context, finish
from rl_maml.training import Trainer, TrainingInterrupted

run, stop_rank, stop_at = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
shard = context(2)


class Counter:
    """A learner whose step holds a collective, as every split learner's does."""
    name = "counter"

    def __init__(self):
        self.steps = 0

    def train_step(self, iteration):
        self.steps += 1
        if shard.rank == stop_rank and iteration == stop_at:  # a signal that reaches this rank alone
            os.kill(os.getpid(), signal.SIGTERM)
        shard.mean_float(1.0)
        return {"steps": float(self.steps)}

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"]


trainer = Trainer(run, {"counter": Counter()}, lambda it: it, 100, checkpoint_every=50, progress=False, shard=shard)
try:
    trainer.run(0)
    outcome = "finished"
except TrainingInterrupted as e:
    outcome = str(e)
(run / f"rank{shard.rank}.txt").write_text(outcome)
finish()
'''


@pytest.mark.parametrize("stop_rank", [0, 1])
def test_a_signal_on_one_rank_stops_every_rank_after_the_same_checkpointed_iteration(tmp_path, stop_rank):
    """SIGTERM that reaches one rank only: every rank stops after that iteration, rank 0 has
    checkpointed it, and no rank waits forever in the next iteration's collectives."""
    script = tmp_path / "worker.py"
    script.write_text(STOP_WORKER)
    run = tmp_path / "run"
    run.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           str(run), str(stop_rank), "3"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    outcomes = [(run / f"rank{r}.txt").read_text() for r in range(2)]
    assert all("after iteration 3 (checkpointed)" in o for o in outcomes), outcomes
    assert "SIGTERM" in outcomes[stop_rank] and "another rank" in outcomes[1 - stop_rank]
    state = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    assert state["iteration"] == 3 and state["learners"]["counter"]["steps"] == 3


EVAL_WORKER = '''
import sys
import torch
import torch.nn.functional as F
from rl_maml.distributed import context, finish
from rl_maml.experiments.fewshot import evaluate_tasks
from rl_maml.agents import MAMLLearner
from rl_maml.inner import ConstantStepSize, InnerLoop
from rl_maml.nn import Conv4
from rl_maml.tasks.fewshot import FewShotTasks


def setup():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (12, 6, 14, 14), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    learner = MAMLLearner(Conv4(1, 3, hidden=4, image_size=14), F.cross_entropy, InnerLoop(ConstantStepSize(0.4), 1), 1e-3)
    return learner, FewShotTasks(images, ways=3, shots=1, query=2)


if __name__ == "__main__":
    learner, sampler = setup()
    shard = context(2)
    acc = evaluate_tasks(learner, sampler, 130, 2, 7, "t", 20, torch.device("cpu"), shard=shard)
    torch.save(acc, sys.argv[1] + f".rank{shard.rank}")
    finish()
'''


def test_evaluation_split_over_two_processes_equals_one(tmp_path):
    """Validation under torchrun: each rank adapts every other chunk of the same tasks, and every
    rank ends with the accuracies one process computes."""
    import importlib.util

    script = tmp_path / "eval_worker.py"
    script.write_text(EVAL_WORKER)
    out = tmp_path / "acc"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(out)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    spec = importlib.util.spec_from_file_location("eval_worker", script)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    from rl_maml.experiments.fewshot import evaluate_tasks

    learner, sampler = worker.setup()
    one = evaluate_tasks(learner, sampler, 130, 2, 7, "t", 20, torch.device("cpu"))
    assert one.shape == (3, 130)
    for rank in range(2):
        torch.testing.assert_close(torch.load(f"{out}.rank{rank}"), one, rtol=0, atol=1e-6)


def test_benchmark_times_a_supervised_config_in_one_and_two_processes(capsys):
    from rl_maml.experiments.benchmark_distributed import main as benchmark

    out = benchmark(["--config", "sinusoid", "--iterations", "3", "train.meta_batch_size=4", "model.hidden_sizes=[8]"])
    assert set(out["rows"]) == {"1 process", "2 processes"}
    assert all(r["iteration"] > 0 for r in out["rows"].values())
    assert "| 2 processes |" in capsys.readouterr().out


def test_a_cuda_run_reduces_cpu_tensors_through_gloo(monkeypatch):
    """On CUDA the group pairs nccl (CUDA tensors) with gloo: the samplers' loop control, the stop
    flag and the parameter check reduce CPU tensors, which nccl alone refuses."""
    import torch.distributed as dist

    from rl_maml import distributed

    calls = []
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: calls.append(backend))
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: calls.append(index))
    monkeypatch.setattr(distributed.atexit, "register", lambda fn: None)
    shard = distributed.context(5, "cuda")
    assert calls == [1, "cpu:gloo,cuda:nccl"] and (shard.offset, shard.count) == (3, 2)
    calls.clear()
    distributed.context(5, "cpu")
    assert calls == ["gloo"]
