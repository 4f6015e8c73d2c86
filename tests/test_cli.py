"""The command line, end to end on tiny budgets."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rl_maml.experiments.cli import main

TINY = ["train.num_iterations=20", "train.checkpoint_every=10", "train.log_every=5", "train.meta_batch_size=4",
        "model.hidden_sizes=[16]", "eval.num_tasks=20", "eval.max_steps=3", "eval.num_query=20"]


def tags_in(tb_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return set(acc.Tags()["scalars"])


def console_script() -> str:
    beside = Path(sys.executable).parent / "rl-maml"
    script = str(beside) if beside.exists() else shutil.which("rl-maml")
    assert script, "the rl-maml console script is not installed: pip install -e ."
    return script


def test_train_and_eval_through_the_console_script(tmp_path):
    run = tmp_path / "run"
    train = subprocess.run([console_script(), "train", "sinusoid", "--run-dir", str(run),
                            *TINY], capture_output=True, text=True)
    assert train.returncode == 0, train.stderr
    assert "meta-train" in train.stderr  # the progress bar
    ev = subprocess.run([console_script(), "eval", str(run)], capture_output=True,
                        text=True)
    assert ev.returncode == 0, ev.stderr
    assert "| MAML |" in ev.stdout and "| pretrained (NAL) |" in ev.stdout
    assert "evaluate: 100%" in ev.stderr and "3/3" in ev.stderr  # a bar over the three methods

    stored = yaml.safe_load((run / "config.yaml").read_text())
    assert stored["train"]["num_iterations"] == 20 and stored["model"]["hidden_sizes"] == [16]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["iter_0000010.pt", "iter_0000020.pt"]
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["steps"] == [0, 1, 2, 3] and results["checkpoint_iteration"] == 20
    assert set(results["methods"]) == {"maml", "pretrained", "oracle"}
    for res in results["methods"].values():
        assert len(res["mean"]) == 4 and all(c > 0 for c in res["ci95"])
    assert (run / "eval" / "results.md").read_text().count("\n| ") == 4
    assert (run / "eval" / "adaptation.png").stat().st_size > 10_000
    assert main(["eval", str(run), "--out", str(tmp_path / "elsewhere")]) == 0  # same numbers, written elsewhere
    assert json.loads((tmp_path / "elsewhere" / "results.json").read_text())["methods"] == results["methods"]
    quiet = subprocess.run([console_script(), "eval", str(run), "--no-progress", "--out", str(tmp_path / "quiet")],
                           capture_output=True, text=True)
    assert quiet.returncode == 0 and "evaluate:" not in quiet.stderr, quiet.stderr
    tags = tags_in(run / "tb")
    assert {"maml/losses/query_post", "maml/losses/support_pre", "pretrained/losses/train", "time/iteration_s",
            "time/maml_step_s", "maml/charts/inner_lr/layers.0.weight"} <= tags


def test_cli_errors_name_the_problem(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "sinusoid", "--run-dir", str(run), "train.meta_batch_sise=4"]) == 2
    assert "unknown config key 'train.meta_batch_sise'" in capsys.readouterr().err
    assert not (run / "config.yaml").exists()

    assert main(["train", "sinusoid", "--run-dir", str(run), "--no-progress", *TINY]) == 0
    capsys.readouterr()
    assert main(["train", "sinusoid", "--run-dir", str(run), *TINY]) == 2
    assert "already holds a run (checkpoint at iteration 20); pass --resume" in capsys.readouterr().err
    assert main(["train", "sinusoid", "--run-dir", str(run), "--resume", *TINY, "inner.inner_lr=0.5"]) == 2
    err = capsys.readouterr().err
    assert "differs from the run's stored" in err and "'inner.inner_lr'" in err
    # Extending a finished run is allowed and continues from its last checkpoint.
    assert main(["train", "--run-dir", str(run), "--resume", "--no-progress", "train.num_iterations=30"]) == 0
    assert (run / "checkpoints" / "iter_0000030.pt").exists()

    assert main(["eval", str(run), "train.seed=3"]) == 2
    assert "only eval.* overrides" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nothing")]) == 2
    assert "is not a run folder" in capsys.readouterr().err
    (run / "checkpoints" / "iter_0000030.pt").write_bytes(b"garbage")
    assert main(["eval", str(run)]) == 2
    assert "iter_0000030.pt is truncated, corrupt" in capsys.readouterr().err
    assert main(["train", "no-such-preset", "--run-dir", str(tmp_path / "x")]) == 2
    assert "neither a file nor a preset" in capsys.readouterr().err


def test_unknown_benchmark(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("benchmark: cartpole\n")
    assert main(["train", str(cfg), "--run-dir", str(tmp_path / "r")]) == 2
    assert "'cartpole' is not a known benchmark" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["presets"]])
def test_presets_listed(argv, capsys):
    assert main(argv) == 0
    assert "sinusoid" in capsys.readouterr().out
