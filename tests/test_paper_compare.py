"""``rl-maml compare``: an evaluation beside the MAML paper's per-task returns."""

import json

import numpy as np
import pytest

from rl_maml.config import ConfigError
from rl_maml.experiments.metarl import reference_test_tasks
from rl_maml.experiments.paper_compare import compare, load_paper, markdown, write_comparison


def results_like(family, maml, random=None, test_tasks="reference"):
    """An evaluation's results.json as ``rl-maml eval`` writes it, with the given per-task returns."""
    methods = {"maml": {"per_task": maml, "mean": np.mean(maml, 1).tolist(), "ci95": [0.0] * len(maml)}}
    if random is not None:
        methods["random"] = {"per_task": random, "mean": np.mean(random, 1).tolist(), "ci95": [0.0] * len(random)}
    return {"benchmark": "metarl", "env": family, "test_tasks": test_tasks, "steps": list(range(len(maml))),
            "checkpoint_iteration": 7, "methods": methods}


def test_the_shipped_paper_data_has_40_tasks_and_the_papers_means():
    paper = load_paper()
    assert set(paper["families"]) == {"HalfCheetahVel", "HalfCheetahDir", "AntVel", "AntDir"}
    for fam in paper["families"].values():
        assert np.asarray(fam["maml"]).shape == (4, 40)
    # the means of the pickled per-task returns are the paper's Figure 5 numbers (AntDir: 8.7 / 499 / 501 / 499)
    assert np.round(np.mean(paper["families"]["AntDir"]["maml"], 1)).tolist() == [9.0, 499.0, 501.0, 499.0]


def test_groups_follow_the_reference_goals_and_identical_returns_correlate_fully():
    paper = load_paper()
    theirs = np.asarray(paper["families"]["AntDir"]["maml"])
    mine = theirs - 100.0  # the same tasks, each 100 lower
    cmp = compare(results_like("AntDir", mine.tolist()), paper)
    rows = cmp["methods"]["maml"]["rows"]
    direction = reference_test_tasks("AntDir")["direction"].numpy()
    assert rows["forward (+1)"]["tasks"] == int((direction > 0).sum()) == 20
    assert rows["backward (-1)"]["tasks"] == 20
    # the split is the one behind the paper's returns: after one step every forward task scores above
    # every backward one (555-627 against 358-444)
    assert theirs[1, direction > 0].min() > theirs[1, direction < 0].max()
    np.testing.assert_allclose(rows["forward (+1)"]["paper"], theirs[:, direction > 0].mean(1))
    np.testing.assert_allclose(rows["forward (+1)"]["ours"], theirs[:, direction > 0].mean(1) - 100.0)
    np.testing.assert_allclose(cmp["methods"]["maml"]["correlation"], 1.0)
    # the random baseline is compared only when the results have it
    assert "random" not in cmp["methods"]


def test_velocity_families_group_by_thirds_of_the_goal_range():
    paper = load_paper()
    rng = np.random.default_rng(0)
    cmp = compare(results_like("AntVel", rng.normal(size=(4, 40)).tolist(), rng.normal(size=(4, 40)).tolist()), paper)
    rows = cmp["methods"]["maml"]["rows"]
    assert list(rows)[1:] == ["velocity 0.0-1.0", "velocity 1.0-2.0", "velocity 2.0-3.0"]
    assert sum(r["tasks"] for name, r in rows.items() if name != "all tasks") == 40
    assert "random" in cmp["methods"]
    text = markdown(cmp, "test")
    assert "| 0 steps | 1 step | 2 steps | 3 steps |" in text


@pytest.mark.parametrize("change, message", [
    ({"test_tasks": "sampled"}, "eval.test_tasks=reference"),
    ({"env": "AntGoal"}, "not 'AntGoal'"),
    ({"benchmark": "fewshot"}, "meta-RL evaluation"),
    ({"convention": "gym"}, "not comparable"),
])
def test_results_the_paper_cannot_be_compared_with_are_refused(change, message):
    results = results_like("AntDir", np.zeros((4, 40)).tolist())
    results.update(change)
    with pytest.raises(ConfigError, match=message):
        compare(results, load_paper())


def test_results_without_per_task_returns_or_with_other_task_counts_are_refused():
    results = results_like("AntDir", np.zeros((4, 40)).tolist())
    del results["methods"]["maml"]["per_task"]
    with pytest.raises(ConfigError, match="no per-task returns"):
        compare(results, load_paper())
    with pytest.raises(ConfigError, match="20 tasks' returns"):
        compare(results_like("AntDir", np.zeros((4, 20)).tolist()), load_paper())


def test_the_command_writes_the_table_and_the_figure(tmp_path):
    from rl_maml.experiments.cli import main

    paper = load_paper()
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results_like("HalfCheetahDir", paper["families"]["HalfCheetahDir"]["maml"])))
    assert main(["compare", str(path), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "paper_per_task.md").read_text()
    assert "HalfCheetahDir" in text and "checkpoint iteration 7" in text
    assert (tmp_path / "out" / "paper_per_task.png").stat().st_size > 10_000
    with pytest.raises(ConfigError, match="is not a file"):
        write_comparison(tmp_path / "missing.json", tmp_path / "out")
