"""The open-loop gait check scores gaits with the AntDir `maml` rewards, deterministically."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rl_maml.envs.locomotion import AntDirEnv
from rl_maml.experiments import ant_gait_check as gc


def test_controls_are_clipped_sinusoids():
    theta = np.zeros((2, gc.DIM))
    theta[0, :8], theta[0, 16:24], theta[0, -1] = 3.0, 0.5, 1.0  # large amplitude: clipped to [-1, 1]
    a = np.stack([gc.controls(theta, t, 0.02) for t in range(100)])
    assert a.shape == (100, 2, 8) and a.min() >= -1 and a.max() <= 1
    assert np.allclose(a[:, 1], 0.0)  # zero gait: zero action
    assert (a[:, 0] == 1.0).any() and (a[:, 0] == -1.0).any()


def test_a_gaits_return_is_the_single_envs_episode_return():
    rng = np.random.default_rng(0)
    theta = np.concatenate([rng.uniform(0, 1, 8), rng.uniform(-3, 3, 8), rng.uniform(-.2, .2, 8), [2.0]])[None]
    got = gc.episode_returns(theta, -1.0, [7], horizon=30)
    assert got.shape == (1, 1)
    env = AntDirEnv(convention="maml")
    env.reset(seed=7, options={"task": {"direction": -1.0}})
    total = 0.0
    for t in range(30):
        _, r, terminated, truncated, _ = env.step(gc.controls(theta, t, env.dt)[0].astype(np.float32))
        total += r
        if terminated:
            break
    assert got[0, 0] == pytest.approx(total, rel=1e-5, abs=1e-4)
    assert np.array_equal(got, gc.episode_returns(theta, -1.0, [7], horizon=30))  # same seed, same number


def test_the_search_is_seeded_and_writes_json(tmp_path, capsys):
    gait, history = gc.search(1.0, iterations=3, population=8, elite=3, seed=0)
    again, history_again = gc.search(1.0, iterations=3, population=8, elite=3, seed=0)
    assert gait.shape == (gc.DIM,) and len(history) == 3
    assert np.array_equal(gait, again) and history == history_again
    out = tmp_path / "gait.json"
    assert gc.main(["--iterations", "2", "--population", "6", "--elite", "2", "--seeds", "0",
                    "--test-episodes", "2", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["direction"] for r in rows] == [1.0, -1.0] and all(len(r["gait"]) == gc.DIM for r in rows)
    assert "fresh resets" in capsys.readouterr().out


def test_no_refsafe_changes_the_contacts_and_only_inside_its_scope():
    """With mjDSBL_REFSAFE the contacts' 0.02 time constant acts as given: other returns for the same
    gait; the flag does not outlive the call."""
    theta = np.concatenate([np.full(8, 0.8), np.linspace(0, 3, 8), np.zeros(8), [2.0]])[None]
    default = gc.episode_returns(theta, 1.0, [3], horizon=60)
    stiff = gc.episode_returns(theta, 1.0, [3], horizon=60, refsafe=False)
    assert not np.allclose(default, stiff)
    assert np.array_equal(gc.episode_returns(theta, 1.0, [3], horizon=60), default)
