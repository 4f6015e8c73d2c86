"""The committed checkpoints (``experiments/checkpoints/``) load into the models their own configs
build, so that ``rl-maml eval`` reproduces the docs' tables and ``--resume`` continues a run
without training first, and the folder's ``run.json`` and README describe what is there."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from rl_maml.experiments.cli import build_config
from rl_maml.experiments.fewshot import Dataset, build_learner, image_shape

from rl_maml.api import MetaPolicy
from rl_maml.checkpoint import latest_checkpoint
from rl_maml.config import load_yaml
from rl_maml.training import load_learners

ROOT = Path(__file__).resolve().parents[1] / "experiments" / "checkpoints"
FOLDERS = sorted(p for p in ROOT.iterdir() if p.is_dir())


def test_the_readme_lists_every_committed_folder():
    listed = set(re.findall(r"^\| `([a-z0-9_]+)` \|", (ROOT / "README.md").read_text(), flags=re.MULTILINE))
    assert FOLDERS and listed == {p.name for p in FOLDERS}


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_committed_checkpoint_loads_into_its_configs_model(folder):
    info = json.loads((folder / "run.json").read_text())
    checkpoint = folder / info["checkpoint"]
    # run.json describes the checkpoint that --resume and rl-maml eval pick up (the newest)
    assert latest_checkpoint(folder / "checkpoints") == checkpoint
    assert info["wall_clock_s"] > 0 and info["command"]
    cfg = build_config(load_yaml(folder / "config.yaml"))[1]
    if cfg.benchmark == "metarl":
        assert info["env_steps"] > 0
        assert MetaPolicy.load(folder).iteration == info["iteration"]
    else:  # the conv-4 needs only the data's image shape, not the images
        channels, size = image_shape(cfg.data.dataset)
        empty = torch.zeros(0, channels, size, size)
        learner = build_learner(cfg, torch.device("cpu"), Dataset(empty, empty, empty, channels=channels,
                                                                  image_size=size, rotate=False, invert=False))
        assert load_learners(checkpoint, {cfg.method: learner}) == info["iteration"]
