"""Faults and bad inputs: each gets a clear error, loses no data, and a run can go on afterwards.

The numbered tests follow the defects found by trying the project as a hostile user would (one
test each); the fault-injection part kills, interrupts and starves real training processes and
checks that ``--resume`` ends with exactly the parameters of an uninterrupted run.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rl_maml.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from rl_maml.config import load_yaml
from rl_maml.experiments.cli import main

SINUSOID = ["train.meta_batch_size=4", "model.hidden_sizes=[16]", "eval.num_tasks=20", "eval.max_steps=3",
            "eval.num_query=20", "train.log_every=5"]
NAV = ["train.meta_batch_size=2", "train.fast_batch_size=2", "env.horizon=8", "policy.hidden_sizes=[8]",
       "eval.num_tasks=2", "eval.fast_batch_size=2", "eval.num_steps=1", "eval.batch_steps=null",
       "eval.baselines=[random]", "inner.num_inner_steps=1", "inner.step_scales=[]", "trpo.surrogate_steps=final"]


def console_script() -> str:
    beside = Path(sys.executable).parent / "rl-maml"
    script = str(beside) if beside.exists() else shutil.which("rl-maml")
    assert script, "the rl-maml console script is not installed: pip install -e ."
    return script


def start_training(run: Path, *overrides: str, resume: bool = False) -> subprocess.Popen:
    args = [console_script(), "train", *(() if resume else ("sinusoid",)), "--run-dir", str(run), "--no-progress",
            *overrides]
    if resume:
        args.append("--resume")
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "MPLBACKEND": "Agg"})


def final_params(run: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the newest checkpoint (parameters, optimiser state), by path."""
    return dict(_tensors(load_checkpoint(latest_checkpoint(run / "checkpoints"))))


def _tensors(state, prefix=""):
    if isinstance(state, torch.Tensor):
        yield prefix, state
    elif isinstance(state, dict):
        for k, v in state.items():
            if k != "totals":  # wall-clock time differs between runs
                yield from _tensors(v, f"{prefix}.{k}")
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            yield from _tensors(v, f"{prefix}.{i}")


def assert_same_run(a: Path, b: Path) -> None:
    pa, pb = final_params(a), final_params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k


# --- 1. two trainings in one run folder ----------------------------------------------------------

def test_1_a_second_training_in_the_same_folder_is_refused_and_a_killed_holder_frees_it(tmp_path, capsys):
    run = tmp_path / "run"
    first = start_training(run, "train.num_iterations=100000", "train.checkpoint_every=5", *SINUSOID)
    try:
        deadline = time.time() + 60
        while not list_checkpoints(run / "checkpoints") and time.time() < deadline:
            time.sleep(0.2)
        assert list_checkpoints(run / "checkpoints"), first.stderr.read() if first.poll() is not None else ""
        assert main(["train", "sinusoid", "--run-dir", str(run), "seed=1", *SINUSOID]) == 2
        err = capsys.readouterr().err
        assert f"is in use by process {first.pid}" in err
        assert main(["train", "--run-dir", str(run), "--resume", "--no-progress"]) == 2  # resume waits its turn too
        assert "is in use" in capsys.readouterr().err
        assert load_yaml(run / "config.yaml")["seed"] == 0  # nothing of the second run was written
    finally:
        first.kill()  # kill -9: the kernel releases the lock
        first.wait()
    iteration = list_checkpoints(run / "checkpoints")[-1][0]
    assert main(["train", "--run-dir", str(run), "--resume", "--no-progress",
                 f"train.num_iterations={iteration + 2}"]) == 0


# --- 2. a key given twice ------------------------------------------------------------------------

def test_2_a_duplicate_key_is_an_error_naming_key_and_lines(tmp_path, capsys):
    path = tmp_path / "dup.yaml"
    path.write_text("benchmark: sinusoid\ntrain:\n  num_iterations: 3\nmodel:\n  hidden_sizes: [4]\n"
                    "train:\n  meta_batch_size: 2\n")
    assert main(["train", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "'train' appears twice" in err and "lines 2 and 6" in err and str(path) in err
    assert not (tmp_path / "run").exists()
    assert main(["train", "sinusoid", "--run-dir", str(tmp_path / "r2"), "variant.pattern={a: 1, a: 2}"]) == 2
    assert "'a' appears twice" in capsys.readouterr().err


# --- 3. a line search that never accepts ----------------------------------------------------------

def test_3_max_kl_inf_is_refused_and_a_stalled_line_search_stops_with_advice(tmp_path, capsys):
    assert main(["train", "navigation", "--run-dir", str(tmp_path / "a"), "trpo.max_kl=.inf", *NAV]) == 2
    assert "trpo.max_kl: expected a finite number" in capsys.readouterr().err
    from rl_maml.agents.maml_trpo import MAMLTRPOAgent
    from rl_maml.training import TrainingError

    agent = MAMLTRPOAgent.__new__(MAMLTRPOAgent)
    agent.meta = type("Meta", (), {"trpo": type("T", (), {"max_rejected_steps": 3})()})()
    for it in range(1, 3):
        agent._watch_line_search(it, {"charts/ls_accepted": 0.0})
    with pytest.raises(TrainingError, match="rejected every step 3 times in a row.*lower trpo.max_kl"):
        agent._watch_line_search(3, {"charts/ls_accepted": 0.0})
    agent._rejected = 0
    agent._watch_line_search(4, {"charts/ls_accepted": 1.0})  # an accepted step resets the count
    assert agent._rejected == 0
    # End to end: a huge max_kl overshoots every time; the run stops, naming the setting.
    code = main(["train", "navigation", "--run-dir", str(tmp_path / "b"), "--no-progress", "trpo.max_kl=1e6",
                 "trpo.max_rejected_steps=3", "train.num_iterations=20", *NAV])
    err = capsys.readouterr().err
    assert code == 2 and "trpo.max_rejected_steps=3" in err and "trpo.max_kl" in err


# --- 4. an inner step that blows the policy up ----------------------------------------------------

def test_4_non_finite_actions_are_the_projects_error_before_the_env_sees_them(tmp_path, capsys):
    code = main(["train", "navigation", "--run-dir", str(tmp_path / "run"), "--no-progress", "inner.inner_lr=1e30",
                 "train.num_iterations=3", *NAV])
    err = capsys.readouterr().err
    assert code == 2 and "inner.inner_lr" in err and "actions contain NaN" not in err
    assert "resume from an earlier checkpoint" not in err


# --- 5. a failed start can be retried --------------------------------------------------------------

def test_5_a_failed_start_leaves_nothing_behind_and_the_fixed_command_runs(tmp_path, capsys):
    run = tmp_path / "run"
    tiny = ["train.num_iterations=2", "train.checkpoint_every=1", *SINUSOID]
    assert main(["train", "sinusoid", "--run-dir", str(run), "train.device=cuda:7", *tiny]) == 2
    assert "CUDA is not available" in capsys.readouterr().err or "not a torch device" in capsys.readouterr().err
    assert not run.exists()
    assert main(["train", "sinusoid", "--run-dir", str(run), "--no-progress", *tiny]) == 0
    assert [i for i, _ in list_checkpoints(run / "checkpoints")] == [1, 2]


# --- 6. errors that name the problem instead of tracebacks -----------------------------------------

@pytest.mark.parametrize("override, message", [
    ("task.amplitude_range=[5.0,1.0]", "task.amplitude_range: expected [low, high] with low <= high"),
    ("task.amplitude_range=[.nan,1.0]", "task.amplitude_range[0]: expected a finite number"),
    ("model.hidden_sizes=[-3]", "model.hidden_sizes: every hidden width must be >= 1"),
    ("seed=123456789012345678901234", "seed: a seed must be an integer in [0, 2**63)"),
])
def test_6_bad_values_are_config_errors(tmp_path, capsys, override, message):
    assert main(["train", "sinusoid", "--run-dir", str(tmp_path / "run"), override]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_6_policy_init_std_and_run_dir_naming_a_file(tmp_path, capsys):
    assert main(["train", "navigation", "--run-dir", str(tmp_path / "run"), "policy.init_std=-1.0"]) == 2
    assert "policy.init_std" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    assert main(["train", "sinusoid", "--run-dir", str(tmp_path / "afile")]) == 2
    assert "is a file; name a folder" in capsys.readouterr().err


def test_6_a_full_disk_is_a_one_line_error_and_the_run_resumes(tmp_path, capsys, monkeypatch):
    import rl_maml.checkpoint as checkpoint

    run = tmp_path / "run"
    tiny = ["train.num_iterations=4", "train.checkpoint_every=2", *SINUSOID]
    original = checkpoint.atomic_write_bytes
    calls = []

    def full_disk(path, data):
        calls.append(path)
        if str(path).endswith("iter_0000004.pt"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return original(path, data)

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", full_disk)
    assert main(["train", "sinusoid", "--run-dir", str(run), "--no-progress", *tiny]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("rl-maml: error: No space left on device: ") and "iter_0000004.pt" in err[-1]
    assert [i for i, _ in list_checkpoints(run / "checkpoints")] == [2]  # the written one is intact
    monkeypatch.setattr(checkpoint, "atomic_write_bytes", original)
    assert main(["train", "--run-dir", str(run), "--resume", "--no-progress"]) == 0
    assert [i for i, _ in list_checkpoints(run / "checkpoints")] == [2, 4]


# --- 7. a zero-width network -------------------------------------------------------------------------

def test_7_a_zero_width_network_is_refused(tmp_path, capsys):
    assert main(["train", "sinusoid", "--run-dir", str(tmp_path / "run"), "model.hidden_sizes=[0]"]) == 2
    assert "every hidden width must be >= 1" in capsys.readouterr().err


# --- 8. the smaller ones --------------------------------------------------------------------------------

def test_8_smaller_defects(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "sinusoid", "--run-dir", str(tmp_path / "n"), "eval.finetune_lr=.nan"]) == 2
    assert "eval.finetune_lr" in capsys.readouterr().err
    tiny = ["train.num_iterations=4", "train.checkpoint_every=2", *SINUSOID]
    assert main(["train", "sinusoid", "--run-dir", str(run), "--no-progress", *tiny]) == 0
    capsys.readouterr()
    stored = (run / "config.yaml").read_text()
    assert main(["train", "--run-dir", str(run), "--resume", "train.num_iterations=2"]) == 2
    assert "below the newest checkpoint's iteration 4" in capsys.readouterr().err
    assert (run / "config.yaml").read_text() == stored  # untouched
    assert main(["eval", str(run)]) == 0
    assert main(["eval", str(run)]) == 2
    assert "already holds results; pass --overwrite" in capsys.readouterr().err
    assert main(["eval", "--overwrite", str(run)]) == 0
    # resuming a run that never reached a checkpoint says so
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copyfile(run / "config.yaml", fresh / "config.yaml")
    assert main(["train", "--run-dir", str(fresh), "--resume", "--no-progress"]) == 0
    assert "holds no checkpoint yet; starting from iteration 0" in capsys.readouterr().err
    # a truncated config.yaml is named
    (fresh / "config.yaml").write_text(stored[: stored.index("train:")] + "train:\n  num_iterations: [")
    assert main(["eval", str(fresh)]) == 2
    assert str(fresh / "config.yaml") in capsys.readouterr().err
    (fresh / "config.yaml").write_text("benchmark: sinusoid\nmodel: {hidden_sizes: 4}\n")
    assert main(["eval", str(fresh)]) == 2
    assert str(fresh / "config.yaml") in capsys.readouterr().err
    # a closed pipe ends quietly
    shown = subprocess.run(f"{console_script()} presets | head -1", shell=True, capture_output=True, text=True)
    assert shown.returncode == 0 and "BrokenPipeError" not in shown.stderr and shown.stdout.count("\n") == 1
    # a boolean is not a velocity
    import gymnasium

    import rl_maml  # noqa: F401

    env = gymnasium.make("rl_maml/HalfCheetahVel-v0").unwrapped
    with pytest.raises(ValueError, match="must be numeric.*boolean"):
        env.set_task({"velocity": True})


# --- fault injection: kill -9, Ctrl-C ----------------------------------------------------------------

FAULT = ["train.num_iterations=200", "train.checkpoint_every=1", "train.keep_checkpoints=2", *SINUSOID]


def _train_through(run: Path, *overrides: str) -> Path:
    proc = start_training(run, *overrides)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return run


def _kill_and_resume(run: Path, targets: list[int], overrides: list[str] = FAULT) -> int:
    """Train with ``overrides``, kill -9 each piece as soon as its newest checkpoint reaches the next
    target iteration (wherever it then is: mid-iteration or mid-write), resume until the run ends;
    returns the number of kills that landed in a running training."""
    kills, first = 0, True
    for target in [*sorted(targets), None]:
        proc = start_training(run, *overrides, resume=not first)
        if target is None:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
            break
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            ckpts = list_checkpoints(run / "checkpoints")
            if ckpts and ckpts[-1][0] >= target:
                break
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        # a kill before the first checkpoint leaves a run folder without one: start it again
        first = not (run / "config.yaml").is_file()
    return kills


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return _train_through(tmp_path_factory.mktemp("fault") / "reference", *FAULT)


def test_kill_9_at_random_points_then_resume_equals_an_uninterrupted_run(tmp_path, uninterrupted):
    rng = random.Random(0)
    kills = _kill_and_resume(tmp_path / "run", rng.sample(range(1, 199), 3))
    assert kills == 3
    assert_same_run(uninterrupted, tmp_path / "run")
    assert not list((tmp_path / "run" / "checkpoints").glob("*.tmp*"))  # no half-written files left visible


@pytest.mark.slow
def test_kill_9_at_50_random_points(tmp_path):
    """The longer randomised version (run by hand: ``pytest -m slow -k 50_random -s``)."""
    long = ["train.num_iterations=3000", *FAULT[1:]]
    reference = _train_through(tmp_path / "reference", *long)
    rng = random.Random(1)
    kills = _kill_and_resume(tmp_path / "run", rng.sample(range(1, 2999), 50), long)
    print(f"kill -9 points: 50 tried, {kills} landed in a running training")
    assert kills >= 45
    assert_same_run(reference, tmp_path / "run")


def _signal_once_training(proc: subprocess.Popen, run: Path, sig: int, after: float) -> None:
    """Send ``sig`` ``after`` seconds after the training's logger started (its tb/ folder exists;
    the signal handlers come a moment later). Keep ``after`` short: 200 tiny iterations take
    about a second on a 2-core CPU, and a signal after the end tests nothing."""
    deadline = time.time() + 60
    while not (run / "tb").is_dir() and time.time() < deadline:
        time.sleep(0.002)
    time.sleep(after)
    proc.send_signal(sig)


def test_ctrl_c_checkpoints_the_finished_iteration_and_resume_equals_an_uninterrupted_run(tmp_path, uninterrupted):
    run = tmp_path / "run"
    proc = start_training(run, *[o for o in FAULT if not o.startswith("train.checkpoint_every")],
                          "train.checkpoint_every=1000")
    _signal_once_training(proc, run, signal.SIGINT, after=0.1)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted by SIGINT after iteration" in err and "--resume" in err
    saved = list_checkpoints(run / "checkpoints")
    assert len(saved) == 1 and 0 < saved[0][0] < 200  # not a multiple of checkpoint_every: saved on the signal
    resumed = start_training(run, resume=True)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert_same_run(uninterrupted, run)


def test_sigterm_stops_cleanly_too(tmp_path):
    run = tmp_path / "run"
    proc = start_training(run, "train.num_iterations=100000", "train.checkpoint_every=1000", *SINUSOID)
    _signal_once_training(proc, run, signal.SIGTERM, after=0.1)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted by SIGTERM" in err
    assert len(list_checkpoints(run / "checkpoints")) == 1
    np.testing.assert_equal(load_yaml(run / "config.yaml")["train"]["num_iterations"], 100000)


def test_kill_9_during_eval_leaves_no_half_written_results(tmp_path, uninterrupted):
    """Results are written atomically: after a kill there is no results file or a complete one, and
    the evaluation run again gives the results of an uninterrupted one."""
    import json

    reference = tmp_path / "reference"
    shutil.copytree(uninterrupted, reference, ignore=shutil.ignore_patterns(".lock"))
    assert main(["eval", str(reference)]) == 0
    expected = json.loads((reference / "eval" / "results.json").read_text())["methods"]
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run, ignore=shutil.ignore_patterns(".lock"))
    rng = random.Random(2)
    for delay in [rng.uniform(2.5, 6.0) for _ in range(3)]:
        proc = subprocess.Popen([console_script(), "eval", "--overwrite", str(run)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env={**os.environ, "MPLBACKEND": "Agg"})
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        results = run / "eval" / "results.json"
        if results.exists():
            json.loads(results.read_text())  # complete, never truncated
    assert main(["eval", "--overwrite", str(run)]) == 0
    assert json.loads((run / "eval" / "results.json").read_text())["methods"] == expected
