"""Checkpoints: atomic writes, safe loading, clear errors for damaged files."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from rl_maml.checkpoint import (
    CheckpointError,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)


def test_round_trip_and_no_temporary_files(tmp_path):
    state = {"iteration": 3, "w": torch.arange(5.0), "nested": {"a": [1, 2.5, None]}}
    path = checkpoint_path(tmp_path, 3)
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)
    assert loaded["iteration"] == 3 and torch.equal(loaded["w"], state["w"]) and loaded["nested"] == state["nested"]
    assert [p.name for p in tmp_path.iterdir()] == ["iter_0000003.pt"]
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_failed_write_leaves_previous_checkpoint_intact(tmp_path):
    path = tmp_path / "iter_0000001.pt"
    save_checkpoint(path, {"iteration": 1})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(Exception):
        save_checkpoint(path, {"iteration": 2, "bad": Unpicklable()})
    assert load_checkpoint(path)["iteration"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["iter_0000001.pt"]


def test_truncated_checkpoint_error_names_file(tmp_path):
    path = tmp_path / "iter_0000005.pt"
    save_checkpoint(path, {"iteration": 5, "w": torch.randn(1000)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"iter_0000005\.pt is truncated, corrupt.*Delete it"):
        load_checkpoint(path)


def test_loading_never_executes_code(tmp_path):
    path = tmp_path / "evil.pt"
    marker = tmp_path / "executed"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(path, "wb") as f:
        pickle.dump({"format_version": 1, "x": Evil()}, f, protocol=2)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert not marker.exists()
    # torch's own advice (weights_only=False "will likely succeed") would run the file's code
    assert "likely succeed" not in str(err.value) and "do not load it with weights_only=False" in str(err.value)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an rl_maml checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_listing_and_pruning(tmp_path):
    for i in (10, 2, 30):
        save_checkpoint(checkpoint_path(tmp_path, i), {"iteration": i})
    (tmp_path / "notes.txt").write_text("x")
    assert [i for i, _ in list_checkpoints(tmp_path)] == [2, 10, 30]
    assert latest_checkpoint(tmp_path).name == "iter_0000030.pt"
    prune_checkpoints(tmp_path, keep=2)
    assert [i for i, _ in list_checkpoints(tmp_path)] == [10, 30]
    assert latest_checkpoint(tmp_path / "absent") is None


def test_pruning_removes_what_a_killed_checkpoint_write_left(tmp_path):
    """kill -9 between mkstemp and os.replace leaves a hidden temporary file; the next write's
    pruning (by the process holding the run folder's lock) removes it, and nothing else."""
    stale = tmp_path / ".iter_0000004.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / ".keep-me.tmp"
    other.write_bytes(b"not ours")
    for it in (4, 5):
        checkpoint_path(tmp_path, it).write_bytes(b"x")
    prune_checkpoints(tmp_path, keep=3)
    assert not stale.exists() and other.exists()
    assert [i for i, _ in list_checkpoints(tmp_path)] == [4, 5]
