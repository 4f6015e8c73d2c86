"""MAML-TRPO end to end on tiny sizes: every preset trains one iteration and evaluates; resume is exact."""

from __future__ import annotations

import json

import pytest
import torch
from rl_maml.experiments.cli import main, presets

from rl_maml.checkpoint import load_checkpoint

RL_PRESETS = sorted(name for name, path in presets().items() if "benchmark: metarl" in path.read_text())
TINY = ["train.meta_batch_size=2", "train.fast_batch_size=2", "env.horizon=8", "policy.hidden_sizes=[8]",
        "eval.baseline_timesteps=256",
        "eval.num_tasks=2", "eval.fast_batch_size=2", "eval.num_steps=1", "train.batch_steps=16", "eval.batch_steps=16",
        "eval.test_tasks=sampled"]


def train_tiny_navigation(run):
    """One tiny iteration of the navigation preset in ``run``; returns ``run``."""
    assert main(["train", "navigation", "--run-dir", str(run), "--no-progress", "train.num_iterations=1", *TINY]) == 0
    return run


def test_every_family_has_presets_in_both_conventions():
    families = {"half_cheetah_vel", "half_cheetah_dir", "ant_vel", "ant_dir", "ant_goal"}
    assert {f"{f}_{c}" for f in families for c in ("maml", "gym")} | {"navigation"} <= set(RL_PRESETS)


@pytest.mark.parametrize("preset", RL_PRESETS)
def test_one_iteration_end_to_end(preset, tmp_path, capsys):
    run = tmp_path / preset
    assert main(["train", preset, "--run-dir", str(run), "--no-progress", "train.num_iterations=1", *TINY]) == 0
    assert main(["eval", "--overwrite", str(run), "eval.baselines=[random]"]) == 0
    out = capsys.readouterr().out
    assert "| MAML |" in out and "| random init |" in out
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["steps"] == [0, 1] and set(results["methods"]) == {"maml", "random"}
    assert all(len(m["per_task"]) == 2 for m in results["methods"].values())
    assert (run / "eval" / "adaptation.png").exists()
    if preset == "navigation":
        assert (run / "eval" / "trajectories.png").exists()


@pytest.mark.parametrize("preset", ["navigation", "half_cheetah_dir_maml"])
def test_evaluation_with_sb3_baselines(preset, tmp_path, capsys):
    run = tmp_path / preset
    assert main(["train", preset, "--run-dir", str(run), "--no-progress", "train.num_iterations=1", *TINY]) == 0
    capsys.readouterr()
    assert main(["eval", "--overwrite", str(run)]) == 0
    out, err = capsys.readouterr()
    assert "| MAML |" in out and "| random init |" in out and "| oracle (PPO, task observed) |" in out
    # What it trains is said first, and each PPO run shows its progress.
    assert "training the pretrained and oracle baselines with PPO first (256 env steps each" in err
    assert "PPO pretrained baseline" in err and "PPO oracle baseline" in err
    # The evaluation's own bar counts every sampling: three adapting policies after 0 and 1 steps, the oracle once.
    assert "evaluate: 100%" in err and "7/7" in err
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["steps"] == [0, 1] and set(results["methods"]) == {"maml", "random", "pretrained", "oracle"}
    assert results["methods"]["oracle"]["mean"][0] == results["methods"]["oracle"]["mean"][1]
    assert sorted(p.name for p in (run / "eval" / "baselines").iterdir()) == ["oracle_256.pt", "pretrained_256.pt"]
    # A second evaluation reuses the cached baselines and reproduces the numbers.
    assert main(["eval", "--overwrite", str(run)]) == 0
    again = json.loads((run / "eval" / "results.json").read_text())
    assert again["methods"] == results["methods"]
    # So does an evaluation written elsewhere (--out): it reads the run's cache and trains nothing.
    capsys.readouterr()
    assert main(["eval", str(run), "--out", str(tmp_path / "elsewhere")]) == 0
    assert "training the" not in capsys.readouterr().err and not (tmp_path / "elsewhere" / "baselines").exists()
    assert json.loads((tmp_path / "elsewhere" / "results.json").read_text())["methods"] == results["methods"]
    # A cache trained for another policy is refused with the file to delete, not loaded or crashed on.
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("activation: relu", "activation: tanh"))
    assert main(["eval", "--overwrite", str(run)]) == 2
    err = capsys.readouterr().err
    assert "was trained for another policy" in err and "pretrained_256.pt to train it again" in err
    # So is a cache trained on another environment (here, another horizon).
    config.write_text(config.read_text().replace("activation: tanh", "activation: relu").replace(
        "horizon: 8", "horizon: 9"))
    assert main(["eval", "--overwrite", str(run)]) == 2
    err = capsys.readouterr().err
    assert "was trained on another environment" in err and "'horizon': 8" in err and "train it again" in err


def test_extra_draws_reevaluate_maml_on_fresh_test_tasks(tmp_path, capsys):
    run = train_tiny_navigation(tmp_path / "nav")
    assert main(["eval", "--overwrite", str(run), "eval.baselines=[random]", "eval.extra_draws=2"]) == 0
    assert "| MAML, mean over 3 draws of 2 test tasks (± standard deviation over draws) |" in capsys.readouterr().out
    results = json.loads((run / "eval" / "results.json").read_text())
    draws = results["maml_draws"]
    assert draws["seeds"] == [1234, 1235, 1236] and len(draws["mean_per_draw"]) == 3
    assert draws["mean_per_draw"][0] == results["methods"]["maml"]["mean"]  # the first draw is the table's test set
    assert draws["mean_per_draw"][1] != draws["mean_per_draw"][0]  # the others are other tasks
    per_draw = torch.tensor(draws["mean_per_draw"], dtype=torch.float64)
    assert torch.allclose(torch.tensor(draws["mean"], dtype=torch.float64), per_draw.mean(0))
    # Without extra draws the results carry no draws entry.
    assert main(["eval", "--overwrite", str(run), "eval.baselines=[random]"]) == 0
    assert "maml_draws" not in json.loads((run / "eval" / "results.json").read_text())
    # The bar counts two policies and two extra draws after 0 and 1 steps; --no-progress hides it.
    capsys.readouterr()
    assert main(["eval", "--overwrite", str(run), "eval.baselines=[random]", "eval.extra_draws=2"]) == 0
    assert "8/8" in capsys.readouterr().err
    assert main(["eval", "--overwrite", "--no-progress", str(run), "eval.baselines=[random]"]) == 0
    assert "evaluate:" not in capsys.readouterr().err
    assert main(["eval", "--overwrite", str(run), "eval.extra_draws=-1"]) == 2
    assert "eval.extra_draws must be >= 0" in capsys.readouterr().err


def test_evaluation_by_step_budget(tmp_path, capsys):
    """eval.batch_steps: episodes per task until they hold that many env steps (rllab's batch_size)."""
    run = train_tiny_navigation(tmp_path / "nav")
    # Rounds of 2 episodes of at most 8 steps: 20 steps need at least 3 episodes per task.
    assert main(["eval", "--overwrite", str(run), "eval.baselines=[random]", "eval.batch_steps=20"]) == 0
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["batch_steps"] == 20
    counts = results["mean_episodes_per_task"]
    assert set(counts) == {"maml", "random"} and all(c >= 3 for c in counts["maml"] + counts["random"])
    assert "Sampling: episodes per task and step until they hold 20 env steps" in (run / "eval" / "results.md").read_text()
    capsys.readouterr()
    assert main(["eval", "--overwrite", str(run), "eval.batch_steps=0"]) == 2
    assert "eval.batch_steps must be >= 1" in capsys.readouterr().err


def test_baselines_adapt_with_their_own_step_size(tmp_path, capsys):
    """eval.baseline_inner_lr: the random init adapts with its own alpha, as the paper's test scripts did."""
    run = train_tiny_navigation(tmp_path / "nav")

    def evaluate(*overrides):
        assert main(["eval", "--overwrite", str(run), "eval.baselines=[random]", "eval.num_steps=2", *overrides]) == 0
        return json.loads((run / "eval" / "results.json").read_text())

    default = evaluate()
    same = evaluate("eval.baseline_inner_lr={random: 0.5}")  # the navigation preset's inner_lr
    own = evaluate("eval.baseline_inner_lr={random: 5.0}")
    assert same["methods"] == default["methods"]
    assert own["methods"]["maml"] == default["methods"]["maml"]
    # step 0 is before any update: the same episodes; the updates differ after it
    assert own["methods"]["random"]["per_task"][0] == default["methods"]["random"]["per_task"][0]
    assert own["methods"]["random"]["per_task"][1] != default["methods"]["random"]["per_task"][1]
    assert own["baseline_inner_lr"] == {"random": 5.0} and default["baseline_inner_lr"] == {"random": 0.5}
    assert "random init: 5" in (run / "eval" / "results.md").read_text()
    capsys.readouterr()
    assert main(["eval", "--overwrite", str(run), "eval.baseline_inner_lr={oracle: 1.0}"]) == 2
    assert "'oracle' is not an adapted baseline" in capsys.readouterr().err
    assert main(["eval", "--overwrite", str(run), "eval.baseline_inner_lr={random: -1.0}"]) == 2
    assert "eval.baseline_inner_lr.random must be a finite number >= 0" in capsys.readouterr().err


def test_a_checkpoint_that_does_not_fit_the_run_config_is_a_clear_error(tmp_path, capsys):
    run = train_tiny_navigation(tmp_path / "nav")
    config = run / "config.yaml"
    assert "hidden_sizes: [8]" in config.read_text()
    config.write_text(config.read_text().replace("hidden_sizes: [8]", "hidden_sizes: [16]"))
    assert main(["eval", "--overwrite", str(run), "eval.baselines=[random]"]) == 2
    err = capsys.readouterr().err
    assert "does not fit this run's 'maml' model" in err and "size mismatch" in err


def test_resume_is_exact(tmp_path):
    common = ["--no-progress", *TINY, "train.checkpoint_every=2"]
    assert main(["train", "navigation", "--run-dir", str(tmp_path / "a"), "train.num_iterations=4", *common]) == 0
    assert main(["train", "navigation", "--run-dir", str(tmp_path / "b"), "train.num_iterations=2", *common]) == 0
    assert main(["train", "--run-dir", str(tmp_path / "b"), "--resume", "--no-progress",
                 "train.num_iterations=4"]) == 0
    a_state, b_state = (load_checkpoint(tmp_path / r / "checkpoints" / "iter_0000004.pt") for r in "ab")
    a, b = a_state["learners"]["maml"]["policy"], b_state["learners"]["maml"]["policy"]
    # The run's cost is carried over the resume: the same env steps as the uninterrupted run.
    assert b_state["totals"]["env_steps"] == a_state["totals"]["env_steps"] > 0
    assert b_state["totals"]["wall_clock_s"] > 0
    assert all(torch.equal(a[k], b[k]) for k in a)
    start = load_checkpoint(tmp_path / "b" / "checkpoints" / "iter_0000002.pt")["learners"]["maml"]["policy"]
    assert not all(torch.equal(a[k], start[k]) for k in a)  # training moved the policy


@pytest.mark.parametrize("preset, override, message", [
    ("navigation", "env.name=Hopper", "env.name must be one of"),
    ("navigation", "env.action_scale=-2.0", "env.action_scale must be a finite number > 0"),
    ("navigation", "env.cost_on_clipped=true", "env.cost_on_clipped applies to the locomotion families"),
    ("half_cheetah_dir_maml", "env.goal_region=disc", "env.goal_region applies to Navigation2D only"),
    ("navigation", "env.goal_region=circle", "env.goal_region: expected one of 'square', 'disc' or null, got 'circle'"),
    ("ant_vel_maml", "env.forward_fraction=0.6", "env.forward_fraction applies to the direction families"),
    ("ant_dir_maml", "env.forward_fraction=1.5", "env.forward_fraction is a probability in [0, 1]"),
    ("navigation", "train.device=gpu", "train.device 'gpu' is not a torch device (use cpu, cuda, cuda:N or auto)"),
])
def test_rl_config_errors(preset, override, message, tmp_path, capsys):
    assert main(["train", preset, "--run-dir", str(tmp_path / "x"), override]) == 2
    assert message in capsys.readouterr().err


def test_alpha_maml_trpo_adapts_alpha_from_the_meta_step(tmp_path, capsys):
    """Alpha MAML with TRPO: alpha moves by -hyper_lr * d(surrogate)/d(alpha), logged and checkpointed."""
    from rl_maml.checkpoint import latest_checkpoint, load_checkpoint

    run = tmp_path / "alpha"
    assert main(["train", "navigation", "--run-dir", str(run), "--no-progress", "train.num_iterations=2",
                 "method=alpha_maml", "variant.alpha_granularity=layer", "variant.alpha_hyper_lr=0.01",
                 *TINY]) == 0
    state = load_checkpoint(latest_checkpoint(run / "checkpoints"))["learners"]["maml"]
    alphas = [v.item() for v in state["step_size"].values()]
    assert len(alphas) == 3 and all(a > 0 for a in alphas) and any(abs(a - 0.5) > 1e-6 for a in alphas)
    assert main(["eval", "--overwrite", str(run), "eval.baselines=[random]"]) == 0
    assert "| MAML |" in capsys.readouterr().out


def test_reference_test_tasks_are_the_paper_scripts():
    """eval.test_tasks=reference: the 40 tasks of cbfinn/maml_rl's test scripts (legacy NumPy seeds)."""
    import numpy as np
    from rl_maml.experiments.metarl import reference_test_tasks

    from rl_maml.config import ConfigError

    np.random.seed(1)  # as test_maml_ant.py does it
    goals = np.random.uniform(0.0, 3.0, size=(40,))
    np.testing.assert_array_equal(reference_test_tasks("AntVel")["velocity"].numpy(), goals)
    # test_maml_ant_direc.py's seed; the split of the paper's results: the ICML-deadline env's goals
    # U(0.1, 0.8), backward below 0.4 (the final script's U(0, 3) below 1.5 would give 15 forward)
    np.random.seed(2)
    directions = np.where(np.random.uniform(0.1, 0.8, size=(40,)) < 0.4, -1.0, 1.0)
    np.testing.assert_array_equal(reference_test_tasks("AntDir")["direction"].numpy(), directions)
    assert (directions > 0).sum() == 20
    assert set(reference_test_tasks("HalfCheetahDir")["direction"].tolist()) == {-1.0, 1.0}
    assert reference_test_tasks("HalfCheetahVel")["velocity"].max() <= 2.0
    with pytest.raises(ConfigError, match="cover .* not AntGoal"):
        reference_test_tasks("AntGoal")


def test_reference_test_tasks_need_forty(tmp_path, capsys):
    run = tmp_path / "hcv"
    assert main(["train", "half_cheetah_vel_maml", "--run-dir", str(run), "--no-progress", "train.num_iterations=1",
                 *TINY]) == 0
    capsys.readouterr()
    assert main(["eval", "--overwrite", str(run), "eval.test_tasks=reference"]) == 2
    assert "eval.num_tasks must be 40" in capsys.readouterr().err


def test_evaluation_on_the_reference_tasks_sets_the_papers_returns_beside(tmp_path, capsys):
    run = tmp_path / "hcd"
    assert main(["train", "half_cheetah_dir_maml", "--run-dir", str(run), "--no-progress", "train.num_iterations=1",
                 *TINY]) == 0
    assert main(["eval", str(run), "eval.test_tasks=reference", "eval.num_tasks=40", "eval.baselines=[]",
                 "eval.extra_draws=1"]) == 0
    text = (run / "eval" / "paper_per_task.md").read_text()
    assert "HalfCheetahDir" in text and "| forward (+1) | 18 |" in text
    assert (run / "eval" / "paper_per_task.png").is_file()
    # extra draws keep the 40 reference tasks and draw new episodes
    assert "mean over 2 episode draws on the 40 reference tasks" in capsys.readouterr().out
    draws = json.loads((run / "eval" / "results.json").read_text())["maml_draws"]
    assert draws["tasks"] == "reference (new episodes)" and draws["mean_per_draw"][1] != draws["mean_per_draw"][0]
    # sampled test tasks have no paper counterpart: the earlier comparison goes with the earlier results
    assert main(["eval", "--overwrite", str(run), "eval.baselines=[]"]) == 0
    assert not (run / "eval" / "paper_per_task.md").exists() and not (run / "eval" / "paper_per_task.png").exists()


def test_a_policy_trained_without_an_inner_step_is_not_called_maml(tmp_path, capsys):
    """inner.num_inner_steps=0 trains plain TRPO: the evaluation's tables and the paper comparison say so."""
    run = tmp_path / "trpo"
    assert main(["train", "half_cheetah_dir_maml", "--run-dir", str(run), "--no-progress", "train.num_iterations=1",
                 "inner.num_inner_steps=0", *TINY]) == 0
    assert main(["eval", str(run), "eval.test_tasks=reference", "eval.num_tasks=40", "eval.baselines=[]",
                 "eval.num_steps=0", "eval.extra_draws=1"]) == 0
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["trained_inner_steps"] == 0 and set(results["methods"]) == {"maml"}
    table = (run / "eval" / "results.md").read_text()
    assert "| trained policy (no inner step in training: TRPO) |" in table
    assert "| trained policy (no inner step in training: TRPO), mean over 2 episode draws" in table
    assert "| MAML" not in table
    assert "Ours was trained with no inner step" in (run / "eval" / "paper_per_task.md").read_text()
    capsys.readouterr()
    # a run with an inner step keeps the name
    maml_run = tmp_path / "maml"
    assert main(["train", "half_cheetah_dir_maml", "--run-dir", str(maml_run), "--no-progress",
                 "train.num_iterations=1", *TINY]) == 0
    assert main(["eval", str(maml_run), "eval.test_tasks=reference", "eval.num_tasks=40", "eval.baselines=[]",
                 "eval.num_steps=0"]) == 0
    assert json.loads((maml_run / "eval" / "results.json").read_text())["trained_inner_steps"] == 1
    assert "| MAML |" in (maml_run / "eval" / "results.md").read_text()
    assert "Ours was trained with no inner step" not in (maml_run / "eval" / "paper_per_task.md").read_text()


def test_curves_from_the_tensorboard_events_and_runs_side_by_side(tmp_path, capsys):
    import csv

    run = tmp_path / "nav"
    assert main(["train", "navigation", "--run-dir", str(run), "--no-progress", "train.num_iterations=3",
                 *TINY]) == 0
    assert main(["curves", str(run), "--out", str(tmp_path / "c")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "c" / "curves.csv")))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3]
    steps = [float(r["env_steps"]) for r in rows]
    assert [float(r["total_env_steps"]) for r in rows] == [sum(steps[:i + 1]) for i in range(3)]
    assert (tmp_path / "c" / "curves.png").stat().st_size > 0
    capsys.readouterr()
    assert main(["curves", str(tmp_path), "--out", str(tmp_path / "d")]) == 2
    assert "has no TensorBoard folder" in capsys.readouterr().err
    # An exported run resumed elsewhere: the earlier pieces' rows come from their curves.csv.
    earlier = tmp_path / "earlier.csv"
    earlier.write_text("iteration,return_post\n-1,5.0\n0,6.0\n2,99.0\n")
    assert main(["curves", str(run), "--out", str(tmp_path / "e"), "--history", str(earlier)]) == 0
    rows = list(csv.DictReader(open(tmp_path / "e" / "curves.csv")))
    assert [int(r["iteration"]) for r in rows] == [-1, 0, 1, 2, 3]  # the run's own row 2 wins
    assert float(rows[0]["return_post"]) == 5.0 and float(rows[3]["return_post"]) != 99.0
    assert main(["curves", str(run), "--out", str(tmp_path / "f"), "--history", str(tmp_path / "none.csv")]) == 2
    capsys.readouterr()
    assert main(["curves", str(run), "--out", str(tmp_path / "g"), "--paper", "98.7"]) == 2
    assert "this is a meta-RL run" in capsys.readouterr().err

    # Runs side by side: a run folder beside a curves.csv, window means by hand, the last window
    # ending at the longest run's last iteration and empty where a run logged nothing.
    other = tmp_path / "other.csv"
    other.write_text("iteration,return_pre,return_post\n1,0.0,1.0\n2,0.0,3.0\n3,0.0,8.0\n4,2.0,10.0\n5,4.0,20.0\n")
    capsys.readouterr()
    assert main(["overlay", f"tiny={run}", f"other={other}", "--out", str(tmp_path / "o"), "--window", "2"]) == 0
    table = capsys.readouterr().out
    own = [float(r["return_post"]) for r in list(csv.DictReader(open(tmp_path / "c" / "curves.csv")))]
    assert "| iterations | tiny | other |" in table
    assert f"| 1-2 | {(own[0] + own[1]) / 2:.1f} | 2.0 |" in table
    assert f"| 3-4 | {own[2]:.1f} | 9.0 |" in table and "| 5-5 |  | 20.0 |" in table
    assert "| 5-5 |  | 4.0 |" in table.split("before adaptation")[1]
    assert (tmp_path / "o" / "overlay.png").stat().st_size > 0 and (tmp_path / "o" / "overlay.csv").is_file()
    assert main(["overlay", str(run), "--out", str(tmp_path / "p")]) == 2
    assert "LABEL=PATH" in capsys.readouterr().err
    assert main(["overlay", f"a={run}", f"a={other}", "--out", str(tmp_path / "p")]) == 2
    assert "labels must differ" in capsys.readouterr().err
    assert main(["overlay", f"a={tmp_path / 'none'}", "--out", str(tmp_path / "p")]) == 2
    assert "neither a run folder nor a curves.csv" in capsys.readouterr().err
    assert main(["overlay", f"a={other}", "--out", str(tmp_path / "p"), "--window", "0"]) == 2
    assert "--window must hold at least one iteration" in capsys.readouterr().err


def test_a_resumed_run_keeps_every_pieces_tensorboard_curves_on_both_axes(tmp_path):
    """Resuming hides what an interrupted piece logged after its checkpoint, per axis: the
    iteration axis from the resumed iteration on, the env-step axis (its own folder) from the
    checkpoint's env-step total on; the earlier pieces' points stay on both."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "nav"
    assert main(["train", "navigation", "--run-dir", str(run), "--no-progress", "train.num_iterations=2", *TINY]) == 0
    assert main(["train", "--run-dir", str(run), "--resume", "--no-progress", "train.num_iterations=4"]) == 0

    def points(folder, tag):
        events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        events.Reload()
        return [(e.step, e.value) for e in events.Scalars(tag)]

    per_iteration = points(run / "tb", "maml/charts/return_post")
    totals = points(run / "tb", "charts/total_env_steps")
    per_env_step = points(run / "tb" / "env_steps", "env_steps/maml/charts/return_post")
    assert [s for s, _ in per_iteration] == [1, 2, 3, 4]
    assert per_env_step == [(int(t), r) for (_, t), (_, r) in zip(totals, per_iteration)]


def test_export_resume_and_evaluate_from_the_exported_folder(tmp_path, capsys):
    """rl-maml export: config + newest checkpoint + run.json; a copy resumes exactly and evaluates."""
    import shutil

    common = ["--no-progress", *TINY, "train.checkpoint_every=2"]
    assert main(["train", "navigation", "--run-dir", str(tmp_path / "a"), "train.num_iterations=4", *common]) == 0
    assert main(["train", "navigation", "--run-dir", str(tmp_path / "b"), "train.num_iterations=2", *common]) == 0
    assert main(["export", str(tmp_path / "b"), "--out", str(tmp_path / "shared"), "--command", "rl-maml train ..."]) == 0
    info = json.loads((tmp_path / "shared" / "run.json").read_text())
    assert info["iteration"] == 2 and info["env_steps"] > 0 and info["wall_clock_s"] > 0
    assert info["checkpoint"] == "checkpoints/iter_0000002.pt" and info["command"] == "rl-maml train ..."
    shutil.copytree(tmp_path / "shared", tmp_path / "c")
    assert main(["train", "--run-dir", str(tmp_path / "c"), "--resume", "--no-progress", "train.num_iterations=4"]) == 0
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "iter_0000004.pt")
    c = load_checkpoint(tmp_path / "c" / "checkpoints" / "iter_0000004.pt")
    pa, pc = a["learners"]["maml"]["policy"], c["learners"]["maml"]["policy"]
    assert all(torch.equal(pa[k], pc[k]) for k in pa) and a["totals"]["env_steps"] == c["totals"]["env_steps"]
    # The copied run.json follows the training: it names the checkpoint --resume now takes
    info = json.loads((tmp_path / "c" / "run.json").read_text())
    assert info["checkpoint"] == "checkpoints/iter_0000004.pt" and info["iteration"] == 4
    assert info["env_steps"] == c["totals"]["env_steps"] and info["wall_clock_s"] == c["totals"]["wall_clock_s"]
    assert info["command"] == "rl-maml train ..." and info["continued_from"] == 2
    assert main(["export", str(tmp_path / "c"), "--out", str(tmp_path / "shared")]) == 0  # updated in place
    info = json.loads((tmp_path / "shared" / "run.json").read_text())
    assert info["iteration"] == 4 and info["command"] == "rl-maml train ..."  # the command carried over
    assert sorted(p.name for p in (tmp_path / "shared" / "checkpoints").iterdir()) == ["iter_0000004.pt"]
    assert main(["eval", str(tmp_path / "c"), "eval.baselines=[random]"]) == 0
    capsys.readouterr()
    assert main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert "is not a run folder" in capsys.readouterr().err


def test_eval_with_out_reads_the_run_folder_and_writes_elsewhere(tmp_path, capsys):
    """``rl-maml eval RUN --out DIR``: a committed checkpoint folder is evaluated in place, left as it
    was (no eval/, no lock file), and the numbers equal those of an evaluation inside a copy."""
    import shutil

    run = train_tiny_navigation(tmp_path / "run")
    shutil.rmtree(run / "tb")
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    shutil.copytree(run, tmp_path / "copy")
    assert main(["eval", str(run), "eval.baselines=[random]", "--out", str(tmp_path / "results")]) == 0
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before
    assert main(["eval", str(tmp_path / "copy"), "eval.baselines=[random]"]) == 0
    ours = json.loads((tmp_path / "results" / "results.json").read_text())
    theirs = json.loads((tmp_path / "copy" / "eval" / "results.json").read_text())
    assert ours["methods"] == theirs["methods"] and (tmp_path / "results" / "adaptation.png").is_file()
    capsys.readouterr()
    assert main(["eval", str(run), "--out", str(tmp_path / "results")]) == 2  # results there already
    assert "--overwrite" in capsys.readouterr().err


def test_a_resumed_run_may_take_other_thread_counts(tmp_path, capsys):
    """A run continued on another machine (or beside other work) may set its thread counts and its
    Fisher products' precision anew (bfloat16 is slow on CPUs without bfloat16 units); the
    task-relevant settings stay refused."""
    run = train_tiny_navigation(tmp_path / "run")
    assert main(["train", "--run-dir", str(run), "--resume", "--no-progress", "train.num_iterations=2",
                 "train.meta_step_threads=1", "train.num_threads=1", "trpo.fvp_dtype=bfloat16"]) == 0
    assert (run / "checkpoints" / "iter_0000002.pt").exists()
    assert "fvp_dtype: bfloat16" in (run / "config.yaml").read_text()  # what the run now computes with
    capsys.readouterr()
    assert main(["train", "--run-dir", str(run), "--resume", "--no-progress", "train.num_iterations=3",
                 "trpo.max_kl=0.02"]) == 2
    assert "'trpo.max_kl'" in capsys.readouterr().err


def test_fvp_check_sets_the_references_products_beside_the_exact_ones(tmp_path, capsys):
    """python -m rl_maml.experiments.fvp_check: one batch at a run's checkpoint; the exact step
    fills the KL bound, and with a small trpo.fd_eps the finite differences agree with it (at the
    reference's eps = 1 / |theta| this 8-unit policy is perturbed too far); not a run: exit 2."""
    from rl_maml.experiments import fvp_check

    assert main(["train", "navigation", "--run-dir", str(tmp_path / "run"), "train.num_iterations=1",
                 "trpo.fd_eps=0.001", "trpo.inner_objective=reinforce", "--no-progress", *TINY]) == 0
    capsys.readouterr()
    assert fvp_check.main([str(tmp_path / "run")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["checkpoint"].endswith("iter_0000001.pt") and out["eps"] == pytest.approx(0.001 / out["theta_norm"])
    max_kl = load_config_max_kl(tmp_path / "run")
    assert out["exact"]["quadratic_kl_of_step"] == pytest.approx(max_kl, rel=1e-4)
    assert out["product_at_gradient"]["relative_difference"] < 0.01 and out["direction_cosine"] > 0.9
    assert fvp_check.main([str(tmp_path)]) == 2
    assert "is not a run folder" in capsys.readouterr().err
    assert main(["train", "navigation", "--run-dir", str(tmp_path / "lvc"), "train.num_iterations=1",
                 "--no-progress", *TINY]) == 0  # the preset's LVC inner loss
    capsys.readouterr()
    assert fvp_check.main([str(tmp_path / "lvc")]) == 2
    assert "REINFORCE inner loss" in capsys.readouterr().err


def load_config_max_kl(run_dir):
    from rl_maml.config import load_yaml

    return load_yaml(run_dir / "config.yaml")["trpo"]["max_kl"]


def test_forward_fraction_weights_the_direction_tasks():
    """env.forward_fraction: the batched env draws forward tasks with that probability; without it
    the draws are those of the equally likely choices, unchanged."""
    import numpy as np

    from rl_maml.api import load_config
    from rl_maml.envs.tasks import CHEETAH_DIR_TASKS, TaskField

    skewed = load_config("half_cheetah_dir_maml", ["env.forward_fraction=0.8"]).env.make(2, torch.device("cpu"))
    plain = load_config("half_cheetah_dir_maml").env.make(2, torch.device("cpu"))
    forward = (skewed.sample_tasks(20000, np.random.default_rng(0))["direction"] > 0).mean()
    assert abs(forward - 0.8) < 0.01
    assert np.array_equal(plain.sample_tasks(50, np.random.default_rng(1))["direction"],
                          np.random.default_rng(1).choice([-1.0, 1.0], size=50))
    assert plain.TASKS is CHEETAH_DIR_TASKS  # the family's own space is left alone
    for fraction, direction in ((1.0, 1.0), (0.0, -1.0)):  # one direction only: the single-task check
        one_way = load_config("half_cheetah_dir_maml", [f"env.forward_fraction={fraction}"]).env.make(2, torch.device("cpu"))
        assert (one_way.sample_tasks(500, np.random.default_rng(2))["direction"] == direction).all()
    preset = load_config("ant_dir_maml_icml")
    assert preset.env.forward_fraction == pytest.approx(4 / 7)
    with pytest.raises(ValueError, match="one probability per choice"):
        TaskField("direction", choices=(-1.0, 1.0), weights=(0.5, 0.6))
    with pytest.raises(ValueError, match="must give each of its choices"):
        CHEETAH_DIR_TASKS.weighted("direction", {1.0: 1.0})


def test_fograd_preset_is_the_faithful_one_with_first_order_gradients_and_the_full_fisher():
    """ant_dir_maml_fograd differs from ant_dir_maml in the three settings its runs were made with and
    in nothing else, so that a run of either reproduces the documented one; its meta-step takes the
    first-order gradient and the Fisher through the inner step."""
    import dataclasses

    from rl_maml.api import load_config

    fograd = dataclasses.asdict(load_config("ant_dir_maml_fograd"))
    faithful = dataclasses.asdict(load_config(
        "ant_dir_maml", ["inner.first_order=true", "trpo.fisher_order=second", "trpo.fvp_dtype=bfloat16"]))
    assert fograd.pop("name") == "ant_dir_maml_fograd" and faithful.pop("name") == "ant_dir_maml"
    assert fograd == faithful
    assert dataclasses.asdict(load_config("ant_dir_maml"))["inner"]["first_order"] is False
