"""The supervised training loop: resume equality, non-finite losses, learners' behaviour."""

from __future__ import annotations

import math

import pytest
import torch
from rl_maml.experiments.sinusoid import SinusoidConfig, build_learners, make_tasks

from rl_maml.config import from_dict
from rl_maml.seeding import torch_generator
from rl_maml.tasks.base import TaskBatch
from rl_maml.training import Trainer, load_learners


def tiny_config(**train):
    return from_dict(SinusoidConfig, {
        "model": {"hidden_sizes": [16, 16]},
        "inner": {"step_size": "learned"},  # learned step sizes must resume too
        "train": {"meta_batch_size": 5, "checkpoint_every": 4, "log_every": 2, **train},
    })


def make_trainer(cfg, run_dir, fail_at=None):
    learners = build_learners(cfg, torch.device("cpu"))
    tasks = make_tasks(cfg)

    def sample(iteration):
        if iteration == fail_at:
            raise KeyboardInterrupt("simulated interruption")
        return tasks.sample(5, 10, 10, torch_generator(cfg.seed, "sinusoid-train", iteration))

    return Trainer(run_dir, learners, sample, cfg.train.num_iterations, cfg.train.checkpoint_every,
                             3, cfg.train.log_every, progress=False), learners


def test_resume_ends_with_the_same_parameters(tmp_path):
    cfg = tiny_config(num_iterations=12)
    straight, learners_a = make_trainer(cfg, tmp_path / "a")
    straight.run()

    interrupted, _ = make_trainer(cfg, tmp_path / "b", fail_at=10)
    with pytest.raises(KeyboardInterrupt):
        interrupted.run()
    resumed, learners_b = make_trainer(cfg, tmp_path / "b")
    start = resumed.resume()
    assert start == 8
    resumed.run(start)

    for name in learners_a:
        sa, sb = learners_a[name].state_dict(), learners_b[name].state_dict()
        for k in sa["module"]:
            assert torch.equal(sa["module"][k], sb["module"][k]), (name, k)
        for k in sa["extra"].get("step_size", {}):
            assert torch.equal(sa["extra"]["step_size"][k], sb["extra"]["step_size"][k])
    # The checkpoint on disk holds the same state, and restores it.
    fresh = build_learners(cfg, torch.device("cpu"))
    assert load_learners(tmp_path / "b" / "checkpoints" / "iter_0000012.pt", fresh) == 12
    for k, v in learners_a["maml"].module.state_dict().items():
        assert torch.equal(fresh["maml"].module.state_dict()[k], v)


def test_non_finite_loss_raises_and_leaves_parameters(tmp_path):
    cfg = tiny_config(num_iterations=1)
    learners = build_learners(cfg, torch.device("cpu"))
    batch = make_tasks(cfg).sample(5, 10, 10, torch.Generator().manual_seed(0))
    bad = TaskBatch(batch.support, (batch.query[0], batch.query[1] * math.nan), batch.tasks)
    for learner in learners.values():
        before = {k: v.clone() for k, v in learner.module.state_dict().items()}
        with pytest.raises(FloatingPointError, match="parameters were not updated"):
            learner.train_step(bad)
        for k, v in learner.module.state_dict().items():
            assert torch.equal(v, before[k])


def test_learners_improve_and_evaluate_shapes():
    cfg = tiny_config(num_iterations=1)
    learners = build_learners(cfg, torch.device("cpu"))
    tasks = make_tasks(cfg)
    test = tasks.sample(20, 10, 50, torch.Generator().manual_seed(123))
    before = {n: l.evaluate(test, 2) for n, l in learners.items()}
    for it in range(150):
        batch = tasks.sample(5, 10, 10, torch_generator(0, "t", it))
        for learner in learners.values():
            learner.train_step(batch)
    for name, learner in learners.items():
        after = learner.evaluate(test, 2)
        assert after.shape == (3, 20)
        assert after[-1].mean() < before[name][-1].mean(), name
    # The oracle does not adapt: its error is the same after any number of steps.
    oracle = learners["oracle"].evaluate(test, 3)
    assert torch.equal(oracle[0], oracle[3])
    # Adaptation helps MAML on its own support data.
    maml = learners["maml"].evaluate(test, 3)
    assert maml[1].mean() < maml[0].mean()


def test_a_signal_after_the_checkpoint_decision_still_checkpoints_what_it_reports(tmp_path, monkeypatch):
    """SIGTERM landing late in an iteration (here: in the progress bar's update, after the decision
    whether to checkpoint) must not stop the run with the iteration it reports unsaved."""
    import os
    import signal

    import rl_maml.training as training
    from rl_maml.checkpoint import list_checkpoints

    real_tqdm = training.tqdm

    class SignallingBar(real_tqdm):
        updates = 0

        def update(self, n=1):
            super().update(n)
            SignallingBar.updates += n
            if SignallingBar.updates == 3:
                os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(training, "tqdm", SignallingBar)
    cfg = tiny_config(num_iterations=12, checkpoint_every=100)
    trainer, _ = make_trainer(cfg, tmp_path / "run")
    with pytest.raises(training.TrainingInterrupted, match=r"SIGTERM after iteration (\d+)") as info:
        trainer.run()
    reported = int(info.value.args[0].split("after iteration ")[1].split()[0])
    assert reported >= 3
    assert [it for it, _ in list_checkpoints(tmp_path / "run" / "checkpoints")] == [reported]


def scripted_trainer(cfg, run_dir, values, mode="max"):
    """A trainer whose validation returns ``values[iteration]`` as ``val/score`` every 2 iterations."""
    learners = build_learners(cfg, torch.device("cpu"))
    tasks = make_tasks(cfg)

    def sample(iteration):
        return tasks.sample(5, 10, 10, torch_generator(cfg.seed, "sinusoid-train", iteration))

    return Trainer(run_dir, learners, sample, cfg.train.num_iterations, 2, 100, 2, progress=False,
                   validate=lambda it: {"val/score": values[it], "val/other": 0.0}, validate_every=2,
                   keep_best="val/score", best_mode=mode)


def same_parameters(a, b):
    ma, mb = a["learners"]["maml"]["module"], b["learners"]["maml"]["module"]
    return all(torch.equal(ma[k], mb[k]) for k in ma)


def test_keep_best_keeps_the_learners_of_the_best_validation(tmp_path):
    import json

    from rl_maml.checkpoint import latest_checkpoint, load_checkpoint

    cfg = tiny_config(num_iterations=8)
    scripted_trainer(cfg, tmp_path / "max", {2: 0.5, 4: 0.9, 6: math.nan, 8: 0.7}).run()
    ck = tmp_path / "max" / "checkpoints"
    assert json.loads((ck / "best.json").read_text()) == {"iteration": 4, "metric": "val/score", "mode": "max",
                                                          "value": 0.9}
    best = load_checkpoint(ck / "best.pt")
    assert best["iteration"] == 4 and same_parameters(best, load_checkpoint(ck / "iter_0000004.pt"))
    assert not same_parameters(best, load_checkpoint(ck / "iter_0000008.pt"))
    assert latest_checkpoint(ck).name == "iter_0000008.pt"  # a resume continues from the newest, not the best

    scripted_trainer(cfg, tmp_path / "min", {2: 0.5, 4: 0.9, 6: 0.2, 8: 0.7}, mode="min").run()
    assert json.loads((tmp_path / "min" / "checkpoints" / "best.json").read_text())["iteration"] == 6


def test_a_resumed_run_keeps_its_best_unless_it_lies_past_the_resume_point(tmp_path):
    import json

    cfg = tiny_config(num_iterations=8)
    run = tmp_path / "run"
    scripted_trainer(cfg, run, {2: 0.5, 4: 0.9, 6: 0.8, 8: 0.7}).run()
    cfg = tiny_config(num_iterations=12)
    resumed = scripted_trainer(cfg, run, {10: 0.85, 12: 0.6})
    resumed.run(resumed.resume())
    assert json.loads((run / "checkpoints" / "best.json").read_text())["iteration"] == 4  # 0.85 < 0.9

    # Back to iteration 2 (newer checkpoints gone): the best at 4 is from iterations run again, so
    # it no longer counts; the run's own validations choose.
    for later in ("iter_0000004.pt", "iter_0000006.pt", "iter_0000008.pt", "iter_0000010.pt", "iter_0000012.pt"):
        (run / "checkpoints" / later).unlink(missing_ok=True)
    again = scripted_trainer(tiny_config(num_iterations=6), run, {4: 0.3, 6: 0.4})
    assert again.resume() == 2
    again.run(2)
    assert json.loads((run / "checkpoints" / "best.json").read_text())["iteration"] == 6


def test_keep_best_errors_name_the_problem(tmp_path):
    cfg = tiny_config(num_iterations=2)
    learners = build_learners(cfg, torch.device("cpu"))
    with pytest.raises(ValueError, match="does not validate"):
        Trainer(tmp_path, learners, lambda it: None, 2, keep_best="val/score")
    with pytest.raises(ValueError, match="best_mode"):
        Trainer(tmp_path, learners, lambda it: None, 2, validate=lambda it: {}, validate_every=1,
                keep_best="val/score", best_mode="largest")
    from rl_maml.training import TrainingError

    trainer = scripted_trainer(cfg, tmp_path / "r", {2: 1.0})
    trainer.keep_best = "val/accuracy"
    with pytest.raises(TrainingError, match="no 'val/accuracy'.*val/other"):
        trainer.run()
    (tmp_path / "r" / "checkpoints").mkdir(parents=True, exist_ok=True)
    (tmp_path / "r" / "checkpoints" / "best.json").write_text("{not json")
    with pytest.raises(Exception, match="best.json is damaged"):
        scripted_trainer(cfg, tmp_path / "r", {2: 1.0}).resume()
